/* mam/fence.h - read-your-writes for MAM queries: each owner's archive writes not yet committed, and the queries waiting for them. */
#ifndef MK_MAM_FENCE_H
#define MK_MAM_FENCE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A query must see every message delivered to, or sent by, its owner before it was
 * asked. Two things can stand in the way at the owner's mam shard:
 *  - a write that reached the shard is not committed yet (batching): the query waits
 *    until every write of the owner that arrived before it is done (committed, or
 *    skipped by the prefs);
 *  - a write has not reached the shard yet: the c2s and the routers send writes on
 *    their own sockets, so a query can overtake them. The query carries fences, the
 *    places of the writes its session has seen on their reliable channels (writer,
 *    channel epoch, seq: proto MamFence); it also waits until each has arrived.
 * "Arrived" needs no memory per write: a channel delivers in order, so the write at seq
 * s has arrived once the shard has seen seq >= s on that channel, or a frame whose
 * rc_base is above s (everything below the base was acknowledged, so done). An archive
 * id cannot stand in for this: the sender's copy and the recipient's copy of a message
 * share one id and travel on different channels (c2s and router). A fence whose channel
 * is unknown here (the shard restarted after acknowledging it, and the channel has been
 * idle since) is the caller's bounded wait to end.
 * Work per write: one hash lookup of the owner, one of the channel, and two pointer
 * updates; nothing more unless a query waits. */

#define FENCE_MAX_IDS 4u   /* fences kept per query; more are ignored */

struct fence_table;
struct fence_owner;

/* A write's place on its reliable channel to this shard (proto MamFence). */
struct fence_pos {
    uint64_t writer;               /* rchan_sender_key() of the sender's name */
    uint64_t epoch;                /* the channel's rc_epoch */
    uint64_t seq;                  /* the write's rc_seq; 0: no place (ignored) */
};


/* Embedded in each write the shard holds; zeroed by its owner before fence_arrived. */
struct fence_link {
    struct fence_link *prev;       /* the owner's pending writes, in arrival order */
    struct fence_link *next;
    struct fence_owner *owner;     /* NULL when not pending */
    uint64_t seq;                  /* arrival number at this shard */
};

/* Called once for a waiting query: cancelled is false when its writes are in, true
 * when the table is freed first (the caller then drops the query without answering). */
typedef void fence_ready_fn(void *ud, bool cancelled);

/* Embedded in a waiting query; the table links it and never frees it. */
struct fence_wait {
    struct fence_wait *next;       /* the owner's waiting queries */
    struct fence_wait *mnext;      /* the table's queries with fences not arrived */
    struct fence_owner *owner;     /* NULL when not waiting */
    uint64_t upto_seq;             /* every pending write with seq <= this must be done */
    struct fence_pos ids[FENCE_MAX_IDS];   /* fences that have not arrived yet */
    size_t nids;
    fence_ready_fn *cb;
    void *ud;
};

struct fence_table *fence_table_new(void);
/* Frees *tp (NULL-safe, sets NULL): every waiting query gets cb(ud, true), then every
 * owner entry goes. Links and waits embedded elsewhere are not touched afterwards
 * (their memory is the caller's). */
void fence_table_free(struct fence_table **tp);

/* A write of owner reached the shard at place at (NULL, or seq 0, when it came on no
 * reliable channel) on a channel whose oldest unacknowledged seq is base (the frame's
 * rc_base, 0 when unknown); it is pending until fence_done(l). Links l (borrowed until
 * fence_done) and copies owner when it is the owner's first pending write. Waiting
 * queries whose fence this place resolves now wait for every write arrived so far (this
 * one too when it is their owner's), and those with nothing left to wait for get
 * cb(ud, false) before this returns. */
void fence_arrived(struct fence_table *t, struct fence_link *l, const char *owner, const struct fence_pos *at,
                   uint64_t base);
/* A write that reached the shard but will not be stored (invalid): only records that its
 * place arrived (same callbacks as fence_arrived). */
void fence_seen(struct fence_table *t, const struct fence_pos *at, uint64_t base);
/* The write of l is done (committed, skipped or dropped): unlinks it and calls
 * cb(ud, false) for each waiting query of its owner that has nothing left to wait for.
 * Does nothing when l is not linked. */
void fence_done(struct fence_table *t, struct fence_link *l);

/* A query of owner with fences f[0..n) (entries with seq 0 ignored): returns 0 when it
 * may be answered now (w untouched), or 1 when w is linked and cb(ud, false) will be
 * called once every write of owner that arrived before this call is done and every
 * fence has arrived and its owner's writes up to then are done - or cb(ud, true) if the
 * table is freed first. The caller bounds the wait with fence_cancel. Borrows owner and
 * f (copied); w until cb or fence_cancel. */
int fence_wait(struct fence_table *t, struct fence_wait *w, const char *owner, const struct fence_pos *f, size_t n,
               fence_ready_fn *cb, void *ud);
/* Unlinks a waiting query without calling its cb (the caller stopped waiting). Does
 * nothing when w is not linked. */
void fence_cancel(struct fence_table *t, struct fence_wait *w);

/* The oldest pending write of owner (follow ->next for the others, in arrival order),
 * or NULL when it has none. Borrowed: valid until the next change to the table. */
struct fence_link *fence_pending(const struct fence_table *t, const char *owner);
/* True when l is pending and a query of its owner is waiting: the write is awaited, and
 * committing it first shortens that query's wait (mam/archive.c's urgent queue). */
bool fence_awaited(const struct fence_link *l);

/* Queries waiting now, and owners with pending writes or waiting queries (metrics, tests). */
size_t fence_waiting(const struct fence_table *t);
size_t fence_owners(const struct fence_table *t);
/* Channels whose position is known (at most FENCE_MAX_CHANS; past it the table forgets
 * them all, which only makes queries with their fences wait). */
#define FENCE_MAX_CHANS 4096u
size_t fence_channels(const struct fence_table *t);
#endif
