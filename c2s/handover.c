/* c2s/handover.c - a router shard added at a reload: the sessions of its share re-registered with it, its Routes held until what this c2s sent through the old shards is ahead of them. */
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "env.h"
#include "log.h"
#include "metrics.h"
#include "rchan.h"
#include "rchan_set.h"
#include "util.h"

/* A shard the reload added: its Routes wait (paused) until each old shard's fence came
 * back from it. */
struct handover_new {
    const char *id;                /* owned by the config */
    struct rchan_tx *tx;
    bool *got;                     /* per old shard: its fence came back through this one */
    size_t ngot;
};

/* A shard that was there before: the fence goes to it behind every Route sent it. */
struct handover_old {
    const char *id;                /* owned by the config */
    struct rchan_tx *tx;
    bool fence_sent;
};

struct c2s_handover {
    uint64_t id;
    struct handover_new *nw;
    size_t nnew;
    struct handover_old *old;
    size_t nold;
    size_t held;                   /* Routes that waited, counted as each new shard's go */
    int64_t started_us;
    ev_timer deadline_w;
};

static void free_handover(struct c2s_handover *h)
{
    for (size_t i = 0; i < h->nnew; i++)
        free(h->nw[i].got);
    free(h->nw);
    free(h->old);
    free(h);
}

static void release(struct c2s *s, const char *why)
{
    struct c2s_handover *h = s->handover;
    if (h == NULL)
        return;
    ev_timer_stop(s->loop, &h->deadline_w);
    size_t held = h->held;
    for (size_t i = 0; i < h->nnew; i++) {
        if (rchan_tx_paused(h->nw[i].tx))
            held += rchan_tx_unsent(h->nw[i].tx);
        rchan_tx_pause(h->nw[i].tx, false);
    }
    metric_inc(s->m_handovers, why);
    if (strcmp(why, "fenced") == 0)
        log_info("router_handover_done", "why=%s routes_held=%zu wait_ms=%lld", why, held,
                 (long long)((mk_mono_us() - h->started_us) / 1000));
    else
        log_warn("router_handover_done", "why=%s routes_held=%zu wait_ms=%lld", why, held,
                 (long long)((mk_mono_us() - h->started_us) / 1000));
    free_handover(h);
    s->handover = NULL;
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct c2s *s = w->data;
    struct c2s_handover *h = s->handover;
    for (size_t j = 0; h != NULL && j < h->nnew; j++)
        for (size_t i = 0; i < h->nold; i++)
            if (!h->nw[j].got[i])
                log_warn("router_handover_unfenced", "old=%s new=%s fence_sent=%d", h->old[i].id, h->nw[j].id,
                         h->old[i].fence_sent);
    release(s, "deadline");
}

/* Sends the fence to each old shard whose sender has handed every Route to the bus (one
 * refused at the high-water mark would leave behind the fence). */
static void send_fences(struct c2s *s)
{
    struct c2s_handover *h = s->handover;
    const char **targets = xcalloc(h->nnew, sizeof *targets);
    for (size_t j = 0; j < h->nnew; j++)
        targets[j] = h->nw[j].id;
    for (size_t i = 0; i < h->nold; i++) {
        if (h->old[i].fence_sent || rchan_tx_unsent(h->old[i].tx) > 0)
            continue;
        Mk__HandoverFence f = MK__HANDOVER_FENCE__INIT;
        f.c2s = (char *)s->node->self->id;
        f.old_router = (char *)h->old[i].id;
        f.n_new_routers = h->nnew;
        f.new_routers = (char **)targets;
        f.id = h->id;
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_HANDOVER_FENCE;
        e.handover_fence = &f;
        if (node_send(s->node, h->old[i].id, &e) == 0)
            h->old[i].fence_sent = true;
    }
    free(targets);
}

void c2s_handover_progress(struct c2s *s)
{
    if (s->handover != NULL)
        send_fences(s);
}

void c2s_handover_on_fence(struct c2s *s, const char *sender, const Mk__HandoverFence *f)
{
    struct c2s_handover *h = s->handover;
    if (h == NULL || !f->done || f->id != h->id || sender == NULL || f->old_router == NULL)
        return;
    size_t open = 0;
    for (size_t j = 0; j < h->nnew; j++) {
        struct handover_new *n = &h->nw[j];
        if (strcmp(n->id, sender) == 0 && n->ngot < h->nold) {
            for (size_t i = 0; i < h->nold; i++)
                if (!n->got[i] && strcmp(h->old[i].id, f->old_router) == 0) {
                    n->got[i] = true;
                    n->ngot++;
                }
            /* All that went through the old shards is at the new one, ahead: this goes. */
            if (n->ngot == h->nold) {
                h->held += rchan_tx_unsent(n->tx);
                rchan_tx_pause(n->tx, false);
            }
        }
        open += n->ngot < h->nold;
    }
    if (open == 0)
        release(s, "fenced");
}

void c2s_handover_start(struct c2s *s, const struct cfg_proc *const *added, size_t nadded)
{
    size_t nrouters = 0;
    for (size_t i = 0; i < nadded; i++)
        nrouters += added[i]->role == CFG_ROLE_ROUTER;
    if (nrouters == 0)
        return;
    /* A second reload before the first hand-over ended: that one ends now (its new
     * shards' Routes go), or their fences could wait on shards that are paused. */
    if (s->handover != NULL)
        release(s, "superseded");
    struct c2s_handover *h = xcalloc(1, sizeof *h);
    h->started_us = mk_mono_us();
    h->id = (uint64_t)mk_now_us();
    size_t before = rchan_set_size(s->routes);
    struct rchan_tx **txs = xcalloc(nrouters, sizeof *txs);
    h->nnew = rchan_set_add_new(s->routes, txs, nrouters);
    h->nw = xcalloc(h->nnew ? h->nnew : 1, sizeof *h->nw);
    h->old = xcalloc(before ? before : 1, sizeof *h->old);
    h->nold = before;
    for (size_t i = 0; i < before; i++)
        h->old[i].tx = rchan_set_at(s->routes, i, &h->old[i].id);
    for (size_t j = 0; j < h->nnew; j++) {
        h->nw[j].tx = rchan_set_at(s->routes, before + j, &h->nw[j].id);
        h->nw[j].got = xcalloc(before ? before : 1, sizeof *h->nw[j].got);
        rchan_tx_pause(h->nw[j].tx, true);
    }
    free(txs);
    s->handover = h;
    /* The sessions of the new shards' share, and the marker each new shard waits for
     * before it routes anything (router/intake.c). Plain sends, ahead of the Routes. */
    for (size_t j = 0; j < h->nnew; j++)
        session_resync_router(s, h->nw[j].id);
    send_fences(s);
    log_info("router_handover", "routers_added=%zu old=%zu", h->nnew, h->nold);
    ev_timer_init(&h->deadline_w, on_deadline, C2S_HANDOVER_MAX_MS / 1000.0, 0.);
    h->deadline_w.data = s;
    ev_timer_start(s->loop, &h->deadline_w);
    if (h->nnew == 0 || h->nold == 0)
        release(s, "fenced");
}

void c2s_handover_free(struct c2s *s)
{
    if (s->handover == NULL)
        return;
    ev_timer_stop(s->loop, &s->handover->deadline_w);
    free_handover(s->handover);
    s->handover = NULL;
}
