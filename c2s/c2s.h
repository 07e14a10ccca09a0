/* c2s/c2s.h - meerkat-c2s's process-wide state: listeners, connections, sessions, and the calls between its modules. */
#ifndef MK_C2S_C2S_H
#define MK_C2S_C2S_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>
#include <openssl/ssl.h>

#include "buf.h"
#include "cfg.h"
#include "jid.h"
#include "meerkat.pb-c.h"
#include "metrics.h"
#include "node.h"
#include "scram.h"
#include "store.h"
#include "xml.h"

/* Namespaces the c2s modules use. */
#define NS_TLS        "urn:ietf:params:xml:ns:xmpp-tls"
#define NS_SASL       "urn:ietf:params:xml:ns:xmpp-sasl"
#define NS_BIND       "urn:ietf:params:xml:ns:xmpp-bind"
#define NS_SESSION    "urn:ietf:params:xml:ns:xmpp-session"
#define NS_STANZAS    "urn:ietf:params:xml:ns:xmpp-stanzas"
#define NS_STREAMS    "urn:ietf:params:xml:ns:xmpp-streams"
#define NS_ROSTER     "jabber:iq:roster"
#define NS_REGISTER   "jabber:iq:register"
#define NS_REGISTER_F "http://jabber.org/features/iq-register"
#define NS_ROSTERVER  "urn:xmpp:features:rosterver"
#define NS_DELAY      "urn:xmpp:delay"

enum conn_state {
    CONN_STATE_TLS_ACCEPT = 0,  /* direct TLS: handshake before any stream */
    CONN_STATE_STREAM,          /* waiting for a stream header */
    CONN_STATE_STARTTLS,        /* <proceed/> sent: TLS handshake in progress */
    CONN_STATE_AUTH,            /* stream open, not authenticated */
    CONN_STATE_BIND,            /* authenticated, stream restarted, waiting for bind */
    CONN_STATE_SESSION,         /* resource bound: stanzas flow */
    CONN_STATE_CLOSING,         /* </stream:stream> or a stream error sent; flushing, then closed */
};

struct session;
struct auth_wait;
struct component;

/* One client connection. Buffers are held only while needed: out only while output
 * is pending (released when flushed), the parser keeps only a partial stanza. */
struct conn {
    struct c2s *c2s;
    int fd;
    unsigned refs;                 /* pending asynchronous work (store queries) holding the struct */
    ev_io io;
    ev_timer timer;                /* idle / auth / handshake timeout, and shaping pauses */
    SSL *ssl;                      /* NULL until TLS starts */
    bool tls;                      /* TLS established */
    bool direct_tls;               /* accepted on the XEP-0368 port */
    struct ws_link *ws;            /* a WebSocket client (c2s/ws.c), NULL on TCP */
    bool want_write;               /* out has bytes the socket did not take */
    bool closed;                   /* reaped after this loop iteration */
    bool in_flush_list;
    bool starttls_pending;         /* <proceed/> queued: start TLS once it is written */
    bool no_more_output;           /* the closing </stream:stream> is queued */
    bool io_paused;                /* reading stopped by the traffic shaper */
    bool out_full;                 /* out passed limits.max_output_bytes: writes refused, the flush ends the stream */
    bool out_overflowed;           /* that happened once: the stream error is on its way */
    bool in_deferred_list;         /* the parser kept input back: flushed by c2s->deferred_w */
    bool in_hs_queue;              /* waits in c2s->hs_head for its turn at a TLS handshake step */
    bool detached;                 /* socket gone, session kept for XEP-0198 resumption (c2s/sm.c):
                                    * the timer runs the resumption timeout; nothing is read or written */
    bool sm_overflow;              /* out_full set by stream management: too many unacknowledged stanzas */
    bool bind_wait;                /* the bind result waits for the router's SessionConfirmed (stream.c);
                                    * nothing more is read meanwhile */
    char *bind_iq_id;              /* that bind's iq id, or NULL */
    struct xml_node **bind_held;   /* stanzas already parsed meanwhile, handled once it is sent */
    size_t nbind_held;
    ev_timer bind_timer;           /* sends the result without the answer after C2S_BIND_CONFIRM_S */
    uint64_t serial;               /* unique per connection in this process, for logs */
    struct xml_parser *parser;
    struct buf out;
    char ip[48];
    bool preauth_counted;          /* counted by authlimit_preauth_begin until authenticated or closed */
    char stream_id[24];
    char *domain;                  /* the stream's to, prepared; a hosted domain */
    char *user;                    /* authenticated localpart (nodeprepped); a component's domain
                                    * once its handshake succeeded */
    char *sasl_mech;
    char *sasl_user;               /* the authcid of a SCRAM exchange in progress */
    struct scram_server *scram;
    enum scram_hash scram_hash;
    unsigned sasl_failures;        /* wrong credentials */
    unsigned sasl_attempts;        /* failed exchanges of any kind */
    unsigned sasl_gen;             /* bumped when a SASL exchange starts or ends: a store answer
                                    * carries the number it was asked under and is dropped when
                                    * it no longer matches (an <abort/> or a new <auth/> came) */
    enum conn_state state;
    int64_t last_read_us;
    uint64_t shaper_bytes;         /* bytes read in the current shaping second */
    int64_t shaper_start_us;
    struct session *sess;          /* after bind */
    struct component *comp;        /* a connection on the component listener (c2s/component.h), else NULL */
    struct conn *next;             /* c2s->conns list */
    struct conn *prev;
    struct conn *flush_next;       /* c2s->flush_list */
    struct conn *reap_next;        /* c2s->reap_list: closed, freed once refs == 0 */
    struct conn *deferred_next;    /* c2s->deferred_list */
    struct conn *hs_next;          /* c2s->hs_head queue */
};

/* A roster item as the session keeps it in memory (loaded at bind). */
struct roster_item {
    char *jid;                     /* bare, prepared */
    char *name;                    /* or NULL */
    char *subscription;            /* "none" "to" "from" "both" */
    char *ask;                     /* "subscribe" (pending out), "in" (pending in), "both" (out and in), "" */
    char *groups;                  /* "\n"-separated, or "" */
    bool approved;                 /* pre-approved */
    struct roster_item *next;
};

/* A bound resource. */
/* A MAM write's place on its reliable channel (proto MamFence): the writer's
 * rchan_sender_key, the channel's epoch, the write's seq (0: none). */
struct c2s_mam_fence {
    uint64_t writer;
    uint64_t epoch;
    uint64_t seq;
};

/* The fence in f from its proto form (NULL or seq 0: none). */
static inline void c2s_mam_fence_from(struct c2s_mam_fence *f, const Mk__MamFence *m)
{
    if (m == NULL || m->seq == 0)
        *f = (struct c2s_mam_fence){0, 0, 0};
    else
        *f = (struct c2s_mam_fence){m->writer, m->epoch, m->seq};
}

/* The proto form of f in *m (initialised here); returns m, or NULL when f is none. */
static inline Mk__MamFence *c2s_mam_fence_to(const struct c2s_mam_fence *f, Mk__MamFence *m)
{
    if (f->seq == 0)
        return NULL;
    mk__mam_fence__init(m);
    m->writer = f->writer;
    m->epoch = f->epoch;
    m->seq = f->seq;
    return m;
}

struct session {
    struct conn *conn;
    uint64_t id;                   /* unique in this process; the router knows it */
    struct jid jid;
    char *full;                    /* "user@domain/resource"; one block holds it, bare and jid's parts */
    char *bare;                    /* "user@domain", in full's block */
    int priority;
    bool available;                /* initial presence sent */
    bool interested;               /* roster requested: gets roster pushes and subscription requests */
    bool roster_loaded;
    bool blocklist_requested;      /* gets block/unblock pushes */
    bool carbons;                  /* XEP-0280 enabled (c2s/carbons.c): the router sends it carbon copies */
    bool handed_over;              /* XEP-0198: resumed on another c2s; it ends here without
                                    * telling anyone it went unavailable */
    struct xml_packed *presence;   /* last available presence broadcast (without to, id,
                                    * from), or NULL */
    struct roster_item *roster;
    char **directed;               /* full JIDs sent directed presence while available */
    size_t ndirected;
    char **blocked;                /* XEP-0191 block list (prepared JIDs) */
    size_t nblocked;
    int64_t login_us;
    /* Read-your-writes for MAM (c2s/mam_c2s.c): where the archive write of the last
     * message the session sent, and of the last one delivered to it, stand on their
     * channels to the mam shard; a MAM query carries both as fences. seq 0: none. */
    struct c2s_mam_fence mam_sent;
    struct c2s_mam_fence mam_delivered;
    void *mod_state;               /* the modules' per-session state (c2s/module.h), one block */
    unsigned holds;                /* start-up loads not in yet (session_hold): presence waits */
    struct xml_node **held;        /* client presence held meanwhile, in order */
    bool confirm_asked;            /* its login's SessionOpen asked the router for SessionConfirmed */
    size_t nheld;
    struct session *hnext;         /* c2s->sessions hash chain */
};

struct listener {
    struct c2s *c2s;
    int fd;
    bool direct_tls;
    bool websocket;                /* RFC 7395 (c2s/ws.c); direct_tls says wss */
    bool component;                /* XEP-0114 external components (c2s/component.c) */
    ev_io io;
};

struct rchan_set;

struct c2s {
    struct node *node;
    const struct cfg *cfg;
    struct ev_loop *loop;
    SSL_CTX *tls_ctx;
    struct store *store;
    struct workpool *kdf_pool;     /* PBKDF2 of PLAIN logins and registrations, off the loop */
    struct listener listeners[4];  /* STARTTLS, direct TLS, components, WebSocket */
    size_t nlisteners;
    struct xml_limits limits;
    struct conn *conns;
    size_t nconns;
    struct conn *flush_list;       /* connections with output to write this iteration */
    struct conn *reap_list;
    ev_prepare flush_w;            /* one write per connection per loop iteration, then reaping */
    ev_timer idle_sweep_w;         /* silent connections release their parser's memory */
    struct conn *deferred_list;    /* connections whose parser kept input back (xml_parser_deferred) */
    unsigned handshakes;           /* TLS handshake steps run in this loop iteration */
    struct conn *hs_head;          /* connections waiting for a handshake step, oldest first */
    struct conn *hs_tail;
    ev_check hs_check_w;           /* each iteration: resets the budget, serves the queue first */
    ev_idle hs_idle_w;             /* active while the queue is not empty: the poll does not block */
    ev_timer deferred_w;           /* parses that input when no more came for a moment */
    uint64_t next_session_id;
    struct session **sessions;     /* hash by id */
    size_t sessions_cap;
    size_t nsessions;
    bool stopping;
    struct authlimit *authlimit;   /* failed-login and registration counts (c2s/authlimit.h) */
    bool route_bodies;             /* a pusher backend wants delivered/stored events: Routes carry the body text */
    struct auth_wait *auth_waits;  /* credential lookups the limits hold back (stream.c) */
    struct rchan_set *routes;      /* Routes to the router shards, on the reliable channel */
    struct c2s_handover *handover; /* a router shard added at a reload, while its Routes wait (c2s/handover.c) */
    struct metric *m_handovers;    /* label result: fenced, deadline, superseded */
    struct metric *m_routes;       /* label result: sent, backpressure */
    struct metric *m_routes_pending;
    struct metric *m_routes_held;
    uint64_t out_mam_id;           /* the archive id a module gave the message being routed now (0: none) */
    /* The router's custody id of the Deliver being written now (0: none): stream management
     * takes it with its copy (sm_sent) and reports it done once the client acknowledges it. */
    uint64_t deliver_custody;
    uint64_t deliver_mam_id;       /* and the id its offline row takes (Deliver archive_id, else the Route's mam_id) */
    uint64_t *custody_done;        /* custody ids done since the last flush (session_custody_flush) */
    size_t ncustody_done, custody_done_cap;
    ev_timer custody_w;            /* flushes them limits.custody_report_ms after the first */
    ev_prepare custody_ride_w;     /* or sooner: a router's ids ride in a frame leaving for it anyway */
    ev_timer custody_alive_w;      /* tells every router this c2s is alive (session_custody_alive_start) */
    bool out_carbon;               /* the message being routed now is eligible for carbons (c2s/carbons.c) */
    bool out_carbon_sent;          /* and the sender's other sessions may want a sent copy */
    struct component *components;  /* authenticated component connections (c2s/component.c) */
    struct metric *m_components;
    struct metric *m_component_handshakes; /* label result */
    /* metrics */
    struct metric *m_conns;
    struct metric *m_sessions;
    struct metric *m_stanzas_in;   /* label kind */
    struct metric *m_stanzas_out;
    struct metric *m_auth;         /* label result */
    struct metric *m_stream_errors;/* label condition */
    struct metric *m_tls_handshakes;
    struct metric *m_limit_refusals;/* label limit: held_presence, roster_items, block_items */
    struct metric *m_output_overflow;
    struct metric *m_kdf_refused;  /* password hashing refused: the pool's queue was full */
    struct metric *m_auth_events;  /* label origin: local, peer */
    struct metric *m_auth_waits;
    struct metric *m_store_pending;
    struct metric *m_store_refused;
    struct metric *m_store_handoffs;
};

/* The password-hashing pool: threads, and jobs accepted at once (past it a login gets
 * temporary-auth-failure, a registration a 'wait' error). */
#define C2S_KDF_THREADS  2
#define C2S_KDF_MAX_JOBS 64

/* --- main.c: process-wide calls ------------------------------------------------------ */
/* Counts a login-limit event (a failed login of account from ip, or an account
 * registered from ip) in this process's table unless already_counted, and sends it to
 * every other c2s so that the limits hold across processes. Borrows ip and account
 * (account may be NULL for a registration). */
void c2s_auth_event(struct c2s *s, Mk__AuthEventKind kind, const char *ip, const char *account, bool already_counted);

/* --- conn.c: transport -------------------------------------------------------------- */
/* Opens the STARTTLS, direct-TLS and component listeners (SO_REUSEPORT). Returns 0 or -1 with err. */
int conn_listen(struct c2s *s, char *err, size_t errlen);
/* Stops accepting (graceful stop). */
void conn_stop_listening(struct c2s *s);
/* Installs the per-iteration flush and reap watchers. */
void conn_init_loop(struct c2s *s);
/* Holds c across an asynchronous call (the reaper frees a closed connection only once
 * nothing holds it). A callback holding a ref checks c->closed before using it. */
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);
/* Queues bytes for the client (borrowed, copied into conn->out); written once per loop
 * iteration. Nothing is written after the connection starts closing. */
void conn_write(struct conn *c, const void *p, size_t n);
void conn_write_str(struct conn *c, const char *s);
/* Queues bytes that are not a stanza (stream management's own elements) or a stanza
 * stream management already counted (re-sent on resumption): not counted, not kept. */
void conn_write_raw(struct conn *c, const void *p, size_t n);
void conn_write_nonza(struct conn *c, const char *s);
/* Serializes node (a stanza, namespace jabber:client implied) and queues it. Borrows node. */
void conn_send(struct conn *c, const struct xml_node *node);
/* Sends <stream:error><condition/></stream:error></stream:stream> (opening a stream
 * first if none was sent) and closes after the flush. text may be NULL. */
void conn_stream_error(struct conn *c, const char *condition, const char *text);
/* Same with an application-specific condition element (serialized, borrowed) after the text. */
void conn_stream_error_app(struct conn *c, const char *condition, const char *text, const char *app);
/* <stream:error><see-other-host>addr</see-other-host> (RFC 6120 4.9.3.19; addr is
 * "host:port", IPv6 in brackets, borrowed), then closes as conn_stream_error does. */
void conn_see_other_host(struct conn *c, const char *addr);
/* Too many stanzas the client has not acknowledged (XEP-0198, c2s/sm.c): the stream ends
 * with <resource-constraint/> at this loop iteration's flush (the caller's session stays
 * whole until then); output is refused meanwhile. */
void conn_sm_overflow(struct conn *c);
/* Closes the stream cleanly (</stream:stream>) and then the connection. */
void conn_close_stream(struct conn *c);
/* Marks the connection closed: the session ends, the fd closes, the struct is freed
 * after this loop iteration. Safe to call from any callback, more than once. */
void conn_close(struct conn *c, const char *reason);
/* Reading stopped for a bind wait (c->bind_wait cleared): watches the socket again and
 * reads what is buffered (TLS included) in this loop iteration. Borrows c. */
void conn_resume_input(struct conn *c);

/* --- stream.c: stream negotiation (header, features, STARTTLS, SASL, bind) ----------- */
/* The parser's event callback for a connection. */
void stream_on_event(void *ud, enum xml_event_kind kind, struct xml_node **node);
/* Ends every credential lookup the login limits hold back (graceful stop): each
 * exchange still open gets <temporary-auth-failure/>. */
void stream_cancel_auth_waits(struct c2s *s);
/* How long a bind result waits for the router's SessionConfirmed (a router down or
 * restarting): then it is sent anyway, logged as bind_unconfirmed. */
#define C2S_BIND_CONFIRM_S 5.0
/* The router applied the login's SessionOpen of c's session: the bind result the
 * client waits for is sent, then the stanzas it sent meanwhile are handled and
 * reading resumes. Nothing when c waits for no answer. Borrows c. */
void stream_bind_confirmed(struct conn *c);
/* Frees what a bind wait holds (conn_close, conn_free); NULL-safe on its parts. */
void stream_bind_release(struct conn *c);

/* --- session.c: bound sessions ------------------------------------------------------- */
/* Creates the session for conn after a successful bind (resource prepared), registers it
 * with the router (SessionOpen) and runs the modules' session_open hooks. */
struct session *session_new(struct c2s *s, struct conn *c, const char *resource, uint64_t id);
/* A session id not used yet (session_new with id 0 takes one itself). */
uint64_t session_id_reserve(struct c2s *s);
/* SessionOpen (a login, not an update) of sess's full JID for session id of another c2s
 * (c2s_id): where a session resumed elsewhere goes (XEP-0198 across c2s). Borrows all. */
void session_open_elsewhere(struct session *sess, const char *c2s_id, uint64_t id);
/* SessionClose of session id of full (a client's full JID) to its router shard. */
void session_close_id(struct c2s *s, const char *full, uint64_t id, const char *reason);
/* Ends a session (connection gone): the modules' session_close hooks, SessionClose. */
void session_end(struct session *sess, const char *reason);
/* Sends SessionClose for session id of jid (a client's full JID or a component's domain) to
 * router. All borrowed. */
void session_send_close(struct c2s *s, const char *router, const char *jid, uint64_t id, const char *reason);
struct session *session_by_id(struct c2s *s, uint64_t id);
/* Re-sends SessionOpen with the current priority/availability (after presence changes),
 * marked as an update: it never takes the full JID from another session at the router. */
void session_update_router(struct session *sess);
/* A router (re)started: sends it SessionOpen (not an update) for every session of this
 * c2s in its shard, then Resync{done}, the marker the router waits for before it routes
 * what was held. Borrows router. */
void session_resync_router(struct c2s *s, const char *router);
/* Handles one stanza from the client of sess: checks and stamps from, then either a
 * module handles it or it is routed. Borrows *stanza (may take it, setting NULL). */
void session_on_stanza(struct session *sess, struct xml_node **stanza);
#define C2S_ROUTE_RESEND_MS 2000u

/* --- handover.c: a router shard added at a reload ---------------------------------------
 * Rendezvous hashing gives the new shard a share of the bare JIDs, taken from the old
 * shards. On the reload (added: the processes it added) this c2s makes a sender for
 * each new shard, paused: Routes to the JIDs it now owns are numbered and kept there.
 * It re-registers its sessions of that share with it (session_resync_router: SessionOpen
 * with availability, priority, carbons, then Resync{done}, which the new shard waits for
 * from every c2s before it routes). The old shards drop those sessions at their own reload
 * and forward what they still get for the JIDs they gave up to the new owner, in order
 * (router/main.c). To order what went through an old shard ahead of what goes straight to
 * the new one, this c2s sends each old shard a HandoverFence behind its Routes (once its
 * sender to it has handed them all to the bus); the old shard passes it on to the new
 * shard behind what it forwarded (after its own reload), and the new shard, which then has
 * all of that, answers done. A new shard's Routes go once every old shard's fence came
 * back from it. One that does not within C2S_HANDOVER_MAX_MS (an old shard down or
 * stopped) does not hold them longer: released, logged (router_handover_done
 * why=deadline) and counted (meerkat_c2s_router_handovers_total). */
#define C2S_HANDOVER_MAX_MS 5000
struct c2s_handover;
void c2s_handover_start(struct c2s *s, const struct cfg_proc *const *added, size_t nadded);
/* An Ack from a router came in: a fence that waited for the sender to hand its Routes to
 * the bus goes now. */
void c2s_handover_progress(struct c2s *s);
/* A new shard answered a fence (f->done). Borrows everything. */
void c2s_handover_on_fence(struct c2s *s, const char *sender, const Mk__HandoverFence *f);
void c2s_handover_free(struct c2s *s);
#define C2S_REROUTE_MAX_HOPS 3   /* a Deliver for a session gone meanwhile is routed again at most this often */
/* Routes a stanza (from already stamped) to the router shard of its to's bare JID, on
 * the reliable channel: kept until that router is done with it (delivered, bounced or
 * stored, its archive and offline writes acknowledged) and re-sent to a restarted
 * router. Borrows stanza. Returns 0 (sent, or nothing to route it to), or -1 with errno
 * EAGAIN when limits.max_pending_routes Routes to that shard are unacknowledged: the stanza
 * is not sent, and for a client's own stanza the caller answers it with a wait /
 * resource-constraint error (back-pressure: the client learns it, nothing is dropped
 * silently). */
int session_route(struct c2s *s, const struct xml_node *stanza);
/* Handles a Deliver from the router: writes the stanza to each target session that
 * should get it (the modules' stanza_in hooks: blocking, presence rules), and notes
 * the place of its archive write in the session's mam_delivered (a fence for its next
 * MAM query). A fan-out (router/fanout.c: session_jids set) carries templates (its
 * route, then more): each target session gets each of them in order with its JID as
 * to (env_route_fill), as if each were a Deliver of its own; its custody id is done for
 * a session with the last one. */
void session_on_deliver(struct c2s *s, Mk__Deliver *d);
/* A router's SessionConfirmed (borrowed): the session it names, if still here, gets its
 * bind result (stream_bind_confirmed). */
void session_on_confirmed(struct c2s *s, const Mk__SessionConfirmed *sc);
/* Routes r (a Deliver's stanza for a session gone meanwhile) again, so that the router,
 * which has the session's close or new route by then, stores, bounces or delivers it;
 * at most C2S_REROUTE_MAX_HOPS times (presence is not). Borrows r. */
/* Returns 0 (sent, or nothing to do: presence, no hop left, no router), or -1 with errno
 * EAGAIN when the Route was not sent (back-pressure on that router's channel). */
int session_reroute(struct c2s *s, const Mk__Route *r);
/* session_reroute for target k of d (borrowed): its route, or for a fan-out (a Deliver
 * with session_jids) each of its stanzas made whole for that target's JID. Returns as
 * session_reroute (-1 when any was not sent). */
int session_reroute_deliver(struct c2s *s, const Mk__Deliver *d, size_t k);
/* One target session is done with the Deliver of custody id (0: nothing): written to a
 * client without stream management, acknowledged by one with it, stored offline or
 * routed again here, or dropped by rule. Appended; the routers are told
 * (router/custody.h) once C2S_CUSTODY_BATCH are done, limits.custody_report_ms after the
 * first, or sooner for a router that gets a bus frame from this c2s anyway (at the end
 * of a loop turn): a report per message would cost a bus envelope per message at a low
 * chat rate, a report of its own a frame and a wake-up of the router, and a late report
 * only keeps a copy longer (a duplicate if this c2s dies meanwhile). */
#define C2S_CUSTODY_BATCH 1024
void session_custody_done(struct c2s *s, uint64_t id);
/* Sends the custody ids done since the last flush now, one CustodyDone per router, and
 * stops the flush timer (a graceful stop calls it last). */
void session_custody_flush(struct c2s *s);
/* Sends every router an empty CustodyDone every third of limits.custody_timeout (nothing
 * when it is 0), from now until session_custody_alive_stop: a router gives up a c2s it
 * has not heard for the whole timeout and routes its copies again (router/custody.h). */
void session_custody_alive_start(struct c2s *s);
void session_custody_alive_stop(struct c2s *s);
/* Sends CustodyDone{ids, taken_from} to the routers the n ids (borrowed) name, at once:
 * the copies a session resumed here from c2s taken_from (borrowed) brought with its queue
 * are this c2s's to report from now on (router_custody_move). Ids 0 are skipped. */
void session_custody_take_over(struct c2s *s, const char *taken_from, const uint64_t *ids, size_t n);
/* Calls cb(ud, true) once the client of sess has acknowledged the last n stanzas written
 * to it (XEP-0198; at once when stream management is off: they are in the output
 * buffer), or cb(ud, false) if the session ends first: those n stanzas are then left to
 * the caller (stream management does not store them offline). cb must not write to the
 * session. Borrows sess; ud is the caller's. */
void session_after_ack(struct session *sess, size_t n, void (*cb)(void *ud, bool acked), void *ud);
/* Replies to stanza with a stanza error (type cancel/modify/auth/wait, a condition from
 * RFC 6120 8.3.3, optional text), swapping from/to; sent to the session's client.
 * Never answers an error with an error. Borrows stanza. */
void session_send_error(struct session *sess, const struct xml_node *stanza, const char *type,
                        const char *condition, const char *text);
/* Builds the error reply as a new tree (caller frees); NULL for a stanza of type error. */
struct xml_node *stanza_error_reply(const struct xml_node *stanza, const char *type, const char *condition,
                                    const char *text);
/* Builds <iq type='result' id=... to=... from=...> for a request; caller frees. */
struct xml_node *iq_result(const struct xml_node *req);

/* --- what a stanza handler did with a stanza (the feature modules, c2s/module.h) --------- */
enum disp {
    DISP_PASS = 0,
    DISP_DONE,
    DISP_BOUNCE,
};
#endif
