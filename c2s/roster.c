/* c2s/roster.c - the "roster" module: rosters (RFC 6121 section 2, XEP-0237 versioning) and the subscription state machine (section 3, appendix A). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "util.h"

extern const struct c2s_module roster_module;

/* Per-session state. */
struct roster_session {
    struct feat_serial serial;     /* the session's jobs run one at a time, in the order sent */
};

/* The stored state of one roster item. Both rosters involved in a subscription live in
 * the same database, so the acting c2s reads both, applies RFC 6121's tables to both,
 * writes both, and routes pushes and presence for both sides. */
struct rstate {
    bool exists;
    char *name;      /* NULL: the server created the item (pending-in only); "" when unnamed */
    char *groups;    /* "\n"-separated, never NULL */
    int sub;         /* enum roster_sub bits */
    bool out;        /* pending out: ask='subscribe' */
    bool in;         /* pending in */
    bool approved;   /* pre-approved */
};

static const char *sub_name(int sub)
{
    static const char *const names[] = {"none", "to", "from", "both"};
    return names[sub & 3];
}

static const char *ask_name(bool out, bool in)
{
    return out && in ? "both" : out ? "subscribe" : in ? "in" : "";
}

static bool truthy(const char *v)
{
    return v && (v[0] == '1' || v[0] == 't' || v[0] == 'T');
}

static void rstate_release(struct rstate *st)
{
    free(st->name);
    free(st->groups);
    memset(st, 0, sizeof *st);
}

static void rstate_copy(struct rstate *dst, const struct rstate *src)
{
    *dst = *src;
    dst->name = xstrdup(src->name);
    dst->groups = xstrdup(src->groups ? src->groups : "");
}

/* Columns of STORE_ROSTER_GET / _GET_ITEM: jid, name, subscription, ask, groups, approved. */
static const char *col(const struct store_result *res, size_t row, size_t c)
{
    return feat_col(res, row, c);
}

static void rstate_from_row(struct rstate *st, const struct store_result *res, size_t row)
{
    const char *ask = col(res, row, 3);
    st->exists = true;
    st->name = xstrdup(col(res, row, 1));
    st->groups = xstrdup(col(res, row, 4) ? col(res, row, 4) : "");
    st->sub = (int)feat_roster_sub_parse(col(res, row, 2));
    st->out = ask && (strcmp(ask, "subscribe") == 0 || strcmp(ask, "both") == 0);
    st->in = ask && (strcmp(ask, "in") == 0 || strcmp(ask, "both") == 0);
    st->approved = truthy(col(res, row, 5));
}

/* An item the client sees: everything but a bare pending-in request the server made. */
static bool rstate_visible(const struct rstate *st)
{
    return st->exists && !(st->sub == ROSTER_SUB_NONE && !st->out && !st->approved && st->name == NULL);
}

/* Nothing left worth keeping: the row is deleted. */
static bool rstate_empty(const struct rstate *st)
{
    return st->sub == ROSTER_SUB_NONE && !st->out && !st->in && !st->approved && st->name == NULL;
}

static bool str_eq(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static bool rstate_changed(const struct rstate *a, const struct rstate *b)
{
    if (a->exists != b->exists)
        return true;
    if (!a->exists)
        return false;
    return a->sub != b->sub || a->out != b->out || a->in != b->in || a->approved != b->approved ||
           !str_eq(a->name, b->name) || !str_eq(a->groups, b->groups);
}

static bool rstate_visible_changed(const struct rstate *a, const struct rstate *b)
{
    bool va = rstate_visible(a), vb = rstate_visible(b);
    if (va != vb)
        return true;
    if (!vb)
        return false;
    return a->sub != b->sub || a->out != b->out || a->approved != b->approved || !str_eq(a->name, b->name) ||
           !str_eq(a->groups, b->groups);
}

/* <item/> for a roster result or push. */
static struct xml_node *item_xml(const char *jid, const char *name, int sub, bool out, bool approved,
                                 const char *groups)
{
    struct xml_node *it = xml_node_new("item", NS_ROSTER);
    xml_set_attr(it, "jid", jid);
    if (name && *name)
        xml_set_attr(it, "name", name);
    xml_set_attr(it, "subscription", sub_name(sub));
    if (out)
        xml_set_attr(it, "ask", "subscribe");
    if (approved)
        xml_set_attr(it, "approved", "true");
    for (const char *g = groups; g && *g;) {
        const char *nl = strchr(g, '\n');
        size_t n = nl ? (size_t)(nl - g) : strlen(g);
        if (n) {
            struct xml_node *gn = xml_add_child(it, "group", NS_ROSTER);
            xml_add_text(gn, g, n);
        }
        g = nl ? nl + 1 : g + n;
    }
    return it;
}

/* --- the in-memory copy ------------------------------------------------------------------ */

static void item_free(struct roster_item *it)
{
    free(it->jid);
    free(it->name);
    free(it->subscription);
    free(it->ask);
    free(it->groups);
    free(it);
}

static void roster_free_all(struct session *sess)
{
    while (sess->roster) {
        struct roster_item *it = sess->roster;
        sess->roster = it->next;
        item_free(it);
    }
}

static void mem_remove(struct session *sess, const char *jid)
{
    for (struct roster_item **pp = &sess->roster; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->jid, jid) == 0) {
            struct roster_item *it = *pp;
            *pp = it->next;
            item_free(it);
            return;
        }
    }
}

static void mem_set(struct session *sess, const char *jid, const char *name, const char *sub, const char *ask,
                    const char *groups, bool approved)
{
    struct roster_item *it = feat_roster_find(sess, jid);
    if (!it) {
        it = xcalloc(1, sizeof *it);
        it->jid = xstrdup(jid);
        it->next = sess->roster;
        sess->roster = it;
    }
    free(it->name);
    free(it->subscription);
    free(it->ask);
    free(it->groups);
    it->name = xstrdup(name);
    it->subscription = xstrdup(sub);
    it->ask = xstrdup(ask);
    it->groups = xstrdup(groups ? groups : "");
    it->approved = approved;
}

static void mem_replace_all(struct session *sess, const struct store_result *res)
{
    roster_free_all(sess);
    for (size_t i = 0; i < res->nrows; i++) {
        struct rstate st = {0};
        const char *jid = col(res, i, 0);
        if (!jid)
            continue;
        rstate_from_row(&st, res, i);
        mem_set(sess, jid, st.name, sub_name(st.sub), ask_name(st.out, st.in), st.groups, st.approved);
        rstate_release(&st);
    }
}

/* --- loading --------------------------------------------------------------------------- */

static void load_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_session(ctx);
    if (sess) {
        if (res->ok == 0) {
            mem_replace_all(sess, res);
            sess->roster_loaded = true;
        } else {
            log_warn("roster_load_failed", "session=%llu error=\"%s\"", (unsigned long long)sess->id,
                     res->error ? res->error : "");
        }
        session_release(sess);
    }
    feat_ctx_free(&ctx);
}

/* Session open: the roster is loaded before the session's presence is handled. */
static void roster_load(struct session *sess)
{
    struct c2s *s = sess->conn->c2s;
    session_hold(sess);
    const char *params[] = {sess->jid.local, sess->jid.domain};
    store_query(s->store, STORE_ROSTER_GET, params, 2, load_cb, feat_ctx_new(sess, NULL));
}

/* --- roster get (with XEP-0237 versions) ----------------------------------------------------- */

static void get_items_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_session(ctx);
    if (!sess)
        goto out;
    if (res->ok != 0) {
        session_send_error(sess, ctx->req, "wait", "internal-server-error", NULL);
        goto out;
    }
    mem_replace_all(sess, res);
    sess->roster_loaded = true;
    struct xml_node *q = xml_node_new("query", NS_ROSTER);
    if (ctx->arg)
        xml_set_attr(q, "ver", ctx->arg);
    for (size_t i = 0; i < res->nrows; i++) {
        struct rstate st = {0};
        rstate_from_row(&st, res, i);
        if (col(res, i, 0) && rstate_visible(&st))
            xml_append(q, item_xml(col(res, i, 0), st.name, st.sub, st.out, st.approved, st.groups));
        rstate_release(&st);
    }
    feat_reply(sess, ctx->req, q);
out:
    feat_ctx_free(&ctx);
}

static void get_version_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_session(ctx);
    if (!sess) {
        feat_ctx_free(&ctx);
        return;
    }
    if (res->ok != 0) {
        session_send_error(sess, ctx->req, "wait", "internal-server-error", NULL);
        feat_ctx_free(&ctx);
        return;
    }
    const char *cur = res->nrows > 0 && col(res, 0, 0) ? col(res, 0, 0) : "0";
    struct xml_node *q = xml_child(ctx->req, "query", NS_ROSTER);
    const char *ver = q ? xml_attr(q, "ver") : NULL;
    if (ver && strcmp(ver, cur) == 0) {
        /* XEP-0237 2.1: unchanged, an empty result; pushes bring later changes. */
        feat_reply(sess, ctx->req, NULL);
        feat_ctx_free(&ctx);
        return;
    }
    ctx->arg = xstrdup(cur);
    const char *params[] = {sess->jid.local, sess->jid.domain};
    store_query(ctx->c2s->store, STORE_ROSTER_GET, params, 2, get_items_cb, ctx);
}

static void roster_get(struct session *sess, const struct xml_node *iq)
{
    struct c2s *s = sess->conn->c2s;
    if (!sess->interested) {
        sess->interested = true;
        session_update_router(sess);
    }
    const char *params[] = {sess->jid.local, sess->jid.domain};
    store_query(s->store, STORE_ROSTER_VERSION_GET, params, 2, get_version_cb, feat_ctx_new(sess, iq));
}

/* --- changes: one job reads both items, applies the tables, writes, pushes, routes ------------ */

enum roster_op {
    ROSTER_OP_SET = 0,
    ROSTER_OP_REMOVE,
    ROSTER_OP_SUBSCRIBE,
    ROSTER_OP_SUBSCRIBED,
    ROSTER_OP_UNSUBSCRIBE,
    ROSTER_OP_UNSUBSCRIBED,
};

struct roster_job {
    struct c2s *c2s;
    uint64_t sid;
    enum roster_op op;
    struct xml_node *req;          /* roster IQ to answer (set, remove), or NULL */
    struct xml_node *pres;         /* the client's subscription presence (children copied), or NULL */
    char *ulocal, *udomain, *ubare;
    char *clocal, *cdomain, *cbare;
    char *set_name;                /* roster set: name ("" when none) and groups */
    char *set_groups;
    bool contact_exists;
    struct rstate u0, c0, u1, c1;
    struct xml_node **after;       /* stanzas routed once both rosters are written */
    size_t nafter;
    bool set_only;                 /* a roster set: only the user's item is read */
};

static void job_begin(struct roster_job *j);

static void job_release(void *ud)
{
    struct roster_job *j = ud;
    xml_free(&j->req);
    xml_free(&j->pres);
    free(j->ulocal);
    free(j->udomain);
    free(j->ubare);
    free(j->clocal);
    free(j->cdomain);
    free(j->cbare);
    free(j->set_name);
    free(j->set_groups);
    rstate_release(&j->u0);
    rstate_release(&j->c0);
    rstate_release(&j->u1);
    rstate_release(&j->c1);
    for (size_t i = 0; i < j->nafter; i++)
        xml_free(&j->after[i]);
    free(j->after);
    free(j);
}

/* The job is done: the session's next one starts. */
static void job_free(struct roster_job *j)
{
    struct c2s *s = j->c2s;
    uint64_t sid = j->sid;
    job_release(j);
    struct session *sess = session_by_id(s, sid);
    struct roster_session *st = sess ? c2s_session_state(sess, &roster_module) : NULL;
    struct roster_job *next = st ? feat_serial_leave(&st->serial) : NULL;
    if (next)
        job_begin(next);
}

static void job_fail(struct roster_job *j, const char *type, const char *cond)
{
    struct session *sess = session_by_id(j->c2s, j->sid);
    if (j->req && sess && sess->conn && !sess->conn->closed)
        session_send_error(sess, j->req, type, cond, NULL);
    job_free(j);
}

/* A presence from -> to of type (NULL = available); copies the client's children for
 * subscription requests (status, nick). */
static struct xml_node *pres_new(const char *from, const char *to, const char *type, const struct xml_node *copy)
{
    struct xml_node *p = xml_node_new("presence", XML_NS_CLIENT);
    xml_set_attr(p, "from", from);
    xml_set_attr(p, "to", to);
    if (type)
        xml_set_attr(p, "type", type);
    if (copy)
        for (struct xml_node *c = xml_first_elem(copy); c; c = xml_next(c, NULL, NULL))
            if (strcmp(c->name, "priority") != 0 && strcmp(c->name, "show") != 0)
                xml_append(p, xml_clone(c));
    return p;
}

static void job_after(struct roster_job *j, struct xml_node *stanza)
{
    j->after = xrealloc(j->after, (j->nafter + 1) * sizeof *j->after);
    j->after[j->nafter++] = stanza;
}

/* Route now: used for presence that must reach the other side before the roster
 * pushes that would make its receiver drop it. */
static void job_route_now(struct roster_job *j, struct xml_node *stanza)
{
    session_route(j->c2s, stanza);
    xml_free(&stanza);
}

/* RFC 6121 appendix A applied to both items. Returns false (with the IQ answered) when
 * the request is refused. */
static bool job_compute(struct roster_job *j)
{
    struct rstate *u = &j->u1, *c = &j->c1;
    rstate_copy(u, &j->u0);
    rstate_copy(c, &j->c0);
    const struct xml_node *pc = j->pres;

    switch (j->op) {
    case ROSTER_OP_SET:
        u->exists = true;
        free(u->name);
        free(u->groups);
        u->name = xstrdup(j->set_name);
        u->groups = xstrdup(j->set_groups);
        break;
    case ROSTER_OP_REMOVE:
        if (!j->u0.exists) {
            job_fail(j, "cancel", "item-not-found");
            return false;
        }
        /* RFC 6121 2.5.2: cancel both directions. */
        if (!j->contact_exists) {
            rstate_release(u);
            break;
        }
        if ((j->u0.sub & ROSTER_SUB_FROM) && c->exists)
            job_route_now(j, pres_new(j->ubare, j->cbare, "unavailable", NULL));
        if ((j->u0.sub & ROSTER_SUB_TO) || j->u0.out) {
            if (c->exists && ((c->sub & ROSTER_SUB_FROM) || c->in)) {
                c->sub &= ~ROSTER_SUB_FROM;
                c->in = false;
            }
            job_after(j, pres_new(j->ubare, j->cbare, "unsubscribe", NULL));
        }
        if ((j->u0.sub & ROSTER_SUB_FROM) || j->u0.in) {
            if (c->exists && (c->out || (c->sub & ROSTER_SUB_TO))) {
                c->out = false;
                c->sub &= ~ROSTER_SUB_TO;
            }
            job_after(j, pres_new(j->ubare, j->cbare, "unsubscribed", NULL));
        }
        rstate_release(u);
        break;
    case ROSTER_OP_SUBSCRIBE: {
        u->exists = true;
        if (!u->groups)
            u->groups = xstrdup("");
        if (!(u->sub & ROSTER_SUB_TO))
            u->out = true;
        if (!j->contact_exists)
            break;
        bool auto_ok = false;
        if (c->exists && (c->sub & ROSTER_SUB_FROM)) {
            auto_ok = true;     /* RFC 6121 3.1.3: already subscribed: answer for the contact */
        } else if (c->exists && c->approved) {
            c->approved = false;/* 3.4: pre-approved */
            c->sub |= ROSTER_SUB_FROM;
            c->in = false;
            auto_ok = true;
        } else {
            if (!c->exists) {
                c->exists = true;
                if (!c->groups)
                    c->groups = xstrdup("");
            }
            c->in = true;
            job_after(j, pres_new(j->ubare, j->cbare, "subscribe", pc));
        }
        if (auto_ok) {
            if (u->out) {
                u->out = false;
                u->sub |= ROSTER_SUB_TO;
                job_after(j, pres_new(j->cbare, j->ubare, "subscribed", NULL));
            }
            /* The contact's resources answer with their presence. */
            job_after(j, pres_new(j->ubare, j->cbare, "probe", NULL));
        }
        break;
    }
    case ROSTER_OP_SUBSCRIBED:
        if (u->in) {
            u->in = false;
            u->approved = false;
            u->sub |= ROSTER_SUB_FROM;
            if (j->contact_exists && c->exists && c->out) {
                c->out = false;
                c->sub |= ROSTER_SUB_TO;
                job_after(j, pres_new(j->ubare, j->cbare, "subscribed", pc));
                /* 3.1.5: the contact gets the user's current presence: probe the user's
                 * resources on the contact's behalf. */
                job_after(j, pres_new(j->cbare, j->ubare, "probe", NULL));
            }
        } else if (!(u->sub & ROSTER_SUB_FROM) && !u->approved) {
            u->exists = true;   /* 3.4: pre-approval */
            if (!u->groups)
                u->groups = xstrdup("");
            u->approved = true;
        }
        break;
    case ROSTER_OP_UNSUBSCRIBE:
        if (u->exists && ((u->sub & ROSTER_SUB_TO) || u->out)) {
            u->sub &= ~ROSTER_SUB_TO;
            u->out = false;
        }
        if (j->contact_exists && c->exists && ((c->sub & ROSTER_SUB_FROM) || c->in)) {
            if (c->sub & ROSTER_SUB_FROM)
                job_route_now(j, pres_new(j->cbare, j->ubare, "unavailable", NULL));
            c->sub &= ~ROSTER_SUB_FROM;
            c->in = false;
            job_after(j, pres_new(j->ubare, j->cbare, "unsubscribe", pc));
        }
        break;
    case ROSTER_OP_UNSUBSCRIBED:
        if (u->exists && ((u->sub & ROSTER_SUB_FROM) || u->in || u->approved)) {
            u->sub &= ~ROSTER_SUB_FROM;
            u->in = false;
            u->approved = false;
        }
        if (j->contact_exists && c->exists && (c->out || (c->sub & ROSTER_SUB_TO))) {
            if (c->sub & ROSTER_SUB_TO)
                job_route_now(j, pres_new(j->ubare, j->cbare, "unavailable", NULL));
            c->out = false;
            c->sub &= ~ROSTER_SUB_TO;
            job_after(j, pres_new(j->ubare, j->cbare, "unsubscribed", pc));
        }
        break;
    }
    /* An item the user can see is the user's from now on: it stays, at subscription
     * 'none', until removed (only an unanswered request leaves no trace). */
    if (u->exists && !u->name && (u->sub || u->out || u->approved))
        u->name = xstrdup("");
    if (c->exists && !c->name && (c->sub || c->out || c->approved))
        c->name = xstrdup("");
    if (u->exists && rstate_empty(u))
        rstate_release(u);
    if (c->exists && rstate_empty(c))
        rstate_release(c);
    return true;
}

static void job_write_contact(struct roster_job *j);
static void job_finish(struct roster_job *j);

/* The push for one side, with the version the write produced. */
static void job_push(struct roster_job *j, const char *bare, const char *jid, const struct rstate *before,
                     const struct rstate *after, const char *ver)
{
    if (!rstate_visible_changed(before, after))
        return;
    struct xml_node *q = xml_node_new("query", NS_ROSTER);
    if (ver)
        xml_set_attr(q, "ver", ver);
    if (rstate_visible(after)) {
        xml_append(q, item_xml(jid, after->name, after->sub, after->out, after->approved, after->groups));
    } else {
        struct xml_node *it = xml_add_child(q, "item", NS_ROSTER);
        xml_set_attr(it, "jid", jid);
        xml_set_attr(it, "subscription", "remove");
    }
    feat_route_push(j->c2s, bare, q);
    xml_free(&q);
}

/* Writes one side: set or delete, bump the version, read it back, in one transaction. */
static void job_write(struct roster_job *j, const char *local, const char *domain, const char *jid,
                      const struct rstate *st, store_cb *cb)
{
    char approved[2] = {st->approved ? '1' : '0', 0};
    const char *set_p[] = {local, domain, jid, st->name, sub_name(st->sub), ask_name(st->out, st->in),
                           st->groups ? st->groups : "", approved};
    const char *key_p[] = {local, domain, jid};
    const char *user_p[] = {local, domain};
    struct store_op ops[3] = {
        st->exists ? (struct store_op){STORE_ROSTER_SET, set_p, 8} : (struct store_op){STORE_ROSTER_DELETE, key_p, 3},
        {STORE_ROSTER_VERSION_BUMP, user_p, 2},
        {STORE_ROSTER_VERSION_GET, user_p, 2},
    };
    store_txn(j->c2s->store, ops, 3, cb, j);
}

static void job_contact_written(void *ud, const struct store_result *res)
{
    struct roster_job *j = ud;
    if (res->ok != 0) {
        log_warn("roster_write_failed", "user=%s error=\"%s\"", j->cbare, res->error ? res->error : "");
        job_fail(j, "wait", "internal-server-error");
        return;
    }
    job_push(j, j->cbare, j->ubare, &j->c0, &j->c1, res->nrows ? col(res, 0, 0) : NULL);
    job_finish(j);
}

static void job_user_written(void *ud, const struct store_result *res)
{
    struct roster_job *j = ud;
    if (res->ok != 0) {
        log_warn("roster_write_failed", "user=%s error=\"%s\"", j->ubare, res->error ? res->error : "");
        job_fail(j, "wait", "internal-server-error");
        return;
    }
    job_push(j, j->ubare, j->cbare, &j->u0, &j->u1, res->nrows ? col(res, 0, 0) : NULL);
    /* The acting session sees its own change at once (its push follows through the router). */
    struct session *sess = session_by_id(j->c2s, j->sid);
    if (sess) {
        if (j->u1.exists)
            mem_set(sess, j->cbare, j->u1.name, sub_name(j->u1.sub), ask_name(j->u1.out, j->u1.in), j->u1.groups,
                    j->u1.approved);
        else
            mem_remove(sess, j->cbare);
    }
    job_write_contact(j);
}

static void job_write_contact(struct roster_job *j)
{
    if (j->contact_exists && rstate_changed(&j->c0, &j->c1))
        job_write(j, j->clocal, j->cdomain, j->ubare, &j->c1, job_contact_written);
    else
        job_finish(j);
}

static void job_finish(struct roster_job *j)
{
    for (size_t i = 0; i < j->nafter; i++)
        session_route(j->c2s, j->after[i]);
    struct session *sess = session_by_id(j->c2s, j->sid);
    if (j->req && sess && sess->conn && !sess->conn->closed)
        feat_reply(sess, j->req, NULL);
    job_free(j);
}

static void job_write_all(struct roster_job *j)
{
    if (rstate_changed(&j->u0, &j->u1))
        job_write(j, j->ulocal, j->udomain, j->cbare, &j->u1, job_user_written);
    else
        job_write_contact(j);
}

/* A change that would take a roster past limits.max_roster_items: the user's own
 * roster (a roster set or the user's subscription) is refused with <not-allowed/>;
 * a contact's (the user's subscription request would add an item there) with
 * <resource-constraint/>, the contact's server lacking room for it. */
static void job_refuse(struct roster_job *j, bool own, long long count)
{
    struct c2s *s = j->c2s;
    char text[96];
    snprintf(text, sizeof text, "%s roster is full (at most %u items)", own ? "your" : "the contact's",
             s->cfg->limits.max_roster_items);
    log_info("roster_limit", "user=%s contact=%s full=%s items=%lld", j->ubare, j->cbare, own ? j->ubare : j->cbare,
             count);
    metric_inc(s->m_limit_refusals, "roster_items");
    struct session *sess = session_by_id(s, j->sid);
    const struct xml_node *st = j->req ? j->req : j->pres;
    if (st && sess && sess->conn && !sess->conn->closed)
        session_send_error(sess, st, "cancel", own ? "not-allowed" : "resource-constraint", text);
    job_free(j);
}

static long long count_of(const struct store_result *res)
{
    return res->nrows > 0 && col(res, 0, 0) ? strtoll(col(res, 0, 0), NULL, 10) : 0;
}

static void job_contact_count_cb(void *ud, const struct store_result *res)
{
    struct roster_job *j = ud;
    if (res->ok != 0) {
        job_fail(j, "wait", "internal-server-error");
        return;
    }
    long long n = count_of(res);
    if (n + 1 > (long long)j->c2s->cfg->limits.max_roster_items) {
        job_refuse(j, false, n);
        return;
    }
    job_write_all(j);
}

static void job_check_contact(struct roster_job *j)
{
    if (j->contact_exists && !j->c0.exists && j->c1.exists) {
        const char *params[] = {j->clocal, j->cdomain};
        store_query(j->c2s->store, STORE_ROSTER_COUNT, params, 2, job_contact_count_cb, j);
        return;
    }
    job_write_all(j);
}

/* The user's count (read after this session's earlier jobs are written). */
static void job_user_count_cb(void *ud, const struct store_result *res)
{
    struct roster_job *j = ud;
    if (res->ok != 0) {
        job_fail(j, "wait", "internal-server-error");
        return;
    }
    long long n = count_of(res);
    if (n + 1 > (long long)j->c2s->cfg->limits.max_roster_items) {
        job_refuse(j, true, n);
        return;
    }
    job_check_contact(j);
}

/* Applies the tables, then checks that no roster grows past the limit, then writes. */
static void job_compute_and_write(struct roster_job *j)
{
    if (!job_compute(j))
        return;
    if (!j->u0.exists && j->u1.exists) {
        const char *params[] = {j->ulocal, j->udomain};
        store_query(j->c2s->store, STORE_ROSTER_COUNT, params, 2, job_user_count_cb, j);
        return;
    }
    job_check_contact(j);
}

static void job_contact_item_cb(void *ud, const struct store_result *res)
{
    struct roster_job *j = ud;
    if (res->ok != 0) {
        job_fail(j, "wait", "internal-server-error");
        return;
    }
    if (res->nrows > 0)
        rstate_from_row(&j->c0, res, 0);
    job_compute_and_write(j);
}

static void job_user_item_cb(void *ud, const struct store_result *res)
{
    struct roster_job *j = ud;
    if (res->ok != 0) {
        job_fail(j, "wait", "internal-server-error");
        return;
    }
    if (res->nrows > 0)
        rstate_from_row(&j->u0, res, 0);
    if (!j->contact_exists) {
        job_compute_and_write(j);
        return;
    }
    const char *params[] = {j->clocal, j->cdomain, j->ubare};
    store_query(j->c2s->store, STORE_ROSTER_GET_ITEM, params, 3, job_contact_item_cb, j);
}

static void job_read_user(struct roster_job *j)
{
    const char *params[] = {j->ulocal, j->udomain, j->cbare};
    store_query(j->c2s->store, STORE_ROSTER_GET_ITEM, params, 3, job_user_item_cb, j);
}

static void job_contact_user_cb(void *ud, const struct store_result *res)
{
    struct roster_job *j = ud;
    if (res->ok != 0) {
        job_fail(j, "wait", "internal-server-error");
        return;
    }
    j->contact_exists = res->nrows > 0;
    job_read_user(j);
}

/* Starts a job for sess on contact (a prepared bare JID). */
static struct roster_job *job_new(struct session *sess, enum roster_op op, const char *contact)
{
    struct roster_job *j = xcalloc(1, sizeof *j);
    j->c2s = sess->conn->c2s;
    j->sid = sess->id;
    j->op = op;
    j->ulocal = xstrdup(sess->jid.local);
    j->udomain = xstrdup(sess->jid.domain);
    j->ubare = xstrdup(sess->bare);
    j->cbare = xstrdup(contact);
    if (feat_split(contact, &j->clocal, &j->cdomain) == -1) {
        j->cdomain = xstrdup("");
    }
    return j;
}

static void job_begin(struct roster_job *j)
{
    /* A roster set touches only the user's roster. Only a local account has a roster
     * to update; any other JID is one-sided. */
    if (j->set_only) {
        job_read_user(j);
    } else if (j->clocal && cfg_is_local_domain(j->c2s->cfg, j->cdomain)) {
        const char *params[] = {j->clocal, j->cdomain};
        store_query(j->c2s->store, STORE_USER_GET, params, 2, job_contact_user_cb, j);
    } else {
        job_read_user(j);
    }
}

/* Runs the job now, or after the session's jobs sent before it. */
static void job_start(struct session *sess, struct roster_job *j)
{
    struct roster_session *st = c2s_session_state(sess, &roster_module);
    int go = feat_serial_enter(&st->serial, j);
    if (go > 0) {
        job_begin(j);
    } else if (go < 0) {
        metric_inc(j->c2s->m_limit_refusals, "requests_waiting");
        session_send_error(sess, j->req ? j->req : j->pres, "wait", "resource-constraint",
                           "too many roster requests waiting");
        job_release(j);
    }
}

/* The session goes: its jobs still waiting are dropped (nobody to answer). */
static void roster_close(struct session *sess)
{
    struct roster_session *st = c2s_session_state(sess, &roster_module);
    feat_serial_drain(&st->serial, job_release);
}

/* --- roster set / remove ------------------------------------------------------------------ */

static void roster_set(struct session *sess, const struct xml_node *iq)
{
    struct xml_node *q = xml_child(iq, "query", NS_ROSTER);
    struct xml_node *item = xml_child(q, "item", NS_ROSTER);
    if (!item || xml_next(item, "item", NS_ROSTER)) {
        session_send_error(sess, iq, "modify", "bad-request", "exactly one item");
        return;
    }
    const char *jid = xml_attr(item, "jid");
    char *bare = jid ? jid_normalize(jid, false) : NULL;
    if (!bare || strchr(bare, '/')) {
        free(bare);
        session_send_error(sess, iq, "modify", "bad-request", "invalid JID");
        return;
    }
    if (strcmp(bare, sess->bare) == 0) {
        free(bare);
        session_send_error(sess, iq, "cancel", "not-allowed", "your own JID");
        return;
    }
    const char *subscription = xml_attr(item, "subscription");
    if (subscription && strcmp(subscription, "remove") == 0) {
        struct roster_job *j = job_new(sess, ROSTER_OP_REMOVE, bare);
        j->req = xml_clone(iq);
        free(bare);
        job_start(sess, j);
        return;
    }
    struct buf groups;
    buf_init(&groups);
    for (struct xml_node *g = xml_child(item, "group", NS_ROSTER); g; g = xml_next(g, "group", NS_ROSTER)) {
        char *t = xml_text(g);
        bool bad = !*t || strchr(t, '\n');
        bool dup = false;
        for (const char *p = groups.data, *end = groups.data + groups.len; !bad && p && p < end;) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
            dup = dup || (n == strlen(t) && memcmp(p, t, n) == 0);
            p = nl ? nl + 1 : end;
        }
        if (bad || dup) {
            free(t);
            buf_release(&groups);
            free(bare);
            session_send_error(sess, iq, "modify", bad ? "not-acceptable" : "bad-request",
                               bad ? "empty group name" : "duplicate group");
            return;
        }
        if (groups.len)
            buf_append(&groups, "\n", 1);
        buf_append(&groups, t, strlen(t));
        free(t);
    }
    struct roster_job *j = job_new(sess, ROSTER_OP_SET, bare);
    j->req = xml_clone(iq);
    const char *name = xml_attr(item, "name");
    j->set_name = xstrdup(name ? name : "");
    j->set_groups = xstrndup(groups.data ? groups.data : "", groups.len);
    buf_release(&groups);
    free(bare);
    j->set_only = true;
    job_start(sess, j);
}

static enum disp roster_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    const char *type = xml_attr(iq, "type");
    if (target && strcmp(target, sess->bare) != 0) {
        session_send_error(sess, iq, "auth", "forbidden", NULL);
        return DISP_DONE;
    }
    if (!xml_child(iq, "query", NS_ROSTER)) {
        session_send_error(sess, iq, "modify", "bad-request", NULL);
        return DISP_DONE;
    }
    if (strcmp(type, "get") == 0)
        roster_get(sess, iq);
    else
        roster_set(sess, iq);
    return DISP_DONE;
}

static bool is_subscription_type(const char *t)
{
    return strcmp(t, "subscribe") == 0 || strcmp(t, "subscribed") == 0 || strcmp(t, "unsubscribe") == 0 ||
           strcmp(t, "unsubscribed") == 0;
}

/* Subscription presence from the client (subscribe, subscribed, unsubscribe,
 * unsubscribed): a job on the contact's item, never routed as it is. */
static enum disp roster_presence_out(struct session *sess, Mk__StanzaKind kind, struct xml_node *pres)
{
    if (kind != MK__STANZA_KIND__STANZA_KIND_PRESENCE)
        return DISP_PASS;
    const char *type = xml_attr(pres, "type");
    if (!type || !is_subscription_type(type))
        return DISP_PASS;
    const char *to = xml_attr(pres, "to");
    if (to && !*to)
        to = NULL;
    char *contact = to ? jid_normalize(to, true) : NULL;
    if (!contact) {
        session_send_error(sess, pres, "modify", to ? "jid-malformed" : "bad-request", NULL);
        return DISP_DONE;
    }
    if (strcmp(contact, sess->bare) == 0) {
        free(contact);
        return DISP_DONE;
    }
    enum roster_op op;
    if (strcmp(type, "subscribe") == 0)
        op = ROSTER_OP_SUBSCRIBE;
    else if (strcmp(type, "subscribed") == 0)
        op = ROSTER_OP_SUBSCRIBED;
    else if (strcmp(type, "unsubscribe") == 0)
        op = ROSTER_OP_UNSUBSCRIBE;
    else
        op = ROSTER_OP_UNSUBSCRIBED;
    struct roster_job *j = job_new(sess, op, contact);
    j->pres = xml_clone(pres);
    free(contact);
    job_start(sess, j);
    return DISP_DONE;
}

/* --- pushes arriving from the router ------------------------------------------------------- */

/* A routed roster push reached sess: update the in-memory copy and write the push to
 * the client when it asked for the roster. */
static void roster_push_in(struct session *sess, struct xml_node *iq)
{
    struct xml_node *q = xml_child(iq, "query", NS_ROSTER);
    if (!q)
        return;
    for (struct xml_node *it = xml_child(q, "item", NS_ROSTER); it; it = xml_next(it, "item", NS_ROSTER)) {
        const char *jid = xml_attr(it, "jid");
        const char *sub = xml_attr(it, "subscription");
        if (!jid)
            continue;
        if (sub && strcmp(sub, "remove") == 0) {
            mem_remove(sess, jid);
            continue;
        }
        struct buf groups;
        buf_init(&groups);
        for (struct xml_node *g = xml_child(it, "group", NULL); g; g = xml_next(g, "group", NULL)) {
            char *t = xml_text(g);
            if (groups.len)
                buf_append(&groups, "\n", 1);
            buf_append(&groups, t, strlen(t));
            free(t);
        }
        char *gs = xstrndup(groups.data ? groups.data : "", groups.len);
        const char *ask = xml_attr(it, "ask");
        const char *approved = xml_attr(it, "approved");
        const char *name = xml_attr(it, "name");
        mem_set(sess, jid, name ? name : "", sub ? sub : "none", ask && strcmp(ask, "subscribe") == 0 ? "subscribe" : "",
                gs, approved && strcmp(approved, "true") == 0);
        free(gs);
        buf_release(&groups);
    }
    if (sess->interested) {
        struct xml_node *push = xml_clone(iq);
        xml_set_attr(push, "to", sess->full);
        conn_send(sess->conn, push);
        xml_free(&push);
    }
}

/* --- the module ---------------------------------------------------------------------------- */

static void roster_stream_features(struct conn *c, struct xml_node *features, bool authenticated)
{
    if (!authenticated)
        return;
    xml_add_child(features, "ver", NS_ROSTERVER);
    xml_add_child(features, "sub", NS_PREAPPROVAL);
}

static const struct c2s_iq_handler iqs[] = {
    {NS_ROSTER, 0, roster_iq, roster_push_in},
    {NULL, 0, NULL, NULL},
};

static const char *const server_features[] = {NS_ROSTER, NULL};

const struct c2s_module roster_module = {
    .name = "roster",
    .server_features = server_features,
    .stream_features = roster_stream_features,
    .session_state = sizeof(struct roster_session),
    .iqs = iqs,
    .session_open = roster_load,
    .session_close = roster_close,
    .stanza_out = roster_presence_out,
};
