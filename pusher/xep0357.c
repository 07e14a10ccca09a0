/* pusher/xep0357.c - the "xep0357" backend: publish IQs to the users' app servers through the router, MongoosePush for virtual hosts, the message count per user. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cfg.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "pusher.h"
#include "store.h"
#include "util.h"
#include "xep0357_wire.h"

/* The publish IQ's id: "mkpush-<pusher id>-<n>". The router hands a reply carrying it to
 * this process (router/router.h, ROUTER_PUSH_IQ_PREFIX: the same text). */
#define XEP_IQ_PREFIX "mkpush-"
#define XEP_IQ_BUCKETS 1024u
/* Users whose registrations stay cached between messages; past it a user's are read
 * again for each message (the counts are kept whatever the number). */
#define XEP_MAX_CACHED_USERS 10000u

/* One user the backend has seen a message for since the user was last online: the count
 * of those messages (XEP-0357's message-count) and the user's registrations, read from
 * the store once and kept until they change (PushRegistrationsChanged) or the user comes
 * online (ONLINE drops the whole entry: count back to 0, registrations read again next
 * time). Events of one user always reach the same pusher (rendezvous on the user), so
 * the count is exact while this process lives; a restart starts every count again at 1. */
struct xep_user {
    char *user;
    unsigned count;
    struct xep_reg *regs;
    size_t nregs;
    bool loaded;
    bool loading;
    bool stale;                    /* changed while loading: read again when that load ends */
    struct xep_wait *waiting;      /* jobs waiting for the registrations */
    struct xep_user *hnext;
};

struct xep_wait {
    struct push_job *job;
    struct xep_wait *next;
};

/* One attempt of one job: a request per registration, the outcome once all are in. */
struct xep_pub {
    struct xep *x;
    struct push_job *job;
    size_t left;
    bool retry, fail;
    long retry_after_ms;
    char why[160];
};

/* A request in flight for one registration (an IQ awaiting its reply, or an HTTP call). */
struct xep_req {
    struct xep *x;
    struct xep_pub *pub;
    uint64_t n;                    /* the IQ id's number (IQs only) */
    char *user, *pubsub, *node;
    ev_timer timeout_w;            /* IQs only */
    struct xep_req *hnext;         /* x->iqs bucket (IQs), x->https list (HTTP) */
    struct xep_req *hprev;         /* x->https list (HTTP only) */
};

struct xep {
    struct push_backend *b;
    struct store *store;
    bool closing;
    struct xep_user **users;
    size_t nbuckets;
    size_t nusers;
    size_t ncached;                /* users whose registrations are loaded */
    struct xep_req *iqs[XEP_IQ_BUCKETS];
    struct xep_req *https;         /* MongoosePush requests in flight */
    uint64_t next_iq;
    struct metric *m_disabled;     /* label backend */
    struct metric *m_published;    /* label backend */
    struct metric *m_changes;      /* label backend: PushRegistrationsChanged received */
};

/* --- users ---------------------------------------------------------------------------- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static struct xep_user **user_slot(struct xep *x, const char *user)
{
    struct xep_user **pp = &x->users[hash_str(user) & (x->nbuckets - 1)];
    while (*pp != NULL && strcmp((*pp)->user, user) != 0)
        pp = &(*pp)->hnext;
    return pp;
}

static void users_grow(struct xep *x)
{
    size_t nb = x->nbuckets * 2;
    struct xep_user **t = xcalloc(nb, sizeof *t);
    for (size_t i = 0; i < x->nbuckets; i++) {
        struct xep_user *u = x->users[i];
        while (u != NULL) {
            struct xep_user *next = u->hnext;
            size_t k = hash_str(u->user) & (nb - 1);
            u->hnext = t[k];
            t[k] = u;
            u = next;
        }
    }
    free(x->users);
    x->users = t;
    x->nbuckets = nb;
}

static struct xep_user *user_get(struct xep *x, const char *user, bool create)
{
    struct xep_user **pp = user_slot(x, user);
    if (*pp != NULL || !create)
        return *pp;
    struct xep_user *u = xcalloc(1, sizeof *u);
    u->user = xstrdup(user);
    *pp = u;
    if (++x->nusers > x->nbuckets * 2)
        users_grow(x);
    return u;
}

static void user_regs_free(struct xep *x, struct xep_user *u)
{
    if (u->loaded)
        x->ncached--;
    for (size_t i = 0; i < u->nregs; i++)
        xep_reg_release(&u->regs[i]);
    free(u->regs);
    u->regs = NULL;
    u->nregs = 0;
    u->loaded = false;
}

/* Drops the entry unless a load or waiting jobs still need it. */
static void user_drop(struct xep *x, const char *user)
{
    struct xep_user **pp = user_slot(x, user);
    struct xep_user *u = *pp;
    if (u == NULL)
        return;
    if (u->loading || u->waiting != NULL) {
        u->count = 0;
        u->stale = u->loading;
        return;
    }
    *pp = u->hnext;
    x->nusers--;
    user_regs_free(x, u);
    free(u->user);
    free(u);
}

/* --- one attempt's outcome ------------------------------------------------------------------ */

static void pub_done(struct xep_pub **pp)
{
    struct xep_pub *p = *pp;
    *pp = NULL;
    enum push_outcome o = p->retry ? PUSH_RETRY : p->fail ? PUSH_FAIL : PUSH_OK;
    push_job_finish(p->job, o, p->retry_after_ms, p->why[0] ? p->why : NULL);
    free(p);
}

static void pub_note(struct xep_pub *p, enum xep_verdict v, long retry_after_ms, const char *why)
{
    if (v == XEP_VERDICT_RETRY) {
        p->retry = true;
        if (retry_after_ms > p->retry_after_ms)
            p->retry_after_ms = retry_after_ms;
    } else if (v == XEP_VERDICT_FAIL) {
        p->fail = true;
    }
    if (why != NULL && (v == XEP_VERDICT_RETRY || v == XEP_VERDICT_FAIL) && p->why[0] == '\0')
        mk_strlcpy(p->why, why, sizeof p->why);
}

static void req_free(struct xep_req **rp)
{
    struct xep_req *r = *rp;
    *rp = NULL;
    free(r->user);
    free(r->pubsub);
    free(r->node);
    free(r);
}

/* Tells every pusher (this one included, through its own cache) that user's
 * registrations changed: after a rendezvous change another pusher may hold them. */
static void notify_pushers(struct xep *x, const char *user)
{
    Mk__PushRegistrationsChanged prc = MK__PUSH_REGISTRATIONS_CHANGED__INIT;
    prc.user = (char *)user;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_PUSH_REGISTRATIONS;
    e.push_registrations = &prc;
    const struct cfg_proc *procs[64];
    size_t n = cfg_procs_of_role(x->b->node->cfg, CFG_ROLE_PUSHER, procs, MK_ARRAY_LEN(procs));
    for (size_t i = 0; i < n; i++)
        if (procs[i] != x->b->node->self)
            node_send(x->b->node, procs[i]->id, &e);
}

static void disabled_cb(void *ud, const struct store_result *res)
{
    char *user = ud;
    if (res->ok != 0)
        log_warn("push_disable_failed", "reason=\"%s\"", res->error ? res->error : "?");
    free(user);
}

/* The service said the registration is dead: removed from the store and the cache. */
static void reg_disable(struct xep *x, const struct xep_req *r, const char *why)
{
    char u[256], ps[256], nd[256];
    log_info("push_registration_disabled", "backend=%s user=\"%s\" pubsub=\"%s\" node=\"%s\" why=\"%s\"",
             x->b->cfg->name, mk_sanitize(u, sizeof u, r->user, strlen(r->user)),
             mk_sanitize(ps, sizeof ps, r->pubsub, strlen(r->pubsub)),
             mk_sanitize(nd, sizeof nd, r->node, strlen(r->node)), why);
    metric_inc(x->m_disabled, x->b->cfg->name);
    const char *at = strchr(r->user, '@');
    if (at != NULL && x->store != NULL) {
        char *local = xstrndup(r->user, (size_t)(at - r->user));
        const char *params[] = {local, at + 1, r->pubsub, r->node};
        store_query(x->store, STORE_PUSH_REG_DELETE, params, 4, disabled_cb, xstrdup(r->user));
        free(local);
    }
    struct xep_user *usr = user_get(x, r->user, false);
    if (usr != NULL) {
        if (usr->loading)
            usr->stale = true;
        else
            user_regs_free(x, usr);
    }
    notify_pushers(x, r->user);
}

/* --- IQs through the router --------------------------------------------------------------- */

static struct xep_req **iq_slot(struct xep *x, uint64_t n)
{
    struct xep_req **pp = &x->iqs[n % XEP_IQ_BUCKETS];
    while (*pp != NULL && (*pp)->n != n)
        pp = &(*pp)->hnext;
    return pp;
}

static void iq_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct xep_req *r = w->data;
    struct xep *x = r->x;
    struct xep_req **pp = iq_slot(x, r->n);
    *pp = r->hnext;
    struct xep_pub *p = r->pub;
    pub_note(p, XEP_VERDICT_RETRY, -1, "no reply to the publish IQ");
    req_free(&r);
    if (--p->left == 0)
        pub_done(&p);
}

static void send_iq(struct xep *x, struct xep_pub *p, const struct xep_reg *reg, const char *domain,
                    const struct xep_summary *sum, const char *user)
{
    struct node *n = x->b->node;
    uint64_t num = ++x->next_iq;
    char id[96];
    snprintf(id, sizeof id, XEP_IQ_PREFIX "%s-%" PRIu64, n->self->id, num);
    struct buf xml;
    buf_init(&xml);
    xep_publish_iq(&xml, domain, id, reg, sum);
    Mk__Route rt = MK__ROUTE__INIT;
    rt.kind = MK__STANZA_KIND__STANZA_KIND_IQ;
    rt.from = (char *)domain;
    rt.to = reg->pubsub;
    rt.type = (char *)"set";
    rt.id = id;
    rt.xml.data = (uint8_t *)xml.data;
    rt.xml.len = xml.len;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
    e.route = &rt;
    const struct cfg_proc *router = cfg_shard(n->cfg, CFG_ROLE_ROUTER, reg->pubsub);
    int rc = router != NULL ? node_send(n, router->id, &e) : -1;
    buf_release(&xml);
    if (rc == -1) {
        pub_note(p, XEP_VERDICT_RETRY, -1, "the router did not take the publish IQ");
        return;
    }
    metric_inc(x->m_published, x->b->cfg->name);
    struct xep_req *r = xcalloc(1, sizeof *r);
    r->x = x;
    r->pub = p;
    r->n = num;
    r->user = xstrdup(user);
    r->pubsub = xstrdup(reg->pubsub);
    r->node = xstrdup(reg->node);
    double secs = (x->b->cfg->timeout_ms ? x->b->cfg->timeout_ms : 5000) / 1000.0;
    ev_timer_init(&r->timeout_w, iq_timeout_cb, secs, 0.);
    r->timeout_w.data = r;
    ev_timer_start(x->b->loop, &r->timeout_w);
    r->hnext = x->iqs[num % XEP_IQ_BUCKETS];
    x->iqs[num % XEP_IQ_BUCKETS] = r;
    p->left++;
}

/* The domain part of a JID string: after '@' (if any), up to '/'. */
static void jid_domain(const char *jid, const char **d, size_t *n)
{
    const char *slash = strchr(jid, '/');
    size_t len = slash ? (size_t)(slash - jid) : strlen(jid);
    const char *at = memchr(jid, '@', len);
    *d = at ? at + 1 : jid;
    *n = len - (size_t)(*d - jid);
}

static bool same_domain(const char *a, const char *b)
{
    const char *da, *db;
    size_t na, nb;
    jid_domain(a, &da, &na);
    jid_domain(b, &db, &nb);
    return na == nb && memcmp(da, db, na) == 0;
}

/* A reply routed back to this pusher (router/deliver.c). True when it was one of ours. */
static bool on_iq_reply(struct xep *x, const Mk__Route *rt)
{
    const char *self = x->b->node->self->id;
    size_t plen = strlen(XEP_IQ_PREFIX), slen = strlen(self);
    if (rt->id == NULL || strncmp(rt->id, XEP_IQ_PREFIX, plen) != 0 || strncmp(rt->id + plen, self, slen) != 0 ||
        rt->id[plen + slen] != '-')
        return false;
    char *end;
    uint64_t num = strtoull(rt->id + plen + slen + 1, &end, 10);
    struct xep_req **pp = iq_slot(x, num);
    struct xep_req *r = *pp;
    if (*end != '\0' || r == NULL)
        return true;   /* ours but late (timed out) or forged: nothing waits for it */
    /* Only the service the IQ went to may answer it: a JID at its domain (a component
     * speaks only for its own domain, so nobody else can send from there). */
    if (rt->from == NULL || !same_domain(rt->from, r->pubsub))
        return true;
    *pp = r->hnext;
    ev_timer_stop(x->b->loop, &r->timeout_w);
    const char *condition;
    enum xep_verdict v = xep_iq_verdict(rt->type, (const char *)rt->xml.data, rt->xml.len, &condition);
    char why[96];
    snprintf(why, sizeof why, "publish IQ error %s", condition);
    struct xep_pub *p = r->pub;
    if (v == XEP_VERDICT_DISABLE)
        reg_disable(x, r, why);
    pub_note(p, v, -1, why);
    req_free(&r);
    if (--p->left == 0)
        pub_done(&p);
    return true;
}

/* --- MongoosePush ------------------------------------------------------------------------- */

static void mpush_done(void *ud, const struct http_response *resp)
{
    struct xep_req *r = ud;
    struct xep *x = r->x;
    struct xep_pub *p = r->pub;
    if (r->hprev != NULL)
        r->hprev->hnext = r->hnext;
    else
        x->https = r->hnext;
    if (r->hnext != NULL)
        r->hnext->hprev = r->hprev;
    enum xep_verdict v = resp->status == 0 ? XEP_VERDICT_RETRY : xep_mpush_verdict(resp->status);
    char why[160];
    if (resp->status == 0)
        snprintf(why, sizeof why, "MongoosePush: %s", resp->error ? resp->error : "no response");
    else
        snprintf(why, sizeof why, "MongoosePush answered %ld", resp->status);
    if (v == XEP_VERDICT_DISABLE)
        reg_disable(x, r, why);
    pub_note(p, v, resp->retry_after_ms, why);
    req_free(&r);
    if (--p->left == 0)
        pub_done(&p);
}

static void send_mpush(struct xep *x, struct xep_pub *p, const struct xep_reg *reg, const struct xep_summary *sum,
                       const char *user)
{
    const struct cfg_push_backend *c = x->b->cfg;
    struct buf url, json;
    buf_init(&url);
    buf_init(&json);
    char err[160];
    if (c->mongoosepush_url == NULL ||
        xep_mpush_request(&url, &json, c->mongoosepush_url, c->mongoosepush_api, reg, sum, err, sizeof err) == -1) {
        pub_note(p, XEP_VERDICT_FAIL, -1, c->mongoosepush_url == NULL ? "no mongoosepush_url" : err);
        goto out;
    }
    static const char *const headers[] = {"Content-Type: application/json", "Accept: application/json", NULL};
    struct http_request req = {
        .method = "POST",
        .url = url.data,
        .headers = headers,
        .body = json.data,
        .body_len = json.len,
    };
    struct xep_req *r = xcalloc(1, sizeof *r);
    r->x = x;
    r->pub = p;
    r->user = xstrdup(user);
    r->pubsub = xstrdup(reg->pubsub);
    r->node = xstrdup(reg->node);
    if (http_send(x->b->http, &req, mpush_done, r) == -1) {
        req_free(&r);
        pub_note(p, XEP_VERDICT_RETRY, -1, "the HTTP request could not be started");
        goto out;
    }
    metric_inc(x->m_published, x->b->cfg->name);
    r->hnext = x->https;
    if (x->https != NULL)
        x->https->hprev = r;
    x->https = r;
    p->left++;
out:
    buf_release(&url);
    buf_release(&json);
}

/* --- publishing ------------------------------------------------------------------------------ */

static bool is_virtual(const struct cfg_push_backend *c, const char *pubsub)
{
    for (size_t i = 0; i < c->nvirtual_hosts; i++)
        if (strcmp(c->virtual_hosts[i], pubsub) == 0)
            return true;
    return false;
}

/* One publish per registration of the event's user; the job finishes when every one
 * has its answer (at once when none could be sent). */
static void publish(struct xep *x, struct xep_user *u, struct push_job *job)
{
    const Mk__PushEvent *ev = push_job_event(job);
    if (u->nregs == 0) {
        push_job_finish(job, PUSH_SKIP, -1, NULL);
        return;
    }
    const char *domain = strchr(ev->user, '@');
    domain = domain ? domain + 1 : ev->user;
    /* last-message-sender: the bare sender of a chat, the full from of a groupchat
     * message (room@service/nick), as MongooseIM sends them. */
    char *sender = xstrdup(ev->from ? ev->from : "");
    if (ev->type == NULL || strcmp(ev->type, "groupchat") != 0)
        sender[strcspn(sender, "/")] = '\0';
    struct xep_summary sum = {u->count ? u->count : 1, sender, ev->body ? ev->body : ""};
    struct xep_pub *p = xcalloc(1, sizeof *p);
    p->x = x;
    p->job = job;
    p->retry_after_ms = -1;
    p->left = 1;   /* held while sending, so that no answer finishes it meanwhile */
    for (size_t i = 0; i < u->nregs; i++) {
        const struct xep_reg *reg = &u->regs[i];
        const char *slash = strchr(reg->pubsub, '@');
        const char *pdomain = slash ? slash + 1 : reg->pubsub;
        if (is_virtual(x->b->cfg, pdomain))
            send_mpush(x, p, reg, &sum, ev->user);
        else
            send_iq(x, p, reg, domain, &sum, ev->user);
    }
    free(sender);
    if (--p->left == 0)
        pub_done(&p);
}

struct load_ctx {
    struct xep *x;
    char *user;
};

static void load_start(struct xep *x, struct xep_user *u);

static void load_cb(void *ud, const struct store_result *res)
{
    struct load_ctx *lc = ud;
    struct xep *x = lc->x;
    if (x->closing) {
        /* fini: the jobs are the core's to drop; nothing is answered. */
        free(lc->user);
        free(lc);
        return;
    }
    struct xep_user *u = user_get(x, lc->user, false);
    free(lc->user);
    free(lc);
    if (u == NULL)
        return;
    u->loading = false;
    if (res->ok == 0 && !u->stale) {
        user_regs_free(x, u);
        u->regs = xcalloc(res->nrows ? res->nrows : 1, sizeof *u->regs);
        for (size_t i = 0; i < res->nrows; i++) {
            const char *const *row = &res->vals[i * res->ncols];
            if (res->ncols < 3 || xep_reg_init(&u->regs[u->nregs], row[0], row[1], row[2]) == -1)
                continue;   /* an unreadable row is skipped, not a reason to fail every push */
            u->nregs++;
        }
        u->loaded = true;
        x->ncached++;
    }
    if (u->stale) {
        u->stale = false;
        load_start(x, u);
        return;
    }
    struct xep_wait *w = u->waiting;
    u->waiting = NULL;
    while (w != NULL) {
        struct xep_wait *next = w->next;
        if (res->ok == 0 && u->loaded)
            publish(x, u, w->job);
        else
            push_job_finish(w->job, PUSH_RETRY, -1, res->error ? res->error : "store error");
        free(w);
        w = next;
    }
    if (x->ncached > XEP_MAX_CACHED_USERS && u->loaded && !u->loading)
        user_regs_free(x, u);
}

static void load_start(struct xep *x, struct xep_user *u)
{
    const char *at = strchr(u->user, '@');
    struct load_ctx *lc = xcalloc(1, sizeof *lc);
    lc->x = x;
    lc->user = xstrdup(u->user);
    char *local = at ? xstrndup(u->user, (size_t)(at - u->user)) : xstrdup("");
    const char *params[] = {local, at ? at + 1 : u->user};
    u->loading = true;
    store_query(x->store, STORE_PUSH_REG_LIST, params, 2, load_cb, lc);
    free(local);
}

static void xep_attempt(struct push_backend *b, struct push_job *job)
{
    struct xep *x = b->state;
    const Mk__PushEvent *ev = push_job_event(job);
    if (ev->user == NULL || *ev->user == '\0') {
        push_job_finish(job, PUSH_SKIP, -1, NULL);
        return;
    }
    if (ev->kind == MK__PUSH_EVENT_KIND__PUSH_EVENT_ONLINE) {
        user_drop(x, ev->user);   /* the count starts again */
        push_job_finish(job, PUSH_OK, -1, NULL);
        return;
    }
    bool message = ev->kind == MK__PUSH_EVENT_KIND__PUSH_EVENT_DELIVERED ||
                   ev->kind == MK__PUSH_EVENT_KIND__PUSH_EVENT_STORED;
    if (!message || !ev->unavailable || !ev->has_body || ev->body == NULL || *ev->body == '\0') {
        push_job_finish(job, PUSH_SKIP, -1, NULL);
        return;
    }
    struct xep_user *u = user_get(x, ev->user, true);
    if (push_job_attempt(job) == 0)
        u->count++;   /* a retry is the same message */
    if (u->loaded && !u->loading) {
        publish(x, u, job);
        if (x->ncached > XEP_MAX_CACHED_USERS)
            user_regs_free(x, u);
        return;
    }
    struct xep_wait *w = xcalloc(1, sizeof *w);
    w->job = job;
    struct xep_wait **tail = &u->waiting;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = w;
    if (!u->loading)
        load_start(x, u);
}

static bool xep_envelope(struct push_backend *b, const Mk__Envelope *e)
{
    struct xep *x = b->state;
    if (e->payload_case == MK__ENVELOPE__PAYLOAD_ROUTE && e->route != NULL &&
        e->route->kind == MK__STANZA_KIND__STANZA_KIND_IQ)
        return on_iq_reply(x, e->route);
    if (e->payload_case == MK__ENVELOPE__PAYLOAD_PUSH_REGISTRATIONS && e->push_registrations != NULL &&
        e->push_registrations->user != NULL) {
        metric_inc(x->m_changes, b->cfg->name);
        struct xep_user *u = user_get(x, e->push_registrations->user, false);
        if (u != NULL) {
            if (u->loading)
                u->stale = true;
            else
                user_regs_free(x, u);
        }
        return false;   /* another xep0357 backend of this process may cache them too */
    }
    return false;
}

static int xep_init(struct push_backend *b, char *err, size_t errlen)
{
    struct xep *x = xcalloc(1, sizeof *x);
    x->b = b;
    x->nbuckets = 256;
    x->users = xcalloc(x->nbuckets, sizeof *x->users);
    x->store = store_open(b->loop, b->node->cfg, err, errlen);
    if (x->store == NULL) {
        free(x->users);
        free(x);
        return -1;
    }
    /* One family per process, whatever the number of xep0357 backends. */
    static struct metric *disabled, *published, *changes;
    if (disabled == NULL) {
        disabled = metrics_counter(b->node->metrics, "meerkat_push_registrations_disabled_total",
                                   "XEP-0357 registrations removed because their service said they are dead "
                                   "(an IQ error of type cancel, MongoosePush 410)",
                                   "backend");
        published = metrics_counter(b->node->metrics, "meerkat_push_publishes_total",
                                    "XEP-0357 publishes sent (IQs and MongoosePush requests)", "backend");
        changes = metrics_counter(b->node->metrics, "meerkat_push_registration_changes_total",
                                  "Notices that a user's XEP-0357 registrations changed (their cache dropped)",
                                  "backend");
    }
    x->m_disabled = disabled;
    x->m_published = published;
    x->m_changes = changes;
    b->state = x;
    return 0;
}

/* Cancels what is in flight without finishing any job (the core drops them). */
static void xep_fini(struct push_backend *b)
{
    struct xep *x = b->state;
    if (x == NULL)
        return;
    x->closing = true;
    for (size_t i = 0; i < XEP_IQ_BUCKETS; i++) {
        struct xep_req *r = x->iqs[i];
        while (r != NULL) {
            struct xep_req *next = r->hnext;
            ev_timer_stop(b->loop, &r->timeout_w);
            /* Several requests may share one attempt: free it once, with its last one. */
            if (--r->pub->left == 0)
                free(r->pub);
            req_free(&r);
            r = next;
        }
    }
    /* The core frees the HTTP pool after this, cancelling these without callbacks. */
    while (x->https != NULL) {
        struct xep_req *r = x->https;
        x->https = r->hnext;
        if (--r->pub->left == 0)
            free(r->pub);
        req_free(&r);
    }
    store_close(&x->store);   /* load callbacks see closing and answer nothing */
    for (size_t i = 0; i < x->nbuckets; i++) {
        struct xep_user *u = x->users[i];
        while (u != NULL) {
            struct xep_user *next = u->hnext;
            while (u->waiting != NULL) {
                struct xep_wait *w = u->waiting;
                u->waiting = w->next;
                free(w);
            }
            user_regs_free(x, u);
            free(u->user);
            free(u);
            u = next;
        }
    }
    free(x->users);
    free(x);
    b->state = NULL;
}

const struct push_backend_ops push_xep0357_ops = {
    .type = "xep0357",
    .init = xep_init,
    .fini = xep_fini,
    .attempt = xep_attempt,
    .envelope = xep_envelope,
};
