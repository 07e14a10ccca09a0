/* common/store_pgsql.c - the PostgreSQL storage driver: a pool of non-blocking libpq connections on the loop. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "buf.h"
#include "log.h"
#include "store_impl.h"
#include "util.h"

#define PG_BACKOFF_MIN 0.1
#define PG_BACKOFF_MAX 5.0
#define PG_CONNECT_LIMIT 10.0   /* seconds for one connection attempt */
#define PG_QUEUE_LIMIT 30.0     /* seconds a query waits while no connection is up */
#define PG_MAX_RETRIES 3
/* Serialises schema creation between processes starting at the same moment. */
#define PG_SCHEMA_LOCK "SELECT pg_advisory_lock(7238051)"
#define PG_SCHEMA_UNLOCK "SELECT pg_advisory_unlock(7238051)"
/* The database's schema version: 0 none, 1 the base, 2 with push_registration, 3 with inbox, 4 with
 * pep_node, 5 with muc_room. A version is recognised by a table it added (reading schema_version would fail
 * on a database without it; the check must be one plain query). */
#define PG_SCHEMA_CHECK "SELECT CASE WHEN to_regclass('schema_version') IS NULL THEN 0 " \
                        "WHEN to_regclass('push_registration') IS NULL THEN 1 " \
                        "WHEN to_regclass('inbox') IS NULL THEN 2 " \
                        "WHEN to_regclass('pep_node') IS NULL THEN 3 " \
                        "WHEN to_regclass('muc_room') IS NULL THEN 4 ELSE 5 END"
#define PG_MAX_KEYWORDS 16
#define PG_BATCH_MAX_COLS 32

enum pg_state {
    PG_DOWN = 0,      /* waiting for the reconnect timer */
    PG_CONNECTING,    /* PQconnectPoll on the loop */
    PG_SETUP,         /* schema check, then one PQsendPrepare per statement */
    PG_IDLE,
    PG_BUSY,          /* running a query or transaction */
};

enum pg_cmd {
    PG_CMD_NONE = 0,
    PG_CMD_SETUP,
    PG_CMD_BEGIN,
    PG_CMD_OP,
    PG_CMD_COMMIT,
    PG_CMD_ROLLBACK,
    PG_CMD_BATCH,     /* a store_batch as one statement over column arrays (autocommit) */
};

enum pg_setup {
    PG_SETUP_CHECK = 0,
    PG_SETUP_LOCK,
    PG_SETUP_RECHECK,
    PG_SETUP_APPLY,
    PG_SETUP_UNLOCK,
    PG_SETUP_PREPARE,
};

struct pg_drv;

struct pg_conn {
    struct pg_drv *drv;
    unsigned index;
    PGconn *pq;
    enum pg_state state;
    ev_io io;
    int io_events;
    ev_timer timer;        /* reconnect backoff, or the limit on one connection attempt */
    ev_tstamp backoff;
    bool cmd_active;       /* a command was sent and its final NULL result not yet read */
    bool want_write;       /* PQflush had more to send */
    bool dying;            /* the server announced it is terminating this session */
    bool was_up;           /* for logging the transitions only */
    enum pg_cmd cmd;
    enum pg_setup setup;
    size_t prep_next;
    int schema_have;       /* the version the (re)check found */
    struct store_query *q; /* in flight */
    size_t op;
    PGresult *keep;        /* last successful result of the current command */
    PGresult *result;      /* the result of the query's last op */
    char *error;           /* first error of the current query or setup step */
    bool retryable;        /* the server refused it before running anything (57P0x) */
    struct buf arrays;     /* a batch's column arrays while they are built (kept for reuse) */
};

struct pg_drv {
    struct store *s;
    struct pg_conn *conns;
    size_t nconns;
    const char *keywords[PG_MAX_KEYWORDS + 1];
    char *values[PG_MAX_KEYWORDS + 1];
    size_t nkeywords;
    char *where;           /* host:port/dbname for logs; never the password */
    char *schema_sql[STORE_SCHEMA_VERSION];   /* [v]: from version v to the current one */
    ev_timer sweep;        /* fails queries waiting too long while nothing is connected */
};

static void conn_start(struct pg_conn *c);
static void dispatch(struct pg_drv *d);

static void log_reason(enum log_level level, const char *event, const struct pg_conn *c, const char *reason)
{
    char clean[512];
    size_t n = reason != NULL ? strlen(reason) : 0;
    while (n > 0 && (reason[n - 1] == '\n' || reason[n - 1] == ' '))
        n--;
    if (n > 120)
        n = 120;
    if (n == 0) {
        reason = "unknown";
        n = strlen(reason);
    }
    mk_sanitize(clean, sizeof clean, reason, n);
    log_event(level, event, "conn=%u where=%s reason=\"%s\"", c->index, c->drv->where, clean);
}

static void watch(struct pg_conn *c, int events)
{
    int fd = PQsocket(c->pq);
    struct ev_loop *loop = c->drv->s->loop;
    /* During the connection sequence libpq may replace the socket, even with one
     * of the same number: always re-arm there. */
    if (c->state != PG_CONNECTING && ev_is_active(&c->io) && c->io.fd == fd && c->io_events == events)
        return;
    ev_io_stop(loop, &c->io);
    if (fd < 0)
        return;
    ev_io_set(&c->io, fd, events);
    c->io_events = events;
    ev_io_start(loop, &c->io);
}

static void timer_after(struct pg_conn *c, ev_tstamp after)
{
    struct ev_loop *loop = c->drv->s->loop;
    ev_timer_stop(loop, &c->timer);
    ev_timer_set(&c->timer, after, 0.);
    ev_timer_start(loop, &c->timer);
}

static void reset_query_state(struct pg_conn *c)
{
    PQclear(c->keep);
    c->keep = NULL;
    PQclear(c->result);
    c->result = NULL;
    free(c->error);
    c->error = NULL;
    c->retryable = false;
    c->cmd = PG_CMD_NONE;
}

/* Whether every statement of q only reads (a SELECT): run again after a lost
 * connection, it gives the answer it would have given, whatever the server did. */
static bool reads_only(const struct store_query *q)
{
    for (size_t i = 0; i < q->nops; i++)
        if (strncmp(store_stmt_defs[q->ops[i].stmt].pgsql, "SELECT ", 7) != 0)
            return false;
    return true;
}

/* The connection failed or went away: close it, schedule the next attempt, and
 * settle the query in flight. A query is put back when running it again is safe:
 * it only reads, or it certainly did not run (the server refused it while shutting
 * down, or it was a transaction whose COMMIT was never sent: the server rolls those
 * back). Others fail with ok=-1. */
static void conn_lost(struct pg_conn *c, const char *reason)
{
    struct pg_drv *d = c->drv;
    struct ev_loop *loop = d->s->loop;
    log_reason(c->was_up ? LOG_LEVEL_WARN : LOG_LEVEL_DEBUG, "store_pg_down", c, reason);
    c->was_up = false;
    ev_io_stop(loop, &c->io);
    ev_timer_stop(loop, &c->timer);
    PQfinish(c->pq);
    c->pq = NULL;
    c->state = PG_DOWN;
    c->cmd_active = false;
    c->want_write = false;
    c->dying = false;
    timer_after(c, c->backoff);
    c->backoff = c->backoff * 2 > PG_BACKOFF_MAX ? PG_BACKOFF_MAX : c->backoff * 2;

    struct store_query *q = c->q;
    c->q = NULL;
    /* A batch is one autocommit statement: once sent it may have committed. */
    bool retry = c->retryable || (q != NULL && reads_only(q)) ||
                 (q != NULL && q->txn && c->cmd != PG_CMD_COMMIT && c->cmd != PG_CMD_ROLLBACK &&
                  c->cmd != PG_CMD_BATCH && c->error == NULL);
    char *error = c->error;
    c->error = NULL;
    reset_query_state(c);
    if (q != NULL) {
        if (retry && q->retries < PG_MAX_RETRIES) {
            q->retries++;
            store_queue_unpop(d->s, q);
            dispatch(d);
        } else {
            store_fail(d->s, q, error != NULL ? error : "the connection to PostgreSQL was lost");
        }
    }
    free(error);
}

/* Sends what libpq buffered; watches EV_WRITE only while some is left. */
static int flush_out(struct pg_conn *c)
{
    int r = PQflush(c->pq);
    if (r == -1)
        return -1;
    c->want_write = r == 1;
    watch(c, c->want_write ? EV_READ | EV_WRITE : EV_READ);
    return 0;
}

static int send_simple(struct pg_conn *c, enum pg_cmd cmd, const char *sql)
{
    c->cmd = cmd;
    if (!PQsendQuery(c->pq, sql))
        return -1;
    c->cmd_active = true;
    return flush_out(c);
}

static int send_op(struct pg_conn *c, size_t i)
{
    const struct store_qop *op = &c->q->ops[i];
    c->cmd = PG_CMD_OP;
    c->op = i;
    if (!PQsendQueryPrepared(c->pq, store_stmt_defs[op->stmt].name, (int)op->nparams, op->params, NULL, NULL, 0))
        return -1;
    c->cmd_active = true;
    return flush_out(c);
}

/* Appends one element of a text array literal: NULL, or the value double-quoted
 * with its backslashes and double quotes escaped (everything else is literal
 * inside quotes). */
static void array_elem(struct buf *out, const char *v)
{
    if (v == NULL) {
        buf_append(out, "NULL", 4);
        return;
    }
    buf_append(out, "\"", 1);
    const char *run = v;
    for (const char *p = v; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\') {
            buf_append(out, run, (size_t)(p - run));
            buf_append(out, "\\", 1);
            run = p;
        }
    }
    buf_append(out, run, strlen(run));
    buf_append(out, "\"", 1);
}

/* Sends a store_batch as its statement's array form: parameter j is the array of
 * column j over the rows, so the rows travel and run as one statement. */
static int send_batch(struct pg_conn *c)
{
    const struct store_query *q = c->q;
    size_t ncols = q->ops[0].nparams;
    if (ncols > PG_BATCH_MAX_COLS)
        return -1;
    size_t offs[PG_BATCH_MAX_COLS];
    const char *params[PG_BATCH_MAX_COLS];
    struct buf *b = &c->arrays;
    b->len = 0;
    for (size_t j = 0; j < ncols; j++) {
        offs[j] = b->len;
        buf_append(b, "{", 1);
        for (size_t i = 0; i < q->nops; i++) {
            if (i > 0)
                buf_append(b, ",", 1);
            array_elem(b, q->ops[i].params[j]);
        }
        buf_append(b, "}", 2);   /* with its NUL */
    }
    for (size_t j = 0; j < ncols; j++)
        params[j] = b->data + offs[j];
    c->cmd = PG_CMD_BATCH;
    c->op = q->nops - 1;
    /* libpq copies the parameters into its output buffer. */
    int ok = PQsendQueryPrepared(c->pq, store_stmt_defs[q->ops[0].stmt].name, (int)ncols, params, NULL, NULL, 0);
    /* A very large batch's arrays are not kept around between batches. */
    if (b->cap > (1u << 22))
        buf_release(b);
    if (!ok)
        return -1;
    c->cmd_active = true;
    return flush_out(c);
}

static int send_setup(struct pg_conn *c)
{
    int ok;
    c->cmd = PG_CMD_SETUP;
    switch (c->setup) {
    case PG_SETUP_CHECK:
    case PG_SETUP_RECHECK:
        ok = PQsendQuery(c->pq, PG_SCHEMA_CHECK);
        break;
    case PG_SETUP_LOCK:
        ok = PQsendQuery(c->pq, PG_SCHEMA_LOCK);
        break;
    case PG_SETUP_APPLY:
        ok = PQsendQuery(c->pq, c->drv->schema_sql[c->schema_have]);
        break;
    case PG_SETUP_UNLOCK:
        ok = PQsendQuery(c->pq, PG_SCHEMA_UNLOCK);
        break;
    default: {
        const struct store_stmt_def *def = &store_stmt_defs[c->prep_next];
        ok = PQsendPrepare(c->pq, def->name, def->pgsql, (int)def->nparams, NULL);
        break;
    }
    }
    if (!ok)
        return -1;
    c->cmd_active = true;
    return flush_out(c);
}

/* Starts q on an idle connection. Runs no callback: on a send failure it returns -1
 * and the caller puts q back. */
static int start_query(struct pg_conn *c, struct store_query *q)
{
    c->q = q;
    c->state = PG_BUSY;
    if (q->nops == 0) {
        /* An empty transaction: a round trip keeps the callback off this stack. */
        return send_simple(c, PG_CMD_COMMIT, "SELECT 1 WHERE false");
    }
    if (q->batch && store_stmt_defs[q->ops[0].stmt].batch)
        return send_batch(c);
    return q->txn ? send_simple(c, PG_CMD_BEGIN, "BEGIN") : send_op(c, 0);
}

/* Reads whatever is already buffered so a FATAL notice or EOF from a server that
 * went away is seen before a query is handed to this connection. */
static bool conn_alive(struct pg_conn *c)
{
    if (!PQconsumeInput(c->pq))
        return false;
    (void)PQisBusy(c->pq);
    return PQstatus(c->pq) == CONNECTION_OK && !c->dying;
}

static void dispatch(struct pg_drv *d)
{
    for (size_t i = 0; i < d->nconns && d->s->head != NULL; i++) {
        struct pg_conn *c = &d->conns[i];
        if (c->state != PG_IDLE)
            continue;
        if (!conn_alive(c)) {
            conn_lost(c, c->dying ? "the server is terminating the session" : PQerrorMessage(c->pq));
            continue;
        }
        struct store_query *q = store_queue_pop(d->s);
        if (start_query(c, q) == -1) {
            c->q = NULL;
            store_queue_unpop(d->s, q);
            conn_lost(c, PQerrorMessage(c->pq));
        }
    }
}

/* The version a PG_SCHEMA_CHECK answered (STORE_SCHEMA_VERSION when unreadable: then
 * preparing the statements reports what is missing). */
static int result_version(const PGresult *r)
{
    if (r == NULL || PQntuples(r) != 1 || PQnfields(r) != 1)
        return STORE_SCHEMA_VERSION;
    int v = atoi(PQgetvalue(r, 0, 0));
    return v >= 0 && v <= STORE_SCHEMA_VERSION ? v : STORE_SCHEMA_VERSION;
}

static void setup_done(struct pg_conn *c)
{
    if (c->error != NULL) {
        char *why = xasprintf("setup step %d: %s", (int)c->setup, c->error);
        log_reason(LOG_LEVEL_ERROR, "store_pg_setup_failed", c, why);
        free(why);
        conn_lost(c, "setup failed");
        return;
    }
    switch (c->setup) {
    case PG_SETUP_CHECK:
        c->schema_have = result_version(c->keep);
        c->setup = c->schema_have >= STORE_SCHEMA_VERSION ? PG_SETUP_PREPARE : PG_SETUP_LOCK;
        break;
    case PG_SETUP_LOCK:
        c->setup = PG_SETUP_RECHECK;
        break;
    case PG_SETUP_RECHECK:
        c->schema_have = result_version(c->keep);
        c->setup = c->schema_have >= STORE_SCHEMA_VERSION ? PG_SETUP_UNLOCK : PG_SETUP_APPLY;
        break;
    case PG_SETUP_APPLY:
        log_info("store_schema_applied", "driver=pgsql from=%d version=%d where=%s", c->schema_have,
                 STORE_SCHEMA_VERSION, c->drv->where);
        c->setup = PG_SETUP_UNLOCK;
        break;
    case PG_SETUP_UNLOCK:
        c->setup = PG_SETUP_PREPARE;
        break;
    case PG_SETUP_PREPARE:
        c->prep_next++;
        break;
    }
    reset_query_state(c);
    if (c->setup == PG_SETUP_PREPARE && c->prep_next == STORE_STMT_COUNT) {
        c->state = PG_IDLE;
        c->backoff = PG_BACKOFF_MIN;
        c->was_up = true;
        log_info("store_pg_up", "conn=%u where=%s", c->index, c->drv->where);
        dispatch(c->drv);
        return;
    }
    if (send_setup(c) == -1)
        conn_lost(c, PQerrorMessage(c->pq));
}

/* Delivers the query's outcome; the connection is idle again before the callback
 * runs, so the callback may queue more. */
static void finish_query(struct pg_conn *c)
{
    struct pg_drv *d = c->drv;
    struct store_query *q = c->q;
    PGresult *r = c->result;
    char *error = c->error;
    c->result = NULL;
    c->error = NULL;
    c->q = NULL;
    reset_query_state(c);
    c->state = PG_IDLE;

    if (error != NULL || r == NULL) {
        store_fail(d->s, q, error != NULL ? error : "no result from PostgreSQL");
    } else {
        size_t nrows = (size_t)PQntuples(r), ncols = (size_t)PQnfields(r);
        const char **vals = NULL;
        size_t *lens = NULL;
        if (nrows * ncols > 0) {
            vals = xmalloc(nrows * ncols * sizeof *vals);
            lens = xmalloc(nrows * ncols * sizeof *lens);
            for (size_t i = 0; i < nrows; i++) {
                for (size_t j = 0; j < ncols; j++) {
                    bool null = PQgetisnull(r, (int)i, (int)j);
                    vals[i * ncols + j] = null ? NULL : PQgetvalue(r, (int)i, (int)j);
                    lens[i * ncols + j] = null ? 0 : (size_t)PQgetlength(r, (int)i, (int)j);
                }
            }
        }
        const char *tuples = PQcmdTuples(r);
        struct store_result res = {
            .ok = 0,
            .nrows = nrows,
            .ncols = ncols,
            .vals = vals,
            .lens = lens,
            .affected = tuples[0] != '\0' ? strtoull(tuples, NULL, 10) : 0,
        };
        store_finish(d->s, q, &res);
        free(vals);
        free(lens);
    }
    free(error);
    PQclear(r);
    if (c->state == PG_IDLE)
        dispatch(d);
}

/* The command's last result was read: take the next step of the query. */
static void query_step_done(struct pg_conn *c)
{
    int sent = 0;
    switch (c->cmd) {
    case PG_CMD_BEGIN:
        if (c->error != NULL) {
            finish_query(c);
            return;
        }
        PQclear(c->keep);
        c->keep = NULL;
        sent = send_op(c, 0);
        break;
    case PG_CMD_OP:
        if (c->error != NULL) {
            if (!c->q->txn) {
                finish_query(c);
                return;
            }
            sent = send_simple(c, PG_CMD_ROLLBACK, "ROLLBACK");
            break;
        }
        PQclear(c->result);
        c->result = c->keep;
        c->keep = NULL;
        if (c->op + 1 < c->q->nops)
            sent = send_op(c, c->op + 1);
        else if (c->q->txn)
            sent = send_simple(c, PG_CMD_COMMIT, "COMMIT");
        else {
            finish_query(c);
            return;
        }
        break;
    case PG_CMD_BATCH:
        if (c->error == NULL) {
            PQclear(c->result);
            c->result = c->keep;
            c->keep = NULL;
        }
        finish_query(c);
        return;
    case PG_CMD_COMMIT:
        if (c->q->nops == 0) {
            PQclear(c->result);
            c->result = c->keep;
            c->keep = NULL;
        }
        finish_query(c);
        return;
    default:
        finish_query(c);
        return;
    }
    if (sent == -1) {
        /* Nothing of this statement reached the server. */
        if (c->cmd != PG_CMD_COMMIT && c->cmd != PG_CMD_ROLLBACK && (c->q->txn || c->op == 0))
            c->retryable = true;
        conn_lost(c, PQerrorMessage(c->pq));
    }
}

static void absorb(struct pg_conn *c, PGresult *r)
{
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY) {
        PQclear(c->keep);
        c->keep = r;
        return;
    }
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (state != NULL && strncmp(state, "57P0", 4) == 0)
        c->retryable = true;
    if (c->error == NULL) {
        const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
        if (msg == NULL)
            msg = PQresultErrorMessage(r);
        c->error = xstrdup(msg != NULL && msg[0] != '\0' ? msg : PQresStatus(st));
        size_t n = strlen(c->error);
        while (n > 0 && c->error[n - 1] == '\n')
            c->error[--n] = '\0';
    }
    PQclear(r);
}

static void command_done(struct pg_conn *c)
{
    if (PQstatus(c->pq) == CONNECTION_BAD) {
        conn_lost(c, PQerrorMessage(c->pq));
        return;
    }
    /* A 57P0x error read before the connection's end (the server is shutting down or
     * ended this session; nothing ran): the session is as good as lost, and losing it
     * here re-queues the query as when the end is read first. */
    if (c->retryable) {
        conn_lost(c, "the server is terminating the session");
        return;
    }
    if (c->cmd == PG_CMD_SETUP)
        setup_done(c);
    else
        query_step_done(c);
}

/* Takes every result libpq can give without waiting. A step may send the next
 * command, or lose the connection (pq becomes NULL), so both are re-checked. */
static void collect(struct pg_conn *c)
{
    while (c->pq != NULL && c->cmd_active && !PQisBusy(c->pq)) {
        PGresult *r = PQgetResult(c->pq);
        if (r == NULL) {
            c->cmd_active = false;
            command_done(c);
        } else {
            absorb(c, r);
        }
    }
}

static void on_connect_poll(struct pg_conn *c)
{
    switch (PQconnectPoll(c->pq)) {
    case PGRES_POLLING_READING:
        watch(c, EV_READ);
        break;
    case PGRES_POLLING_WRITING:
        watch(c, EV_WRITE);
        break;
    case PGRES_POLLING_OK:
        ev_timer_stop(c->drv->s->loop, &c->timer);
        if (PQsetnonblocking(c->pq, 1) == -1) {
            conn_lost(c, PQerrorMessage(c->pq));
            return;
        }
        c->state = PG_SETUP;
        c->setup = PG_SETUP_CHECK;
        c->prep_next = 0;
        if (send_setup(c) == -1)
            conn_lost(c, PQerrorMessage(c->pq));
        break;
    default:
        conn_lost(c, PQerrorMessage(c->pq));
        break;
    }
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct pg_conn *c = w->data;
    if (c->state == PG_CONNECTING) {
        on_connect_poll(c);
        return;
    }
    if (revents & EV_READ) {
        if (!PQconsumeInput(c->pq)) {
            /* Keep what arrived before the end (a 57P01 says nothing ran). */
            while (c->cmd_active && !PQisBusy(c->pq)) {
                PGresult *r = PQgetResult(c->pq);
                if (r == NULL)
                    break;
                absorb(c, r);
            }
            conn_lost(c, PQerrorMessage(c->pq));
            return;
        }
        (void)PQisBusy(c->pq);
        if (c->dying && !c->cmd_active) {
            conn_lost(c, "the server is terminating the session");
            return;
        }
    }
    if (c->want_write || (revents & EV_WRITE)) {
        if (flush_out(c) == -1) {
            conn_lost(c, PQerrorMessage(c->pq));
            return;
        }
    }
    collect(c);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct pg_conn *c = w->data;
    if (c->state == PG_DOWN)
        conn_start(c);
    else if (c->state == PG_CONNECTING)
        conn_lost(c, "connection attempt timed out");
}

/* Notices and, while idle, the server's FATAL goodbye (57P01 on shutdown). */
static void on_notice(void *arg, const PGresult *r)
{
    struct pg_conn *c = arg;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *severity = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    bool fatal = (severity != NULL && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0)) ||
                 (state != NULL && strncmp(state, "57P0", 4) == 0);
    if (fatal)
        c->dying = true;
    log_reason(fatal ? LOG_LEVEL_WARN : LOG_LEVEL_DEBUG, "store_pg_notice", c, msg);
}

static void conn_start(struct pg_conn *c)
{
    struct pg_drv *d = c->drv;
    c->pq = PQconnectStartParams(d->keywords, (const char *const *)d->values, 0);
    if (c->pq == NULL) {
        log_error("store_pg_oom", "conn=%u", c->index);
        abort();
    }
    if (PQstatus(c->pq) == CONNECTION_BAD) {
        conn_lost(c, PQerrorMessage(c->pq));
        return;
    }
    PQsetNoticeReceiver(c->pq, on_notice, c);
    c->state = PG_CONNECTING;
    watch(c, EV_WRITE);
    timer_after(c, PG_CONNECT_LIMIT);
}

static void on_sweep(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct pg_drv *d = w->data;
    for (size_t i = 0; i < d->nconns; i++)
        if (d->conns[i].state == PG_IDLE || d->conns[i].state == PG_BUSY)
            return;
    ev_tstamp now = ev_now(loop);
    while (d->s->head != NULL && now - d->s->head->queued_at >= PG_QUEUE_LIMIT) {
        struct store_query *q = store_queue_pop(d->s);
        store_fail(d->s, q, "PostgreSQL has been unreachable for too long");
    }
}

static void add_keyword(struct pg_drv *d, const char *kw, const char *val)
{
    if (val == NULL || val[0] == '\0' || d->nkeywords == PG_MAX_KEYWORDS)
        return;
    d->keywords[d->nkeywords] = kw;
    d->values[d->nkeywords] = xstrdup(val);
    d->nkeywords++;
}

static void drv_free(struct pg_drv *d)
{
    for (size_t i = 0; i < d->nkeywords; i++)
        free(d->values[i]);
    free(d->conns);
    free(d->where);
    for (size_t i = 0; i < MK_ARRAY_LEN(d->schema_sql); i++)
        free(d->schema_sql[i]);
    free(d);
}

static int pgsql_open(struct store *s, const struct cfg *cfg, char *err, size_t errlen)
{
    const struct cfg_storage *st = &cfg->storage;
    static const char *const sslmodes[] = { "disable", "allow", "prefer", "require", "verify-ca", "verify-full" };
    if (st->pg_sslmode != NULL) {
        bool known = false;
        for (size_t i = 0; i < MK_ARRAY_LEN(sslmodes); i++)
            known = known || strcmp(st->pg_sslmode, sslmodes[i]) == 0;
        if (!known) {
            snprintf(err, errlen, "storage.pg_sslmode: unknown mode \"%s\"", st->pg_sslmode);
            return -1;
        }
    }
    if (st->pg_port < 0 || st->pg_port > 65535) {
        snprintf(err, errlen, "storage.pg_port: %d is out of range", st->pg_port);
        return -1;
    }
    struct pg_drv *d = xcalloc(1, sizeof *d);
    d->s = s;
    const char *host = st->pg_host != NULL ? st->pg_host : "127.0.0.1";
    char port[16];
    snprintf(port, sizeof port, "%d", st->pg_port > 0 ? st->pg_port : 5432);
    const char *dbname = st->pg_dbname != NULL ? st->pg_dbname : "meerkat";
    add_keyword(d, "host", host);
    /* A numeric address also goes in hostaddr so libpq does no (blocking) lookup;
     * host still names the server for verify-full. */
    unsigned char addr[16];
    if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1)
        add_keyword(d, "hostaddr", host);
    add_keyword(d, "port", port);
    add_keyword(d, "dbname", dbname);
    add_keyword(d, "user", st->pg_user != NULL ? st->pg_user : "meerkat");
    add_keyword(d, "password", st->pg_password);
    add_keyword(d, "sslmode", st->pg_sslmode != NULL ? st->pg_sslmode : "prefer");
    add_keyword(d, "sslrootcert", st->pg_sslrootcert);
    add_keyword(d, "application_name", "meerkat");
    add_keyword(d, "client_encoding", "UTF8");
    add_keyword(d, "gssencmode", "disable");
    d->keywords[d->nkeywords] = NULL;
    d->values[d->nkeywords] = NULL;
    d->where = xasprintf("%s:%s/%s", host, port, dbname);
    d->schema_sql[0] = xasprintf("BEGIN;\n%s\n%s\n%s\n%s\n%s\nCOMMIT;\n", store_schema_pgsql, store_schema_pgsql_v2,
                                 store_schema_pgsql_v3, store_schema_pgsql_v4, store_schema_pgsql_v5);
    d->schema_sql[1] = xasprintf("BEGIN;\n%s\n%s\n%s\n%s\nCOMMIT;\n", store_schema_pgsql_v2, store_schema_pgsql_v3,
                                 store_schema_pgsql_v4, store_schema_pgsql_v5);
    d->schema_sql[2] = xasprintf("BEGIN;\n%s\n%s\n%s\nCOMMIT;\n", store_schema_pgsql_v3, store_schema_pgsql_v4,
                                 store_schema_pgsql_v5);
    d->schema_sql[3] = xasprintf("BEGIN;\n%s\n%s\nCOMMIT;\n", store_schema_pgsql_v4, store_schema_pgsql_v5);
    d->schema_sql[4] = xasprintf("BEGIN;\n%s\nCOMMIT;\n", store_schema_pgsql_v5);

    d->nconns = st->pool_size > 0 ? (size_t)st->pool_size : 2;
    d->conns = xcalloc(d->nconns, sizeof *d->conns);
    s->drv_state = d;
    for (size_t i = 0; i < d->nconns; i++) {
        struct pg_conn *c = &d->conns[i];
        c->drv = d;
        c->index = (unsigned)i;
        c->backoff = PG_BACKOFF_MIN;
        ev_init(&c->io, on_io);
        c->io.data = c;
        ev_init(&c->timer, on_timer);
        c->timer.data = c;
    }
    ev_timer_init(&d->sweep, on_sweep, 1., 1.);
    d->sweep.data = d;
    ev_timer_start(s->loop, &d->sweep);
    ev_unref(s->loop);   /* the sweep alone does not keep the loop running */
    for (size_t i = 0; i < d->nconns; i++)
        conn_start(&d->conns[i]);
    return 0;
}

static void pgsql_kick(struct store *s)
{
    dispatch(s->drv_state);
}

static bool pgsql_ready(const struct store *s)
{
    const struct pg_drv *d = s->drv_state;
    for (size_t i = 0; i < d->nconns; i++)
        if (d->conns[i].state == PG_IDLE || d->conns[i].state == PG_BUSY)
            return true;
    return false;
}

static void pgsql_close(struct store *s)
{
    struct pg_drv *d = s->drv_state;
    struct ev_loop *loop = s->loop;
    ev_ref(loop);
    ev_timer_stop(loop, &d->sweep);
    for (size_t i = 0; i < d->nconns; i++) {
        struct pg_conn *c = &d->conns[i];
        ev_io_stop(loop, &c->io);
        ev_timer_stop(loop, &c->timer);
        PQfinish(c->pq);
        c->pq = NULL;
        c->state = PG_DOWN;
        buf_release(&c->arrays);
        struct store_query *q = c->q;
        c->q = NULL;
        reset_query_state(c);
        if (q != NULL)
            store_fail(s, q, "the store was closed");
    }
    drv_free(d);
    s->drv_state = NULL;
}

const struct store_driver_ops store_driver_pgsql = {
    .name = "pgsql",
    .open = pgsql_open,
    .kick = pgsql_kick,
    .ready = pgsql_ready,
    .close = pgsql_close,
};
