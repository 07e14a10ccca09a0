/* pusher/intake.c - meerkat-pusher's core: events in on the reliable channel, jobs per backend, retries with backoff, cumulative acks, metrics. */
#include "intake.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "cfg.h"
#include "env.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "push_emit.h"
#include "rchan.h"
#include "util.h"
#include "window.h"

/* Acknowledgements to the emitters: an emitter waits for nothing but the memory of its
 * copies, so one ack frame (and one wake-up of the emitter) per 250 ms, or per 1,024
 * events done, instead of the channel's default 50 ms / 256. Far under the emitters'
 * PUSH_EMIT_RESEND_MS (2 s); the batch is at most half their window
 * (pusher.max_pending_events), so a small window is not held up by the delay. */
#define PUSHER_ACK_DELAY_MS 250u
#define PUSHER_ACK_BATCH 1024u

/* Finished events whose memory is kept for the next ones (each sized for every backend):
 * an event in chat costs no calloc and free of its own. At most this many; past it they
 * are freed. */
#define PUSHER_SPARE_EVENTS 1024u

/* Latency of one attempt, 1 ms to 30 s. */
static const double latency_buckets[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 };

static const char *const type_names[] = {
    [CFG_PUSH_HTTP] = "http",
    [CFG_PUSH_SNS] = "sns",
    [CFG_PUSH_XEP0357] = "xep0357",
};

/* A backend as the core runs it: the public part first (push_backend), then counters and
 * the metric label values made once ("name,ok", ...), so nothing is formatted per event. */
struct backend_rt {
    struct push_backend b;
    struct push_intake *in;
    size_t in_flight;
    uint64_t pipeline_resent;      /* http_pool_pipeline_resent at the last collect */
    char *lv_ok, *lv_skipped, *lv_failed, *lv_dropped;
};

struct pusher_event;

struct push_job {
    struct pusher_event *ev;
    struct backend_rt *be;
    unsigned attempt;              /* attempts made before the current one */
    bool in_attempt;               /* attempt() called, push_job_finish not yet */
    bool finished;
    int64_t attempt_us;            /* when the current attempt began (monotonic) */
    ev_timer retry_w;
};

/* One event taken from the channel, and its jobs. Freed after the loop iteration in
 * which its last job finished (a backend may finish inside attempt()). */
struct pusher_event {
    Mk__Envelope *env;             /* owned; env->push_event is the event */
    int64_t received_us;           /* monotonic: the retries' deadline counts from here */
    size_t left;                   /* jobs not finished */
    size_t njobs;
    struct pusher_event *prev, *next;   /* live events */
    struct pusher_event *reap_next;
    struct push_job jobs[];
};

struct push_intake {
    struct node *node;
    struct ev_loop *loop;
    struct backend_rt *backends;
    size_t nbackends;
    struct rchan_rx *rx;
    struct push_window *window;
    struct pusher_event *live;     /* events with jobs still running */
    struct pusher_event *reap;     /* finished, to free */
    struct pusher_event *spare;    /* freed events kept for reuse (linked by reap_next) */
    size_t nspare;
    size_t *wanted;                /* scratch of take_event: the backends an event goes to */
    ev_prepare reap_w;
    bool stopping;
    uint64_t rnd;
    size_t in_flight;
    struct metric *m_received;     /* label result: accepted, duplicate, gap, refused (stopping) */
    struct metric *m_events;       /* labels backend,result: ok, skipped, failed, dropped */
    struct metric *m_retries;      /* label backend */
    struct metric *m_in_flight;    /* label backend */
    struct metric *m_pipe_depth;   /* label backend */
    struct metric *m_pipe_resent;  /* label backend */
    struct metric *m_latency;      /* label backend */
    struct metric *m_pending;
    struct metric *m_ignored;      /* label payload */
};

static void event_complete(struct push_intake *in, struct pusher_event *pev);

/* --- the jobs' interface (pusher.h) ------------------------------------------------ */

const Mk__PushEvent *push_job_event(const struct push_job *job)
{
    return job->ev->env->push_event;
}

unsigned push_job_attempt(const struct push_job *job)
{
    return job->attempt;
}

static void job_attempt(struct push_job *job)
{
    struct backend_rt *be = job->be;
    job->in_attempt = true;
    job->attempt_us = mk_mono_us();
    be->in_flight++;
    be->in->in_flight++;
    be->b.ops->attempt(&be->b, job);
}

static void job_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct push_job *job = w->data;
    struct push_intake *in = job->be->in;
    if (in->stopping)
        return;   /* left unacknowledged: the emitter re-sends it to the next incarnation */
    job_attempt(job);
}

static void job_end(struct push_job *job, const char *lv)
{
    struct push_intake *in = job->be->in;
    job->finished = true;
    metric_inc(in->m_events, lv);
    if (--job->ev->left == 0)
        event_complete(in, job->ev);
}

void push_job_finish(struct push_job *job, enum push_outcome o, long retry_after_ms, const char *why)
{
    struct backend_rt *be = job->be;
    struct push_intake *in = be->in;
    const struct cfg_push_backend *bc = be->b.cfg;
    if (!job->in_attempt || job->finished) {
        log_error("push_job_misuse", "backend=%s finished=%d", bc->name, job->finished);
        return;
    }
    int64_t now = mk_mono_us();
    job->in_attempt = false;
    be->in_flight--;
    in->in_flight--;
    metric_observe(in->m_latency, bc->name, (double)(now - job->attempt_us) / 1e6);
    const Mk__PushEvent *ev = push_job_event(job);
    switch (o) {
    case PUSH_OK:
        job_end(job, be->lv_ok);
        return;
    case PUSH_SKIP:
        job_end(job, be->lv_skipped);
        return;
    case PUSH_RETRY: {
        uint64_t wait = push_backoff_ms(bc->retry_base_ms, bc->retry_max_ms, job->attempt, retry_after_ms,
                                        push_backoff_rand(&in->rnd));
        int64_t deadline = job->ev->received_us + (int64_t)bc->deadline_sec * 1000000;
        const char *spent = NULL;
        if (in->stopping)
            return;   /* no retry during a stop: left unacknowledged, re-sent to the next incarnation */
        if (job->attempt >= bc->max_retries)
            spent = "retries";
        else if (now + (int64_t)wait * 1000 > deadline)
            spent = "deadline";
        if (spent == NULL) {
            job->attempt++;
            metric_inc(in->m_retries, bc->name);
            log_debug("push_retry", "backend=%s event=%s attempt=%u wait_ms=%" PRIu64 " reason=\"%s\"", bc->name,
                      ev->id, job->attempt, wait, why ? why : "");
            ev_timer_set(&job->retry_w, (double)wait / 1000.0, 0.);
            ev_timer_start(in->loop, &job->retry_w);
            return;
        }
        log_warn("push_failed", "backend=%s event=%s kind=%s attempts=%u spent=%s reason=\"%s\"", bc->name, ev->id,
                 push_emit_kind_name(ev->kind), job->attempt + 1, spent, why ? why : "");
        job_end(job, be->lv_failed);
        return;
    }
    case PUSH_FAIL:
        log_warn("push_failed", "backend=%s event=%s kind=%s attempts=%u spent=none reason=\"%s\"", bc->name, ev->id,
                 push_emit_kind_name(ev->kind), job->attempt + 1, why ? why : "");
        job_end(job, be->lv_failed);
        return;
    }
}

/* --- events -------------------------------------------------------------------------- */

/* Every job is finished: the event is done. Its emitter is acknowledged as far as the
 * window allows (every earlier event of that emitter finished too). Freed later. */
static void event_complete(struct push_intake *in, struct pusher_event *pev)
{
    const Mk__Envelope *e = pev->env;
    uint64_t upto;
    if (push_window_done(in->window, e->sender, e->rc_epoch, e->rc_seq, &upto))
        rchan_rx_done(in->rx, e->sender, e->rc_epoch, upto);
    if (pev->prev != NULL)
        pev->prev->next = pev->next;
    else
        in->live = pev->next;
    if (pev->next != NULL)
        pev->next->prev = pev->prev;
    pev->prev = pev->next = NULL;
    pev->reap_next = in->reap;
    in->reap = pev;
}

/* Every event has room for a job per backend, so any spare fits any event. */
static size_t event_size(const struct push_intake *in)
{
    return sizeof(struct pusher_event) + (in->nbackends ? in->nbackends : 1) * sizeof(struct push_job);
}

/* Releases pev's envelope and timers; its memory is kept for the next event while
 * fewer than PUSHER_SPARE_EVENTS are, and freed otherwise (or when keep is false). */
static void event_free(struct push_intake *in, struct pusher_event *pev, bool keep)
{
    for (size_t i = 0; i < pev->njobs; i++)
        ev_timer_stop(in->loop, &pev->jobs[i].retry_w);
    env_free(&pev->env);
    if (keep && in->nspare < PUSHER_SPARE_EVENTS) {
        pev->reap_next = in->spare;
        in->spare = pev;
        in->nspare++;
        return;
    }
    free(pev);
}

static void reap_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct push_intake *in = w->data;
    while (in->reap != NULL) {
        struct pusher_event *pev = in->reap;
        in->reap = pev->reap_next;
        event_free(in, pev, true);
    }
}

/* Whether backend be takes events of kind for user (a bare JID): its kinds, and its
 * domains (none listed: every hosted one). */
static bool backend_wants(const struct push_intake *in, const struct backend_rt *be, const Mk__PushEvent *ev)
{
    const struct cfg_push_backend *bc = be->b.cfg;
    if ((unsigned)ev->kind >= 32 || !(bc->events & CFG_PUSH_BIT(ev->kind)) || ev->user == NULL)
        return false;
    if (ev->sm_detached && bc->type != CFG_PUSH_XEP0357)
        return false;   /* the router's event for the same message went to it */
    const char *at = strchr(ev->user, '@');
    const char *domain = at != NULL ? at + 1 : ev->user;
    if (bc->ndomains == 0)
        return cfg_is_local_domain(in->node->cfg, domain);
    for (size_t i = 0; i < bc->ndomains; i++)
        if (strcmp(bc->domains[i], domain) == 0)
            return true;
    return false;
}

static void take_event(struct push_intake *in, Mk__Envelope **envp)
{
    Mk__Envelope *e = *envp;
    const Mk__PushEvent *ev = e->push_event;
    size_t n = 0;
    for (size_t i = 0; i < in->nbackends; i++)
        if (backend_wants(in, &in->backends[i], ev))
            in->wanted[n++] = i;
    push_window_add(in->window, e->sender, e->rc_epoch, e->rc_seq);
    if (n == 0) {
        /* No backend of this pusher wants it (the emitters' config differs): done. */
        uint64_t upto;
        if (push_window_done(in->window, e->sender, e->rc_epoch, e->rc_seq, &upto))
            rchan_rx_done(in->rx, e->sender, e->rc_epoch, upto);
        return;
    }
    struct pusher_event *pev = in->spare;
    if (pev != NULL) {
        in->spare = pev->reap_next;
        in->nspare--;
        memset(pev, 0, event_size(in));
    } else {
        pev = xcalloc(1, event_size(in));
    }
    pev->env = e;
    *envp = NULL;
    pev->received_us = mk_mono_us();
    pev->njobs = n;
    pev->left = n;
    pev->next = in->live;
    if (in->live != NULL)
        in->live->prev = pev;
    in->live = pev;
    for (size_t j = 0; j < n; j++) {
        struct push_job *job = &pev->jobs[j];
        job->ev = pev;
        job->be = &in->backends[in->wanted[j]];
        ev_timer_init(&job->retry_w, job_retry_cb, 0., 0.);
        job->retry_w.data = job;
    }
    /* A backend may finish inside attempt(), even the event's last job: pev is then on
     * the reap list, freed after this iteration, so the loop below stays valid. */
    for (size_t j = 0; j < n; j++)
        job_attempt(&pev->jobs[j]);
}

bool push_intake_on_envelope(struct push_intake *in, Mk__Envelope **envp)
{
    Mk__Envelope *e = *envp;
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_PUSH_EVENT) {
        for (size_t i = 0; i < in->nbackends; i++) {
            struct backend_rt *be = &in->backends[i];
            if (be->b.ops->envelope != NULL && be->b.ops->envelope(&be->b, e))
                return true;
        }
        return false;
    }
    if (e->push_event == NULL || e->rc_seq == 0) {
        metric_inc(in->m_ignored, "push_event");
        return true;
    }
    if (in->stopping) {
        /* Not taken (not even marked received): the emitter re-sends it to the next incarnation. */
        metric_inc(in->m_received, "refused");
        return true;
    }
    switch (rchan_rx_check(in->rx, e)) {
    case RCHAN_NEW:
        metric_inc(in->m_received, "accepted");
        take_event(in, envp);
        return true;
    case RCHAN_DUP:
        metric_inc(in->m_received, "duplicate");
        return true;
    case RCHAN_GAP:
        metric_inc(in->m_received, "gap");
        return true;
    }
    return true;
}

/* --- the process -------------------------------------------------------------------- */

static const struct push_backend_ops *find_type(const struct push_backend_ops *const *types, const char *name)
{
    for (; types != NULL && *types != NULL; types++)
        if (strcmp((*types)->type, name) == 0)
            return *types;
    return NULL;
}

struct push_intake *push_intake_new(struct node *n, const struct push_backend_ops *const *types, char *err,
                                    size_t errlen)
{
    const struct cfg_pusher *pc = &n->cfg->pusher;
    struct push_intake *in = xcalloc(1, sizeof *in);
    in->node = n;
    in->loop = n->loop;
    in->rnd = (uint64_t)mk_now_us() ^ ((uint64_t)getpid() << 32);
    struct metrics *m = n->metrics;
    in->m_received = metrics_counter(m, "meerkat_push_events_received_total",
                                     "Push events from the emitters, by result (accepted, duplicate, gap, refused)",
                                     "result");
    in->m_events = metrics_counter(m, "meerkat_push_events_total",
                                   "Events finished per backend, by result (ok, skipped, failed, dropped)",
                                   "backend,result");
    in->m_retries = metrics_counter(m, "meerkat_push_retries_total", "Attempts retried, per backend", "backend");
    in->m_in_flight = metrics_gauge(m, "meerkat_push_in_flight", "Attempts in flight, per backend", "backend");
    in->m_pipe_depth = metrics_gauge(m, "meerkat_push_pipeline_depth",
                                     "Requests per connection of the own HTTP client (1 until a probe shows the receiver pipelines)",
                                     "backend");
    in->m_pipe_resent = metrics_counter(m, "meerkat_push_pipeline_resent_total",
                                        "Requests re-sent because the receiver dropped pipelined requests", "backend");
    in->m_latency = metrics_histogram(m, "meerkat_push_backend_latency_seconds", "Duration of one attempt, per backend",
                                      "backend", latency_buckets, MK_ARRAY_LEN(latency_buckets));
    in->m_pending = metrics_gauge(m, "meerkat_push_events_pending", "Events taken and not yet acknowledged", NULL);
    in->m_ignored = metrics_counter(m, "meerkat_push_envelopes_ignored_total", "Envelopes ignored", "payload");
    in->backends = xcalloc(pc->nbackends ? pc->nbackends : 1, sizeof *in->backends);
    in->wanted = xcalloc(pc->nbackends ? pc->nbackends : 1, sizeof *in->wanted);
    for (size_t i = 0; i < pc->nbackends; i++) {
        const struct cfg_push_backend *bc = &pc->backends[i];
        const char *tn = (unsigned)bc->type < MK_ARRAY_LEN(type_names) ? type_names[bc->type] : "?";
        const struct push_backend_ops *ops = find_type(types, tn);
        if (ops == NULL) {
            mk_errf(err, errlen, "pusher.backends[%zu] (%s): type %s is not built into this meerkat-pusher", i,
                    bc->name, tn);
            push_intake_free(&in);
            return NULL;
        }
        struct backend_rt *be = &in->backends[i];
        be->in = in;
        be->b.ops = ops;
        be->b.node = n;
        be->b.cfg = bc;
        be->b.loop = n->loop;
        be->lv_ok = xasprintf("%s,ok", bc->name);
        be->lv_skipped = xasprintf("%s,skipped", bc->name);
        be->lv_failed = xasprintf("%s,failed", bc->name);
        be->lv_dropped = xasprintf("%s,dropped", bc->name);
        in->nbackends = i + 1;
        char why[256] = "";
        be->b.http = http_pool_new(n->loop, bc, bc->name, why, sizeof why);
        if (be->b.http == NULL) {
            be->b.ops = NULL;
            mk_errf(err, errlen, "pusher.backends[%zu] (%s): %s", i, bc->name, why);
            push_intake_free(&in);
            return NULL;
        }
        if (ops->init != NULL && ops->init(&be->b, why, sizeof why) == -1) {
            be->b.ops = NULL;   /* not initialised: no fini */
            mk_errf(err, errlen, "pusher.backends[%zu] (%s): %s", i, bc->name, why);
            push_intake_free(&in);
            return NULL;
        }
        /* Zero series, so that a dashboard sees every backend before its first event. */
        metric_add(in->m_events, be->lv_ok, 0);
        metric_add(in->m_events, be->lv_failed, 0);
        metric_set(in->m_in_flight, bc->name, 0);
        metric_set(in->m_pipe_depth, bc->name, (double)http_pool_pipeline_depth(be->b.http));
        metric_add(in->m_pipe_resent, bc->name, 0);
        log_info("push_backend", "name=%s type=%s domains=%zu events=0x%x", bc->name, tn, bc->ndomains, bc->events);
    }
    in->rx = rchan_rx_new(n->loop, n->bus);
    unsigned ack_batch = pc->max_pending_events / 2 < PUSHER_ACK_BATCH ? pc->max_pending_events / 2 : PUSHER_ACK_BATCH;
    rchan_rx_set_ack_delay(in->rx, PUSHER_ACK_DELAY_MS, ack_batch > 0 ? ack_batch : 1);
    in->window = push_window_new();
    ev_prepare_init(&in->reap_w, reap_cb);
    in->reap_w.data = in;
    ev_prepare_start(n->loop, &in->reap_w);
    return in;
}

void push_intake_free(struct push_intake **ip)
{
    if (ip == NULL || *ip == NULL)
        return;
    struct push_intake *in = *ip;
    in->stopping = true;
    /* The backends first: they cancel what they have in flight without calling back. */
    for (size_t i = 0; i < in->nbackends; i++) {
        struct backend_rt *be = &in->backends[i];
        if (be->b.ops != NULL && be->b.ops->fini != NULL)
            be->b.ops->fini(&be->b);
        http_pool_free(&be->b.http);
    }
    while (in->live != NULL) {
        struct pusher_event *pev = in->live;
        in->live = pev->next;
        for (size_t j = 0; j < pev->njobs; j++)
            if (!pev->jobs[j].finished)
                metric_inc(in->m_events, pev->jobs[j].be->lv_dropped);
        event_free(in, pev, false);
    }
    while (in->reap != NULL) {
        struct pusher_event *pev = in->reap;
        in->reap = pev->reap_next;
        event_free(in, pev, false);
    }
    while (in->spare != NULL) {
        struct pusher_event *pev = in->spare;
        in->spare = pev->reap_next;
        free(pev);
    }
    free(in->wanted);
    if (in->rx != NULL)
        ev_prepare_stop(in->loop, &in->reap_w);
    for (size_t i = 0; i < in->nbackends; i++) {
        struct backend_rt *be = &in->backends[i];
        free(be->lv_ok);
        free(be->lv_skipped);
        free(be->lv_failed);
        free(be->lv_dropped);
    }
    free(in->backends);
    rchan_rx_free(&in->rx);
    push_window_free(&in->window);
    free(in);
    *ip = NULL;
}

void push_intake_stop(struct push_intake *in)
{
    in->stopping = true;
    size_t waiting = 0;
    for (struct pusher_event *pev = in->live; pev != NULL; pev = pev->next)
        for (size_t j = 0; j < pev->njobs; j++)
            if (ev_is_active(&pev->jobs[j].retry_w)) {
                ev_timer_stop(in->loop, &pev->jobs[j].retry_w);
                waiting++;
            }
    log_info("pusher_stopping", "in_flight=%zu retries_abandoned=%zu unacknowledged=%zu", in->in_flight, waiting,
             push_window_pending(in->window));
}

size_t push_intake_in_flight(const struct push_intake *in)
{
    return in != NULL ? in->in_flight : 0;
}

size_t push_intake_pending(const struct push_intake *in)
{
    return in != NULL ? push_window_pending(in->window) : 0;
}

void push_intake_flush(struct push_intake *in)
{
    if (in != NULL && in->rx != NULL)
        rchan_rx_flush(in->rx);
}

void push_intake_collect(struct push_intake *in)
{
    for (size_t i = 0; i < in->nbackends; i++) {
        struct backend_rt *be = &in->backends[i];
        metric_set(in->m_in_flight, be->b.cfg->name, (double)be->in_flight);
        if (be->b.http == NULL)
            continue;
        metric_set(in->m_pipe_depth, be->b.cfg->name, (double)http_pool_pipeline_depth(be->b.http));
        uint64_t resent = http_pool_pipeline_resent(be->b.http);
        metric_add(in->m_pipe_resent, be->b.cfg->name, (double)(resent - be->pipeline_resent));
        be->pipeline_resent = resent;
    }
    metric_set(in->m_pending, NULL, (double)push_window_pending(in->window));
}
