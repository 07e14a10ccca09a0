/* router/router.h - meerkat-router's process-wide state: the session table of this shard and the routing decision. */
#ifndef MK_ROUTER_ROUTER_H
#define MK_ROUTER_ROUTER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "meerkat.pb-c.h"

struct node;
struct metric;

#define ROUTER_MAX_HOPS 8          /* a Route with more hops is dropped (loop guard) */
#define ROUTER_LIST_BATCH 500      /* sessions per SessionList reply envelope */
/* Admin tools (ctl.<pid>) the router has answered: bus.h cannot remove a peer yet, so
 * their PUSH sockets stay; past this many, listings are refused until a restart. */
#define ROUTER_REPLY_LINGER_MS 2000 /* an admin tool's reply socket delivers within this, then closes */

#define NS_STANZAS "urn:ietf:params:xml:ns:xmpp-stanzas"

/* The id of a pusher's XEP-0357 publish IQ (pusher/xep0357.c): "mkpush-<pusher id>-<n>".
 * The IQ goes out from the user's domain JID, as MongooseIM 3.6+ sends it; its reply,
 * addressed to that domain JID, is handed to the pusher the id names. */
#define ROUTER_PUSH_IQ_PREFIX "mkpush-"

/* --- sessions.c: the session table ------------------------------------------------------ */

/* A c2s process that owns sessions here; its sessions form a doubly linked list so that
 * a c2s restart drops them without scanning the table. */
struct router_c2s {
    char *id;
    struct router_sess *head;
    size_t nsessions;
};

/* One bound resource. Strings are owned. */
struct router_sess {
    struct router_user *user;
    char *full;                    /* "user@domain/resource" (see sess_resource) */
    struct router_c2s *c2s;
    uint64_t session_id;
    int priority;
    bool available;
    bool interested;
    bool carbons;                  /* XEP-0280 enabled: gets carbon copies (router/carbons.c) */
    unsigned char carbons_hint;    /* CarbonsHint last sent to its c2s: 0 none yet, 1 no others, 2 others */
    uint64_t login_us;
    uint64_t seq;                  /* insertion order, breaks login_us ties */
    struct router_sess *next;      /* the user's sessions */
    struct router_sess *c2s_prev;
    struct router_sess *c2s_next;
};

/* A bare JID with at least one session. */
struct router_user {
    char *bare;
    size_t bare_len;
    uint64_t hash;
    struct router_sess *sessions;
    size_t nsessions;
    struct router_user *hnext;     /* hash chain */
};

/* A session's resource: in its full JID, after the bare JID and the '/'. */
static inline const char *sess_resource(const struct router_sess *s)
{
    return s->full + s->user->bare_len + 1;
}

struct router_component;

struct sess_table {
    struct router_user **buckets;  /* power-of-two size, chained */
    size_t nbuckets;
    size_t nusers;
    size_t nsessions;
    struct router_c2s **c2s;       /* few: one per c2s process */
    size_t nc2s;
    uint64_t next_seq;
    struct router_component *components; /* the configured external components (component.c) */
    size_t ncomponents;
};

/* What a SessionOpen says (borrowed strings). */
struct sess_info {
    const char *full;              /* prepared full JID "local@domain/resource" */
    const char *c2s;
    uint64_t session_id;
    int priority;
    bool available;
    bool interested;
    bool carbons;
    uint64_t login_us;
    bool update;                   /* SessionOpen.update: never takes a full JID from another session */
};

/* Called for each session the table removes on its own initiative (conflict, limit,
 * kick), before it is freed: the caller tells the owning c2s. s is borrowed. */
typedef void sess_evict_fn(void *ud, const struct router_sess *s, const char *reason);

void sess_table_init(struct sess_table *t);
/* Frees every session, user, component and c2s entry and zeroes t (sess_table_init to reuse it). */
void sess_table_release(struct sess_table *t);

/* Upserts a session. A full JID held by another (c2s, session id) goes to the newer
 * login (RFC 6120 7.7.2.2): the holder is evicted with "conflict" unless in->login_us
 * is older than its login, in which case the incoming one is evicted (a re-registration
 * after a router restart of a session that had already lost) and the table is left as
 * it was. An update (in->update) never takes the JID from another session: a session
 * that lost a conflict may still send one (its unavailable presence) before its close
 * arrives; it is ignored. Past max_sessions (0 = no limit) sessions of the bare JID, the
 * oldest others (login_us, then insertion order) are evicted with "policy-violation".
 * Borrows in. Returns the session holding in->full (owned by the table; the other
 * session when in was refused), or NULL when in->full is not a full JID or in->c2s is
 * empty. */
struct router_sess *sess_table_open(struct sess_table *t, const struct sess_info *in, unsigned max_sessions,
                                    sess_evict_fn *evict, void *ud);
/* Removes the session of full JID only when it belongs to (c2s, session_id).
 * Returns 0, or -1 when there is no such session. */
int sess_table_close(struct sess_table *t, const char *full, const char *c2s, uint64_t session_id);
/* Removes every session and component connection of c2s (it restarted). Returns how many. */
size_t sess_table_purge_c2s(struct sess_table *t, const char *c2s);
/* Removes, silently (nothing is sent), every session of each user for whose bare JID
 * (len bytes) keep says false: a reload gave the user to another shard. Returns how many. */
size_t sess_table_drop_users(struct sess_table *t, bool (*keep)(void *ud, const char *bare, size_t len), void *ud);
/* Kicks a full JID's session or, for a bare JID, all its sessions: each is evicted
 * with reason, then removed. Returns how many. */
size_t sess_table_kick(struct sess_table *t, const char *jid, const char *reason, sess_evict_fn *evict, void *ud);

/* Lookups (borrowed results). bare is not NUL-terminated: len bytes. */
struct router_user *sess_table_user(const struct sess_table *t, const char *bare, size_t len);
struct router_sess *sess_table_find(const struct sess_table *t, const char *full);
/* Calls fn for every session (admin listing); fn must not change the table. */
void sess_table_foreach(const struct sess_table *t, void (*fn)(void *ud, const struct router_sess *s), void *ud);

/* Splits a prepared JID without copying: the bare part is s[0, *bare_len), the domain
 * s[*domain_off, *domain_off + *domain_len), the resource NULL or a pointer into s.
 * Returns 0, or -1 for "" or an empty domain. has_local tells whether there is a local part. */
struct jid_view {
    size_t bare_len;
    size_t domain_off;
    size_t domain_len;
    bool has_local;
    const char *resource;          /* after the '/', or NULL */
};
int router_jid_split(const char *s, struct jid_view *v);

/* --- component.c: external components (XEP-0114) ------------------------------------------
 * Every router shard knows every configured component domain, and which c2s holds its
 * connection: a c2s registers a component with all shards (a SessionOpen whose jid is
 * just the domain), so that a stanza to any JID at that domain, routed to the shard of
 * its bare JID like any other, finds it. There are few components: a list. */
struct router_component {
    /* While connected: where (full = the domain, user NULL, c2s, session_id, login_us),
     * so that a Deliver and an eviction treat it like a session. c2s NULL: not connected. */
    struct router_sess sess;
    struct router_c2s owner;       /* sess.c2s points here while connected (owner.id owned) */
    char *domain;                  /* prepared; sess.full points to it */
    size_t domain_len;
};

/* True when jid (prepared) is a bare domain: no local part, no resource. */
bool router_jid_is_domain(const char *jid);
/* Adds a configured component domain (prepared; copied), not connected. A domain added
 * twice is kept once. */
void router_component_add(struct sess_table *t, const char *domain);
/* The configured component of domain (len bytes, not NUL-terminated), connected or not;
 * NULL when none. Borrowed. */
const struct router_component *router_component_find(const struct sess_table *t, const char *domain, size_t len);
/* A c2s registers a component connection (in->full is the domain). The newest login
 * (login_us, then arrival) holds the domain, like a full JID (sess_table_open): the
 * holder is evicted with "conflict"; an older incoming one is evicted instead and the
 * table stays as it was; an update never takes the domain. Borrows in. Returns 0 (in
 * holds the domain), 1 (in was the older one and was evicted), or -1 when the domain is
 * not a configured component or in->c2s is empty. */
int router_component_open(struct sess_table *t, const struct sess_info *in, sess_evict_fn *evict, void *ud);
/* The component connection (c2s, session_id) of domain is gone. Returns 0, or -1 when
 * that is not the connection holding it. */
int router_component_close(struct sess_table *t, const char *domain, const char *c2s, uint64_t session_id);
/* An administrator ends the component connection of domain (meerkat ctl kick DOMAIN): it
 * is evicted with reason, then forgotten. Returns 1, or 0 when none is connected. */
size_t router_component_kick(struct sess_table *t, const char *domain, const char *reason, sess_evict_fn *evict,
                             void *ud);
/* Forgets every component connection of c2s (it restarted); returns how many. */
size_t router_component_purge_c2s(struct sess_table *t, const char *c2s);
/* Connected components. */
size_t router_component_connected(const struct sess_table *t);
/* Frees the component list (sess_table_release calls it). */
void router_component_release(struct sess_table *t);

/* --- route.c: the routing decision (pure; no bus) -------------------------------------- */
enum route_action {
    ROUTE_ACTION_DELIVER = 0,      /* targets get it */
    ROUTE_ACTION_COMPONENT,        /* targets[0], an external component, gets it (no archive, no offline) */
    ROUTE_ACTION_OFFLINE,          /* store for the bare JID (offline storage) */
    ROUTE_ACTION_ERROR,            /* bounce to the sender with error_type / condition */
    ROUTE_ACTION_DROP,             /* silently; reason says why */
};

#define ROUTE_INLINE_TARGETS 16

struct route_decision {
    enum route_action action;
    const char *reason;            /* a short token for logs: why dropped / bounced / stored */
    const char *error_type;        /* "cancel", ... when ROUTE_ACTION_ERROR */
    const char *condition;         /* RFC 6120 8.3.3 condition name */
    const struct router_sess **targets;
    size_t ntargets;
    const struct router_sess *inline_targets[ROUTE_INLINE_TARGETS];
    size_t cap;
};

/* Tells whether a prepared domain (len bytes, not NUL-terminated) is hosted here. */
typedef bool route_local_fn(void *ud, const char *domain, size_t len);

/* Decides what happens to r by RFC 6121 section 8.5 against the table, without
 * parsing r->xml. Any field of r may be NULL or ""; without a valid from, a bounce or an
 * offline copy becomes a drop ("no_sender"). Borrows everything; targets point
 * into the table and are valid until it changes. Release d with route_decision_release. */
void route_decide(const struct sess_table *t, const Mk__Route *r, route_local_fn *is_local, void *ud,
                  struct route_decision *d);
void route_decision_release(struct route_decision *d);

/* Writes into out a minimal error stanza answering a stanza of kind: from and to are
 * those of the error (i.e. swapped by the caller), id may be NULL or "". Values are
 * escaped. Never parses anything. */
void route_error_xml(struct buf *out, Mk__StanzaKind kind, const char *from, const char *to, const char *id,
                     const char *error_type, const char *condition);
/* "message", "presence", "iq" (anything else is "message"). */
const char *route_kind_name(Mk__StanzaKind kind);

/* --- main.c / deliver.c: the process ----------------------------------------------------- */
struct router_archive;
struct router_intake;
struct rchan_set;
struct rchan_tx;

#define ROUTER_OFFLINE_MAX_PENDING 100000u  /* unacknowledged offline writes per mam shard */
#define ROUTER_OFFLINE_RESEND_MS 2000u

/* The reliable-channel writes a Route caused (archive, offline, gd): the Route is done
 * for its c2s once each is acknowledged (rchan_tx_acked). A Route from a c2s's channel
 * also carries its place there (c2s NULL: none), from which a MISS or OTHERS to gd takes
 * its msg id (router_route_msg_id); a MISS or OTHERS kept for gd names its copy (gd_ref,
 * the gd process it went to), and the intake holds the Route on its channel until gd is
 * done with it (router_gd_hold). replay: the c2s re-sent it as a copy our previous
 * incarnation held (rchan's rc_base above its seq): that one did everything else with it
 * (delivered, archived, stored, carbons), so only its hand-off to gd is made again. */
struct route_marks {
    struct rchan_tx *tx[2];
    uint64_t seq[2];
    unsigned n;
    bool replay;
    const char *c2s;                /* the config's */
    uint64_t c2s_epoch, c2s_seq;
    uint64_t gd_ref;
    const char *gd;
};

/* The msg id of the Route (c2s, channel epoch, seq) on a c2s's channel: the same when the
 * c2s re-sends it to this router's next incarnation, so the data center that delivered
 * the first copy drops the second. A 64-bit hash of the three (never 0); every c2s
 * channel has an epoch of its own, and a restarted c2s new ones. */
uint64_t router_route_msg_id(const char *c2s, uint64_t epoch, uint64_t seq);

struct push_emit;
struct router_offline_fence;
struct router_fence;
#define ROUTER_FENCES_DEFERRED_MAX 1024u  /* c2s fences waiting for this shard's own reload */

struct router {
    struct node *node;
    struct push_emit *pushev;        /* push events (delivered, stored); NULL when none is wanted */
    struct router_archive *archive;  /* NULL when MAM is off */
    struct router_intake *intake;    /* Routes from c2s on the reliable channel */
    struct rchan_set *offline;       /* offline writes to the mam shards; NULL without mam */
    struct router_offline_fence *offline_fence; /* OfflineFetch once those are stored (router/offline_fence.h) */
    struct router_gd *gd;            /* global distribution; NULL when gd is off */
    struct router_muc *muc;          /* XEP-0045 rooms (router/muc.c); NULL when modules.muc is off */
    struct router_custody *custody;  /* message Delivers not yet done at their c2s (router/custody.h) */
    bool stopping;
    bool finished;                   /* the loop has ended: main is tearing down */
    /* A reload added a router shard: this shard may get Routes and SessionOpens for JIDs
     * it gave away (router/main.c, deliver.c). Until then no JID is checked. */
    bool resharded;
    struct router_fence *fences;     /* c2s fences for shards not in this shard's file yet (main.c) */
    size_t nfences;
    struct metric *m_handover;       /* label what: sessions_dropped, route_forwarded, session_open_ignored,
                                      * fence_passed, fence_answered, fence_deferred, fence_dropped */
    struct sess_table table;
    struct metric *m_sessions;
    struct metric *m_routed;       /* label kind */
    struct metric *m_delivered;    /* label kind */
    struct metric *m_offline;
    struct metric *m_errors;       /* label condition */
    struct metric *m_dropped;      /* label reason */
    struct metric *m_route_seconds;
    struct metric *m_envelopes_ignored; /* label payload */
    struct metric *m_evicted;      /* label reason */
    struct metric *m_components;   /* connected external components */
    struct metric *m_custody_kept;    /* copies in the custody table */
    struct metric *m_custody_dropped; /* copies forgotten past limits.custody_max_per_c2s */
    struct metric *m_custody_rerouted; /* copies routed again after their c2s restarted */
    struct metric *m_fanout_envelopes; /* label kind: deliver, fanout, routed_alone (router/fanout.c) */
    uint64_t custody_dropped_seen;    /* router_custody_dropped at the last collect */
};

/* Where a Route comes from, for global distribution (gd.enabled): what a miss (no
 * session here for a user of a hosted domain) does with it. */
enum router_from {
    ROUTER_FROM_LOCAL = 0,         /* a c2s, another shard, a mam: a miss goes to gd */
    ROUTER_FROM_GD_INJECT,         /* another data center: a miss is handled here, and reported stale */
    ROUTER_FROM_GD_SESSIONS,       /* another DC's copy of a bare-JID stanza: sessions here, or dropped */
    ROUTER_FROM_GD_GIVE_UP,        /* gd found no data center: handled here as with GD off */
};

/* Handles one Route envelope payload (borrowed): decides and delivers, stores,
 * bounces or drops. When marks is not NULL it gets the reliable-channel writes the
 * Route caused (archive, offline, the hand-over to gd); a NULL marks is for Routes not
 * on the channel. router_on_route is router_route(rt, r, marks, ROUTER_FROM_LOCAL, NULL). */
void router_on_route(struct router *rt, const Mk__Route *r, struct route_marks *marks);
/* The same for a Route of any origin. via is the GdForward that brought r from gd (NULL
 * otherwise, borrowed): its condition (when not "") replaces the condition of an error
 * answer to a GIVE_UP (e.g. resource-constraint), and an INJECT that finds no session
 * here goes back to gd with one hop less while it has hops left. */
void router_route(struct router *rt, const Mk__Route *r, struct route_marks *marks, enum router_from from,
                  const Mk__GdForward *via);
/* --- gd.c: global distribution (issue 13) ----------------------------------------------
 * With gd.enabled, every session this shard applies or drops is told to the gd process
 * owning its bare JID (rendezvous over the gd processes), which keeps the Redis routing
 * table; a stanza for a user of a hosted domain with no session here goes to that gd
 * (MISS) instead of offline storage or an error; a message or presence to a bare JID
 * with sessions here is delivered here and also handed to gd (OTHERS) for the user's
 * resources in other data centers. Everything to gd travels on one reliable channel
 * per gd, so a user's session events and stanzas stay in order. gd hands back stanzas
 * from other data centers (INJECT: a miss is then handled here and reported STALE;
 * INJECT_SESSIONS: sessions here only) and those no data center has (GIVE_UP). Every
 * function takes a NULL router_gd (GD off) and then does nothing. */
struct router_gd;

#define ROUTER_GD_MAX_PENDING 100000u  /* unacknowledged messages per gd process */
#define ROUTER_GD_RESEND_MS 1000u
#define ROUTER_GD_MAX_KEPT 90000u      /* stanzas kept until gd is done with them, over all gd (then refused: handled here) */
#define ROUTER_GD_SEEN_MAX 65536u      /* GdForwards remembered against duplicates (a power of two) */

/* NULL when gd is off (nothing runs then). Borrows rt. */
struct router_gd *router_gd_new(struct router *rt);
void router_gd_free(struct router_gd **gp);
/* A login s now holds its full JID / s is gone (closed, evicted, its c2s restarted).
 * Borrows s. */
void router_gd_session_open(struct router_gd *g, const struct router_sess *s);
void router_gd_session_close(struct router_gd *g, const struct router_sess *s);
/* Before sess_table_purge_c2s: every session of c2s is told closed. */
void router_gd_purge_c2s(struct router_gd *g, const char *c2s);
/* Envelope hook: acks and hellos of the gd channel, GdForward from gd. True when
 * consumed. Borrows e.
 * A gd that says hello first (it restarted and lost everything) gets, on a channel
 * emptied of what was pending for its previous incarnation, the sessions here whose
 * bare JID it owns (GdSync batches naming its started_us; it takes nothing before) and
 * then every MISS/OTHERS it had not finished, in their first order: a stanza handed to
 * gd stays kept here until gd's DONE names it (the peer data center acknowledged it,
 * or gd gave it back or dropped it), so a kill -9 of gd loses none. INJECT,
 * INJECT_SESSIONS and GIVE_UP are applied once: a copy with the (origin DC, msg id,
 * hops, kind) of one of the last ROUTER_GD_SEEN_MAX applied is dropped (a restarted
 * gd re-sends what it handed on before its acknowledgement left). */
bool router_gd_on_envelope(struct router_gd *g, const Mk__Envelope *e);
/* 1 when r->to is a user of a hosted domain with a session here for it (the full JID's
 * resource, or any resource for a bare JID), 0 when it has none, -1 when r->to is not
 * a user of a hosted domain (a domain, a component, another server). *bare tells
 * whether r->to is a bare JID. */
int router_gd_lookup_here(const struct router *rt, const Mk__Route *r, bool *bare);
/* Hands r (borrowed) to the gd owning r->to with kind; marks (may be NULL) gets the
 * channel write. Returns 0, or -1 (gd off, not a JID, channel full: counted). */
int router_gd_send(struct router_gd *g, Mk__GdForwardKind kind, const Mk__Route *r, struct route_marks *marks);
/* An INJECT (via, borrowed) that found no session here: back to gd as a MISS with its
 * entry time, bounces and origin, and one hop less, so gd re-resolves it (the user moved
 * on) instead of it being stored here. Returns 0, or -1 when no hop is left or the
 * channel refuses (the caller handles it here). */
int router_gd_resend(struct router_gd *g, const Mk__GdForward *via);
/* Unacknowledged messages to the gd processes (graceful stop). */
size_t router_gd_pending(const struct router_gd *g);
/* The Route whose MISS or OTHERS marks names (c2s place, gd_ref) is applied and its
 * writes acknowledged (a MISS: its hand-off to gd): while gd is not done with the copy,
 * the Route is held on its c2s channel (router_intake_hold) and released when gd's DONE
 * (or a GIVE_UP) names the copy. Returns false - the caller acknowledges it as done -
 * when gd is done already, or the intake holds no more (counted). */
bool router_gd_hold(struct router_gd *g, const struct route_marks *marks);

/* --- carbons.c: XEP-0280 carbon copies ------------------------------------------------
 * Made here because this shard knows every session of its users, on whichever c2s they
 * are: a copy is a Deliver with carbon set, and each owning c2s wraps the message for its
 * target sessions (the router never parses or rewrites the XML for it). */

/* A message eligible for carbons (r->carbon_eligible) was delivered to d's targets:
 * every other carbons-enabled session of the recipient gets a received copy (not the
 * sender's own session, for a message to oneself), with the archive write's fence
 * (NULL when not archived). Borrows everything. */
void router_carbons_received(struct router *rt, const Mk__Route *r, const struct route_decision *d,
                             Mk__MamFence *fence);
/* The sender's part of r (r->carbon_sent or r->carbon_sent_only), for a Route from a
 * c2s (from ROUTER_FROM_LOCAL): when this shard owns the sender's bare JID, its other
 * carbons-enabled sessions get a sent copy; otherwise a carbon_sent_only copy of r goes
 * to the shard that owns it (a plain send). Returns true when r was carbon_sent_only
 * (then done: it is not routed). Borrows everything. */
bool router_carbons_sent(struct router *rt, const Mk__Route *r, enum router_from from);

/* The sessions of full's user changed (opened, closed, carbons turned on or off): each
 * session whose c2s has not been told, or was told otherwise, gets a CarbonsHint saying
 * whether other carbons-enabled sessions of the user exist (sent copies needed). */
void router_carbons_hints(struct router *rt, const char *full);

/* --- fanout.c: stanzas from a room to many recipients -------------------------------------
 * Each stanza of stanzas[0, nst) (templates: Route.to_at) goes to each recipient of
 * to[0, nto) (full JIDs), in order per recipient, as if each copy were a Route to that
 * JID, but for the cost: the recipients another router shard owns go there in one Fanout
 * envelope per shard (which hands it to router_fanout in turn); each recipient with a
 * session of that full JID here is served by one Deliver per c2s carrying the stanzas
 * once, its target sessions and their JIDs (the c2s writes each one's JID as to; message
 * stanzas kept in custody per Deliver); any other recipient (no such session, a component
 * or another server's user, the hop limit) gets each stanza made whole through
 * router_route, which bounces, stores, drops or hands it to gd by the usual rules. An
 * envelope lists at most FANOUT_MAX_JID_BYTES of JIDs (more envelopes for more). With
 * from_shard (a Fanout from another shard) nothing is sent on to another shard.
 * meerkat_router_routed_total and delivered_total count copies as before. Borrows
 * everything. */
void router_fanout(struct router *rt, Mk__Route *const *stanzas, size_t nst, char *const *to, size_t nto,
                   bool from_shard);
/* deliver.c: the delivered push event router_route makes for a message r (to a full JID
 * with a session here; unavailable: that session is not available with priority >= 0),
 * when r's domain wants such events. Borrows r. */
void router_push_delivered(struct router *rt, const Mk__Route *r, bool unavailable);

/* Tells the owning c2s to close s (SessionClose with reason). Borrows s. */
void router_send_close(struct router *rt, const struct router_sess *s, const char *reason);
#endif
