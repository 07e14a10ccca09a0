/* router/intake.c - Route envelopes from c2s on the reliable channel: held until every c2s has its sessions back, applied in order, acknowledged once their archive and offline writes are. */
#include "intake.h"

#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "cfg.h"
#include "env.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "rchan.h"
#include "router.h"
#include "util.h"

/* A Route applied whose writes are not all acknowledged yet. */
struct intake_wait {
    const char *sender;             /* the c2s id, owned by the config */
    uint64_t epoch;
    uint64_t seq;
    struct route_marks marks;
};

struct intake_c2s {
    const char *id;                 /* owned by the config */
    bool synced;
};

struct router_intake {
    struct router *rt;
    struct rchan_rx *rx;
    bool holding;                   /* after start, until every c2s is synced */
    bool stopping;
    struct intake_c2s *c2s;
    size_t nc2s;
    ev_timer sync_timer;
    Mk__Envelope **held;            /* arrival order */
    size_t nheld;
    size_t held_cap;
    struct intake_wait *ring;       /* applied, waiting; oldest at head */
    size_t cap;
    size_t head;
    size_t count;
    struct metric *m_routes;        /* label result: applied, duplicate, gap, held_over, stopping */
    struct metric *m_waiting;
};

static void release_held(struct router_intake *in, const char *why);

static void on_sync_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct router_intake *in = w->data;
    release_held(in, "timeout");
}

struct router_intake *router_intake_new(struct router *rt)
{
    struct router_intake *in = xcalloc(1, sizeof *in);
    struct node *n = rt->node;
    in->rt = rt;
    in->rx = rchan_rx_new(n->loop, n->bus);
    rchan_rx_set_max_held(in->rx, ROUTER_GD_MAX_KEPT);
    const struct cfg_proc *procs[256];
    in->nc2s = cfg_procs_of_role(n->cfg, CFG_ROLE_C2S, procs, MK_ARRAY_LEN(procs));
    in->c2s = xcalloc(in->nc2s ? in->nc2s : 1, sizeof *in->c2s);
    for (size_t i = 0; i < in->nc2s; i++)
        in->c2s[i].id = procs[i]->id;
    in->holding = in->nc2s > 0;
    ev_timer_init(&in->sync_timer, on_sync_timeout, ROUTER_SYNC_TIMEOUT_MS / 1000.0, 0.);
    in->sync_timer.data = in;
    if (in->holding)
        ev_timer_start(n->loop, &in->sync_timer);
    in->m_routes = metrics_counter(n->metrics, "meerkat_router_intake_total",
                                   "Route envelopes from the reliable channel by result "
                                   "(applied, duplicate, gap, held_over, stopping, held_for_gd)", "result");
    in->m_waiting = metrics_gauge(n->metrics, "meerkat_router_intake_waiting",
                                  "Routes applied and waiting for their archive/offline writes", NULL);
    return in;
}

void router_intake_free(struct router_intake **ip)
{
    if (ip == NULL || *ip == NULL)
        return;
    struct router_intake *in = *ip;
    ev_timer_stop(in->rt->node->loop, &in->sync_timer);
    for (size_t i = 0; i < in->nheld; i++)
        env_free(&in->held[i]);
    free(in->held);
    free(in->ring);
    free(in->c2s);
    rchan_rx_free(&in->rx);
    free(in);
    *ip = NULL;
}

static struct intake_wait *wait_at(struct router_intake *in, size_t i)
{
    return &in->ring[(in->head + i) % in->cap];
}

static bool marks_acked(const struct route_marks *m)
{
    for (unsigned i = 0; i < m->n; i++)
        if (!rchan_tx_acked(m->tx[i], m->seq[i]))
            return false;
    return true;
}

/* The Route's writes are acknowledged: done for its c2s, or held while gd has its MISS. */
static void finish(struct router_intake *in, const char *sender, uint64_t epoch, uint64_t seq,
                   const struct route_marks *marks)
{
    if (marks->gd_ref != 0 && router_gd_hold(in->rt->gd, marks)) {
        metric_inc(in->m_routes, "held_for_gd");
        return;
    }
    rchan_rx_done(in->rx, sender, epoch, seq);
}

bool router_intake_hold(struct router_intake *in, const char *c2s, uint64_t epoch, uint64_t seq)
{
    return rchan_rx_hold(in->rx, c2s, epoch, seq);
}

void router_intake_release(struct router_intake *in, const char *c2s, uint64_t epoch, uint64_t seq)
{
    rchan_rx_release(in->rx, c2s, epoch, seq);
}

void router_intake_progress(struct router_intake *in)
{
    while (in->count > 0) {
        struct intake_wait *w = wait_at(in, 0);
        if (!marks_acked(&w->marks))
            break;
        finish(in, w->sender, w->epoch, w->seq, &w->marks);
        in->head = (in->head + 1) % in->cap;
        in->count--;
    }
    metric_set(in->m_waiting, NULL, (double)in->count);
}

static void wait_push(struct router_intake *in, const char *sender, uint64_t epoch, uint64_t seq,
                      const struct route_marks *marks)
{
    if (in->count == in->cap)
        mk_ring_grow(&in->ring, sizeof *in->ring, &in->cap, &in->head, in->count, 256);
    struct intake_wait *w = wait_at(in, in->count++);
    w->sender = sender;
    w->epoch = epoch;
    w->seq = seq;
    w->marks = *marks;
}

/* Applies one Route envelope (not held). */
static void apply(struct router_intake *in, const Mk__Envelope *e)
{
    if (e->payload_case == MK__ENVELOPE__PAYLOAD_FANOUT) {
        /* A room's copies from another router shard (router/fanout.c): a plain send,
         * charged to the bus as the room's shard charges its own fan-outs (its copies'
         * work), so that a run of them takes several loop turns. */
        bus_charge(in->rt->node->bus, e->fanout->n_to * e->fanout->n_stanzas);
        router_fanout(in->rt, e->fanout->stanzas, e->fanout->n_stanzas, e->fanout->to, e->fanout->n_to, true);
        return;
    }
    if (e->rc_seq == 0) {
        /* Not on the channel: a bounce from another router or a mam shard. */
        router_on_route(in->rt, e->route, NULL);
        return;
    }
    if (in->stopping) {
        metric_inc(in->m_routes, "stopping");
        return;     /* not acknowledged: the c2s re-sends it to the next incarnation */
    }
    const struct cfg_proc *p = cfg_find_proc(in->rt->node->cfg, e->sender);
    if (p == NULL || p->role != CFG_ROLE_C2S) {
        metric_inc(in->m_routes, "gap");
        return;
    }
    switch (rchan_rx_check(in->rx, e)) {
    case RCHAN_NEW:
        break;
    case RCHAN_DUP:
        metric_inc(in->m_routes, "duplicate");
        return;
    case RCHAN_GAP:
        metric_inc(in->m_routes, "gap");
        return;
    }
    /* A copy the c2s keeps as held comes with its rc_base above its seq: our previous
     * incarnation applied it and held it for gd (router/gd.c), and it comes again only for
     * gd. */
    struct route_marks marks = {.n = 0, .replay = e->rc_base > e->rc_seq, .c2s = p->id, .c2s_epoch = e->rc_epoch,
                                .c2s_seq = e->rc_seq};
    router_on_route(in->rt, e->route, &marks);
    metric_inc(in->m_routes, "applied");
    if (in->count == 0 && marks_acked(&marks)) {
        finish(in, p->id, e->rc_epoch, e->rc_seq, &marks);
        return;
    }
    /* Acks are cumulative per sender: this one waits behind the ones applied before it. */
    wait_push(in, p->id, e->rc_epoch, e->rc_seq, &marks);
    metric_set(in->m_waiting, NULL, (double)in->count);
}

static void release_held(struct router_intake *in, const char *why)
{
    if (!in->holding)
        return;
    in->holding = false;
    ev_timer_stop(in->rt->node->loop, &in->sync_timer);
    log_info("routes_released", "held=%zu why=%s", in->nheld, why);
    for (size_t i = 0; i < in->nheld; i++) {
        apply(in, in->held[i]);
        env_free(&in->held[i]);
    }
    free(in->held);
    in->held = NULL;
    in->nheld = in->held_cap = 0;
}

bool router_intake_on_envelope(struct router_intake *in, Mk__Envelope **envp)
{
    Mk__Envelope *e = *envp;
    /* A Fanout waits with the Routes while the c2s re-register their sessions: its
     * recipients' sessions are not known before. */
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_ROUTE && e->payload_case != MK__ENVELOPE__PAYLOAD_FANOUT)
        return false;
    if ((e->payload_case == MK__ENVELOPE__PAYLOAD_ROUTE && e->route == NULL) ||
        (e->payload_case == MK__ENVELOPE__PAYLOAD_FANOUT && e->fanout == NULL))
        return true;
    if (in->stopping && e->rc_seq != 0) {
        metric_inc(in->m_routes, "stopping");
        return true;    /* not acknowledged: the c2s re-sends it to the next incarnation */
    }
    if (!in->holding) {
        apply(in, e);
        return true;
    }
    if (in->nheld == ROUTER_HOLD_MAX) {
        /* A channel frame dropped unchecked is re-sent by its c2s; another is lost. */
        metric_inc(in->m_routes, "held_over");
        return true;
    }
    if (in->nheld == in->held_cap) {
        in->held_cap = in->held_cap ? in->held_cap * 2 : 256;
        in->held = xrealloc(in->held, in->held_cap * sizeof *in->held);
    }
    in->held[in->nheld++] = e;
    *envp = NULL;
    return true;
}

void router_intake_c2s_synced(struct router_intake *in, const char *c2s)
{
    bool all = true;
    for (size_t i = 0; i < in->nc2s; i++) {
        if (strcmp(in->c2s[i].id, c2s) == 0)
            in->c2s[i].synced = true;
        all = all && in->c2s[i].synced;
    }
    if (all)
        release_held(in, "synced");
}

void router_intake_stop(struct router_intake *in)
{
    in->stopping = true;
    /* What is held was never applied nor acknowledged: the c2s re-send it. */
    for (size_t i = 0; i < in->nheld; i++)
        env_free(&in->held[i]);
    in->nheld = 0;
}

size_t router_intake_waiting(const struct router_intake *in)
{
    return in->count;
}

void router_intake_flush(struct router_intake *in)
{
    rchan_rx_flush(in->rx);
}
