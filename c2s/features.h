/* c2s/features.h - internals shared by the c2s feature modules: roster, presence, server IQs, registration, offline. */
#ifndef MK_C2S_FEATURES_H
#define MK_C2S_FEATURES_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "c2s.h"

#define NS_DISCO_INFO   "http://jabber.org/protocol/disco#info"
#define NS_DISCO_ITEMS  "http://jabber.org/protocol/disco#items"
#define NS_VERSION      "jabber:iq:version"
#define NS_PING         "urn:xmpp:ping"
#define NS_TIME         "urn:xmpp:time"
#define NS_VCARD        "vcard-temp"
#define NS_PRIVATE      "jabber:iq:private"
#define NS_BLOCKING     "urn:xmpp:blocking"
#define NS_BLOCKING_ERR "urn:xmpp:blocking:errors"
#define NS_LAST         "jabber:iq:last"
#define NS_MSGOFFLINE   "msgoffline"
#define NS_PREAPPROVAL  "urn:xmpp:features:pre-approval"
#define NS_XDATA        "jabber:x:data"

#define MK_SERVER_NAME    "Meerkat"
#define MK_SERVER_VERSION "0.1.0"

/* Subscription bits of a roster item (RFC 6121 "to" and "from"). */
enum roster_sub {
    ROSTER_SUB_NONE = 0,
    ROSTER_SUB_TO = 1,
    ROSTER_SUB_FROM = 2,
    ROSTER_SUB_BOTH = 3,
};

/* Per-session state only the feature modules use (sess->feat). */
struct feat_session {
    bool roster_pending;           /* the start-up roster load has not answered yet */
    bool block_pending;            /* same for the block list */
    struct xml_node **held;        /* client presence held until the roster is loaded, in order */
    size_t nheld;
    char **online;                 /* full JIDs of subscribed contacts seen available */
    size_t nonline;
};

/* What an asynchronous store callback needs: the session is looked up again by id
 * (it may be gone), never kept as a pointer. */
struct feat_ctx {
    struct c2s *c2s;
    uint64_t sid;
    struct xml_node *req;          /* a copy of the request, or NULL */
    char *arg;                     /* a string the step needs (a JID, a namespace), or NULL */
    int n;
};

/* --- features.c: shared helpers ------------------------------------------------------- */
/* A context for sess with a copy of req (req may be NULL; borrowed). */
struct feat_ctx *feat_ctx_new(struct session *sess, const struct xml_node *req);
/* Frees the context, its request copy and arg; NULL-safe; clears *cp. */
void feat_ctx_free(struct feat_ctx **cp);
/* The context's session if it still exists and its connection is open, else NULL. */
struct session *feat_ctx_session(const struct feat_ctx *ctx);
/* Splits a prepared bare JID string into *local and *domain (new strings; local may be
 * NULL for a domain JID). Returns 0 or -1 when s is not a JID. */
int feat_split(const char *bare, char **local, char **domain);
/* Sends the result of req (borrowed) with payload (consumed, may be NULL) as its child. */
void feat_reply(struct session *sess, const struct xml_node *req, struct xml_node *payload);
/* Routes a server push: an <iq type='set'> from bare to bare carrying payload (borrowed);
 * the router delivers it to every session of bare, and features_inbound handles it. */
void feat_route_push(struct c2s *s, const char *bare, const struct xml_node *payload);
/* True when jid (any form, prepared) is on the session's block list (XEP-0191 matching:
 * full, bare or domain item). */
bool feat_blocked(const struct session *sess, const char *jid);
/* Parses a routed stanza's bytes (jabber:client implied) into a tree the caller frees;
 * NULL with err. */
struct xml_node *feat_parse_routed(const Mk__Route *r, char *err, size_t errlen);
/* Adds or removes a string in a string array; add is a no-op when present. */
void feat_strv_add(char ***v, size_t *n, const char *s);
bool feat_strv_remove(char ***v, size_t *n, const char *s);
bool feat_strv_has(char *const *v, size_t n, const char *s);
void feat_strv_free(char ***v, size_t *n);
/* The bare JID of a prepared JID string, as a new string (the input when already bare). */
char *feat_bare_of(const char *jid);

/* --- roster.c ----------------------------------------------------------------------- */
/* Loads the session's roster from the store (at session start); calls
 * presence_roster_ready when it arrives. */
void roster_load(struct session *sess);
/* The in-memory item for a bare JID, or NULL. */
struct roster_item *roster_find(const struct session *sess, const char *bare);
/* The subscription bits of an item (NULL = none). */
enum roster_sub roster_sub_of(const struct roster_item *it);
void roster_free_all(struct session *sess);
/* IQ jabber:iq:roster from the client (get/set). */
void roster_iq(struct session *sess, const struct xml_node *iq);
/* Subscription presence from the client (subscribe, subscribed, unsubscribe,
 * unsubscribed) to contact (prepared bare, local). Borrows pres (its status is copied). */
void roster_subscription_out(struct session *sess, const char *contact, const char *type,
                             const struct xml_node *pres);
/* A routed roster push reached sess: update the in-memory copy and write the push to
 * the client when it asked for the roster. Borrows iq. */
void roster_push_in(struct session *sess, struct xml_node *iq);

/* --- presence.c --------------------------------------------------------------------- */
/* The roster and block list are in: handle presence held meanwhile. */
void presence_roster_ready(struct session *sess);
enum disp presence_out(struct session *sess, struct xml_node *pres);
bool presence_in(struct session *sess, const Mk__Route *r);
/* The session is going: unavailable to everyone who had its presence. */
void presence_session_end(struct session *sess);
/* Sends the session's current presence (if available) to jid (borrowed). */
void presence_send_current(struct session *sess, const char *to);
/* Sends unavailable presence from the session to jid (if available). */
void presence_send_unavailable(struct session *sess, const char *to);
/* True when a subscribed contact (bare) has a resource we know is available. */
bool presence_contact_online(const struct session *sess, const char *bare);

/* --- iq.c --------------------------------------------------------------------------- */
/* Server-answered IQs; target is the prepared bare JID the IQ is addressed to, or NULL
 * for the server domain. */
enum disp iq_server(struct session *sess, struct xml_node *iq, const char *target);
/* Block list load at session start. */
void blocking_load(struct session *sess);
/* A routed block/unblock push reached sess. */
void blocking_push_in(struct session *sess, struct xml_node *iq);

/* --- register.c --------------------------------------------------------------------- */
enum disp register_preauth(struct conn *c, struct xml_node *iq);
void register_iq(struct session *sess, const struct xml_node *iq);
/* The account was cancelled from another session: close this one. */
void register_removed_in(struct session *sess);

/* --- offline.c ---------------------------------------------------------------------- */
/* Writes the stored offline messages to the session and deletes them. */
void offline_deliver(struct session *sess);
#endif
