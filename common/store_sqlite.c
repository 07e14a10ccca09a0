/* common/store_sqlite.c - the embedded storage driver: sqlite3 in WAL mode, queries run from the loop's prepare phase. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "buf.h"
#include "log.h"
#include "store_impl.h"
#include "util.h"

/* Queries per loop iteration: keeps a burst of writes from starving the sockets. */
#define SQLITE_BATCH 64
#define SQLITE_BUSY_MS 5000

struct sqlite_drv {
    struct store *s;
    sqlite3 *db;
    sqlite3_stmt *stmts[STORE_STMT_COUNT];
    sqlite3_stmt *begin, *commit, *rollback;
    ev_prepare run_w;   /* runs a batch before the loop sleeps */
    ev_idle awake_w;    /* keeps the loop from sleeping while work is left */
};

/* Rows collected from a statement: value bytes in one buffer (each NUL-terminated),
 * offsets fixed up into pointers once the buffer stops moving. */
struct sqlite_rows {
    struct buf bytes;
    size_t *offs;       /* SIZE_MAX for SQL NULL */
    size_t *lens;
    size_t n, cap;
};

static void rows_add(struct sqlite_rows *r, const void *p, size_t len)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->offs = xrealloc(r->offs, r->cap * sizeof *r->offs);
        r->lens = xrealloc(r->lens, r->cap * sizeof *r->lens);
    }
    if (p == NULL) {
        r->offs[r->n] = SIZE_MAX;
        r->lens[r->n] = 0;
    } else {
        r->offs[r->n] = r->bytes.len;
        r->lens[r->n] = len;
        buf_append(&r->bytes, p, len);
        buf_append(&r->bytes, "", 1);
    }
    r->n++;
}

static void rows_release(struct sqlite_rows *r)
{
    buf_release(&r->bytes);
    free(r->offs);
    free(r->lens);
    memset(r, 0, sizeof *r);
}

/* Runs one statement to completion. On success fills *rows (when not NULL) and
 * *affected; on failure writes the reason into err and returns -1. */
static int run_stmt(struct sqlite_drv *d, sqlite3_stmt *st, const struct store_qop *op, struct sqlite_rows *rows,
                    size_t *ncols, uint64_t *affected, char *err, size_t errlen)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    size_t want = op != NULL ? (size_t)sqlite3_bind_parameter_count(st) : 0;
    if (op != NULL && op->nparams != want) {
        snprintf(err, errlen, "statement %s takes %zu parameters, got %zu", store_stmt_name(op->stmt), want,
                 op->nparams);
        return -1;
    }
    for (size_t i = 0; i < want; i++) {
        const char *p = op->params[i];
        int rc = p == NULL ? sqlite3_bind_null(st, (int)i + 1)
                           : sqlite3_bind_text(st, (int)i + 1, p, (int)strlen(p), SQLITE_STATIC);
        if (rc != SQLITE_OK) {
            snprintf(err, errlen, "binding parameter %zu: %s", i + 1, sqlite3_errmsg(d->db));
            return -1;
        }
    }
    int cols = sqlite3_column_count(st);
    *ncols = (size_t)cols;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (rows == NULL)
            continue;
        for (int c = 0; c < cols; c++) {
            if (sqlite3_column_type(st, c) == SQLITE_NULL) {
                rows_add(rows, NULL, 0);
            } else {
                const unsigned char *t = sqlite3_column_text(st, c);
                rows_add(rows, t != NULL ? (const void *)t : "", (size_t)sqlite3_column_bytes(st, c));
            }
        }
    }
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(d->db));
        sqlite3_reset(st);
        return -1;
    }
    *affected = sqlite3_stmt_readonly(st) ? 0 : (uint64_t)sqlite3_changes(d->db);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return 0;
}

/* Runs one query (or transaction) and delivers its result. */
static void run_query(struct sqlite_drv *d, struct store_query *q)
{
    struct sqlite_rows rows = { 0 };
    char err[512];
    size_t ncols = 0;
    uint64_t affected = 0;
    int failed = 0;

    if (q->txn && run_stmt(d, d->begin, NULL, NULL, &ncols, &affected, err, sizeof err) == -1) {
        store_fail(d->s, q, err);
        return;
    }
    uint64_t batch_affected = 0;
    for (size_t i = 0; i < q->nops; i++) {
        /* Only the last op's rows are returned. */
        rows_release(&rows);
        ncols = 0;
        affected = 0;
        if (run_stmt(d, d->stmts[q->ops[i].stmt], &q->ops[i], &rows, &ncols, &affected, err, sizeof err) == -1) {
            failed = 1;
            break;
        }
        batch_affected += affected;
    }
    /* A batch (store_batch) reports the rows changed over all its rows. */
    if (q->batch)
        affected = batch_affected;
    if (q->txn) {
        uint64_t dummy;
        size_t dcols;
        char err2[256];
        if (failed) {
            if (run_stmt(d, d->rollback, NULL, NULL, &dcols, &dummy, err2, sizeof err2) == -1)
                log_error("store_sqlite_rollback", "reason=\"%s\"", err2);
        } else if (run_stmt(d, d->commit, NULL, NULL, &dcols, &dummy, err, sizeof err) == -1) {
            failed = 1;
            /* A failed COMMIT (SQLITE_BUSY) leaves the transaction open. */
            if (!sqlite3_get_autocommit(d->db))
                run_stmt(d, d->rollback, NULL, NULL, &dcols, &dummy, err2, sizeof err2);
        }
    }
    if (failed) {
        rows_release(&rows);
        store_fail(d->s, q, err);
        return;
    }
    const char **vals = NULL;
    size_t nvals = rows.n;
    if (nvals > 0) {
        vals = xmalloc(nvals * sizeof *vals);
        for (size_t i = 0; i < nvals; i++)
            vals[i] = rows.offs[i] == SIZE_MAX ? NULL : rows.bytes.data + rows.offs[i];
    }
    struct store_result res = {
        .ok = 0,
        .nrows = ncols > 0 ? nvals / ncols : 0,
        .ncols = ncols,
        .vals = vals,
        .lens = rows.lens,
        .affected = affected,
    };
    store_finish(d->s, q, &res);
    free(vals);
    rows_release(&rows);
}

static void run_batch(struct sqlite_drv *d)
{
    for (int i = 0; i < SQLITE_BATCH; i++) {
        struct store_query *q = store_queue_pop(d->s);
        if (q == NULL)
            break;
        run_query(d, q);
    }
    if (d->s->head == NULL)
        ev_prepare_stop(d->s->loop, &d->run_w);
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    run_batch(w->data);
}

/* Runs after the poll that the idle watcher kept short: more work, or nothing left
 * and the idle watcher goes away so the loop may sleep again. */
static void on_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
    struct sqlite_drv *d = w->data;
    if (d->s->head != NULL)
        run_batch(d);
    if (d->s->head == NULL)
        ev_idle_stop(loop, w);
}

static void sqlite_kick(struct store *s)
{
    struct sqlite_drv *d = s->drv_state;
    ev_prepare_start(s->loop, &d->run_w);
    ev_idle_start(s->loop, &d->awake_w);
}

static int exec_simple(sqlite3 *db, const char *sql, char *err, size_t errlen, const char *what)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite %s: %s", what, msg != NULL ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* 1 when the schema_version table exists, 0 when not, -1 on error. */
static int has_schema(sqlite3 *db, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'", -1,
                           &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite: %s", sqlite3_errmsg(db));
        return -1;
    }
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        snprintf(err, errlen, "sqlite: %s", sqlite3_errmsg(db));
        return -1;
    }
    return rc == SQLITE_ROW;
}

/* Applies the embedded schema when missing. BEGIN IMMEDIATE takes the write lock
 * first, so a second process opening the same file waits and then sees it. */
static int apply_schema(sqlite3 *db, char *err, size_t errlen)
{
    int have = has_schema(db, err, errlen);
    if (have != 0)
        return have == 1 ? 0 : -1;
    if (exec_simple(db, "BEGIN IMMEDIATE", err, errlen, "begin") == -1)
        return -1;
    have = has_schema(db, err, errlen);
    if (have == 0 && exec_simple(db, store_schema_sqlite, err, errlen, "schema") == 0)
        have = 1;
    if (have != 1) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    if (exec_simple(db, "COMMIT", err, errlen, "commit") == -1) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    log_info("store_schema_applied", "driver=sqlite version=1");
    return 0;
}

static int prepare(struct sqlite_drv *d, const char *sql, sqlite3_stmt **out, const char *name, char *err,
                   size_t errlen)
{
    if (sqlite3_prepare_v3(d->db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite: preparing %s: %s", name, sqlite3_errmsg(d->db));
        return -1;
    }
    return 0;
}

static void sqlite_free(struct sqlite_drv *d)
{
    for (size_t i = 0; i < STORE_STMT_COUNT; i++)
        sqlite3_finalize(d->stmts[i]);
    sqlite3_finalize(d->begin);
    sqlite3_finalize(d->commit);
    sqlite3_finalize(d->rollback);
    sqlite3_close_v2(d->db);
    free(d);
}

static int sqlite_open(struct store *s, const struct cfg *cfg, char *err, size_t errlen)
{
    const char *path = cfg->storage.sqlite_path;
    if (path == NULL || path[0] == '\0') {
        snprintf(err, errlen, "storage.sqlite_path is not set");
        return -1;
    }
    /* The database holds every account's keys: made 0600 here (an empty file is an
     * empty database), and SQLite gives its -wal and -shm files the same mode. */
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd != -1)
        close(fd);
    struct sqlite_drv *d = xcalloc(1, sizeof *d);
    d->s = s;
    if (sqlite3_open_v2(path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "sqlite: opening %s: %s", path, d->db != NULL ? sqlite3_errmsg(d->db) : "out of memory");
        sqlite_free(d);
        return -1;
    }
    sqlite3_busy_timeout(d->db, SQLITE_BUSY_MS);
    sqlite3_extended_result_codes(d->db, 1);
    /* journal_mode answers with a row: sqlite3_exec ignores it. An in-memory or
     * read-only database stays in its own mode, which is harmless. */
    if (exec_simple(d->db, "PRAGMA journal_mode = WAL", err, errlen, "journal_mode") == -1 ||
        exec_simple(d->db, "PRAGMA synchronous = NORMAL", err, errlen, "synchronous") == -1 ||
        exec_simple(d->db, "PRAGMA foreign_keys = ON", err, errlen, "foreign_keys") == -1 ||
        apply_schema(d->db, err, errlen) == -1) {
        sqlite_free(d);
        return -1;
    }
    for (size_t i = 0; i < STORE_STMT_COUNT; i++) {
        if (prepare(d, store_stmt_defs[i].sqlite, &d->stmts[i], store_stmt_defs[i].name, err, errlen) == -1) {
            sqlite_free(d);
            return -1;
        }
    }
    if (prepare(d, "BEGIN IMMEDIATE", &d->begin, "begin", err, errlen) == -1 ||
        prepare(d, "COMMIT", &d->commit, "commit", err, errlen) == -1 ||
        prepare(d, "ROLLBACK", &d->rollback, "rollback", err, errlen) == -1) {
        sqlite_free(d);
        return -1;
    }
    ev_prepare_init(&d->run_w, on_prepare);
    d->run_w.data = d;
    ev_idle_init(&d->awake_w, on_idle);
    d->awake_w.data = d;
    s->drv_state = d;
    return 0;
}

static bool sqlite_ready(const struct store *s)
{
    return true;
}

/* Nothing is ever in flight between loop iterations: store_close fails the queue. */
static void sqlite_close(struct store *s)
{
    struct sqlite_drv *d = s->drv_state;
    ev_prepare_stop(s->loop, &d->run_w);
    ev_idle_stop(s->loop, &d->awake_w);
    sqlite_free(d);
    s->drv_state = NULL;
}

const struct store_driver_ops store_driver_sqlite = {
    .name = "sqlite",
    .open = sqlite_open,
    .kick = sqlite_kick,
    .ready = sqlite_ready,
    .close = sqlite_close,
};
