/* pusher/xep0357_wire.h - what the XEP-0357 backend puts on the wire (publish IQ, MongoosePush request) and how it reads answers; pure functions. */
#ifndef MK_PUSHER_XEP0357_WIRE_H
#define MK_PUSHER_XEP0357_WIRE_H
#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

/* One stored registration (c2s/push.c wrote it): the pubsub service, the node and the
 * publish options in the client's order (FORM_TYPE not among them). */
struct xep_reg {
    char *pubsub;
    char *node;
    char **vars;
    char **values;
    size_t nfields;
};

/* Fills r from a store row: pubsub, node and the stored form ("" = no options). All
 * borrowed (copied). -1 when the form cannot be read (r is then empty, nothing to free). */
int xep_reg_init(struct xep_reg *r, const char *pubsub, const char *node, const char *form);
/* Frees what r holds (NULL-safe, r zeroed). */
void xep_reg_release(struct xep_reg *r);
/* The value of publish option var, or NULL (borrowed). */
const char *xep_reg_option(const struct xep_reg *r, const char *var);

/* What a push reports: the summary of XEP-0357 section 6. */
struct xep_summary {
    unsigned message_count;
    const char *sender;            /* last-message-sender */
    const char *body;              /* last-message-body */
};

/* Appends the publish IQ (jabber:client implied, no xmlns on <iq>) from domain (the
 * server's domain JID) to the registration's service: the summary form in a
 * <notification/> item of its node, and its publish options echoed with FORM_TYPE first
 * (no <publish-options/> when it has none). Borrows everything. */
void xep_publish_iq(struct buf *out, const char *domain, const char *id, const struct xep_reg *reg,
                    const struct xep_summary *sum);

/* MongoosePush's REST request for a registration on a virtual host: the URL
 * {base}/{api}/notification/{device_id, percent-encoded} and the JSON body: service,
 * mode (default prod), priority, time_to_live (a number), topic when given, and either
 * alert {title, body, badge, tag, click_action when given} or, with the option
 * silent=true, data {message-count, last-message-sender, last-message-body}; never a
 * null. -1 with a reason in err when the registration lacks device_id or service. */
int xep_mpush_request(struct buf *url, struct buf *json, const char *base, const char *api,
                      const struct xep_reg *reg, const struct xep_summary *sum, char *err, size_t errlen);

/* What an answer means for one registration. */
enum xep_verdict {
    XEP_VERDICT_OK = 0,            /* accepted */
    XEP_VERDICT_DISABLE,           /* the service says the registration is dead: remove it (the event is done) */
    XEP_VERDICT_RETRY,             /* temporary: try again later */
    XEP_VERDICT_FAIL,              /* permanent for this event */
};

/* MongoosePush's HTTP status: 2xx ok, 410 disable, 429 and 5xx retry, other fail. */
enum xep_verdict xep_mpush_verdict(long status);

/* A reply to the publish IQ (type "result" or "error", and its bytes): a result is ok;
 * an error of type cancel disables the registration, except for the routing conditions
 * (remote-server-not-found, remote-server-timeout, service-unavailable,
 * recipient-unavailable: the service was not reached, which says nothing of the
 * registration) which are retried like type wait; modify and auth fail. *condition gets
 * the error's condition ("" when none; borrowed from a static table or "other"). */
enum xep_verdict xep_iq_verdict(const char *type, const char *xml, size_t len, const char **condition);
#endif
