/* common/node.c - what every role process does the same way: config, log, loop, bus, hello, metrics, signals. */
#include "node.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus_keys.h"
#include "env.h"
#include "log.h"
#include "util.h"

static void seen_add(struct node *n, const char *peer)
{
    if (node_peer_seen(n, peer))
        return;
    n->seen_ids = xrealloc(n->seen_ids, (n->peers_seen + 1) * sizeof *n->seen_ids);
    n->seen_ids[n->peers_seen++] = xstrdup(peer);
}

bool node_peer_seen(const struct node *n, const char *peer)
{
    for (size_t i = 0; i < n->peers_seen; i++)
        if (strcmp(n->seen_ids[i], peer) == 0)
            return true;
    return false;
}

static void send_hello(struct node *n, const char *peer, bool reply, bool reload)
{
    Mk__Hello h = MK__HELLO__INIT;
    h.role = (char *)cfg_role_name(n->role);
    h.started_us = n->started_us;
    h.reply = reply;
    h.reload = reload;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_HELLO;
    e.hello = &h;
    node_send(n, peer, &e);
}

int node_send(struct node *n, const char *peer, Mk__Envelope *e)
{
    int rc = bus_send_env(n->bus, peer, e);
    if (rc == -1)
        log_warn("bus_send_refused", "peer=%s payload=%s reason=%s", peer, env_payload_name(e),
                 errno == EAGAIN ? "queue_full" : errno == EMSGSIZE ? "too_big" : "unknown_peer");
    return rc;
}

static void on_bus(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    struct node *n = ud;
    Mk__Envelope *e = *envp;
    if (e->payload_case == MK__ENVELOPE__PAYLOAD_HELLO && e->hello != NULL) {
        metric_inc(n->m_hello, NULL);
        bool first = !node_peer_seen(n, e->sender);
        seen_add(n, e->sender);
        log_info("peer_hello", "peer=%s role=%s reply=%d first=%d", e->sender,
                 e->hello->role ? e->hello->role : "", e->hello->reply, first);
        if (!e->hello->reply && cfg_find_proc(n->cfg, e->sender) != NULL)
            send_hello(n, e->sender, true, false);
        /* A reload's hello: the peer did not restart; nothing of it is forgotten. */
        if (n->hooks.on_peer_hello != NULL && !e->hello->reload)
            n->hooks.on_peer_hello(n, e->sender, e->hello->role ? e->hello->role : "", e->hello->reply);
    }
    if (n->hooks.on_envelope != NULL)
        n->hooks.on_envelope(n, envp);
}

static bool node_ready(void *ud, char *why, size_t whylen)
{
    struct node *n = ud;
    if (n->stopping) {
        snprintf(why, whylen, "stopping");
        return false;
    }
    if (n->hooks.ready != NULL)
        return n->hooks.ready(n, why, whylen);
    return true;
}

static void node_collect(void *ud)
{
    struct node *n = ud;
    const struct bus_stats *st = bus_stats(n->bus);
    metric_set(n->m_bus_sent, NULL, (double)st->sent);
    metric_set(n->m_bus_received, NULL, (double)st->received);
    metric_set(n->m_bus_dropped, "undecodable", (double)st->dropped_bad);
    metric_set(n->m_bus_dropped, "queue_full", (double)st->send_blocked);
    metric_set(n->m_bus_dropped, "unknown_peer", (double)st->send_unknown);
    metric_set(n->m_bus_dropped, "too_big", (double)st->send_too_big);
    metric_set(n->m_bus_refused, "unknown_key", (double)st->refused_key);
    metric_set(n->m_bus_refused, "handshake", (double)st->refused_handshake);
    metric_set(n->m_bus_disconnects, NULL, (double)st->inbox_disconnects);
    metric_set(n->m_bus_frames, "sent", (double)st->frames_sent);
    metric_set(n->m_cfg_procs, NULL, (double)n->cfg->nprocs);
    metric_set(n->m_bus_frames, "received", (double)st->frames_received);
    metric_set(n->m_bus_peers, NULL, (double)n->peers_seen);
    for (size_t i = 1; i < BUS_PAYLOAD_SLOTS; i++) {
        if (st->received_by_payload[i] == 0)
            continue;
        const ProtobufCFieldDescriptor *f =
            i < BUS_PAYLOAD_SLOTS - 1 ? protobuf_c_message_descriptor_get_field(&mk__envelope__descriptor, (unsigned)i)
                                      : NULL;
        metric_set(n->m_bus_envelopes, f != NULL ? f->name : "other", (double)st->received_by_payload[i]);
    }
    if (n->hooks.collect != NULL)
        n->hooks.collect(n);
}

/* Loop lag: a timer due every NODE_LAG_INTERVAL_S records how long after its due
 * time its callback ran, less the part of that time the loop spent waiting in its
 * poll (epoll rounds timeouts up to the millisecond: a late wake-up of an idle loop
 * is not lag). A prepare watcher (lowest priority: after the others' work) marks
 * when the loop goes to poll, a check watcher (highest: first after it) when it
 * returns. So a sample is how long a newly ready event waited for the loop at that
 * moment: sampled in time, not per event. */
#define NODE_LAG_INTERVAL_S 0.02

static void lag_prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct node *n = w->data;
    n->lag_poll_us = mk_mono_us();
}

static void lag_arm(struct node *n)
{
    ev_now_update(n->loop);
    n->lag_due_us = mk_mono_us() + (int64_t)(NODE_LAG_INTERVAL_S * 1e6);
    ev_timer_set(&n->lag_timer, NODE_LAG_INTERVAL_S, 0.);
    ev_timer_start(n->loop, &n->lag_timer);
}

static void lag_check_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    struct node *n = w->data;
    n->lag_woke_us = mk_mono_us();
    n->lag_wakes++;
    if (n->lag_parked) {
        /* Work again after an idle spell: sampling resumes (unreferenced, as at start). */
        n->lag_parked = false;
        n->lag_wakes = 0;
        lag_arm(n);
        ev_unref(n->loop);
    }
}

static void lag_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct node *n = w->data;
    int64_t now = mk_mono_us();
    int64_t late = now - n->lag_due_us;
    /* Time in the last poll after the timer was due: waiting, not lag. */
    int64_t poll_from = n->lag_poll_us > n->lag_due_us ? n->lag_poll_us : n->lag_due_us;
    if (n->lag_woke_us > poll_from)
        late -= n->lag_woke_us - poll_from;
    metric_observe(n->m_loop_lag, NULL, late > 0 ? (double)late / 1e6 : 0.);
    /* An idle loop (nothing but this timer woke it since the last sample) has no lag
     * to measure: the timer waits for the next wake-up instead of waking the process
     * 50 times a second. Otherwise it is re-armed from now, not on a fixed grid: one
     * long stall gives one sample of its length, not a burst of catch-up samples. */
    if (n->lag_wakes <= 1) {
        /* libev stopped the expired timer, which took one more from the loop's count
         * of watchers: given back, as for a stopped unreferenced watcher. */
        ev_ref(loop);
        n->lag_parked = true;
        return;
    }
    n->lag_wakes = 0;
    lag_arm(n);
}

static void lag_start(struct node *n)
{
    static const double lag_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                         0.025,  0.05,    0.1,    0.25,  0.5,    1.,    2.5, 5.};
    n->m_loop_lag = metrics_histogram(n->metrics, "meerkat_loop_lag_seconds",
                                      "How long a due timer waited for the event loop, sampled every 20 ms while the loop has work", NULL,
                                      lag_buckets, sizeof lag_buckets / sizeof lag_buckets[0]);
    ev_prepare_init(&n->lag_prepare, lag_prepare_cb);
    ev_set_priority(&n->lag_prepare, EV_MINPRI);
    n->lag_prepare.data = n;
    ev_prepare_start(n->loop, &n->lag_prepare);
    ev_unref(n->loop);   /* none of the three keeps the loop alive on its own */
    ev_check_init(&n->lag_check, lag_check_cb);
    ev_set_priority(&n->lag_check, EV_MAXPRI);
    n->lag_check.data = n;
    ev_check_start(n->loop, &n->lag_check);
    ev_unref(n->loop);
    ev_timer_init(&n->lag_timer, lag_timer_cb, NODE_LAG_INTERVAL_S, 0.);
    n->lag_timer.data = n;
    ev_now_update(n->loop);
    n->lag_due_us = mk_mono_us() + (int64_t)(NODE_LAG_INTERVAL_S * 1e6);
    ev_timer_start(n->loop, &n->lag_timer);
    ev_unref(n->loop);
}

static void on_grace(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct node *n = w->data;
    log_warn("stop_forced", "grace_sec=%u", n->cfg->grace_sec);
    node_exit(n);
}

int node_reload(struct node *n)
{
    char err[512];
    if (n->args.config == NULL) {
        log_warn("reload_refused", "reason=\"no configuration file: started with the embedded defaults\"");
        metric_inc(n->m_reloads, "refused");
        return -1;
    }
    struct cfg *next = cfg_load(n->args.config, err, sizeof err);
    if (next == NULL) {
        log_error("reload_refused", "reason=\"%s\"", err);
        metric_inc(n->m_reloads, "refused");
        return -1;
    }
    if (cfg_reload_check(n->cfg, next, err, sizeof err) == -1) {
        log_error("reload_refused", "reason=\"%s\"", err);
        metric_inc(n->m_reloads, "refused");
        cfg_free(&next);
        return -1;
    }
    metric_inc(n->m_reloads, "applied");
    const struct cfg_proc *added[256];
    const char *self_id = n->self->id;
    size_t nadded = cfg_adopt_procs(n->cfg, next, added, MK_ARRAY_LEN(added));
    cfg_free(&next);
    n->self = cfg_find_proc(n->cfg, self_id);
    for (size_t i = 0; i < nadded; i++) {
        if (bus_add_peer(n->bus, added[i]->id, added[i]->bus, err, sizeof err) == -1) {
            log_error("bus_peer_failed", "peer=%s reason=\"%s\"", added[i]->id, err);
            continue;
        }
        log_info("reload_added", "peer=%s bus=%s", added[i]->id, added[i]->bus);
    }
    for (size_t i = 0; i < nadded; i++)
        send_hello(n, added[i]->id, false, true);
    log_info("reloaded", "added=%zu processes=%zu", nadded, n->cfg->nprocs);
    if (nadded > 0 && n->hooks.on_reload != NULL)
        n->hooks.on_reload(n, added, nadded);
    return (int)nadded;
}

static void on_hup(void *ud)
{
    node_reload(ud);
}

static void on_stop(void *ud)
{
    struct node *n = ud;
    if (n->stopping) {
        log_warn("stop_again", "%s", "");
        node_exit(n);
        return;
    }
    n->stopping = true;
    log_info("stopping", "%s", "");
    if (n->hooks.on_stop == NULL) {
        node_exit(n);
        return;
    }
    ev_timer_init(&n->grace_timer, on_grace, (double)n->cfg->grace_sec, 0.);
    n->grace_timer.data = n;
    ev_timer_start(n->loop, &n->grace_timer);
    n->hooks.on_stop(n);
}

int node_init(struct node *n, int argc, char **argv, enum cfg_role role, const struct node_hooks *hooks,
              void *role_data)
{
    char err[512];
    memset(n, 0, sizeof *n);
    n->role = role;
    n->role_data = role_data;
    if (hooks != NULL)
        n->hooks = *hooks;
    n->started_us = (uint64_t)mk_now_us();
    if (proc_parse_args(argc, argv, &n->args, err, sizeof err) == -1) {
        fprintf(stderr, "%s: %s\n", argv[0], err);
        proc_usage(argv[0]);
        return -1;
    }
    if (n->args.help) {
        proc_usage(argv[0]);
        exit(0);
    }
    if (n->args.id == NULL) {
        fprintf(stderr, "%s: --id is required\n", argv[0]);
        return -1;
    }
    n->cfg = cfg_load(n->args.config, err, sizeof err);
    if (n->cfg == NULL) {
        fprintf(stderr, "%s: %s\n", argv[0], err);
        return -1;
    }
    n->self = cfg_find_proc(n->cfg, n->args.id);
    if (n->self == NULL || n->self->role != role) {
        fprintf(stderr, "%s: no %s process with id %s in the configuration\n", argv[0], cfg_role_name(role),
                n->args.id);
        return -1;
    }
    enum log_level lvl = LOG_LEVEL_INFO;
    const char *lname = n->args.log_level ? n->args.log_level : n->cfg->log_level;
    if (lname != NULL && log_level_parse(lname, &lvl) == -1) {
        fprintf(stderr, "%s: unknown log level %s\n", argv[0], lname);
        return -1;
    }
    if (log_init(n->self->id, lvl, n->cfg->log_file) == -1) {
        fprintf(stderr, "%s: cannot open log file %s: %s\n", argv[0], n->cfg->log_file, strerror(errno));
        return -1;
    }
    n->loop = EV_DEFAULT;
    /* A process started by hand (not by meerkat start) makes the cluster's key when it
     * is the first; bus_keys_load lets one of several starting at once win. */
    struct bus_keys keys;
    struct bus_options bo = {.hwm = (int)n->cfg->limits.bus_hwm, .max_frame = n->cfg->limits.bus_max_frame_bytes};
    if (n->cfg->bus.curve) {
        if (bus_keys_load(n->cfg->bus.keys_dir, true, &keys, err, sizeof err) == -1) {
            log_error("bus_keys_failed", "reason=\"%s\"", err);
            return -1;
        }
        bo.curve = &keys;
    }
    const char *inbox = n->args.bus_bind != NULL ? n->args.bus_bind : n->self->bus;
    n->bus = bus_open(n->loop, n->self->id, inbox, &bo, on_bus, n, err, sizeof err);
    bus_keys_wipe(&keys);
    if (n->bus == NULL) {
        log_error("bus_failed", "inbox=%s reason=\"%s\"", inbox, err);
        return -1;
    }
    for (size_t i = 0; i < n->cfg->nprocs; i++) {
        const struct cfg_proc *p = &n->cfg->procs[i];
        if (p == n->self)
            continue;
        if (bus_add_peer(n->bus, p->id, p->bus, err, sizeof err) == -1) {
            log_error("bus_peer_failed", "peer=%s reason=\"%s\"", p->id, err);
            return -1;
        }
    }
    n->metrics = metrics_new(cfg_role_name(role), n->self->id);
    n->m_bus_sent = metrics_gauge(n->metrics, "meerkat_bus_sent_frames", "Frames queued to peers since start", NULL);
    n->m_bus_received = metrics_gauge(n->metrics, "meerkat_bus_received_frames", "Frames decoded from the inbox since start", NULL);
    n->m_bus_dropped = metrics_gauge(n->metrics, "meerkat_bus_dropped_frames", "Frames dropped since start, by reason", "reason");
    n->m_bus_peers = metrics_gauge(n->metrics, "meerkat_bus_peers_seen", "Peers that said hello since start", NULL);
    n->m_hello = metrics_counter(n->metrics, "meerkat_bus_hello_total", "Hello envelopes received", NULL);
    lag_start(n);
    n->m_bus_refused = metrics_counter(n->metrics, "meerkat_bus_refused_total",
                                       "Inbound bus connections refused: a key not the cluster's, a failed handshake",
                                       "reason");
    n->m_bus_disconnects = metrics_counter(n->metrics, "meerkat_bus_inbox_disconnects_total",
                                           "Inbound bus connections dropped: a peer gone, or a frame refused "
                                           "(over limits.bus_max_frame_bytes, broken)", NULL);
    n->m_bus_envelopes = metrics_counter(n->metrics, "meerkat_bus_envelopes_received_total",
                                         "Envelopes decoded from the inbox, by payload", "payload");
    n->m_bus_frames = metrics_counter(n->metrics, "meerkat_bus_frames_total",
                                      "Bus frames (batches of envelopes) handed to ZeroMQ or read from the inbox",
                                      "direction");
    n->m_cfg_procs = metrics_gauge(n->metrics, "meerkat_config_processes",
                                   "Processes in the configuration this process runs with (a reload adds to it)", NULL);
    n->m_reloads = metrics_counter(n->metrics, "meerkat_config_reloads_total",
                                   "Configuration reloads (SIGHUP) by result (applied, refused)", "result");
    if (n->self->metrics_port > 0 &&
        metrics_listen(n->metrics, n->loop, n->self->metrics_host, n->self->metrics_port, node_ready, node_collect, n,
                       err, sizeof err) == -1) {
        log_error("metrics_failed", "port=%d reason=\"%s\"", n->self->metrics_port, err);
        return -1;
    }
    proc_signals(n->loop, on_stop, n);
    proc_signals_on_hup(on_hup);
    if (n->args.pid_file != NULL && proc_pid_write(n->args.pid_file) == -1) {
        log_error("pid_file_failed", "path=%s errno=%d", n->args.pid_file, errno);
        return -1;
    }
    for (size_t i = 0; i < n->cfg->nprocs; i++)
        if (&n->cfg->procs[i] != n->self)
            send_hello(n, n->cfg->procs[i].id, false, false);
    log_info("started", "role=%s inbox=%s metrics_port=%d pid=%d", cfg_role_name(role), n->self->bus,
             n->self->metrics_port, (int)getpid());
    return 0;
}

void node_run(struct node *n)
{
    ev_run(n->loop, 0);
}

void node_exit(struct node *n)
{
    ev_break(n->loop, EVBREAK_ALL);
}

void node_fini(struct node *n)
{
    if (n->args.pid_file != NULL)
        proc_pid_remove(n->args.pid_file);
    if (n->grace_timer.data != NULL)
        ev_timer_stop(n->loop, &n->grace_timer);
    if (n->lag_timer.data != NULL) {
        if (ev_is_active(&n->lag_timer)) {   /* not when parked (see lag_timer_cb) */
            ev_ref(n->loop);
            ev_timer_stop(n->loop, &n->lag_timer);
        }
        ev_ref(n->loop);
        ev_check_stop(n->loop, &n->lag_check);
        ev_ref(n->loop);
        ev_prepare_stop(n->loop, &n->lag_prepare);
    }
    metrics_free(&n->metrics);
    bus_free(&n->bus);
    for (size_t i = 0; i < n->peers_seen; i++)
        free(n->seen_ids[i]);
    xfree(&n->seen_ids);
    log_info("stopped", "%s", "");   /* before cfg_free: the log identity lives in the config */
    cfg_free(&n->cfg);
}
