/* common/push_emit.c - the emitting side of the event pusher: per-domain kinds, event ids, the reliable channel to the pushers. */
#include "push_emit.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "cfg.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "rchan.h"
#include "rchan_set.h"
#include "util.h"

struct push_emit_domain {
    const char *name;              /* borrowed from cfg */
    size_t len;
    uint32_t kinds;
};

/* Senders with events waiting for their batch; past this many distinct pushers an
 * event goes at once. */
#define PUSH_EMIT_HELD_MAX 16

struct push_emit {
    struct node *node;
    ev_timer batch_w;              /* PUSH_EMIT_BATCH_MS after the first waiting event */
    struct rchan_tx *held[PUSH_EMIT_HELD_MAX];   /* senders with waiting events */
    size_t nheld;
    size_t waiting;                /* events held since the last flush */
    struct push_emit_domain *domains;   /* the hosted domains some backend wants */
    size_t ndomains;
    struct rchan_set *pushers;
    uint64_t epoch;                /* this process's start, in the ids */
    uint64_t next;                 /* the n of the next id */
    char id[160];                  /* the id of the event being sent: "<process>.<epoch>." then n */
    size_t id_prefix;              /* bytes of id before n (formatted once) */
    bool dropping;                 /* the last event was dropped: log only the first of a run */
    uint32_t emitted[6];           /* events per kind since the last flush (counted into m_emitted there:
                                    * no labelled metric lookup per event) */
    struct metric *m_emitted;      /* label kind */
    struct metric *m_dropped;      /* label reason */
    struct metric *m_pending;      /* unacknowledged, over every pusher */
};

/* Hands every waiting event to the bus (one frame per pusher at the end of this loop
 * iteration). */
static const char *const kind_names[] = { "sent", "delivered", "stored", "groupchat", "online", "offline" };

/* The per-kind counts and the unacknowledged gauge, brought up to date (at each flush
 * and each ack, not per event). */
static void push_emit_count(struct push_emit *pe)
{
    for (size_t k = 0; k < MK_ARRAY_LEN(pe->emitted); k++) {
        if (pe->emitted[k] != 0)
            metric_add(pe->m_emitted, kind_names[k], (double)pe->emitted[k]);
        pe->emitted[k] = 0;
    }
    metric_set(pe->m_pending, NULL, (double)rchan_set_pending(pe->pushers));
}

static void push_emit_flush(struct push_emit *pe)
{
    for (size_t i = 0; i < pe->nheld; i++)
        rchan_tx_pump(pe->held[i]);
    pe->nheld = 0;
    pe->waiting = 0;
    ev_timer_stop(pe->node->loop, &pe->batch_w);
    push_emit_count(pe);
}

static void batch_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    push_emit_flush(w->data);
}

/* The batch's timer, ms from now (or sooner when it already runs shorter): from the clock, not from the loop's
 * time (the start of this iteration), which on a busy machine is milliseconds old and
 * made the batch a fraction of its length (about 2 events per frame at 2,000 events/s
 * instead of about 10). */
static void batch_start(struct push_emit *pe, unsigned ms)
{
    struct ev_loop *loop = pe->node->loop;
    ev_tstamp late = ev_time() - ev_now(loop);
    if (late < 0 || late > 1)
        late = 0;
    if (ev_is_active(&pe->batch_w)) {
        if (ev_timer_remaining(loop, &pe->batch_w) <= ms / 1000.0 + late)
            return;
        ev_timer_stop(loop, &pe->batch_w);
    }
    ev_timer_set(&pe->batch_w, ms / 1000.0 + late, 0.);
    ev_timer_start(loop, &pe->batch_w);
}

const char *push_emit_kind_name(Mk__PushEventKind kind)
{
    return (unsigned)kind < MK_ARRAY_LEN(kind_names) ? kind_names[kind] : "unknown";
}

struct push_emit *push_emit_new(struct node *n)
{
    const struct cfg *c = n->cfg;
    struct push_emit_domain *doms = xcalloc(c->ndomains ? c->ndomains : 1, sizeof *doms);
    size_t nd = 0;
    for (size_t i = 0; i < c->ndomains; i++) {
        uint32_t k = cfg_push_events(c, c->domains[i]);
        if (k == 0)
            continue;
        doms[nd].name = c->domains[i];
        doms[nd].len = strlen(c->domains[i]);
        doms[nd].kinds = k;
        nd++;
    }
    if (nd == 0) {
        free(doms);
        return NULL;
    }
    struct rchan_set *set = rchan_set_new(n->loop, n->bus, c, CFG_ROLE_PUSHER, c->pusher.max_pending_events,
                                          PUSH_EMIT_RESEND_MS);
    if (set == NULL) {
        free(doms);
        return NULL;
    }
    struct push_emit *pe = xcalloc(1, sizeof *pe);
    pe->node = n;
    pe->domains = doms;
    pe->ndomains = nd;
    pe->pushers = set;
    pe->epoch = (uint64_t)mk_now_us();
    pe->next = 1;
    int np = snprintf(pe->id, sizeof pe->id - 21, "%s.%" PRIu64 ".", n->self->id, pe->epoch);
    pe->id_prefix = np < 0 ? 0 : (size_t)np < sizeof pe->id - 21 ? (size_t)np : sizeof pe->id - 22;
    ev_timer_init(&pe->batch_w, batch_cb, PUSH_EMIT_BATCH_MS / 1000.0, 0.);
    pe->batch_w.data = pe;
    pe->m_emitted = metrics_counter(n->metrics, "meerkat_push_events_emitted_total",
                                    "Push events sent to a pusher, by kind", "kind");
    pe->m_dropped = metrics_counter(n->metrics, "meerkat_push_events_dropped_total",
                                    "Push events dropped by the emitter (backpressure: the pusher's window is full)",
                                    "reason");
    pe->m_pending = metrics_gauge(n->metrics, "meerkat_push_events_unacknowledged",
                                  "Push events sent and not yet acknowledged by their pusher", NULL);
    for (size_t i = 0; i < nd; i++)
        log_info("push_events", "domain=%s kinds=0x%" PRIx32, doms[i].name, doms[i].kinds);
    return pe;
}

void push_emit_free(struct push_emit **pp)
{
    if (pp == NULL || *pp == NULL)
        return;
    struct push_emit *pe = *pp;
    push_emit_flush(pe);
    rchan_set_free(&pe->pushers);
    free(pe->domains);
    free(pe);
    *pp = NULL;
}

uint32_t push_emit_kinds(const struct push_emit *pe, const char *domain, size_t len)
{
    if (pe == NULL || domain == NULL)
        return 0;
    for (size_t i = 0; i < pe->ndomains; i++)
        if (pe->domains[i].len == len && memcmp(pe->domains[i].name, domain, len) == 0)
            return pe->domains[i].kinds;
    return 0;
}

int push_emit_send(struct push_emit *pe, Mk__PushEvent *ev)
{
    if (pe == NULL || ev == NULL || ev->user == NULL)
        return -1;
    struct rchan_tx *tx = rchan_set_shard(pe->pushers, ev->user);
    if (tx == NULL) {
        metric_inc(pe->m_dropped, "no_pusher");
        return -1;
    }
    /* Checked first: an event that cannot be sent costs no id and no packing. */
    if (rchan_tx_full(tx)) {
        metric_inc(pe->m_dropped, "backpressure");
        /* Drops are rare: the counts are brought up to date with them, so the metrics
         * say at once what was emitted and what waits when events start to be dropped. */
        push_emit_count(pe);
        if (!pe->dropping)
            log_warn("push_events_dropped", "reason=backpressure pending=%zu", rchan_tx_pending(tx));
        pe->dropping = true;
        errno = EAGAIN;
        return -1;
    }
    /* The prefix is formatted once; only n is written per event (no printf per message). */
    char digits[20];
    size_t nd = 0;
    for (uint64_t v = pe->next; nd == 0 || v != 0; v /= 10)
        digits[nd++] = (char)('0' + v % 10);
    char *w = pe->id + pe->id_prefix;
    while (nd > 0)
        *w++ = digits[--nd];
    *w = '\0';
    ev->id = pe->id;
    if (ev->stamp_us == 0)
        ev->stamp_us = (uint64_t)mk_now_us();
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_PUSH_EVENT;
    e.push_event = ev;
    size_t h = 0;
    while (h < pe->nheld && pe->held[h] != tx)
        h++;
    bool hold = h < pe->nheld || pe->nheld < PUSH_EMIT_HELD_MAX;
    rchan_tx_hold(tx, hold);
    if (rchan_send(tx, &e) == 0) {
        metric_inc(pe->m_dropped, "backpressure");
        push_emit_count(pe);
        pe->dropping = true;
        errno = EAGAIN;
        return -1;
    }
    pe->next++;
    if (hold) {
        if (h == pe->nheld)
            pe->held[pe->nheld++] = tx;
        /* What XEP-0357 pushes and counts by (PUSH_EMIT_URGENT_MS). */
        bool urgent = ev->kind == MK__PUSH_EVENT_KIND__PUSH_EVENT_STORED ||
                      ev->kind == MK__PUSH_EVENT_KIND__PUSH_EVENT_ONLINE ||
                      ev->kind == MK__PUSH_EVENT_KIND__PUSH_EVENT_OFFLINE || ev->sm_detached;
        if (++pe->waiting >= PUSH_EMIT_BATCH_MAX)
            push_emit_flush(pe);
        else if (urgent || !ev_is_active(&pe->batch_w))
            batch_start(pe, urgent ? PUSH_EMIT_URGENT_MS : PUSH_EMIT_BATCH_MS);
    }
    if (pe->dropping)
        log_info("push_events_resumed", "pending=%zu", rchan_tx_pending(tx));
    pe->dropping = false;
    if ((unsigned)ev->kind < MK_ARRAY_LEN(pe->emitted))
        pe->emitted[ev->kind]++;
    else
        metric_inc(pe->m_emitted, "unknown");
    if (!hold)
        push_emit_count(pe);
    return 0;
}

bool push_emit_on_envelope(struct push_emit *pe, const Mk__Envelope *e)
{
    if (pe == NULL || !rchan_set_on_envelope(pe->pushers, e))
        return false;
    push_emit_count(pe);
    return true;
}

size_t push_emit_pending(const struct push_emit *pe)
{
    return pe != NULL ? rchan_set_pending(pe->pushers) : 0;
}
