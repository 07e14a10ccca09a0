/* c2s/feat.h - the leaf the c2s feature modules share: request contexts, replies, pushes, string sets, and the session data several modules read (roster, block list, presence). Includes no module. */
#ifndef MK_C2S_FEAT_H
#define MK_C2S_FEAT_H
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
#define NS_HINTS        "urn:xmpp:hints"

#define MK_SERVER_NAME    "Meerkat"
#define MK_SERVER_VERSION "0.1.0"

/* Subscription bits of a roster item (RFC 6121 "to" and "from"). */
enum roster_sub {
    ROSTER_SUB_NONE = 0,
    ROSTER_SUB_TO = 1,
    ROSTER_SUB_FROM = 2,
    ROSTER_SUB_BOTH = 3,
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

/* One session's requests that read and then write the same stored data (block list,
 * roster), run one at a time in the order sent: the store's pool may run independent
 * queries out of order, so a request's read could miss an earlier request's write. */
#define FEAT_SERIAL_MAX 64         /* requests waiting behind the running one */
struct feat_serial {
    bool busy;                     /* one is at the store */
    void **queue;                  /* the ones waiting, oldest first */
    size_t n;
};

/* 1: job may start now (the serial is now busy); 0: queued behind the running one;
 * -1: FEAT_SERIAL_MAX already wait (refuse it). */
int feat_serial_enter(struct feat_serial *fs, void *job);
/* The running job is done: returns the next one (still busy) or NULL (idle). */
void *feat_serial_leave(struct feat_serial *fs);
/* The session goes: each job still waiting is passed to drop, the queue freed. */
void feat_serial_drain(struct feat_serial *fs, void (*drop)(void *job));

/* --- request contexts and replies ---------------------------------------------------------- */
/* A context for sess with a copy of req (req may be NULL; borrowed). */
struct feat_ctx *feat_ctx_new(struct session *sess, const struct xml_node *req);
/* Frees the context, its request copy and arg; NULL-safe; clears *cp. */
void feat_ctx_free(struct feat_ctx **cp);
/* The context's session if it still exists and its connection is open, else NULL. */
struct session *feat_ctx_session(const struct feat_ctx *ctx);
/* The start of a store callback answering ctx->req: the session if it is still there
 * and the query worked; on a store failure the client gets internal-server-error and
 * the result is NULL. NULL means: nothing more to do but free ctx. Borrows both. */
struct session *feat_ctx_answerable(struct feat_ctx *ctx, const struct store_result *res);
/* Column c of row in a store result (NULL for SQL NULL or a missing column). */
const char *feat_col(const struct store_result *res, size_t row, size_t c);
/* Splits a prepared bare JID string into *local and *domain (new strings; local may be
 * NULL for a domain JID). Returns 0 or -1 when s is not a JID. */
int feat_split(const char *bare, char **local, char **domain);
/* Sends the result of req (borrowed) with payload (consumed, may be NULL) as its child. */
void feat_reply(struct session *sess, const struct xml_node *req, struct xml_node *payload);
/* Routes a server push: an <iq type='set'> from bare to bare carrying payload (borrowed);
 * the router delivers it to every session of bare, and the module answering payload's
 * namespace gets it through its handler's push (c2s/module.h). */
void feat_route_push(struct c2s *s, const char *bare, const struct xml_node *payload);
/* Tells every pusher that the XEP-0357 registrations of bare (borrowed) changed (enabled,
 * disabled, or the account removed): a plain bus send of PushRegistrationsChanged; a
 * pusher that misses it (restarting) starts with an empty cache anyway. */
void feat_push_registrations_changed(struct c2s *s, const char *bare);
/* Parses a routed stanza's bytes (jabber:client implied) into a tree the caller frees;
 * NULL with err. */
struct xml_node *feat_parse_routed(const Mk__Route *r, char *err, size_t errlen);
/* True when msg carries an XEP-0334 <no-store/> or <no-permanent-store/> hint. Borrows msg. */
bool feat_no_store(const struct xml_node *msg);
/* True when msg has a <body/> with text. Borrows msg. */
bool feat_has_body(const struct xml_node *msg);

/* --- string sets ----------------------------------------------------------------------------- */
/* Adds or removes a string in a string array; add is a no-op when present. */
void feat_strv_add(char ***v, size_t *n, const char *s);
bool feat_strv_remove(char ***v, size_t *n, const char *s);
bool feat_strv_has(char *const *v, size_t n, const char *s);
void feat_strv_free(char ***v, size_t *n);
/* The bare JID of a prepared JID string, as a new string (the input when already bare). */
char *feat_bare_of(const char *jid);

/* --- session data several modules read -------------------------------------------------------- */
/* The in-memory roster item for a bare JID (sess->roster, kept by the roster module), or NULL. */
struct roster_item *feat_roster_find(const struct session *sess, const char *bare);
/* The subscription bits of an item (NULL = none). */
enum roster_sub feat_roster_sub(const struct roster_item *it);
/* Parses a subscription attribute ("none" "to" "from" "both"; NULL = none). */
enum roster_sub feat_roster_sub_parse(const char *s);
/* True when jid (any form, prepared) is on the session's block list (sess->blocked, kept
 * by the blocking module; XEP-0191 matching: full, bare or domain item). */
bool feat_blocked(const struct session *sess, const char *jid);
/* Routes the session's current presence (sess->presence, if available) to jid (borrowed). */
void feat_send_presence(struct session *sess, const char *to);
/* Routes unavailable presence from the session to jid (if available). */
void feat_send_unavailable(struct session *sess, const char *to);
/* Routes an empty <presence type=type/> from the session's full JID to jid (both borrowed). */
void feat_send_presence_type(struct session *sess, const char *to, const char *type);
#endif
