/* c2s/main.c - meerkat-c2s: client connections, sessions, and the server-answered IQs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "authlimit.h"
#include "c2s.h"
#include "coalesce.h"
#include "component.h"
#include "drain.h"
#include "workpool.h"
#include "log.h"
#include "module.h"
#include "rchan_set.h"
#include "scram.h"
#include "tls.h"

#include <openssl/crypto.h>
#include "util.h"

static struct c2s c2s_state;

static void on_session_close(struct c2s *s, Mk__SessionClose *cl)
{
    struct session *sess = session_by_id(s, cl->session_id);
    if (sess == NULL && component_on_router_close(s, cl))
        return;
    if (sess == NULL || sess->conn->closed)
        return;
    const char *reason = cl->reason ? cl->reason : "";
    log_info("session_closed_by_router", "jid=%s reason=%s", sess->full, reason);
    if (strcmp(reason, "conflict") == 0)
        conn_stream_error(sess->conn, "conflict", "replaced by a new connection with the same resource");
    else if (strcmp(reason, "kicked") == 0)
        conn_stream_error(sess->conn, "policy-violation", "the session was ended by an administrator");
    else if (strcmp(reason, "removed") == 0)
        conn_stream_error(sess->conn, "not-authorized", "the account was removed");
    else
        conn_stream_error(sess->conn, "policy-violation", "too many sessions for this account");
}

void c2s_auth_event(struct c2s *s, Mk__AuthEventKind kind, const char *ip, const char *account, bool already_counted)
{
    if (!already_counted && kind == MK__AUTH_EVENT_KIND__AUTH_EVENT_FAILURE)
        authlimit_failed(s->authlimit, ip, account, mk_mono_us());
    else if (!already_counted)
        authlimit_registered(s->authlimit, ip, mk_mono_us());
    metric_inc(s->m_auth_events, "local");
    Mk__AuthEvent ev = MK__AUTH_EVENT__INIT;
    ev.kind = kind;
    ev.address = (char *)ip;
    ev.account = (char *)(account ? account : "");
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_AUTH_EVENT;
    e.auth_event = &ev;
    const struct cfg_proc *peers[64];
    size_t n = cfg_procs_of_role(s->cfg, CFG_ROLE_C2S, peers, MK_ARRAY_LEN(peers));
    for (size_t i = 0; i < n; i++)
        if (peers[i] != s->node->self)
            node_send(s->node, peers[i]->id, &e);
}

/* Another c2s's failed login or registration: counted here too. The fields are checked
 * as the table would use them: an address of at most 63 bytes, an account that fits. */
static void on_auth_event(struct c2s *s, const char *sender, const Mk__AuthEvent *ev)
{
    if (sender == NULL || strncmp(sender, "c2s.", 4) != 0 || ev->address == NULL ||
        strnlen(ev->address, 64) >= 64 || ev->account == NULL || strnlen(ev->account, 1100) >= 1100)
        return;
    if (ev->kind == MK__AUTH_EVENT_KIND__AUTH_EVENT_FAILURE)
        authlimit_failed(s->authlimit, ev->address, ev->account, mk_mono_us());
    else if (ev->kind == MK__AUTH_EVENT_KIND__AUTH_EVENT_REGISTERED)
        authlimit_registered(s->authlimit, ev->address, mk_mono_us());
    else
        return;
    metric_inc(s->m_auth_events, "peer");
}

static void on_envelope(struct node *n, Mk__Envelope **envp)
{
    struct c2s *s = n->role_data;
    Mk__Envelope *e = *envp;
    if (c2s_modules_envelope(s, e) || drain_on_envelope(s, e))
        return;
    /* Acks of Routes; a router's Hello re-sends what it has not acknowledged, after
     * on_peer_hello has re-registered the sessions with it. */
    if (rchan_set_on_envelope(s->routes, e)) {
        if (e->payload_case == MK__ENVELOPE__PAYLOAD_ACK)
            c2s_handover_progress(s);
        return;
    }
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_DELIVER:
        if (e->deliver != NULL)
            session_on_deliver(s, e->deliver);
        break;
    case MK__ENVELOPE__PAYLOAD_SESSION_CLOSE:
        if (e->session_close != NULL)
            on_session_close(s, e->session_close);
        break;
    case MK__ENVELOPE__PAYLOAD_SESSION_CONFIRMED:
        if (e->session_confirmed != NULL)
            session_on_confirmed(s, e->session_confirmed);
        break;
    case MK__ENVELOPE__PAYLOAD_HANDOVER_FENCE:
        if (e->handover_fence != NULL)
            c2s_handover_on_fence(s, e->sender, e->handover_fence);
        break;
    case MK__ENVELOPE__PAYLOAD_AUTH_EVENT:
        if (e->auth_event != NULL)
            on_auth_event(s, e->sender, e->auth_event);
        break;
    default:
        break;
    }
}

static void on_peer_hello(struct node *n, const char *peer, const char *role, bool is_reply)
{
    struct c2s *s = n->role_data;
    if (!is_reply && strcmp(role, "router") == 0)
        session_resync_router(s, peer);
}

static void on_reload(struct node *n, const struct cfg_proc *const *added, size_t nadded)
{
    c2s_handover_start(n->role_data, added, nadded);
}

static bool ready(struct node *n, char *why, size_t whylen)
{
    struct c2s *s = n->role_data;
    if (!store_ready(s->store)) {
        snprintf(why, whylen, "store unreachable");
        return false;
    }
    return true;
}

/* Gauges refreshed when /metrics is read. */
static void collect(struct node *n)
{
    struct c2s *s = n->role_data;
    metric_set(s->m_store_pending, NULL, (double)store_pending(s->store));
    metric_set(s->m_store_refused, NULL, (double)store_refused(s->store));
    metric_set(s->m_store_handoffs, NULL, (double)store_handoffs(s->store));
    metric_set(s->m_routes_pending, NULL, (double)rchan_set_pending(s->routes));
    metric_set(s->m_routes_held, NULL, (double)rchan_set_held(s->routes));
}

static void on_stop(struct node *n)
{
    struct c2s *s = n->role_data;
    s->stopping = true;
    conn_stop_listening(s);
    stream_cancel_auth_waits(s);
    log_info("shutdown", "connections=%zu", s->nconns);
    drain_start(s);
}

static void on_stop_check(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct c2s *s = w->data;
    if (s->stopping && s->conns == NULL && s->reap_list == NULL && !drain_pending(s) && store_pending(s->store) == 0 &&
        c2s_modules_pending(s) == 0 && rchan_set_pending(s->routes) == rchan_set_held(s->routes)) {
        /* (A Route a router holds was applied there: it keeps it for gd, as it did before
         * it held it on our channel; a stop does not wait for the other data center.) */
        session_custody_flush(s);   /* what the drain stored or re-routed: the routers forget their copies */
        node_exit(s->node);
    }
}

/* Every c2s reads the same TLS key: a secret they share without more configuration. */
static void seed_fake_salts(const char *key_file)
{
    FILE *f = fopen(key_file, "rb");
    if (f == NULL)
        return;
    unsigned char buf[16384];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    if (n > 0)
        scram_set_fake_secret(buf, n);
    OPENSSL_cleanse(buf, sizeof buf);
}

int main(int argc, char **argv)
{
    struct c2s *s = &c2s_state;
    struct node n;
    struct node_hooks hooks = {
        .on_envelope = on_envelope,
        .on_peer_hello = on_peer_hello,
        .on_reload = on_reload,
        .ready = ready,
        .on_stop = on_stop,
        .collect = collect,
    };
    if (node_init(&n, argc, argv, CFG_ROLE_C2S, &hooks, s) == -1)
        return 1;
    s->node = &n;
    s->cfg = n.cfg;
    s->loop = n.loop;
    s->limits.max_stanza_bytes = s->cfg->limits.max_stanza_bytes;
    s->limits.max_depth = s->cfg->limits.max_depth;
    s->limits.max_attrs = s->cfg->limits.max_attrs;
    /* Session ids are unique per incarnation: start from the clock so a restarted c2s
     * never reuses an id a router might still hold. */
    s->next_session_id = (uint64_t)mk_now_us() << 8;
    char err[512];
    s->tls_ctx = tls_server_ctx(s->cfg->tls_cert, s->cfg->tls_key, err, sizeof err);
    if (s->tls_ctx == NULL) {
        log_error("tls_failed", "reason=\"%s\"", err);
        return 1;
    }
    SSL_CTX_set_num_tickets(s->tls_ctx, s->cfg->tls_session_tickets);
    seed_fake_salts(s->cfg->tls_key);
    s->store = store_open(s->loop, s->cfg, err, sizeof err);
    if (s->store == NULL) {
        log_error("store_failed", "reason=\"%s\"", err);
        return 1;
    }
    s->kdf_pool = workpool_new(s->loop, C2S_KDF_THREADS, C2S_KDF_MAX_JOBS);
    if (s->kdf_pool == NULL) {
        log_error("workpool_failed", "errno=%d", errno);
        return 1;
    }
    s->m_conns = metrics_gauge(n.metrics, "meerkat_c2s_connections", "Open client connections", NULL);
    s->m_sessions = metrics_gauge(n.metrics, "meerkat_c2s_sessions", "Bound sessions", NULL);
    s->m_stanzas_in = metrics_counter(n.metrics, "meerkat_c2s_stanzas_in_total", "Top-level elements received from clients", "kind");
    s->m_stanzas_out = metrics_counter(n.metrics, "meerkat_c2s_stanzas_out_total", "Stanzas written to clients", "kind");
    s->m_auth = metrics_counter(n.metrics, "meerkat_c2s_auth_total", "SASL outcomes", "result");
    s->m_stream_errors = metrics_counter(n.metrics, "meerkat_c2s_stream_errors_total", "Stream errors sent", "condition");
    s->m_tls_handshakes = metrics_counter(n.metrics, "meerkat_c2s_tls_handshakes_total", "TLS handshakes", "result");
    s->m_limit_refusals = metrics_counter(n.metrics, "meerkat_c2s_limit_refusals_total",
                                          "Requests refused at a configured limit", "limit");
    s->m_output_overflow = metrics_counter(n.metrics, "meerkat_c2s_output_overflows_total",
                                           "Streams ended because the client left more than limits.max_output_bytes unread",
                                           NULL);
    s->m_kdf_refused = metrics_counter(n.metrics, "meerkat_c2s_kdf_refused_total",
                                       "Password hashing refused because the worker pool's queue was full", NULL);
    s->m_auth_events = metrics_counter(n.metrics, "meerkat_c2s_auth_limit_events_total",
                                       "Failed logins and registrations counted by the login limits", "origin");
    s->m_auth_waits = metrics_counter(n.metrics, "meerkat_c2s_auth_waits_total",
                                      "Login attempts held back by the failed-login limits", NULL);
    const struct cfg_limits *lim = &s->cfg->limits;
    struct authlimit_params ap = {
        .fail_per_ip = lim->auth_fail_per_ip,
        .fail_per_account = lim->auth_fail_per_user,
        .halflife_sec = lim->auth_fail_halflife_sec,
        .register_per_ip = lim->register_per_ip,
        .register_interval_sec = lim->register_interval_sec,
        .preauth_per_ip = lim->max_preauth_per_ip,
    };
    s->authlimit = authlimit_new(&ap);
    for (size_t i = 0; i < n.cfg->ndomains; i++)
        if (cfg_push_events(n.cfg, n.cfg->domains[i]) &
            (CFG_PUSH_BIT(MK__PUSH_EVENT_KIND__PUSH_EVENT_DELIVERED) | CFG_PUSH_BIT(MK__PUSH_EVENT_KIND__PUSH_EVENT_STORED)))
            s->route_bodies = true;
    s->m_store_pending = metrics_gauge(n.metrics, "meerkat_store_pending_queries", "Store queries queued or running",
                                       NULL);
    s->m_store_refused = metrics_gauge(n.metrics, "meerkat_store_refused_queries",
                                       "Store queries refused since start: limits.max_store_queue were waiting", NULL);
    s->m_store_handoffs = metrics_gauge(n.metrics, "meerkat_store_handoffs",
                                        "Times since start the store driver was handed the queries of a loop turn", NULL);
    conn_init_loop(s);
    c2s_modules_init(s);
    s->routes = rchan_set_new(s->loop, n.bus, s->cfg, CFG_ROLE_ROUTER, s->cfg->limits.max_pending_routes,
                              C2S_ROUTE_RESEND_MS);
    session_custody_alive_start(s);
    s->m_routes = metrics_counter(n.metrics, "meerkat_c2s_routes_total",
                                  "Routes to the router shards by result (sent, backpressure)", "result");
    s->m_handovers = metrics_counter(n.metrics, "meerkat_c2s_router_handovers_total",
                                     "Router shards added at a reload whose Routes waited here until what was sent "
                                     "through the old shards was ahead of them, by how the wait ended (fenced, "
                                     "deadline, superseded)", "result");
    s->m_components = metrics_gauge(n.metrics, "meerkat_c2s_components",
                                    "External components (XEP-0114) connected to this c2s", NULL);
    s->m_component_handshakes = metrics_counter(n.metrics, "meerkat_c2s_component_handshakes_total",
                                                "Component handshakes (XEP-0114) by result", "result");
    s->m_routes_pending = metrics_gauge(n.metrics, "meerkat_c2s_routes_pending",
                                        "Routes sent to the router shards and not acknowledged yet", NULL);
    s->m_routes_held = metrics_gauge(n.metrics, "meerkat_c2s_routes_held",
                                     "Of those, the ones a router holds (applied, kept here until gd is done with "
                                     "their copies for other data centers)", NULL);
    if (conn_listen(s, err, sizeof err) == -1) {
        log_error("listen_failed", "reason=\"%s\"", err);
        return 1;
    }
    ev_prepare stop_w;
    ev_prepare_init(&stop_w, on_stop_check);
    stop_w.data = s;
    ev_prepare_start(s->loop, &stop_w);
    struct coalesce coalesce = { 0 };   /* fewer wake-ups near capacity (common/coalesce.h) */
    coalesce_start(&coalesce, s->loop, &COALESCE_CHAT);
    node_run(&n);
    coalesce_stop(&coalesce);
    ev_prepare_stop(s->loop, &stop_w);
    drain_fini(s);
    workpool_free(&s->kdf_pool);
    conn_stop_listening(s);
    c2s_modules_fini(s);
    c2s_handover_free(s);
    rchan_set_free(&s->routes);
    if (ev_is_active(&s->custody_w))
        ev_timer_stop(s->loop, &s->custody_w);
    session_custody_alive_stop(s);
    if (ev_is_active(&s->custody_ride_w))
        ev_prepare_stop(s->loop, &s->custody_ride_w);
    free(s->custody_done);
    store_close(&s->store);
    authlimit_free(&s->authlimit);
    SSL_CTX_free(s->tls_ctx);
    node_fini(&n);
    return 0;
}
