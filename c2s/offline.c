/* c2s/offline.c - the "offline" module: offline message delivery at initial presence (XEP-0160): the mam role stored them, stamped with <delay/>. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "util.h"

extern const struct c2s_module offline_module;

/* Per session: the ids of the rows written to it, sorted. A fetch runs at the first
 * available presence and again when the router says that every message it sent to
 * offline storage before it knew the session available is stored (OfflineFetch): a row
 * committed after the first fetch comes with the second, and no row comes twice. */
struct offline_state {
    uint64_t *ids;
    size_t n, cap;
};

static uint64_t id_at(const void *ids, size_t i)
{
    return ((const uint64_t *)ids)[i];
}

static bool delivered(const struct offline_state *st, uint64_t id)
{
    size_t i = mk_lower_bound(st->n, id, id_at, st->ids);
    return i < st->n && st->ids[i] == id;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

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
    char *local, *domain, *ids;    /* delete exactly these rows ("1,2,3") */
    char *bare;
    size_t n;
};

static void batch_acked(void *ud, bool acked)
{
    struct offline_batch *b = ud;
    if (acked) {
        const char *params[] = {b->local, b->domain, b->ids};
        store_query(b->c2s->store, STORE_OFFLINE_DELETE_IDS, params, 3, delete_cb, xstrdup(b->bare));
    } else {
        /* The session ended before its client acknowledged them: they stay stored and
         * come again at the next login. */
        log_info("offline_kept", "user=%s count=%zu", b->bare, b->n);
    }
    free(b->local);
    free(b->domain);
    free(b->ids);
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
    struct offline_state *st = c2s_session_state(sess, &offline_module);
    struct buf ids;
    buf_init(&ids);
    size_t n = 0, added = 0;
    for (size_t i = 0; i < res->nrows; i++) {
        const char *id = res->vals[i * res->ncols];
        const char *from = res->vals[i * res->ncols + 2];
        const char *xml = res->vals[i * res->ncols + 3];
        char *end = NULL;
        errno = 0;
        uint64_t v = id != NULL ? strtoull(id, &end, 10) : 0;
        if (id == NULL || errno != 0 || end == id || *end != '\0' || delivered(st, v))
            continue;   /* given to this session by an earlier fetch */
        if (st->n + added == st->cap) {
            st->cap = st->cap ? st->cap * 2 : 16;
            st->ids = xrealloc(st->ids, st->cap * sizeof *st->ids);
        }
        st->ids[st->n + added++] = v;
        buf_printf(&ids, "%s%s", ids.len ? "," : "", id);
        if (!xml || (from && feat_blocked(sess, from)))
            continue;
        conn_write(sess->conn, xml, res->lens[i * res->ncols + 3]);
        n++;
    }
    if (added > 0) {
        st->n += added;
        qsort(st->ids, st->n, sizeof *st->ids, cmp_u64);
    }
    log_debug("offline_delivered", "session=%llu count=%zu", (unsigned long long)sess->id, n);
    if (ids.len > 0) {
        struct offline_batch *b = xcalloc(1, sizeof *b);
        b->c2s = ctx->c2s;
        b->local = xstrdup(sess->jid.local);
        b->domain = xstrdup(sess->jid.domain);
        b->ids = xstrndup(ids.data, ids.len);
        b->bare = xstrdup(sess->bare);
        b->n = n;
        session_after_ack(sess, n, batch_acked, b);
    }
    buf_release(&ids);
    feat_ctx_free(&ctx);
}

static void fetch(struct session *sess)
{
    struct feat_ctx *ctx = feat_ctx_new(sess, NULL);
    ctx->arg = xstrdup(sess->bare);
    const char *params[] = {sess->jid.local, sess->jid.domain};
    store_query(sess->conn->c2s->store, STORE_OFFLINE_FETCH, params, 2, fetch_cb, ctx);
}

/* Writes the stored offline messages to the session and deletes them: at the first
 * available presence with a non-negative priority (RFC 6121 8.5.2.1.1 leaves negative
 * priorities out of delivery). */
static void offline_deliver(struct session *sess, bool initial)
{
    if (!initial || !sess->available || sess->priority < 0)
        return;
    fetch(sess);
}

/* The router's OfflineFetch: what it stored for the user before it knew the session
 * available is committed now; fetched again (only new rows are written). */
static bool offline_envelope(struct c2s *s, const Mk__Envelope *e)
{
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_OFFLINE_FETCH)
        return false;
    const Mk__OfflineFetch *f = e->offline_fetch;
    struct session *sess = f != NULL ? session_by_id(s, f->session_id) : NULL;
    if (sess != NULL && !sess->conn->closed && !s->stopping && sess->available && sess->priority >= 0)
        fetch(sess);
    return true;
}

static void offline_session_close(struct session *sess)
{
    struct offline_state *st = c2s_session_state(sess, &offline_module);
    free(st->ids);
    st->ids = NULL;
    st->n = st->cap = 0;
}

static const char *const server_features[] = {NS_MSGOFFLINE, NS_DELAY, NULL};

const struct c2s_module offline_module = {
    .name = "offline",
    .server_features = server_features,
    .session_state = sizeof(struct offline_state),
    .envelope = offline_envelope,
    .session_close = offline_session_close,
    .presence_changed = offline_deliver,
};
