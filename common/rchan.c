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
    uint64_t held;   /* the rc_held packed in it */
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

    /* Copies the receiver holds (selective ack), by ascending seq, all below base_seq:
     * slots [held_head, held_head + held_n) of held, a released one a tombstone (data
     * NULL, seq kept) until it reaches either end. */
    struct rchan_held *held;
    size_t          held_cap;
    size_t          held_head;
    size_t          held_n;
    size_t          held_live;
    size_t          held_unsent;   /* live ones waiting to be re-sent (a new holder) */
    uint64_t        holder;        /* the newest receiver incarnation an ack named */
    bool            paused;        /* rchan_tx_pause: nothing goes to the bus */
};

struct rchan_held {
    uint64_t seq;
    uint64_t holder;               /* the receiver incarnation holding it; 0: re-sent on a Hello */
    struct rchan_frame f;
    bool     unsent;
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
static size_t put_varint_field(unsigned char *out, unsigned field, uint64_t v)
{
    size_t n = 0;
    out[n++] = (unsigned char)((field << 3) | 0u);
    for (;; v >>= 7) {
        if (v < 0x80) {
            out[n++] = (unsigned char)v;
            return n;
        }
        out[n++] = (unsigned char)((v & 0x7f) | 0x80);
    }
}

/* (The count of held copies, rc_held, field 7, is brought up to date the same way.) */
static int tx_send_frame(struct rchan_tx *tx, const struct rchan_frame *f)
{
    if (f->base >= tx->base_seq && f->held == tx->held_live)
        return bus_send(tx->bus, tx->peer, f->data, f->len);
    buf_reset(&tx->scratch);
    buf_append(&tx->scratch, f->data, f->len);
    unsigned char tail[22];
    size_t n = 0;
    if (f->base < tx->base_seq)
        n += put_varint_field(tail + n, 6, tx->base_seq);
    if (f->held != tx->held_live)
        n += put_varint_field(tail + n, 7, tx->held_live);
    buf_append(&tx->scratch, tail, n);
    return bus_send(tx->bus, tx->peer, tx->scratch.data, tx->scratch.len);
}

static struct rchan_held *held_at(struct rchan_tx *tx, size_t i)
{
    return &tx->held[tx->held_head + i];
}

/* Re-sends the held copies a new receiver incarnation has not got, in order. */
static bool tx_pump_held(struct rchan_tx *tx)
{
    for (size_t i = 0; i < tx->held_n && tx->held_unsent > 0; i++) {
        struct rchan_held *h = held_at(tx, i);
        if (h->f.data == NULL || !h->unsent)
            continue;
        if (tx_send_frame(tx, &h->f) == -1) {
            ev_timer_start(tx->loop, &tx->timer);   /* the rest on a tick */
            return false;
        }
        h->unsent = false;
        tx->held_unsent--;
    }
    return true;
}

/* Sends the pending frames not yet sent this round, in order, until the bus refuses
 * (high-water mark); the rest go out on the next ack or timer tick. */
static void tx_pump(struct rchan_tx *tx)
{
    if (tx->paused)
        return;
    if (tx->held_unsent > 0 && !tx_pump_held(tx))
        return;
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
        if (tx->held_unsent == 0 || (!tx->paused && tx_pump_held(tx)))
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
    for (size_t i = 0; i < tx->held_n; i++)
        free(held_at(tx, i)->f.data);
    free(tx->held);
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
    if (tx->count + tx->held_live >= tx->max_pending) {
        errno = EAGAIN;
        return 0;
    }
    uint64_t seq = tx->next_seq++;
    e->rc_epoch = tx->epoch;
    e->rc_seq = seq;
    e->rc_base = tx->base_seq;
    e->rc_held = tx->held_live;

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
    f->held = e->rc_held;
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

void rchan_tx_pause(struct rchan_tx *tx, bool paused)
{
    tx->paused = paused;
    if (!paused) {
        tx->last_progress = ev_now(tx->loop);
        tx->idle_rounds = 0;
        tx_pump(tx);
    }
}

bool rchan_tx_paused(const struct rchan_tx *tx)
{
    return tx->paused;
}

uint64_t rchan_tx_last(const struct rchan_tx *tx)
{
    return tx->next_seq - 1;
}

void rchan_tx_pump(struct rchan_tx *tx)
{
    tx_pump(tx);
}

size_t rchan_tx_unsent(const struct rchan_tx *tx)
{
    return tx->count - tx->sent;
}

static uint64_t held_seq(const void *tx, size_t i)
{
    const struct rchan_tx *t = tx;
    return t->held[t->held_head + i].seq;
}

/* Index of the slot of seq in held (live or not), or held_n. */
static size_t held_find(struct rchan_tx *tx, uint64_t seq)
{
    size_t lo = mk_lower_bound(tx->held_n, seq, held_seq, tx);
    return lo < tx->held_n && held_at(tx, lo)->seq == seq ? lo : tx->held_n;
}

/* Keeps the frame of seq (above every held one) as held by holder. */
static void held_push(struct rchan_tx *tx, uint64_t seq, const struct rchan_frame *f, uint64_t holder)
{
    if (tx->held_head + tx->held_n == tx->held_cap) {
        if (tx->held_live * 2 <= tx->held_cap && tx->held_cap > 0) {
            /* Half or more are tombstones: squeeze them out instead of growing. */
            size_t k = 0;
            for (size_t i = 0; i < tx->held_n; i++)
                if (held_at(tx, i)->f.data != NULL)
                    tx->held[k++] = *held_at(tx, i);
            tx->held_head = 0;
            tx->held_n = k;
        }
        if (tx->held_head > 0) {
            memmove(tx->held, tx->held + tx->held_head, tx->held_n * sizeof *tx->held);
            tx->held_head = 0;
        }
        if (tx->held_n == tx->held_cap) {
            tx->held_cap = tx->held_cap ? tx->held_cap * 2 : 64;
            tx->held = xrealloc(tx->held, tx->held_cap * sizeof *tx->held);
        }
    }
    struct rchan_held *h = &tx->held[tx->held_head + tx->held_n++];
    h->seq = seq;
    h->holder = holder;
    h->f = *f;
    h->unsent = false;
    tx->held_live++;
}

/* The receiver released the copy of seq (or never held it: nothing). */
static void held_drop(struct rchan_tx *tx, uint64_t seq)
{
    size_t i = held_find(tx, seq);
    if (i == tx->held_n)
        return;
    struct rchan_held *h = held_at(tx, i);
    if (h->f.data == NULL)
        return;
    free(h->f.data);
    h->f.data = NULL;
    if (h->unsent)
        tx->held_unsent--;
    tx->held_live--;
    while (tx->held_n > 0 && held_at(tx, 0)->f.data == NULL) {
        tx->held_head++;
        tx->held_n--;
    }
    while (tx->held_n > 0 && held_at(tx, tx->held_n - 1)->f.data == NULL)
        tx->held_n--;
    if (tx->held_n == 0)
        tx->held_head = 0;
}

/* Every pending seq <= upto is done at the receiver, except those in held (ascending),
 * which it holds (holder: its incarnation). */
static void tx_ack_upto(struct rchan_tx *tx, uint64_t upto, const uint64_t *held, size_t nheld, uint64_t holder)
{
    if (upto < tx->base_seq || tx->count == 0)
        return;
    uint64_t last = tx->base_seq + tx->count - 1;
    if (upto > last)
        upto = last;    /* an ack for what was never sent: trust only what we have */
    size_t n = (size_t)(upto - tx->base_seq + 1);
    if (nheld == 0) {
        for (size_t i = 0; i < n; i++)
            free(tx_at(tx, i)->data);
    } else {
        /* A holder older than the newest one heard is gone: what it held goes again. */
        bool stale = holder != 0 && holder < tx->holder;
        size_t j = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t seq = tx->base_seq + i;
            while (j < nheld && held[j] < seq)
                j++;
            if (j < nheld && held[j] == seq) {
                held_push(tx, seq, tx_at(tx, i), stale ? tx->holder : holder);
                if (stale) {
                    held_at(tx, tx->held_n - 1)->unsent = true;
                    tx->held_unsent++;
                }
            } else {
                free(tx_at(tx, i)->data);
            }
        }
    }
    tx->head = (tx->head + n) % tx->cap;
    tx->count -= n;
    tx->sent = tx->sent > n ? tx->sent - n : 0;
    tx->base_seq += n;
    tx->last_progress = ev_now(tx->loop);
    tx->idle_rounds = 0;
    if (tx->count == 0 && tx->held_unsent == 0) {
        ev_timer_stop(tx->loop, &tx->timer);
        return;
    }
    /* The peer is taking frames: room may have opened below the high-water mark. */
    tx_pump(tx);
}

void rchan_tx_ack(struct rchan_tx *tx, uint64_t epoch, uint64_t upto)
{
    if (epoch == tx->epoch)
        tx_ack_upto(tx, upto, NULL, 0, 0);
}

const char *rchan_ack_invalid(const Mk__Ack *ack)
{
    if (ack->n_held > RCHAN_ACK_MAX_LIST)
        return "too many held seqs";
    if (ack->n_released > RCHAN_ACK_MAX_LIST)
        return "too many released seqs";
    for (size_t i = 0; i < ack->n_held; i++) {
        if (ack->held[i] == 0)
            return "held seq 0";
        if (ack->held[i] > ack->upto)
            return "held seq above upto";
        if (i > 0 && ack->held[i] <= ack->held[i - 1])
            return "held seqs not strictly ascending";
    }
    for (size_t i = 0; i < ack->n_released; i++)
        if (ack->released[i] == 0)
            return "released seq 0";
    return NULL;
}

int rchan_tx_on_ack(struct rchan_tx *tx, const Mk__Ack *ack, const char **why)
{
    const char *bad = rchan_ack_invalid(ack);
    if (bad != NULL) {
        *why = bad;
        return -1;
    }
    if (ack->epoch != tx->epoch)
        return 0;
    if (ack->holder > tx->holder) {
        /* A receiver incarnation not heard before: what an older one held is re-sent to
         * it (what went after a Hello, holder 0, it has or will have: adopted). */
        bool had = tx->holder != 0, again = false;
        tx->holder = ack->holder;
        for (size_t i = 0; i < tx->held_n; i++) {
            struct rchan_held *h = held_at(tx, i);
            if (h->f.data == NULL || h->holder == ack->holder)
                continue;
            if (h->holder != 0 && had && !h->unsent) {
                h->unsent = true;
                tx->held_unsent++;
                again = true;
            }
            h->holder = ack->holder;
        }
        /* It took none of our frames before the held copies (rc_held): the rest again. */
        if (again && tx->count > 0)
            tx->sent = 0;
    }
    for (size_t i = 0; i < ack->n_released && tx->held_live > 0; i++)
        held_drop(tx, ack->released[i]);
    uint64_t base0 = tx->base_seq;
    tx_ack_upto(tx, ack->upto, ack->held, ack->n_held, ack->holder);
    if (tx->base_seq == base0 && tx->held_unsent > 0)
        tx_pump(tx);
    if (ack->n_held == RCHAN_ACK_MAX_LIST && tx->base_seq > base0 && tx->count > 0 && tx->sent > 0 && !tx->paused) {
        /* The receiver stopped short of more held seqs than one ack lists; it lists the
         * rest from our new base, which it learns from the oldest frame left (a
         * duplicate to it, answered at once). */
        (void)tx_send_frame(tx, tx_at(tx, 0));
    }
    return 0;
}

size_t rchan_tx_held(const struct rchan_tx *tx)
{
    return tx->held_live;
}

size_t rchan_tx_pending(const struct rchan_tx *tx)
{
    return tx->count + tx->held_live;
}

bool rchan_tx_full(const struct rchan_tx *tx)
{
    return tx->count + tx->held_live >= tx->max_pending;
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
    if (seq >= tx->base_seq)
        return false;
    if (tx->held_live == 0)
        return true;
    struct rchan_tx *t = (struct rchan_tx *)tx;   /* held_find only reads */
    size_t i = held_find(t, seq);
    return i == tx->held_n || held_at(t, i)->f.data == NULL;
}

bool rchan_tx_passed(const struct rchan_tx *tx, uint64_t seq)
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
    /* The receiver restarted: what it held went with it. Whoever answers next holds
     * these (holder 0: adopted by the next holder named, not sent a second time). */
    for (size_t i = 0; i < tx->held_n; i++) {
        struct rchan_held *h = held_at(tx, i);
        if (h->f.data == NULL)
            continue;
        h->holder = 0;
        if (!h->unsent) {
            h->unsent = true;
            tx->held_unsent++;
        }
    }
    if (tx->count > 0)
        tx_resend_all(tx);
    else if (tx->held_unsent > 0)
        tx_pump(tx);
}

/* ---- receiver -------------------------------------------------------------- */

/* Seqs by ascending value: [head, head + n) of v, a removed one a tombstone (the
 * SEQS_GONE bit set, the value kept, so the order holds for a binary search) until it
 * reaches either end. */
#define SEQS_GONE (1ull << 63)
struct rchan_seqs {
    uint64_t *v;
    size_t    cap, head, n, live;
};

static uint64_t seqs_key(const void *seqs, size_t i)
{
    const struct rchan_seqs *s = seqs;
    return s->v[s->head + i] & ~SEQS_GONE;
}

/* Index of the first slot whose seq is >= seq (n when none). */
static size_t seqs_lower(const struct rchan_seqs *s, uint64_t seq)
{
    return mk_lower_bound(s->n, seq, seqs_key, s);
}

/* Index of the live slot of seq, or n. */
static size_t seqs_find(const struct rchan_seqs *s, uint64_t seq)
{
    if (s->live == 0)
        return s->n;
    size_t i = seqs_lower(s, seq);
    return i < s->n && s->v[s->head + i] == seq ? i : s->n;
}

static void seqs_add(struct rchan_seqs *s, uint64_t seq)
{
    if (s->head + s->n == s->cap) {
        if (s->live * 2 <= s->cap && s->cap > 0) {
            size_t k = 0;
            for (size_t i = 0; i < s->n; i++)
                if (!(s->v[s->head + i] & SEQS_GONE))
                    s->v[k++] = s->v[s->head + i];
            s->head = 0;
            s->n = k;
        }
        if (s->head > 0) {
            memmove(s->v, s->v + s->head, s->n * sizeof *s->v);
            s->head = 0;
        }
        if (s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 64;
            s->v = xrealloc(s->v, s->cap * sizeof *s->v);
        }
    }
    /* Usually the highest so far (holds come in order); a held copy re-sent to us after
     * a restart may land below later ones. */
    size_t i = s->n;
    if (i > 0 && (s->v[s->head + i - 1] & ~SEQS_GONE) >= seq) {
        i = seqs_lower(s, seq);
        if (i < s->n && (s->v[s->head + i] & ~SEQS_GONE) == seq) {
            if (s->v[s->head + i] & SEQS_GONE) {
                s->v[s->head + i] = seq;
                s->live++;
            }
            return;
        }
        memmove(s->v + s->head + i + 1, s->v + s->head + i, (s->n - i) * sizeof *s->v);
    }
    s->v[s->head + i] = seq;
    s->n++;
    s->live++;
}

static void seqs_del_at(struct rchan_seqs *s, size_t i)
{
    s->v[s->head + i] |= SEQS_GONE;
    s->live--;
    while (s->n > 0 && (s->v[s->head] & SEQS_GONE)) {
        s->head++;
        s->n--;
    }
    while (s->n > 0 && (s->v[s->head + s->n - 1] & SEQS_GONE))
        s->n--;
    if (s->n == 0)
        s->head = 0;
}

struct rchan_peer {
    char              *sender;
    uint64_t           hash;
    uint64_t           epoch;
    uint64_t           recv_next;   /* the seq expected next */
    uint64_t           done_upto;   /* every seq <= done_upto is applied */
    bool               ack_due;
    uint32_t           since_ack;   /* rchan_rx_done calls since the last ack sent */
    uint64_t           seen_base;   /* the highest rc_base of this epoch: the sender took every ack below it */
    bool               fresh;       /* a sender (or epoch) new to us that has not had a frame applied yet */
    struct rchan_seqs  held;        /* applied, held (rchan_rx_hold) */
    uint64_t          *released;    /* released, not yet in an ack that left */
    size_t             nreleased;
    size_t             released_cap;
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
    uint64_t            incarnation;   /* the Ack's holder */
    size_t              max_held;
    size_t              nheld;      /* over all senders */
    uint64_t           *scratch;    /* an ack's held list */
};

static void rx_schedule_ack(struct rchan_rx *rx, struct rchan_peer *p, bool now);
static void rx_forget_held(struct rchan_rx *rx, struct rchan_peer *p);

/* What rx_send_ack leaves to do for its peer. */
enum ack_more {
    ACK_SENT = 0,
    ACK_MORE,       /* more released seqs than one ack lists: another at once */
    ACK_RETRY,      /* not sent, and released seqs ride in it: again after the delay */
};

static enum ack_more rx_send_ack(struct rchan_rx *rx, struct rchan_peer *p)
{
    p->ack_due = false;
    p->since_ack = 0;
    p->next_due = NULL;
    Mk__Ack ack = MK__ACK__INIT;
    ack.epoch = p->epoch;
    ack.upto = p->done_upto;
    ack.holder = rx->incarnation;
    if (p->held.live > 0) {
        /* Every held seq the sender may not have taken yet: from the last rc_base it
         * sent on (below it, an ack it applied listed them). Past the list's bound the
         * ack stops short of the first held seq left out. */
        if (rx->scratch == NULL)
            rx->scratch = xcalloc(RCHAN_ACK_MAX_LIST, sizeof *rx->scratch);
        size_t k = 0;
        for (size_t i = seqs_lower(&p->held, p->seen_base); i < p->held.n; i++) {
            uint64_t v = p->held.v[p->held.head + i];
            if (v & SEQS_GONE)
                continue;
            if (v > ack.upto)
                break;
            if (k == RCHAN_ACK_MAX_LIST) {
                ack.upto = v - 1;
                break;
            }
            rx->scratch[k++] = v;
        }
        ack.held = rx->scratch;
        ack.n_held = k;
    }
    size_t nrel = p->nreleased < RCHAN_ACK_MAX_LIST ? p->nreleased : RCHAN_ACK_MAX_LIST;
    ack.released = p->released;
    ack.n_released = nrel;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ACK;
    e.ack = &ack;
    /* A lost ack is repaired by the sender's re-send and our answer to the dup; the
     * releases in it are kept for the next one. */
    if (bus_send_env(rx->bus, p->sender, &e) == -1) {
        log_debug("rchan_ack_unsent", "peer=%s errno=%d", p->sender, errno);
        return nrel > 0 ? ACK_RETRY : ACK_SENT;
    }
    if (nrel > 0) {
        p->nreleased -= nrel;
        memmove(p->released, p->released + nrel, p->nreleased * sizeof *p->released);
    }
    return p->nreleased > 0 ? ACK_MORE : ACK_SENT;
}

/* Re-schedules the peers of list (linked by next_due) rx_send_ack left work for. */
static void rx_ack_again(struct rchan_rx *rx, struct rchan_peer *list)
{
    bool soon = false;
    while (list != NULL) {
        struct rchan_peer *p = list;
        list = p->next_due;
        p->next_due = NULL;
        soon = soon || p->nreleased > RCHAN_ACK_MAX_LIST / 2;
        rx_schedule_ack(rx, p, false);
    }
    if (soon) {
        /* A backlog of releases: the next ack on the next loop iteration. */
        ev_timer_stop(rx->loop, &rx->delay);
        ev_timer_set(&rx->delay, 0., 0.);
        ev_timer_start(rx->loop, &rx->delay);
    }
}

static void rx_send_acks_now(struct rchan_rx *rx)
{
    struct rchan_peer *p = rx->due, *again = NULL;
    rx->due = NULL;
    ev_prepare_stop(rx->loop, &rx->flush);
    ev_prepare_stop(rx->loop, &rx->ride);
    ev_timer_stop(rx->loop, &rx->delay);
    while (p != NULL) {
        struct rchan_peer *next = p->next_due;
        if (rx_send_ack(rx, p) != ACK_SENT) {
            p->next_due = again;
            again = p;
        }
        p = next;
    }
    rx_ack_again(rx, again);
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
    struct rchan_peer **pp = &rx->due, *again = NULL;
    while (*pp != NULL) {
        struct rchan_peer *p = *pp;
        if (bus_batch_waiting(rx->bus, p->sender)) {
            *pp = p->next_due;
            if (rx_send_ack(rx, p) != ACK_SENT) {
                p->next_due = again;
                again = p;
            }
        } else {
            pp = &p->next_due;
        }
    }
    if (rx->due == NULL) {
        ev_prepare_stop(loop, &rx->ride);
        ev_timer_stop(loop, &rx->delay);
    }
    rx_ack_again(rx, again);
}

static void rx_delay_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct rchan_rx *rx = w->data;
    ev_timer_set(&rx->delay, rx->delay_s, 0.);   /* after a backlog's 0 */
    rx_send_acks_now(rx);
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
    /* Grows across restarts (time), unique in the process (several receivers). */
    static uint64_t last_incarnation;
    rx->incarnation = (uint64_t)mk_now_us();
    if (rx->incarnation <= last_incarnation)
        rx->incarnation = last_incarnation + 1;
    last_incarnation = rx->incarnation;
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
            free(p->held.v);
            free(p->released);
            free(p);
            p = next;
        }
    }
    free(rx->buckets);
    free(rx->scratch);
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
    /* Not on the channel (or not from a sender): nothing to order it by, drop it. A seq
     * or base of 2^63 or more is no sender's (and the held set's tombstone bit). */
    if (seq == 0 || e->sender == NULL || e->sender[0] == '\0' || seq >= SEQS_GONE || base >= SEQS_GONE)
        return RCHAN_GAP;
    bool created;
    struct rchan_peer *p = rx_get(rx, e->sender, &created);
    if (!created && epoch > p->epoch)
        rx_forget_held(rx, p);   /* the sender restarted: its copies went with it */
    if (created || epoch > p->epoch)
        p->fresh = true;
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
    if (base > p->seen_base)
        p->seen_base = base;
    if (base > seq) {
        /* A copy the sender keeps as held (below its base): held here already, or held
         * by an earlier incarnation of us - then it is applied and held again. */
        if (seqs_find(&p->held, seq) < p->held.n)
            return RCHAN_DUP;
        if (rx->nheld >= 2 * rx->max_held) {
            /* More than the senders' share: refused (a receiver that never holds, or
             * a peer that lies); the sender re-sends it on our next Hello. */
            log_warn("rchan_held_copy_refused", "peer=%s seq=%llu held=%zu", e->sender, (unsigned long long)seq,
                     rx->nheld);
            return RCHAN_GAP;
        }
        seqs_add(&p->held, seq);
        rx->nheld++;
        return RCHAN_NEW;
    }
    if (p->fresh) {
        /* The first frame we would apply from this sender: the copies it says an earlier
         * incarnation of us held go first. Until they came it is a gap; the ack tells the
         * sender who we are (a newer holder: it re-sends them, then the rest). */
        if (e->rc_held > p->held.live) {
            rx_schedule_ack(rx, p, true);
            return RCHAN_GAP;
        }
        p->fresh = false;
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

/* The held seq at index i of p is done: the sender drops its copy (next ack). */
static void rx_release_at(struct rchan_rx *rx, struct rchan_peer *p, size_t i)
{
    uint64_t seq = p->held.v[p->held.head + i];
    seqs_del_at(&p->held, i);
    rx->nheld--;
    if (p->nreleased == p->released_cap) {
        p->released_cap = p->released_cap ? p->released_cap * 2 : 64;
        p->released = xrealloc(p->released, p->released_cap * sizeof *p->released);
    }
    p->released[p->nreleased++] = seq;
    p->since_ack++;
    rx_schedule_ack(rx, p, false);
}

void rchan_rx_done(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq)
{
    struct rchan_peer *p = rx_find(rx, sender, mk_hash64(sender, strlen(sender), 0));
    if (p == NULL || epoch != p->epoch)
        return;     /* done for an incarnation we have moved past: nothing to ack */
    if (p->held.live > 0) {
        size_t i = seqs_find(&p->held, seq);
        if (i < p->held.n) {
            rx_release_at(rx, p, i);
            return;
        }
    }
    if (seq > p->done_upto)
        p->done_upto = seq;
    p->since_ack++;
    rx_schedule_ack(rx, p, false);
}

/* Forgets what p held (its sender restarted, or is restored): nothing to release. */
static void rx_forget_held(struct rchan_rx *rx, struct rchan_peer *p)
{
    rx->nheld -= p->held.live;
    p->held.head = p->held.n = p->held.live = 0;
    p->nreleased = 0;
    p->seen_base = 0;
}

void rchan_rx_set_max_held(struct rchan_rx *rx, size_t max)
{
    rx->max_held = max;
}

bool rchan_rx_hold(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq)
{
    struct rchan_peer *p = rx_find(rx, sender, mk_hash64(sender, strlen(sender), 0));
    if (p == NULL || epoch != p->epoch || seq == 0 || seq >= SEQS_GONE)
        return false;
    if (seqs_find(&p->held, seq) < p->held.n)
        return true;
    if (rx->nheld >= rx->max_held)
        return false;
    seqs_add(&p->held, seq);
    rx->nheld++;
    if (seq > p->done_upto)
        p->done_upto = seq;
    p->since_ack++;
    rx_schedule_ack(rx, p, false);
    return true;
}

void rchan_rx_release(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq)
{
    struct rchan_peer *p = rx_find(rx, sender, mk_hash64(sender, strlen(sender), 0));
    if (p == NULL || epoch != p->epoch)
        return;
    size_t i = seqs_find(&p->held, seq);
    if (i < p->held.n)
        rx_release_at(rx, p, i);
}

bool rchan_rx_is_held(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq)
{
    struct rchan_peer *p = rx_find(rx, sender, mk_hash64(sender, strlen(sender), 0));
    return p != NULL && epoch == p->epoch && seqs_find(&p->held, seq) < p->held.n;
}

size_t rchan_rx_held(const struct rchan_rx *rx)
{
    return rx->nheld;
}

void rchan_rx_restore(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq)
{
    bool created;
    struct rchan_peer *p = rx_get(rx, sender, &created);
    rx_forget_held(rx, p);
    p->epoch = epoch;
    p->recv_next = seq + 1;
    p->done_upto = seq;
}
