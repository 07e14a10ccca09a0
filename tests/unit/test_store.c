/* tests/unit/test_store.c - every storage statement on sqlite and on a real PostgreSQL, transactions, reconnects. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>

#include <ev.h>
#include <sqlite3.h>

#include "cfg.h"
#include "store.h"
#include "util.h"

#define PG_SCRIPT "tests/pg_tmp.sh"

/* A copy of one result, filled by the callback. */
struct res {
    int calls;
    int ok;
    char *error;
    size_t nrows, ncols;
    char **vals;
    size_t *lens;
    uint64_t affected;
    int order;            /* completion order, to check FIFO delivery */
};

static int completions;

static void res_clear(struct res *r)
{
    for (size_t i = 0; i < r->nrows * r->ncols; i++)
        free(r->vals[i]);
    free(r->vals);
    free(r->lens);
    free(r->error);
    memset(r, 0, sizeof *r);
}

static void on_result(void *ud, const struct store_result *sr)
{
    struct res *r = ud;
    r->calls++;
    r->order = completions++;
    r->ok = sr->ok;
    r->error = xstrdup(sr->error);
    r->nrows = sr->nrows;
    r->ncols = sr->ncols;
    r->affected = sr->affected;
    size_t n = sr->nrows * sr->ncols;
    r->vals = n ? xcalloc(n, sizeof *r->vals) : NULL;
    r->lens = n ? xcalloc(n, sizeof *r->lens) : NULL;
    for (size_t i = 0; i < n; i++) {
        if (sr->vals[i] != NULL) {
            assert_int_equal(strlen(sr->vals[i]), sr->lens[i]);
            r->vals[i] = xstrndup(sr->vals[i], sr->lens[i]);
            r->lens[i] = sr->lens[i];
        }
    }
}

static const char *val(const struct res *r, size_t row, size_t col)
{
    assert_true(row < r->nrows);
    assert_true(col < r->ncols);
    return r->vals[row * r->ncols + col];
}

#define PARAMS(...) ((const char *const[]){ __VA_ARGS__ })
#define NPARAMS(...) (sizeof((const char *const[]){ __VA_ARGS__ }) / sizeof(const char *))

static struct res last;

/* Runs one statement to completion; checks the callback did not run inside store_query. */
static struct res *run_query(struct store *s, enum store_stmt stmt, const char *const *params, size_t n)
{
    res_clear(&last);
    store_query(s, stmt, params, n, on_result, &last);
    assert_int_equal(last.calls, 0);
    assert_true(store_pending(s) >= 1);
    store_drain(s);
    assert_int_equal(last.calls, 1);
    assert_int_equal(store_pending(s), 0);
    return &last;
}
#define Q(s, stmt, ...) run_query((s), (stmt), PARAMS(__VA_ARGS__), NPARAMS(__VA_ARGS__))

static struct res *q_ok(struct res *r)
{
    if (r->ok != 0)
        fail_msg("query failed: %s", r->error ? r->error : "?");
    return r;
}
#define QOK(s, stmt, ...) q_ok(Q(s, stmt, __VA_ARGS__))

#define U "alice", "example.org"
#define CRED1 "c2FsdDE=", "4096", "c3RvcmVkMQ==", "c2VydmVyMQ==", "c2FsdDI=", "4096", "c3RvcmVkMg==", "c2VydmVyMg=="
#define CRED2 "bmV3MQ==", "10000", "bmV3Mg==", "bmV3Mw==", "bmV3NA==", "10000", "bmV3NQ==", "bmV3Ng=="

/* An XML-ish text with every control character but NUL, quotes, placeholders and
 * multi-byte UTF-8 up to 4 bytes (emoji), repeated to ~64 KiB. */
static char *hostile_text(void)
{
    struct {
        char *p;
        size_t n;
    } b = { xmalloc(70000), 0 };
    const char *head = "<message xml:lang='en'>\"$1 ?1 ?\?\?( %s \\ '; DROP TABLE users; -- caf\xc3\xa9 \xe2\x82\xac "
                       "\xf0\x9f\x98\x80 \xf0\x9d\x84\x9e";
    memcpy(b.p, head, strlen(head));
    b.n = strlen(head);
    for (int c = 1; c < 32; c++)
        b.p[b.n++] = (char)c;
    while (b.n < 65000) {
        const char *emoji = "\xf0\x9f\x98\x80x";
        memcpy(b.p + b.n, emoji, 5);
        b.n += 5;
    }
    memcpy(b.p + b.n, "</message>", 11);
    return b.p;
}

static void exercise_users(struct store *s)
{
    struct res *r = QOK(s, STORE_USER_CREATE, U, CRED1);
    assert_int_equal(r->affected, 1);
    r = QOK(s, STORE_USER_CREATE, U, CRED2);
    assert_int_equal(r->affected, 0);
    QOK(s, STORE_USER_CREATE, "bob", "example.org", CRED1);
    QOK(s, STORE_USER_CREATE, "carol", "other.org", CRED1);

    r = QOK(s, STORE_USER_GET, U);
    assert_int_equal(r->nrows, 1);
    assert_int_equal(r->ncols, 8);
    const char *cred1[] = { CRED1 };
    for (size_t i = 0; i < 8; i++)
        assert_string_equal(val(r, 0, i), cred1[i]);
    r = QOK(s, STORE_USER_GET, "nobody", "example.org");
    assert_int_equal(r->nrows, 0);

    r = QOK(s, STORE_USER_SET_PASSWORD, U, CRED2);
    assert_int_equal(r->affected, 1);
    r = QOK(s, STORE_USER_GET, U);
    const char *cred2[] = { CRED2 };
    for (size_t i = 0; i < 8; i++)
        assert_string_equal(val(r, 0, i), cred2[i]);
    r = QOK(s, STORE_USER_SET_PASSWORD, "nobody", "example.org", CRED2);
    assert_int_equal(r->affected, 0);

    r = QOK(s, STORE_USER_LIST, "example.org");
    assert_int_equal(r->nrows, 2);
    assert_int_equal(r->ncols, 1);
    assert_string_equal(val(r, 0, 0), "alice");
    assert_string_equal(val(r, 1, 0), "bob");
}

static void exercise_roster(struct store *s)
{
    struct res *r = QOK(s, STORE_ROSTER_VERSION_GET, U);
    assert_int_equal(r->nrows, 0);
    QOK(s, STORE_ROSTER_SET, U, "zed@example.net", "Zed \xf0\x9f\x98\x80", "both", NULL, "Friends\nWork", "1");
    QOK(s, STORE_ROSTER_SET, U, "bob@example.org", NULL, "none", "subscribe", NULL, "0");
    QOK(s, STORE_ROSTER_VERSION_BUMP, U);
    r = QOK(s, STORE_ROSTER_VERSION_GET, U);
    assert_string_equal(val(r, 0, 0), "1");
    QOK(s, STORE_ROSTER_VERSION_BUMP, U);
    r = QOK(s, STORE_ROSTER_VERSION_GET, U);
    assert_string_equal(val(r, 0, 0), "2");

    r = QOK(s, STORE_ROSTER_GET, U);
    assert_int_equal(r->nrows, 2);
    assert_int_equal(r->ncols, 6);
    assert_string_equal(val(r, 0, 0), "bob@example.org");
    assert_null(val(r, 0, 1));
    assert_string_equal(val(r, 0, 2), "none");
    assert_string_equal(val(r, 0, 3), "subscribe");
    assert_null(val(r, 0, 4));
    assert_string_equal(val(r, 0, 5), "0");
    assert_string_equal(val(r, 1, 0), "zed@example.net");
    assert_string_equal(val(r, 1, 1), "Zed \xf0\x9f\x98\x80");
    assert_string_equal(val(r, 1, 4), "Friends\nWork");
    assert_string_equal(val(r, 1, 5), "1");

    /* Upsert replaces. */
    r = QOK(s, STORE_ROSTER_SET, U, "bob@example.org", "Bob", "to", NULL, "Work", "1");
    assert_int_equal(r->affected, 1);
    r = QOK(s, STORE_ROSTER_GET_ITEM, U, "bob@example.org");
    assert_int_equal(r->nrows, 1);
    assert_string_equal(val(r, 0, 1), "Bob");
    assert_string_equal(val(r, 0, 2), "to");
    assert_null(val(r, 0, 3));
    r = QOK(s, STORE_ROSTER_DELETE, U, "bob@example.org");
    assert_int_equal(r->affected, 1);
    r = QOK(s, STORE_ROSTER_GET_ITEM, U, "bob@example.org");
    assert_int_equal(r->nrows, 0);
    r = QOK(s, STORE_ROSTER_GET, U);
    assert_int_equal(r->nrows, 1);

    /* Rows belong to existing users only. */
    r = Q(s, STORE_ROSTER_SET, "ghost", "example.org", "a@b", NULL, "none", NULL, NULL, "0");
    assert_int_equal(r->ok, -1);
    assert_non_null(r->error);
}

static void exercise_xml(struct store *s)
{
    char *text = hostile_text();
    struct res *r = QOK(s, STORE_VCARD_GET, U);
    assert_int_equal(r->nrows, 0);
    QOK(s, STORE_VCARD_SET, U, "<vCard xmlns='vcard-temp'/>");
    QOK(s, STORE_VCARD_SET, U, text);
    r = QOK(s, STORE_VCARD_GET, U);
    assert_int_equal(r->nrows, 1);
    assert_int_equal(r->lens[0], strlen(text));
    assert_string_equal(val(r, 0, 0), text);

    QOK(s, STORE_PRIVATE_SET, U, "storage:bookmarks", "<storage xmlns='storage:bookmarks'/>");
    QOK(s, STORE_PRIVATE_SET, U, "storage:rosternotes", "<storage xmlns='storage:rosternotes'/>");
    QOK(s, STORE_PRIVATE_SET, U, "storage:bookmarks", "<storage xmlns='storage:bookmarks'>\xf0\x9f\x98\x80</storage>");
    r = QOK(s, STORE_PRIVATE_GET, U, "storage:bookmarks");
    assert_string_equal(val(r, 0, 0), "<storage xmlns='storage:bookmarks'>\xf0\x9f\x98\x80</storage>");
    r = QOK(s, STORE_PRIVATE_GET, U, "storage:none");
    assert_int_equal(r->nrows, 0);

    QOK(s, STORE_LAST_SET, U, "1700000000", "Gone \xf0\x9f\x98\x80");
    QOK(s, STORE_LAST_SET, U, "1700000500", NULL);
    r = QOK(s, STORE_LAST_GET, U);
    assert_int_equal(r->ncols, 2);
    assert_string_equal(val(r, 0, 0), "1700000500");
    assert_null(val(r, 0, 1));

    /* Offline: arrival order is id order, whatever the insertion order. */
    QOK(s, STORE_OFFLINE_ADD, U, "3000", "1700000000000300", "bob@example.org/x", "<message id='3'/>");
    QOK(s, STORE_OFFLINE_ADD, U, "1000", "1700000000000100", "bob@example.org/x", text);
    r = QOK(s, STORE_OFFLINE_ADD, U, "2000", "1700000000000200", "zed@example.net", "<message id='2'/>");
    assert_int_equal(r->affected, 1);
    r = QOK(s, STORE_OFFLINE_ADD, U, "2000", "1700000000000200", "zed@example.net", "<message id='2'/>");
    assert_int_equal(r->affected, 0);
    r = QOK(s, STORE_OFFLINE_COUNT, U);
    assert_string_equal(val(r, 0, 0), "3");
    r = QOK(s, STORE_OFFLINE_FETCH, U);
    assert_int_equal(r->nrows, 3);
    assert_int_equal(r->ncols, 4);
    assert_string_equal(val(r, 0, 0), "1000");
    assert_string_equal(val(r, 0, 1), "1700000000000100");
    assert_string_equal(val(r, 0, 2), "bob@example.org/x");
    assert_string_equal(val(r, 0, 3), text);
    assert_string_equal(val(r, 1, 0), "2000");
    assert_string_equal(val(r, 2, 0), "3000");
    r = QOK(s, STORE_OFFLINE_DELETE_UPTO, U, "2000");
    assert_int_equal(r->affected, 2);
    r = QOK(s, STORE_OFFLINE_FETCH, U);
    assert_int_equal(r->nrows, 1);
    assert_string_equal(val(r, 0, 3), "<message id='3'/>");
    /* Exactly the rows named: 1500 (stored after a fetch, below its last id) stays. */
    QOK(s, STORE_OFFLINE_ADD, U, "1500", "1700000000000150", "zed@example.net", "<message id='15'/>");
    QOK(s, STORE_OFFLINE_ADD, U, "4000", "1700000000000400", "zed@example.net", "<message id='4'/>");
    QOK(s, STORE_OFFLINE_ADD, U, "30000", "1700000000000400", "zed@example.net", "<message id='30'/>");
    r = QOK(s, STORE_OFFLINE_DELETE_IDS, U, "3000,30000");
    assert_int_equal(r->affected, 2);
    r = QOK(s, STORE_OFFLINE_FETCH, U);
    assert_int_equal(r->nrows, 2);
    assert_string_equal(val(r, 0, 0), "1500");
    assert_string_equal(val(r, 1, 0), "4000");
    r = QOK(s, STORE_OFFLINE_DELETE_IDS, U, "4000");
    assert_int_equal(r->affected, 1);
    r = QOK(s, STORE_OFFLINE_DELETE_IDS, U, "400");
    assert_int_equal(r->affected, 0);
    free(text);
}

static void exercise_blocking(struct store *s)
{
    QOK(s, STORE_BLOCK_ADD, U, "spam@evil.example");
    QOK(s, STORE_BLOCK_ADD, U, "eve@evil.example");
    struct res *r = QOK(s, STORE_BLOCK_ADD, U, "eve@evil.example");
    assert_int_equal(r->affected, 0);
    r = QOK(s, STORE_BLOCK_LIST, U);
    assert_int_equal(r->nrows, 2);
    assert_string_equal(val(r, 0, 0), "eve@evil.example");
    assert_string_equal(val(r, 1, 0), "spam@evil.example");
    r = QOK(s, STORE_BLOCK_REMOVE, U, "eve@evil.example");
    assert_int_equal(r->affected, 1);
    r = QOK(s, STORE_BLOCK_LIST, U);
    assert_int_equal(r->nrows, 1);
    QOK(s, STORE_BLOCK_ADD, U, "x@evil.example");
    r = QOK(s, STORE_BLOCK_CLEAR, U);
    assert_int_equal(r->affected, 2);
    r = QOK(s, STORE_BLOCK_LIST, U);
    assert_int_equal(r->nrows, 0);
    QOK(s, STORE_BLOCK_ADD, U, "kept@evil.example");
}

static void exercise_txn(struct store *s)
{
    /* The second statement violates NOT NULL (subscription): nothing stays. */
    const struct store_op bad[] = {
        { STORE_BLOCK_ADD, PARAMS(U, "txn@evil.example"), 3 },
        { STORE_ROSTER_SET, PARAMS(U, "txn@example.net", NULL, NULL, NULL, NULL, "0"), 8 },
        { STORE_ROSTER_VERSION_BUMP, PARAMS(U), 2 },
    };
    res_clear(&last);
    store_txn(s, bad, 3, on_result, &last);
    assert_int_equal(last.calls, 0);
    store_drain(s);
    assert_int_equal(last.calls, 1);
    assert_int_equal(last.ok, -1);
    assert_non_null(last.error);
    struct res *r = QOK(s, STORE_BLOCK_LIST, U);
    assert_int_equal(r->nrows, 1);
    assert_string_equal(val(r, 0, 0), "kept@evil.example");
    r = QOK(s, STORE_ROSTER_VERSION_GET, U);
    assert_string_equal(val(r, 0, 0), "2");

    const struct store_op good[] = {
        { STORE_ROSTER_SET, PARAMS(U, "txn@example.net", NULL, "none", NULL, NULL, "0"), 8 },
        { STORE_ROSTER_VERSION_BUMP, PARAMS(U), 2 },
        { STORE_ROSTER_VERSION_GET, PARAMS(U), 2 },
    };
    res_clear(&last);
    store_txn(s, good, 3, on_result, &last);
    assert_int_equal(last.calls, 0);
    store_drain(s);
    assert_int_equal(last.calls, 1);
    assert_int_equal(last.ok, 0);
    assert_int_equal(last.nrows, 1);
    assert_string_equal(val(&last, 0, 0), "3");

    /* A wrong parameter count is an error, not a crash. */
    r = Q(s, STORE_USER_GET, "alice");
    assert_int_equal(r->ok, -1);
}

/* Many queries queued at once: none completes inside store_query, all complete in
 * queue order when one connection runs them. */
static void exercise_burst(struct store *s, bool ordered)
{
    enum { N = 200 };
    static struct res rs[N];
    char ids[N][24];
    for (int i = 0; i < N; i++) {
        memset(&rs[i], 0, sizeof rs[i]);
        snprintf(ids[i], sizeof ids[i], "%d", 10000 + i);
        store_query(s, STORE_OFFLINE_ADD, PARAMS("bob", "example.org", ids[i], ids[i], "a@b", "<m/>"), 6,
                    on_result, &rs[i]);
    }
    assert_int_equal(store_pending(s), N);
    for (int i = 0; i < N; i++)
        assert_int_equal(rs[i].calls, 0);
    store_drain(s);
    for (int i = 0; i < N; i++) {
        assert_int_equal(rs[i].calls, 1);
        assert_int_equal(rs[i].ok, 0);
        if (ordered && i > 0)
            assert_true(rs[i].order > rs[i - 1].order);
        res_clear(&rs[i]);
    }
    struct res *r = QOK(s, STORE_OFFLINE_COUNT, "bob", "example.org");
    assert_string_equal(val(r, 0, 0), "200");
    /* A NULL callback is allowed. */
    store_query(s, STORE_OFFLINE_DELETE_UPTO, PARAMS("bob", "example.org", "20000"), 3, NULL, NULL);
    store_drain(s);
    r = QOK(s, STORE_OFFLINE_COUNT, "bob", "example.org");
    assert_string_equal(val(r, 0, 0), "0");
}

static void exercise_delete(struct store *s)
{
    struct res *r = QOK(s, STORE_USER_DELETE, U);
    assert_int_equal(r->affected, 1);
    r = QOK(s, STORE_USER_DELETE, U);
    assert_int_equal(r->affected, 0);
    assert_int_equal(QOK(s, STORE_USER_GET, U)->nrows, 0);
    assert_int_equal(QOK(s, STORE_ROSTER_GET, U)->nrows, 0);
    assert_int_equal(QOK(s, STORE_ROSTER_VERSION_GET, U)->nrows, 0);
    assert_int_equal(QOK(s, STORE_VCARD_GET, U)->nrows, 0);
    assert_int_equal(QOK(s, STORE_PRIVATE_GET, U, "storage:bookmarks")->nrows, 0);
    assert_int_equal(QOK(s, STORE_BLOCK_LIST, U)->nrows, 0);
    assert_int_equal(QOK(s, STORE_PUSH_REG_LIST, U)->nrows, 0);
    assert_int_equal(QOK(s, STORE_LAST_GET, U)->nrows, 0);
    assert_string_equal(val(QOK(s, STORE_OFFLINE_COUNT, U), 0, 0), "0");
    /* Other users are untouched. */
    assert_int_equal(QOK(s, STORE_USER_GET, "bob", "example.org")->nrows, 1);
    r = QOK(s, STORE_USER_LIST, "example.org");
    assert_int_equal(r->nrows, 1);
}

/* XEP-0357 registrations: enable replaces the same (user, pubsub, node), the bound counts
 * the others, disable of a pubsub takes every node of it and only it; the form's bytes are
 * kept exactly. */
static void exercise_push(struct store *s)
{
    const char *form = "<x xmlns='jabber:x:data' type='submit'><field var='service'><value>apns ð"
                       "</value></field></x>";
    struct res *r = QOK(s, STORE_PUSH_REG_SET, U, "push.example.org", "node1", form, "100", "3");
    assert_int_equal(r->affected, 1);
    QOK(s, STORE_PUSH_REG_SET, U, "push.example.org", "node2", "", "200", "3");
    QOK(s, STORE_PUSH_REG_SET, U, "other.example.net", "node1", "", "300", "3");
    /* At the bound: a fourth is refused, replacing one of the three is not. */
    r = QOK(s, STORE_PUSH_REG_SET, U, "other.example.net", "node9", "", "400", "3");
    assert_int_equal(r->affected, 0);
    r = QOK(s, STORE_PUSH_REG_SET, U, "push.example.org", "node2", "<x/>", "500", "3");
    assert_int_equal(r->affected, 1);
    r = QOK(s, STORE_PUSH_REG_LIST, U);
    assert_int_equal(r->nrows, 3);
    assert_string_equal(val(r, 0, 0), "push.example.org");
    assert_string_equal(val(r, 0, 1), "node1");
    assert_string_equal(val(r, 0, 2), form);
    assert_string_equal(val(r, 1, 0), "other.example.net");
    assert_string_equal(val(r, 2, 1), "node2");
    assert_string_equal(val(r, 2, 2), "<x/>");
    /* bob's are his own. */
    QOK(s, STORE_PUSH_REG_SET, "bob", "example.org", "push.example.org", "b", "", "1", "3");
    r = QOK(s, STORE_PUSH_REG_DELETE_PUBSUB, U, "push.example.org");
    assert_int_equal(r->affected, 2);
    r = QOK(s, STORE_PUSH_REG_LIST, U);
    assert_int_equal(r->nrows, 1);
    assert_string_equal(val(r, 0, 0), "other.example.net");
    assert_int_equal(QOK(s, STORE_PUSH_REG_LIST, "bob", "example.org")->nrows, 1);
    r = QOK(s, STORE_PUSH_REG_DELETE, U, "other.example.net", "nodeX");
    assert_int_equal(r->affected, 0);
    QOK(s, STORE_PUSH_REG_SET, U, "push.example.org", "kept", form, "600", "3");
}

/* store_batch: one statement over column arrays on PostgreSQL, a loop on sqlite;
 * the same rows either way: exact bytes (quotes, backslashes, braces, commas, control
 * characters, emoji), NULL kept NULL, an unknown owner skipped, a repeated id once. */
static void exercise_mam_batch(struct store *s)
{
    char *hostile = hostile_text();
    const char *rows[][10] = {
        { U, "1000", "bob@example.org", "", "1", NULL, "1", "<message/>", "" },
        { U, "1001", "bob@example.org", "r\"1\\", "0", "o{1},\"x\"", "2", hostile, "caf\xc3\xa9 {a,b} \\ \"q\" NULL" },
        { "nobody", "example.org", "1002", "bob@example.org", "", "1", NULL, "3", "<message/>", "x" },
        { U, "1000", "bob@example.org", "", "1", NULL, "1", "<message/>", "" },   /* re-sent */
        { U, "1003", "zed@example.net", "NULL", "1", "", "4", "<message>\xf0\x9f\x98\x80</message>", "NULL" },
    };
    const size_t nrows = sizeof rows / sizeof rows[0];
    struct res r = { 0 };
    store_batch(s, STORE_MAM_INSERT_BATCH, &rows[0][0], nrows, 10, on_result, &r);
    assert_int_equal(r.calls, 0);
    store_drain(s);
    assert_int_equal(r.calls, 1);
    if (r.ok != 0)
        fail_msg("batch failed: %s", r.error);
    assert_int_equal(r.affected, 3);
    res_clear(&r);
    /* Again: nothing new (idempotent on owner + id). */
    store_batch(s, STORE_MAM_INSERT_BATCH, &rows[0][0], nrows, 10, on_result, &r);
    store_drain(s);
    assert_int_equal(r.ok, 0);
    assert_int_equal(r.affected, 0);
    res_clear(&r);
    /* No rows: an empty success. */
    store_batch(s, STORE_MAM_INSERT_BATCH, NULL, 0, 10, on_result, &r);
    store_drain(s);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.ok, 0);
    res_clear(&r);

    struct res *p = QOK(s, STORE_MAM_PAGE_ASC, U, "0", "100000", "10", "0");
    assert_int_equal(p->nrows, 3);
    const size_t want[] = { 0, 1, 4 };
    for (size_t i = 0; i < 3; i++) {
        const char *const *w = rows[want[i]];
        assert_string_equal(val(p, i, 0), w[2]);
        assert_string_equal(val(p, i, 1), w[3]);
        assert_string_equal(val(p, i, 2), w[4]);
        assert_string_equal(val(p, i, 3), w[5]);
        assert_string_equal(val(p, i, 4), w[7]);
        assert_string_equal(val(p, i, 5), w[8]);
    }
    p = QOK(s, STORE_MAM_PAGE_FTS_ASC, U, "0", "100000", "10", "0", strcmp(store_driver(s), "pgsql") == 0 ? "caf\xc3\xa9" : "\"caf\xc3\xa9\"");
    assert_int_equal(p->nrows, 1);
    assert_string_equal(val(p, 0, 0), "1001");
    free(hostile);
}

/* A big batch (multi-row statements plus a remainder run row by row, and the full-text
 * index written once for the batch on sqlite): every row stored once, unknown owners and
 * re-sent rows skipped, and each row's words found by full-text search in exactly it. */
static void exercise_mam_batch_big(struct store *s)
{
    enum { N = 1100, COLS = 10 };
    static char ids[N][24], stamps[N][24], bodies[N][48];
    static const char *rows[N][COLS];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "%d", 200000 + i);
        snprintf(stamps[i], sizeof stamps[i], "%d", 5000 + i);
        snprintf(bodies[i], sizeof bodies[i], "w%dx batchword", i);
        const char *r[COLS] = { i % 50 == 49 ? "nobody" : "alice", "example.org", ids[i], "bob@example.org", "",
                                "1", NULL, stamps[i], "<message/>", bodies[i] };
        memcpy(rows[i], r, sizeof r);
    }
    bool pg = strcmp(store_driver(s), "pgsql") == 0;
    struct res r = { 0 };
    store_batch(s, STORE_MAM_INSERT_BATCH, &rows[0][0], 1000, COLS, on_result, &r);
    store_drain(s);
    if (r.ok != 0)
        fail_msg("batch failed: %s", r.error);
    assert_int_equal(r.affected, 980);
    res_clear(&r);
    /* Rows 500..1099: 500 re-sent, 100 new of which 2 of an unknown owner. */
    store_batch(s, STORE_MAM_INSERT_BATCH, &rows[500][0], 600, COLS, on_result, &r);
    store_drain(s);
    assert_int_equal(r.ok, 0);
    assert_int_equal(r.affected, 98);
    res_clear(&r);
    for (int i = 0; i < N; i += 37) {
        char fts[40];
        snprintf(fts, sizeof fts, pg ? "w%dx" : "\"w%dx\"", i);
        struct res *p = QOK(s, STORE_MAM_PAGE_FTS_ASC, U, "199999", "300000", "10", "0", fts);
        if (i % 50 == 49) {
            assert_int_equal(p->nrows, 0);
        } else {
            assert_int_equal(p->nrows, 1);
            assert_string_equal(val(p, 0, 0), ids[i]);
        }
    }
    struct res *c = QOK(s, STORE_MAM_COUNT_FTS, U, "199999", "300000", "200500", "100000",
                        pg ? "batchword" : "\"batchword\"");
    assert_string_equal(val(c, 0, 0), "1078");
    assert_string_equal(val(c, 0, 1), "490");
}

/* The inbox: one row per (user, peer); an incoming message counts one unread more, an
 * outgoing one and a read reset it; the list is newest first. */
static void exercise_inbox(struct store *s)
{
    const char *emoji = "<message to='bob@example.org'><body>\xf0\x9f\x90\xbe</body></message>";
    assert_int_equal(QOK(s, STORE_INBOX_IN, U, "bob@example.org", "100", "<message/>")->affected, 1);
    QOK(s, STORE_INBOX_IN, U, "bob@example.org", "200", "<message id='2'/>");
    QOK(s, STORE_INBOX_IN, U, "carol@example.org", "150", "<message id='c'/>");
    struct res *r = QOK(s, STORE_INBOX_LIST, U);
    assert_int_equal(r->nrows, 2);
    assert_string_equal(val(r, 0, 0), "bob@example.org");
    assert_string_equal(val(r, 0, 1), "200");
    assert_string_equal(val(r, 0, 2), "<message id='2'/>");
    assert_string_equal(val(r, 0, 3), "2");
    assert_string_equal(val(r, 1, 0), "carol@example.org");
    assert_string_equal(val(r, 1, 3), "1");
    QOK(s, STORE_INBOX_OUT, U, "carol@example.org", "300", emoji);
    r = QOK(s, STORE_INBOX_GET, U, "carol@example.org");
    assert_int_equal(r->nrows, 1);
    assert_string_equal(val(r, 0, 0), "300");
    assert_string_equal(val(r, 0, 1), emoji);
    assert_string_equal(val(r, 0, 2), "0");
    assert_int_equal(QOK(s, STORE_INBOX_UNREAD, U, "carol@example.org")->affected, 1);
    assert_int_equal(QOK(s, STORE_INBOX_UNREAD, U, "bob@example.org")->affected, 0);   /* 2 stays 2 */
    assert_string_equal(val(QOK(s, STORE_INBOX_GET, U, "carol@example.org"), 0, 2), "1");
    QOK(s, STORE_INBOX_READ, U, "bob@example.org");
    r = QOK(s, STORE_INBOX_LIST, U);
    assert_string_equal(val(r, 0, 0), "carol@example.org");
    assert_string_equal(val(r, 1, 3), "0");
    assert_int_equal(QOK(s, STORE_INBOX_LIST, "bob", "example.org")->nrows, 0);
}

/* PEP: nodes bounded per user, items kept newest-first and trimmed, a node's items go with
 * it, and the newest item of each wanted node of several owners in one query (JSON lists). */
static void exercise_pep(struct store *s)
{
    assert_int_equal(QOK(s, STORE_PEP_NODE_CREATE, U, "n1", "presence", "1", "2", "2")->affected, 1);
    assert_int_equal(QOK(s, STORE_PEP_NODE_CREATE, U, "n1", "open", "1", "2", "2")->affected, 0);  /* exists */
    assert_int_equal(QOK(s, STORE_PEP_NODE_CREATE, U, "n2", "open", "0", "1", "2")->affected, 1);
    assert_int_equal(QOK(s, STORE_PEP_NODE_CREATE, U, "n3", "open", "1", "1", "2")->affected, 0);  /* 2 nodes */
    struct res *r = QOK(s, STORE_PEP_NODE_GET, U, "n1");
    assert_int_equal(r->nrows, 1);
    assert_string_equal(val(r, 0, 0), "presence");
    assert_string_equal(val(r, 0, 1), "1");
    assert_string_equal(val(r, 0, 2), "2");
    assert_int_equal(QOK(s, STORE_PEP_NODE_GET, U, "n3")->nrows, 0);
    assert_int_equal(QOK(s, STORE_PEP_NODE_CONFIG, U, "n2", "whitelist", "1", "4")->affected, 1);
    r = QOK(s, STORE_PEP_NODE_GET, U, "n2");
    assert_string_equal(val(r, 0, 0), "whitelist");
    assert_string_equal(val(r, 0, 2), "4");
    assert_int_equal(QOK(s, STORE_PEP_NODE_CONFIG, U, "n3", "open", "1", "4")->affected, 0);
    QOK(s, STORE_PEP_NODE_CONFIG, U, "n2", "open", "0", "1");
    const char *emoji = "<y xmlns='u'>\xf0\x9f\x90\xbe</y>";
    QOK(s, STORE_PEP_ITEM_PUT, U, "n1", "a", "10", "<a/>");
    QOK(s, STORE_PEP_ITEM_PUT, U, "n1", "b", "11", emoji);
    QOK(s, STORE_PEP_ITEM_PUT, U, "n1", "c", "12", "<c/>");
    QOK(s, STORE_PEP_ITEM_PUT, U, "n1", "a", "13", "<a2/>");   /* republished: newest */
    QOK(s, STORE_PEP_ITEM_TRIM, U, "n1", "2");
    r = QOK(s, STORE_PEP_ITEMS, U, "n1", "10");
    assert_int_equal(r->nrows, 2);
    assert_string_equal(val(r, 0, 0), "a");
    assert_string_equal(val(r, 0, 1), "<a2/>");
    assert_string_equal(val(r, 1, 0), "c");
    assert_int_equal(QOK(s, STORE_PEP_ITEMS, U, "n1", "1")->nrows, 1);
    assert_string_equal(val(QOK(s, STORE_PEP_ITEM_GET, U, "n1", "c"), 0, 0), "<c/>");
    assert_int_equal(QOK(s, STORE_PEP_ITEM_GET, U, "n1", "b")->nrows, 0);
    QOK(s, STORE_PEP_ITEM_PUT, U, "n2", "x", "20", emoji);
    assert_int_equal(QOK(s, STORE_PEP_NODE_CREATE, "bob", "example.org", "n1", "open", "1", "1", "5")->affected, 1);
    QOK(s, STORE_PEP_ITEM_PUT, "bob", "example.org", "n1", "q\"uote", "5", "<b/>");
    r = QOK(s, STORE_PEP_NODE_LIST, U);
    assert_int_equal(r->nrows, 2);
    assert_string_equal(val(r, 1, 0), "n2");
    assert_string_equal(val(r, 1, 1), "open");
    r = QOK(s, STORE_PEP_LAST_ITEMS, "[[\"alice\",\"example.org\"],[\"bob\",\"example.org\"],[\"zed\",\"x\"]]",
            "[\"n1\",\"n2\"]", "100");
    assert_int_equal(r->nrows, 3);
    assert_string_equal(val(r, 0, 2), "n1");
    assert_string_equal(val(r, 0, 4), "a");
    assert_string_equal(val(r, 1, 2), "n2");
    assert_string_equal(val(r, 1, 5), emoji);
    assert_string_equal(val(r, 2, 0), "bob");
    assert_string_equal(val(r, 2, 3), "open");
    assert_string_equal(val(r, 2, 4), "q\"uote");
    assert_int_equal(QOK(s, STORE_PEP_LAST_ITEMS, "[[\"alice\",\"example.org\"]]", "[\"n2\"]", "100")->nrows, 1);
    assert_int_equal(QOK(s, STORE_PEP_LAST_ITEMS, "[[\"alice\",\"example.org\"]]", "[\"n1\",\"n2\"]", "1")->nrows, 1);
    assert_int_equal(QOK(s, STORE_PEP_ITEM_DELETE, U, "n1", "c")->affected, 1);
    assert_int_equal(QOK(s, STORE_PEP_ITEM_DELETE, U, "n1", "c")->affected, 0);
    assert_int_equal(QOK(s, STORE_PEP_NODE_DELETE, U, "n1")->affected, 1);
    assert_int_equal(QOK(s, STORE_PEP_ITEMS, U, "n1", "10")->nrows, 0);
    assert_int_equal(QOK(s, STORE_PEP_NODE_CREATE, U, "n1", "presence", "1", "1", "2")->affected, 1);
    assert_int_equal(QOK(s, STORE_PEP_ITEMS, U, "n1", "10")->nrows, 0);
}

/* Persistent group chat rooms: one row per room, replaced whole; the public ones of a
 * service listed by room, with their names (NULL kept); a deleted room is gone. */
static void exercise_muc(struct store *s)
{
    const char *doc = "<room xmlns='urn:meerkat:muc-room:1' creator='a@b'><name>\xf0\x9f\x90\xbe</name></room>";
    QOK(s, STORE_MUC_ROOM_PUT, "r2@muc.example.org", "muc.example.org", "1", NULL, "<room/>", "10");
    QOK(s, STORE_MUC_ROOM_PUT, "r1@muc.example.org", "muc.example.org", "1", "\xf0\x9f\x90\xbe", doc, "11");
    QOK(s, STORE_MUC_ROOM_PUT, "r3@muc.example.org", "muc.example.org", "0", "hidden", "<room/>", "12");
    QOK(s, STORE_MUC_ROOM_PUT, "r4@muc.other.org", "muc.other.org", "1", "other", "<room/>", "13");
    struct res *r = QOK(s, STORE_MUC_ROOM_GET, "r1@muc.example.org");
    assert_int_equal(r->nrows, 1);
    assert_string_equal(val(r, 0, 0), doc);
    r = QOK(s, STORE_MUC_ROOM_LIST, "muc.example.org", "100");
    assert_int_equal(r->nrows, 2);
    assert_string_equal(val(r, 0, 0), "r1@muc.example.org");
    assert_string_equal(val(r, 0, 1), "\xf0\x9f\x90\xbe");
    assert_string_equal(val(r, 1, 0), "r2@muc.example.org");
    assert_null(val(r, 1, 1));
    assert_int_equal(QOK(s, STORE_MUC_ROOM_LIST, "muc.example.org", "1")->nrows, 1);
    /* Replaced whole: now hidden, with another state. */
    QOK(s, STORE_MUC_ROOM_PUT, "r1@muc.example.org", "muc.example.org", "0", NULL, "<room v='2'/>", "14");
    assert_string_equal(val(QOK(s, STORE_MUC_ROOM_GET, "r1@muc.example.org"), 0, 0), "<room v='2'/>");
    r = QOK(s, STORE_MUC_ROOM_LIST, "muc.example.org", "100");
    assert_int_equal(r->nrows, 1);
    assert_string_equal(val(r, 0, 0), "r2@muc.example.org");
    assert_int_equal(QOK(s, STORE_MUC_ROOM_DELETE, "r2@muc.example.org")->affected, 1);
    assert_int_equal(QOK(s, STORE_MUC_ROOM_DELETE, "r2@muc.example.org")->affected, 0);
    assert_int_equal(QOK(s, STORE_MUC_ROOM_GET, "r2@muc.example.org")->nrows, 0);
    assert_int_equal(QOK(s, STORE_MUC_ROOM_LIST, "muc.example.org", "100")->nrows, 0);
}

static void exercise(struct store *s, bool ordered)
{
    exercise_users(s);
    exercise_roster(s);
    exercise_xml(s);
    exercise_blocking(s);
    exercise_txn(s);
    exercise_burst(s, ordered);
    exercise_mam_batch(s);
    exercise_mam_batch_big(s);
    exercise_push(s);
    exercise_inbox(s);
    exercise_pep(s);
    exercise_muc(s);
    exercise_delete(s);
    res_clear(&last);
}

static char *make_tmpdir(void)
{
    char tmpl[] = "/tmp/meerkat-store-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    return xstrdup(tmpl);
}

static void remove_dir(const char *dir)
{
    char *cmd = xasprintf("rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
}

/* A sqlite store's surroundings: a fresh directory, the database path in it, a sqlite
 * configuration on that path and a loop (sqlite_db_init). The caller changes cfg or
 * makes the file as its test needs, then sqlite_db_open opens the store (d->s); an
 * open that fails fails the test with its reason. sqlite_db_close closes the store
 * (if open) and removes it all. */
struct sqlite_db {
    char *dir, *path;
    struct cfg cfg;
    struct ev_loop *loop;
    struct store *s;
};

static void sqlite_db_init(struct sqlite_db *d)
{
    memset(d, 0, sizeof *d);
    d->dir = make_tmpdir();
    d->path = xasprintf("%s/meerkat.db", d->dir);
    d->cfg.storage.driver = "sqlite";
    d->cfg.storage.sqlite_path = d->path;
    d->loop = ev_loop_new(EVFLAG_AUTO);
}

static struct store *sqlite_db_open(struct sqlite_db *d)
{
    char err[256] = "";
    d->s = store_open(d->loop, &d->cfg, err, sizeof err);
    if (d->s == NULL)
        fail_msg("store_open: %s", err);
    return d->s;
}

static void sqlite_db_close(struct sqlite_db *d)
{
    res_clear(&last);
    store_close(&d->s);
    ev_loop_destroy(d->loop);
    remove_dir(d->dir);
    free(d->path);
    free(d->dir);
}

static void test_sqlite(void **state)
{
    struct sqlite_db d;
    sqlite_db_init(&d);
    struct store *s = sqlite_db_open(&d);
    struct ev_loop *loop = d.loop;
    char err[256] = "";
    assert_string_equal(store_driver(s), "sqlite");
    assert_true(store_ready(s));
    exercise(s, true);

    /* A second store (as another process would) on the same file: WAL, both work. */
    struct store *s2 = store_open(loop, &d.cfg, err, sizeof err);
    assert_non_null(s2);
    QOK(s2, STORE_USER_CREATE, "dave", "example.org", CRED1);
    assert_int_equal(QOK(s, STORE_USER_GET, "dave", "example.org")->nrows, 1);
    QOK(s, STORE_VCARD_SET, "dave", "example.org", "<vCard>\xf0\x9f\x98\x80</vCard>");
    assert_string_equal(val(QOK(s2, STORE_VCARD_GET, "dave", "example.org"), 0, 0), "<vCard>\xf0\x9f\x98\x80</vCard>");
    /* Both queued before either runs. */
    struct res a = { 0 }, b = { 0 };
    store_query(s, STORE_BLOCK_ADD, PARAMS("dave", "example.org", "x@y"), 3, on_result, &a);
    store_query(s2, STORE_BLOCK_ADD, PARAMS("dave", "example.org", "z@y"), 3, on_result, &b);
    store_drain(s);
    store_drain(s2);
    assert_int_equal(a.ok, 0);
    assert_int_equal(b.ok, 0);
    res_clear(&a);
    res_clear(&b);
    assert_int_equal(QOK(s2, STORE_BLOCK_LIST, "dave", "example.org")->nrows, 2);
    store_close(&s2);
    assert_null(s2);

    /* Queued queries fail, not vanish, when the store closes. */
    store_query(s, STORE_USER_LIST, PARAMS("example.org"), 1, on_result, &a);
    store_close(&d.s);
    assert_null(d.s);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.ok, -1);
    res_clear(&a);
    res_clear(&last);
    store_close(&d.s);

    sqlite3 *db;
    assert_int_equal(sqlite3_open(d.path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);

    /* Reopening an existing database keeps the data (schema not re-applied). */
    s = sqlite_db_open(&d);
    assert_int_equal(QOK(s, STORE_USER_GET, "dave", "example.org")->nrows, 1);
    res_clear(&last);
    store_close(&d.s);

    struct cfg bad = d.cfg;
    bad.storage.driver = "mysql";
    assert_null(store_open(loop, &bad, err, sizeof err));
    assert_non_null(strstr(err, "mysql"));
    bad.storage.driver = "sqlite";
    bad.storage.sqlite_path = "/nonexistent-dir/x/meerkat.db";
    assert_null(store_open(loop, &bad, err, sizeof err));
    sqlite_db_close(&d);
}

extern const char store_schema_sqlite[];

/* A database made by the version 1 schema (before push_registration and inbox) is
 * migrated at open: its data kept, the new tables there, schema_version 7. */
static void test_sqlite_migrate_v1(void **state)
{
    (void)state;
    struct sqlite_db d;
    sqlite_db_init(&d);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(d.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, store_schema_sqlite, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "INSERT INTO users (username, domain, sha1_salt, sha1_iter, sha1_stored, "
                                      "sha1_server, sha256_salt, sha256_iter, sha256_stored, sha256_server) "
                                      "VALUES ('alice', 'example.org', 's', 1, 's', 's', 's', 1, 's', 's')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    struct store *s = sqlite_db_open(&d);
    assert_int_equal(QOK(s, STORE_USER_GET, U)->nrows, 1);
    assert_int_equal(QOK(s, STORE_PUSH_REG_SET, U, "push.example.org", "n", "", "1", "32")->affected, 1);
    assert_int_equal(QOK(s, STORE_PUSH_REG_LIST, U)->nrows, 1);
    assert_int_equal(QOK(s, STORE_INBOX_IN, U, "bob@example.org", "5", "<message/>")->affected, 1);
    assert_int_equal(QOK(s, STORE_INBOX_GET, U, "bob@example.org")->nrows, 1);
    assert_int_equal(QOK(s, STORE_PEP_NODE_CREATE, U, "n", "open", "1", "1", "10")->affected, 1);
    QOK(s, STORE_MUC_ROOM_PUT, "r@muc.example.org", "muc.example.org", "1", NULL, "<room/>", "1");
    assert_int_equal(QOK(s, STORE_MUC_ROOM_GET, "r@muc.example.org")->nrows, 1);
    res_clear(&last);
    store_close(&d.s);
    /* Opened again: nothing re-applied (the row is still there). */
    s = sqlite_db_open(&d);
    assert_int_equal(QOK(s, STORE_PUSH_REG_LIST, U)->nrows, 1);
    res_clear(&last);
    store_close(&d.s);
    assert_int_equal(sqlite3_open(d.path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT version FROM schema_version", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 7);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
    sqlite_db_close(&d);
}

extern const char store_schema_sqlite_v2[];

static int sqlite_count(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return n;
}

/* A version 2 database (the archive's full-text index kept by a per-row trigger) is
 * migrated at open to version 3 (and 4, the inbox, 5, PEP, and 6, rooms): the trigger goes, the rows it indexed are still found,
 * and rows written by a batch afterwards are found too, once each. */
static void test_sqlite_migrate_v2(void **state)
{
    (void)state;
    struct sqlite_db d;
    sqlite_db_init(&d);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(d.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, store_schema_sqlite, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, store_schema_sqlite_v2, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "INSERT INTO users (username, domain, sha1_salt, sha1_iter, sha1_stored, "
                                      "sha1_server, sha256_salt, sha256_iter, sha256_stored, sha256_server) "
                                      "VALUES ('alice', 'example.org', 's', 1, 's', 's', 's', 1, 's', 's');"
                                      "INSERT INTO mam_message (username, domain, id, peer, outgoing, stamp_us, xml, "
                                      "body) VALUES ('alice', 'example.org', 7, 'bob@example.org', 1, 7, '<m/>', "
                                      "'oldword kept')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite_count(db, "SELECT count(*) FROM sqlite_master WHERE name = 'mam_message_ai'"), 1);
    sqlite3_close(db);
    struct store *s = sqlite_db_open(&d);
    struct res *p = QOK(s, STORE_MAM_PAGE_FTS_ASC, U, "0", "100000", "10", "0", "\"oldword\"");
    assert_int_equal(p->nrows, 1);
    assert_string_equal(val(p, 0, 0), "7");
    const char *rows[][10] = {
        { U, "8", "bob@example.org", "", "1", NULL, "8", "<m/>", "newword kept" },
        { U, "9", "bob@example.org", "", "0", NULL, "9", "<m/>", "newword again" },
    };
    struct res r = { 0 };
    store_batch(s, STORE_MAM_INSERT_BATCH, &rows[0][0], 2, 10, on_result, &r);
    store_drain(s);
    assert_int_equal(r.ok, 0);
    assert_int_equal(r.affected, 2);
    res_clear(&r);
    /* A single insert indexes its row too. */
    QOK(s, STORE_MAM_INSERT, U, "10", "bob@example.org", "", "1", NULL, "10", "<m/>", "lone kept");
    assert_int_equal(QOK(s, STORE_MAM_PAGE_FTS_ASC, U, "0", "100000", "10", "0", "\"newword\"")->nrows, 2);
    p = QOK(s, STORE_MAM_PAGE_FTS_ASC, U, "0", "100000", "10", "0", "\"kept\"");
    assert_int_equal(p->nrows, 3);
    assert_string_equal(val(p, 0, 0), "7");
    assert_string_equal(val(p, 1, 0), "8");
    assert_string_equal(val(p, 2, 0), "10");
    /* Version 7: a stored room's archive is written (its owner is no account), a row of
     * an owner that is neither an account nor a stored room is not, by either insert. */
    QOK(s, STORE_MUC_ROOM_PUT, "r@muc.example.org", "muc.example.org", "1", NULL, "<room/>", "1");
    assert_int_equal(QOK(s, STORE_MAM_INSERT, "r", "muc.example.org", "11", "r@muc.example.org", "Al", "0", NULL, "11",
                         "<m/>", "room kept")->affected, 1);
    assert_int_equal(QOK(s, STORE_MAM_INSERT, "x", "muc.example.org", "12", "x@muc.example.org", "Al", "0", NULL, "12",
                         "<m/>", "stranger")->affected, 0);
    const char *rrows[][10] = {
        { "r", "muc.example.org", "13", "r@muc.example.org", "Bo", "0", NULL, "13", "<m/>", "room again" },
        { "y", "muc.example.org", "14", "y@muc.example.org", "Bo", "0", NULL, "14", "<m/>", "stranger" },
    };
    store_batch(s, STORE_MAM_INSERT_BATCH, &rrows[0][0], 2, 10, on_result, &r);
    store_drain(s);
    assert_int_equal(r.ok, 0);
    assert_int_equal(r.affected, 1);
    res_clear(&r);
    assert_int_equal(QOK(s, STORE_MAM_PAGE_FTS_ASC, "r", "muc.example.org", "0", "100000", "10", "0", "\"room\"")->nrows, 2);
    /* Deleting a user still deletes their archive (a trigger now, not the foreign key). */
    QOK(s, STORE_USER_DELETE, U);
    res_clear(&last);
    store_close(&d.s);
    assert_int_equal(sqlite3_open(d.path, &db), SQLITE_OK);
    assert_int_equal(sqlite_count(db, "SELECT count(*) FROM mam_message WHERE username = 'alice'"), 0);
    assert_int_equal(sqlite_count(db, "SELECT count(*) FROM mam_message WHERE domain = 'muc.example.org'"), 2);
    assert_int_equal(sqlite_count(db, "SELECT count(*) FROM sqlite_master WHERE sql LIKE '%REFERENCES users%' "
                                      "AND name = 'mam_message'"), 0);
    assert_int_equal(sqlite_count(db, "SELECT version FROM schema_version"), 7);
    assert_int_equal(sqlite_count(db, "SELECT count(*) FROM sqlite_master WHERE name = 'mam_message_ai'"), 0);
    /* The index holds each row once: its own integrity check passes. */
    assert_int_equal(sqlite3_exec(db, "INSERT INTO mam_fts (mam_fts) VALUES ('integrity-check')", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    sqlite_db_close(&d);
}

/* Counts outcomes without keeping results: many queries. */
struct tally {
    unsigned calls, ok, refused, other;
    bool inside_call;      /* set while store_query runs: a callback then is a contract breach */
    unsigned early;
};

static void on_tally(void *ud, const struct store_result *sr)
{
    struct tally *t = ud;
    t->calls++;
    if (t->inside_call)
        t->early++;
    if (sr->ok == 0)
        t->ok++;
    else if (sr->refused)
        t->refused++;
    else
        t->other++;
}

static long maxrss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = 0;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmHWM:", 6) == 0)
            kib = atol(line + 6);
    if (f != NULL)
        fclose(f);
    return kib;
}

/* limits.max_store_queue: past it a query is refused at once (its callback says
 * refused, on the loop), and what the store holds stays bounded. */
static void test_queue_limit(void **state)
{
    struct sqlite_db d;
    sqlite_db_init(&d);
    d.cfg.limits.max_store_queue = 100;
    struct store *s = sqlite_db_open(&d);
    QOK(s, STORE_USER_CREATE, "dave", "example.org", CRED1);
    res_clear(&last);
    /* 100,000 queries of 1 KiB each in one go: about 100 MB if all were kept. */
    char big[1024];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    struct tally t = { 0 };
    long before = maxrss_kib();
    enum { N = 100000 };
    for (unsigned i = 0; i < N; i++) {
        t.inside_call = true;
        store_query(s, STORE_VCARD_SET, PARAMS("dave", "example.org", big), 3, on_tally, &t);
        t.inside_call = false;
        assert_true(store_pending(s) <= 100 + 64 + i + 1);
    }
    assert_int_equal(t.calls, 0);
    store_drain(s);
    assert_int_equal(t.calls, N);
    assert_int_equal(t.early, 0);
    assert_int_equal(t.other, 0);
    assert_true(t.refused > 0);
    assert_int_equal(t.ok + t.refused, N);
    assert_true(t.ok >= 100);
    assert_int_equal(store_refused(s), t.refused);
    long grown = maxrss_kib() - before;
    if (grown >= 32 * 1024)
        fail_msg("holding 100,000 refused queries grew the process by %ld KiB", grown);
    /* Room again: queries run. */
    memset(&t, 0, sizeof t);
    store_query(s, STORE_VCARD_GET, PARAMS("dave", "example.org"), 2, on_tally, &t);
    store_drain(s);
    assert_int_equal(t.ok, 1);
    /* Refused ones still queued when the store closes get their answer. */
    memset(&t, 0, sizeof t);
    for (unsigned i = 0; i < 1000; i++)
        store_query(s, STORE_VCARD_GET, PARAMS("dave", "example.org"), 2, on_tally, &t);
    store_close(&d.s);
    assert_int_equal(t.calls, 1000);
    sqlite_db_close(&d);
}

/* A sqlite store (struct sqlite_db) with one account (dave@example.org). */
static void dave_db_open(struct sqlite_db *d)
{
    sqlite_db_init(d);
    sqlite_db_open(d);
    QOK(d->s, STORE_USER_CREATE, "dave", "example.org", CRED1);
    res_clear(&last);
}

/* The sqlite driver runs statements off the loop: a write waiting for a lock held
 * by another process (up to the 5 s busy timeout) does not stop the loop. */
struct lock_holder {
    sqlite3 *db;
    struct store *s;
    unsigned ticks_while_waiting;
    struct tally *t;
};

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lock_holder *h = w->data;
    if (h->t->calls == 0)
        h->ticks_while_waiting++;
}

static void on_release(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lock_holder *h = w->data;
    assert_int_equal(sqlite3_exec(h->db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
}

/* One row count and one text of a statement on a raw connection. */
static long long sql_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void on_ckpt_batch(void *ud, const struct store_result *sr)
{
    long long *committed = ud;
    if (sr->ok != 0)
        fail_msg("batch failed: %s", sr->error);
    committed[0] += (long long)sr->affected;
    struct stat stb;
    if (stat((const char *)(uintptr_t)committed[2], &stb) == 0 && stb.st_size > committed[1])
        committed[1] = stb.st_size;
}

/* The WAL is checkpointed beside the commits (storage.sqlite.checkpoint_pages) and stays
 * bounded even when the writer never pauses (every batch queued at once, so the passive
 * checkpoints cannot catch up and the bound's RESTART has to): without the checkpointer
 * the WAL holds every page written (several times the bound here). Afterwards the
 * database is whole: integrity and full-text index checks, every row there. */
static void test_sqlite_checkpoint(void **state)
{
    enum { BATCHES = 60, ROWS = 128, COLS = 10, SOFT = 64 };
    struct sqlite_db d;
    sqlite_db_init(&d);
    char *wal = xasprintf("%s-wal", d.path);
    d.cfg.storage.sqlite_checkpoint_pages = SOFT;
    struct store *s = sqlite_db_open(&d);
    QOK(s, STORE_USER_CREATE, "alice", "example.org", CRED1);
    res_clear(&last);
    static char ids[BATCHES * ROWS][24], stamps[BATCHES * ROWS][24], bodies[BATCHES * ROWS][64];
    static const char *rows[BATCHES * ROWS][COLS];
    char xml[600];
    memset(xml, 'x', sizeof xml - 1);
    xml[sizeof xml - 1] = '\0';
    for (int i = 0; i < BATCHES * ROWS; i++) {
        snprintf(ids[i], sizeof ids[i], "%d", 1000000 + i);
        snprintf(stamps[i], sizeof stamps[i], "%d", 1000 + i);
        snprintf(bodies[i], sizeof bodies[i], "ck%dw walword", i);
        const char *r[COLS] = { "alice", "example.org", ids[i], "bob@example.org", "", "1", NULL, stamps[i], xml,
                                bodies[i] };
        memcpy(rows[i], r, sizeof r);
    }
    long long acc[3] = { 0, 0, (long long)(uintptr_t)wal };
    /* A write between two batches keeps each batch in a commit of its own (the writer
     * commits consecutive batches together), as in a cluster where a batch commits
     * while the next one fills. */
    for (int b = 0; b < BATCHES; b++) {
        store_batch(s, STORE_MAM_INSERT_BATCH, &rows[b * ROWS][0], ROWS, COLS, on_ckpt_batch, acc);
        store_query(s, STORE_LAST_SET, PARAMS("alice", "example.org", "1", ""), 4, NULL, NULL);
    }
    store_drain(s);
    assert_int_equal(acc[0], BATCHES * ROWS);
    struct store_wal_stats ws;
    assert_int_equal(store_wal_stats(s, &ws), 0);
    /* Pages written in all: far more than the bound, so only checkpoints kept the WAL small. */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(d.path, &db), SQLITE_OK);
    long long page = sql_int(db, "PRAGMA page_size");
    long long db_pages = sql_int(db, "PRAGMA page_count");
    assert_true(db_pages > 8 * SOFT);
    assert_true(ws.runs >= 1);
    assert_true(ws.restarts >= 1);
    assert_int_equal(ws.failures, 0);
    /* The bound: 2 x SOFT pages, plus the one commit that crossed it. */
    long long one_commit = db_pages / BATCHES * 3;
    assert_true(ws.wal_pages_max <= 2 * SOFT + one_commit);
    assert_true(acc[1] <= (2 * SOFT + one_commit) * (page + 24) + 32);
    assert_true(acc[1] > 0);
    store_close(&d.s);
    char *ok = NULL;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    ok = xstrdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    assert_string_equal(ok, "ok");
    free(ok);
    assert_int_equal(sqlite3_exec(db, "INSERT INTO mam_fts (mam_fts) VALUES ('integrity-check')", NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM mam_message"), BATCHES * ROWS);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM mam_fts WHERE mam_fts MATCH '\"walword\"'"), BATCHES * ROWS);
    sqlite3_close(db);
    free(wal);
    sqlite_db_close(&d);
}

/* Archive rows for test_sqlite_group_commit: batch b (0-3) holds rows b * 10 .. b * 10 + 9
 * of alice, each body with a word of its own and the word "groupword"; with bad, the
 * sixth row of batch 1 has no peer (NOT NULL), so that batch cannot be stored. */
enum { GROUP_BATCHES = 4, GROUP_ROWS = 10 };
static const char *group_rows[GROUP_BATCHES * GROUP_ROWS][10];
static char group_ids[GROUP_BATCHES * GROUP_ROWS][24], group_bodies[GROUP_BATCHES * GROUP_ROWS][48];

static void group_fill(int base, bool bad)
{
    for (int i = 0; i < GROUP_BATCHES * GROUP_ROWS; i++) {
        snprintf(group_ids[i], sizeof group_ids[i], "%d", base + i);
        snprintf(group_bodies[i], sizeof group_bodies[i], "g%dw groupword", base + i);
        const char *r[10] = { "alice", "example.org", group_ids[i], bad && i == 15 ? NULL : "bob@example.org", "",
                              "1", NULL, group_ids[i], "<message/>", group_bodies[i] };
        memcpy(group_rows[i], r, sizeof r);
    }
}

/* Batches queued together reach the writer together, and it commits them in one
 * transaction (one commit writes each index page once for all of them): each batch's
 * callback as if it ran alone, in order, every row found once by its own word. A batch
 * that fails inside the group fails alone: the group is rolled back and its batches run
 * one by one, so the others are stored and the bad one has none of its rows. */
static void test_sqlite_group_commit(void **state)
{
    struct sqlite_db d;
    sqlite_db_init(&d);
    struct store *s = sqlite_db_open(&d);
    QOK(s, STORE_USER_CREATE, U, CRED1);
    res_clear(&last);
    struct store_wal_stats w0, w1;
    struct res r[GROUP_BATCHES] = { 0 };
    for (int round = 0; round < 2; round++) {
        bool bad = round == 1;
        int base = 1000 + round * 1000;
        group_fill(base, bad);
        assert_int_equal(store_wal_stats(s, &w0), 0);
        for (int b = 0; b < GROUP_BATCHES; b++)
            store_batch(s, STORE_MAM_INSERT_BATCH, &group_rows[b * GROUP_ROWS][0], GROUP_ROWS, 10, on_result, &r[b]);
        store_drain(s);
        assert_int_equal(store_wal_stats(s, &w1), 0);
        for (int b = 0; b < GROUP_BATCHES; b++) {
            assert_int_equal(r[b].calls, 1);
            if (b > 0)
                assert_true(r[b].order > r[b - 1].order);
            if (bad && b == 1) {
                assert_int_equal(r[b].ok, -1);
                assert_non_null(strstr(r[b].error, "NOT NULL"));
            } else {
                if (r[b].ok != 0)
                    fail_msg("batch %d failed: %s", b, r[b].error);
                assert_int_equal(r[b].affected, GROUP_ROWS);
            }
            res_clear(&r[b]);
        }
        if (!bad) {
            assert_int_equal(w1.commits - w0.commits, 1);
            assert_int_equal(w1.grouped - w0.grouped, GROUP_BATCHES);
        } else {
            assert_int_equal(w1.commits - w0.commits, GROUP_BATCHES - 1);
            assert_int_equal(w1.grouped - w0.grouped, 0);
        }
        for (int i = 0; i < GROUP_BATCHES * GROUP_ROWS; i++) {
            char fts[40];
            snprintf(fts, sizeof fts, "\"g%dw\"", base + i);
            struct res *p = QOK(s, STORE_MAM_PAGE_FTS_ASC, U, "0", "100000", "10", "0", fts);
            if (bad && i / GROUP_ROWS == 1) {
                assert_int_equal(p->nrows, 0);
            } else {
                assert_int_equal(p->nrows, 1);
                assert_string_equal(val(p, 0, 0), group_ids[i]);
            }
        }
    }
    struct res *c = QOK(s, STORE_MAM_COUNT_FTS, U, "0", "100000", "0", "100000", "\"groupword\"");
    assert_string_equal(val(c, 0, 0), "70");
    assert_string_equal(val(c, 0, 1), "0");
    store_close(&d.s);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(d.path, &db), SQLITE_OK);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM mam_message"), 70);
    assert_int_equal(sqlite3_exec(db, "INSERT INTO mam_fts (mam_fts) VALUES ('integrity-check')", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    sqlite_db_close(&d);
}

/* store_query_read of a statement that only reads runs beside the writes queued before
 * it (on sqlite's read connection): here a write waits for a lock another connection
 * holds, and the read queued after it is answered meanwhile, with what was committed;
 * a plain store_query queued after the write still waits for it and sees it. A write
 * through store_query_read runs as a plain query. */
static void test_sqlite_read_apart(void **state)
{
    struct sqlite_db d;
    sqlite_db_init(&d);
    struct store *s = sqlite_db_open(&d);
    struct ev_loop *loop = d.loop;
    QOK(s, STORE_USER_CREATE, U, CRED1);
    QOK(s, STORE_VCARD_SET, U, "<vCard>1</vCard>");
    res_clear(&last);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(d.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    struct res w = { 0 }, r = { 0 }, after = { 0 };
    store_query(s, STORE_VCARD_SET, PARAMS(U, "<vCard>2</vCard>"), 3, on_result, &w);
    store_query_read(s, STORE_VCARD_GET, PARAMS(U), 2, on_result, &r);
    store_query(s, STORE_VCARD_GET, PARAMS(U), 2, on_result, &after);
    while (r.calls == 0)
        ev_run(loop, EVRUN_ONCE);
    assert_int_equal(w.calls, 0);
    assert_int_equal(after.calls, 0);
    assert_int_equal(r.ok, 0);
    assert_int_equal(r.nrows, 1);
    assert_string_equal(val(&r, 0, 0), "<vCard>1</vCard>");
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    store_drain(s);
    assert_int_equal(w.ok, 0);
    assert_int_equal(after.ok, 0);
    assert_true(after.order > w.order);
    assert_string_equal(val(&after, 0, 0), "<vCard>2</vCard>");
    res_clear(&w);
    res_clear(&r);
    res_clear(&after);
    store_query_read(s, STORE_VCARD_SET, PARAMS(U, "<vCard>3</vCard>"), 3, on_result, &w);
    store_drain(s);
    assert_int_equal(w.ok, 0);
    res_clear(&w);
    assert_string_equal(val(QOK(s, STORE_VCARD_GET, U), 0, 0), "<vCard>3</vCard>");
    sqlite3_close(db);
    sqlite_db_close(&d);
}

static void test_sqlite_off_loop(void **state)
{
    struct sqlite_db d;
    dave_db_open(&d);
    struct store *s = d.s;
    struct ev_loop *loop = d.loop;
    const char *path = d.path;
    struct tally t = { 0 };
    struct lock_holder h = { .s = s, .t = &t };
    assert_int_equal(sqlite3_open(path, &h.db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h.db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    store_query(s, STORE_VCARD_SET, PARAMS("dave", "example.org", "<vCard/>"), 3, on_tally, &t);
    ev_timer tick, release;
    ev_timer_init(&tick, on_tick, 0.01, 0.01);
    tick.data = &h;
    ev_timer_start(loop, &tick);
    ev_timer_init(&release, on_release, 0.3, 0.);
    release.data = &h;
    ev_timer_start(loop, &release);
    store_drain(s);
    ev_timer_stop(loop, &tick);
    ev_timer_stop(loop, &release);
    assert_int_equal(t.calls, 1);
    assert_int_equal(t.ok, 1);
    /* 300 ms of lock at a 10 ms tick: the loop kept turning (a stalled loop gives 0). */
    if (h.ticks_while_waiting < 10)
        fail_msg("the loop ticked %u times while the write waited for the lock", h.ticks_while_waiting);
    sqlite3_close(h.db);
    sqlite_db_close(&d);
}

/* The queries queued in one loop turn reach the driver at its end, together: one
 * hand-off to the sqlite thread, not one per query. */
static void test_handoff_per_turn(void **state)
{
    struct sqlite_db d;
    dave_db_open(&d);
    struct store *s = d.s;
    unsigned long long before = store_handoffs(s);
    struct tally t = { 0 };
    for (int i = 0; i < 10; i++) {
        t.inside_call = true;
        store_query(s, STORE_USER_GET, PARAMS("dave", "example.org"), 2, on_tally, &t);
        t.inside_call = false;
    }
    assert_int_equal(store_handoffs(s), before);   /* not before the turn ends */
    store_drain(s);
    assert_int_equal(t.calls, 10);
    assert_int_equal(t.ok, 10);
    assert_int_equal(t.early, 0);
    assert_int_equal(store_handoffs(s) - before, 1);
    sqlite_db_close(&d);
}

/* Runs the loop for secs (the store's watchers keep it alive). */
static void on_stop_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    ev_break(loop, EVBREAK_ONE);
}
static void run_for(struct ev_loop *loop, double secs)
{
    ev_timer t;
    ev_timer_init(&t, on_stop_timer, secs, 0.);
    ev_timer_start(loop, &t);
    ev_run(loop, 0);
    ev_timer_stop(loop, &t);
}

static int pg_script(const char *cmd, const char *dir)
{
    char *line = xasprintf("%s %s '%s'", PG_SCRIPT, cmd, dir);
    int port = -1;
    FILE *f = popen(line, "r");
    assert_non_null(f);
    char out[64];
    if (fgets(out, sizeof out, f) != NULL)
        port = atoi(out);
    int rc = pclose(f);
    free(line);
    if (rc != 0)
        return -1;
    return strcmp(cmd, "start") == 0 ? port : 0;
}

/* Set while a test server runs, so a failed assertion does not leave it behind. */
static char *pg_dir;

static int pg_teardown(void **state)
{
    if (pg_dir != NULL) {
        pg_script("destroy", pg_dir);
        xfree(&pg_dir);
    }
    return 0;
}

static void test_pgsql(void **state)
{
    /* PostgreSQL is a test dependency (deploy/install-deps.sh): its absence is a failure. */
    assert_int_equal(access("/usr/lib/postgresql/15/bin/initdb", X_OK), 0);
    char *dir = make_tmpdir();
    pg_dir = dir;
    int port = pg_script("start", dir);
    assert_true(port > 0);

    struct cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.storage.driver = "pgsql";
    cfg.storage.pg_host = "127.0.0.1";
    cfg.storage.pg_port = port;
    cfg.storage.pg_dbname = "meerkat";
    cfg.storage.pg_user = "meerkat";
    cfg.storage.pg_password = "not-needed-with-trust";
    cfg.storage.pg_sslmode = "disable";
    cfg.storage.pool_size = 2;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    char err[256] = "";

    cfg.storage.pg_sslmode = "sometimes";
    assert_null(store_open(loop, &cfg, err, sizeof err));
    cfg.storage.pg_sslmode = "disable";

    /* Two stores at once on an empty database: the schema is applied once. */
    struct store *s = store_open(loop, &cfg, err, sizeof err);
    assert_non_null(s);
    struct store *s2 = store_open(loop, &cfg, err, sizeof err);
    assert_non_null(s2);
    assert_string_equal(store_driver(s), "pgsql");
    assert_false(store_ready(s));
    exercise(s, false);
    assert_true(store_ready(s));
    assert_int_equal(QOK(s2, STORE_USER_GET, "bob", "example.org")->nrows, 1);
    store_close(&s2);

    /* The server goes away: queries wait, then complete after the reconnect. */
    assert_int_equal(pg_script("stop", dir), 0);
    struct res rs[4];
    memset(rs, 0, sizeof rs);
    store_query(s, STORE_LAST_SET, PARAMS("bob", "example.org", "42", "away \xf0\x9f\x98\x80"), 4, on_result, &rs[0]);
    store_query(s, STORE_BLOCK_ADD, PARAMS("bob", "example.org", "after@restart"), 3, on_result, &rs[1]);
    const struct store_op ops[] = {
        { STORE_ROSTER_VERSION_BUMP, PARAMS("bob", "example.org"), 2 },
        { STORE_ROSTER_VERSION_GET, PARAMS("bob", "example.org"), 2 },
    };
    store_txn(s, ops, 2, on_result, &rs[2]);
    run_for(loop, 0.5);
    assert_false(store_ready(s));
    assert_int_equal(store_pending(s), 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(rs[i].calls, 0);
    store_query(s, STORE_LAST_GET, PARAMS("bob", "example.org"), 2, on_result, &rs[3]);
    assert_int_equal(pg_script("start", dir), port);
    store_drain(s);
    assert_true(store_ready(s));
    for (int i = 0; i < 4; i++) {
        assert_int_equal(rs[i].calls, 1);
        if (rs[i].ok != 0)
            fail_msg("query %d after reconnect: %s", i, rs[i].error);
    }
    assert_string_equal(val(&rs[2], 0, 0), "1");
    /* The pool runs the queued queries on both connections at once: the read queued last
     * may pass the write queued first (nothing orders independent queries), so the write
     * is read back once everything is in. */
    for (int i = 0; i < 4; i++)
        res_clear(&rs[i]);
    struct res *la = QOK(s, STORE_LAST_GET, "bob", "example.org");
    assert_string_equal(val(la, 0, 0), "42");
    assert_string_equal(val(la, 0, 1), "away \xf0\x9f\x98\x80");
    assert_int_equal(QOK(s, STORE_BLOCK_LIST, "bob", "example.org")->nrows, 1);

    /* A query in flight when the server shuts down is run again after the reconnect:
     * the server refuses it (57P01) before running it, and it only reads anyway (the
     * goodbye may be lost with the socket). Another session holds a lock so the query
     * is certainly waiting inside the server. */
    char *locker = xasprintf("psql -X -q -h 127.0.0.1 -p %d -U meerkat -d meerkat "
                             "-c 'BEGIN; LOCK TABLE users; SELECT pg_sleep(60)' >/dev/null 2>&1 &", port);
    assert_int_equal(system(locker), 0);
    free(locker);
    /* Wait until the lock is certainly held (a loaded machine may take a while to
     * start psql), at most 20 s. */
    char *held = xasprintf("psql -X -q -t -A -h 127.0.0.1 -p %d -U meerkat -d meerkat -c \"SELECT count(*) FROM "
                           "pg_locks WHERE relation = 'users'::regclass AND mode = 'AccessExclusiveLock' "
                           "AND granted\" 2>/dev/null", port);
    bool locked = false;
    for (int i = 0; i < 200 && !locked; i++) {
        FILE *f = popen(held, "r");
        char out[16] = "";
        if (f != NULL) {
            if (fgets(out, sizeof out, f) == NULL)
                out[0] = '\0';
            pclose(f);
        }
        locked = atoi(out) == 1;
        if (!locked)
            run_for(loop, 0.1);
    }
    free(held);
    assert_true(locked);
    memset(rs, 0, sizeof rs);
    store_query(s, STORE_USER_GET, PARAMS("bob", "example.org"), 2, on_result, &rs[0]);
    run_for(loop, 0.3);
    assert_int_equal(rs[0].calls, 0);
    /* The shutdown ends the lock holder's session too: in its last moment another
     * connection may run the re-queued read and answer it before the server is down.
     * Either way the query is answered exactly once, with its rows, never failed. */
    assert_int_equal(pg_script("stop", dir), 0);
    assert_int_equal(pg_script("start", dir), port);
    store_drain(s);
    assert_int_equal(rs[0].calls, 1);
    if (rs[0].ok != 0)
        fail_msg("in-flight query after restart: %s", rs[0].error);
    assert_int_equal(rs[0].nrows, 1);
    res_clear(&rs[0]);

    res_clear(&last);
    store_close(&s);

    /* A version 1 database (push_registration not there yet) is migrated at open, its
     * data kept. */
    char *downgrade = xasprintf("psql -X -q -h 127.0.0.1 -p %d -U meerkat -d meerkat -c 'DROP TABLE "
                                "muc_room; DROP TABLE pep_item; DROP TABLE pep_node; DROP TABLE push_registration; DROP TABLE inbox; "
                                "UPDATE schema_version SET version = 1' "
                                ">/dev/null", port);
    assert_int_equal(system(downgrade), 0);
    free(downgrade);
    s = store_open(loop, &cfg, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(QOK(s, STORE_USER_GET, "bob", "example.org")->nrows, 1);
    assert_int_equal(QOK(s, STORE_PUSH_REG_SET, "bob", "example.org", "p.example", "n", "", "1", "32")->affected, 1);
    assert_int_equal(QOK(s, STORE_PUSH_REG_LIST, "bob", "example.org")->nrows, 1);
    assert_int_equal(QOK(s, STORE_PEP_NODE_CREATE, "bob", "example.org", "n", "open", "1", "1", "10")->affected, 1);
    QOK(s, STORE_MUC_ROOM_PUT, "r@muc.example.org", "muc.example.org", "1", NULL, "<room/>", "1");
    assert_int_equal(QOK(s, STORE_MUC_ROOM_GET, "r@muc.example.org")->nrows, 1);
    res_clear(&last);
    store_close(&s);
    char *version = xasprintf("psql -X -q -t -A -h 127.0.0.1 -p %d -U meerkat -d meerkat -c "
                              "'SELECT version FROM schema_version'", port);
    FILE *vf = popen(version, "r");
    assert_non_null(vf);
    char vout[16] = "";
    assert_non_null(fgets(vout, sizeof vout, vf));
    pclose(vf);
    free(version);
    assert_int_equal(atoi(vout), 5);

    ev_loop_destroy(loop);
    pg_dir = NULL;
    assert_int_equal(pg_script("destroy", dir), 0);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sqlite),
        cmocka_unit_test(test_sqlite_migrate_v1),
        cmocka_unit_test(test_sqlite_migrate_v2),
        cmocka_unit_test(test_queue_limit),
        cmocka_unit_test(test_sqlite_off_loop),
        cmocka_unit_test(test_sqlite_checkpoint),
        cmocka_unit_test(test_sqlite_group_commit),
        cmocka_unit_test(test_sqlite_read_apart),
        cmocka_unit_test(test_handoff_per_turn),
        cmocka_unit_test_teardown(test_pgsql, pg_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
