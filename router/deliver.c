/* router/deliver.c - carries out routing decisions: Deliver to the owning c2s, offline writes to mam, errors back. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "env.h"
#include "jid.h"
#include "log.h"
#include "mamid.h"
#include "metrics.h"
#include "node.h"
#include "push_emit.h"
#include "rchan.h"
#include "rchan_set.h"
#include "archive.h"
#include "custody.h"
#include "muc.h"
#include "router.h"
#include "util.h"

static bool domain_is_local(void *ud, const char *domain, size_t len)
{
    struct router *rt = ud;
    char d[JID_PART_MAX + 1];
    if (len > JID_PART_MAX)
        return false;
    memcpy(d, domain, len);
    d[len] = '\0';
    return cfg_is_local_domain(rt->node->cfg, d);
}

void router_send_close(struct router *rt, const struct router_sess *s, const char *reason)
{
    Mk__SessionClose sc = MK__SESSION_CLOSE__INIT;
    sc.jid = s->full;
    sc.c2s = s->c2s->id;
    sc.session_id = s->session_id;
    sc.reason = (char *)reason;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_CLOSE;
    e.session_close = &sc;
    metric_inc(rt->m_evicted, reason);
    char jid[256];
    log_info("session_evicted", "jid=\"%s\" c2s=%s session=%llu reason=%s",
             mk_sanitize(jid, sizeof jid, s->full, strlen(s->full)), s->c2s->id, (unsigned long long)s->session_id,
             reason);
    node_send(rt->node, s->c2s->id, &e);
}

/* One Deliver per owning c2s, listing its target sessions. A message (keep) is also
 * kept in the custody table until that c2s reports each target session done with it. */
static void deliver(struct router *rt, const Mk__Route *r, const struct route_decision *d, uint64_t archive_id,
                    Mk__MamFence *fence, bool keep)
{
    uint64_t inline_ids[ROUTE_INLINE_TARGETS];
    uint64_t *ids = d->ntargets <= ROUTE_INLINE_TARGETS ? inline_ids : xmalloc(d->ntargets * sizeof *ids);
    bool inline_done[ROUTE_INLINE_TARGETS];
    bool *done = d->ntargets <= ROUTE_INLINE_TARGETS ? inline_done : xmalloc(d->ntargets * sizeof *done);
    memset(done, 0, d->ntargets * sizeof *done);
    const char *kind = route_kind_name(r->kind);
    for (size_t i = 0; i < d->ntargets; i++) {
        if (done[i])
            continue;
        const struct router_c2s *c = d->targets[i]->c2s;
        size_t n = 0;
        for (size_t j = i; j < d->ntargets; j++)
            if (!done[j] && d->targets[j]->c2s == c) {
                ids[n++] = d->targets[j]->session_id;
                done[j] = true;
            }
        Mk__Deliver dl = MK__DELIVER__INIT;
        dl.n_session_ids = n;
        dl.session_ids = ids;
        dl.route = (Mk__Route *)r;
        dl.archive_id = archive_id;
        dl.archive_fence = fence;
        if (keep)
            dl.custody_id = router_custody_keep(rt->custody, c->id, r, archive_id, (uint32_t)n);
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_DELIVER;
        e.deliver = &dl;
        if (node_send(rt->node, c->id, &e) == 0) {
            metric_add(rt->m_delivered, kind, (double)n);
        } else {
            metric_inc(rt->m_dropped, "c2s_unreachable");
            for (size_t k = 0; k < n && dl.custody_id != 0; k++)
                router_custody_done(rt->custody, c->id, &dl.custody_id, 1);
        }
    }
    if (ids != inline_ids)
        free(ids);
    if (done != inline_done)
        free(done);
}

/* A delivered or stored event for the recipient of message r, when its domain wants that
 * kind. The body comes with the Route (c2s sets Route.body when such events are wanted):
 * the XML is not parsed again here. */
static void emit_push(struct router *rt, const Mk__Route *r, Mk__PushEventKind kind, bool unavailable,
                      uint64_t archive_id)
{
    if (rt->pushev == NULL || r->kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE ||
        (r->type != NULL && strcmp(r->type, "error") == 0))
        return;
    struct jid_view to;
    if (router_jid_split(r->to, &to) == -1 || !to.has_local ||
        !(push_emit_kinds(rt->pushev, r->to + to.domain_off, to.domain_len) & CFG_PUSH_BIT(kind)))
        return;
    /* The bare JID on the stack (a JID is at most 3071 bytes); xstrndup only past that. */
    char user_buf[512];
    char *user = to.bare_len < sizeof user_buf ? user_buf : xstrndup(r->to, to.bare_len);
    if (user == user_buf) {
        memcpy(user_buf, r->to, to.bare_len);
        user_buf[to.bare_len] = '\0';
    }
    const char *body = r->has_body && r->body != NULL && r->body[0] != '\0' ? r->body : NULL;
    Mk__PushEvent ev = MK__PUSH_EVENT__INIT;
    ev.kind = kind;
    ev.user = user;
    ev.from = r->from ? r->from : (char *)"";
    ev.to = r->to;
    ev.type = r->type ? r->type : (char *)"";
    ev.body = (char *)(body ? body : "");
    ev.has_body = body != NULL;
    ev.unavailable = unavailable;
    ev.mam_id = archive_id;
    push_emit_send(rt->pushev, &ev);
    if (user != user_buf)
        free(user);
}

void router_push_delivered(struct router *rt, const Mk__Route *r, bool unavailable)
{
    emit_push(rt, r, MK__PUSH_EVENT_KIND__PUSH_EVENT_DELIVERED, unavailable, 0);
}

/* True when no target is an available session of priority >= 0 (XEP-0357 publishes then). */
static bool no_available_target(const struct route_decision *d)
{
    for (size_t i = 0; i < d->ntargets; i++)
        if (d->targets[i]->available && d->targets[i]->priority >= 0)
            return false;
    return true;
}

/* Sends r back to its sender as an error of (type, condition). */
static void bounce(struct router *rt, const Mk__Route *r, const char *error_type, const char *condition)
{
    if (r->type != NULL && strcmp(r->type, "error") == 0)
        return;   /* never answer an error with an error */
    struct jid_view from;
    if (router_jid_split(r->from, &from) == -1)
        return;
    metric_inc(rt->m_errors, condition);
    struct buf xml;
    buf_init(&xml);
    route_error_xml(&xml, r->kind, r->to, r->from, r->id, error_type, condition);
    Mk__Route er = MK__ROUTE__INIT;
    er.kind = r->kind;
    er.from = r->to ? r->to : (char *)"";
    er.to = r->from;
    er.type = (char *)"error";
    er.id = r->id ? r->id : (char *)"";
    er.xml.data = (uint8_t *)xml.data;
    er.xml.len = xml.len;
    er.hops = r->hops + 1;
    char *bare = xstrndup(r->from, from.bare_len);
    const struct cfg_proc *p = cfg_shard(rt->node->cfg, CFG_ROLE_ROUTER, bare);
    char sample[256];
    log_debug("route_bounced", "to=\"%s\" condition=%s shard=%s", mk_sanitize(sample, sizeof sample, bare, strlen(bare)),
              condition, p ? p->id : "self");
    if (p == NULL || p == rt->node->self) {
        router_on_route(rt, &er, NULL);   /* type error: cannot bounce again */
    } else {
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
        e.route = &er;
        node_send(rt->node, p->id, &e);
    }
    free(bare);
    buf_release(&xml);
}

/* Hands a message for an unavailable user to the mam shard of the user, on the
 * reliable channel; marks gets the write. */
static void store_offline(struct router *rt, const Mk__Route *r, struct route_marks *marks, uint64_t archive_id)
{
    struct jid_view to, from;
    if (router_jid_split(r->to, &to) == -1 || router_jid_split(r->from, &from) == -1)
        return;
    char *owner = xstrndup(r->to, to.bare_len);
    char *peer = xstrndup(r->from, from.bare_len);
    struct rchan_tx *tx = rchan_set_shard(rt->offline, owner);
    Mk__ArchiveWrite aw = MK__ARCHIVE_WRITE__INIT;
    aw.owner = owner;
    aw.peer = peer;
    aw.peer_resource = (char *)(from.resource ? from.resource : "");
    aw.offline = true;
    aw.xml = r->xml;
    aw.stamp_us = (uint64_t)mk_now_us();
    /* The offline row's id, when the c2s gave one: stored once however often the Route
     * is re-sent (0: the mam shard makes one). */
    aw.mam_id = r->mam_id;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ARCHIVE;
    e.archive = &aw;
    uint64_t seq = 0;
    if (tx == NULL) {
        char sample[256];
        log_warn("offline_no_mam", "owner=\"%s\"", mk_sanitize(sample, sizeof sample, owner, strlen(owner)));
        bounce(rt, r, "cancel", "service-unavailable");
    } else if ((seq = rchan_send(tx, &e)) == 0) {
        /* Too many unacknowledged at the mam: tell the sender rather than lose it quietly. */
        bounce(rt, r, "wait", "resource-constraint");
    } else {
        metric_inc(rt->m_offline, NULL);
        emit_push(rt, r, MK__PUSH_EVENT_KIND__PUSH_EVENT_STORED, true, archive_id);
        if (marks != NULL && marks->n < MK_ARRAY_LEN(marks->tx)) {
            marks->tx[marks->n] = tx;
            marks->seq[marks->n++] = seq;
        }
    }
    free(owner);
    free(peer);
}

/* A reply (result or error) to a pusher's publish IQ: to a hosted domain's own JID, with
 * an id naming a configured pusher. That pusher gets the Route as it is (a plain send:
 * if it is lost, the pusher's timeout retries the publish). Why the id and not a
 * resource on the domain JID: the IQ's from stays exactly the domain JID, which app
 * servers grant publish rights to. True when sent there. */
static bool reply_to_pusher(struct router *rt, const Mk__Route *r)
{
    static const size_t plen = sizeof ROUTER_PUSH_IQ_PREFIX - 1;
    if (r->kind != MK__STANZA_KIND__STANZA_KIND_IQ || r->id == NULL ||
        strncmp(r->id, ROUTER_PUSH_IQ_PREFIX, plen) != 0 || r->type == NULL ||
        (strcmp(r->type, "result") != 0 && strcmp(r->type, "error") != 0) || r->to == NULL ||
        strpbrk(r->to, "@/") != NULL || !cfg_is_local_domain(rt->node->cfg, r->to))
        return false;
    const char *id = r->id + plen;
    const char *dash = strchr(id, '-');
    char proc[64];
    if (dash == NULL || (size_t)(dash - id) >= sizeof proc)
        return false;
    memcpy(proc, id, (size_t)(dash - id));
    proc[dash - id] = '\0';
    const struct cfg_proc *p = cfg_find_proc(rt->node->cfg, proc);
    if (p == NULL || p->role != CFG_ROLE_PUSHER)
        return false;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
    e.route = (Mk__Route *)r;
    if (node_send(rt->node, p->id, &e) == -1)
        metric_inc(rt->m_dropped, "pusher_unreachable");
    return true;
}

/* True for what a bare JID's resources in other data centers also get: a message
 * (not groupchat, not an error) or a presence. */
static bool goes_to_every_dc(const Mk__Route *r)
{
    const char *type = r->type ? r->type : "";
    if (r->kind == MK__STANZA_KIND__STANZA_KIND_PRESENCE)
        return true;
    return r->kind == MK__STANZA_KIND__STANZA_KIND_MESSAGE && strcmp(type, "groupchat") != 0 &&
           strcmp(type, "error") != 0;
}

/* For a Route our previous incarnation held for gd (marks->replay), to a bare JID with
 * sessions here: true when it was an OTHERS copy then, i.e. some session here is older
 * than the message (its MAM id, made by the sender's c2s, is its time). Without one
 * (presence, MAM off) the sessions here are taken to have been here. */
static bool others_then(const struct router *rt, const Mk__Route *r)
{
    struct jid_view to;
    if (r->kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE || r->mam_id == 0 || router_jid_split(r->to, &to) == -1)
        return true;
    const struct router_user *u = sess_table_user(&rt->table, r->to, to.bare_len);
    for (const struct router_sess *s = u != NULL ? u->sessions : NULL; s != NULL; s = s->next)
        if (s->login_us <= mamid_us(r->mam_id))
            return true;
    return false;
}

/* Global distribution's part of the decision (gd on). Returns true when r is done
 * (handed to gd, or dropped). */
static bool route_gd(struct router *rt, const Mk__Route *r, struct route_marks *marks, enum router_from from,
                     const Mk__GdForward *via)
{
    bool bare = false;
    int here = router_gd_lookup_here(rt, r, &bare);
    if (here == -1 || from == ROUTER_FROM_GD_GIVE_UP)
        return false;
    if (marks != NULL && marks->replay && here == 1) {
        /* Held by our previous incarnation until gd was done with it: whatever was to be
         * done here was done (delivered to the sessions here, archived), so it goes to gd
         * again only, as the same kind (the same msg id: the data center that has it
         * drops it). A bare JID's copy for the other data centers stays one; anything
         * else was a MISS (the recipient logged in here since): gd finds it, or gives it
         * back to be handled here. */
        bool others = bare && goes_to_every_dc(r) && others_then(rt, r);
        if (router_gd_send(rt->gd, others ? MK__GD_FORWARD_KIND__GD_FORWARD_OTHERS : MK__GD_FORWARD_KIND__GD_FORWARD_MISS,
                           r, marks) == 0)
            return true;
        return others;   /* refused (counted): an OTHERS copy is lost, a MISS handled here */
    }
    if (here == 0) {
        switch (from) {
        case ROUTER_FROM_LOCAL:
            /* Another data center may have the session: gd finds it, or gives it back. */
            if (router_gd_send(rt->gd, MK__GD_FORWARD_KIND__GD_FORWARD_MISS, r, marks) == 0)
                return true;
            return false;   /* gd's channel is full: handled here, as with GD off */
        case ROUTER_FROM_GD_SESSIONS:
            metric_inc(rt->m_dropped, "gd_copy_no_session");
            return true;
        default:
            /* The table sent it here, and nobody is here: the user moved on (or logged out)
             * while it travelled. gd re-resolves it with one hop less (it never forwards to
             * its own DC, and the hops and the bounce deadline bound the trips); with no
             * hop left it is handled here, and the mapping reported stale. */
            if (via != NULL && router_gd_resend(rt->gd, via) == 0)
                return true;
            router_gd_send(rt->gd, MK__GD_FORWARD_KIND__GD_FORWARD_STALE, r, NULL);
            return false;
        }
    }
    if (bare && from == ROUTER_FROM_LOCAL && goes_to_every_dc(r))
        router_gd_send(rt->gd, MK__GD_FORWARD_KIND__GD_FORWARD_OTHERS, r, marks);
    return false;
}

/* After a reload added a router shard (rt->resharded): a Route for a user with no
 * session here whose bare JID another shard owns now goes there, as it is but for one
 * hop more (a c2s that has not read the file yet, or one in flight). It is applied here
 * first, so it is forwarded in the order it came, ahead of the c2s's HandoverFence that
 * this shard passes on behind it (c2s/handover.c). Only a miss is hashed: a
 * user with sessions here is this shard's. True when forwarded (or dropped at the hop
 * limit). */
static bool forward_not_owned(struct router *rt, const Mk__Route *r)
{
    struct jid_view to;
    if (r->to == NULL || router_jid_split(r->to, &to) == -1 || !to.has_local ||
        sess_table_user(&rt->table, r->to, to.bare_len) != NULL)
        return false;
    const struct cfg_proc *p = cfg_shard_n(rt->node->cfg, CFG_ROLE_ROUTER, r->to, to.bare_len);
    if (p == NULL || p == rt->node->self)
        return false;
    if (r->hops >= ROUTER_MAX_HOPS) {
        metric_inc(rt->m_dropped, "handover_hops");
        return true;
    }
    Mk__Route copy = *r;
    copy.hops = r->hops + 1;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
    e.route = &copy;
    if (node_send(rt->node, p->id, &e) == 0)
        metric_inc(rt->m_handover, "route_forwarded");
    else
        metric_inc(rt->m_dropped, "handover_unreachable");
    return true;
}

void router_on_route(struct router *rt, const Mk__Route *r, struct route_marks *marks)
{
    router_route(rt, r, marks, ROUTER_FROM_LOCAL, NULL);
}

void router_route(struct router *rt, const Mk__Route *r, struct route_marks *marks, enum router_from from,
                  const Mk__GdForward *via)
{
    const char *condition = via != NULL ? via->condition : NULL;
    int64_t t0 = mk_mono_us();
    const char *kind = route_kind_name(r->kind);
    metric_inc(rt->m_routed, kind);
    if (reply_to_pusher(rt, r))
        return;
    /* To a MUC service or room: its room on this shard handles it whole. */
    if (rt->muc != NULL && router_muc_route(rt->muc, r)) {
        metric_observe(rt->m_route_seconds, NULL, (double)(mk_mono_us() - t0) / 1e6);
        return;
    }
    /* Before the carbons: the new owner makes the sender's copies too, once. (A
     * carbon_sent_only copy is addressed to the sender's shard, not to its to's.) */
    if (rt->resharded && from == ROUTER_FROM_LOCAL && !r->carbon_sent_only && forward_not_owned(rt, r)) {
        metric_observe(rt->m_route_seconds, NULL, (double)(mk_mono_us() - t0) / 1e6);
        return;
    }
    /* (A replay's sent copies were made by the incarnation that held it.) */
    if ((r->carbon_sent || r->carbon_sent_only) && (marks == NULL || !marks->replay) &&
        router_carbons_sent(rt, r, from))
        return;
    if (rt->gd != NULL && route_gd(rt, r, marks, from, via)) {
        metric_observe(rt->m_route_seconds, NULL, (double)(mk_mono_us() - t0) / 1e6);
        return;
    }
    struct route_decision d;
    route_decide(&rt->table, r, domain_is_local, rt, &d);
    if (from == ROUTER_FROM_GD_SESSIONS && d.action != ROUTE_ACTION_DELIVER) {
        /* The origin data center stores or answers it: here only sessions take it. */
        route_decision_release(&d);
        metric_inc(rt->m_dropped, "gd_copy_no_session");
        return;
    }
    if (d.action == ROUTE_ACTION_ERROR && condition != NULL && *condition != '\0') {
        d.error_type = "wait";
        d.condition = condition;
    }
    /* A message that will reach the recipient (now or at its next login) goes into the
     * recipient's archive first, and carries the archive id as its stanza-id. */
    Mk__Route archived;
    struct buf xml;
    buf_init(&xml);
    uint64_t archive_id = 0;
    struct rchan_tx *wtx = NULL;
    uint64_t wseq = 0;
    if (d.action == ROUTE_ACTION_DELIVER || d.action == ROUTE_ACTION_OFFLINE)
        router_archive_incoming(rt->archive, r, &xml, &archive_id, &wtx, &wseq);
    if (wtx != NULL && marks != NULL) {
        marks->tx[marks->n] = wtx;
        marks->seq[marks->n++] = wseq;
    }
    if (xml.len > 0) {
        /* Archived with our stanza-id, or a forged one removed. */
        archived = *r;
        archived.xml.data = (uint8_t *)xml.data;
        archived.xml.len = xml.len;
        r = &archived;
    }
    /* Where the write stands on its channel: the recipient's sessions hand it back with
     * their next MAM query (read-your-writes). */
    Mk__MamFence fence;
    Mk__MamFence *fencep = NULL;
    if (wtx != NULL) {
        router_archive_fence(rt->archive, wtx, wseq, &fence);
        fencep = &fence;
    }
    switch (d.action) {
    case ROUTE_ACTION_DELIVER:
        deliver(rt, r, &d, archive_id, fencep, r->kind == MK__STANZA_KIND__STANZA_KIND_MESSAGE);
        if (r->carbon_eligible)
            router_carbons_received(rt, r, &d, fencep);
        emit_push(rt, r, MK__PUSH_EVENT_KIND__PUSH_EVENT_DELIVERED, no_available_target(&d), archive_id);
        break;
    case ROUTE_ACTION_COMPONENT:
        deliver(rt, r, &d, 0, NULL, false);
        break;
    case ROUTE_ACTION_OFFLINE:
        store_offline(rt, r, marks, archive_id);
        break;
    case ROUTE_ACTION_ERROR:
        bounce(rt, r, d.error_type, d.condition);
        break;
    case ROUTE_ACTION_DROP:
        metric_inc(rt->m_dropped, d.reason);
        log_debug("route_dropped", "kind=%s reason=%s", kind, d.reason);
        break;
    }
    route_decision_release(&d);
    buf_release(&xml);
    metric_observe(rt->m_route_seconds, NULL, (double)(mk_mono_us() - t0) / 1e6);
}
