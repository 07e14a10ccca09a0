/* c2s/session.c - bound sessions: registration with the router, stamping and routing client stanzas, delivering routed ones. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "component.h"
#include "env.h"
#include "log.h"
#include "feat.h"
#include "module.h"
#include "rchan.h"
#include "rchan_set.h"
#include "sm.h"
#include "util.h"

/* Session table by id ------------------------------------------------------------------- */

static size_t slot_of(const struct c2s *s, uint64_t id)
{
    return (size_t)(mk_hash64(&id, sizeof id, 0) & (s->sessions_cap - 1));
}

static void table_grow(struct c2s *s)
{
    size_t cap = s->sessions_cap ? s->sessions_cap * 2 : 1024;
    struct session **t = xcalloc(cap, sizeof *t);
    for (size_t i = 0; i < s->sessions_cap; i++) {
        struct session *n = s->sessions[i];
        while (n != NULL) {
            struct session *next = n->hnext;
            size_t k = (size_t)(mk_hash64(&n->id, sizeof n->id, 0) & (cap - 1));
            n->hnext = t[k];
            t[k] = n;
            n = next;
        }
    }
    free(s->sessions);
    s->sessions = t;
    s->sessions_cap = cap;
}

struct session *session_by_id(struct c2s *s, uint64_t id)
{
    if (s->sessions_cap == 0)
        return NULL;
    for (struct session *n = s->sessions[slot_of(s, id)]; n != NULL; n = n->hnext)
        if (n->id == id)
            return n;
    return NULL;
}

static void table_remove(struct c2s *s, struct session *sess)
{
    struct session **pp = &s->sessions[slot_of(s, sess->id)];
    while (*pp != NULL) {
        if (*pp == sess) {
            *pp = sess->hnext;
            s->nsessions--;
            return;
        }
        pp = &(*pp)->hnext;
    }
}

/* Router registration ------------------------------------------------------------------- */

static const char *router_of(struct c2s *s, const char *bare)
{
    const struct cfg_proc *p = cfg_shard(s->cfg, CFG_ROLE_ROUTER, bare);
    return p ? p->id : NULL;
}

static void fill_open(struct session *sess, Mk__SessionOpen *o)
{
    o->jid = sess->full;
    o->c2s = (char *)sess->conn->c2s->node->self->id;
    o->session_id = sess->id;
    o->priority = sess->priority;
    o->available = sess->available;
    o->interested = sess->interested;
    o->carbons = sess->carbons;
    o->login_us = (uint64_t)sess->login_us;
    o->confirm = sess->conn != NULL && sess->conn->bind_wait;
}

/* SessionOpen of sess to its router shard; update says it is not a login (see the proto).
 * elsewhere (a c2s id, or NULL for this one) names the c2s and id the session has there,
 * as a login newer than any (it takes the full JID). */
static void send_open_for(struct session *sess, bool update, const char *elsewhere, uint64_t id)
{
    struct c2s *s = sess->conn->c2s;
    const char *router = router_of(s, sess->bare);
    /* A graceful stop told the router the sessions here are gone (c2s/drain.c): an
     * update or a resync must not bring one back. */
    if (router == NULL || (s->stopping && elsewhere == NULL))
        return;
    Mk__SessionOpen o = MK__SESSION_OPEN__INIT;
    fill_open(sess, &o);
    o.update = update;
    if (elsewhere != NULL) {
        o.c2s = (char *)elsewhere;
        o.session_id = id;
        o.login_us = (uint64_t)mk_now_us();
        o.confirm = false;
    }
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_OPEN;
    e.session_open = &o;
    if (node_send(s->node, router, &e) == 0 && o.confirm)
        sess->confirm_asked = true;
}

void session_on_confirmed(struct c2s *s, const Mk__SessionConfirmed *sc)
{
    struct session *sess = session_by_id(s, sc->session_id);
    if (sess == NULL || sess->conn == NULL || sc->jid == NULL || strcmp(sc->jid, sess->full) != 0)
        return;
    stream_bind_confirmed(sess->conn);
}

static void send_open(struct session *sess, bool update)
{
    send_open_for(sess, update, NULL, 0);
}

void session_update_router(struct session *sess)
{
    send_open(sess, true);
}

void session_open_elsewhere(struct session *sess, const char *c2s_id, uint64_t id)
{
    send_open_for(sess, false, c2s_id, id);
}

void session_close_id(struct c2s *s, const char *full, uint64_t id, const char *reason)
{
    char *bare = jid_normalize(full, true);
    const char *router = bare != NULL ? router_of(s, bare) : NULL;
    if (router != NULL)
        session_send_close(s, router, full, id, reason);
    free(bare);
}

void session_resync_router(struct c2s *s, const char *router)
{
    size_t n = 0;
    for (size_t i = 0; i < s->sessions_cap; i++) {
        for (struct session *sess = s->sessions[i]; sess != NULL; sess = sess->hnext) {
            const char *r = router_of(s, sess->bare);
            if (r != NULL && strcmp(r, router) == 0) {
                send_open(sess, false);
                n++;
            }
        }
    }
    n += component_resync_router(s, router);
    /* The end of the list: the router holds routes until every c2s has said it. */
    Mk__Resync rs = MK__RESYNC__INIT;
    rs.router = (char *)router;
    rs.done = true;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_RESYNC;
    e.resync = &rs;
    node_send(s->node, router, &e);
    log_info("router_resync", "router=%s sessions=%zu", router, n);
}

/* One block for the strings a session keeps for its life: the full and bare JIDs
 * and the parts sess->jid points to (a bound JID has all three). */
static void session_strings(struct session *sess)
{
    struct jid *j = &sess->jid;
    size_t ll = strlen(j->local), ld = strlen(j->domain), lr = strlen(j->resource), lb = ll + 1 + ld;
    char *at = xmalloc(2 * (lb + 1) + lr + 1 + ll + 1 + ld + 1 + lr + 1);
    sess->full = at;
    at += sprintf(at, "%s@%s/%s", j->local, j->domain, j->resource) + 1;
    sess->bare = mk_put_str(&at, sess->full, lb);
    char *local = mk_put_str(&at, j->local, ll), *domain = mk_put_str(&at, j->domain, ld);
    char *res = mk_put_str(&at, j->resource, lr);
    jid_release(j);
    j->local = local;
    j->domain = domain;
    j->resource = res;
}

uint64_t session_id_reserve(struct c2s *s)
{
    return ++s->next_session_id;
}

struct session *session_new(struct c2s *s, struct conn *c, const char *resource, uint64_t id)
{
    struct session *sess = xcalloc(1, sizeof *sess);
    char *full = xasprintf("%s@%s/%s", c->user, c->domain, resource);
    char err[128];
    if (jid_parse(full, &sess->jid, err, sizeof err) == -1) {
        free(full);
        free(sess);
        return NULL;
    }
    free(full);
    session_strings(sess);
    sess->conn = c;
    sess->id = id != 0 ? id : session_id_reserve(s);
    sess->login_us = mk_now_us();
    if (s->nsessions + 1 > s->sessions_cap / 2)
        table_grow(s);
    size_t k = slot_of(s, sess->id);
    sess->hnext = s->sessions[k];
    s->sessions[k] = sess;
    s->nsessions++;
    c->sess = sess;
    metric_set(s->m_sessions, NULL, (double)s->nsessions);
    log_info("session_open", "conn=%llu jid=%s session=%llu", (unsigned long long)c->serial, sess->full,
             (unsigned long long)sess->id);
    send_open(sess, false);
    /* Presence waits until the modules' start-up loads are in: one hold for the
     * opening itself, released once every session_open hook has run. */
    sess->holds = 1;
    c2s_modules_session_open(sess);
    session_release(sess);
    return sess;
}

static void session_free(struct session *sess)
{
    free(sess->full);   /* the block of every string of the session (session_new) */
    xml_packed_free(&sess->presence);
    while (sess->roster != NULL) {
        struct roster_item *it = sess->roster;
        sess->roster = it->next;
        free(it->jid);
        free(it->name);
        free(it->subscription);
        free(it->ask);
        free(it->groups);
        free(it);
    }
    for (size_t i = 0; i < sess->ndirected; i++)
        free(sess->directed[i]);
    free(sess->directed);
    for (size_t i = 0; i < sess->nblocked; i++)
        free(sess->blocked[i]);
    free(sess->blocked);
    for (size_t i = 0; i < sess->nheld; i++)
        xml_free(&sess->held[i]);
    free(sess->held);
    free(sess);
}

void session_send_close(struct c2s *s, const char *router, const char *jid, uint64_t id, const char *reason)
{
    Mk__SessionClose cl = MK__SESSION_CLOSE__INIT;
    cl.jid = (char *)jid;
    cl.c2s = (char *)s->node->self->id;
    cl.session_id = id;
    cl.reason = (char *)reason;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_CLOSE;
    e.session_close = &cl;
    node_send(s->node, router, &e);
}

void session_end(struct session *sess, const char *reason)
{
    struct c2s *s = sess->conn->c2s;
    c2s_modules_session_close(sess);
    const char *router = router_of(s, sess->bare);
    if (router != NULL)
        session_send_close(s, router, sess->full, sess->id, reason);
    log_info("session_close", "jid=%s session=%llu reason=%s", sess->full, (unsigned long long)sess->id, reason);
    table_remove(s, sess);
    metric_set(s->m_sessions, NULL, (double)s->nsessions);
    if (sess->conn->sess == sess)
        sess->conn->sess = NULL;
    session_free(sess);
}

void session_after_ack(struct session *sess, size_t n, void (*cb)(void *ud, bool acked), void *ud)
{
    sm_after_ack(sess, n, cb, ud);
}

/* Stanza errors --------------------------------------------------------------------------- */

struct xml_node *stanza_error_reply(const struct xml_node *stanza, const char *type, const char *condition,
                                    const char *text)
{
    const char *st = xml_attr(stanza, "type");
    if (st != NULL && strcmp(st, "error") == 0)
        return NULL;
    /* RFC 6120 8.3.1: the error carries the original payload (we keep it for
     * messages and presence, not for IQs whose payload may be large). */
    struct xml_node *r = strcmp(stanza->name, "iq") == 0 ? xml_node_new("iq", XML_NS_CLIENT) : xml_clone(stanza);
    xml_set_attr(r, "type", "error");
    const char *from = xml_attr(stanza, "from");
    const char *to = xml_attr(stanza, "to");
    const char *id = xml_attr(stanza, "id");
    char *f = from ? xstrdup(from) : NULL;
    char *t = to ? xstrdup(to) : NULL;
    xml_set_attr(r, "to", f);
    xml_set_attr(r, "from", t);
    if (id != NULL)
        xml_set_attr(r, "id", id);
    free(f);
    free(t);
    struct xml_node *e = xml_add_child(r, "error", NULL);
    xml_set_attr(e, "type", type);
    xml_add_child(e, condition, NS_STANZAS);
    if (text != NULL) {
        struct xml_node *tx = xml_add_child(e, "text", NS_STANZAS);
        xml_set_attr_ns(tx, XML_NS_XML, "lang", "en");
        xml_add_text(tx, text, strlen(text));
    }
    return r;
}

void session_send_error(struct session *sess, const struct xml_node *stanza, const char *type, const char *condition,
                        const char *text)
{
    struct xml_node *r = stanza_error_reply(stanza, type, condition, text);
    if (r == NULL)
        return;
    if (xml_attr(r, "from") == NULL)
        xml_set_attr(r, "from", sess->bare);
    xml_set_attr(r, "to", sess->full);
    conn_send(sess->conn, r);
    xml_free(&r);
}

struct xml_node *iq_result(const struct xml_node *req)
{
    struct xml_node *r = xml_node_new("iq", XML_NS_CLIENT);
    xml_set_attr(r, "type", "result");
    const char *id = xml_attr(req, "id");
    if (id != NULL)
        xml_set_attr(r, "id", id);
    const char *from = xml_attr(req, "from");
    const char *to = xml_attr(req, "to");
    if (to != NULL)
        xml_set_attr(r, "from", to);
    if (from != NULL)
        xml_set_attr(r, "to", from);
    return r;
}

/* Routing ------------------------------------------------------------------------------------ */

static Mk__StanzaKind kind_of(const char *name)
{
    if (strcmp(name, "message") == 0)
        return MK__STANZA_KIND__STANZA_KIND_MESSAGE;
    if (strcmp(name, "presence") == 0)
        return MK__STANZA_KIND__STANZA_KIND_PRESENCE;
    return MK__STANZA_KIND__STANZA_KIND_IQ;
}

static int route_xml(struct c2s *s, Mk__StanzaKind kind, const char *from, const char *to, const char *type,
                     const char *id, const char *xml, size_t xml_len, const char *body, bool no_store, uint64_t mam_id,
                     bool carbon, bool carbon_sent)
{
    char *bare = jid_normalize(to, true);
    if (bare == NULL)
        return 0;
    struct rchan_tx *tx = rchan_set_shard(s->routes, bare);
    free(bare);
    if (tx == NULL)
        return 0;
    Mk__Route r;
    env_route_init(&r, kind, from, to, type, id, xml, xml_len);
    r.has_body = body != NULL;
    r.body = (char *)(body != NULL && s->route_bodies ? body : "");
    r.no_store = no_store;
    r.mam_id = mam_id;
    r.carbon_eligible = carbon;
    r.carbon_sent = carbon && carbon_sent;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
    e.route = &r;
    if (rchan_send(tx, &e) == 0) {
        metric_inc(s->m_routes, "backpressure");
        errno = EAGAIN;
        return -1;
    }
    metric_inc(s->m_routes, "sent");
    return 0;
}

/* The first <body/> of a message that has text, or NULL. */
static const struct xml_node *message_body(const struct xml_node *st)
{
    for (struct xml_node *b = xml_child(st, "body", XML_NS_CLIENT); b != NULL; b = xml_next(b, "body", XML_NS_CLIENT)) {
        for (struct xml_node *t = b->first_child; t != NULL; t = t->next)
            if (t->name == NULL && t->text_len > 0)
                return b;
    }
    return NULL;
}

static int route_stanza(struct c2s *s, const struct xml_node *stanza, uint64_t mam_id, bool carbon, bool carbon_sent)
{
    struct buf b;
    buf_init(&b);
    xml_serialize(stanza, XML_NS_CLIENT, &b);
    bool message = strcmp(stanza->name, "message") == 0;
    const struct xml_node *bn = message ? message_body(stanza) : NULL;
    /* Its text only when a router's push event needs it (s->route_bodies); otherwise
     * any non-NULL string says "has a body". */
    char *body = bn != NULL && s->route_bodies ? xml_text(bn) : NULL;
    int rc = route_xml(s, kind_of(stanza->name), xml_attr(stanza, "from"), xml_attr(stanza, "to"),
                       xml_attr(stanza, "type"), xml_attr(stanza, "id"), b.data, b.len,
                       body != NULL ? body : bn != NULL ? "" : NULL, message && feat_no_store(stanza), mam_id,
                       message && carbon, carbon_sent);
    free(body);
    buf_release(&b);
    return rc;
}

int session_route(struct c2s *s, const struct xml_node *stanza)
{
    return route_stanza(s, stanza, 0, false, false);
}

/* True when the router shard of the stanza's to takes no Route now. Only parses the
 * address when some shard is full: nothing extra per message otherwise. */
static bool route_full(struct c2s *s, const struct xml_node *st)
{
    if (!rchan_set_full(s->routes))
        return false;
    const char *to = xml_attr(st, "to");
    char *bare = to != NULL ? jid_normalize(to, true) : NULL;
    struct rchan_tx *tx = bare != NULL ? rchan_set_shard(s->routes, bare) : NULL;
    free(bare);
    return tx != NULL && rchan_tx_full(tx);
}

/* A client's own stanza the router shard cannot take now: the client is told to wait
 * (back-pressure), never left to think it was sent. */
static void refuse_busy(struct session *sess, const struct xml_node *st)
{
    log_warn("route_backpressure", "jid=%s", sess->full);
    session_send_error(sess, st, "wait", "resource-constraint", "the server is busy; send it again later");
}

/* Client presence, once the session's start-up loads are in. Borrows pres. */
static void presence_out(struct session *sess, struct xml_node *pres)
{
    if (c2s_modules_stanza_out(sess, MK__STANZA_KIND__STANZA_KIND_PRESENCE, pres) == DISP_PASS &&
        xml_attr(pres, "to") != NULL && session_route(sess->conn->c2s, pres) == -1)
        refuse_busy(sess, pres);
}

void session_hold(struct session *sess)
{
    sess->holds++;
}

void session_release(struct session *sess)
{
    if (sess->holds == 0 || --sess->holds > 0)
        return;
    struct xml_node **held = sess->held;
    size_t n = sess->nheld;
    struct conn *c = sess->conn;
    sess->held = NULL;
    sess->nheld = 0;
    for (size_t i = 0; i < n; i++) {
        if (!c->closed && c->sess == sess)
            presence_out(sess, held[i]);
        xml_free(&held[i]);
    }
    free(held);
}

/* IQs ----------------------------------------------------------------------------------------- */

static void iq_dispatch(struct session *sess, const struct c2s_iq_handler *h, const struct xml_node *iq,
                        const char *target)
{
    if (h->handle(sess, iq, target) == DISP_PASS)
        session_send_error(sess, iq, "cancel", "service-unavailable", NULL);
}

static void account_checked_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_answerable(ctx, res);
    if (sess) {
        const struct c2s_iq_handler *h = c2s_modules_iq(xml_first_elem(ctx->req)->ns);
        if (res->nrows == 0 || !h)
            session_send_error(sess, ctx->req, "cancel", "service-unavailable", NULL);  /* RFC 6121 8.5.1 */
        else
            iq_dispatch(sess, h, ctx->req, ctx->arg);
    }
    feat_ctx_free(&ctx);
}

/* An IQ from the client (type and id checked, from stamped, to prepared): to a full JID
 * or another server it is routed; to the server or a local account the module answering
 * its payload's namespace has it. */
static void session_iq(struct session *sess, struct xml_node *iq, const char *type)
{
    struct c2s *s = sess->conn->c2s;
    const char *to = xml_attr(iq, "to");
    char *target = NULL;        /* bare JID of an account, NULL for the server itself */
    bool no_to = !to || !*to;
    bool request = strcmp(type, "get") == 0 || strcmp(type, "set") == 0;

    if (!no_to) {
        struct jid j;
        char err[128];
        if (jid_parse(to, &j, err, sizeof err) == -1) {
            session_send_error(sess, iq, "modify", "jid-malformed", NULL);
            return;
        }
        if (j.resource || !cfg_is_local_domain(s->cfg, j.domain)) {
            jid_release(&j);
            if (session_route(s, iq) == -1)
                refuse_busy(sess, iq);
            return;
        }
        if (j.local)
            target = jid_to_string(&j, true);
        jid_release(&j);
    }
    if (!request) {
        /* Results and errors to the server or an account (answers to pushes) end here; an
         * answer to the server may be one a module asked for (XEP-0115 disco#info). */
        if (target == NULL)
            c2s_modules_iq_answer(sess, iq);
        goto out;
    }
    struct xml_node *q = xml_first_elem(iq);
    if (!q) {
        session_send_error(sess, iq, "modify", "bad-request", NULL);
        goto out;
    }
    const struct c2s_iq_handler *h = c2s_modules_iq(q->ns);
    if (!h || !h->handle) {
        session_send_error(sess, iq, "cancel", "service-unavailable", NULL);
        goto out;
    }
    if (no_to && !(h->flags & C2S_IQ_SERVER_DEFAULT))
        target = xstrdup(sess->bare);   /* RFC 6120 10.3.3: the user's own account */
    if (target && (h->flags & C2S_IQ_CHECK_ACCOUNT) && strcmp(target, sess->bare) != 0) {
        /* Another local account: answer only if it exists. */
        char *local, *domain;
        if (feat_split(target, &local, &domain) == -1) {
            session_send_error(sess, iq, "modify", "jid-malformed", NULL);
            goto out;
        }
        struct feat_ctx *ctx = feat_ctx_new(sess, iq);
        ctx->arg = target;
        target = NULL;
        const char *params[] = {local, domain};
        store_query(s->store, STORE_USER_GET, params, 2, account_checked_cb, ctx);
        free(local);
        free(domain);
        goto out;
    }
    iq_dispatch(sess, h, iq, target);
out:
    free(target);
}

/* Server pushes -------------------------------------------------------------------------------- */

/* An internal push: an IQ set from the user's bare JID to itself (only the server makes
 * those: a client's from is always its full JID). Never delivered as it is: the module
 * of its namespace decides what the client sees. */
static void inbound_push(struct session *sess, const Mk__Route *r)
{
    char err[128];
    struct xml_node *iq = feat_parse_routed(r, err, sizeof err);
    if (!iq) {
        log_warn("push_parse_failed", "session=%llu error=\"%s\"", (unsigned long long)sess->id, err);
        return;
    }
    struct xml_node *q = xml_first_elem(iq);
    const struct c2s_iq_handler *h = q ? c2s_modules_iq(q->ns) : NULL;
    if (h && h->push)
        h->push(sess, iq);
    xml_free(&iq);
}

/* Whether a routed stanza is written to sess. */
static bool inbound(struct session *sess, const Mk__Route *r)
{
    const char *from = r->from ? r->from : "";
    if (r->kind == MK__STANZA_KIND__STANZA_KIND_IQ && strcmp(from, sess->bare) == 0 && r->to &&
        strcmp(r->to, sess->bare) == 0 && r->type && strcmp(r->type, "set") == 0) {
        inbound_push(sess, r);
        return false;
    }
    return c2s_modules_stanza_in(sess, r);
}

void session_on_stanza(struct session *sess, struct xml_node **np)
{
    struct xml_node *st = *np;
    struct conn *c = sess->conn;
    struct c2s *s = c->c2s;
    /* RFC 6120 8.1.2.1: a client may only speak as itself. */
    const char *from = xml_attr(st, "from");
    if (from != NULL) {
        struct jid fj;
        char err[128];
        bool ok = jid_parse(from, &fj, err, sizeof err) == 0 &&
                  (jid_equal(&fj, &sess->jid) || (fj.resource == NULL && jid_bare_equal(&fj, &sess->jid)));
        if (ok)
            jid_release(&fj);
        if (!ok) {
            log_info("invalid_from", "jid=%s", sess->full);
            conn_stream_error(c, "invalid-from", "a client may only send stanzas from its own address");
            return;
        }
    }
    xml_set_attr(st, "from", sess->full);
    const char *to = xml_attr(st, "to");
    if (to != NULL) {
        struct jid tj;
        char err[160];
        if (jid_parse(to, &tj, err, sizeof err) == -1) {
            session_send_error(sess, st, "modify", "jid-malformed", err);
            return;
        }
        char *prepared = jid_to_string(&tj, false);
        xml_set_attr(st, "to", prepared);
        free(prepared);
        jid_release(&tj);
    }
    if (strcmp(st->name, "iq") == 0) {
        const char *type = xml_attr(st, "type");
        if (type == NULL || (strcmp(type, "get") && strcmp(type, "set") && strcmp(type, "result") &&
                             strcmp(type, "error"))) {
            session_send_error(sess, st, "modify", "bad-request", "an iq needs a type");
            return;
        }
        if (xml_attr(st, "id") == NULL) {
            session_send_error(sess, st, "modify", "bad-request", "an iq needs an id");
            return;
        }
        session_iq(sess, st, type);
        return;
    }
    if (strcmp(st->name, "presence") == 0) {
        if (sess->holds > 0) {
            /* The modules need their start-up state (roster, block list) for presence:
             * keep the order, handle it once loaded (session_release). A client that
             * sends more than limits.max_held_presence meanwhile breaks the server's
             * policy: dropping some would lose presence silently (a MUC join, an
             * unavailable), so the stream ends, and the client knows why. */
            if (sess->nheld >= s->cfg->limits.max_held_presence) {
                log_warn("held_presence_limit", "jid=%s held=%zu", sess->full, sess->nheld);
                metric_inc(s->m_limit_refusals, "held_presence");
                conn_stream_error(c, "policy-violation", "too much presence before the roster was loaded");
                return;
            }
            sess->held = xrealloc(sess->held, (sess->nheld + 1) * sizeof *sess->held);
            sess->held[sess->nheld++] = xml_clone(st);
            return;
        }
        presence_out(sess, st);
        return;
    }
    /* message */
    if (xml_attr(st, "to") == NULL)
        xml_set_attr(st, "to", sess->bare);   /* RFC 6120 10.3.1: no 'to' means one's own account */
    /* Checked before the modules write the sender's archive copy: a message the router
     * cannot take is refused whole (only its own shard counts). */
    if (route_full(s, st)) {
        refuse_busy(sess, st);
        return;
    }
    /* The mam module's stanza_out hook writes the sender's archive copy and leaves its id
     * here: the Route carries it for the recipient's copy (stored once if re-sent). */
    s->out_mam_id = 0;
    s->out_carbon = s->out_carbon_sent = false;
    if (c2s_modules_stanza_out(sess, MK__STANZA_KIND__STANZA_KIND_MESSAGE, st) == DISP_PASS &&
        route_stanza(s, st, s->out_mam_id, s->out_carbon, s->out_carbon_sent) == -1)
        refuse_busy(sess, st);
    s->out_mam_id = 0;
    s->out_carbon = s->out_carbon_sent = false;
}

/* XEP-0280: the routed message r wrapped for sess (from its bare JID to its full JID) in
 * <received/> or <sent/> and <forwarded/>, into out, and the Route describing it into w.
 * The inner message's bytes are copied as they came; only its namespace is declared,
 * since inside <forwarded/> jabber:client is no longer the default. */
static void carbon_wrap(const struct session *sess, const Mk__Route *r, Mk__CarbonCopy kind, struct buf *out,
                        Mk__Route *w)
{
    static const char open_tag[] = "<message";
    const char *el = kind == MK__CARBON_COPY__CARBON_COPY_SENT ? "sent" : "received";
    const char *type = r->type != NULL && *r->type != '\0' ? r->type : NULL;
    buf_append_str(out, "<message from='");
    xml_escape(out, sess->bare, strlen(sess->bare));
    buf_append_str(out, "' to='");
    xml_escape(out, sess->full, strlen(sess->full));
    if (type != NULL) {
        buf_append_str(out, "' type='");
        xml_escape(out, type, strlen(type));
    }
    buf_printf(out, "'><%s xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>", el);
    const char *x = (const char *)r->xml.data;
    size_t n = r->xml.len, ol = sizeof open_tag - 1;
    if (n > ol && memcmp(x, open_tag, ol) == 0 && (x[ol] == ' ' || x[ol] == '>' || x[ol] == '/')) {
        buf_append(out, open_tag, ol);
        buf_append_str(out, " xmlns='jabber:client'");
        buf_append(out, x + ol, n - ol);
    } else {
        buf_append(out, x, n);
    }
    buf_printf(out, "</forwarded></%s></message>", el);
    *w = *r;
    w->from = sess->bare;
    w->to = sess->full;
    w->xml.data = (uint8_t *)out->data;
    w->xml.len = out->len;
}

/* A Deliver for a session that ended after the router chose it (its SessionClose was
 * on the way): routed again, so that the router, which has the close by then (same bus,
 * in order), stores or bounces it as for any unavailable resource instead of it being
 * lost here. The hop count bounds the trips. */
int session_reroute(struct c2s *s, const Mk__Route *r)
{
    if (r->kind == MK__STANZA_KIND__STANZA_KIND_PRESENCE || r->hops >= C2S_REROUTE_MAX_HOPS || r->to == NULL)
        return 0;
    char *bare = jid_normalize(r->to, true);
    struct rchan_tx *tx = bare != NULL ? rchan_set_shard(s->routes, bare) : NULL;
    free(bare);
    if (tx == NULL)
        return 0;
    Mk__Route copy = *r;
    copy.hops = r->hops + 1;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
    e.route = &copy;
    bool sent = rchan_send(tx, &e) != 0;
    metric_inc(s->m_routes, sent ? "rerouted" : "backpressure");
    /* A custody copy's CustodyDone goes to the same router after this Route (the shard of
     * the same bare JID, one ordered bus): if this c2s dies before both are out, the
     * router still has its copy. */
    log_debug("deliver_rerouted", "to=%s sent=%d", r->to, sent);
    if (!sent) {
        errno = EAGAIN;
        return -1;
    }
    return 0;
}

/* Stanza j of d (0: its route, then its more) for target k: as it is, or a fan-out's
 * template made whole for that target's JID (in xml, described by *w). NULL when there
 * is no such stanza or the template is malformed. */
static const Mk__Route *deliver_stanza(const Mk__Deliver *d, size_t j, size_t k, struct buf *xml, Mk__Route *w)
{
    const Mk__Route *r = j == 0 ? d->route : j - 1 < d->n_more ? d->more[j - 1] : NULL;
    if (r == NULL || d->n_session_jids == 0)
        return r;
    if (k >= d->n_session_jids || env_route_fill(r, d->session_jids[k], xml, w) == -1)
        return NULL;
    return w;
}

int session_reroute_deliver(struct c2s *s, const Mk__Deliver *d, size_t k)
{
    if (d->n_session_jids == 0)
        return d->route != NULL ? session_reroute(s, d->route) : 0;
    struct buf xml;
    buf_init(&xml);
    int rc = 0;
    for (size_t j = 0; j <= d->n_more; j++) {
        Mk__Route w;
        const Mk__Route *r = deliver_stanza(d, j, k, &xml, &w);
        if (r != NULL && session_reroute(s, r) == -1)
            rc = -1;
    }
    buf_release(&xml);
    if (rc == -1)
        errno = EAGAIN;
    return rc;
}

static const char *kind_label(Mk__StanzaKind kind)
{
    return kind == MK__STANZA_KIND__STANZA_KIND_MESSAGE ? "message"
           : kind == MK__STANZA_KIND__STANZA_KIND_PRESENCE ? "presence"
                                                          : "iq";
}

/* Writes r's bytes (as they came: no parse, no copy beyond the output buffer) to sess.
 * Stream management takes the custody id (and the archive id its offline row would take)
 * with its copy, done when acknowledged; otherwise the stanza is done once in the output
 * buffer. */
static void write_stanza(struct c2s *s, struct session *sess, const Mk__Route *r, uint64_t custody, uint64_t mam_id)
{
    s->deliver_custody = custody;
    s->deliver_mam_id = mam_id;
    conn_write(sess->conn, r->xml.data, r->xml.len);
    session_custody_done(s, s->deliver_custody);
    s->deliver_custody = 0;
    s->deliver_mam_id = 0;
    metric_inc(s->m_stanzas_out, kind_label(r->kind));
}

/* A fan-out's stanzas to sess (target k of d), in order; custody is done with the last. */
static void deliver_fanout(struct c2s *s, struct session *sess, const Mk__Deliver *d, size_t k, struct buf *xml)
{
    size_t nst = 1 + d->n_more;
    for (size_t j = 0; j < nst; j++) {
        uint64_t custody = j + 1 == nst ? d->custody_id : 0;
        Mk__Route w;
        const Mk__Route *r = deliver_stanza(d, j, k, xml, &w);
        if (r == NULL || !inbound(sess, r)) {
            session_custody_done(s, custody);
            continue;
        }
        write_stanza(s, sess, r, custody, 0);
    }
}

void session_on_deliver(struct c2s *s, Mk__Deliver *d)
{
    if (d->route == NULL || d->route->xml.data == NULL)
        return;
    bool fanout = d->n_session_jids > 0;
    if ((fanout && d->n_session_jids != d->n_session_ids) || (!fanout && (d->route->to_at != 0 || d->n_more > 0))) {
        log_warn("deliver_malformed", "sessions=%zu jids=%zu more=%zu", d->n_session_ids, d->n_session_jids,
                 d->n_more);
        return;
    }
    bool carbon = d->carbon != MK__CARBON_COPY__CARBON_COPY_NONE;
    uint64_t custody = d->custody_id;   /* each target session below reports it done once */
    struct buf wrapped;
    buf_init(&wrapped);
    for (size_t i = 0; i < d->n_session_ids; i++) {
        struct session *sess = session_by_id(s, d->session_ids[i]);
        if (sess == NULL) {
            if (carbon || fanout || !component_deliver(s, d->session_ids[i], d->route)) {
                /* A session resumed here whose holder already moved its route: the parked
                 * copy reports its custody id when written or routed again. */
                if (sm_park_deliver(s, d->session_ids[i], d))
                    continue;
                /* Not sent (back-pressure): the router's copy stays, routed again if this
                 * c2s restarts. */
                if (!carbon && session_reroute_deliver(s, d, i) == -1)
                    continue;
            }
            session_custody_done(s, custody);
            continue;
        }
        if (sess->handed_over) {
            /* Resumed on another c2s: the router has its new route by now (or soon). */
            if (carbon || session_reroute_deliver(s, d, i) == 0)
                session_custody_done(s, custody);
            continue;
        }
        if (sess->conn->closed) {
            session_custody_done(s, custody);
            continue;
        }
        if (fanout) {
            deliver_fanout(s, sess, d, i, &wrapped);
            continue;
        }
        const Mk__Route *r = d->route;
        Mk__Route w;
        if (carbon) {
            /* Carbons disabled since the router decided, or (a received copy) from a sender
             * the account blocks: the original was refused by the same rule. */
            if (!sess->carbons || d->route->kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE ||
                (d->carbon == MK__CARBON_COPY__CARBON_COPY_RECEIVED && d->route->from != NULL &&
                 feat_blocked(sess, d->route->from)))
                continue;
            wrapped.len = 0;
            carbon_wrap(sess, d->route, d->carbon, &wrapped, &w);
            r = &w;
        }
        if (!inbound(sess, r)) {
            session_custody_done(s, custody);
            continue;
        }
        write_stanza(s, sess, r, custody, d->archive_id != 0 ? d->archive_id : d->route->mam_id);
        if (d->archive_fence != NULL && d->archive_fence->seq != 0)
            c2s_mam_fence_from(&sess->mam_delivered, d->archive_fence);
    }
    buf_release(&wrapped);
}

static void custody_ride_cb(struct ev_loop *loop, ev_prepare *w, int revents);

static void custody_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    session_custody_flush(w->data);
}

void session_custody_done(struct c2s *s, uint64_t id)
{
    if (id == 0)
        return;
    if (s->ncustody_done == s->custody_done_cap) {
        s->custody_done_cap = s->custody_done_cap ? s->custody_done_cap * 2 : 256;
        s->custody_done = xrealloc(s->custody_done, s->custody_done_cap * sizeof *s->custody_done);
    }
    s->custody_done[s->ncustody_done++] = id;
    if (s->ncustody_done >= C2S_CUSTODY_BATCH) {
        session_custody_flush(s);
    } else if (!ev_is_active(&s->custody_w)) {
        ev_timer_init(&s->custody_w, custody_timer_cb, s->cfg->limits.custody_report_ms / 1000., 0.);
        s->custody_w.data = s;
        ev_timer_start(s->loop, &s->custody_w);
        /* Before the bus makes this turn's frames (rchan's ack ride runs at the same point). */
        ev_prepare_init(&s->custody_ride_w, custody_ride_cb);
        s->custody_ride_w.data = s;
        ev_set_priority(&s->custody_ride_w, EV_MINPRI + 1);
        ev_prepare_start(s->loop, &s->custody_ride_w);
    }
}

/* One CustodyDone (taken_from: NULL, or a c2s) with ids (n, all for router prefix) to
 * that router. */
/* The router of custody id prefix (its index + 1), or NULL. */
static const struct cfg_proc *custody_router(const struct c2s *s, uint64_t prefix)
{
    char id[32];
    snprintf(id, sizeof id, "router.%llu", (unsigned long long)(prefix - 1));
    const struct cfg_proc *p = prefix > 0 ? cfg_find_proc(s->cfg, id) : NULL;
    return p != NULL && p->role == CFG_ROLE_ROUTER ? p : NULL;
}

/* Moves the ids of ids[0]'s router (the top 16 bits) to the front of ids (n > 0): few
 * routers, so a pass per router. Returns how many. */
static size_t custody_group(uint64_t *ids, size_t n)
{
    uint64_t prefix = ids[0] >> 48;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >> 48 == prefix) {
            uint64_t t = ids[k];
            ids[k++] = ids[i];
            ids[i] = t;
        }
    return k;
}

static void custody_send(struct c2s *s, uint64_t prefix, const char *taken_from, uint64_t *ids, size_t n)
{
    const struct cfg_proc *p = custody_router(s, prefix);
    if (p == NULL)
        return;
    Mk__CustodyDone cd = MK__CUSTODY_DONE__INIT;
    cd.n_ids = n;
    cd.ids = ids;
    cd.taken_from = (char *)(taken_from != NULL ? taken_from : "");
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_CUSTODY_DONE;
    e.custody_done = &cd;
    node_send(s->node, p->id, &e);   /* lost: the router keeps the copy (a duplicate after a restart, at worst) */
}

void session_custody_take_over(struct c2s *s, const char *taken_from, const uint64_t *ids, size_t n)
{
    if (n == 0 || taken_from == NULL)
        return;
    /* Grouped by router as session_custody_flush does, on a copy (ids is borrowed). */
    uint64_t *v = xmalloc(n * sizeof *v);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] != 0)
            v[m++] = ids[i];
    while (m > 0) {
        uint64_t prefix = v[0] >> 48;
        size_t k = custody_group(v, m);
        custody_send(s, prefix, taken_from, v, k);
        memmove(v, v + k, (m - k) * sizeof *v);
        m -= k;
    }
    free(v);
}

static void custody_alive_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct c2s *s = w->data;
    for (size_t i = 0; i < s->cfg->nprocs; i++)
        if (s->cfg->procs[i].role == CFG_ROLE_ROUTER)
            custody_send(s, (uint64_t)s->cfg->procs[i].index + 1, NULL, NULL, 0);
}

void session_custody_alive_start(struct c2s *s)
{
    unsigned t = s->cfg->limits.custody_timeout;
    if (t == 0)
        return;
    ev_timer_init(&s->custody_alive_w, custody_alive_cb, t / 3.0, t / 3.0);
    s->custody_alive_w.data = s;
    ev_timer_start(s->loop, &s->custody_alive_w);
}

void session_custody_alive_stop(struct c2s *s)
{
    if (ev_is_active(&s->custody_alive_w))
        ev_timer_stop(s->loop, &s->custody_alive_w);
}

/* Reports the done ids of the routers that get a frame this turn anyway, or of every
 * router when all is true; the others' ids stay (at the front of the array). */
static void custody_report(struct c2s *s, bool all)
{
    size_t n = s->ncustody_done, kept = 0;
    while (kept < n) {
        uint64_t *rest = s->custody_done + kept;
        uint64_t prefix = rest[0] >> 48;
        size_t k = custody_group(rest, n - kept);
        const struct cfg_proc *p = custody_router(s, prefix);
        if (p != NULL && !all && !bus_batch_waiting(s->node->bus, p->id)) {
            kept += k;   /* in a later frame, or by the timer */
            continue;
        }
        custody_send(s, prefix, NULL, rest, k);
        memmove(rest, rest + k, (n - kept - k) * sizeof *rest);
        n -= k;
    }
    s->ncustody_done = n;
}

static void custody_ride_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    struct c2s *s = w->data;
    custody_report(s, false);
    if (s->ncustody_done == 0)
        session_custody_flush(s);   /* stops the timer and this, gives a burst's array back */
}

void session_custody_flush(struct c2s *s)
{
    if (ev_is_active(&s->custody_w))
        ev_timer_stop(s->loop, &s->custody_w);
    if (ev_is_active(&s->custody_ride_w))
        ev_prepare_stop(s->loop, &s->custody_ride_w);
    custody_report(s, true);
    s->ncustody_done = 0;
    if (s->custody_done_cap > 2 * C2S_CUSTODY_BATCH) {
        /* A burst's array goes back once it is sent. */
        free(s->custody_done);
        s->custody_done = NULL;
        s->custody_done_cap = 0;
    }
}
