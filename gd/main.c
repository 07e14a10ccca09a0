/* gd/main.c - meerkat-gd: global distribution: the sessions of its users in the Redis routing table, stanzas to and from other data centers over the link. */
#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#include "bus_keys.h"
#include "cfg.h"
#include "env.h"
#include "gd.h"
#include "link.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "rchan.h"
#include "rchan_set.h"
#include "table.h"
#include "util.h"

/* --- owned sessions ------------------------------------------------------------------------ */

static struct gd_sess **sess_slot(struct gd *g, const char *full, uint64_t h)
{
    struct gd_sess **pp = &g->sess[h & (g->nsess_buckets - 1)];
    while (*pp != NULL && !((*pp)->hash == h && strcmp((*pp)->full, full) == 0))
        pp = &(*pp)->hnext;
    return pp;
}

static void sess_grow(struct gd *g)
{
    size_t nb = g->nsess_buckets ? g->nsess_buckets * 2 : 1024;
    struct gd_sess **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < g->nsess_buckets; i++) {
        struct gd_sess *s = g->sess[i];
        while (s != NULL) {
            struct gd_sess *next = s->hnext;
            s->hnext = b[s->hash & (nb - 1)];
            b[s->hash & (nb - 1)] = s;
            s = next;
        }
    }
    free(g->sess);
    g->sess = b;
    g->nsess_buckets = nb;
}

static void sess_free(struct gd_sess *s)
{
    free(s->full);
    free(s->c2s);
    free(s->router);
    free(s);
}

struct gd_router_gen *gd_router(struct gd *g, const char *router)
{
    for (size_t i = 0; i < g->ngens; i++)
        if (strcmp(g->gens[i].router, router) == 0)
            return &g->gens[i];
    g->gens = xrealloc(g->gens, (g->ngens + 1) * sizeof *g->gens);
    struct gd_router_gen *r = &g->gens[g->ngens++];
    memset(r, 0, sizeof *r);
    r->router = xstrdup(router);
    r->gen = 1;
    return r;
}

/* The generation of router: bumped when it restarts (sessions it does not confirm
 * afterwards are gone). */
static uint64_t *router_gen(struct gd *g, const char *router)
{
    return &gd_router(g, router)->gen;
}

static void on_write(void *arg, enum gd_table_status st)
{
    struct gd *g = arg;
    static const char *const names[] = {
        [GD_TABLE_OK] = "ok", [GD_TABLE_NOT_FOUND] = "not_found", [GD_TABLE_STALE] = "stale",
        [GD_TABLE_UNAVAILABLE] = "unavailable", [GD_TABLE_ERROR] = "error",
    };
    metric_inc(g->m_table_writes, (unsigned)st < MK_ARRAY_LEN(names) ? names[st] : "error");
}

/* A login holds full (a router applied it): owned, written with its login time as
 * version. The same session again (a re-registration, a resync) changes nothing. */
/* A component's connection: its SessionOpen/Close name just its domain. */
static bool is_domain(const char *jid)
{
    return strchr(jid, '@') == NULL && strchr(jid, '/') == NULL;
}

static int table_open(struct gd *g, const struct gd_sess *s)
{
    if (is_domain(s->full))
        return gd_table_domain_claim(g->table, s->full, on_write, g);
    return gd_table_session_open(g->table, s->full, s->version, on_write, g);
}

static void sess_open(struct gd *g, const char *router, const Mk__SessionOpen *so)
{
    if (so->jid == NULL || *so->jid == '\0' || (strchr(so->jid, '/') == NULL && !is_domain(so->jid)) ||
        so->c2s == NULL) {
        metric_inc(g->m_session_events, "bad");
        return;
    }
    if (g->nsess >= g->nsess_buckets)
        sess_grow(g);
    uint64_t h = mk_hash64(so->jid, strlen(so->jid), 0);
    struct gd_sess **pp = sess_slot(g, so->jid, h);
    struct gd_sess *s = *pp;
    uint64_t gen = *router_gen(g, router);
    if (s != NULL && s->session_id == so->session_id && strcmp(s->c2s, so->c2s) == 0) {
        s->gen = gen;   /* confirmed after a router restart */
        if (strcmp(s->router, router) != 0) {
            free(s->router);
            s->router = xstrdup(router);
        }
        metric_inc(g->m_session_events, "open_again");
        return;
    }
    uint64_t version = so->login_us != 0 ? so->login_us : gd_table_version_next(g->table);
    if (s != NULL && version < s->version) {
        metric_inc(g->m_session_events, "open_older");   /* a late open of a login that lost */
        return;
    }
    if (s == NULL) {
        s = xcalloc(1, sizeof *s);
        s->full = xstrdup(so->jid);
        s->hash = h;
        *pp = s;
        g->nsess++;
    } else {
        free(s->c2s);
        free(s->router);
    }
    s->c2s = xstrdup(so->c2s);
    s->router = xstrdup(router);
    s->session_id = so->session_id;
    s->version = version;
    s->gen = gen;
    metric_inc(g->m_session_events, "open");
    if (table_open(g, s) == -1 && errno != ENOTCONN)
        metric_inc(g->m_table_writes, "refused");
}

static void sess_remove(struct gd *g, struct gd_sess **pp)
{
    struct gd_sess *s = *pp;
    *pp = s->hnext;
    g->nsess--;
    int rc = is_domain(s->full) ? gd_table_domain_release(g->table, s->full, on_write, g)
                                : gd_table_session_close(g->table, s->full, on_write, g);
    if (rc == -1 && errno != ENOTCONN && errno != ENOENT)
        metric_inc(g->m_table_writes, "refused");
    sess_free(s);
}

static void sess_close(struct gd *g, const Mk__SessionClose *sc)
{
    if (sc->jid == NULL || g->nsess_buckets == 0)
        return;
    struct gd_sess **pp = sess_slot(g, sc->jid, mk_hash64(sc->jid, strlen(sc->jid), 0));
    if (*pp == NULL || (*pp)->session_id != sc->session_id || sc->c2s == NULL || strcmp((*pp)->c2s, sc->c2s) != 0) {
        metric_inc(g->m_session_events, "close_unknown");   /* a login that lost, or never reached us */
        return;
    }
    metric_inc(g->m_session_events, "close");
    sess_remove(g, pp);
}

/* Sessions told by a router before its restart and not confirmed since are gone. */
static void on_resync_sweep(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gd *g = w->data;
    (void)loop;
    (void)revents;
    size_t dropped = 0;
    for (size_t i = 0; i < g->nsess_buckets; i++) {
        struct gd_sess **pp = &g->sess[i];
        while (*pp != NULL) {
            if ((*pp)->gen < *router_gen(g, (*pp)->router)) {
                sess_remove(g, pp);
                dropped++;
            } else {
                pp = &(*pp)->hnext;
            }
        }
    }
    if (dropped > 0)
        log_info("gd_resync_swept", "sessions_dropped=%zu", dropped);
    metric_add(g->m_session_events, "swept", (double)dropped);
}

/* --- the routers ---------------------------------------------------------------------------- */

static bool from_router(const struct gd *g, const char *sender)
{
    const struct cfg_proc *p = sender ? cfg_find_proc(g->node->cfg, sender) : NULL;
    return p != NULL && p->role == CFG_ROLE_ROUTER;
}

static void apply(struct gd *g, Mk__Envelope **envp)
{
    Mk__Envelope *e = *envp;
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_SESSION_OPEN:
        if (e->session_open != NULL)
            sess_open(g, e->sender, e->session_open);
        return;
    case MK__ENVELOPE__PAYLOAD_SESSION_CLOSE:
        if (e->session_close != NULL)
            sess_close(g, e->session_close);
        return;
    case MK__ENVELOPE__PAYLOAD_GD_SYNC:
        for (size_t i = 0; e->gd_sync != NULL && i < e->gd_sync->n_sessions; i++)
            if (e->gd_sync->sessions[i] != NULL)
                sess_open(g, e->sender, e->gd_sync->sessions[i]);
        if (e->gd_sync != NULL && e->gd_sync->done)
            log_info("gd_synced", "router=%s sessions=%zu", e->sender, g->nsess);
        return;
    case MK__ENVELOPE__PAYLOAD_GD_FORWARD:
        gd_forward_from_router(g, envp);
        return;
    default:
        return;
    }
}

static void on_envelope(struct node *n, Mk__Envelope **envp)
{
    struct gd *g = n->role_data;
    Mk__Envelope *e = *envp;
    if (g->table == NULL)
        return;   /* gd.enabled is false */
    if (rchan_set_on_envelope(g->routers, e)) {
        gd_forward_routers_acked(g);   /* a router's ack: link messages it carried are done */
        return;
    }
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_SESSION_OPEN:
    case MK__ENVELOPE__PAYLOAD_SESSION_CLOSE:
    case MK__ENVELOPE__PAYLOAD_GD_SYNC:
    case MK__ENVELOPE__PAYLOAD_GD_FORWARD:
        break;
    case MK__ENVELOPE__PAYLOAD_HELLO:
        return;
    default:
        log_debug("envelope_ignored", "from=%s payload=%s", e->sender ? e->sender : "", env_payload_name(e));
        return;
    }
    if (!from_router(g, e->sender)) {
        metric_inc(g->m_session_events, "refused_sender");
        return;
    }
    if (g->stopping && e->rc_seq != 0)
        return;   /* not acknowledged: the router re-sends it to the next incarnation */
    if (e->rc_seq == 0) {
        apply(g, envp);
        return;
    }
    struct gd_router_gen *rg = gd_router(g, e->sender);
    if (!rg->synced) {
        /* Until the router's sync for this incarnation, its channel still carries what it
         * had for the previous one: it drops that and re-sends its kept stanzas after the
         * sync, in order; taking both would apply some twice and out of order. */
        if (e->payload_case != MK__ENVELOPE__PAYLOAD_GD_SYNC || e->gd_sync == NULL ||
            e->gd_sync->gd_started != n->started_us) {
            metric_inc(g->m_session_events, "before_sync");
            return;
        }
        rg->synced = true;
    }
    switch (rchan_rx_check(g->rx, e)) {
    case RCHAN_NEW:
        break;
    case RCHAN_DUP:
    case RCHAN_GAP:
        return;
    }
    const char *sender = e->sender;
    uint64_t epoch = e->rc_epoch, seq = e->rc_seq;
    char *sender_copy = xstrdup(sender);
    /* Done once in gd's hands (the table written or queued, the stanza queued): a kill
     * -9 of gd loses the stanzas waiting in it (bounces), not the table (resync). */
    apply(g, envp);
    rchan_rx_done(g->rx, sender_copy, epoch, seq);
    free(sender_copy);
}

static void on_peer_hello(struct node *n, const char *peer, const char *role, bool is_reply)
{
    struct gd *g = n->role_data;
    (void)role;
    const struct cfg_proc *p = cfg_find_proc(n->cfg, peer);
    if (g->table == NULL || is_reply || p == NULL || p->role != CFG_ROLE_ROUTER)
        return;
    /* A restarted router has a new channel with nothing for an earlier gd on it. */
    gd_router(g, peer)->synced = true;
    /* A router that says hello first restarted: its c2s re-register their sessions
     * through it; what it held before and is not re-registered by then is gone. */
    (*router_gen(g, peer))++;
    ev_timer_stop(n->loop, &g->resync_timer);
    ev_timer_set(&g->resync_timer, GD_ROUTER_RESYNC_SEC, 0);
    ev_timer_start(n->loop, &g->resync_timer);
    log_info("gd_router_restarted", "router=%s", peer);
}

/* --- the link ------------------------------------------------------------------------------- */

static void link_recv(void *ud, const char *from, const struct gd_link_msg *m)
{
    struct gd *g = ud;
    /* Acknowledged on the link once the router has it: a kill -9 in between makes the
     * peer send it again (the router drops a copy it applied already). */
    struct gd_link_ticket t;
    gd_link_defer(g->link, &t);
    gd_forward_from_link(g, from, m->origin, m->msg_id, m->payload, m->len, &t);
}

static void link_acked(void *ud, const char *peer)
{
    gd_forward_link_acked(ud, peer);
}

static void link_expired(void *ud, const char *peer, const struct gd_link_msg *m)
{
    gd_forward_expired(ud, peer, m->payload, m->len);
}

static void link_state(void *ud, const char *peer, bool up)
{
    (void)ud;
    log_info(up ? "gd_link_up" : "gd_link_down", "dc=%s", peer);
}


/* Peers without a configured endpoint use the one they advertise in Redis. */
static void on_dcs(void *arg, enum gd_table_status st, const struct gd_table_dc *dcs, size_t n)
{
    struct gd *g = arg;
    if (st != GD_TABLE_OK)
        return;
    for (size_t i = 0; i < n; i++) {
        const struct cfg_gd_peer *pc = cfg_find_gd_peer(g->node->cfg, dcs[i].name);
        if (pc == NULL || pc->endpoint != NULL || dcs[i].endpoints == NULL || *dcs[i].endpoints == '\0')
            continue;
        if (dcs[i].pubkey != NULL && strcmp(dcs[i].pubkey, pc->public_key) != 0) {
            log_warn("gd_peer_key_mismatch", "dc=%s (Redis advertises another key than the configured one; the "
                     "configured key is used)", pc->dc);
        }
        char err[256];
        if (gd_link_set_endpoint(g->link, pc->dc, dcs[i].endpoints, err, sizeof err) == -1)
            log_warn("gd_peer_endpoint", "dc=%s reason=\"%s\"", pc->dc, err);
    }
}

static void on_peer_poll(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gd *g = w->data;
    (void)loop;
    (void)revents;
    gd_table_dcs(g->table, on_dcs, g);
}

static void on_reap(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    gd_forward_reap(w->data);
}

static void on_lost(void *arg, const char *name)
{
    struct gd *g = arg;
    char sample[128];
    metric_inc(g->m_session_events, "lost");
    log_info("gd_entry_lost", "key=\"%s\" (a newer login elsewhere)", mk_sanitize(sample, sizeof sample, name,
                                                                                   strlen(name)));
}

/* --- process ---------------------------------------------------------------------------- */

/* SIGTERM: what waits for a data center goes back to the routers (stored offline or
 * answered there), nothing new is taken, and the process exits once the routers have
 * acknowledged it (or at grace_sec). */
static void on_stop(struct node *n)
{
    struct gd *g = n->role_data;
    if (g->table == NULL) {
        node_exit(n);
        return;
    }
    g->stopping = true;
    gd_forward_drain(g);
    rchan_rx_flush(g->rx);
    log_info("gd_stopping", "given_back_pending=%zu", rchan_set_pending(g->routers));
    ev_prepare_start(n->loop, &g->stop_check);
}

static void on_stop_check(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct gd *g = w->data;
    (void)loop;
    (void)revents;
    if (g->stopping && rchan_set_pending(g->routers) == 0)
        node_exit(g->node);
}

static void collect(struct node *n)
{
    struct gd *g = n->role_data;
    if (g->table == NULL)
        return;   /* gd.enabled is false */
    metric_set(g->m_sessions, NULL, (double)g->nsess);
    metric_set(g->m_waiting, NULL, (double)g->waiting);
    const struct gd_table_stats *st = gd_table_stats(g->table);
    metric_set(g->m_lookups, NULL, (double)st->lookups);
    metric_set(g->m_cache_hits, "positive", (double)st->cache_hits);
    metric_set(g->m_cache_hits, "negative", (double)st->neg_hits);
    metric_set(g->m_redis_reads, NULL, (double)st->redis_reads);
    for (size_t i = 0; i < g->cfg->npeers; i++)
        metric_set(g->m_link_queue, g->cfg->peers[i].dc,
                   (double)gd_link_queue_depth(g->link, g->cfg->peers[i].dc));
}

static void metrics_init(struct gd *g, struct metrics *m)
{
    g->m_forwards = metrics_counter(m, "meerkat_gd_forwards_total",
                                    "Stanzas from the routers by outcome: forwarded to another data center, "
                                    "given back (no DC, link full or expired), dropped", "result");
    g->m_bounces = metrics_counter(m, "meerkat_gd_bounces_total",
                                   "Re-resolutions of a stanza whose recipient had no data center yet", NULL);
    g->m_injected = metrics_counter(m, "meerkat_gd_injected_total",
                                    "Stanzas from other data centers handed to the local routers", "kind");
    g->m_session_events = metrics_counter(m, "meerkat_gd_session_events_total",
                                          "Session opens and closes from the routers, by outcome", "event");
    g->m_sessions = metrics_gauge(m, "meerkat_gd_sessions", "Sessions this gd owns in the routing table", NULL);
    g->m_waiting = metrics_gauge(m, "meerkat_gd_waiting",
                                 "Stanzas waiting for a data center (lookup in flight or bounce)", NULL);
    g->m_lookups = metrics_counter(m, "meerkat_gd_lookups_total", "Routing table lookups", NULL);
    g->m_cache_hits = metrics_counter(m, "meerkat_gd_cache_hits_total",
                                      "Lookups answered by the local cache", "cache");
    g->m_redis_reads = metrics_counter(m, "meerkat_gd_redis_reads_total", "Lookups that read Redis", NULL);
    g->m_table_writes = metrics_counter(m, "meerkat_gd_table_writes_total",
                                        "Routing table writes (session open/close) by result", "result");
    g->m_link_queue = metrics_gauge(m, "meerkat_gd_link_queue", "Messages waiting for a peer data center's ack",
                                    "peer");
    static const double redis_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                           0.025,  0.05,    0.1,    0.25,  0.5,    1.,    2.5};
    g->m_redis_seconds = metrics_histogram(m, "meerkat_gd_redis_seconds",
                                           "Round trip of one Redis command (a pipelined one waits for those "
                                           "before it), by operation", "op",
                                           redis_buckets, sizeof redis_buckets / sizeof redis_buckets[0]);
}

/* The table and the link get their parameters from the gd section (cfg.h). */
static int start(struct gd *g, char *err, size_t errlen)
{
    struct node *n = g->node;
    const struct cfg_gd *c = g->cfg;
    struct gd_table_params tp = {
        .dc = c->dc,
        .primary_host = c->redis_primary_host,
        .primary_port = c->redis_primary_port,
        .replica_host = c->redis_replica_host,
        .replica_port = c->redis_replica_port,
        .user = c->redis_user,
        .password = c->redis_password,
        .prefix = c->redis_prefix,
        .db = (int)c->redis_db,
        .ttl_sec = c->ttl_sec,
        .refresh_interval = c->refresh_sec,
        .refresh_batch = c->refresh_batch,
        /* 0 in the config means off; the table reads 0 as its default, negative as off */
        .cache_ttl = c->cache_ttl_ms == 0 || c->cache_max == 0 ? -1.0 : c->cache_ttl_ms / 1000.0,
        .cache_max = c->cache_max,
        .neg_ttl = c->negative_ttl_ms == 0 ? -1.0 : c->negative_ttl_ms / 1000.0,
        .latency = g->m_redis_seconds,
    };
    g->table = gd_table_new(n->loop, &tp, err, errlen);
    if (g->table == NULL)
        return -1;
    gd_table_set_lost_cb(g->table, on_lost, g);

    struct gd_link_params lp = {
        .dc = c->dc,
        .bind = c->link_bind,
        .queue_max = c->link_queue_max,
        .queue_max_age = c->link_queue_sec,
        .ttl = c->hop_ttl,
    };
    char *path = xstrdup(c->secret_file), *path2 = xstrdup(c->secret_file);
    int rc = bus_keys_load_file(dirname(path), basename(path2), true, &lp.keys, err, errlen);
    free(path);
    free(path2);
    if (rc == -1)
        return -1;
    struct gd_link_peer_conf *peers = xcalloc(c->npeers ? c->npeers : 1, sizeof *peers);
    for (size_t i = 0; i < c->npeers; i++) {
        peers[i].dc = c->peers[i].dc;
        peers[i].public_key = c->peers[i].public_key;
        peers[i].endpoint = c->peers[i].endpoint;
    }
    lp.peers = peers;
    lp.npeers = c->npeers;
    const struct gd_link_callbacks cb = {
        .recv = link_recv,
        .expired = link_expired,
        .acked = link_acked,
        .state = link_state,
        .ud = g,
    };
    g->link = gd_link_new(n->loop, &lp, &cb, n->metrics, err, errlen);
    free(peers);
    if (g->link == NULL) {
        bus_keys_wipe(&lp.keys);
        return -1;
    }
    gd_table_set_self(g->table, c->link_advertise, lp.keys.public_key);
    log_info("gd_started", "dc=%s link=%s advertise=%s public_key=%s peers=%zu", c->dc, gd_link_endpoint(g->link),
             c->link_advertise, lp.keys.public_key, c->npeers);
    bus_keys_wipe(&lp.keys);
    return 0;
}

/* A reload added router shards: a channel to each, for the JIDs they own now. (What gd
 * injected into an old shard before is forwarded by it: router/deliver.c.) */
static void on_reload(struct node *n, const struct cfg_proc *const *added, size_t nadded)
{
    struct gd *g = n->role_data;
    (void)added;
    (void)nadded;
    struct rchan_tx *txs[16];
    rchan_set_add_new(g->routers, txs, MK_ARRAY_LEN(txs));
}

int main(int argc, char **argv)
{
    struct node n;
    struct gd g;
    memset(&g, 0, sizeof g);
    g.node = &n;
    const struct node_hooks hooks = {
        .on_envelope = on_envelope,
        .collect = collect,
        .on_peer_hello = on_peer_hello,
        .on_stop = on_stop,
        .on_reload = on_reload,
    };
    if (node_init(&n, argc, argv, CFG_ROLE_GD, &hooks, &g) == -1)
        return 1;
    g.cfg = &n.cfg->gd;
    if (!g.cfg->enabled) {
        /* Configured but off: it joins the bus (health) and does nothing. */
        log_info("gd_disabled", "gd.enabled is false");
        node_run(&n);
        node_fini(&n);
        return 0;
    }
    metrics_init(&g, n.metrics);
    char err[512];
    if (start(&g, err, sizeof err) == -1) {
        log_error("gd_start_failed", "reason=\"%s\"", err);
        gd_table_free(&g.table);
        node_fini(&n);
        return 1;
    }
    g.rx = rchan_rx_new(n.loop, n.bus);
    g.routers = rchan_set_new(n.loop, n.bus, n.cfg, CFG_ROLE_ROUTER, GD_ROUTER_MAX_PENDING, GD_ROUTER_RESEND_MS);
    gd_forward_init(&g);
    ev_prepare_init(&g.stop_check, on_stop_check);
    g.stop_check.data = &g;
    ev_timer_init(&g.resync_timer, on_resync_sweep, GD_ROUTER_RESYNC_SEC, 0);
    g.resync_timer.data = &g;
    ev_timer_init(&g.peer_timer, on_peer_poll, 0.5, GD_PEER_POLL_SEC);
    g.peer_timer.data = &g;
    ev_timer_start(n.loop, &g.peer_timer);
    ev_timer_init(&g.reap_timer, on_reap, GD_REAP_SEC, GD_REAP_SEC);
    g.reap_timer.data = &g;
    ev_timer_start(n.loop, &g.reap_timer);
    node_run(&n);
    ev_prepare_stop(n.loop, &g.stop_check);
    ev_timer_stop(n.loop, &g.resync_timer);
    ev_timer_stop(n.loop, &g.peer_timer);
    ev_timer_stop(n.loop, &g.reap_timer);
    rchan_rx_flush(g.rx);
    g.releasing = true;
    gd_forward_release(&g);
    for (size_t i = 0; i < g.nsess_buckets; i++)
        while (g.sess[i] != NULL) {
            struct gd_sess *s = g.sess[i];
            g.sess[i] = s->hnext;
            sess_free(s);
        }
    free(g.sess);
    for (size_t i = 0; i < g.ngens; i++) {
        free(g.gens[i].router);
        free(g.gens[i].done);
    }
    free(g.gens);
    gd_link_free(&g.link);
    gd_table_free(&g.table);
    rchan_set_free(&g.routers);
    rchan_rx_free(&g.rx);
    node_fini(&n);
    return 0;
}
