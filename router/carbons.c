/* router/carbons.c - XEP-0280 carbon copies: the received and sent copies of a message for the user's other carbons-enabled sessions, as Delivers to their c2s. */
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "router.h"
#include "util.h"

/* One Deliver with carbon = kind per c2s owning some of v[0, n). */
static void send_copies(struct router *rt, const Mk__Route *r, const struct router_sess **v, size_t n,
                        Mk__CarbonCopy kind, Mk__MamFence *fence)
{
    uint64_t inline_ids[ROUTE_INLINE_TARGETS];
    uint64_t *ids = n <= ROUTE_INLINE_TARGETS ? inline_ids : xmalloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++) {
        if (v[i] == NULL)
            continue;
        const struct router_c2s *c = v[i]->c2s;
        size_t k = 0;
        for (size_t j = i; j < n; j++)
            if (v[j] != NULL && v[j]->c2s == c) {
                ids[k++] = v[j]->session_id;
                v[j] = NULL;
            }
        Mk__Deliver dl = MK__DELIVER__INIT;
        dl.n_session_ids = k;
        dl.session_ids = ids;
        dl.route = (Mk__Route *)r;
        dl.carbon = kind;
        dl.archive_fence = fence;
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_DELIVER;
        e.deliver = &dl;
        if (node_send(rt->node, c->id, &e) == 0)
            metric_add(rt->m_delivered, "carbon", (double)k);
        else
            metric_inc(rt->m_dropped, "c2s_unreachable");
    }
    if (ids != inline_ids)
        free(ids);
}

/* The carbons-enabled sessions of u but skip (a full JID, may be NULL) and d's targets
 * (d may be NULL), into *v (inline when few; the caller frees *v when it is not inline). */
static size_t pick(const struct router_user *u, const char *skip, const struct route_decision *d,
                   const struct router_sess **inl, const struct router_sess ***v)
{
    *v = u->nsessions <= ROUTE_INLINE_TARGETS ? inl : xmalloc(u->nsessions * sizeof **v);
    size_t n = 0;
    for (const struct router_sess *s = u->sessions; s != NULL; s = s->next) {
        if (!s->carbons || (skip != NULL && strcmp(s->full, skip) == 0))
            continue;
        bool target = false;
        for (size_t i = 0; d != NULL && i < d->ntargets && !target; i++)
            target = d->targets[i] == s;
        if (!target)
            (*v)[n++] = s;
    }
    return n;
}

void router_carbons_received(struct router *rt, const Mk__Route *r, const struct route_decision *d,
                             Mk__MamFence *fence)
{
    struct jid_view to, from;
    if (r->kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE || router_jid_split(r->to, &to) == -1 || !to.has_local)
        return;
    const struct router_user *u = sess_table_user(&rt->table, r->to, to.bare_len);
    if (u == NULL || u->nsessions < 2)
        return;   /* the one session got the message itself */
    /* A message to oneself: the sending session has it already (and gets no copy). */
    const char *skip = router_jid_split(r->from, &from) == 0 && from.bare_len == to.bare_len &&
                               memcmp(r->from, r->to, to.bare_len) == 0
                           ? r->from
                           : NULL;
    const struct router_sess *inl[ROUTE_INLINE_TARGETS], **v;
    size_t n = pick(u, skip, d, inl, &v);
    if (n > 0)
        send_copies(rt, r, v, n, MK__CARBON_COPY__CARBON_COPY_RECEIVED, fence);
    if (v != inl)
        free(v);
}

void router_carbons_hints(struct router *rt, const char *full)
{
    struct jid_view v;
    if (full == NULL || router_jid_split(full, &v) == -1 || !v.has_local)
        return;
    struct router_user *u = sess_table_user(&rt->table, full, v.bare_len);
    if (u == NULL)
        return;
    size_t ncarbons = 0;
    for (const struct router_sess *s = u->sessions; s != NULL; s = s->next)
        ncarbons += s->carbons;
    for (struct router_sess *s = u->sessions; s != NULL; s = s->next) {
        bool others = ncarbons - (s->carbons ? 1 : 0) > 0;
        unsigned char want = others ? 2 : 1;
        if (s->carbons_hint == want || s->c2s == NULL)
            continue;
        Mk__CarbonsHint h = MK__CARBONS_HINT__INIT;
        h.session_id = s->session_id;
        h.others = others;
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_CARBONS_HINT;
        e.carbons_hint = &h;
        if (node_send(rt->node, s->c2s->id, &e) == 0)
            s->carbons_hint = want;
    }
}

bool router_carbons_sent(struct router *rt, const Mk__Route *r, enum router_from from)
{
    struct jid_view f;
    if (from != ROUTER_FROM_LOCAL || r->kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE ||
        router_jid_split(r->from, &f) == -1 || !f.has_local || f.resource == NULL)
        return r->carbon_sent_only;
    const struct cfg_proc *p = cfg_shard_n(rt->node->cfg, CFG_ROLE_ROUTER, r->from, f.bare_len);
    if (p == NULL || p == rt->node->self) {
        const struct router_user *u = sess_table_user(&rt->table, r->from, f.bare_len);
        if (u != NULL && u->nsessions > 1) {
            const struct router_sess *inl[ROUTE_INLINE_TARGETS], **v;
            size_t n = pick(u, r->from, NULL, inl, &v);
            if (n > 0)
                send_copies(rt, r, v, n, MK__CARBON_COPY__CARBON_COPY_SENT, NULL);
            if (v != inl)
                free(v);
        }
    } else if (!r->carbon_sent_only) {
        /* The sender's sessions are known to another shard: it makes the copies. The body
         * text (for push events) is not needed there. */
        Mk__Route c = *r;
        c.carbon_eligible = false;
        c.carbon_sent = false;
        c.carbon_sent_only = true;
        c.body = (char *)"";
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
        e.route = &c;
        if (node_send(rt->node, p->id, &e) == -1)
            metric_inc(rt->m_dropped, "carbon_shard_unreachable");
    }
    return r->carbon_sent_only;
}
