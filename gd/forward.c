/* gd/forward.c - stanzas with no session in this data center: looked up in the table, sent over the link, bounced with backoff, given back. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

static void rcpt_run(struct gd_rcpt *r);

/* --- recipient queues ------------------------------------------------------------------- */

static struct gd_rcpt *rcpt_find(struct gd *g, const char *bare, size_t len, uint64_t h)
{
    if (g->nrcpt_buckets == 0)
        return NULL;
    for (struct gd_rcpt *r = g->rcpts[h & (g->nrcpt_buckets - 1)]; r != NULL; r = r->hnext)
        if (r->hash == h && strncmp(r->bare, bare, len) == 0 && r->bare[len] == '\0')
            return r;
    return NULL;
}

static void rcpt_grow(struct gd *g)
{
    size_t nb = g->nrcpt_buckets ? g->nrcpt_buckets * 2 : 256;
    struct gd_rcpt **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < g->nrcpt_buckets; i++) {
        struct gd_rcpt *r = g->rcpts[i];
        while (r != NULL) {
            struct gd_rcpt *next = r->hnext;
            r->hnext = b[r->hash & (nb - 1)];
            b[r->hash & (nb - 1)] = r;
            r = next;
        }
    }
    free(g->rcpts);
    g->rcpts = b;
    g->nrcpt_buckets = nb;
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents);

static struct gd_rcpt *rcpt_get(struct gd *g, const char *bare, size_t len)
{
    uint64_t h = mk_hash64(bare, len, 0);
    struct gd_rcpt *r = rcpt_find(g, bare, len, h);
    if (r != NULL)
        return r;
    if (g->nrcpts >= g->nrcpt_buckets)
        rcpt_grow(g);
    r = xcalloc(1, sizeof *r);
    r->gd = g;
    r->bare = xstrndup(bare, len);
    r->hash = h;
    ev_timer_init(&r->retry, on_retry, 0, 0);
    r->retry.data = r;
    r->hnext = g->rcpts[h & (g->nrcpt_buckets - 1)];
    g->rcpts[h & (g->nrcpt_buckets - 1)] = r;
    g->nrcpts++;
    return r;
}

/* --- DONE to the routers -------------------------------------------------------------- */

#define GD_DONE_BATCH 4096u   /* refs per DONE frame */

static void on_done_flush(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct gd *g = w->data;
    (void)revents;
    ev_prepare_stop(loop, w);
    for (size_t i = 0; i < g->ngens; i++) {
        struct gd_router_gen *rg = &g->gens[i];
        if (rg->ndone == 0)
            continue;
        struct rchan_tx *tx = rchan_set_peer(g->routers, rg->router);
        size_t off = 0;
        while (tx != NULL && off < rg->ndone) {
            size_t n = rg->ndone - off < GD_DONE_BATCH ? rg->ndone - off : GD_DONE_BATCH;
            Mk__GdForward f = MK__GD_FORWARD__INIT;
            f.kind = MK__GD_FORWARD_KIND__GD_FORWARD_DONE;
            f.n_done_refs = n;
            f.done_refs = rg->done + off;
            Mk__Envelope e = MK__ENVELOPE__INIT;
            e.payload_case = MK__ENVELOPE__PAYLOAD_GD_FORWARD;
            e.gd_forward = &f;
            /* On the channel, behind the GIVE_UP that may have finished it. Refused (the
             * router far behind): the router keeps its copy and re-sends it to gd's next
             * incarnation at worst, which finishes it again. */
            if (rchan_send(tx, &e) == 0) {
                metric_add(g->m_forwards, "done_unsent", (double)n);
            }
            off += n;
        }
        rg->ndone = 0;
    }
}

void gd_forward_init(struct gd *g)
{
    ev_prepare_init(&g->done_flush, on_done_flush);
    g->done_flush.data = g;
}

/* One holder of tok lets go; the last one tells the router gd is done with it. */
static void tok_release(struct gd *g, struct gd_done_tok *tok)
{
    if (tok == NULL || --tok->holders > 0)
        return;
    if (!g->releasing) {
        struct gd_router_gen *rg = gd_router(g, tok->router);
        if (rg->ndone == rg->done_cap) {
            rg->done_cap = rg->done_cap ? rg->done_cap * 2 : 64;
            rg->done = xrealloc(rg->done, rg->done_cap * sizeof *rg->done);
        }
        rg->done[rg->ndone++] = tok->ref;
        if (!ev_is_active(&g->done_flush))
            ev_prepare_start(g->node->loop, &g->done_flush);
    }
    free(tok);
}

/* --- what is in flight on the link, per peer ------------------------------------------- */

static struct gd_peer_flow *flow_of(struct gd *g, const char *dc)
{
    for (size_t i = 0; i < g->nflows; i++)
        if (strcmp(g->flows[i].dc, dc) == 0)
            return &g->flows[i];
    g->flows = xrealloc(g->flows, (g->nflows + 1) * sizeof *g->flows);
    struct gd_peer_flow *fl = &g->flows[g->nflows++];
    memset(fl, 0, sizeof *fl);
    fl->dc = xstrdup(dc);
    return fl;
}

/* tok waits for the peer's acknowledgement of the message just sent to dc. */
static void flight_add(struct gd *g, const char *dc, struct gd_done_tok *tok)
{
    if (tok == NULL)
        return;
    struct gd_peer_flow *fl = flow_of(g, dc);
    if (fl->out_n == fl->out_cap)
        mk_ring_grow(&fl->out, sizeof *fl->out, &fl->out_cap, &fl->out_head, fl->out_n, 64);
    struct gd_flight *f = &fl->out[(fl->out_head + fl->out_n++) % fl->out_cap];
    f->seq = gd_link_last_seq(g->link, dc);
    f->tok = tok;
    tok->holders++;
}

void gd_forward_link_acked(struct gd *g, const char *peer)
{
    struct gd_peer_flow *fl = flow_of(g, peer);
    uint64_t from = gd_link_unacked_from(g->link, peer);
    while (fl->out_n > 0 && fl->out[fl->out_head].seq < from) {
        struct gd_done_tok *tok = fl->out[fl->out_head].tok;
        fl->out_head = (fl->out_head + 1) % fl->out_cap;
        fl->out_n--;
        tok_release(g, tok);
    }
}

/* A link message handed to a router (tx, seq; tx NULL: refused, nothing to wait for). */
static void landing_add(struct gd *g, const char *dc, const struct gd_link_ticket *t, struct rchan_tx *tx,
                        uint64_t seq)
{
    struct gd_peer_flow *fl = flow_of(g, dc);
    if (fl->in_n == 0 && tx == NULL) {
        gd_link_done(g->link, t);
        return;
    }
    if (fl->in_n == fl->in_cap)
        mk_ring_grow(&fl->in, sizeof *fl->in, &fl->in_cap, &fl->in_head, fl->in_n, 64);
    struct gd_landing *ld = &fl->in[(fl->in_head + fl->in_n++) % fl->in_cap];
    ld->ticket = *t;
    ld->tx = tx;
    ld->seq = seq;
}

void gd_forward_routers_acked(struct gd *g)
{
    for (size_t i = 0; i < g->nflows; i++) {
        struct gd_peer_flow *fl = &g->flows[i];
        /* In arrival order: a link acknowledgement covers every earlier message. */
        while (fl->in_n > 0) {
            struct gd_landing *ld = &fl->in[fl->in_head];
            if (ld->tx != NULL && !rchan_tx_acked(ld->tx, ld->seq))
                break;
            gd_link_done(g->link, &ld->ticket);
            fl->in_head = (fl->in_head + 1) % fl->in_cap;
            fl->in_n--;
        }
    }
}

static void item_free(struct gd *g, struct gd_item *it)
{
    tok_release(g, it->tok);
    env_free(&it->env);
    free(it);
}

static void rcpt_pop(struct gd_rcpt *r)
{
    struct gd_item *it = r->head;
    r->head = it->next;
    if (r->head == NULL)
        r->tail = NULL;
    r->n--;
    r->gd->waiting--;
    item_free(r->gd, it);
}

void gd_forward_reap(struct gd *g)
{
    for (size_t i = 0; i < g->nrcpt_buckets; i++) {
        struct gd_rcpt **pp = &g->rcpts[i];
        while (*pp != NULL) {
            struct gd_rcpt *r = *pp;
            if (r->head == NULL && !r->busy && !r->running && !ev_is_active(&r->retry)) {
                *pp = r->hnext;
                free(r->bare);
                free(r);
                g->nrcpts--;
            } else {
                pp = &r->hnext;
            }
        }
    }
}

void gd_forward_release(struct gd *g)
{
    for (size_t i = 0; i < g->nrcpt_buckets; i++) {
        struct gd_rcpt *r = g->rcpts[i];
        while (r != NULL) {
            struct gd_rcpt *next = r->hnext;
            ev_timer_stop(g->node->loop, &r->retry);
            while (r->head != NULL)
                rcpt_pop(r);
            free(r->bare);
            free(r);
            r = next;
        }
    }
    xfree(&g->rcpts);
    g->nrcpt_buckets = 0;
    g->nrcpts = 0;
    ev_prepare_stop(g->node->loop, &g->done_flush);
    for (size_t i = 0; i < g->nflows; i++) {
        struct gd_peer_flow *fl = &g->flows[i];
        while (fl->out_n > 0) {
            tok_release(g, fl->out[fl->out_head].tok);
            fl->out_head = (fl->out_head + 1) % fl->out_cap;
            fl->out_n--;
        }
        free(fl->out);
        free(fl->in);
        free(fl->dc);
    }
    xfree(&g->flows);
    g->nflows = 0;
}

/* --- to the routers ----------------------------------------------------------------------- */

/* Sends f to the router shard of its recipient on the reliable channel. Returns its
 * number there with *txp its channel, or 0 (counted). */
static uint64_t to_router(struct gd *g, Mk__GdForward *f, struct rchan_tx **txp)
{
    char bare[1024];
    const char *to = f->route->to;
    const char *slash = strchr(to, '/');
    size_t len = slash ? (size_t)(slash - to) : strlen(to);
    if (len >= sizeof bare) {
        metric_inc(g->m_forwards, "dropped_bad_jid");
        return 0;
    }
    memcpy(bare, to, len);
    bare[len] = '\0';
    struct rchan_tx *tx = rchan_set_shard(g->routers, bare);
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_GD_FORWARD;
    e.gd_forward = f;
    uint64_t seq = tx != NULL ? rchan_send(tx, &e) : 0;
    if (seq == 0)
        metric_inc(g->m_forwards, "dropped_router_full");
    if (txp != NULL)
        *txp = tx;
    return seq;
}

/* The stanza cannot reach another data center: the router handles it as with GD off
 * (offline storage if it is a message for an account, else an error with condition). */
static void give_up(struct gd *g, Mk__GdForward *f, const char *condition, const char *why)
{
    Mk__GdForward back = *f;
    back.kind = MK__GD_FORWARD_KIND__GD_FORWARD_GIVE_UP;
    back.condition = (char *)(condition ? condition : "");
    metric_inc(g->m_forwards, why);
    to_router(g, &back, NULL);
}

/* --- routing a stanza ----------------------------------------------------------------------- */

static bool streq(const char *a, const char *b)
{
    return a != NULL && strcmp(a, b) == 0;
}

/* What is worth re-resolving when no data center is found: what would be stored or
 * answered with an error (a message, a subscription, a request). The rest (presence
 * broadcasts, results, errors) would be dropped anyway. */
static bool bounceable(const Mk__Route *r)
{
    const char *type = r->type ? r->type : "";
    switch (r->kind) {
    case MK__STANZA_KIND__STANZA_KIND_MESSAGE:
        return !streq(type, "error");
    case MK__STANZA_KIND__STANZA_KIND_PRESENCE:
        return streq(type, "subscribe") || streq(type, "subscribed") || streq(type, "unsubscribe") ||
               streq(type, "unsubscribed");
    default:
        return streq(type, "get") || streq(type, "set");
    }
}

/* Packs f with kind for the link and sends it to dc. Returns 0 or -1 with errno. */
static int link_send(struct gd *g, const char *dc, Mk__GdForward *f, Mk__GdForwardKind kind,
                     struct gd_done_tok *tok)
{
    Mk__GdForward out = *f;
    out.kind = kind;
    out.router_ref = 0;   /* this data center's router's handle: meaningless over there */
    /* Where it entered GD: kept when it comes back from a DC that had no session for it. */
    if (out.origin_dc == NULL || *out.origin_dc == '\0')
        out.origin_dc = (char *)g->cfg->dc;
    size_t n = mk__gd_forward__get_packed_size(&out);
    uint8_t stack[4096];
    uint8_t *buf = n <= sizeof stack ? stack : xmalloc(n);
    mk__gd_forward__pack(&out, buf);
    struct gd_link_msg m = {
        .origin = NULL,
        .ttl = 0,
        .msg_id = f->msg_id,
        .payload = buf,
        .len = n,
    };
    int rc = gd_link_send(g->link, dc, &m);
    int e = errno;
    if (rc == 0)
        flight_add(g, dc, tok);
    if (buf != stack)
        free(buf);
    errno = e;
    return rc;
}

/* The distinct data centers of locs other than this one, in the order found. */
static size_t other_dcs(struct gd *g, const struct gd_table_loc *locs, size_t n, const char **out, size_t max)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k < max; i++) {
        if (locs[i].dc == NULL || strcmp(locs[i].dc, g->cfg->dc) == 0)
            continue;
        bool seen = false;
        for (size_t j = 0; j < k; j++)
            if (strcmp(out[j], locs[i].dc) == 0)
                seen = true;
        if (!seen)
            out[k++] = locs[i].dc;
    }
    return k;
}

/* No data center for head (yet): re-resolve after bounce_base_ms x 2^bounces while the
 * deadline allows, holding the stanzas behind it; then give it up. */
static void bounce_or_give_up(struct gd_rcpt *r, Mk__GdForward *f)
{
    struct gd *g = r->gd;
    if (!bounceable(f->route)) {
        metric_inc(g->m_forwards, "dropped_no_dc");
        rcpt_pop(r);
        return;
    }
    int64_t now = mk_now_us();
    int64_t deadline = (int64_t)f->entered_us + (int64_t)g->cfg->bounce_deadline_ms * 1000;
    if (now >= deadline) {
        give_up(g, f, NULL, "given_up_no_dc");
        rcpt_pop(r);
        return;
    }
    unsigned shift = f->bounces < 20 ? f->bounces : 20;
    int64_t delay = (int64_t)g->cfg->bounce_base_ms * 1000 << shift;
    if (now + delay > deadline)
        delay = deadline - now;
    f->bounces++;
    metric_inc(g->m_bounces, NULL);
    ev_timer_set(&r->retry, (double)delay / 1e6, 0);
    ev_timer_start(g->node->loop, &r->retry);
}

/* A chat, normal or headline message to a full JID: with no such resource anywhere, RFC
 * 6121 8.5.3.2.1 treats it as sent to the bare JID. */
static bool message_falls_back_to_bare(const Mk__GdForward *f)
{
    const Mk__Route *r = f->route;
    const char *type = r->type ? r->type : "";
    return f->kind == MK__GD_FORWARD_KIND__GD_FORWARD_MISS && r->kind == MK__STANZA_KIND__STANZA_KIND_MESSAGE &&
           strchr(r->to, '/') != NULL && !streq(type, "error") && !streq(type, "groupchat");
}

/* Acts on the lookup of r's head. */
static void resolved(struct gd_rcpt *r, enum gd_table_status st, const struct gd_table_loc *locs, size_t n)
{
    struct gd *g = r->gd;
    struct gd_item *it = r->head;
    Mk__GdForward *f = it->env->gd_forward;
    const char *dcs[16];
    size_t ndcs = st == GD_TABLE_OK ? other_dcs(g, locs, n, dcs, MK_ARRAY_LEN(dcs)) : 0;
    if (st == GD_TABLE_NOT_FOUND && !it->as_bare && message_falls_back_to_bare(f)) {
        it->as_bare = true;   /* rcpt_run looks the bare JID up next */
        return;
    }
    if (it->as_bare && ndcs == 0) {
        it->as_bare = false;  /* a bounce tries the full JID again first */
        if (st == GD_TABLE_OK && n > 0) {
            /* Its resources are all here: the router delivers it as to the bare JID. */
            give_up(g, f, NULL, "given_up_bare_here");
            rcpt_pop(r);
            return;
        }
    }
    if (f->kind == MK__GD_FORWARD_KIND__GD_FORWARD_OTHERS) {
        /* The resources elsewhere, each DC's router delivering to its own; nothing to
         * store or answer here (the sending DC did). */
        for (size_t i = 0; i < ndcs; i++)
            if (link_send(g, dcs[i], f, MK__GD_FORWARD_KIND__GD_FORWARD_INJECT_SESSIONS, it->tok) == 0)
                metric_inc(g->m_forwards, "forwarded_copy");
            else
                metric_inc(g->m_forwards, errno == EAGAIN ? "copy_link_full" : "copy_refused");
        rcpt_pop(r);
        return;
    }
    if (ndcs == 0) {
        bounce_or_give_up(r, f);
        return;
    }
    /* The first DC answers for it (stores it or errors when its session is gone); the
     * others (a bare JID online in several) deliver to their sessions only. */
    if (link_send(g, dcs[0], f, MK__GD_FORWARD_KIND__GD_FORWARD_INJECT, it->tok) == 0) {
        metric_inc(g->m_forwards, "forwarded");
    } else if (errno == EAGAIN) {
        give_up(g, f, "resource-constraint", "given_up_link_full");
    } else {
        char sample[64];
        log_warn("gd_forward_refused", "dc=%s reason=\"%s\"", mk_sanitize(sample, sizeof sample, dcs[0], strlen(dcs[0])),
                 strerror(errno));
        give_up(g, f, NULL, "given_up_link_refused");
    }
    for (size_t i = 1; i < ndcs; i++)
        if (link_send(g, dcs[i], f, MK__GD_FORWARD_KIND__GD_FORWARD_INJECT_SESSIONS, it->tok) == 0)
            metric_inc(g->m_forwards, "forwarded_copy");
    rcpt_pop(r);
}

static void on_lookup(void *arg, enum gd_table_status st, const struct gd_table_loc *locs, size_t n)
{
    struct gd_rcpt *r = arg;
    r->busy = false;
    if (r->head == NULL)
        return;
    resolved(r, st, locs, n);
    if (!r->running)
        rcpt_run(r);
}

/* True when jid's domain is not hosted here: it can only be a component's (there is no
 * server-to-server), looked up by domain; the domain goes to out. */
static bool component_domain(const struct gd *g, const char *jid, char *out, size_t outlen)
{
    const char *at = strchr(jid, '@');
    const char *d = at != NULL ? at + 1 : jid;
    size_t len = strcspn(d, "/");
    if (len == 0 || len >= outlen)
        return false;
    memcpy(out, d, len);
    out[len] = '\0';
    return !cfg_is_local_domain(g->node->cfg, out);
}

/* Handles the queue from its head until it is empty or waits (a lookup in flight, a
 * bounce). A cache hit answers inside gd_table_lookup_jid: the loop goes on then. */
static void rcpt_run(struct gd_rcpt *r)
{
    struct gd *g = r->gd;
    if (r->running)
        return;
    r->running = true;
    while (r->head != NULL && !r->busy && !ev_is_active(&r->retry)) {
        r->busy = true;
        const char *jid = r->head->as_bare ? r->bare : r->head->env->gd_forward->route->to;
        char domain[1024];
        int rc;
        if (component_domain(g, jid, domain, sizeof domain))
            rc = gd_table_lookup_domain(g->table, domain, on_lookup, r);   /* a component's DC */
        else
            rc = gd_table_lookup_jid(g->table, jid, on_lookup, r);
        if (rc == -1) {
            /* Redis unreachable and nothing cached, or not a JID. */
            r->busy = false;
            if (errno == EINVAL) {
                metric_inc(g->m_forwards, "dropped_bad_jid");
                rcpt_pop(r);
            } else {
                resolved(r, GD_TABLE_UNAVAILABLE, NULL, 0);
            }
        }
    }
    r->running = false;
    metric_set(g->m_waiting, NULL, (double)g->waiting);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gd_rcpt *r = w->data;
    (void)loop;
    (void)revents;
    if (r->head != NULL)
        gd_table_cache_forget(r->gd->table, r->head->env->gd_forward->route->to);
    rcpt_run(r);
}

/* --- entry points ------------------------------------------------------------------------- */

/* A tok for f's router_ref (held once, by the caller), or NULL when the router keeps no copy. */
static struct gd_done_tok *tok_new(struct gd *g, const Mk__Envelope *e, const Mk__GdForward *f)
{
    const struct cfg_proc *p = f != NULL && f->router_ref != 0 && e->sender != NULL
                                   ? cfg_find_proc(g->node->cfg, e->sender) : NULL;
    if (p == NULL)
        return NULL;
    struct gd_done_tok *tok = xcalloc(1, sizeof *tok);
    tok->router = p->id;
    tok->ref = f->router_ref;
    tok->holders = 1;
    return tok;
}

void gd_forward_from_router(struct gd *g, Mk__Envelope **envp)
{
    Mk__GdForward *f = (*envp)->gd_forward;
    struct gd_done_tok *tok = tok_new(g, *envp, f);
    if (f == NULL || f->route == NULL || f->route->to == NULL || *f->route->to == '\0') {
        metric_inc(g->m_forwards, "dropped_bad_jid");
        tok_release(g, tok);
        return;
    }
    if (f->kind == MK__GD_FORWARD_KIND__GD_FORWARD_STALE) {
        /* An entry named this DC, and nobody was here: ask Redis again next time (the
         * entry itself expires unless its owner refreshes it). */
        gd_table_cache_forget(g->table, f->route->to);
        metric_inc(g->m_forwards, "stale_reported");
        tok_release(g, tok);
        return;
    }
    if (f->kind != MK__GD_FORWARD_KIND__GD_FORWARD_MISS && f->kind != MK__GD_FORWARD_KIND__GD_FORWARD_OTHERS) {
        metric_inc(g->m_forwards, "dropped_bad_kind");
        tok_release(g, tok);
        return;
    }
    if (f->origin_dc != NULL && *f->origin_dc != '\0')
        /* Back from the DC the table named, which has no session for it: ask Redis. */
        gd_table_cache_forget(g->table, f->route->to);
    if (f->msg_id == 0 || f->entered_us == 0) {
        f->msg_id = ++g->next_msg;
        f->entered_us = (uint64_t)mk_now_us();
    }
    const char *to = f->route->to;
    const char *slash = strchr(to, '/');
    struct gd_rcpt *r = rcpt_get(g, to, slash ? (size_t)(slash - to) : strlen(to));
    struct gd_item *it = xcalloc(1, sizeof *it);
    it->tok = tok;   /* its first holder: the queue item */
    it->env = *envp;
    *envp = NULL;
    if (r->tail != NULL)
        r->tail->next = it;
    else
        r->head = it;
    r->tail = it;
    r->n++;
    g->waiting++;
    rcpt_run(r);
}

void gd_forward_from_link(struct gd *g, const char *from, const char *origin, uint64_t msg_id, const void *payload,
                          size_t len, const struct gd_link_ticket *ticket)
{
    Mk__GdForward *f = mk__gd_forward__unpack(NULL, len, payload);
    if (f == NULL || f->route == NULL || f->route->to == NULL || f->route->from == NULL) {
        metric_inc(g->m_injected, "refused_decode");
        if (f != NULL)
            mk__gd_forward__free_unpacked(f, NULL);
        landing_add(g, from, ticket, NULL, 0);
        return;
    }
    if (f->kind != MK__GD_FORWARD_KIND__GD_FORWARD_INJECT &&
        f->kind != MK__GD_FORWARD_KIND__GD_FORWARD_INJECT_SESSIONS) {
        metric_inc(g->m_injected, "refused_kind");
        mk__gd_forward__free_unpacked(f, NULL);
        landing_add(g, from, ticket, NULL, 0);
        return;
    }
    f->router_ref = 0;
    f->n_done_refs = 0;
    /* Where it entered GD (the sender's DC): as the first gd wrote it, else the link's
     * origin, else the DC that sent it (the link vouches for that one only; peers are
     * trusted data centers). */
    const char *dc = f->origin_dc != NULL && *f->origin_dc != '\0' ? f->origin_dc
                     : origin != NULL && *origin != '\0' ? origin : from;
    char *entered = xstrdup(dc);
    free(f->origin_dc);
    f->origin_dc = entered;
    f->msg_id = msg_id;
    /* The sender is in the DC it came from: a reply goes back before Redis replication
     * has caught up (cache only). */
    if (strchr(f->route->from, '/') != NULL && strcmp(entered, g->cfg->dc) != 0)
        gd_table_cache_origin(g->table, f->route->from, entered, 0);
    metric_inc(g->m_injected, f->kind == MK__GD_FORWARD_KIND__GD_FORWARD_INJECT ? "inject" : "inject_sessions");
    struct rchan_tx *tx = NULL;
    uint64_t seq = to_router(g, f, &tx);
    landing_add(g, from, ticket, seq != 0 ? tx : NULL, seq);
    mk__gd_forward__free_unpacked(f, NULL);
}

void gd_forward_expired(struct gd *g, const char *peer, const void *payload, size_t len)
{
    Mk__GdForward *f = mk__gd_forward__unpack(NULL, len, payload);
    (void)peer;
    if (f == NULL)
        return;
    if (f->route != NULL && f->route->to != NULL && f->kind == MK__GD_FORWARD_KIND__GD_FORWARD_INJECT &&
        bounceable(f->route))
        give_up(g, f, "resource-constraint", "given_up_link_expired");
    else
        metric_inc(g->m_forwards, "dropped_link_expired");
    mk__gd_forward__free_unpacked(f, NULL);
}

void gd_forward_drain(struct gd *g)
{
    for (size_t i = 0; i < g->nrcpt_buckets; i++) {
        for (struct gd_rcpt *r = g->rcpts[i]; r != NULL; r = r->hnext) {
            ev_timer_stop(g->node->loop, &r->retry);
            while (r->head != NULL) {
                Mk__GdForward *f = r->head->env->gd_forward;
                if (f->kind == MK__GD_FORWARD_KIND__GD_FORWARD_MISS && bounceable(f->route))
                    give_up(g, f, NULL, "given_up_stopping");
                else
                    metric_inc(g->m_forwards, "dropped_stopping");
                rcpt_pop(r);
            }
        }
    }
    metric_set(g->m_waiting, NULL, (double)g->waiting);
}
