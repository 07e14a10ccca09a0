/* common/rchan.c - the reliable channel over the bus: numbered, acknowledged, re-sent, idempotent. */
#include "rchan.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "env.h"
#include "log.h"
#include "util.h"

#define RCHAN_BACKOFF_MAX_SHIFT 3u   /* timer re-sends wait at most 8 x resend_ms */

/* ---- sender ---------------------------------------------------------------- */

struct rchan_frame {
    char    *data;   /* the packed envelope, as sent */
    size_t   len;
    uint64_t base;   /* the rc_base packed in it */
    ev_tstamp queued_at;   /* when rchan_send took it (loop time) */
};

struct rchan_tx {
    struct ev_loop *loop;
    struct bus     *bus;
    const char     *peer;
    size_t          max_pending;
    ev_tstamp       resend_after;  /* seconds without ack progress before re-sending */
    uint64_t        epoch;
    uint64_t        next_seq;      /* the number the next rchan_send gets */

    /* Pending frames, oldest first, in a ring: ring[head] has seq base_seq and they
     * are consecutive. The first `sent` of them went out in the current round; the
     * rest wait for room at the peer's high-water mark. */
    struct rchan_frame *ring;
    size_t          cap;
    size_t          head;
    size_t          count;
    size_t          sent;
    uint64_t        base_seq;

    ev_tstamp       last_progress; /* last ack advance, first pending, or re-send round */
    unsigned        idle_rounds;   /* timer re-sends since the last ack advance (backoff) */
    ev_timer        timer;
    struct buf      scratch;       /* a frame re-sent with the current rc_base appended */
    bool            hold;          /* rchan_send does not pump (rchan_tx_hold) */
};

static struct rchan_frame *tx_at(struct rchan_tx *tx, size_t i)
{
    return &tx->ring[(tx->head + i) % tx->cap];
}

/* Sends one pending frame. When acks have moved the base since it was packed, the
 * current base goes with it: protobuf keeps the last value of a field that occurs twice,
 * so appending rc_base (field 6, varint) to the packed bytes updates it without a
 * re-encode. A receiver that restarted must learn the base from what is re-sent, or it
 * would wait for frames the sender no longer has. */
static int tx_send_frame(struct rchan_tx *tx, const struct rchan_frame *f)
{
    if (f->base >= tx->base_seq)
        return bus_send(tx->bus, tx->peer, f->data, f->len);
    buf_reset(&tx->scratch);
    buf_append(&tx->scratch, f->data, f->len);
    unsigned char tail[11];
    size_t n = 0;
    tail[n++] = (6u << 3) | 0u;
    for (uint64_t v = tx->base_seq; ; v >>= 7) {
        if (v < 0x80) {
            tail[n++] = (unsigned char)v;
            break;
        }
        tail[n++] = (unsigned char)((v & 0x7f) | 0x80);
    }
    buf_append(&tx->scratch, tail, n);
    return bus_send(tx->bus, tx->peer, tx->scratch.data, tx->scratch.len);
}

/* Sends the pending frames not yet sent this round, in order, until the bus refuses
 * (high-water mark); the rest go out on the next ack or timer tick. */
static void tx_pump(struct rchan_tx *tx)
{
    while (tx->sent < tx->count) {
        struct rchan_frame *f = tx_at(tx, tx->sent);
        if (tx_send_frame(tx, f) == -1)
            return;
        tx->sent++;
    }
}

static void tx_resend_all(struct rchan_tx *tx)
{
    tx->sent = 0;
    tx->last_progress = ev_now(tx->loop);
    tx_pump(tx);
}

static void on_tx_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct rchan_tx *tx = w->data;
    if (tx->count == 0) {
        ev_timer_stop(loop, w);
        return;
    }
    /* Each round without progress doubles the wait (up to 2^RCHAN_BACKOFF_MAX_SHIFT):
     * a receiver that is down, or waits on its own downstream, is not flooded with
     * every pending frame each resend_ms. Its Hello re-sends at once anyway. */
    unsigned shift = tx->idle_rounds < RCHAN_BACKOFF_MAX_SHIFT ? tx->idle_rounds : RCHAN_BACKOFF_MAX_SHIFT;
    if (ev_now(loop) - tx->last_progress >= tx->resend_after * (double)(1u << shift)) {
        log_debug("rchan_resend", "peer=%s pending=%zu from=%llu round=%u", tx->peer, tx->count,
                  (unsigned long long)tx->base_seq, tx->idle_rounds);
        tx->idle_rounds++;
        tx_resend_all(tx);
    } else {
        tx_pump(tx);
    }
}

struct rchan_tx *rchan_tx_new(struct ev_loop *loop, struct bus *bus, const char *peer,
                              size_t max_pending, unsigned resend_ms)
{
    struct rchan_tx *tx = xcalloc(1, sizeof *tx);
    tx->loop = loop;
    tx->bus = bus;
    tx->peer = peer;
    tx->max_pending = max_pending ? max_pending : 1;
    if (resend_ms == 0)
        resend_ms = 1;
    tx->resend_after = resend_ms / 1000.0;
    /* Unique in the process: several senders to one peer (the router's archive and
     * offline writes to a mam shard) are told apart by their epoch in its acks. */
    static uint64_t last_epoch;
    tx->epoch = (uint64_t)mk_now_us();
    if (tx->epoch <= last_epoch)
        tx->epoch = last_epoch + 1;
    last_epoch = tx->epoch;
    tx->next_seq = 1;
    tx->base_seq = 1;
    buf_init(&tx->scratch);
    /* Tick at a quarter of the re-send delay: a stall is noticed between resend_ms
     * and 1.25 * resend_ms after the last progress. */
    ev_tstamp tick = tx->resend_after / 4;
    if (tick < 0.001)
        tick = 0.001;
    ev_timer_init(&tx->timer, on_tx_timer, tick, tick);
    tx->timer.data = tx;
    return tx;
}

void rchan_tx_free(struct rchan_tx **tp)
{
    if (tp == NULL || *tp == NULL)
        return;
    struct rchan_tx *tx = *tp;
    ev_timer_stop(tx->loop, &tx->timer);
    for (size_t i = 0; i < tx->count; i++)
        free(tx_at(tx, i)->data);
    free(tx->ring);
    buf_release(&tx->scratch);
    free(tx);
    *tp = NULL;
}

static void tx_grow(struct rchan_tx *tx)
{
    mk_ring_grow(&tx->ring, sizeof *tx->ring, &tx->cap, &tx->head, tx->count, 64);
}

uint64_t rchan_send(struct rchan_tx *tx, Mk__Envelope *e)
{
    if (tx->count >= tx->max_pending) {
        errno = EAGAIN;
        return 0;
    }
    uint64_t seq = tx->next_seq++;
    e->rc_epoch = tx->epoch;
    e->rc_seq = seq;
    e->rc_base = tx->base_seq;

    /* Pack once with our identity; the same bytes are re-sent until acknowledged. */
    struct buf packed;
    buf_init(&packed);
    char *sender = e->sender;
    e->sender = (char *)bus_self(tx->bus);
    env_pack(e, &packed);
    e->sender = sender;

    if (tx->count == tx->cap)
        tx_grow(tx);
    struct rchan_frame *f = tx_at(tx, tx->count);
    f->data = packed.data;
    f->len = packed.len;
    f->base = e->rc_base;
    f->queued_at = ev_now(tx->loop);
    tx->count++;
    if (tx->count == 1) {
        tx->last_progress = ev_now(tx->loop);
        tx->idle_rounds = 0;
        ev_timer_start(tx->loop, &tx->timer);
    }
    /* Only when all older frames went out, or this one would overtake them. */
    if (!tx->hold && tx->sent == tx->count - 1)
        tx_pump(tx);
    return seq;
}

void rchan_tx_hold(struct rchan_tx *tx, bool hold)
{
    tx->hold = hold;
}

void rchan_tx_pump(struct rchan_tx *tx)
{
    tx_pump(tx);
}

size_t rchan_tx_unsent(const struct rchan_tx *tx)
{
    return tx->count - tx->sent;
}

void rchan_tx_ack(struct rchan_tx *tx, uint64_t epoch, uint64_t upto)
{
    if (epoch != tx->epoch || upto < tx->base_seq || tx->count == 0)
        return;
    uint64_t last = tx->base_seq + tx->count - 1;
    if (upto > last)
        upto = last;    /* an ack for what was never sent: trust only what we have */
    size_t n = (size_t)(upto - tx->base_seq + 1);
    for (size_t i = 0; i < n; i++)
        free(tx_at(tx, i)->data);
    tx->head = (tx->head + n) % tx->cap;
    tx->count -= n;
    tx->sent = tx->sent > n ? tx->sent - n : 0;
    tx->base_seq += n;
    tx->last_progress = ev_now(tx->loop);
    tx->idle_rounds = 0;
    if (tx->count == 0) {
        ev_timer_stop(tx->loop, &tx->timer);
        return;
    }
    /* The peer is taking frames: room may have opened below the high-water mark. */
    tx_pump(tx);
}

size_t rchan_tx_pending(const struct rchan_tx *tx)
{
    return tx->count;
}

bool rchan_tx_full(const struct rchan_tx *tx)
{
    return tx->count >= tx->max_pending;
}

uint64_t rchan_sender_key(const char *name)
{
    return mk_hash64(name, strlen(name), 0);
}

uint64_t rchan_tx_epoch(const struct rchan_tx *tx)
{
    return tx->epoch;
}

bool rchan_tx_acked(const struct rchan_tx *tx, uint64_t seq)
{
    return seq < tx->base_seq;
}

uint64_t rchan_tx_base(const struct rchan_tx *tx)
{
    return tx->base_seq;
}

bool rchan_tx_oldest(struct rchan_tx *tx, uint64_t *seq, const void **data, size_t *len, ev_tstamp *queued_at)
{
    if (tx->count == 0)
        return false;
    const struct rchan_frame *f = tx_at(tx, 0);
    *seq = tx->base_seq;
    *data = f->data;
    *len = f->len;
    *queued_at = f->queued_at;
    return true;
}

void rchan_tx_resend(struct rchan_tx *tx)
{
    tx->idle_rounds = 0;
    if (tx->count > 0)
        tx_resend_all(tx);
}

/* ---- receiver -------------------------------------------------------------- */

struct rchan_peer {
    char              *sender;
    uint64_t           hash;
    uint64_t           epoch;
    uint64_t           recv_next;   /* the seq expected next */
    uint64_t           done_upto;   /* every seq <= done_upto is applied */
    bool               ack_due;
    uint32_t           since_ack;   /* rchan_rx_done calls since the last ack sent */
    struct rchan_peer *next;        /* hash chain */
    struct rchan_peer *next_due;    /* list of peers with an ack to send */
};

struct rchan_rx {
    struct ev_loop     *loop;
    struct bus         *bus;
    bool                strict;
    struct rchan_peer **buckets;
    size_t              nbuckets;
    size_t              npeers;
    struct rchan_peer  *due;
    ev_prepare          flush;      /* sends the due acks at the end of this loop iteration */
    ev_timer            delay;      /* or RCHAN_ACK_DELAY_MS after the first one fell due */
    ev_prepare          ride;       /* or sooner, in a frame that leaves for its sender anyway */
    double              delay_s;    /* RCHAN_ACK_DELAY_MS, or rchan_rx_set_ack_delay's */
    uint32_t            batch;      /* RCHAN_ACK_BATCH, or rchan_rx_set_ack_delay's */
};

static void rx_send_ack(struct rchan_rx *rx, struct rchan_peer *p)
{
    p->ack_due = false;
    p->since_ack = 0;
    p->next_due = NULL;
    Mk__Ack ack = MK__ACK__INIT;
    ack.epoch = p->epoch;
    ack.upto = p->done_upto;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ACK;
    e.ack = &ack;
    /* A lost ack is repaired by the sender's re-send and our answer to the dup. */
    if (bus_send_env(rx->bus, p->sender, &e) == -1)
        log_debug("rchan_ack_unsent", "peer=%s errno=%d", p->sender, errno);
}

static void rx_send_acks_now(struct rchan_rx *rx)
{
    struct rchan_peer *p = rx->due;
    rx->due = NULL;
    ev_prepare_stop(rx->loop, &rx->flush);
    ev_prepare_stop(rx->loop, &rx->ride);
    ev_timer_stop(rx->loop, &rx->delay);
    while (p != NULL) {
        struct rchan_peer *next = p->next_due;
        rx_send_ack(rx, p);
        p = next;
    }
}

static void rx_flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    rx_send_acks_now(w->data);
}

/* Just before the bus makes this iteration's frames: a due ack whose sender gets a frame
 * anyway goes in it now (no frame, no wake-up of its own). */
static void rx_ride_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    struct rchan_rx *rx = w->data;
    struct rchan_peer **pp = &rx->due;
    while (*pp != NULL) {
        struct rchan_peer *p = *pp;
        if (bus_batch_waiting(rx->bus, p->sender)) {
            *pp = p->next_due;
            rx_send_ack(rx, p);
        } else {
            pp = &p->next_due;
        }
    }
    if (rx->due == NULL) {
        ev_prepare_stop(loop, &rx->ride);
        ev_timer_stop(loop, &rx->delay);
    }
}

static void rx_delay_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    rx_send_acks_now(w->data);
}

/* An ack of p falls due: sent RCHAN_ACK_DELAY_MS later with whatever else is done by
 * then (one ack frame for many messages: fewer frames, fewer wake-ups of the sender), or
 * at the end of this loop iteration when now is true (a duplicate: the sender missed
 * ours) or RCHAN_ACK_BATCH messages of p wait for it. */
static void rx_schedule_ack(struct rchan_rx *rx, struct rchan_peer *p, bool now)
{
    if (!p->ack_due) {
        p->ack_due = true;
        p->next_due = rx->due;
        rx->due = p;
    }
    if (now || p->since_ack >= rx->batch) {
        if (!ev_is_active(&rx->flush))
            ev_prepare_start(rx->loop, &rx->flush);
    } else if (!ev_is_active(&rx->delay)) {
        ev_timer_set(&rx->delay, rx->delay_s, 0.);
        ev_timer_start(rx->loop, &rx->delay);
        ev_prepare_start(rx->loop, &rx->ride);
    }
}

struct rchan_rx *rchan_rx_new(struct ev_loop *loop, struct bus *bus)
{
    struct rchan_rx *rx = xcalloc(1, sizeof *rx);
    rx->loop = loop;
    rx->bus = bus;
    rx->nbuckets = 64;
    rx->buckets = xcalloc(rx->nbuckets, sizeof *rx->buckets);
    rx->delay_s = RCHAN_ACK_DELAY_MS / 1000.0;
    rx->batch = RCHAN_ACK_BATCH;
    ev_prepare_init(&rx->flush, rx_flush_cb);
    rx->flush.data = rx;
    ev_timer_init(&rx->delay, rx_delay_cb, RCHAN_ACK_DELAY_MS / 1000.0, 0.);
    rx->delay.data = rx;
    ev_prepare_init(&rx->ride, rx_ride_cb);
    rx->ride.data = rx;
    /* After the watchers that send (default priority), before the bus's flush (EV_MINPRI). */
    ev_set_priority(&rx->ride, EV_MINPRI + 1);
    return rx;
}

void rchan_rx_free(struct rchan_rx **rp)
{
    if (rp == NULL || *rp == NULL)
        return;
    struct rchan_rx *rx = *rp;
    ev_prepare_stop(rx->loop, &rx->flush);
    ev_prepare_stop(rx->loop, &rx->ride);
    ev_timer_stop(rx->loop, &rx->delay);
    for (size_t i = 0; i < rx->nbuckets; i++) {
        struct rchan_peer *p = rx->buckets[i];
        while (p != NULL) {
            struct rchan_peer *next = p->next;
            free(p->sender);
            free(p);
            p = next;
        }
    }
    free(rx->buckets);
    free(rx);
    *rp = NULL;
}

void rchan_rx_flush(struct rchan_rx *rx)
{
    if (rx != NULL && rx->due != NULL)
        rx_send_acks_now(rx);
}

void rchan_rx_set_ack_delay(struct rchan_rx *rx, unsigned delay_ms, unsigned batch)
{
    rx->delay_s = (delay_ms > 0 ? delay_ms : 1) / 1000.0;
    rx->batch = batch > 0 ? batch : 1;
}

void rchan_rx_set_strict(struct rchan_rx *rx, bool strict)
{
    rx->strict = strict;
}

static struct rchan_peer *rx_find(struct rchan_rx *rx, const char *sender, uint64_t h)
{
    for (struct rchan_peer *p = rx->buckets[h % rx->nbuckets]; p != NULL; p = p->next) {
        if (p->hash == h && strcmp(p->sender, sender) == 0)
            return p;
    }
    return NULL;
}

static void rx_rehash(struct rchan_rx *rx)
{
    size_t nb = rx->nbuckets * 2;
    struct rchan_peer **buckets = xcalloc(nb, sizeof *buckets);
    for (size_t i = 0; i < rx->nbuckets; i++) {
        struct rchan_peer *p = rx->buckets[i];
        while (p != NULL) {
            struct rchan_peer *next = p->next;
            p->next = buckets[p->hash % nb];
            buckets[p->hash % nb] = p;
            p = next;
        }
    }
    free(rx->buckets);
    rx->buckets = buckets;
    rx->nbuckets = nb;
}

static struct rchan_peer *rx_get(struct rchan_rx *rx, const char *sender, bool *created)
{
    uint64_t h = mk_hash64(sender, strlen(sender), 0);
    struct rchan_peer *p = rx_find(rx, sender, h);
    *created = false;
    if (p != NULL)
        return p;
    if (rx->npeers >= rx->nbuckets)
        rx_rehash(rx);
    p = xcalloc(1, sizeof *p);
    p->sender = xstrdup(sender);
    p->hash = h;
    p->next = rx->buckets[h % rx->nbuckets];
    rx->buckets[h % rx->nbuckets] = p;
    rx->npeers++;
    *created = true;
    return p;
}

enum rchan_verdict rchan_rx_check(struct rchan_rx *rx, const Mk__Envelope *e)
{
    uint64_t epoch = e->rc_epoch, seq = e->rc_seq, base = e->rc_base;
    /* Not on the channel (or not from a sender): nothing to order it by, drop it. */
    if (seq == 0 || e->sender == NULL || e->sender[0] == '\0' || base > seq)
        return RCHAN_GAP;
    bool created;
    struct rchan_peer *p = rx_get(rx, e->sender, &created);
    if ((created || epoch > p->epoch) && base != 0) {
        /* A sender (or incarnation) we know nothing of. Every seq below base was
         * acknowledged, by us or by an earlier incarnation of us, so it is applied;
         * from base on nothing may be skipped. Frames queued before our restart can
         * arrive ahead of the re-sent oldest one: they are gaps until it comes. */
        p->epoch = epoch;
        p->recv_next = base;
        p->done_upto = base - 1;
    } else if (created || epoch > p->epoch) {
        /* A new sender or incarnation that does not say its base: it re-sends only
         * what was not acknowledged, so whatever arrives first is taken as the oldest
         * it still needs applied. */
        if (rx->strict && seq != 1) {
            if (created)
                p->epoch = 0;   /* known now, but nothing accepted yet */
            return RCHAN_GAP;
        }
        p->epoch = epoch;
        p->recv_next = seq + 1;
        p->done_upto = seq - 1;
        return RCHAN_NEW;
    }
    if (epoch < p->epoch)
        return RCHAN_DUP;   /* a frame of a dead incarnation still in flight: no ack */
    if (base > p->recv_next) {
        /* Acknowledged by an earlier incarnation of us (its acks may reach the sender
         * after we restarted): applied, nothing to wait for below base. */
        p->recv_next = base;
        if (p->done_upto < base - 1)
            p->done_upto = base - 1;
    }
    if (seq == p->recv_next) {
        p->recv_next++;
        return RCHAN_NEW;
    }
    if (seq < p->recv_next) {
        if (seq <= p->done_upto)
            rx_schedule_ack(rx, p, true);   /* the sender missed our ack */
        return RCHAN_DUP;
    }
    return RCHAN_GAP;
}

void rchan_rx_done(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq)
{
    struct rchan_peer *p = rx_find(rx, sender, mk_hash64(sender, strlen(sender), 0));
    if (p == NULL || epoch != p->epoch)
        return;     /* done for an incarnation we have moved past: nothing to ack */
    if (seq > p->done_upto)
        p->done_upto = seq;
    p->since_ack++;
    rx_schedule_ack(rx, p, false);
}

void rchan_rx_restore(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq)
{
    bool created;
    struct rchan_peer *p = rx_get(rx, sender, &created);
    p->epoch = epoch;
    p->recv_next = seq + 1;
    p->done_upto = seq;
}
