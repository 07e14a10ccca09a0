/* common/store_sqlite.c - the embedded storage driver: sqlite3 in WAL mode, queries run on a thread of their own. */
#include <fcntl.h>
#include <pthread.h>
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

/* Queries handed to the thread at once; the rest wait in the store's queue. */
#define SQLITE_BATCH 64
/* Rows of consecutive batches (store_batch, one statement) the writer commits in one
 * transaction (group_take): a commit writes every page its rows touched, and two rows
 * of one owner share their index leaves only inside one transaction. */
#define SQLITE_GROUP_ROWS 4096
#define SQLITE_BUSY_MS 5000
#define SQLITE_CACHE_KIB 65536            /* page cache per connection */
#define SQLITE_MMAP_BYTES 268435456       /* the database file mapped, up to this */
#define SQLITE_CHECKPOINT_PAGES 8192      /* WAL pages (32 MiB) before a checkpoint (storage.sqlite.checkpoint_pages) */
#define SQLITE_CHECKPOINT_HARD 2          /* times the checkpoint's pages: the WAL is reset before it grows more
                                           * (a page read looks the WAL up, one hash table per 4,096 pages:
                                           * a WAL left at 40,000-64,000 pages cost the writer CPU per row) */
#define SQLITE_SLOW_US 100000             /* a COMMIT or checkpoint this long is logged */
#define LANE_WRITER 0
#define LANE_READER 1
#define MK_STR_(x) #x
#define MK_STR(x) MK_STR_(x)

/* A statement can take long: a big transaction, a lock held by another process
 * (up to the busy timeout), a slow disk. None of it may hold the event loop, so
 * the connection is used by one thread of its own: the loop hands it queries
 * (jobs) and gets the results back through an ev_async, in order. The thread
 * touches only the database and its jobs; callbacks, logs and the store's queue
 * stay on the loop. */
struct sqlite_job {
    struct sqlite_job *next;
    struct store_query *q;
    /* Filled by the thread. */
    struct sqlite_rows {
        struct buf bytes;
        size_t *offs;       /* SIZE_MAX for SQL NULL */
        size_t *lens;
        size_t n, cap;
    } rows;
    size_t ncols;
    uint64_t affected;
    bool failed;
    char err[512];
    char rollback_err[256];  /* a failed ROLLBACK, logged on the loop */
    int64_t commit_us;       /* the COMMIT's duration (0: none ran) */
    int wal_pages;           /* pages in the WAL after the COMMIT */
    int64_t held_us;         /* waited before it for the WAL's reset (its bound) */
};

struct sqlite_drv {
    struct store *s;
    sqlite3 *db;
    sqlite3_stmt *stmts[STORE_STMT_COUNT];
    sqlite3_stmt *rows[STORE_STMT_COUNT];      /* sqlite_rows: STORE_SQLITE_ROWS rows at once, or NULL */
    sqlite3_stmt *before[STORE_STMT_COUNT];    /* sqlite_before, or NULL */
    sqlite3_stmt *after[STORE_STMT_COUNT];     /* sqlite_after, or NULL */
    sqlite3_stmt *begin, *commit, *rollback;
    bool readonly[STORE_STMT_COUNT];           /* the statement only reads */
    /* Two threads, each with its connection and jobs: the writer (every query, in
     * order) and the reader (store_query_read of a statement that only reads: it runs
     * beside the writer's transactions, on a snapshot of what was committed when it
     * started - WAL mode lets a reader and a writer work at once). */
    struct sqlite_lane {
        struct sqlite_drv *d;
        bool reader;
        pthread_t thread;
        bool started;
        pthread_cond_t cv;                     /* with mu */
        struct sqlite_job *todo, *todo_tail;   /* for the thread */
    } lanes[2];
    /* The reader's connection and its statements, prepared on its thread at first use. */
    sqlite3 *rdb;
    sqlite3_stmt *rstmts[STORE_STMT_COUNT];
    pthread_mutex_t mu;
    struct sqlite_job *done, *done_tail;   /* for the loop */
    bool stopping;
    size_t in_flight;                      /* jobs handed over, not yet delivered (loop only) */
    ev_async done_w;                       /* the thread finished a job */
    /* Set by the WAL hook during a COMMIT, on the thread. */
    int hook_wal_pages;
    struct sqlite_ckpt {
        /* The checkpointer: a connection and a thread of their own, so that copying the
         * WAL into the database never runs inside a COMMIT (sqlite's wal_autocheckpoint
         * does it there: 110-280 ms every 16,384 pages on the store bench, seconds in
         * the cluster). The writer's WAL hook wakes it once the WAL holds soft pages;
         * it runs a PASSIVE checkpoint (copies what no reader still needs, never waits),
         * again after every commit until the WAL is all copied: the writer's next
         * transaction then starts the WAL over (journal_size_limit truncates the file
         * back to hard pages after a longer one). Past hard pages (the copy never caught
         * up: the writer had no pause) the writer itself runs a RESTART checkpoint before
         * its next transaction (wait_wal_reset), which copies the rest and starts the WAL
         * over: the bound is hard pages plus one commit. */
        sqlite3 *db;
        pthread_t thread;
        bool started;
        pthread_mutex_t mu;     /* guards what follows */
        pthread_cond_t cv;
        int soft, hard;         /* pages */
        int wal_pages;          /* in the WAL after the last commit */
        bool due, stopping;
        bool hold;              /* the WAL reached hard pages: the writer runs the RESTART */
        bool running;           /* the checkpointer's PASSIVE run is in progress */
        pthread_cond_t idle_cv; /* it is over */
        struct store_wal_stats st;
        int64_t logged_runs;    /* loop: checkpoints already looked at for the log */
        char err[256];          /* the last failure, logged on the loop */
    } ck;
};

/* Rows collected from a statement (struct sqlite_rows): value bytes in one buffer
 * (each NUL-terminated), offsets fixed up into pointers once the buffer stops moving. */

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
static int run_stmt(sqlite3 *db, sqlite3_stmt *st, const struct store_qop *op, struct sqlite_rows *rows,
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
            snprintf(err, errlen, "binding parameter %zu: %s", i + 1, sqlite3_errmsg(db));
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
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
        sqlite3_reset(st);
        return -1;
    }
    *affected = sqlite3_stmt_readonly(st) ? 0 : (uint64_t)sqlite3_changes(db);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return 0;
}

/* Runs the statement before[] of a query and keeps its one value (text) in out. */
static int run_before(sqlite3 *db, sqlite3_stmt *st, char *out, size_t outlen, char *err, size_t errlen)
{
    struct sqlite_rows r = { 0 };
    size_t ncols = 0;
    uint64_t affected = 0;
    int rc = run_stmt(db, st, NULL, &r, &ncols, &affected, err, errlen);
    if (rc == 0 && (r.n != 1 || r.offs[0] == SIZE_MAX)) {
        snprintf(err, errlen, "the statement before a batch gave no value");
        rc = -1;
    }
    if (rc == 0)
        snprintf(out, outlen, "%s", r.bytes.data + r.offs[0]);
    rows_release(&r);
    return rc;
}

/* Records one checkpoint's outcome in ck.st (with ck.mu held). */
static void ckpt_count(struct sqlite_ckpt *ck, sqlite3 *db, int rc, bool restart, int64_t us, int nlog, int ncopied)
{
    ck->st.runs++;
    ck->st.restarts += restart ? 1 : 0;
    ck->st.last_us = us;
    if (us > ck->st.max_us)
        ck->st.max_us = us;
    ck->st.last_wal_pages = nlog;
    ck->st.last_copied = ncopied;
    ck->st.busy += rc == SQLITE_BUSY ? 1 : 0;
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
        ck->st.failures++;
        snprintf(ck->err, sizeof ck->err, "%s", sqlite3_errmsg(db));
    }
}

/* At the WAL's bound (struct sqlite_ckpt: ck.hold), before its next transaction, the
 * writer runs the RESTART checkpoint on its own connection: what the checkpointer has
 * not copied yet is copied (after its run in progress, if any: the busy timeout) and
 * the WAL starts over. On its own connection, because a WAL restarted by another one
 * makes the writer drop its whole page cache at its next transaction (the WAL's header
 * changed under it). The wait is counted on j. */
static void wait_wal_reset(struct sqlite_drv *d, struct sqlite_job *j)
{
    pthread_mutex_lock(&d->ck.mu);
    if (!d->ck.hold) {
        pthread_mutex_unlock(&d->ck.mu);
        return;
    }
    /* Two checkpoints cannot run at once (the second gets SQLITE_BUSY at once): the
     * checkpointer starts none while hold is set, and one in progress is waited for. */
    int64_t t0 = mk_mono_us();
    while (d->ck.running)
        pthread_cond_wait(&d->ck.idle_cv, &d->ck.mu);
    pthread_mutex_unlock(&d->ck.mu);
    int nlog = 0, ncopied = 0;
    int rc = sqlite3_wal_checkpoint_v2(d->db, "main", SQLITE_CHECKPOINT_RESTART, &nlog, &ncopied);
    j->held_us = mk_mono_us() - t0;
    pthread_mutex_lock(&d->ck.mu);
    ckpt_count(&d->ck, d->db, rc, true, j->held_us, nlog, ncopied);
    /* Done or not (a reader kept its snapshot past the busy timeout), the writer goes
     * on; the next commit's pages decide again. */
    d->ck.hold = false;
    d->ck.st.held_us_total += j->held_us;
    if (j->held_us > d->ck.st.held_us_max)
        d->ck.st.held_us_max = j->held_us;
    pthread_mutex_unlock(&d->ck.mu);
}

/* Runs the ops of j's query (inside the caller's transaction, if any): a batch runs
 * STORE_SQLITE_ROWS rows per statement where its statement has a multi-row form (the
 * rows' parameters are contiguous in the query: store.c copies them in order). Only the
 * last op's rows stay in j->rows; *ncols and *affected are the last op's, *total the
 * rows changed over all ops. Returns 0, or -1 with the reason in j->err. */
static int run_ops(struct sqlite_drv *d, struct sqlite_job *j, size_t *ncols, uint64_t *affected, uint64_t *total)
{
    struct store_query *q = j->q;
    enum store_stmt first = q->ops[0].stmt;
    sqlite3_stmt *multi = q->batch ? d->rows[first] : NULL;
    *total = 0;
    for (size_t i = 0; i < q->nops;) {
        rows_release(&j->rows);
        *ncols = 0;
        *affected = 0;
        int rc;
        if (multi != NULL && q->nops - i >= STORE_SQLITE_ROWS) {
            struct store_qop op = {
                .stmt = first,
                .nparams = q->ops[i].nparams * STORE_SQLITE_ROWS,
                .params = q->ops[i].params,
            };
            rc = run_stmt(d->db, multi, &op, NULL, ncols, affected, j->err, sizeof j->err);
            i += STORE_SQLITE_ROWS;
        } else {
            rc = run_stmt(d->db, d->stmts[q->ops[i].stmt], &q->ops[i], &j->rows, ncols, affected, j->err,
                          sizeof j->err);
            i++;
        }
        if (rc == -1)
            return -1;
        *total += *affected;
    }
    return 0;
}

/* Ends the writer's open transaction: ROLLBACK when failed (its reason, if it fails too,
 * in j->rollback_err), else COMMIT (timed into j; a failed one is rolled back and its
 * reason left in j->err). Returns 0 when committed. */
static int end_txn(struct sqlite_drv *d, struct sqlite_job *j, bool failed)
{
    uint64_t dummy;
    size_t dcols;
    char err2[256];
    int64_t t0 = mk_mono_us();
    d->hook_wal_pages = 0;
    if (failed) {
        run_stmt(d->db, d->rollback, NULL, NULL, &dcols, &dummy, j->rollback_err, sizeof j->rollback_err);
        return -1;
    }
    if (run_stmt(d->db, d->commit, NULL, NULL, &dcols, &dummy, j->err, sizeof j->err) == -1) {
        /* A failed COMMIT (SQLITE_BUSY) leaves the transaction open. */
        if (!sqlite3_get_autocommit(d->db))
            run_stmt(d->db, d->rollback, NULL, NULL, &dcols, &dummy, err2, sizeof err2);
        return -1;
    }
    j->commit_us = mk_mono_us() - t0;
    j->wal_pages = d->hook_wal_pages;
    pthread_mutex_lock(&d->ck.mu);
    d->ck.st.commits++;
    pthread_mutex_unlock(&d->ck.mu);
    return 0;
}

/* Runs one query (or transaction) on the thread; the result stays in j. A statement
 * with sqlite_before/after is wrapped by them in one transaction. */
static void exec_job(struct sqlite_drv *d, struct sqlite_job *j)
{
    struct store_query *q = j->q;
    char *err = j->err;
    size_t errlen = sizeof j->err;
    size_t ncols = 0;
    uint64_t affected = 0, batch_affected = 0;
    bool failed = false;
    enum store_stmt first = q->nops > 0 ? q->ops[0].stmt : STORE_STMT_COUNT;
    sqlite3_stmt *before = first < STORE_STMT_COUNT ? d->before[first] : NULL;
    sqlite3_stmt *after = first < STORE_STMT_COUNT ? d->after[first] : NULL;
    bool txn = q->txn || before != NULL || after != NULL;
    char mark[64] = "";

    wait_wal_reset(d, j);
    if (txn && run_stmt(d->db, d->begin, NULL, NULL, &ncols, &affected, err, errlen) == -1) {
        j->failed = true;
        return;
    }
    if (before != NULL && run_before(d->db, before, mark, sizeof mark, err, errlen) == -1)
        failed = true;
    if (!failed && q->nops > 0 && run_ops(d, j, &ncols, &affected, &batch_affected) == -1)
        failed = true;
    if (!failed && after != NULL) {
        const char *params[] = {mark};
        struct store_qop op = { .stmt = first, .nparams = 1, .params = params };
        size_t acols;
        uint64_t aaffected;
        if (run_stmt(d->db, after, &op, NULL, &acols, &aaffected, err, errlen) == -1)
            failed = true;
    }
    /* A batch (store_batch) reports the rows changed over all its rows. */
    if (q->batch)
        affected = batch_affected;
    if (txn && end_txn(d, j, failed) == -1)
        failed = true;
    j->failed = failed;
    j->ncols = ncols;
    j->affected = affected;
}

/* Runs the batches g[0..n) (group_take: one statement, in queue order) in ONE
 * transaction, its sqlite_before and sqlite_after once around them all (one full-text
 * segment for the group). Each job's result is as if it had run alone: when anything
 * fails, the transaction is rolled back and every job runs again alone (exec_job), so a
 * bad batch fails alone and the others commit. */
static void exec_group(struct sqlite_drv *d, struct sqlite_job **g, size_t n)
{
    if (n == 1) {
        exec_job(d, g[0]);
        return;
    }
    struct sqlite_job *last = g[n - 1];
    enum store_stmt stmt = g[0]->q->ops[0].stmt;
    char *err = last->err;
    size_t errlen = sizeof last->err;
    size_t ncols = 0;
    uint64_t affected = 0;
    char mark[64] = "";
    bool failed = false;

    wait_wal_reset(d, g[0]);
    if (run_stmt(d->db, d->begin, NULL, NULL, &ncols, &affected, err, errlen) == -1)
        failed = true;
    else if (d->before[stmt] != NULL && run_before(d->db, d->before[stmt], mark, sizeof mark, err, errlen) == -1)
        failed = true;
    for (size_t i = 0; i < n && !failed; i++) {
        uint64_t total = 0;
        if (run_ops(d, g[i], &ncols, &affected, &total) == -1)
            failed = true;
        g[i]->affected = total;
        g[i]->ncols = ncols;
    }
    if (!failed && d->after[stmt] != NULL) {
        const char *params[] = {mark};
        struct store_qop op = { .stmt = stmt, .nparams = 1, .params = params };
        if (run_stmt(d->db, d->after[stmt], &op, NULL, &ncols, &affected, err, errlen) == -1)
            failed = true;
    }
    if (sqlite3_get_autocommit(d->db) == 0 && end_txn(d, last, failed) == 0) {
        pthread_mutex_lock(&d->ck.mu);
        d->ck.st.grouped += n;
        pthread_mutex_unlock(&d->ck.mu);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct sqlite_job *j = g[i];
        rows_release(&j->rows);
        j->err[0] = '\0';
        j->affected = 0;
        j->ncols = 0;
        j->commit_us = 0;
        exec_job(d, j);
    }
}

/* Delivers a job's result to its query's callback, on the loop, and frees the job. */
static void deliver(struct sqlite_drv *d, struct sqlite_job *j)
{
    if (j->rollback_err[0] != '\0')
        log_error("store_sqlite_rollback", "reason=\"%s\"", j->rollback_err);
    if (j->commit_us >= SQLITE_SLOW_US)
        log_warn("store_sqlite_slow_commit", "ms=%.1f wal_pages=%d", (double)j->commit_us / 1e3, j->wal_pages);
    if (j->held_us > 0)
        log_info("store_sqlite_wal_reset", "waited_ms=%.1f", (double)j->held_us / 1e3);
    if (j->failed) {
        rows_release(&j->rows);
        store_fail(d->s, j->q, j->err);
        free(j);
        return;
    }
    const char **vals = NULL;
    size_t nvals = j->rows.n;
    if (nvals > 0) {
        vals = xmalloc(nvals * sizeof *vals);
        for (size_t i = 0; i < nvals; i++)
            vals[i] = j->rows.offs[i] == SIZE_MAX ? NULL : j->rows.bytes.data + j->rows.offs[i];
    }
    struct store_result res = {
        .ok = 0,
        .nrows = j->ncols > 0 ? nvals / j->ncols : 0,
        .ncols = j->ncols,
        .vals = vals,
        .lens = j->rows.lens,
        .affected = j->affected,
    };
    store_finish(d->s, j->q, &res);
    free(vals);
    rows_release(&j->rows);
    free(j);
}

static void job_push(struct sqlite_job **head, struct sqlite_job **tail, struct sqlite_job *j)
{
    j->next = NULL;
    if (*tail != NULL)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

/* A read (store_query_read) on the reader's connection; the result stays in j. */
static void exec_read(struct sqlite_drv *d, struct sqlite_job *j)
{
    const struct store_qop *op = &j->q->ops[0];
    sqlite3_stmt **st = &d->rstmts[op->stmt];
    size_t ncols = 0;
    uint64_t affected = 0;
    if (*st == NULL && sqlite3_prepare_v3(d->rdb, store_stmt_defs[op->stmt].sqlite, -1, SQLITE_PREPARE_PERSISTENT,
                                          st, NULL) != SQLITE_OK) {
        snprintf(j->err, sizeof j->err, "sqlite: preparing %s: %s", store_stmt_name(op->stmt),
                 sqlite3_errmsg(d->rdb));
        j->failed = true;
        return;
    }
    if (run_stmt(d->rdb, *st, op, &j->rows, &ncols, &affected, j->err, sizeof j->err) == -1)
        j->failed = true;
    j->ncols = ncols;
}

/* Takes the lane's next job into g[0] and, on the writer, the batches right behind a
 * batch of the same statement, up to SQLITE_GROUP_ROWS rows in all (the first one
 * whatever its size): exec_group commits them together. Called with d->mu held;
 * returns how many jobs g holds (g has room for SQLITE_BATCH, the most handed over). */
static size_t group_take(struct sqlite_lane *l, struct sqlite_job **g)
{
    size_t n = 0, rows = 0;
    for (;;) {
        struct sqlite_job *j = l->todo;
        if (n > 0 && (j == NULL || !j->q->batch || j->q->ops[0].stmt != g[0]->q->ops[0].stmt ||
                      rows + j->q->nops > SQLITE_GROUP_ROWS))
            break;
        l->todo = j->next;
        if (l->todo == NULL)
            l->todo_tail = NULL;
        g[n++] = j;
        rows += j->q->nops;
        if (l->reader || !j->q->batch || n == SQLITE_BATCH)
            break;
    }
    return n;
}

static void *sqlite_thread(void *ud)
{
    struct sqlite_lane *l = ud;
    struct sqlite_drv *d = l->d;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (l->todo == NULL && !d->stopping)
            pthread_cond_wait(&l->cv, &d->mu);
        if (d->stopping)
            break;   /* what is left in todo is failed by the loop */
        struct sqlite_job *g[SQLITE_BATCH];
        size_t n = group_take(l, g);
        pthread_mutex_unlock(&d->mu);
        if (l->reader)
            exec_read(d, g[0]);
        else
            exec_group(d, g, n);
        pthread_mutex_lock(&d->mu);
        for (size_t i = 0; i < n; i++)
            job_push(&d->done, &d->done_tail, g[i]);
        ev_async_send(d->s->loop, &d->done_w);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* The loop keeps running (store_drain) while jobs are out: done_w counts as active then. */
static void in_flight_add(struct sqlite_drv *d, long delta)
{
    size_t before = d->in_flight;
    d->in_flight = (size_t)((long)d->in_flight + delta);
    if (before == 0 && d->in_flight > 0)
        ev_ref(d->s->loop);
    else if (before > 0 && d->in_flight == 0)
        ev_unref(d->s->loop);
}

/* Hands queued queries to the threads, up to SQLITE_BATCH out at once: a
 * store_query_read of a statement that only reads to the reader, the rest to the writer. */
static void hand_over(struct sqlite_drv *d)
{
    struct sqlite_job *first[2] = { NULL, NULL }, *last[2] = { NULL, NULL };
    long n = 0;
    while (d->in_flight + (size_t)n < SQLITE_BATCH) {
        struct store_query *q = store_queue_pop(d->s);
        if (q == NULL)
            break;
        struct sqlite_job *j = xcalloc(1, sizeof *j);
        j->q = q;
        bool read = q->apart && !q->txn && !q->batch && q->nops == 1 && d->readonly[q->ops[0].stmt];
        int lane = read ? LANE_READER : LANE_WRITER;
        job_push(&first[lane], &last[lane], j);
        n++;
    }
    if (n == 0)
        return;
    in_flight_add(d, n);
    pthread_mutex_lock(&d->mu);
    for (int i = 0; i < 2; i++) {
        struct sqlite_lane *l = &d->lanes[i];
        if (first[i] == NULL)
            continue;
        if (l->todo_tail != NULL)
            l->todo_tail->next = first[i];
        else
            l->todo = first[i];
        l->todo_tail = last[i];
        pthread_cond_signal(&l->cv);
    }
    pthread_mutex_unlock(&d->mu);
}

static struct sqlite_job *take_done(struct sqlite_drv *d)
{
    pthread_mutex_lock(&d->mu);
    struct sqlite_job *j = d->done;
    d->done = d->done_tail = NULL;
    pthread_mutex_unlock(&d->mu);
    return j;
}

static void ckpt_report(struct sqlite_drv *d);

static void on_done(struct ev_loop *loop, ev_async *w, int revents)
{
    struct sqlite_drv *d = w->data;
    struct sqlite_job *j = take_done(d);
    while (j != NULL) {
        struct sqlite_job *next = j->next;
        in_flight_add(d, -1);
        deliver(d, j);   /* the callback may queue more: hand_over below takes it */
        j = next;
    }
    ckpt_report(d);
    if (d->s->drv_state == d)
        hand_over(d);
}

static void sqlite_kick(struct store *s)
{
    hand_over(s->drv_state);
}

/* The writer's WAL hook, on its thread after each commit (it replaces sqlite's
 * wal_autocheckpoint): records the WAL's size and wakes the checkpointer past ck.soft. */
static int on_wal_commit(void *ud, sqlite3 *db, const char *name, int pages)
{
    struct sqlite_drv *d = ud;
    d->hook_wal_pages = pages;
    pthread_mutex_lock(&d->ck.mu);
    d->ck.wal_pages = pages;
    if (pages > d->ck.st.wal_pages_max)
        d->ck.st.wal_pages_max = pages;
    if (pages >= d->ck.hard)
        d->ck.hold = true;
    if (pages >= d->ck.soft && !d->ck.due) {
        d->ck.due = true;
        pthread_cond_signal(&d->ck.cv);
    }
    pthread_mutex_unlock(&d->ck.mu);
    return SQLITE_OK;
}

static void *ckpt_thread(void *ud)
{
    struct sqlite_drv *d = ud;
    struct sqlite_ckpt *ck = &d->ck;
    pthread_mutex_lock(&ck->mu);
    for (;;) {
        while (!ck->due && !ck->stopping)
            pthread_cond_wait(&ck->cv, &ck->mu);
        if (ck->stopping)
            break;
        ck->due = false;
        if (ck->hold)
            continue;   /* the writer runs the RESTART (wait_wal_reset) */
        ck->running = true;
        pthread_mutex_unlock(&ck->mu);
        int nlog = 0, ncopied = 0;
        int64_t t0 = mk_mono_us();
        int rc = sqlite3_wal_checkpoint_v2(ck->db, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog, &ncopied);
        int64_t us = mk_mono_us() - t0;
        pthread_mutex_lock(&ck->mu);
        ckpt_count(ck, ck->db, rc, false, us, nlog, ncopied);
        ck->running = false;
        pthread_cond_broadcast(&ck->idle_cv);
    }
    pthread_mutex_unlock(&ck->mu);
    return NULL;
}

/* On the loop: logs the checkpointer's last run when it was slow or failed. */
static void ckpt_report(struct sqlite_drv *d)
{
    struct sqlite_ckpt *ck = &d->ck;
    pthread_mutex_lock(&ck->mu);
    struct store_wal_stats st = ck->st;
    char err[sizeof ck->err];
    snprintf(err, sizeof err, "%s", ck->err);
    ck->err[0] = '\0';
    pthread_mutex_unlock(&ck->mu);
    if (err[0] != '\0')
        log_error("store_sqlite_checkpoint_failed", "reason=\"%s\"", err);
    if ((int64_t)st.runs != ck->logged_runs && st.last_us >= SQLITE_SLOW_US)
        log_info("store_sqlite_checkpoint", "ms=%.1f wal_pages=%d copied=%d runs=%llu restarts=%llu",
                 (double)st.last_us / 1e3, st.last_wal_pages, st.last_copied, (unsigned long long)st.runs,
                 (unsigned long long)st.restarts);
    ck->logged_runs = (int64_t)st.runs;
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

/* The schema version of the database: 0 when it has none yet, -1 on error. */
static int schema_version(sqlite3 *db, char *err, size_t errlen)
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
    if (rc == SQLITE_DONE)
        return 0;
    if (sqlite3_prepare_v2(db, "SELECT coalesce(max(version), 1) FROM schema_version", -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite: %s", sqlite3_errmsg(db));
        return -1;
    }
    int v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    if (v == -1)
        snprintf(err, errlen, "sqlite: reading the schema version: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return v;
}

/* Applies the embedded schema when missing, and the migrations the database has not
 * had. BEGIN IMMEDIATE takes the write lock first, so a second process opening the
 * same file waits and then sees the work done. */
static int apply_schema(sqlite3 *db, char *err, size_t errlen)
{
    int have = schema_version(db, err, errlen);
    if (have == -1)
        return -1;
    if (have >= STORE_SQLITE_SCHEMA_VERSION)
        return 0;
    if (exec_simple(db, "BEGIN IMMEDIATE", err, errlen, "begin") == -1)
        return -1;
    int was = have = schema_version(db, err, errlen);
    if (have == 0 && exec_simple(db, store_schema_sqlite, err, errlen, "schema") == 0)
        have = 1;
    if (have == 1 && exec_simple(db, store_schema_sqlite_v2, err, errlen, "schema migration to version 2") == 0)
        have = 2;
    if (have == 2 && exec_simple(db, store_schema_sqlite_v3, err, errlen, "schema migration to version 3") == 0)
        have = 3;
    if (have == 3 && exec_simple(db, store_schema_sqlite_v4, err, errlen, "schema migration to version 4") == 0)
        have = 4;
    if (have == 4 && exec_simple(db, store_schema_sqlite_v5, err, errlen, "schema migration to version 5") == 0)
        have = 5;
    if (have == 5 && exec_simple(db, store_schema_sqlite_v6, err, errlen, "schema migration to version 6") == 0)
        have = 6;
    if (have == 6 && exec_simple(db, store_schema_sqlite_v7, err, errlen, "schema migration to version 7") == 0)
        have = 7;
    if (have != STORE_SQLITE_SCHEMA_VERSION && was < STORE_SQLITE_SCHEMA_VERSION) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    if (exec_simple(db, "COMMIT", err, errlen, "commit") == -1) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    if (was < STORE_SQLITE_SCHEMA_VERSION)
        log_info("store_schema_applied", "driver=sqlite from=%d version=%d", was, STORE_SQLITE_SCHEMA_VERSION);
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

/* The multi-row statement: tmpl with "@ROWS@" replaced by STORE_SQLITE_ROWS groups of
 * ncols placeholders. A new string. */
static char *rows_sql(const char *tmpl, unsigned ncols)
{
    const char *at = strstr(tmpl, "@ROWS@");
    struct buf b;
    buf_init(&b);
    buf_append(&b, tmpl, at != NULL ? (size_t)(at - tmpl) : strlen(tmpl));
    for (unsigned r = 0; at != NULL && r < STORE_SQLITE_ROWS; r++) {
        buf_append(&b, r > 0 ? ", (" : "(", r > 0 ? 3 : 1);
        for (unsigned c = 0; c < ncols; c++) {
            char ph[24];
            int n = snprintf(ph, sizeof ph, "%s?%u", c > 0 ? ", " : "", r * ncols + c + 1);
            buf_append(&b, ph, (size_t)n);
        }
        buf_append(&b, ")", 1);
    }
    if (at != NULL)
        buf_append(&b, at + 6, strlen(at + 6));
    buf_append(&b, "", 1);
    return b.data;
}

/* Stops both threads after the statement each is running (NULL-safe per lane). */
static void stop_lanes(struct sqlite_drv *d)
{
    pthread_mutex_lock(&d->mu);
    d->stopping = true;
    for (int i = 0; i < 2; i++)
        pthread_cond_broadcast(&d->lanes[i].cv);
    pthread_mutex_unlock(&d->mu);
    for (int i = 0; i < 2; i++) {
        if (d->lanes[i].started)
            pthread_join(d->lanes[i].thread, NULL);
        d->lanes[i].started = false;
    }
}

static void sqlite_free(struct sqlite_drv *d)
{
    if (d->ck.started) {
        pthread_mutex_lock(&d->ck.mu);
        d->ck.stopping = true;
        pthread_cond_broadcast(&d->ck.cv);
        pthread_mutex_unlock(&d->ck.mu);
        pthread_join(d->ck.thread, NULL);
        d->ck.started = false;
    }
    sqlite3_close_v2(d->ck.db);   /* first: the writer, closed last, checkpoints the rest */
    pthread_mutex_destroy(&d->ck.mu);
    pthread_cond_destroy(&d->ck.cv);
    pthread_cond_destroy(&d->ck.idle_cv);
    stop_lanes(d);
    pthread_mutex_destroy(&d->mu);
    for (int i = 0; i < 2; i++)
        pthread_cond_destroy(&d->lanes[i].cv);
    for (size_t i = 0; i < STORE_STMT_COUNT; i++)
        sqlite3_finalize(d->rstmts[i]);
    sqlite3_close_v2(d->rdb);
    for (size_t i = 0; i < STORE_STMT_COUNT; i++) {
        sqlite3_finalize(d->stmts[i]);
        sqlite3_finalize(d->rows[i]);
        sqlite3_finalize(d->before[i]);
        sqlite3_finalize(d->after[i]);
    }
    sqlite3_finalize(d->begin);
    sqlite3_finalize(d->commit);
    sqlite3_finalize(d->rollback);
    sqlite3_close_v2(d->db);
    free(d);
}

/* Opens the checkpointer's connection and sets the writer's journal_size_limit to
 * ck.hard pages (a WAL cut back at every restart made the commit after it pay for
 * freeing the file's blocks: 100-120 ms at 64 MiB); the thread starts with the writer's. */
static int open_checkpointer(struct sqlite_drv *d, const char *path, char *err, size_t errlen)
{
    if (sqlite3_open_v2(path, &d->ck.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite: opening %s for checkpoints: %s", path,
                 d->ck.db != NULL ? sqlite3_errmsg(d->ck.db) : "out of memory");
        return -1;
    }
    sqlite3_busy_timeout(d->ck.db, SQLITE_BUSY_MS);   /* RESTART waits for the writer's transaction */
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(d->db, "PRAGMA page_size", -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite page_size: %s", sqlite3_errmsg(d->db));
        return -1;
    }
    long long page = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 4096;
    sqlite3_finalize(st);
    char sql[96];
    snprintf(sql, sizeof sql, "PRAGMA journal_size_limit = %lld", page * (long long)d->ck.hard);
    /* A read opens the connection's view of the WAL: a checkpoint on a connection that
     * never read does nothing. */
    if (exec_simple(d->ck.db, "PRAGMA wal_autocheckpoint = 0", err, errlen, "wal_autocheckpoint") == -1 ||
        exec_simple(d->ck.db, "SELECT count(*) FROM sqlite_master", err, errlen, "checkpoint connection") == -1 ||
        exec_simple(d->db, sql, err, errlen, "journal_size_limit") == -1)
        return -1;
    return 0;
}

/* Opens the reader's connection (query_only; its statements are prepared on its thread). */
static int open_reader(struct sqlite_drv *d, const char *path, char *err, size_t errlen)
{
    if (sqlite3_open_v2(path, &d->rdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite: opening %s for reads: %s", path,
                 d->rdb != NULL ? sqlite3_errmsg(d->rdb) : "out of memory");
        return -1;
    }
    sqlite3_busy_timeout(d->rdb, SQLITE_BUSY_MS);
    sqlite3_extended_result_codes(d->rdb, 1);
    if (exec_simple(d->rdb, "PRAGMA query_only = ON", err, errlen, "query_only") == -1 ||
        exec_simple(d->rdb, "PRAGMA cache_size = -" MK_STR(SQLITE_CACHE_KIB), err, errlen, "cache_size") == -1 ||
        exec_simple(d->rdb, "PRAGMA mmap_size = " MK_STR(SQLITE_MMAP_BYTES), err, errlen, "mmap_size") == -1)
        return -1;
    return 0;
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
    pthread_mutex_init(&d->mu, NULL);
    for (int i = 0; i < 2; i++) {
        d->lanes[i].d = d;
        d->lanes[i].reader = i == LANE_READER;
        pthread_cond_init(&d->lanes[i].cv, NULL);
    }
    pthread_mutex_init(&d->ck.mu, NULL);
    pthread_cond_init(&d->ck.cv, NULL);
    pthread_cond_init(&d->ck.idle_cv, NULL);
    d->ck.soft = cfg->storage.sqlite_checkpoint_pages > 0 ? cfg->storage.sqlite_checkpoint_pages
                                                          : SQLITE_CHECKPOINT_PAGES;
    d->ck.hard = d->ck.soft * SQLITE_CHECKPOINT_HARD;
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
        /* The archive's two per-owner indexes and its full-text index take pages all over
         * the file: a cache of SQLITE_CACHE_KIB (filled only as used) and the file mapped
         * keep them from being read back with a system call each. Measured in
         * docs/BENCHMARKS-MAM.md. */
        exec_simple(d->db, "PRAGMA cache_size = -" MK_STR(SQLITE_CACHE_KIB), err, errlen, "cache_size") == -1 ||
        exec_simple(d->db, "PRAGMA mmap_size = " MK_STR(SQLITE_MMAP_BYTES), err, errlen, "mmap_size") == -1 ||
        exec_simple(d->db, "PRAGMA foreign_keys = ON", err, errlen, "foreign_keys") == -1 ||
        apply_schema(d->db, err, errlen) == -1) {
        sqlite_free(d);
        return -1;
    }
    /* A checkpoint every ck.soft pages (instead of sqlite's 1,000) writes a page dirtied
     * by many commits into the database once; the checkpointer runs it (struct
     * sqlite_ckpt), and the WAL file is cut back to that size when it starts over. */
    if (open_checkpointer(d, path, err, errlen) == -1) {
        sqlite_free(d);
        return -1;
    }
    sqlite3_wal_hook(d->db, on_wal_commit, d);
    for (size_t i = 0; i < STORE_STMT_COUNT; i++) {
        const struct store_stmt_def *def = &store_stmt_defs[i];
        if (prepare(d, def->sqlite, &d->stmts[i], def->name, err, errlen) == -1 ||
            (def->sqlite_before != NULL && prepare(d, def->sqlite_before, &d->before[i], def->name, err, errlen) == -1) ||
            (def->sqlite_after != NULL && prepare(d, def->sqlite_after, &d->after[i], def->name, err, errlen) == -1)) {
            sqlite_free(d);
            return -1;
        }
        if (def->batch && def->sqlite_rows != NULL) {
            char *sql = rows_sql(def->sqlite_rows, def->nparams);
            int rc = prepare(d, sql, &d->rows[i], def->name, err, errlen);
            free(sql);
            if (rc == -1) {
                sqlite_free(d);
                return -1;
            }
        }
    }
    for (size_t i = 0; i < STORE_STMT_COUNT; i++)
        d->readonly[i] = sqlite3_stmt_readonly(d->stmts[i]) != 0;
    if (open_reader(d, path, err, errlen) == -1) {
        sqlite_free(d);
        return -1;
    }
    if (prepare(d, "BEGIN IMMEDIATE", &d->begin, "begin", err, errlen) == -1 ||
        prepare(d, "COMMIT", &d->commit, "commit", err, errlen) == -1 ||
        prepare(d, "ROLLBACK", &d->rollback, "rollback", err, errlen) == -1) {
        sqlite_free(d);
        return -1;
    }
    ev_async_init(&d->done_w, on_done);
    d->done_w.data = d;
    ev_async_start(s->loop, &d->done_w);
    ev_unref(s->loop);   /* active only while jobs are out (in_flight_add) */
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        rc = pthread_create(&d->lanes[i].thread, NULL, sqlite_thread, &d->lanes[i]);
        d->lanes[i].started = rc == 0;
    }
    if (rc != 0) {
        snprintf(err, errlen, "sqlite: cannot start its threads: %s", strerror(rc));
        ev_ref(s->loop);
        ev_async_stop(s->loop, &d->done_w);
        sqlite_free(d);
        return -1;
    }
    rc = pthread_create(&d->ck.thread, NULL, ckpt_thread, d);
    if (rc != 0) {
        snprintf(err, errlen, "sqlite: cannot start its checkpoint thread: %s", strerror(rc));
        ev_ref(s->loop);
        ev_async_stop(s->loop, &d->done_w);
        sqlite_free(d);
        return -1;
    }
    d->ck.started = true;
    s->drv_state = d;
    return 0;
}

static bool sqlite_ready(const struct store *s)
{
    return true;
}

/* Stops the threads after the statement each is running. Every query not yet delivered
 * fails ("the store was closed"), whether the thread ran it or not, as a pgsql query
 * in flight does: store_close's contract. */
static void sqlite_close(struct store *s)
{
    struct sqlite_drv *d = s->drv_state;
    stop_lanes(d);
    s->drv_state = NULL;   /* callbacks below cannot hand more over */
    /* Finished ones first, then the writer's, then the reader's. */
    struct sqlite_job *j = take_done(d), **tail = &j;
    for (int i = 0; i < 2; i++) {
        while (*tail != NULL)
            tail = &(*tail)->next;
        *tail = d->lanes[i].todo;
        d->lanes[i].todo = d->lanes[i].todo_tail = NULL;
    }
    while (j != NULL) {
        struct sqlite_job *next = j->next;
        in_flight_add(d, -1);
        rows_release(&j->rows);
        store_fail(s, j->q, "the store was closed");
        free(j);
        j = next;
    }
    ev_ref(s->loop);
    ev_async_stop(s->loop, &d->done_w);
    sqlite_free(d);
}

static int sqlite_wal_stats(const struct store *s, struct store_wal_stats *out)
{
    struct sqlite_drv *d = s->drv_state;
    pthread_mutex_lock(&d->ck.mu);
    *out = d->ck.st;
    out->wal_pages = d->ck.wal_pages;
    pthread_mutex_unlock(&d->ck.mu);
    return 0;
}

const struct store_driver_ops store_driver_sqlite = {
    .name = "sqlite",
    .open = sqlite_open,
    .kick = sqlite_kick,
    .ready = sqlite_ready,
    .close = sqlite_close,
    .wal_stats = sqlite_wal_stats,
};
