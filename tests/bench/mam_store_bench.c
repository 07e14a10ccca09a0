/* tests/bench/mam_store_bench.c - archive rows committed per second through the store alone (store_batch of STORE_MAM_INSERT_BATCH, as mam/archive.c issues it), on sqlite or PostgreSQL, with the CPU per row of this process (the sqlite thread included). */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include <ev.h>

#include "cfg.h"
#include "store.h"
#include "util.h"

#define COLS 10

static double cpu_self(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static struct {
    struct store *s;
    unsigned users, batch, inflight_max, inflight;
    uint64_t rows, next, committed, failed;
    uint64_t base_us;
    char **vals;          /* one batch of rows, COLS per row */
    const char *wal_path; /* sqlite: the database's WAL, its size read after each commit */
    int64_t *lat_us;      /* each batch's time from store_batch to its callback */
    size_t nlat, caplat;
    long long wal_max;    /* the largest WAL seen, bytes */
} B;

/* A batch in flight: its rows and when it was queued. */
struct bench_batch {
    uint64_t n;
    int64_t t0;
};

__attribute__((noreturn)) static void usage(void)
{
    fprintf(stderr, "usage: mam_store_bench (sqlite PATH | pgsql HOST PORT DBNAME USER) [ROWS [BATCH [USERS "
                    "[INFLIGHT]]]]\n");
    exit(2);
}

/* The first value of a one-row result as a number (-1 on failure). */
static void on_count(void *ud, const struct store_result *res)
{
    long long *out = ud;
    *out = res->ok == 0 && res->nrows == 1 && res->vals[0] != NULL ? atoll(res->vals[0]) : -1;
}

static void fill_row(char **p, uint64_t i)
{
    unsigned u = (unsigned)(i % B.users), peer = u ^ 1u;
    uint64_t id = ((B.base_us + i) << 8) | 7u;
    p[0] = xasprintf("u%u", u);
    p[1] = xstrdup("localhost");
    p[2] = xasprintf("%" PRIu64, id);
    p[3] = xasprintf("u%u@localhost", peer);
    p[4] = xstrdup("r");
    p[5] = xstrdup(i % 2 ? "1" : "0");
    p[6] = NULL;
    p[7] = xasprintf("%" PRIu64, B.base_us + i);
    /* The loadgen's chat body: step, send time and sequence (unique words), then 64 letters. */
    char body[160];
    snprintf(body, sizeof body, "s=1 t=%" PRIu64 " n=%" PRIu64 " abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz"
             "abcdefghijkl", B.base_us + i, i);
    p[8] = xasprintf("<message xmlns='jabber:client' from='u%u@localhost/r' to='u%u@localhost' type='chat' "
                     "id='m%" PRIu64 "'><body>%s</body><stanza-id xmlns='urn:xmpp:sid:0' by='u%u@localhost' "
                     "id='%" PRIx64 "'/></message>", peer, u, i, body, u, id);
    p[9] = xstrdup(body);
}

static void on_commit(void *ud, const struct store_result *res);

static void submit(void)
{
    while (B.inflight < B.inflight_max && B.next < B.rows) {
        uint64_t n = B.rows - B.next < B.batch ? B.rows - B.next : B.batch;
        for (uint64_t r = 0; r < n; r++) {
            for (unsigned c = 0; c < COLS; c++)
                free(B.vals[r * COLS + c]);
            fill_row(B.vals + r * COLS, B.next + r);
        }
        B.next += n;
        B.inflight++;
        struct bench_batch *bb = xmalloc(sizeof *bb);
        bb->n = n;
        bb->t0 = mk_mono_us();
        store_batch(B.s, STORE_MAM_INSERT_BATCH, (const char *const *)B.vals, n, COLS, on_commit, bb);
    }
}

static void on_commit(void *ud, const struct store_result *res)
{
    struct bench_batch *bb = ud;
    if (B.nlat == B.caplat) {
        B.caplat = B.caplat ? B.caplat * 2 : 256;
        B.lat_us = xrealloc(B.lat_us, B.caplat * sizeof *B.lat_us);
    }
    B.lat_us[B.nlat++] = mk_mono_us() - bb->t0;
    free(bb);
    struct stat st;
    if (B.wal_path != NULL && stat(B.wal_path, &st) == 0 && (long long)st.st_size > B.wal_max)
        B.wal_max = (long long)st.st_size;
    B.inflight--;
    if (res->ok != 0) {
        fprintf(stderr, "commit failed: %s\n", res->error);
        B.failed++;
    } else {
        B.committed += res->affected;
    }
    submit();
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static long long count(enum store_stmt st, const char *const *params)
{
    long long n = -2;
    store_query(B.s, st, params, 7, on_count, &n);
    store_drain(B.s);
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        usage();
    struct cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    int ai;
    if (strcmp(argv[1], "sqlite") == 0) {
        cfg.storage.driver = "sqlite";
        cfg.storage.sqlite_path = argv[2];
        B.wal_path = xasprintf("%s-wal", argv[2]);
        ai = 3;
    } else if (strcmp(argv[1], "pgsql") == 0 && argc >= 6) {
        cfg.storage.driver = "pgsql";
        cfg.storage.pg_host = argv[2];
        cfg.storage.pg_port = atoi(argv[3]);
        cfg.storage.pg_dbname = argv[4];
        cfg.storage.pg_user = argv[5];
        cfg.storage.pg_sslmode = "disable";
        cfg.storage.pool_size = 3;
        ai = 6;
    } else {
        usage();
    }
    B.rows = argc > ai ? strtoull(argv[ai], NULL, 10) : 200000;
    B.batch = argc > ai + 1 ? (unsigned)atoi(argv[ai + 1]) : 1024;
    B.users = argc > ai + 2 ? (unsigned)atoi(argv[ai + 2]) : 400;
    B.inflight_max = argc > ai + 3 ? (unsigned)atoi(argv[ai + 3]) : (strcmp(argv[1], "sqlite") == 0 ? 1 : 2);
    if (B.rows == 0 || B.batch == 0 || B.users < 2 || B.inflight_max == 0)
        usage();
    struct ev_loop *loop = ev_default_loop(0);
    char err[512];
    B.s = store_open(loop, &cfg, err, sizeof err);
    if (B.s == NULL) {
        fprintf(stderr, "store_open: %s\n", err);
        return 1;
    }
    /* The users (rows of unknown users are skipped). */
    for (unsigned u = 0; u < B.users; u++) {
        char name[32];
        snprintf(name, sizeof name, "u%u", u);
        const char *p[] = {name, "localhost", "s", "1", "s", "s", "s", "1", "s", "s"};
        store_query(B.s, STORE_USER_CREATE, p, 10, NULL, NULL);
    }
    store_drain(B.s);
    B.base_us = (uint64_t)time(NULL) * 1000000u;
    B.vals = xcalloc((size_t)B.batch * COLS, sizeof *B.vals);
    double c0 = cpu_self();
    int64_t t0 = mk_mono_us();
    submit();
    store_drain(B.s);
    int64_t t1 = mk_mono_us();
    double c1 = cpu_self();
    double secs = (double)(t1 - t0) / 1e6;

    /* Full-text search sees every row: row k (owner u(k % users)) alone holds the word k,
     * and every row of an owner holds the letters. */
    uint64_t k = B.rows / 2 + 17;
    char user[32], fts[40];
    snprintf(user, sizeof user, "u%u", (unsigned)(k % B.users));
    snprintf(fts, sizeof fts, "\"%" PRIu64 "\"", k);
    const char *cp[] = {user, "localhost", "0", "9223372036854775807", "9223372036854775807", "10000000", fts};
    long long one = count(STORE_MAM_COUNT_FTS, cp);
    cp[6] = "\"abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl\"";
    long long all = count(STORE_MAM_COUNT_FTS, cp);
    uint64_t want_all = B.rows / B.users + (k % B.users < B.rows % B.users ? 1 : 0);
    bool fts_ok = one == 1 && all == (long long)want_all;
    qsort(B.lat_us, B.nlat, sizeof *B.lat_us, cmp_i64);
    double lat_p50 = B.nlat ? (double)B.lat_us[B.nlat / 2] / 1e3 : 0;
    double lat_p99 = B.nlat ? (double)B.lat_us[(B.nlat * 99) / 100] / 1e3 : 0;
    double lat_max = B.nlat ? (double)B.lat_us[B.nlat - 1] / 1e3 : 0;
    struct store_wal_stats ws;
    if (store_wal_stats(B.s, &ws) == -1)
        memset(&ws, 0, sizeof ws);
    printf("{\"driver\": \"%s\", \"rows\": %" PRIu64 ", \"committed\": %" PRIu64 ", \"failed_batches\": %" PRIu64
           ", \"batch\": %u, \"users\": %u, \"seconds\": %.3f, \"rows_per_s\": %.0f, \"cpu_us_per_row\": %.2f, "
           "\"fts_word_hits\": %lld, \"fts_owner_hits\": %lld, \"fts_owner_rows\": %" PRIu64 ", \"batch_ms_p50\": %.1f, \"batch_ms_p99\": %.1f, "
           "\"batch_ms_max\": %.1f, \"wal_bytes_max\": %lld, \"wal_pages_max\": %d, \"checkpoints\": %llu, "
           "\"checkpoint_restarts\": %llu, \"checkpoint_busy\": %llu, \"checkpoint_ms_max\": %.1f, "
           "\"wal_reset_wait_ms_total\": %.1f, \"wal_reset_wait_ms_max\": %.1f, \"commits\": %llu, "
           "\"grouped_batches\": %llu}\n",
           store_driver(B.s), B.rows, B.committed, B.failed, B.batch, B.users, secs, (double)B.committed / secs,
           (c1 - c0) * 1e6 / (double)(B.committed > 0 ? B.committed : 1), one, all, want_all, lat_p50, lat_p99,
           lat_max, B.wal_max, ws.wal_pages_max, ws.runs, ws.restarts, ws.busy, (double)ws.max_us / 1e3,
           (double)ws.held_us_total / 1e3, (double)ws.held_us_max / 1e3, ws.commits, ws.grouped);
    for (size_t i = 0; i < (size_t)B.batch * COLS; i++)
        free(B.vals[i]);
    free(B.vals);
    free(B.lat_us);
    free((char *)B.wal_path);
    store_close(&B.s);
    return B.failed == 0 && B.committed == B.rows && fts_ok ? 0 : 1;
}
