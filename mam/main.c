/* mam/main.c - meerkat-mam: message archive and offline store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "env.h"
#include "log.h"
#include "mam.h"
#include "metrics.h"
#include "node.h"
#include "rchan.h"
#include "store.h"
#include "util.h"

static void on_envelope(struct node *n, Mk__Envelope **envp)
{
    struct mam *m = n->role_data;
    if (m->archive != NULL && archive_on_envelope(m->archive, envp))
        return;
    const Mk__Envelope *e = *envp;
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_ARCHIVE:
        if (e->archive == NULL)
            return;
        if (e->archive->offline) {
            if (e->rc_seq == 0) {
                offline_write(m, e->archive, NULL, 0, 0);
                return;
            }
            switch (rchan_rx_check(m->offline_rx, e)) {
            case RCHAN_NEW:
                offline_write(m, e->archive, e->sender, e->rc_epoch, e->rc_seq);
                return;
            case RCHAN_DUP:
                metric_inc(m->m_offline, "duplicate");
                return;
            case RCHAN_GAP:
                return;     /* its sender re-sends from the missing one */
            }
        } else {
            /* MAM is off: archive writes are not kept. */
            metric_inc(m->m_archive_ignored, NULL);
            log_debug("archive_ignored", "from=%s", e->sender ? e->sender : "");
        }
        return;
    case MK__ENVELOPE__PAYLOAD_HELLO:
        return;
    default:
        metric_inc(m->m_ignored, env_payload_name(e));
        log_debug("envelope_ignored", "from=%s payload=%s", e->sender ? e->sender : "", env_payload_name(e));
        return;
    }
}

static bool ready(struct node *n, char *why, size_t whylen)
{
    struct mam *m = n->role_data;
    if (m->store == NULL || !store_ready(m->store)) {
        snprintf(why, whylen, "store unreachable");
        return false;
    }
    return true;
}

static void collect(struct node *n)
{
    struct mam *m = n->role_data;
    metric_set(m->m_queued, NULL, (double)m->queued);
    if (m->archive != NULL)
        archive_collect(m->archive);
}

/* Finishes the offline writes already queued (job_done exits when the last one is stored). */
static void on_stop(struct node *n)
{
    struct mam *m = n->role_data;
    log_info("mam_stopping", "offline_queued=%zu archive_pending=%zu", m->queued,
             m->archive ? archive_pending(m->archive) : (size_t)0);
    m->stopping = true;
    if (m->archive != NULL)
        archive_flush(m->archive);
    if (m->queued == 0 && (m->archive == NULL || archive_pending(m->archive) == 0))
        node_exit(n);
}

/* During a graceful stop: exit once the archive batches and offline writes are stored. */
static void on_stop_check(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct mam *m = w->data;
    if (m->stopping && m->queued == 0 && (m->archive == NULL || archive_pending(m->archive) == 0))
        node_exit(m->node);
}

int main(int argc, char **argv)
{
    struct node n;
    struct mam m;
    memset(&m, 0, sizeof m);
    m.node = &n;
    const struct node_hooks hooks = {
        .on_envelope = on_envelope,
        .on_stop = on_stop,
        .ready = ready,
        .collect = collect,
    };
    if (node_init(&n, argc, argv, CFG_ROLE_MAM, &hooks, &m) == -1)
        return 1;
    m.gen = n.self->index & 0xffu;
    char err[512];
    m.store = store_open(n.loop, n.cfg, err, sizeof err);
    if (m.store == NULL) {
        log_error("store_failed", "reason=\"%s\"", err);
        node_fini(&n);
        return 1;
    }
    offline_init(&m);
    m.offline_rx = rchan_rx_new(n.loop, n.bus);
    if (n.cfg->modules.mam_enabled)
        m.archive = archive_new(&n, m.store);
    m.m_offline = metrics_counter(n.metrics, "meerkat_mam_offline_total", "Offline writes by result", "result");
    m.m_archive_ignored = metrics_counter(n.metrics, "meerkat_mam_archive_ignored_total",
                                          "Archive writes received and not handled yet", NULL);
    m.m_ignored = metrics_counter(n.metrics, "meerkat_mam_envelopes_ignored_total", "Envelopes ignored", "payload");
    m.m_queued = metrics_gauge(n.metrics, "meerkat_mam_offline_queued", "Offline writes waiting for the store", NULL);
    ev_prepare stop_w;
    ev_prepare_init(&stop_w, on_stop_check);
    stop_w.data = &m;
    ev_prepare_start(n.loop, &stop_w);
    node_run(&n);
    ev_prepare_stop(n.loop, &stop_w);
    rchan_rx_flush(m.offline_rx);   /* the acks of what was stored during the stop */
    store_close(&m.store);   /* first: a query still queued may call back into its job */
    archive_free(&m.archive);
    offline_fini(&m);
    rchan_rx_free(&m.offline_rx);
    node_fini(&n);
    return 0;
}
