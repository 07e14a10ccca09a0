/* c2s/blocking.c - the "blocking" module: the blocking command (XEP-0191), its list loaded at session open and applied to stanzas both ways. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "util.h"

extern const struct c2s_module blocking_module;

/* Per-session state: block and unblock requests run one at a time (a block's check of
 * the stored list must see the earlier blocks' writes; an unblock must not overtake the
 * block before it). */
struct blocking_session {
    struct feat_serial serial;
};

static void block_load_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_session(ctx);
    if (sess) {
        if (res->ok == 0) {
            feat_strv_free(&sess->blocked, &sess->nblocked);
            for (size_t i = 0; i < res->nrows; i++)
                if (feat_col(res, i, 0))
                    feat_strv_add(&sess->blocked, &sess->nblocked, feat_col(res, i, 0));
        }
        if (ctx->n == 0) {
            /* The start-up load (not a blocklist get). */
            session_release(sess);
        } else if (res->ok != 0) {
            session_send_error(sess, ctx->req, "wait", "internal-server-error", NULL);
        } else {
            struct xml_node *l = xml_node_new("blocklist", NS_BLOCKING);
            for (size_t i = 0; i < sess->nblocked; i++)
                xml_set_attr(xml_add_child(l, "item", NS_BLOCKING), "jid", sess->blocked[i]);
            feat_reply(sess, ctx->req, l);
        }
    }
    feat_ctx_free(&ctx);
}

/* Session open: the block list is loaded before the session's presence is handled. */
static void blocking_load(struct session *sess)
{
    session_hold(sess);
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
            feat_send_unavailable(sess, jids[i]);
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
        if ((feat_roster_sub(feat_roster_find(sess, bare)) & ROSTER_SUB_FROM) && !feat_blocked(sess, gone[i]))
            feat_send_presence(sess, gone[i]);
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

static void block_start(struct block_ctx *b, struct session *sess);

static void block_ctx_discard(struct block_ctx **bp)
{
    struct block_ctx *b = *bp;
    feat_strv_free(&b->jids, &b->n);
    feat_ctx_free(&b->ctx);
    free(b);
    *bp = NULL;
}

static void block_ctx_drop(void *b)
{
    block_ctx_discard((struct block_ctx **)&b);
}

/* The running request is done: the session's next one (if it is still there) starts. */
static void block_ctx_free(struct block_ctx **bp)
{
    struct c2s *s = (*bp)->ctx->c2s;
    uint64_t sid = (*bp)->ctx->sid;
    block_ctx_discard(bp);
    struct session *sess = session_by_id(s, sid);
    struct blocking_session *st = sess ? c2s_session_state(sess, &blocking_module) : NULL;
    struct block_ctx *next = st ? feat_serial_leave(&st->serial) : NULL;
    if (next)
        block_start(next, sess);
}

/* Drops the requests still waiting (the session is going; nobody to answer). */
static void blocking_close(struct session *sess)
{
    struct blocking_session *st = c2s_session_state(sess, &blocking_module);
    feat_serial_drain(&st->serial, block_ctx_drop);
}

static void block_write_cb(void *ud, const struct store_result *res)
{
    struct block_ctx *b = ud;
    struct feat_ctx *ctx = b->ctx;
    if (res->ok != 0) {
        feat_ctx_answerable(ctx, res);   /* tells the client */
        goto out;
    }
    /* Every resource that asked for the list gets the push, this one included. */
    struct xml_node *payload = xml_node_new(b->block ? "block" : "unblock", NS_BLOCKING);
    for (size_t i = 0; i < b->n; i++)
        xml_set_attr(xml_add_child(payload, "item", NS_BLOCKING), "jid", b->jids[i]);
    struct session *sess = session_by_id(ctx->c2s, ctx->sid);
    if (sess)
        blocking_apply(sess, b->block, b->jids, b->n);
    feat_route_push(ctx->c2s, sess ? sess->bare : ctx->arg, payload);
    xml_free(&payload);
    sess = feat_ctx_session(ctx);
    if (sess)
        feat_reply(sess, ctx->req, NULL);
out:
    block_ctx_free(&b);
}

static void block_write(struct block_ctx *b, struct session *sess)
{
    struct c2s *s = b->ctx->c2s;
    struct store_op *ops = xcalloc(b->n, sizeof *ops);
    const char **params = xcalloc(b->n * 3, sizeof *params);
    for (size_t i = 0; i < b->n; i++) {
        params[i * 3] = sess->jid.local;
        params[i * 3 + 1] = sess->jid.domain;
        params[i * 3 + 2] = b->jids[i];
        ops[i] = (struct store_op){b->block ? STORE_BLOCK_ADD : STORE_BLOCK_REMOVE, &params[i * 3], 3};
    }
    store_txn(s->store, ops, b->n, block_write_cb, b);
    free(params);
    free(ops);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void block_list_full(struct session *sess, const struct xml_node *iq, size_t stored, size_t adding)
{
    struct c2s *s = sess->conn->c2s;
    char text[96];
    snprintf(text, sizeof text, "the block list is full (at most %u JIDs)", s->cfg->limits.max_block_items);
    log_info("block_list_limit", "jid=%s stored=%zu adding=%zu", sess->full, stored, adding);
    metric_inc(s->m_limit_refusals, "block_items");
    session_send_error(sess, iq, "cancel", "resource-constraint", text);
}

/* The stored list before a block (read after this session's earlier requests are
 * written): the block goes ahead only if the list stays within limits.max_block_items. */
static void block_check_cb(void *ud, const struct store_result *res)
{
    struct block_ctx *b = ud;
    struct session *sess = feat_ctx_answerable(b->ctx, res);
    if (!sess) {
        block_ctx_free(&b);
        return;
    }
    /* The rows sorted here (the database's collation may not be byte order). */
    const char **stored = xcalloc(res->nrows + 1, sizeof *stored);
    size_t nstored = 0;
    for (size_t r = 0; r < res->nrows; r++)
        if (feat_col(res, r, 0))
            stored[nstored++] = feat_col(res, r, 0);
    qsort(stored, nstored, sizeof *stored, cmp_str);
    size_t adding = 0;
    for (size_t i = 0; i < b->n; i++)
        adding += bsearch(&b->jids[i], stored, nstored, sizeof *stored, cmp_str) == NULL;
    free(stored);
    if (nstored + adding > sess->conn->c2s->cfg->limits.max_block_items) {
        block_list_full(sess, b->ctx->req, nstored, adding);
        block_ctx_free(&b);
        return;
    }
    block_write(b, sess);
}

static enum disp blocking_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    struct c2s *s = sess->conn->c2s;
    const struct xml_node *q = xml_first_elem(iq);
    bool get = strcmp(xml_attr(iq, "type"), "get") == 0;
    if (target && strcmp(target, sess->bare) != 0) {
        session_send_error(sess, iq, "auth", "forbidden", NULL);
        return DISP_DONE;
    }
    if (get) {
        if (strcmp(q->name, "blocklist") != 0) {
            session_send_error(sess, iq, "modify", "bad-request", NULL);
            return DISP_DONE;
        }
        sess->blocklist_requested = true;
        struct feat_ctx *ctx = feat_ctx_new(sess, iq);
        ctx->n = 1;
        const char *params[] = {sess->jid.local, sess->jid.domain};
        store_query(s->store, STORE_BLOCK_LIST, params, 2, block_load_cb, ctx);
        return DISP_DONE;
    }
    bool block = strcmp(q->name, "block") == 0;
    if (!block && strcmp(q->name, "unblock") != 0) {
        session_send_error(sess, iq, "modify", "bad-request", NULL);
        return DISP_DONE;
    }
    struct block_ctx *b = xcalloc(1, sizeof *b);
    b->block = block;
    for (struct xml_node *it = xml_child(q, "item", NS_BLOCKING); it; it = xml_next(it, "item", NS_BLOCKING)) {
        const char *jid = xml_attr(it, "jid");
        char *norm = jid ? jid_normalize(jid, false) : NULL;
        if (!norm) {
            feat_strv_free(&b->jids, &b->n);
            free(b);
            session_send_error(sess, iq, "modify", "jid-malformed", NULL);
            return DISP_DONE;
        }
        feat_strv_add(&b->jids, &b->n, norm);
        free(norm);
    }
    if (block && b->n == 0) {
        free(b);
        session_send_error(sess, iq, "modify", "bad-request", NULL);
        return DISP_DONE;
    }
    if (b->n > s->cfg->limits.max_block_items) {
        block_list_full(sess, iq, 0, b->n);
        feat_strv_free(&b->jids, &b->n);
        free(b);
        return DISP_DONE;
    }
    b->ctx = feat_ctx_new(sess, iq);
    b->ctx->arg = xstrdup(sess->bare);
    struct blocking_session *st = c2s_session_state(sess, &blocking_module);
    int go = feat_serial_enter(&st->serial, b);
    if (go < 0) {
        block_ctx_discard(&b);
        metric_inc(s->m_limit_refusals, "requests_waiting");
        session_send_error(sess, iq, "wait", "resource-constraint", "too many block requests waiting");
    } else if (go > 0) {
        block_start(b, sess);
    }
    return DISP_DONE;
}

/* Sends a request to the store: an unblock-all, an unblock, or a block's check of the
 * stored list first. */
static void block_start(struct block_ctx *b, struct session *sess)
{
    struct c2s *s = b->ctx->c2s;
    const char *params[] = {sess->jid.local, sess->jid.domain};
    if (!b->block && b->n == 0)
        store_query(s->store, STORE_BLOCK_CLEAR, params, 2, block_write_cb, b);
    else if (!b->block)
        block_write(b, sess);
    else
        store_query(s->store, STORE_BLOCK_LIST, params, 2, block_check_cb, b);
}

/* A routed block/unblock push reached sess. */
static void blocking_push_in(struct session *sess, struct xml_node *iq)
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


/* XEP-0191 3.4: a message to a blocked JID is refused with <blocked/>. */
static enum disp blocking_out(struct session *sess, Mk__StanzaKind kind, struct xml_node *st)
{
    if (kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE)
        return DISP_PASS;
    const char *to = xml_attr(st, "to");
    if (!to || !feat_blocked(sess, to))
        return DISP_PASS;
    struct xml_node *err = stanza_error_reply(st, "cancel", "not-acceptable", NULL);
    if (err) {
        struct xml_node *e = xml_child(err, "error", NULL);
        if (e)
            xml_add_child(e, "blocked", NS_BLOCKING_ERR);
        conn_send(sess->conn, err);
        xml_free(&err);
    }
    return DISP_DONE;
}

/* Nothing from a blocked JID reaches the client. */
static bool blocking_in(struct session *sess, const Mk__Route *r)
{
    return !feat_blocked(sess, r->from ? r->from : "");
}

static const struct c2s_iq_handler iqs[] = {
    {NS_BLOCKING, C2S_IQ_CHECK_ACCOUNT, blocking_iq, blocking_push_in},
    {NULL, 0, NULL, NULL},
};

static const char *const server_features[] = {NS_BLOCKING, NULL};

const struct c2s_module blocking_module = {
    .name = "blocking",
    .server_features = server_features,
    .iqs = iqs,
    .session_state = sizeof(struct blocking_session),
    .session_open = blocking_load,
    .session_close = blocking_close,
    .stanza_out = blocking_out,
    .stanza_in = blocking_in,
};
