/* c2s/offline.c - the "offline" module: offline message delivery at initial presence (XEP-0160): the mam role stored them, stamped with <delay/>. */
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "util.h"

static void delete_cb(void *ud, const struct store_result *res)
{
    char *who = ud;
    if (res->ok != 0)
        log_warn("offline_delete_failed", "user=%s error=\"%s\"", who, res->error ? res->error : "");
    else
        log_debug("offline_deleted", "user=%s", who);
    free(who);
}

/* The rows written to a session, deleted once its client has them. */
struct offline_batch {
    struct c2s *c2s;
    char *local, *domain, *last;   /* delete the user's rows up to id last */
    char *bare;
    size_t n;
};

static void batch_acked(void *ud, bool acked)
{
    struct offline_batch *b = ud;
    if (acked) {
        const char *params[] = {b->local, b->domain, b->last};
        store_query(b->c2s->store, STORE_OFFLINE_DELETE_UPTO, params, 3, delete_cb, xstrdup(b->bare));
    } else {
        /* The session ended before its client acknowledged them: they stay stored and
         * come again at the next login. */
        log_info("offline_kept", "user=%s count=%zu", b->bare, b->n);
    }
    free(b->local);
    free(b->domain);
    free(b->last);
    free(b->bare);
    free(b);
}

/* Rows: id, stamp_us, from, xml, in arrival order. Each xml is a serialized stanza
 * (jabber:client implied) written as it is. Only this session gets them; the rows are
 * deleted once its client has acknowledged them (XEP-0198), or at once when it does not
 * use stream management (they are in its output buffer, as before). */
static void fetch_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_session(ctx);
    if (!sess || res->ok != 0 || res->nrows == 0) {
        if (res->ok != 0)
            log_warn("offline_fetch_failed", "user=%s error=\"%s\"", ctx->arg, res->error ? res->error : "");
        feat_ctx_free(&ctx);
        return;
    }
    const char *last = NULL;
    size_t n = 0;
    for (size_t i = 0; i < res->nrows; i++) {
        const char *id = res->vals[i * res->ncols];
        const char *from = res->vals[i * res->ncols + 2];
        const char *xml = res->vals[i * res->ncols + 3];
        if (id)
            last = id;
        if (!xml || (from && feat_blocked(sess, from)))
            continue;
        conn_write(sess->conn, xml, res->lens[i * res->ncols + 3]);
        n++;
    }
    log_debug("offline_delivered", "session=%llu count=%zu", (unsigned long long)sess->id, n);
    if (last) {
        struct offline_batch *b = xcalloc(1, sizeof *b);
        b->c2s = ctx->c2s;
        b->local = xstrdup(sess->jid.local);
        b->domain = xstrdup(sess->jid.domain);
        b->last = xstrdup(last);
        b->bare = xstrdup(sess->bare);
        b->n = n;
        session_after_ack(sess, n, batch_acked, b);
    }
    feat_ctx_free(&ctx);
}

/* Writes the stored offline messages to the session and deletes them: at the first
 * available presence with a non-negative priority (RFC 6121 8.5.2.1.1 leaves negative
 * priorities out of delivery). */
static void offline_deliver(struct session *sess, bool initial)
{
    if (!initial || !sess->available || sess->priority < 0)
        return;
    struct feat_ctx *ctx = feat_ctx_new(sess, NULL);
    ctx->arg = xstrdup(sess->bare);
    const char *params[] = {sess->jid.local, sess->jid.domain};
    store_query(sess->conn->c2s->store, STORE_OFFLINE_FETCH, params, 2, fetch_cb, ctx);
}

static const char *const server_features[] = {NS_MSGOFFLINE, NS_DELAY, NULL};

const struct c2s_module offline_module = {
    .name = "offline",
    .server_features = server_features,
    .presence_changed = offline_deliver,
};
