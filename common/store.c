/* common/store.c - the driver-independent part of storage: the query queue, result delivery, store_open. */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "store_impl.h"
#include "util.h"

/* Copies the ops and their parameters into one allocation. */
static struct store_query *query_new(struct ev_loop *loop, const struct store_op *ops, size_t nops,
                                     store_cb *cb, void *ud)
{
    size_t nptr = 0, nbytes = 0;
    for (size_t i = 0; i < nops; i++) {
        nptr += ops[i].nparams;
        for (size_t j = 0; j < ops[i].nparams; j++)
            if (ops[i].params[j] != NULL)
                nbytes += strlen(ops[i].params[j]) + 1;
    }
    size_t size = sizeof(struct store_query) + nops * sizeof(struct store_qop) + nptr * sizeof(char *) + nbytes;
    struct store_query *q = xmalloc(size);
    q->next = NULL;
    q->cb = cb;
    q->ud = ud;
    q->queued_at = ev_now(loop);
    q->txn = false;
    q->batch = false;
    q->apart = false;
    q->retries = 0;
    q->nops = nops;
    const char **ptrs = (const char **)(void *)&q->ops[nops];
    char *bytes = (char *)&ptrs[nptr];
    for (size_t i = 0; i < nops; i++) {
        q->ops[i].stmt = ops[i].stmt;
        q->ops[i].nparams = ops[i].nparams;
        q->ops[i].params = ptrs;
        for (size_t j = 0; j < ops[i].nparams; j++) {
            const char *p = ops[i].params[j];
            if (p == NULL) {
                *ptrs++ = NULL;
                continue;
            }
            size_t n = strlen(p) + 1;
            memcpy(bytes, p, n);
            *ptrs++ = bytes;
            bytes += n;
        }
    }
    return q;
}

static void queue_push(struct store *s, struct store_query *q)
{
    q->next = NULL;
    if (s->tail != NULL)
        s->tail->next = q;
    else
        s->head = q;
    s->tail = q;
    s->nqueued++;
}

struct store_query *store_queue_pop(struct store *s)
{
    struct store_query *q = s->head;
    if (q == NULL)
        return NULL;
    s->head = q->next;
    if (s->head == NULL)
        s->tail = NULL;
    q->next = NULL;
    s->nqueued--;
    s->nrunning++;
    return q;
}

void store_queue_unpop(struct store *s, struct store_query *q)
{
    q->next = s->head;
    s->head = q;
    if (s->tail == NULL)
        s->tail = q;
    s->nqueued++;
    s->nrunning--;
}

void store_finish(struct store *s, struct store_query *q, const struct store_result *res)
{
    s->nrunning--;
    if (q->cb != NULL) {
        s->cb_depth++;
        q->cb(q->ud, res);
        s->cb_depth--;
    }
    free(q);
}

void store_fail(struct store *s, struct store_query *q, const char *error)
{
    struct store_result res = { .ok = -1, .error = error };
    store_finish(s, q, &res);
}

static void refused_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct store *s = w->data;
    struct store_query *q = s->refused_head;
    s->refused_head = s->refused_tail = NULL;
    ev_prepare_stop(loop, w);
    while (q != NULL) {
        struct store_query *next = q->next;
        struct store_result res = { .ok = -1, .error = "the store's queue is full", .refused = true };
        store_finish(s, q, &res);
        q = next;
    }
}

/* False when the queue is full: then cb gets a refusal at the next prepare (never
 * inside the call), and only a bare record of it is kept meanwhile. */
static bool admit(struct store *s, store_cb *cb, void *ud)
{
    if (s->max_queued == 0 || s->nqueued < s->max_queued || s->closing)
        return true;
    if (s->refused_total++ % 1000 == 0)
        log_warn("store_queue_full", "driver=%s queued=%zu refused_total=%llu", s->drv->name, s->nqueued,
                 s->refused_total);
    struct store_query *q = xcalloc(1, sizeof *q);
    q->cb = cb;
    q->ud = ud;
    if (s->refused_tail != NULL)
        s->refused_tail->next = q;
    else
        s->refused_head = q;
    s->refused_tail = q;
    s->nrunning++;   /* store_finish counts it out; store_drain waits for it */
    ev_prepare_start(s->loop, &s->refused_w);
    return false;
}

static void enqueue(struct store *s, struct store_query *q)
{
    if (s->closing) {
        /* Only reachable from a callback run by store_close: nothing will run it. */
        log_warn("store_query_dropped", "reason=closing");
        free(q);
        return;
    }
    queue_push(s, q);
    ev_prepare_start(s->loop, &s->kick_w);
}

/* The driver gets the queries queued in a loop turn at its end, all at once: one
 * hand-off to the sqlite thread (two context switches) per turn instead of one per
 * query, which a login storm on one core paid for every credential lookup. */
static void kick_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct store *s = w->data;
    ev_prepare_stop(loop, w);
    if (s->head == NULL)
        return;   /* taken already: a driver hands over what its callbacks queue */
    s->handoffs++;
    s->drv->kick(s);
}

/* One statement queued (store_query, store_query_read); apart: free to run beside the
 * writes. Borrows params (copied). */
static void query_one(struct store *s, enum store_stmt stmt, const char *const *params, size_t nparams,
                      store_cb *cb, void *ud, bool apart)
{
    if ((unsigned)stmt >= STORE_STMT_COUNT) {
        log_error("store_bad_stmt", "stmt=%d", (int)stmt);
        abort();
    }
    if (!admit(s, cb, ud))
        return;
    struct store_op op = { .stmt = stmt, .params = params, .nparams = nparams };
    struct store_query *q = query_new(s->loop, &op, 1, cb, ud);
    q->apart = apart;
    enqueue(s, q);
}

/* Borrows params (copied). The callback runs later on the loop. */
void store_query(struct store *s, enum store_stmt stmt, const char *const *params, size_t nparams,
                 store_cb *cb, void *ud)
{
    query_one(s, stmt, params, nparams, cb, ud, false);
}

/* Borrows params (copied). As store_query, marked as free to run beside the writes. */
void store_query_read(struct store *s, enum store_stmt stmt, const char *const *params, size_t nparams,
                      store_cb *cb, void *ud)
{
    query_one(s, stmt, params, nparams, cb, ud, true);
}

/* Borrows ops (copied). One op runs like store_query; none gives an empty success. */
void store_txn(struct store *s, const struct store_op *ops, size_t nops, store_cb *cb, void *ud)
{
    for (size_t i = 0; i < nops; i++) {
        if ((unsigned)ops[i].stmt >= STORE_STMT_COUNT) {
            log_error("store_bad_stmt", "stmt=%d", (int)ops[i].stmt);
            abort();
        }
    }
    if (!admit(s, cb, ud))
        return;
    struct store_query *q = query_new(s->loop, ops, nops, cb, ud);
    q->txn = nops > 1;
    enqueue(s, q);
}

/* Borrows values (copied). Zero rows give an empty success, like store_txn. */
void store_batch(struct store *s, enum store_stmt stmt, const char *const *values, size_t nrows, size_t nparams,
                 store_cb *cb, void *ud)
{
    if ((unsigned)stmt >= STORE_STMT_COUNT || !store_stmt_defs[stmt].batch ||
        nparams != store_stmt_defs[stmt].nparams) {
        log_error("store_bad_batch", "stmt=%d nparams=%zu", (int)stmt, nparams);
        abort();
    }
    if (!admit(s, cb, ud))
        return;
    struct store_op *ops = xcalloc(nrows > 0 ? nrows : 1, sizeof *ops);
    for (size_t i = 0; i < nrows; i++) {
        ops[i].stmt = stmt;
        ops[i].params = values + i * nparams;
        ops[i].nparams = nparams;
    }
    struct store_query *q = query_new(s->loop, ops, nrows, cb, ud);
    free(ops);
    q->txn = nrows > 1;
    q->batch = nrows > 0;
    enqueue(s, q);
}

/* Borrows loop and cfg (cfg only during the call). */
struct store *store_open(struct ev_loop *loop, const struct cfg *cfg, char *err, size_t errlen)
{
    const char *name = cfg->storage.driver != NULL ? cfg->storage.driver : "sqlite";
    const struct store_driver_ops *drv;
    if (strcmp(name, "sqlite") == 0) {
        drv = &store_driver_sqlite;
    } else if (strcmp(name, "pgsql") == 0) {
        drv = &store_driver_pgsql;
    } else {
        snprintf(err, errlen, "storage.driver: unknown driver \"%s\" (sqlite or pgsql)", name);
        return NULL;
    }
    for (size_t i = 0; i < STORE_STMT_COUNT; i++) {
        const struct store_stmt_def *d = &store_stmt_defs[i];
        if (d->name == NULL || d->sqlite == NULL || d->pgsql == NULL) {
            snprintf(err, errlen, "statement %zu has no SQL in store_stmts.c", i);
            return NULL;
        }
    }
    struct store *s = xcalloc(1, sizeof *s);
    s->loop = loop;
    s->drv = drv;
    s->max_queued = cfg->limits.max_store_queue;
    ev_prepare_init(&s->refused_w, refused_cb);
    s->refused_w.data = s;
    ev_prepare_init(&s->kick_w, kick_cb);
    s->kick_w.data = s;
    if (drv->open(s, cfg, err, errlen) == -1) {
        free(s);
        return NULL;
    }
    return s;
}

/* Consumes *sp. Queries still queued or running get ok=-1 ("store closed"). Must
 * not be called from a store callback: drain or defer to an ev_check instead. */
void store_close(struct store **sp)
{
    struct store *s = *sp;
    if (s == NULL)
        return;
    if (s->cb_depth > 0) {
        log_error("store_close_in_callback", "driver=%s", s->drv->name);
        abort();
    }
    *sp = NULL;
    s->closing = true;
    ev_prepare_stop(s->loop, &s->kick_w);
    s->drv->close(s);
    if (s->refused_head != NULL)
        refused_cb(s->loop, &s->refused_w, 0);
    ev_prepare_stop(s->loop, &s->refused_w);
    struct store_query *q;
    while ((q = store_queue_pop(s)) != NULL)
        store_fail(s, q, "the store was closed");
    free(s);
}

bool store_ready(const struct store *s)
{
    return s->drv->ready(s);
}

size_t store_pending(const struct store *s)
{
    return s->nqueued + s->nrunning;
}

unsigned long long store_refused(const struct store *s)
{
    return s->refused_total;
}

unsigned long long store_handoffs(const struct store *s)
{
    return s->handoffs;
}

/* Runs the loop one iteration at a time until nothing is pending; other watchers
 * of the loop run meanwhile. The drivers keep a watcher active while anything is
 * pending (sqlite: an idle watcher, so an iteration never sleeps; pgsql: the
 * sockets and reconnect timers), so each iteration makes progress. */
void store_drain(struct store *s)
{
    while (store_pending(s) > 0)
        ev_run(s->loop, EVRUN_ONCE);
}

const char *store_driver(const struct store *s)
{
    return s->drv->name;
}

const char *store_stmt_name(enum store_stmt stmt)
{
    if ((unsigned)stmt >= STORE_STMT_COUNT)
        return "?";
    return store_stmt_defs[stmt].name;
}

int store_wal_stats(const struct store *s, struct store_wal_stats *out)
{
    if (s->drv->wal_stats == NULL || s->drv_state == NULL)
        return -1;
    return s->drv->wal_stats(s, out);
}
