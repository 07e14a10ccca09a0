/* router/main.c - meerkat-router: session registry and stanza routing of one shard. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "coalesce.h"
#include "env.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "archive.h"
#include "custody.h"
#include "intake.h"
#include "muc.h"
#include "offline_fence.h"
#include "push_emit.h"
#include "rchan.h"
#include "rchan_set.h"
#include "router.h"
#include "util.h"

static const double route_buckets[] = {1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2};

static void on_evict(void *ud, const struct router_sess *s, const char *reason)
{
    struct router *rt = ud;
    router_send_close(rt, s, reason);
    router_gd_session_close(rt->gd, s);
}

/* True when id is a configured c2s process: sessions of anything else cannot be served. */
static bool is_c2s(const struct router *rt, const char *id)
{
    const struct cfg_proc *p = id ? cfg_find_proc(rt->node->cfg, id) : NULL;
    return p != NULL && p->role == CFG_ROLE_C2S;
}

/* A login's bind result waits for this answer (proto SessionOpen.confirm): sent after the
 * open is applied, so every Route that reaches this shard later finds the session. */
static void confirm_open(struct router *rt, const char *c2s, const Mk__SessionOpen *so)
{
    Mk__SessionConfirmed sc = MK__SESSION_CONFIRMED__INIT;
    sc.jid = so->jid;
    sc.session_id = so->session_id;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_CONFIRMED;
    e.session_confirmed = &sc;
    node_send(rt->node, c2s, &e);
}

/* True when rendezvous hashing over the router shards gives jid's bare JID to this shard
 * (or jid is not a JID). */
static bool router_owns(const struct router *rt, const char *jid)
{
    struct jid_view v;
    if (jid == NULL || router_jid_split(jid, &v) == -1)
        return true;
    const struct cfg_proc *p = cfg_shard_n(rt->node->cfg, CFG_ROLE_ROUTER, jid, v.bare_len);
    return p == NULL || p == rt->node->self;
}

static void session_open(struct router *rt, const char *sender, const Mk__SessionOpen *so)
{
    const char *c2s = so->c2s != NULL && *so->c2s != '\0' ? so->c2s : sender;
    if (!is_c2s(rt, c2s)) {
        metric_inc(rt->m_envelopes_ignored, "session_open_bad_c2s");
        return;
    }
    struct sess_info in = {
        .full = so->jid,
        .c2s = c2s,
        .session_id = so->session_id,
        .priority = so->priority,
        .available = so->available,
        .interested = so->interested,
        .carbons = so->carbons,
        .login_us = so->login_us,
        .update = so->update,
    };
    if (router_jid_is_domain(so->jid)) {
        /* An external component's connection (c2s/component.c). */
        int rc = router_component_open(&rt->table, &in, on_evict, rt);
        if (rc == -1) {
            metric_inc(rt->m_envelopes_ignored, "session_open_bad_component");
            return;
        }
        if (rc == 0 && !so->update) {
            log_info("component_open", "domain=%s c2s=%s session=%llu", so->jid, c2s,
                     (unsigned long long)so->session_id);
            const struct router_component *c = router_component_find(&rt->table, so->jid, strlen(so->jid));
            if (c != NULL && c->sess.c2s != NULL)
                router_gd_session_open(rt->gd, &c->sess);   /* gd claims the domain for this DC */
        }
        return;
    }
    if (rt->resharded && !router_owns(rt, so->jid)) {
        /* A c2s that has not read the file yet, or in flight: the owner gets this session
         * from that c2s itself at its reload (c2s/handover.c), with its state then. */
        metric_inc(rt->m_handover, "session_open_ignored");
        return;
    }
    const struct router_sess *prev = sess_table_find(&rt->table, so->jid);
    bool was_available = prev != NULL && prev->session_id == so->session_id && strcmp(prev->c2s->id, c2s) == 0 &&
                         prev->available && prev->priority >= 0;
    const struct router_sess *s = sess_table_open(&rt->table, &in, rt->node->cfg->limits.max_sessions_per_user,
                                                  on_evict, rt);
    if (s != NULL && !was_available && s->available && s->priority >= 0 && s->session_id == so->session_id &&
        strcmp(s->c2s->id, c2s) == 0)
        router_offline_fence_add(rt->offline_fence, s);   /* the c2s fetches offline messages again */
    if (s == NULL)
        metric_inc(rt->m_envelopes_ignored, "session_open_bad_jid");
    else if (!so->update && s->session_id == so->session_id && strcmp(s->c2s->id, c2s) == 0)
        router_gd_session_open(rt->gd, s);   /* a login that holds its JID: gd writes the table */
    if (s != NULL)
        router_carbons_hints(rt, so->jid);
    if (so->confirm)
        confirm_open(rt, c2s, so);
}

static void session_close(struct router *rt, const char *sender, const Mk__SessionClose *sc)
{
    const char *c2s = sc->c2s != NULL && *sc->c2s != '\0' ? sc->c2s : sender;
    if (router_jid_is_domain(sc->jid)) {
        const struct router_component *c = router_component_find(&rt->table, sc->jid, strlen(sc->jid));
        if (c != NULL && c->sess.c2s != NULL && c->sess.session_id == sc->session_id &&
            strcmp(c->sess.c2s->id, c2s) == 0)
            router_gd_session_close(rt->gd, &c->sess);
        if (router_component_close(&rt->table, sc->jid, c2s, sc->session_id) == 0)
            log_info("component_close", "domain=%s c2s=%s session=%llu", sc->jid, c2s,
                     (unsigned long long)sc->session_id);
        return;
    }
    if (rt->gd != NULL) {
        const struct router_sess *s = sc->jid != NULL ? sess_table_find(&rt->table, sc->jid) : NULL;
        if (s != NULL && s->session_id == sc->session_id && strcmp(s->c2s->id, c2s) == 0)
            router_gd_session_close(rt->gd, s);
    }
    if (sess_table_close(&rt->table, sc->jid, c2s, sc->session_id) == 0)
        router_carbons_hints(rt, sc->jid);
}

/* A c2s's HandoverFence for a shard this one does not know yet (it has not read the file). */
struct router_fence {
    char *c2s;
    char *target;
    uint64_t id;
};

/* Passes c2s's fence id on to target behind everything this shard forwarded there; kept
 * for later when target is not one of this shard's peers yet (its reload comes). */
static void fence_pass(struct router *rt, const char *c2s, uint64_t id, const char *target)
{
    const struct cfg_proc *t = cfg_find_proc(rt->node->cfg, target);
    if (t == rt->node->self) {
        metric_inc(rt->m_envelopes_ignored, "handover_fence");
        return;
    }
    if (t != NULL && t->role == CFG_ROLE_ROUTER) {
        Mk__HandoverFence f = MK__HANDOVER_FENCE__INIT;
        f.c2s = (char *)c2s;
        f.old_router = (char *)rt->node->self->id;
        f.id = id;
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_HANDOVER_FENCE;
        e.handover_fence = &f;
        node_send(rt->node, target, &e);
        metric_inc(rt->m_handover, "fence_passed");
        return;
    }
    if (rt->nfences == ROUTER_FENCES_DEFERRED_MAX) {
        metric_inc(rt->m_handover, "fence_dropped");   /* the c2s's deadline lets its Routes go */
        return;
    }
    rt->fences = xrealloc(rt->fences, (rt->nfences + 1) * sizeof *rt->fences);
    rt->fences[rt->nfences++] = (struct router_fence){.c2s = xstrdup(c2s), .target = xstrdup(target), .id = id};
    metric_inc(rt->m_handover, "fence_deferred");
}

/* The fences kept for shards this shard knows now, passed on. */
static void fences_retry(struct router *rt)
{
    size_t n = rt->nfences, kept = 0;
    struct router_fence *f = rt->fences;
    rt->fences = NULL;
    rt->nfences = 0;
    for (size_t i = 0; i < n; i++) {
        const struct cfg_proc *t = cfg_find_proc(rt->node->cfg, f[i].target);
        if (t != NULL && t->role == CFG_ROLE_ROUTER)
            fence_pass(rt, f[i].c2s, f[i].id, f[i].target);
        else
            f[kept++] = f[i];
        if (t != NULL && t->role == CFG_ROLE_ROUTER) {
            free(f[i].c2s);
            free(f[i].target);
        }
    }
    if (kept > 0) {
        rt->fences = f;
        rt->nfences = kept;
    } else {
        free(f);
    }
}

/* A HandoverFence (c2s/handover.c). From a c2s to this old shard: everything that c2s sent
 * here before it has been applied (delivered, or forwarded to the new owner), so it goes
 * on to each new shard behind what was forwarded there. From an old shard to this new
 * one: what that shard forwarded from the c2s is here, ahead of what the c2s will send
 * directly, so the c2s is told. */
static void handover_fence(struct router *rt, const char *sender, const Mk__HandoverFence *hf)
{
    const struct cfg_proc *p = cfg_find_proc(rt->node->cfg, sender);
    if (p == NULL || hf->done || hf->c2s == NULL || *hf->c2s == '\0') {
        metric_inc(rt->m_envelopes_ignored, "handover_fence");
        return;
    }
    if (p->role == CFG_ROLE_C2S) {
        for (size_t i = 0; i < hf->n_new_routers; i++)
            if (hf->new_routers[i] != NULL)
                fence_pass(rt, sender, hf->id, hf->new_routers[i]);
        return;
    }
    if (p->role != CFG_ROLE_ROUTER || !is_c2s(rt, hf->c2s)) {
        metric_inc(rt->m_envelopes_ignored, "handover_fence");
        return;
    }
    Mk__HandoverFence f = MK__HANDOVER_FENCE__INIT;
    f.c2s = hf->c2s;
    f.old_router = (char *)sender;
    f.id = hf->id;
    f.done = true;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_HANDOVER_FENCE;
    e.handover_fence = &f;
    node_send(rt->node, hf->c2s, &e);
    metric_inc(rt->m_handover, "fence_answered");
}

static bool keep_user(void *ud, const char *bare, size_t len)
{
    struct router *rt = ud;
    const struct cfg_proc *p = cfg_shard_n(rt->node->cfg, CFG_ROLE_ROUTER, bare, len);
    return p == NULL || p == rt->node->self;
}

/* A reload added router shards: the users rendezvous hashing gives them are theirs from
 * now on. Their sessions here are dropped without a word (the users are still online:
 * each c2s registers them with the new shard at its own reload), and what still comes
 * here for them is forwarded there (forward_not_owned in deliver.c). */
static void on_reload(struct node *n, const struct cfg_proc *const *added, size_t nadded)
{
    struct router *rt = n->role_data;
    size_t routers = 0;
    for (size_t i = 0; i < nadded; i++)
        routers += added[i]->role == CFG_ROLE_ROUTER;
    if (routers == 0)
        return;
    /* The sessions go first: what the kept fences cover was applied (delivered) before. */
    rt->resharded = true;
    size_t users = rt->table.nusers;
    size_t dropped = sess_table_drop_users(&rt->table, keep_user, rt);
    metric_add(rt->m_handover, "sessions_dropped", (double)dropped);
    size_t rooms = rt->muc != NULL ? router_muc_rooms_not_owned(rt->muc) : 0;
    log_info("router_handover", "routers_added=%zu users_moved=%zu sessions_dropped=%zu", routers,
             users - rt->table.nusers, dropped);
    if (rooms > 0)
        log_warn("router_handover_rooms_stay", "rooms=%zu", rooms);
    fences_retry(rt);
}

/* --- admin listing --------------------------------------------------------------------- */

struct list_ctx {
    struct router *rt;
    const char *peer;
    Mk__SessionOpen items[ROUTER_LIST_BATCH];
    Mk__SessionOpen *ptrs[ROUTER_LIST_BATCH];
    size_t n;
    size_t sent;
    bool failed;
};

static void list_flush(struct list_ctx *lc, bool done)
{
    Mk__SessionList sl = MK__SESSION_LIST__INIT;
    sl.n_sessions = lc->n;
    sl.sessions = lc->ptrs;
    sl.done = done;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_LIST;
    e.session_list = &sl;
    if (!lc->failed && node_send(lc->rt->node, lc->peer, &e) == -1)
        lc->failed = true;
    lc->sent += lc->n;
    lc->n = 0;
}

static void list_add(void *ud, const struct router_sess *s)
{
    struct list_ctx *lc = ud;
    Mk__SessionOpen *so = &lc->items[lc->n];
    mk__session_open__init(so);
    so->jid = s->full;
    so->c2s = s->c2s->id;
    so->session_id = s->session_id;
    so->priority = s->priority;
    so->available = s->available;
    so->interested = s->interested;
    so->carbons = s->carbons;
    so->login_us = s->login_us;
    lc->ptrs[lc->n++] = so;
    if (lc->n == ROUTER_LIST_BATCH)
        list_flush(lc, false);
}

/* Makes sure a reply can reach peer: configured processes are peers already; an admin
 * tool (ctl.<pid>) gets a peer for this one reply, at the inbox it names, removed by
 * session_list once the reply is queued (ZeroMQ still delivers it within
 * ROUTER_REPLY_LINGER_MS): replies leave nothing behind, however many calls come.
 * Returns 1 (a reply peer was added), 0 (a configured peer) or -1. */
static int reply_peer(struct router *rt, const char *peer, const char *endpoint)
{
    if (cfg_find_proc(rt->node->cfg, peer) != NULL)
        return 0;
    if (endpoint == NULL || (strncmp(endpoint, "tcp://", 6) != 0 && strncmp(endpoint, "ipc://", 6) != 0))
        return -1;
    char err[256];
    if (bus_add_peer(rt->node->bus, peer, endpoint, err, sizeof err) == -1) {
        log_warn("admin_peer_failed", "peer=%s reason=\"%s\"", peer, err);
        return -1;
    }
    return 1;
}

static void session_list(struct router *rt, const char *sender, const Mk__SessionList *req)
{
    int reply = reply_peer(rt, sender, req->reply_to);
    if (reply == -1) {
        metric_inc(rt->m_envelopes_ignored, "session_list_no_reply_to");
        return;
    }
    struct list_ctx *lc = xcalloc(1, sizeof *lc);
    lc->rt = rt;
    lc->peer = sender;
    struct jid_view v;
    if (req->jid != NULL && *req->jid != '\0') {
        if (router_jid_split(req->jid, &v) == 0) {
            if (v.resource != NULL) {
                const struct router_sess *s = sess_table_find(&rt->table, req->jid);
                if (s != NULL)
                    list_add(lc, s);
            } else {
                const struct router_user *u = sess_table_user(&rt->table, req->jid, v.bare_len);
                for (const struct router_sess *s = u ? u->sessions : NULL; s != NULL; s = s->next)
                    list_add(lc, s);
            }
        }
    } else {
        sess_table_foreach(&rt->table, list_add, lc);
    }
    list_flush(lc, true);
    if (reply == 1 && bus_remove_peer(rt->node->bus, sender, ROUTER_REPLY_LINGER_MS) == -1)
        lc->failed = true;
    log_info("session_list", "peer=%s sessions=%zu failed=%d", sender, lc->sent, lc->failed);
    free(lc);
}

/* --- the node's hooks ------------------------------------------------------------------- */

static void custody_c2s_back(struct router *rt, const char *peer);

static void on_envelope(struct node *n, Mk__Envelope **envp)
{
    struct router *rt = n->role_data;
    const Mk__Envelope *e = *envp;
    const char *sender = e->sender ? e->sender : "";
    if (rt->finished) {   /* teardown (main): not acknowledged, so its sender sends it again to the next incarnation */
        metric_inc(rt->m_envelopes_ignored, "after_loop");
        return;
    }
    if (router_archive_on_envelope(rt->archive, e) || rchan_set_on_envelope(rt->offline, e)) {
        /* A mam shard acknowledged writes: the Routes that waited for them are done. */
        router_intake_progress(rt->intake);
        router_offline_fence_progress(rt->offline_fence);
        return;
    }
    if (push_emit_on_envelope(rt->pushev, e))
        return;
    if (router_gd_on_envelope(rt->gd, e)) {
        router_intake_progress(rt->intake);   /* Routes handed to gd wait for its ack */
        return;
    }   /* a pusher's ack; its Hello (a restart) re-sent what it had not acknowledged */
    if (router_intake_on_envelope(rt->intake, envp))
        return;
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_SESSION_OPEN:
        if (e->session_open != NULL)
            session_open(rt, sender, e->session_open);
        return;
    case MK__ENVELOPE__PAYLOAD_SESSION_CLOSE:
        if (e->session_close != NULL)
            session_close(rt, sender, e->session_close);
        return;
    case MK__ENVELOPE__PAYLOAD_RESYNC:
        /* A c2s may also answer a router's hello with its sessions in batches. */
        for (size_t i = 0; e->resync != NULL && i < e->resync->n_sessions; i++)
            if (e->resync->sessions[i] != NULL)
                session_open(rt, sender, e->resync->sessions[i]);
        if (e->resync != NULL && e->resync->done && is_c2s(rt, sender))
            router_intake_c2s_synced(rt->intake, sender);
        return;
    case MK__ENVELOPE__PAYLOAD_KICK:
        if (e->kick != NULL) {
            const char *reason = e->kick->reason && *e->kick->reason ? e->kick->reason : "kicked";
            size_t k = router_jid_is_domain(e->kick->jid)
                           ? router_component_kick(&rt->table, e->kick->jid, reason, on_evict, rt)
                           : sess_table_kick(&rt->table, e->kick->jid, reason, on_evict, rt);
            log_info("kick", "from=%s sessions=%zu", sender, k);
        }
        return;
    case MK__ENVELOPE__PAYLOAD_SESSION_LIST:
        if (e->session_list != NULL)
            session_list(rt, sender, e->session_list);
        return;
    case MK__ENVELOPE__PAYLOAD_MAM_RESULT:
        /* A room's archive answering a query a room forwarded (router/muc.c). */
        if (e->mam_result != NULL)
            router_muc_on_mam_result(rt->muc, e->mam_result);
        return;
    case MK__ENVELOPE__PAYLOAD_CUSTODY_DONE:
        if (e->custody_done != NULL && is_c2s(rt, sender)) {
            const Mk__CustodyDone *cd = e->custody_done;
            if (router_custody_heard(rt->custody, sender, mk_now_us()))
                custody_c2s_back(rt, sender);
            if (cd->taken_from != NULL && *cd->taken_from != '\0')
                router_custody_move(rt->custody, cd->taken_from, sender, cd->ids, cd->n_ids);
            else
                router_custody_done(rt->custody, sender, cd->ids, cd->n_ids);
        }
        return;
    case MK__ENVELOPE__PAYLOAD_HANDOVER_FENCE:
        if (e->handover_fence != NULL)
            handover_fence(rt, sender, e->handover_fence);
        return;
    case MK__ENVELOPE__PAYLOAD_HELLO:
        return;   /* on_peer_hello */
    default:
        metric_inc(rt->m_envelopes_ignored, env_payload_name(e));
        log_debug("envelope_ignored", "from=%s payload=%s", sender, env_payload_name(e));
        return;
    }
}

/* A kept message Deliver whose c2s restarted: routed again as a fresh Route (one hop
 * more: a copy cannot go round for ever). Its mam_id is the recipient's archive id, so
 * the archive and offline storage keep it once. */
static void custody_reroute(void *ud, const Mk__Route *r)
{
    struct router *rt = ud;
    if (r->hops >= ROUTER_MAX_HOPS) {
        metric_inc(rt->m_dropped, "custody_hops");
        return;
    }
    Mk__Route again = *r;
    again.hops = r->hops + 1;
    router_route(rt, &again, NULL, ROUTER_FROM_LOCAL, NULL);
}

/* c2s peer is gone (restarted: its Hello; or silent for limits.custody_timeout): its
 * sessions are dropped and what it had been given and had not reported done (client
 * queues, output, Delivers on the way) is routed again from the original sender, now
 * that its sessions are gone (the user's other sessions, or offline storage). */
static void c2s_gone(struct router *rt, const char *peer, const char *why)
{
    router_gd_purge_c2s(rt->gd, peer);
    size_t k = sess_table_purge_c2s(&rt->table, peer);
    router_intake_c2s_synced(rt->intake, peer);
    size_t again = router_custody_take(rt->custody, peer, custody_reroute, rt);
    metric_add(rt->m_custody_rerouted, NULL, (double)again);
    log_info(why, "peer=%s sessions_dropped=%zu custody_rerouted=%zu", peer, k, again);
}

static void on_peer_hello(struct node *n, const char *peer, const char *role, bool is_reply)
{
    struct router *rt = n->role_data;
    const struct cfg_proc *p = cfg_find_proc(n->cfg, peer);
    if (rt->finished || is_reply || p == NULL || p->role != CFG_ROLE_C2S)
        return;
    /* A c2s that says hello first has (re)started: its old sessions are gone. It re-sends
     * SessionOpen for the ones it has now. */
    router_custody_heard(rt->custody, peer, mk_now_us());
    c2s_gone(rt, peer, "c2s_restarted");
}

/* Every c2s says it is alive (an empty CustodyDone) every third of limits.custody_timeout;
 * one not heard for the whole of it (scaled down, removed, stopped, cut off) never says
 * hello again: its copies are routed again now, as on a restart. */
static void custody_silence_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct router *rt = w->data;
    int64_t timeout_us = (int64_t)rt->node->cfg->limits.custody_timeout * 1000000;
    const char *peer;
    while ((peer = router_custody_silent(rt->custody, mk_now_us(), timeout_us)) != NULL) {
        log_warn("c2s_silent", "peer=%s timeout_s=%u", peer, rt->node->cfg->limits.custody_timeout);
        c2s_gone(rt, peer, "c2s_given_up");
    }
}

/* A c2s given up as silent speaks again (it was stopped or cut off, not gone): the router
 * dropped its sessions, so it is told to register them again, as after a router restart. */
static void custody_c2s_back(struct router *rt, const char *peer)
{
    Mk__Hello h = MK__HELLO__INIT;
    h.role = (char *)cfg_role_name(rt->node->role);
    h.started_us = rt->node->started_us;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_HELLO;
    e.hello = &h;
    log_info("c2s_back", "peer=%s", peer);
    node_send(rt->node, peer, &e);
}

/* Graceful stop: no new Route; the ones applied wait for their archive and offline
 * writes to be acknowledged, then their acks go to the c2s (on_stop_check). What is not
 * acknowledged by then is re-sent by the c2s to the next incarnation. */
static void on_stop(struct node *n)
{
    struct router *rt = n->role_data;
    rt->stopping = true;
    router_intake_stop(rt->intake);
    log_info("router_stopping", "routes_waiting=%zu archive_pending=%zu offline_pending=%zu push_pending=%zu",
             router_intake_waiting(rt->intake), router_archive_pending(rt->archive), rchan_set_pending(rt->offline),
             push_emit_pending(rt->pushev));
}

static void on_stop_check(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct router *rt = w->data;
    if (rt->stopping && router_intake_waiting(rt->intake) == 0 && router_archive_pending(rt->archive) == 0 &&
        rchan_set_pending(rt->offline) == 0 && router_gd_pending(rt->gd) == 0) {   /* push events are not waited for (c2s/pushev.c says why) */
        router_intake_flush(rt->intake);
        node_exit(rt->node);
    }
}

static void collect(struct node *n)
{
    struct router *rt = n->role_data;
    metric_set(rt->m_sessions, NULL, (double)rt->table.nsessions);
    metric_set(rt->m_components, NULL, (double)router_component_connected(&rt->table));
    metric_set(rt->m_custody_kept, NULL, (double)router_custody_kept(rt->custody));
    uint64_t dropped = router_custody_dropped(rt->custody);
    metric_add(rt->m_custody_dropped, NULL, (double)(dropped - rt->custody_dropped_seen));
    rt->custody_dropped_seen = dropped;
    router_muc_collect(rt->muc);
}

static void metrics_init(struct router *rt, struct metrics *m)
{
    rt->m_sessions = metrics_gauge(m, "meerkat_router_sessions", "Sessions in this shard's table", NULL);
    rt->m_routed = metrics_counter(m, "meerkat_router_routed_total", "Route envelopes handled", "kind");
    rt->m_delivered = metrics_counter(m, "meerkat_router_delivered_total", "Stanzas delivered, per target session",
                                      "kind");
    rt->m_offline = metrics_counter(m, "meerkat_router_offline_total", "Messages sent to offline storage", NULL);
    rt->m_errors = metrics_counter(m, "meerkat_router_errors_total", "Stanza errors generated", "condition");
    rt->m_dropped = metrics_counter(m, "meerkat_router_dropped_total", "Stanzas dropped silently", "reason");
    rt->m_route_seconds = metrics_histogram(m, "meerkat_router_route_seconds", "Time to handle one Route", NULL,
                                            route_buckets, MK_ARRAY_LEN(route_buckets));
    rt->m_envelopes_ignored = metrics_counter(m, "meerkat_router_envelopes_ignored_total",
                                              "Envelopes ignored: unexpected payload or unusable fields", "payload");
    rt->m_evicted = metrics_counter(m, "meerkat_router_sessions_closed_total",
                                    "Sessions the router told a c2s to close", "reason");
    rt->m_components = metrics_gauge(m, "meerkat_router_components", "External components connected (XEP-0114)",
                                     NULL);
    rt->m_custody_kept = metrics_gauge(m, "meerkat_router_custody_kept",
                                       "Message Delivers kept until their c2s reports them done", NULL);
    rt->m_custody_dropped = metrics_counter(m, "meerkat_router_custody_dropped_total",
                                            "Kept Delivers forgotten past limits.custody_max_per_c2s", NULL);
    rt->m_fanout_envelopes = metrics_counter(m, "meerkat_router_fanout_envelopes_total",
                                             "Envelopes group chat fan-outs sent: one Deliver per c2s, one Fanout per "
                                             "other router shard, and per stanza to a recipient with no session here "
                                             "one Route handled alone (routed_alone)", "kind");
    rt->m_handover = metrics_counter(m, "meerkat_router_handover_total",
                                     "A router shard added at a reload: sessions this shard dropped for it "
                                     "(sessions_dropped), Routes it forwarded to the JIDs' new shard "
                                     "(route_forwarded), SessionOpens for JIDs it gave away ignored "
                                     "(session_open_ignored), c2s fences passed on to a new shard (fence_passed, "
                                     "fence_deferred until this shard's own reload, fence_dropped past "
                                     "ROUTER_FENCES_DEFERRED_MAX) and answered as the new shard (fence_answered)",
                                     "what");
    rt->m_custody_rerouted = metrics_counter(m, "meerkat_router_custody_rerouted_total",
                                             "Kept Delivers routed again after their c2s restarted or was given up as silent "
                                             "(limits.custody_timeout)", NULL);
}

int main(int argc, char **argv)
{
    struct node n;
    struct router rt;
    memset(&rt, 0, sizeof rt);
    rt.node = &n;
    sess_table_init(&rt.table);
    const struct node_hooks hooks = {
        .on_envelope = on_envelope,
        .collect = collect,
        .on_peer_hello = on_peer_hello,
        .on_stop = on_stop,
        .on_reload = on_reload,
    };
    if (node_init(&n, argc, argv, CFG_ROLE_ROUTER, &hooks, &rt) == -1) {
        sess_table_release(&rt.table);
        return 1;
    }
    metrics_init(&rt, n.metrics);
    for (size_t i = 0; i < n.cfg->ncomponents; i++)
        router_component_add(&rt.table, n.cfg->components[i].domain);
    rt.archive = router_archive_new(&n);
    rt.offline = rchan_set_new(n.loop, n.bus, n.cfg, CFG_ROLE_MAM, ROUTER_OFFLINE_MAX_PENDING,
                               ROUTER_OFFLINE_RESEND_MS);
    rt.intake = router_intake_new(&rt);
    rt.offline_fence = router_offline_fence_new(&rt);
    rt.gd = router_gd_new(&rt);
    rt.pushev = push_emit_new(&n);
    rt.muc = router_muc_new(&rt);
    rt.custody = router_custody_new(n.self->index, n.cfg->limits.custody_max_per_c2s);
    ev_timer silence_w;   /* gives up c2s not heard for limits.custody_timeout */
    ev_timer_init(&silence_w, custody_silence_cb, n.cfg->limits.custody_timeout / 4.0,
                  n.cfg->limits.custody_timeout / 4.0);
    silence_w.data = &rt;
    if (n.cfg->limits.custody_timeout > 0)
        ev_timer_start(n.loop, &silence_w);
    int rc = 0;
    if (n.cfg->modules.muc_enabled && rt.muc == NULL)
        rc = 1;   /* group chat on without its store (logged): not served half */
    ev_prepare stop_w;
    ev_prepare_init(&stop_w, on_stop_check);
    stop_w.data = &rt;
    ev_prepare_start(n.loop, &stop_w);
    struct coalesce coalesce = { 0 };   /* fewer wake-ups near capacity (common/coalesce.h) */
    coalesce_start(&coalesce, n.loop, &COALESCE_CHAT);
    if (rc == 0)
        node_run(&n);
    coalesce_stop(&coalesce);
    ev_prepare_stop(n.loop, &stop_w);
    /* The rooms' store is drained by running the loop (store_drain): the bus may deliver
     * meanwhile, so envelopes are ignored from here on, and the rooms go first, while
     * everything their callbacks use is still there. */
    rt.finished = true;
    log_info("loop_ended", "rooms=%zu", rt.muc ? router_muc_rooms(rt.muc) : 0);
    router_muc_free(&rt.muc);
    router_intake_flush(rt.intake);
    router_intake_free(&rt.intake);
    router_offline_fence_free(&rt.offline_fence);
    rchan_set_free(&rt.offline);
    router_gd_free(&rt.gd);
    push_emit_free(&rt.pushev);
    router_archive_free(&rt.archive);
    ev_timer_stop(n.loop, &silence_w);
    router_custody_free(&rt.custody);
    for (size_t i = 0; i < rt.nfences; i++) {
        free(rt.fences[i].c2s);
        free(rt.fences[i].target);
    }
    free(rt.fences);
    node_fini(&n);
    sess_table_release(&rt.table);
    return rc;
}
