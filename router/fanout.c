/* router/fanout.c - stanzas from a room to many recipients: one Deliver per c2s (the stanzas once, its target sessions listed), one Fanout per other router shard. */
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "custody.h"
#include "env.h"
#include "jid.h"
#include "metrics.h"
#include "node.h"
#include "router.h"
#include "util.h"

/* JID bytes one envelope lists at most (then another envelope takes the next ones), so
 * that an envelope stays far under the bus's frame limit (at least twice a stanza's size
 * plus 64 KiB) whatever the room's size and its occupants' JIDs. */
#define FANOUT_MAX_JID_BYTES (32u * 1024u)

/* Where some recipients go: a c2s of sessions here, or another router shard. Few per
 * fan-out (one per c2s and per shard): a list searched from its last hit. */
struct fan_group {
    const struct router_c2s *c2s;  /* NULL for a router shard */
    const struct cfg_proc *shard;  /* NULL for a c2s */
    size_t n, cap;
    size_t bytes;                  /* of the JIDs listed */
    uint64_t *ids;                 /* target sessions (c2s) */
    char **jids;                   /* their full JIDs, or the recipients (shard): borrowed */
};

struct fan_plan {
    struct fan_group *g;
    size_t ng, cap;
    size_t last;
};

static struct fan_group *group_of(struct fan_plan *p, const struct router_c2s *c2s, const struct cfg_proc *shard)
{
    if (p->ng > 0 && p->g[p->last].c2s == c2s && p->g[p->last].shard == shard)
        return &p->g[p->last];
    for (size_t i = 0; i < p->ng; i++)
        if (p->g[i].c2s == c2s && p->g[i].shard == shard) {
            p->last = i;
            return &p->g[i];
        }
    if (p->ng == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 4;
        p->g = xrealloc(p->g, p->cap * sizeof *p->g);
    }
    struct fan_group *g = &p->g[p->ng];
    memset(g, 0, sizeof *g);
    g->c2s = c2s;
    g->shard = shard;
    p->last = p->ng++;
    return g;
}

static void group_add(struct fan_group *g, uint64_t id, char *jid)
{
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 8;
        g->ids = xrealloc(g->ids, g->cap * sizeof *g->ids);
        g->jids = xrealloc(g->jids, g->cap * sizeof *g->jids);
    }
    g->ids[g->n] = id;
    g->jids[g->n++] = jid;
    g->bytes += strlen(jid) + 8;
}

/* The session of full JID to on this shard, or NULL (bare_len from its split). */
static const struct router_sess *session_of(const struct router *rt, const char *to, const struct jid_view *v)
{
    const struct router_user *u = sess_table_user(&rt->table, to, v->bare_len);
    for (const struct router_sess *s = u ? u->sessions : NULL; s != NULL; s = s->next)
        if (strcmp(sess_resource(s), v->resource) == 0)
            return s;
    return NULL;
}

/* The one Deliver to g's c2s: the stanzas once, its sessions and their JIDs. */
static void send_deliver(struct router *rt, Mk__Route *const *stanzas, size_t nst, const struct fan_group *g)
{
    Mk__Deliver dl = MK__DELIVER__INIT;
    dl.n_session_ids = g->n;
    dl.session_ids = g->ids;
    dl.n_session_jids = g->n;
    dl.session_jids = g->jids;
    dl.route = stanzas[0];
    dl.n_more = nst - 1;
    dl.more = (Mk__Route **)stanzas + 1;
    /* Messages are kept until the c2s is done with them, as an ordinary Deliver is
     * (router/deliver.c); presence is not. */
    Mk__Route *inline_msgs[8];
    Mk__Route **msgs = nst <= MK_ARRAY_LEN(inline_msgs) ? inline_msgs : xmalloc(nst * sizeof *msgs);
    size_t nmsgs = 0;
    for (size_t j = 0; j < nst; j++)
        if (stanzas[j]->kind == MK__STANZA_KIND__STANZA_KIND_MESSAGE)
            msgs[nmsgs++] = stanzas[j];
    if (nmsgs > 0)
        dl.custody_id = router_custody_keep_fanout(rt->custody, g->c2s->id, msgs, nmsgs, g->jids, (uint32_t)g->n);
    if (msgs != inline_msgs)
        free(msgs);
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_DELIVER;
    e.deliver = &dl;
    if (node_send(rt->node, g->c2s->id, &e) == 0) {
        for (size_t j = 0; j < nst; j++)
            metric_add(rt->m_delivered, route_kind_name(stanzas[j]->kind), (double)g->n);
        metric_inc(rt->m_fanout_envelopes, "deliver");
    } else {
        metric_inc(rt->m_dropped, "c2s_unreachable");
        for (size_t k = 0; k < g->n && dl.custody_id != 0; k++)
            router_custody_done(rt->custody, g->c2s->id, &dl.custody_id, 1);
    }
}

/* The recipients another shard owns: one Fanout there (a plain send, as the Routes it
 * replaces were). */
static void send_fanout(struct router *rt, Mk__Route *const *stanzas, size_t nst, const struct fan_group *g)
{
    Mk__Fanout f = MK__FANOUT__INIT;
    f.n_stanzas = nst;
    f.stanzas = (Mk__Route **)stanzas;
    f.n_to = g->n;
    f.to = g->jids;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_FANOUT;
    e.fanout = &f;
    if (node_send(rt->node, g->shard->id, &e) == 0)
        metric_inc(rt->m_fanout_envelopes, "fanout");
    else
        metric_add(rt->m_dropped, "muc_router_unreachable", (double)(g->n * nst));
}

/* Sends what g holds (a Deliver, or a Fanout to its shard) and empties it. */
static void flush_group(struct router *rt, Mk__Route *const *stanzas, size_t nst, struct fan_group *g)
{
    if (g->n == 0)
        return;
    if (g->shard != NULL) {
        send_fanout(rt, stanzas, nst, g);
    } else {
        send_deliver(rt, stanzas, nst, g);
        /* Delivered events, as router_route makes for each copy (when a domain wants them). */
        for (size_t j = 0; j < nst && rt->pushev != NULL; j++) {
            if (stanzas[j]->kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE)
                continue;
            for (size_t i = 0; i < g->n; i++) {
                Mk__Route one = *stanzas[j];
                one.to = g->jids[i];
                one.to_at = 0;
                const struct router_sess *s = sess_table_find(&rt->table, g->jids[i]);
                router_push_delivered(rt, &one, s == NULL || !(s->available && s->priority >= 0));
            }
        }
    }
    g->n = 0;
    g->bytes = 0;
}

void router_fanout(struct router *rt, Mk__Route *const *stanzas, size_t nst, char *const *to, size_t nto,
                   bool from_shard)
{
    if (nst == 0 || nto == 0)
        return;
    for (size_t j = 0; j < nst; j++)
        if (stanzas[j] == NULL || stanzas[j]->to_at == 0 || stanzas[j]->to_at > stanzas[j]->xml.len ||
            stanzas[j]->xml.data == NULL) {
            metric_inc(rt->m_dropped, "fanout_malformed");
            return;
        }
    int64_t t0 = mk_mono_us();
    const struct cfg *cfg = rt->node->cfg;
    /* Past the hop limit every copy is dropped by router_route, counted there. */
    bool hops_ok = stanzas[0]->hops <= ROUTER_MAX_HOPS;
    struct fan_plan plan = {0};
    size_t *others = NULL;         /* recipients routed one stanza at a time */
    size_t nothers = 0;
    size_t here = 0;               /* copies delivered from here */
    for (size_t i = 0; i < nto; i++) {
        struct jid_view v;
        const struct router_sess *s = NULL;
        if (to[i] != NULL && router_jid_split(to[i], &v) == 0) {
            const struct cfg_proc *p = cfg_shard_n(cfg, CFG_ROLE_ROUTER, to[i], v.bare_len);
            if (p != NULL && p != rt->node->self && !from_shard) {
                struct fan_group *g = group_of(&plan, NULL, p);
                group_add(g, 0, to[i]);
                if (g->bytes >= FANOUT_MAX_JID_BYTES)
                    flush_group(rt, stanzas, nst, g);
                continue;
            }
            /* From another shard, a recipient it says this shard owns is served here
             * whatever this shard thinks (configurations that differ for a moment): it
             * is never sent back, so a fan-out cannot go round between shards. */
            char dom[JID_PART_MAX + 1];
            if (hops_ok && v.has_local && v.resource != NULL && v.domain_len <= JID_PART_MAX) {
                memcpy(dom, to[i] + v.domain_off, v.domain_len);
                dom[v.domain_len] = '\0';
                if (cfg_is_local_domain(cfg, dom))
                    s = session_of(rt, to[i], &v);
            }
        }
        if (s == NULL) {
            /* No session of that full JID here (gone, a component, another server, gd):
             * routed as before, which bounces, drops or forwards it by the usual rules. */
            if (nothers % 64 == 0)
                others = xrealloc(others, (nothers + 64) * sizeof *others);
            others[nothers++] = i;
            continue;
        }
        struct fan_group *g = group_of(&plan, s->c2s, NULL);
        group_add(g, s->session_id, to[i]);
        here++;
        if (g->bytes >= FANOUT_MAX_JID_BYTES)
            flush_group(rt, stanzas, nst, g);
    }
    for (size_t j = 0; j < nst && here > 0; j++)
        metric_add(rt->m_routed, route_kind_name(stanzas[j]->kind), (double)here);
    for (size_t k = 0; k < plan.ng; k++)
        flush_group(rt, stanzas, nst, &plan.g[k]);
    if (here > 0)
        metric_observe(rt->m_route_seconds, NULL, (double)(mk_mono_us() - t0) / 1e6);
    struct buf xml;
    buf_init(&xml);
    for (size_t k = 0; k < nothers; k++)
        for (size_t j = 0; j < nst; j++) {
            Mk__Route whole;
            if (env_route_fill(stanzas[j], to[others[k]], &xml, &whole) == 0) {
                router_route(rt, &whole, NULL, ROUTER_FROM_LOCAL, NULL);
                metric_inc(rt->m_fanout_envelopes, "routed_alone");
            }
        }
    buf_release(&xml);
    free(others);
    for (size_t k = 0; k < plan.ng; k++) {
        free(plan.g[k].ids);
        free(plan.g[k].jids);
    }
    free(plan.g);
}
