/* c2s/handover.c - a router shard added at a reload: the sessions of its share re-registered with it, its Routes held until the shards that had those JIDs are done with what this c2s sent them. */
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "log.h"
#include "metrics.h"
#include "rchan.h"
#include "rchan_set.h"
#include "util.h"

/* What this c2s had sent an old shard when the reload came: that shard has applied it
 * (delivered, or forwarded to the new owner) once its acks pass seq upto (a Route it
 * still holds for gd counts: it is applied, rchan_tx_passed). */
struct handover_fence {
    const char *router;            /* owned by the config */
    struct rchan_tx *tx;
    uint64_t upto;
};

struct c2s_handover {
    struct rchan_tx **paused;      /* the Routes to the new shards: kept, not sent */
    size_t npaused;
    struct handover_fence *fences;
    size_t nfences;
    int64_t started_us;
    ev_timer deadline_w;
};

static void release(struct c2s *s, const char *why)
{
    struct c2s_handover *h = s->handover;
    if (h == NULL)
        return;
    ev_timer_stop(s->loop, &h->deadline_w);
    size_t held = 0;
    for (size_t i = 0; i < h->npaused; i++) {
        held += rchan_tx_unsent(h->paused[i]);
        rchan_tx_pause(h->paused[i], false);
    }
    metric_inc(s->m_handovers, why);
    if (strcmp(why, "acked") == 0)
        log_info("router_handover_done", "why=%s routes_held=%zu wait_ms=%lld", why, held,
                 (long long)((mk_mono_us() - h->started_us) / 1000));
    else
        log_warn("router_handover_done", "why=%s routes_held=%zu wait_ms=%lld", why, held,
                 (long long)((mk_mono_us() - h->started_us) / 1000));
    free(h->paused);
    free(h->fences);
    free(h);
    s->handover = NULL;
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct c2s *s = w->data;
    struct c2s_handover *h = s->handover;
    for (size_t i = 0; h != NULL && i < h->nfences; i++)
        if (!rchan_tx_passed(h->fences[i].tx, h->fences[i].upto))
            log_warn("router_handover_unacked", "router=%s upto=%llu", h->fences[i].router,
                     (unsigned long long)h->fences[i].upto);
    release(s, "deadline");
}

void c2s_handover_progress(struct c2s *s)
{
    struct c2s_handover *h = s->handover;
    if (h == NULL)
        return;
    for (size_t i = 0; i < h->nfences; i++)
        if (!rchan_tx_passed(h->fences[i].tx, h->fences[i].upto))
            return;
    release(s, "acked");
}

void c2s_handover_start(struct c2s *s, const struct cfg_proc *const *added, size_t nadded)
{
    size_t nrouters = 0;
    for (size_t i = 0; i < nadded; i++)
        nrouters += added[i]->role == CFG_ROLE_ROUTER;
    if (nrouters == 0)
        return;
    /* A second reload before the first hand-over ended: that one ends now (its new
     * shards' Routes go), or the new fences on those paused shards could never be met. */
    if (s->handover != NULL)
        release(s, "superseded");
    struct c2s_handover *h = xcalloc(1, sizeof *h);
    h->started_us = mk_mono_us();
    size_t before = rchan_set_size(s->routes);
    h->paused = xcalloc(nrouters, sizeof *h->paused);
    h->npaused = rchan_set_add_new(s->routes, h->paused, nrouters);
    for (size_t i = 0; i < h->npaused; i++)
        rchan_tx_pause(h->paused[i], true);
    h->fences = xcalloc(before ? before : 1, sizeof *h->fences);
    for (size_t i = 0; i < before; i++) {
        const char *id = NULL;
        struct rchan_tx *tx = rchan_set_at(s->routes, i, &id);
        uint64_t upto = rchan_tx_last(tx);
        if (upto > 0 && !rchan_tx_passed(tx, upto))
            h->fences[h->nfences++] = (struct handover_fence){.router = id, .tx = tx, .upto = upto};
    }
    s->handover = h;
    /* The sessions of the new shards' share, and the marker the new shard waits for
     * before it routes anything (router/intake.c). Plain sends, ahead of the Routes. */
    for (size_t i = 0; i < nadded; i++)
        if (added[i]->role == CFG_ROLE_ROUTER)
            session_resync_router(s, added[i]->id);
    log_info("router_handover", "routers_added=%zu fences=%zu", h->npaused, h->nfences);
    ev_timer_init(&h->deadline_w, on_deadline, C2S_HANDOVER_MAX_MS / 1000.0, 0.);
    h->deadline_w.data = s;
    ev_timer_start(s->loop, &h->deadline_w);
    c2s_handover_progress(s);
}

void c2s_handover_free(struct c2s *s)
{
    if (s->handover == NULL)
        return;
    ev_timer_stop(s->loop, &s->handover->deadline_w);
    free(s->handover->paused);
    free(s->handover->fences);
    free(s->handover);
    s->handover = NULL;
}
