/* c2s/iq.c - IQs the server answers: disco, version, ping, time, vCard, private storage, blocking, last activity. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>

#include "c2s.h"
#include "features.h"
#include "mam_c2s.h"
#include "log.h"
#include "util.h"

static const char *col(const struct store_result *res, size_t row, size_t c)
{
    return c < res->ncols ? res->vals[row * res->ncols + c] : NULL;
}

static void error(struct session *sess, const struct xml_node *iq, const char *type, const char *cond)
{
    session_send_error(sess, iq, type, cond, NULL);
}

/* The start of every store callback answering an IQ: the session if it is still
 * there and the query worked; on a store failure the client gets internal-server-error.
 * NULL means: nothing more to do but free ctx. */
static struct session *answerable(struct feat_ctx *ctx, const struct store_result *res)
{
    struct session *sess = feat_ctx_session(ctx);
    if (sess != NULL && res->ok != 0) {
        error(sess, ctx->req, "wait", "internal-server-error");
        return NULL;
    }
    return sess;
}

/* --- disco, version, ping, time ------------------------------------------------------ */

static void add_feature(struct xml_node *q, const char *var)
{
    xml_set_attr(xml_add_child(q, "feature", NS_DISCO_INFO), "var", var);
}

static void add_identity(struct xml_node *q, const char *category, const char *type, const char *name)
{
    struct xml_node *id = xml_add_child(q, "identity", NS_DISCO_INFO);
    xml_set_attr(id, "category", category);
    xml_set_attr(id, "type", type);
    if (name)
        xml_set_attr(id, "name", name);
}

static void disco_info(struct session *sess, const struct xml_node *iq, const struct xml_node *q, bool server)
{
    if (xml_attr(q, "node")) {
        error(sess, iq, "cancel", "item-not-found");
        return;
    }
    struct xml_node *r = xml_node_new("query", NS_DISCO_INFO);
    if (server) {
        /* Only what this server really answers. */
        static const char *const features[] = {
            NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, NS_VERSION, NS_TIME, NS_VCARD, NS_PRIVATE,
            NS_BLOCKING, NS_LAST, NS_ROSTER, NS_MSGOFFLINE, NS_DELAY,
        };
        add_identity(r, "server", "im", MK_SERVER_NAME);
        for (size_t i = 0; i < MK_ARRAY_LEN(features); i++)
            add_feature(r, features[i]);
        if (sess->conn->c2s->cfg->modules.register_enabled)
            add_feature(r, NS_REGISTER);
    } else {
        add_identity(r, "account", "registered", NULL);
        add_feature(r, NS_DISCO_INFO);
        add_feature(r, NS_DISCO_ITEMS);
        if (sess->conn->c2s->cfg->modules.mam_enabled)
            mam_c2s_disco_features(r);
    }
    feat_reply(sess, iq, r);
}

static void version(struct session *sess, const struct xml_node *iq)
{
    struct xml_node *r = xml_node_new("query", NS_VERSION);
    xml_add_text(xml_add_child(r, "name", NS_VERSION), MK_SERVER_NAME, strlen(MK_SERVER_NAME));
    xml_add_text(xml_add_child(r, "version", NS_VERSION), MK_SERVER_VERSION, strlen(MK_SERVER_VERSION));
    struct utsname u;
    if (uname(&u) == 0)
        xml_add_text(xml_add_child(r, "os", NS_VERSION), u.sysname, strlen(u.sysname));
    feat_reply(sess, iq, r);
}

static void entity_time(struct session *sess, const struct xml_node *iq)
{
    time_t now = time(NULL);
    struct tm tm;
    char utc[32];
    gmtime_r(&now, &tm);
    strftime(utc, sizeof utc, "%Y-%m-%dT%H:%M:%SZ", &tm);
    struct xml_node *r = xml_node_new("time", NS_TIME);
    xml_add_text(xml_add_child(r, "tzo", NS_TIME), "+00:00", 6);
    xml_add_text(xml_add_child(r, "utc", NS_TIME), utc, strlen(utc));
    feat_reply(sess, iq, r);
}

/* --- vCard (XEP-0054) ------------------------------------------------------------------ */

static void vcard_get_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = answerable(ctx, res);
    if (!sess)
        goto out;
    struct xml_node *v = NULL;
    if (res->nrows > 0 && col(res, 0, 0)) {
        char err[128];
        v = xml_parse_document(col(res, 0, 0), res->lens[0], err, sizeof err);
    }
    feat_reply(sess, ctx->req, v ? v : xml_node_new("vCard", NS_VCARD));
out:
    feat_ctx_free(&ctx);
}

static void simple_result_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = answerable(ctx, res);
    if (sess)
        feat_reply(sess, ctx->req, NULL);
    feat_ctx_free(&ctx);
}

static void vcard(struct session *sess, const struct xml_node *iq, const struct xml_node *q, const char *target,
                  bool get)
{
    struct c2s *s = sess->conn->c2s;
    if (!target) {
        /* The server has no vCard of its own. */
        if (get)
            feat_reply(sess, iq, xml_node_new("vCard", NS_VCARD));
        else
            error(sess, iq, "auth", "forbidden");
        return;
    }
    char *local, *domain;
    if (feat_split(target, &local, &domain) == -1) {
        error(sess, iq, "modify", "jid-malformed");
        return;
    }
    if (get) {
        const char *params[] = {local, domain};
        store_query(s->store, STORE_VCARD_GET, params, 2, vcard_get_cb, feat_ctx_new(sess, iq));
    } else if (strcmp(target, sess->bare) != 0) {
        error(sess, iq, "auth", "forbidden");
    } else {
        struct buf b;
        buf_init(&b);
        xml_serialize(q, XML_NS_CLIENT, &b);
        buf_append(&b, "", 1);
        const char *params[] = {local, domain, b.data};
        store_query(s->store, STORE_VCARD_SET, params, 3, simple_result_cb, feat_ctx_new(sess, iq));
        buf_release(&b);
    }
    free(local);
    free(domain);
}

/* --- private XML storage (XEP-0049) -------------------------------------------------------- */

static bool private_reserved(const char *ns)
{
    return !ns || !*ns || strncmp(ns, "jabber:", 7) == 0;
}

static void private_get_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = answerable(ctx, res);
    if (!sess)
        goto out;
    struct xml_node *q = xml_node_new("query", NS_PRIVATE);
    struct xml_node *stored = NULL;
    if (res->nrows > 0 && col(res, 0, 0)) {
        char err[128];
        stored = xml_parse_document(col(res, 0, 0), res->lens[0], err, sizeof err);
    }
    if (!stored) {
        /* Nothing stored: the empty element as asked. */
        struct xml_node *asked = xml_first_elem(xml_child(ctx->req, "query", NS_PRIVATE));
        stored = xml_node_new(asked->name, asked->ns);
    }
    xml_append(q, stored);
    feat_reply(sess, ctx->req, q);
out:
    feat_ctx_free(&ctx);
}

static void private_storage(struct session *sess, const struct xml_node *iq, const struct xml_node *q,
                            const char *target, bool get)
{
    struct c2s *s = sess->conn->c2s;
    if (!target || strcmp(target, sess->bare) != 0) {
        error(sess, iq, "auth", "forbidden");
        return;
    }
    struct xml_node *first = xml_first_elem(q);
    if (!first || (get && xml_next(first, NULL, NULL))) {
        error(sess, iq, "modify", "not-acceptable");
        return;
    }
    for (struct xml_node *c = first; c; c = xml_next(c, NULL, NULL))
        if (private_reserved(c->ns)) {
            error(sess, iq, "modify", "not-acceptable");
            return;
        }
    if (get) {
        const char *params[] = {sess->jid.local, sess->jid.domain, first->ns};
        store_query(s->store, STORE_PRIVATE_GET, params, 3, private_get_cb, feat_ctx_new(sess, iq));
        return;
    }
    size_t n = 0;
    for (struct xml_node *c = first; c; c = xml_next(c, NULL, NULL))
        n++;
    struct store_op *ops = xcalloc(n, sizeof *ops);
    const char **params = xcalloc(n * 4, sizeof *params);
    struct buf *bufs = xcalloc(n, sizeof *bufs);
    size_t i = 0;
    for (struct xml_node *c = first; c; c = xml_next(c, NULL, NULL), i++) {
        buf_init(&bufs[i]);
        xml_serialize(c, XML_NS_CLIENT, &bufs[i]);
        buf_append(&bufs[i], "", 1);
        params[i * 4] = sess->jid.local;
        params[i * 4 + 1] = sess->jid.domain;
        params[i * 4 + 2] = c->ns;
        params[i * 4 + 3] = bufs[i].data;
        ops[i] = (struct store_op){STORE_PRIVATE_SET, &params[i * 4], 4};
    }
    store_txn(s->store, ops, n, simple_result_cb, feat_ctx_new(sess, iq));
    for (i = 0; i < n; i++)
        buf_release(&bufs[i]);
    free(bufs);
    free(params);
    free(ops);
}

/* --- blocking command (XEP-0191) ---------------------------------------------------------- */

static void block_load_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_session(ctx);
    if (sess) {
        if (res->ok == 0) {
            feat_strv_free(&sess->blocked, &sess->nblocked);
            for (size_t i = 0; i < res->nrows; i++)
                if (col(res, i, 0))
                    feat_strv_add(&sess->blocked, &sess->nblocked, col(res, i, 0));
        }
        if (ctx->n == 0) {
            /* The start-up load (not a blocklist get). */
            sess->feat->block_pending = false;
            presence_roster_ready(sess);
        } else if (res->ok != 0) {
            error(sess, ctx->req, "wait", "internal-server-error");
        } else {
            struct xml_node *l = xml_node_new("blocklist", NS_BLOCKING);
            for (size_t i = 0; i < sess->nblocked; i++)
                xml_set_attr(xml_add_child(l, "item", NS_BLOCKING), "jid", sess->blocked[i]);
            feat_reply(sess, ctx->req, l);
        }
    }
    feat_ctx_free(&ctx);
}

void blocking_load(struct session *sess)
{
    const char *params[] = {sess->jid.local, sess->jid.domain};
    store_query(sess->conn->c2s->store, STORE_BLOCK_LIST, params, 2, block_load_cb, feat_ctx_new(sess, NULL));
}

/* Applies a block or unblock (jids NULL/n 0 with unblock = everything) to the session's
 * list, with the presence side effects for entries that really changed: unavailable to a
 * newly blocked JID, current presence again to an unblocked subscribed contact. */
static void blocking_apply(struct session *sess, bool block, char **jids, size_t n)
{
    if (block) {
        for (size_t i = 0; i < n; i++) {
            if (feat_strv_has(sess->blocked, sess->nblocked, jids[i]))
                continue;
            feat_strv_add(&sess->blocked, &sess->nblocked, jids[i]);
            presence_send_unavailable(sess, jids[i]);
            feat_strv_remove(&sess->directed, &sess->ndirected, jids[i]);
        }
        return;
    }
    char **gone = NULL;
    size_t ngone = 0;
    if (n == 0) {
        gone = sess->blocked;
        ngone = sess->nblocked;
        sess->blocked = NULL;
        sess->nblocked = 0;
    } else {
        for (size_t i = 0; i < n; i++)
            if (feat_strv_remove(&sess->blocked, &sess->nblocked, jids[i]))
                feat_strv_add(&gone, &ngone, jids[i]);
    }
    for (size_t i = 0; i < ngone; i++) {
        char *bare = feat_bare_of(gone[i]);
        if ((roster_sub_of(roster_find(sess, bare)) & ROSTER_SUB_FROM) && !feat_blocked(sess, gone[i]))
            presence_send_current(sess, gone[i]);
        free(bare);
    }
    feat_strv_free(&gone, &ngone);
}

struct block_ctx {
    struct feat_ctx *ctx;
    bool block;
    char **jids;
    size_t n;
};

static void block_write_cb(void *ud, const struct store_result *res)
{
    struct block_ctx *b = ud;
    struct feat_ctx *ctx = b->ctx;
    if (res->ok != 0) {
        answerable(ctx, res);   /* tells the client */
        goto out;
    }
    /* Every resource that asked for the list gets the push, this one included. */
    struct xml_node *payload = xml_node_new(b->block ? "block" : "unblock", NS_BLOCKING);
    for (size_t i = 0; i < b->n; i++)
        xml_set_attr(xml_add_child(payload, "item", NS_BLOCKING), "jid", b->jids[i]);
    struct session *sess = session_by_id(ctx->c2s, ctx->sid);
    if (sess && sess->feat)
        blocking_apply(sess, b->block, b->jids, b->n);
    feat_route_push(ctx->c2s, sess ? sess->bare : ctx->arg, payload);
    xml_free(&payload);
    sess = feat_ctx_session(ctx);
    if (sess)
        feat_reply(sess, ctx->req, NULL);
out:
    feat_strv_free(&b->jids, &b->n);
    feat_ctx_free(&b->ctx);
    free(b);
}

static void blocking(struct session *sess, const struct xml_node *iq, const struct xml_node *q, const char *target,
                     bool get)
{
    struct c2s *s = sess->conn->c2s;
    if (target && strcmp(target, sess->bare) != 0) {
        error(sess, iq, "auth", "forbidden");
        return;
    }
    if (get) {
        if (strcmp(q->name, "blocklist") != 0) {
            error(sess, iq, "modify", "bad-request");
            return;
        }
        sess->blocklist_requested = true;
        struct feat_ctx *ctx = feat_ctx_new(sess, iq);
        ctx->n = 1;
        const char *params[] = {sess->jid.local, sess->jid.domain};
        store_query(s->store, STORE_BLOCK_LIST, params, 2, block_load_cb, ctx);
        return;
    }
    bool block = strcmp(q->name, "block") == 0;
    if (!block && strcmp(q->name, "unblock") != 0) {
        error(sess, iq, "modify", "bad-request");
        return;
    }
    struct block_ctx *b = xcalloc(1, sizeof *b);
    b->block = block;
    for (struct xml_node *it = xml_child(q, "item", NS_BLOCKING); it; it = xml_next(it, "item", NS_BLOCKING)) {
        const char *jid = xml_attr(it, "jid");
        char *norm = jid ? jid_normalize(jid, false) : NULL;
        if (!norm) {
            feat_strv_free(&b->jids, &b->n);
            free(b);
            error(sess, iq, "modify", "jid-malformed");
            return;
        }
        feat_strv_add(&b->jids, &b->n, norm);
        free(norm);
    }
    if (block && b->n == 0) {
        free(b);
        error(sess, iq, "modify", "bad-request");
        return;
    }
    b->ctx = feat_ctx_new(sess, iq);
    b->ctx->arg = xstrdup(sess->bare);
    if (!block && b->n == 0) {
        const char *params[] = {sess->jid.local, sess->jid.domain};
        store_query(s->store, STORE_BLOCK_CLEAR, params, 2, block_write_cb, b);
        return;
    }
    struct store_op *ops = xcalloc(b->n, sizeof *ops);
    const char **params = xcalloc(b->n * 3, sizeof *params);
    for (size_t i = 0; i < b->n; i++) {
        params[i * 3] = sess->jid.local;
        params[i * 3 + 1] = sess->jid.domain;
        params[i * 3 + 2] = b->jids[i];
        ops[i] = (struct store_op){block ? STORE_BLOCK_ADD : STORE_BLOCK_REMOVE, &params[i * 3], 3};
    }
    store_txn(s->store, ops, b->n, block_write_cb, b);
    free(params);
    free(ops);
}

void blocking_push_in(struct session *sess, struct xml_node *iq)
{
    struct xml_node *q = xml_first_elem(iq);
    bool block = strcmp(q->name, "block") == 0;
    if (!block && strcmp(q->name, "unblock") != 0)
        return;
    char **jids = NULL;
    size_t n = 0;
    for (struct xml_node *it = xml_child(q, "item", NS_BLOCKING); it; it = xml_next(it, "item", NS_BLOCKING))
        if (xml_attr(it, "jid"))
            feat_strv_add(&jids, &n, xml_attr(it, "jid"));
    blocking_apply(sess, block, jids, n);
    feat_strv_free(&jids, &n);
    if (sess->blocklist_requested) {
        struct xml_node *push = xml_clone(iq);
        xml_set_attr(push, "to", sess->full);
        conn_send(sess->conn, push);
        xml_free(&push);
    }
}

/* --- last activity (XEP-0012) ------------------------------------------------------------- */

static void reply_last(struct session *sess, const struct xml_node *iq, long long seconds, const char *status)
{
    char secs[32];
    snprintf(secs, sizeof secs, "%lld", seconds < 0 ? 0 : seconds);
    struct xml_node *q = xml_node_new("query", NS_LAST);
    xml_set_attr(q, "seconds", secs);
    if (status && *status)
        xml_add_text(q, status, strlen(status));
    feat_reply(sess, iq, q);
}

static void last_get_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = answerable(ctx, res);
    if (!sess)
        goto out;
    if (res->nrows == 0 || !col(res, 0, 0)) {
        error(sess, ctx->req, "cancel", "item-not-found");
    } else {
        long long then = strtoll(col(res, 0, 0), NULL, 10);
        reply_last(sess, ctx->req, mk_now_us() / 1000000 - then, col(res, 0, 1));
    }
out:
    feat_ctx_free(&ctx);
}

static void last_activity(struct session *sess, const struct xml_node *iq, const char *target)
{
    struct c2s *s = sess->conn->c2s;
    if (!target) {
        reply_last(sess, iq, (mk_now_us() - (int64_t)s->node->started_us) / 1000000, NULL);
        return;
    }
    if (strcmp(target, sess->bare) == 0) {
        reply_last(sess, iq, 0, NULL);
        return;
    }
    /* Only a contact whose presence the user may see (RFC 6121: the contact has a 'from'
     * subscription to the user, i.e. the user's item says 'to' or 'both'). */
    if (!(roster_sub_of(roster_find(sess, target)) & ROSTER_SUB_TO)) {
        error(sess, iq, "auth", "forbidden");
        return;
    }
    if (presence_contact_online(sess, target)) {
        reply_last(sess, iq, 0, NULL);
        return;
    }
    char *local, *domain;
    if (feat_split(target, &local, &domain) == -1) {
        error(sess, iq, "modify", "jid-malformed");
        return;
    }
    const char *params[] = {local, domain};
    store_query(s->store, STORE_LAST_GET, params, 2, last_get_cb, feat_ctx_new(sess, iq));
    free(local);
    free(domain);
}

/* --- dispatch ------------------------------------------------------------------------------ */

static void dispatch(struct session *sess, const struct xml_node *iq, const char *target)
{
    struct xml_node *q = xml_first_elem(iq);
    const char *ns = q->ns;
    bool get = strcmp(xml_attr(iq, "type"), "get") == 0;

    if (strcmp(ns, NS_DISCO_INFO) == 0 || strcmp(ns, NS_DISCO_ITEMS) == 0) {
        if (!get)
            error(sess, iq, "cancel", "feature-not-implemented");
        else if (strcmp(ns, NS_DISCO_INFO) == 0)
            disco_info(sess, iq, q, target == NULL);
        else if (xml_attr(q, "node"))
            error(sess, iq, "cancel", "item-not-found");
        else
            feat_reply(sess, iq, xml_node_new("query", NS_DISCO_ITEMS));
    } else if (strcmp(ns, NS_PING) == 0) {
        if (get)
            feat_reply(sess, iq, NULL);
        else
            error(sess, iq, "cancel", "feature-not-implemented");
    } else if (strcmp(ns, NS_VERSION) == 0 || strcmp(ns, NS_TIME) == 0) {
        if (target)
            error(sess, iq, "cancel", "service-unavailable");
        else if (!get)
            error(sess, iq, "cancel", "feature-not-implemented");
        else if (strcmp(ns, NS_VERSION) == 0)
            version(sess, iq);
        else
            entity_time(sess, iq);
    } else if (strcmp(ns, NS_VCARD) == 0 && strcmp(q->name, "vCard") == 0) {
        vcard(sess, iq, q, target, get);
    } else if (strcmp(ns, NS_PRIVATE) == 0) {
        private_storage(sess, iq, q, target, get);
    } else if (strcmp(ns, NS_BLOCKING) == 0) {
        blocking(sess, iq, q, target, get);
    } else if (strcmp(ns, NS_LAST) == 0) {
        if (get)
            last_activity(sess, iq, target);
        else
            error(sess, iq, "cancel", "feature-not-implemented");
    } else {
        error(sess, iq, "cancel", "service-unavailable");
    }
}

static void account_checked_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = answerable(ctx, res);
    if (sess) {
        if (res->nrows == 0)
            error(sess, ctx->req, "cancel", "service-unavailable");  /* RFC 6121 8.5.1: no such account */
        else
            dispatch(sess, ctx->req, ctx->arg);
    }
    feat_ctx_free(&ctx);
}

enum disp iq_server(struct session *sess, struct xml_node *iq, const char *target)
{
    if (target && strcmp(target, sess->bare) != 0) {
        /* Another local account: answer only if it exists. */
        char *local, *domain;
        if (feat_split(target, &local, &domain) == -1) {
            error(sess, iq, "modify", "jid-malformed");
            return DISP_DONE;
        }
        struct feat_ctx *ctx = feat_ctx_new(sess, iq);
        ctx->arg = xstrdup(target);
        const char *params[] = {local, domain};
        store_query(sess->conn->c2s->store, STORE_USER_GET, params, 2, account_checked_cb, ctx);
        free(local);
        free(domain);
        return DISP_DONE;
    }
    dispatch(sess, iq, target);
    return DISP_DONE;
}
