/* router/gd.c - the router's side of global distribution: every session told to the gd that owns it, misses handed to gd, stanzas gd injects. */
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "jid.h"
#include "log.h"
#include "mamid.h"
#include "metrics.h"
#include "node.h"
#include "rchan.h"
#include "rchan_set.h"
#include "router.h"
#include "intake.h"
#include "util.h"

/* A MISS or OTHERS handed to gd, kept (packed) until gd says it is done with it
 * (DONE): the link to the other data center acknowledged it, or gd gave it back or
 * dropped it. A gd killed meanwhile gets the kept ones again, in order. */
struct gd_kept {
    uint64_t ref;                  /* increasing: the ring is sorted by it */
    uint8_t *packed;               /* the GdForward */
    size_t len;
    bool done;
    /* The Route held on its c2s channel until gd is done with it (router_gd_hold);
     * c2s NULL: none. */
    const char *c2s;
    uint64_t c2s_epoch, c2s_seq;
};

/* What one gd process has not finished, oldest first (a ring). */
struct gd_keep {
    const char *gd;                /* its id, owned by the config */
    struct gd_kept *ring;
    size_t cap, head, count;
};

/* The (origin DC, msg id, hops, kind) of the GdForwards applied lately: a gd restarted
 * after handing one on and before its acknowledgement left gets it again, and this
 * router drops the copy. A FIFO of ROUTER_GD_SEEN_MAX keys and an open-addressing set
 * over them (twice as many slots, linear probing, 0 = empty). */
struct gd_seen {
    uint64_t *fifo;
    size_t head, count;
    uint64_t *slots;
};

struct router_gd {
    struct router *rt;
    struct rchan_set *tx;          /* to the gd processes, shard = rendezvous over them on the bare JID */
    struct rchan_rx *rx;           /* GdForward from the gd processes */
    struct mamid_gen ids;          /* msg ids: (microseconds << 8) | generator, unique in the data center */
    uint64_t next_ref;
    struct gd_keep *keeps;         /* one per gd process */
    size_t nkeeps;
    size_t kept;                   /* over all of them */
    struct gd_seen seen;
    struct metric *m_sent;         /* label kind: what went to gd */
    struct metric *m_injected;     /* label kind: what gd handed here */
    struct metric *m_refused;      /* label kind: channel full, handled here instead */
    struct metric *m_kept;         /* gauge: MISS/OTHERS gd has not finished */
};

/* --- kept copies ------------------------------------------------------------------------ */

static struct gd_keep *keep_of(struct router_gd *g, const char *gd)
{
    for (size_t i = 0; i < g->nkeeps; i++)
        if (strcmp(g->keeps[i].gd, gd) == 0)
            return &g->keeps[i];
    return NULL;
}

static struct gd_kept *kept_at(struct gd_keep *k, size_t i)
{
    return &k->ring[(k->head + i) % k->cap];
}

/* Keeps f (borrowed; packed) for gd; returns its ref, or 0 when the keep is full. */
static uint64_t keep_add(struct router_gd *g, struct gd_keep *k, Mk__GdForward *f)
{
    if (g->kept >= ROUTER_GD_MAX_KEPT)
        return 0;
    if (k->count == k->cap)
        mk_ring_grow(&k->ring, sizeof *k->ring, &k->cap, &k->head, k->count, 64);
    f->router_ref = ++g->next_ref;
    struct gd_kept *it = kept_at(k, k->count++);
    it->ref = f->router_ref;
    it->len = mk__gd_forward__get_packed_size(f);
    it->packed = xmalloc(it->len ? it->len : 1);
    mk__gd_forward__pack(f, it->packed);
    it->done = false;
    it->c2s = NULL;
    g->kept++;
    return it->ref;
}

/* Drops the newest kept copy (its send was refused). */
static void keep_drop_last(struct router_gd *g, struct gd_keep *k)
{
    struct gd_kept *it = kept_at(k, k->count - 1);
    free(it->packed);
    k->count--;
    g->kept--;
}

static uint64_t kept_ref(const void *keep, size_t i)
{
    const struct gd_keep *k = keep;
    return k->ring[(k->head + i) % k->cap].ref;
}

/* The kept copy ref of k, or NULL. */
static struct gd_kept *keep_find(struct gd_keep *k, uint64_t ref)
{
    size_t lo = mk_lower_bound(k->count, ref, kept_ref, k);
    return lo < k->count && kept_at(k, lo)->ref == ref ? kept_at(k, lo) : NULL;
}

/* gd is done with ref: forgotten (out of order: marked, the ring's front is freed), and
 * the Route it came from released on its c2s channel. */
static void keep_done(struct router_gd *g, struct gd_keep *k, uint64_t ref)
{
    struct gd_kept *it = keep_find(k, ref);
    if (it != NULL && !it->done) {
        it->done = true;
        if (it->c2s != NULL) {
            router_intake_release(g->rt->intake, it->c2s, it->c2s_epoch, it->c2s_seq);
            it->c2s = NULL;
        }
    }
    while (k->count > 0 && kept_at(k, 0)->done) {
        free(kept_at(k, 0)->packed);
        k->head = (k->head + 1) % k->cap;
        k->count--;
        g->kept--;
    }
}

/* --- duplicates from a restarted gd ---------------------------------------------------- */

#define SEEN_SLOTS (2u * ROUTER_GD_SEEN_MAX)

static size_t seen_home(uint64_t key)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & (SEEN_SLOTS - 1);
}

static void seen_delete(struct gd_seen *s, uint64_t key)
{
    size_t i = seen_home(key);
    while (s->slots[i] != key) {
        if (s->slots[i] == 0)
            return;
        i = (i + 1) & (SEEN_SLOTS - 1);
    }
    /* Backward-shift deletion: every key after the hole that may move into it does. */
    for (size_t j = (i + 1) & (SEEN_SLOTS - 1); s->slots[j] != 0; j = (j + 1) & (SEEN_SLOTS - 1)) {
        size_t h = seen_home(s->slots[j]);
        bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
        if (!stays) {
            s->slots[i] = s->slots[j];
            i = j;
        }
    }
    s->slots[i] = 0;
}

/* True when key was applied lately (a copy to drop); else records it. */
static bool seen_check(struct gd_seen *s, uint64_t key)
{
    if (key == 0)
        key = 1;
    if (s->slots == NULL) {
        s->slots = xcalloc(SEEN_SLOTS, sizeof *s->slots);
        s->fifo = xcalloc(ROUTER_GD_SEEN_MAX, sizeof *s->fifo);
    }
    size_t i = seen_home(key);
    while (s->slots[i] != 0) {
        if (s->slots[i] == key)
            return true;
        i = (i + 1) & (SEEN_SLOTS - 1);
    }
    if (s->count == ROUTER_GD_SEEN_MAX) {
        seen_delete(s, s->fifo[s->head]);
        s->head = (s->head + 1) % ROUTER_GD_SEEN_MAX;
        s->count--;
        i = seen_home(key);
        while (s->slots[i] != 0)
            i = (i + 1) & (SEEN_SLOTS - 1);
    }
    s->slots[i] = key;
    s->fifo[(s->head + s->count++) % ROUTER_GD_SEEN_MAX] = key;
    return false;
}

static uint64_t seen_key(const struct router_gd *g, const Mk__GdForward *f)
{
    const char *origin = f->origin_dc != NULL && *f->origin_dc != '\0' ? f->origin_dc : g->rt->node->cfg->gd.dc;
    /* INJECT and INJECT_SESSIONS of one msg id are one stanza for this data center's
     * sessions: gd sends a stanza as one or the other to each data center, and its copy
     * may come as the other kind (a gd re-resolving it after a restart; a router
     * re-sending, after its own restart, as a MISS what was an OTHERS copy because the
     * sessions it was delivered to are gone). */
    Mk__GdForwardKind kind = f->kind == MK__GD_FORWARD_KIND__GD_FORWARD_INJECT_SESSIONS
                                 ? MK__GD_FORWARD_KIND__GD_FORWARD_INJECT : f->kind;
    uint64_t seed = f->msg_id ^ ((uint64_t)f->hops_left << 40) ^ ((uint64_t)kind << 56);
    return mk_hash64(origin, origin != NULL ? strlen(origin) : 0, seed);
}

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
    int gen = mamid_generator(CFG_ROLE_ROUTER, n->self->index);
    mamid_gen_init(&g->ids, gen >= 0 ? (unsigned)gen : 191u);
    /* Refs of this incarnation are above any of the last one's: a DONE for one of those
     * (gd finishing what it had before our restart) names nothing here. */
    g->next_ref = (uint64_t)mk_now_us() << 10;
    const struct cfg_proc *procs[256];
    g->nkeeps = cfg_procs_of_role(n->cfg, CFG_ROLE_GD, procs, MK_ARRAY_LEN(procs));
    g->keeps = xcalloc(g->nkeeps ? g->nkeeps : 1, sizeof *g->keeps);
    for (size_t i = 0; i < g->nkeeps; i++)
        g->keeps[i].gd = procs[i]->id;
    g->m_kept = metrics_gauge(n->metrics, "meerkat_router_gd_kept",
                              "Stanzas handed to gd and kept until gd is done with them (re-sent to a restarted gd)",
                              NULL);
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
    for (size_t i = 0; i < g->nkeeps; i++) {
        while (g->keeps[i].count > 0)
            keep_drop_last(g, &g->keeps[i]);
        free(g->keeps[i].ring);
    }
    free(g->keeps);
    free(g->seen.slots);
    free(g->seen.fifo);
    free(g);
    *gp = NULL;
}

size_t router_gd_pending(const struct router_gd *g)
{
    return g != NULL ? rchan_set_pending(g->tx) : 0;
}

/* The rchan sender to the gd owning jid's bare JID, or NULL; *keep (when not NULL) gets
 * that gd's kept copies. */
static struct rchan_tx *owner_of(struct router_gd *g, const char *jid, size_t bare_len, struct gd_keep **keep)
{
    const struct cfg_proc *p = cfg_shard_n(g->rt->node->cfg, CFG_ROLE_GD, jid, bare_len);
    if (p == NULL)
        return NULL;
    if (keep != NULL)
        *keep = keep_of(g, p->id);
    return rchan_set_peer(g->tx, p->id);
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
    struct rchan_tx *tx = owner_of(g, s->full, s->user != NULL ? s->user->bare_len : strlen(s->full), NULL);
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
    uint64_t gd_started;
};

static void sync_flush(struct sync_ctx *sc, bool done)
{
    Mk__GdSync gs = MK__GD_SYNC__INIT;
    gs.n_sessions = sc->n;
    gs.sessions = sc->ptrs;
    gs.done = done;
    gs.gd_started = sc->gd_started;
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

/* A gd said hello first: it (re)started with nothing. What its channel still held for
 * the previous incarnation is dropped (frames before the sync are not taken by the new
 * one); the sessions it owns go first, then every MISS/OTHERS it had not finished, in
 * the order they were first sent. */
static void gd_restarted(struct router_gd *g, const char *gd, uint64_t gd_started)
{
    struct rchan_tx *tx = rchan_set_peer(g->tx, gd);
    if (tx == NULL)
        return;
    size_t pending = rchan_tx_pending(tx);
    if (pending > 0)
        rchan_tx_ack(tx, rchan_tx_epoch(tx), rchan_tx_base(tx) + pending - 1);
    struct sync_ctx *sc = xcalloc(1, sizeof *sc);
    sc->g = g;
    sc->gd = gd;
    sc->tx = tx;
    sc->gd_started = gd_started;
    sess_table_foreach(&g->rt->table, sync_add, sc);
    for (size_t i = 0; i < g->rt->table.ncomponents; i++)
        if (g->rt->table.components[i].sess.c2s != NULL)
            sync_add(sc, &g->rt->table.components[i].sess);
    sync_flush(sc, true);
    size_t resent = 0, lost = 0;
    struct gd_keep *k = keep_of(g, gd);
    for (size_t i = 0; k != NULL && i < k->count; i++) {
        struct gd_kept *it = kept_at(k, i);
        if (it->done)
            continue;
        Mk__GdForward *f = mk__gd_forward__unpack(NULL, it->len, it->packed);
        if (f == NULL)
            continue;
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_GD_FORWARD;
        e.gd_forward = f;
        if (rchan_send(tx, &e) == 0)
            lost++;
        else
            resent++;
        mk__gd_forward__free_unpacked(f, NULL);
    }
    if (lost > 0)
        metric_add(g->m_refused, "kept_resend", (double)lost);
    log_info("gd_resync", "gd=%s sessions=%zu stanzas_resent=%zu", gd, sc->sent, resent);
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
    struct gd_keep *keep = NULL;
    struct rchan_tx *tx = owner_of(g, r->to, to.bare_len, &keep);
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
    /* A MISS or OTHERS of a c2s's Route is named by its place on that channel: a copy
     * re-sent after our restart gets the same id, and the data center that has it drops it. */
    bool from_c2s = marks != NULL && marks->c2s != NULL &&
                    (kind == MK__GD_FORWARD_KIND__GD_FORWARD_MISS || kind == MK__GD_FORWARD_KIND__GD_FORWARD_OTHERS);
    f.msg_id = from_c2s ? router_route_msg_id(marks->c2s, marks->c2s_epoch, marks->c2s_seq) : mamid_next(&g->ids);
    f.entered_us = (uint64_t)mk_now_us();
    /* A stanza (not STALE, a report) stays here until gd is done with it. */
    bool kept = kind != MK__GD_FORWARD_KIND__GD_FORWARD_STALE && keep != NULL;
    if (kept && keep_add(g, keep, &f) == 0) {
        metric_inc(g->m_refused, kind_name(kind));
        return -1;
    }
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_GD_FORWARD;
    e.gd_forward = &f;
    uint64_t seq = rchan_send(tx, &e);
    if (seq == 0) {
        if (kept)
            keep_drop_last(g, keep);
        metric_inc(g->m_refused, kind_name(kind));
        return -1;
    }
    metric_inc(g->m_sent, kind_name(kind));
    if (marks == NULL)
        return 0;
    /* A MISS is done for its c2s once gd has it (held below from then on); an OTHERS copy
     * waits for nothing more than the Route's own writes here (it was delivered here), and
     * is then held while gd is not done with it. */
    if (kind == MK__GD_FORWARD_KIND__GD_FORWARD_MISS && marks->n < MK_ARRAY_LEN(marks->tx)) {
        marks->tx[marks->n] = tx;
        marks->seq[marks->n++] = seq;
    }
    if (kept && from_c2s) {
        marks->gd_ref = f.router_ref;
        marks->gd = keep->gd;
    }
    return 0;
}

uint64_t router_route_msg_id(const char *c2s, uint64_t epoch, uint64_t seq)
{
    uint64_t place[3] = {rchan_sender_key(c2s), epoch, seq};
    uint64_t id = mk_hash64(place, sizeof place, 0x6d73672d6964ull);
    return id != 0 ? id : 1;
}

bool router_gd_hold(struct router_gd *g, const struct route_marks *marks)
{
    if (g == NULL || marks->gd == NULL || marks->c2s == NULL)
        return false;
    const char *c2s = marks->c2s;
    uint64_t epoch = marks->c2s_epoch, seq = marks->c2s_seq;
    struct gd_keep *k = keep_of(g, marks->gd);
    struct gd_kept *it = k != NULL ? keep_find(k, marks->gd_ref) : NULL;
    if (it == NULL || it->done)
        return false;   /* the other data center has it already */
    if (!router_intake_hold(g->rt->intake, c2s, epoch, seq)) {
        metric_inc(g->m_refused, "hold");
        return false;
    }
    it->c2s = c2s;
    it->c2s_epoch = epoch;
    it->c2s_seq = seq;
    return true;
}

int router_gd_resend(struct router_gd *g, const Mk__GdForward *via)
{
    struct jid_view to;
    if (g == NULL || via->hops_left <= 1 || router_jid_split(via->route->to, &to) == -1)
        return -1;
    struct gd_keep *keep = NULL;
    struct rchan_tx *tx = owner_of(g, via->route->to, to.bare_len, &keep);
    if (tx == NULL || keep == NULL)
        return -1;
    Mk__GdForward f = *via;
    f.kind = MK__GD_FORWARD_KIND__GD_FORWARD_MISS;
    f.hops_left = via->hops_left - 1;
    f.n_done_refs = 0;
    f.done_refs = NULL;
    if (keep_add(g, keep, &f) == 0) {
        metric_inc(g->m_refused, "miss_again");
        return -1;
    }
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_GD_FORWARD;
    e.gd_forward = &f;
    if (rchan_send(tx, &e) == 0) {
        keep_drop_last(g, keep);
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
    if (e->payload_case == MK__ENVELOPE__PAYLOAD_HELLO && e->hello != NULL && !e->hello->reply &&
        e->sender != NULL && keep_of(g, e->sender) != NULL) {
        /* A gd (re)started: it gets its sessions and its unfinished stanzas anew. Not
         * passed to the set: the sync and the kept copies replace its re-send of the
         * dropped frames. */
        gd_restarted(g, keep_of(g, e->sender)->gd, e->hello->started_us);
        metric_set(g->m_kept, NULL, (double)g->kept);
        return true;   /* the Routes whose frames were dropped are acknowledged (kept here) */
    }
    if (rchan_set_on_envelope(g->tx, e))
        return true;
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_GD_FORWARD)
        return false;
    const struct cfg_proc *p = e->sender ? cfg_find_proc(g->rt->node->cfg, e->sender) : NULL;
    const Mk__GdForward *f = e->gd_forward;
    bool is_done = f != NULL && f->kind == MK__GD_FORWARD_KIND__GD_FORWARD_DONE;
    if (p == NULL || p->role != CFG_ROLE_GD || f == NULL || (f->route == NULL && !is_done)) {
        metric_inc(g->m_injected, "refused");
        return true;
    }
    if (e->rc_seq != 0) {
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
    }
    if (is_done) {
        struct gd_keep *k = keep_of(g, p->id);
        for (size_t i = 0; k != NULL && i < f->n_done_refs; i++)
            keep_done(g, k, f->done_refs[i]);
        metric_set(g->m_kept, NULL, (double)g->kept);
    } else if (f->msg_id != 0 && seen_check(&g->seen, seen_key(g, f))) {
        /* Applied already: a gd restarted before its acknowledgement left. */
        metric_inc(g->m_injected, "duplicate_msg");
    } else {
        /* Done once routed: its archive and offline writes are on their own channels (a
         * crash between the two loses at most the archive copy of what was in flight). */
        apply_forward(g, f);
        if (f->kind == MK__GD_FORWARD_KIND__GD_FORWARD_GIVE_UP && f->router_ref != 0) {
            /* Handled here now: a restarted gd must not get it again (gd's DONE follows). */
            struct gd_keep *k = keep_of(g, p->id);
            if (k != NULL)
                keep_done(g, k, f->router_ref);
        }
    }
    if (e->rc_seq != 0)
        rchan_rx_done(g->rx, p->id, e->rc_epoch, e->rc_seq);
    return true;
}
