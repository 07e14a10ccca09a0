/* gd/gd.h - meerkat-gd's process-wide state: the sessions it owns, the stanzas waiting for a data center, the table and the link. */
#ifndef MK_GD_GD_H
#define MK_GD_GD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "link.h"
#include "meerkat.pb-c.h"

struct node;
struct metric;
struct gd_table;
struct gd_link;
struct rchan_tx;
struct rchan_rx;
struct rchan_set;
struct cfg_gd;

#define GD_ROUTER_MAX_PENDING 100000u   /* unacknowledged GdForward per router shard */
#define GD_ROUTER_RESEND_MS 1000u
/* After a router restarts, its c2s re-register their sessions through it within the
 * router's sync time (ROUTER_SYNC_TIMEOUT_MS, 3 s); the sessions it held before and that
 * were not re-registered by then are gone. */
#define GD_ROUTER_RESYNC_SEC 6.0
#define GD_PEER_POLL_SEC 3.0            /* peers without a configured endpoint: read Redis this often */
#define GD_REAP_SEC 1.0                 /* empty recipient queues are freed this often */

/* A session this gd owns (its bare JID is this gd's by rendezvous), as a router told it. */
struct gd_sess {
    char *full;
    uint64_t hash;
    char *c2s;
    char *router;                  /* the router shard that told it */
    uint64_t session_id;
    uint64_t version;              /* login time, microseconds: the table entry's version */
    uint64_t gen;                  /* the router's generation when last confirmed (resync) */
    struct gd_sess *hnext;
};

/* A stanza a router keeps until gd is done with it (GdForward.router_ref): DONE goes
 * back when the last of its holders lets go (its queue item, each link send not yet
 * acknowledged by the peer data center). */
struct gd_done_tok {
    const char *router;            /* owned by the config */
    uint64_t ref;
    unsigned holders;
};

/* One stanza from a router waiting for a data center; owns env. */
struct gd_item {
    struct gd_item *next;
    Mk__Envelope *env;             /* its gd_forward */
    struct gd_done_tok *tok;       /* NULL when the router keeps no copy */
    bool as_bare;                  /* a message to a full JID found nowhere: now looked up as its bare JID */
};

/* A message sent on the link and not yet acknowledged by the peer. */
struct gd_flight {
    uint64_t seq;                  /* its number on the link to the peer */
    struct gd_done_tok *tok;
};

/* A message from the link handed to a router, its link acknowledgement held until the
 * router acknowledged it (tx NULL: nothing to wait for). */
struct gd_landing {
    struct gd_link_ticket ticket;
    struct rchan_tx *tx;
    uint64_t seq;
};

/* Per peer data center: what is in flight each way, oldest first (rings). */
struct gd_peer_flow {
    char *dc;
    struct gd_flight *out;
    size_t out_cap, out_head, out_n;
    struct gd_landing *in;
    size_t in_cap, in_head, in_n;
};

/* The stanzas for one bare JID, handled one at a time in arrival order: a lookup or a
 * bounce of the first holds the ones behind it (order per sender -> recipient). */
struct gd_rcpt {
    struct gd *gd;
    char *bare;
    uint64_t hash;
    struct gd_rcpt *hnext;
    struct gd_item *head, *tail;
    size_t n;
    bool busy;                     /* a lookup for head is in flight */
    bool running;                  /* inside rcpt_run (a cache hit answers synchronously) */
    ev_timer retry;                /* the bounce of head */
};

struct gd_router_gen {
    char *router;
    uint64_t gen;
    /* Its channel is taken from its GdSync for this incarnation on (or its own restart):
     * what it sent before was for the previous incarnation, and it re-sends that itself. */
    bool synced;
    uint64_t *done;                /* refs to send in the next DONE */
    size_t ndone, done_cap;
};

struct gd {
    struct node *node;
    const struct cfg_gd *cfg;
    struct gd_table *table;
    struct gd_link *link;
    struct rchan_rx *rx;           /* from the routers */
    struct rchan_set *routers;     /* to the routers, shard = recipient's bare JID */
    /* owned sessions by full JID */
    struct gd_sess **sess;
    size_t nsess_buckets;
    size_t nsess;
    /* recipients with stanzas waiting */
    struct gd_rcpt **rcpts;
    size_t nrcpt_buckets;
    size_t nrcpts;
    size_t waiting;                /* stanzas in every queue */
    struct gd_router_gen *gens;    /* per router: bumped at its restart */
    size_t ngens;
    uint64_t next_msg;
    struct gd_peer_flow *flows;
    size_t nflows;
    ev_prepare done_flush;         /* sends the DONEs once per loop iteration */
    bool releasing;                /* exit: nothing more is told to the routers */
    bool stopping;                 /* SIGTERM: nothing new is taken (the routers re-send it to the next incarnation) */
    ev_prepare stop_check;         /* exits once the routers have acknowledged what was given back */
    ev_timer resync_timer;         /* sweeps sessions a restarted router did not confirm */
    ev_timer peer_timer;           /* learns peer endpoints from Redis */
    ev_timer reap_timer;
    /* metrics (DESIGN.md section 7) */
    struct metric *m_forwards;     /* meerkat_gd_forwards_total{result} */
    struct metric *m_bounces;      /* meerkat_gd_bounces_total */
    struct metric *m_injected;     /* meerkat_gd_injected_total{kind} */
    struct metric *m_session_events; /* meerkat_gd_session_events_total{event} */
    struct metric *m_sessions;     /* gauge */
    struct metric *m_waiting;      /* gauge: stanzas waiting for a data center (lookups, bounces) */
    struct metric *m_lookups;      /* meerkat_gd_lookups_total (table stats) */
    struct metric *m_cache_hits;   /* meerkat_gd_cache_hits_total{cache} */
    struct metric *m_redis_reads;
    struct metric *m_table_writes; /* {result} */
    struct metric *m_link_queue;   /* gauge {peer} */
    struct metric *m_redis_seconds;/* histogram {op}: Redis round trips */
};

/* --- forward.c: stanzas between routers, the table and the link ------------------------- */

/* Sets up what forward.c runs on the loop (the DONE flush). */
void gd_forward_init(struct gd *g);
/* The per-router state (generation, sync, DONEs waiting), made on first use. Borrows router. */
struct gd_router_gen *gd_router(struct gd *g, const char *router);

/* A GdForward from a router (MISS, OTHERS, STALE). Takes *envp (NULL on return). */
void gd_forward_from_router(struct gd *g, Mk__Envelope **envp);
/* A message from peer data center from (the link's recv callback): handed to the router
 * shard of its recipient; its link acknowledgement waits for the router's (ticket, from
 * gd_link_defer). Borrows everything. */
void gd_forward_from_link(struct gd *g, const char *from, const char *origin, uint64_t msg_id, const void *payload,
                          size_t len, const struct gd_link_ticket *ticket);
/* The link's peer acknowledged messages (or gave up on them): their stanzas are done. */
void gd_forward_link_acked(struct gd *g, const char *peer);
/* A router acknowledged messages: the link messages they carried are acknowledged. */
void gd_forward_routers_acked(struct gd *g);
/* A message the link gave up on (peer unreachable past its budget): given back to the
 * router (offline storage, or resource-constraint to the sender). Borrows payload. */
void gd_forward_expired(struct gd *g, const char *peer, const void *payload, size_t len);
/* Graceful stop: every stanza waiting for a data center is given back to its router
 * (offline storage or the error, as after the bounce deadline), the rest dropped. */
void gd_forward_drain(struct gd *g);
/* Frees every recipient queue and what waits in it (exit). */
void gd_forward_release(struct gd *g);
/* Frees the recipient queues that are empty and idle. */
void gd_forward_reap(struct gd *g);
#endif
