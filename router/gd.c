/* router/gd.c - the router's side of global distribution: every session told to the gd that owns it, misses handed to gd, stanzas gd injects. */
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "jid.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "rchan.h"
#include "rchan_set.h"
#include "router.h"
#include "util.h"

struct router_gd {
    struct router *rt;
    struct rchan_set *tx;          /* to the gd processes, shard = rendezvous over them on the bare JID */
    struct rchan_rx *rx;           /* GdForward from the gd processes */
    uint64_t next_msg;
    struct metric *m_sent;         /* label kind: what went to gd */
    struct metric *m_injected;     /* label kind: what gd handed here */
    struct metric *m_refused;      /* label kind: channel full, handled here instead */
};

static const char *kind_name(Mk__GdForwardKind k)
{
    switch (k) {
    case MK__GD_FORWARD_KIND__GD_FORWARD_MISS:            return "miss";
    case MK__GD_FORWARD_KIND__GD_FORWARD_OTHERS:          return "others";
    case MK__GD_FORWARD_KIND__GD_FORWARD_INJECT:          return "inject";
    case MK__GD_FORWARD_KIND__GD_FORWARD_INJECT_SESSIONS: return "inject_sessions";
    case MK__GD_FORWARD_KIND__GD_FORWARD_GIVE_UP:         return "give_up";
    case MK__GD_FORWARD_KIND__GD_FORWARD_STALE:           return "stale";
    default:                                              return "unknown";
    }
}

struct router_gd *router_gd_new(struct router *rt)
{
    struct node *n = rt->node;
    if (!n->cfg->gd.enabled)
        return NULL;
    struct router_gd *g = xcalloc(1, sizeof *g);
    g->rt = rt;
    g->tx = rchan_set_new(n->loop, n->bus, n->cfg, CFG_ROLE_GD, ROUTER_GD_MAX_PENDING, ROUTER_GD_RESEND_MS);
    g->rx = rchan_rx_new(n->loop, n->bus);
    g->m_sent = metrics_counter(n->metrics, "meerkat_router_gd_sent_total",
                                "Session events and stanzas handed to gd (global distribution)", "kind");
    g->m_injected = metrics_counter(n->metrics, "meerkat_router_gd_injected_total",
                                    "Stanzas gd handed to this router (from other data centers, or given up)",
                                    "kind");
    g->m_refused = metrics_counter(n->metrics, "meerkat_router_gd_refused_total",
                                   "Stanzas gd's channel refused (full): handled here as with GD off", "kind");
    return g;
}

void router_gd_free(struct router_gd **gp)
{
    struct router_gd *g = *gp;
    if (g == NULL)
        return;
    rchan_rx_flush(g->rx);
    rchan_rx_free(&g->rx);
    rchan_set_free(&g->tx);
    free(g);
    *gp = NULL;
}

size_t router_gd_pending(const struct router_gd *g)
{
    return g != NULL ? rchan_set_pending(g->tx) : 0;
}

/* The rchan sender to the gd owning jid's bare JID, or NULL. */
static struct rchan_tx *owner_of(struct router_gd *g, const char *jid, size_t bare_len)
{
    char stack[320];
    char *bare = bare_len < sizeof stack ? stack : xmalloc(bare_len + 1);
    memcpy(bare, jid, bare_len);
    bare[bare_len] = '\0';
    struct rchan_tx *tx = rchan_set_shard(g->tx, bare);
    if (bare != stack)
        free(bare);
    return tx;
}

/* A component's connection (s->user NULL, s->full its domain) is registered with every
 * router shard; only the shard that owns the domain tells gd, once. */
static bool told_here(const struct router_gd *g, const struct router_sess *s)
{
    if (s->user != NULL)
        return true;
    const struct cfg_proc *p = cfg_shard(g->rt->node->cfg, CFG_ROLE_ROUTER, s->full);
    return p == NULL || p == g->rt->node->self;
}

static void session_event(struct router_gd *g, const struct router_sess *s, bool open)
{
    if (!told_here(g, s))
        return;
    struct rchan_tx *tx = owner_of(g, s->full, s->user != NULL ? s->user->bare_len : strlen(s->full));
    if (tx == NULL)
        return;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    Mk__SessionOpen so = MK__SESSION_OPEN__INIT;
    Mk__SessionClose sc = MK__SESSION_CLOSE__INIT;
    if (open) {
        so.jid = s->full;
        so.c2s = s->c2s->id;
        so.session_id = s->session_id;
        so.priority = s->priority;
        so.available = s->available;
        so.login_us = s->login_us;
        e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_OPEN;
        e.session_open = &so;
    } else {
        sc.jid = s->full;
        sc.c2s = s->c2s->id;
        sc.session_id = s->session_id;
        e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_CLOSE;
        e.session_close = &sc;
    }
    if (rchan_send(tx, &e) == 0) {
        /* gd is far behind: the table entry is repaired by the resync after its restart,
         * or expires; the session itself is not affected. */
        metric_inc(g->m_refused, open ? "session_open" : "session_close");
        return;
    }
    metric_inc(g->m_sent, open ? "session_open" : "session_close");
}

void router_gd_session_open(struct router_gd *g, const struct router_sess *s)
{
    if (g != NULL && s->c2s != NULL)
        session_event(g, s, true);
}

void router_gd_session_close(struct router_gd *g, const struct router_sess *s)
{
    if (g != NULL && s->c2s != NULL)
        session_event(g, s, false);
}

void router_gd_purge_c2s(struct router_gd *g, const char *c2s)
{
    if (g == NULL)
        return;
    const struct sess_table *t = &g->rt->table;
    for (size_t i = 0; i < t->nc2s; i++) {
        if (strcmp(t->c2s[i]->id, c2s) != 0)
            continue;
        for (const struct router_sess *s = t->c2s[i]->head; s != NULL; s = s->c2s_next)
            router_gd_session_close(g, s);
    }
    for (size_t i = 0; i < t->ncomponents; i++)
        if (t->components[i].sess.c2s != NULL && strcmp(t->components[i].sess.c2s->id, c2s) == 0)
            router_gd_session_close(g, &t->components[i].sess);
}

/* --- the sessions of a restarted gd ------------------------------------------------------ */

struct sync_ctx {
    struct router_gd *g;
    const char *gd;
    struct rchan_tx *tx;
    Mk__SessionOpen items[ROUTER_LIST_BATCH];
    Mk__SessionOpen *ptrs[ROUTER_LIST_BATCH];
    size_t n;
    size_t sent;
};

static void sync_flush(struct sync_ctx *sc, bool done)
{
    Mk__GdSync gs = MK__GD_SYNC__INIT;
    gs.n_sessions = sc->n;
    gs.sessions = sc->ptrs;
    gs.done = done;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_GD_SYNC;
    e.gd_sync = &gs;
    if (rchan_send(sc->tx, &e) == 0)
        metric_inc(sc->g->m_refused, "sync");
    sc->sent += sc->n;
    sc->n = 0;
}

static void sync_add(void *ud, const struct router_sess *s)
{
    struct sync_ctx *sc = ud;
    if (!told_here(sc->g, s))
        return;
    const struct cfg_proc *p = cfg_shard(sc->g->rt->node->cfg, CFG_ROLE_GD, s->user != NULL ? s->user->bare : s->full);
    if (p == NULL || strcmp(p->id, sc->gd) != 0)
        return;
    Mk__SessionOpen *so = &sc->items[sc->n];
    mk__session_open__init(so);
    so->jid = s->full;
    so->c2s = s->c2s->id;
    so->session_id = s->session_id;
    so->priority = s->priority;
    so->available = s->available;
    so->login_us = s->login_us;
    sc->ptrs[sc->n++] = so;
    if (sc->n == ROUTER_LIST_BATCH)
        sync_flush(sc, false);
}

void router_gd_peer_hello(struct router_gd *g, const char *gd)
{
    if (g == NULL)
        return;
    struct rchan_tx *tx = rchan_set_peer(g->tx, gd);
    if (tx == NULL)
        return;
    struct sync_ctx *sc = xcalloc(1, sizeof *sc);
    sc->g = g;
    sc->gd = gd;
    sc->tx = tx;
    sess_table_foreach(&g->rt->table, sync_add, sc);
    for (size_t i = 0; i < g->rt->table.ncomponents; i++)
        if (g->rt->table.components[i].sess.c2s != NULL)
            sync_add(sc, &g->rt->table.components[i].sess);
    sync_flush(sc, true);
    log_info("gd_resync", "gd=%s sessions=%zu", gd, sc->sent);
    free(sc);
}

/* --- stanzas ------------------------------------------------------------------------------ */

int router_gd_lookup_here(const struct router *rt, const Mk__Route *r, bool *bare)
{
    struct jid_view to;
    if (r->to == NULL || router_jid_split(r->to, &to) == -1)
        return -1;
    char d[JID_PART_MAX + 1];
    if (to.domain_len >= sizeof d)
        return -1;
    memcpy(d, r->to + to.domain_off, to.domain_len);
    d[to.domain_len] = '\0';
    if (!cfg_is_local_domain(rt->node->cfg, d)) {
        /* No server-to-server: another domain is a component, connected here or in
         * another data center (gd claims the domains of the connected ones). */
        const struct router_component *c = router_component_find(&rt->table, r->to + to.domain_off, to.domain_len);
        *bare = false;
        return c != NULL && c->sess.c2s != NULL ? 1 : 0;
    }
    if (!to.has_local)
        return -1;
    *bare = to.resource == NULL;
    const struct router_user *u = sess_table_user(&rt->table, r->to, to.bare_len);
    if (u == NULL)
        return 0;
    if (to.resource == NULL)
        return 1;
    for (const struct router_sess *s = u->sessions; s != NULL; s = s->next)
        if (strcmp(sess_resource(s), to.resource) == 0)
            return 1;
    return 0;
}

int router_gd_send(struct router_gd *g, Mk__GdForwardKind kind, const Mk__Route *r, struct route_marks *marks)
{
    struct jid_view to;
    if (g == NULL || router_jid_split(r->to, &to) == -1)
        return -1;
    struct rchan_tx *tx = owner_of(g, r->to, to.bare_len);
    if (tx == NULL)
        return -1;
    Mk__Route copy;
    Mk__GdForward f = MK__GD_FORWARD__INIT;
    f.kind = kind;
    f.route = (Mk__Route *)r;
    if (kind == MK__GD_FORWARD_KIND__GD_FORWARD_STALE) {
        copy = *r;
        copy.xml.data = NULL;
        copy.xml.len = 0;
        copy.body = (char *)"";
        f.route = &copy;
    }
    f.hops_left = g->rt->node->cfg->gd.hop_ttl;
    f.msg_id = ++g->next_msg;
    f.entered_us = (uint64_t)mk_now_us();
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_GD_FORWARD;
    e.gd_forward = &f;
    uint64_t seq = rchan_send(tx, &e);
    if (seq == 0) {
        metric_inc(g->m_refused, kind_name(kind));
        return -1;
    }
    metric_inc(g->m_sent, kind_name(kind));
    if (marks != NULL && marks->n < MK_ARRAY_LEN(marks->tx)) {
        marks->tx[marks->n] = tx;
        marks->seq[marks->n++] = seq;
    }
    return 0;
}

int router_gd_resend(struct router_gd *g, const Mk__GdForward *via)
{
    struct jid_view to;
    if (g == NULL || via->hops_left <= 1 || router_jid_split(via->route->to, &to) == -1)
        return -1;
    struct rchan_tx *tx = owner_of(g, via->route->to, to.bare_len);
    if (tx == NULL)
        return -1;
    Mk__GdForward f = *via;
    f.kind = MK__GD_FORWARD_KIND__GD_FORWARD_MISS;
    f.hops_left = via->hops_left - 1;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_GD_FORWARD;
    e.gd_forward = &f;
    if (rchan_send(tx, &e) == 0) {
        metric_inc(g->m_refused, "miss_again");
        return -1;
    }
    metric_inc(g->m_sent, "miss_again");
    return 0;
}

static void apply_forward(struct router_gd *g, const Mk__GdForward *f)
{
    enum router_from from;
    switch (f->kind) {
    case MK__GD_FORWARD_KIND__GD_FORWARD_INJECT:
        from = ROUTER_FROM_GD_INJECT;
        break;
    case MK__GD_FORWARD_KIND__GD_FORWARD_INJECT_SESSIONS:
        from = ROUTER_FROM_GD_SESSIONS;
        break;
    case MK__GD_FORWARD_KIND__GD_FORWARD_GIVE_UP:
        from = ROUTER_FROM_GD_GIVE_UP;
        break;
    default:
        metric_inc(g->m_injected, "bad_kind");
        return;
    }
    metric_inc(g->m_injected, kind_name(f->kind));
    router_route(g->rt, f->route, NULL, from, f);
}

bool router_gd_on_envelope(struct router_gd *g, const Mk__Envelope *e)
{
    if (g == NULL)
        return false;
    if (rchan_set_on_envelope(g->tx, e))
        return true;
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_GD_FORWARD)
        return false;
    const struct cfg_proc *p = e->sender ? cfg_find_proc(g->rt->node->cfg, e->sender) : NULL;
    if (p == NULL || p->role != CFG_ROLE_GD || e->gd_forward == NULL || e->gd_forward->route == NULL) {
        metric_inc(g->m_injected, "refused");
        return true;
    }
    if (e->rc_seq == 0) {
        apply_forward(g, e->gd_forward);
        return true;
    }
    switch (rchan_rx_check(g->rx, e)) {
    case RCHAN_NEW:
        break;
    case RCHAN_DUP:
        metric_inc(g->m_injected, "duplicate");
        return true;
    case RCHAN_GAP:
        metric_inc(g->m_injected, "gap");
        return true;
    }
    /* Done once routed: its archive and offline writes are on their own channels (a
     * crash between the two loses at most the archive copy of what was in flight). */
    apply_forward(g, e->gd_forward);
    rchan_rx_done(g->rx, p->id, e->rc_epoch, e->rc_seq);
    return true;
}
