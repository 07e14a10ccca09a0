/* tests/unit/test_gd_table.c - gd/table.c against real redis-server processes (a primary and its replica) on a libev loop. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "../../gd/table.h"
#include "log.h"
#include "loop_until.h"
#include "util.h"

/* ---- redis-server processes ---------------------------------------------------------- */

struct rsrv {
    pid_t pid;
    int port;
    char dir[300];
    char **extra;   /* more arguments, NULL-terminated (borrowed) */
    redisContext *ctx;
};

static char g_tmp[64];
static struct rsrv g_primary, g_replica;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

static void rsrv_spawn(struct rsrv *s, int master_port)
{
    mkdir(s->dir, 0700);
    char port[16], mport[16], logf[400];
    snprintf(port, sizeof port, "%d", s->port);
    snprintf(mport, sizeof mport, "%d", master_port);
    snprintf(logf, sizeof logf, "%s/redis.log", s->dir);
    const char *argv[64] = { "redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", s->dir,
                             "--save", "", "--appendonly", "no", "--logfile", logf, "--daemonize", "no" };
    int n = 15;
    if (master_port > 0) {
        argv[n++] = "--replicaof";
        argv[n++] = "127.0.0.1";
        argv[n++] = mport;
    }
    for (int i = 0; s->extra != NULL && s->extra[i] != NULL; i++)
        argv[n++] = s->extra[i];
    argv[n] = NULL;
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        execvp(argv[0], (char **)argv);
        _exit(127);
    }
}

/* Blocking client for the test's own checks (never used by the module). */
static redisContext *rsrv_connect(int port)
{
    int64_t deadline = mk_mono_us() + 10000000;
    while (mk_mono_us() < deadline) {
        redisContext *c = redisConnect("127.0.0.1", port);
        if (c != NULL && c->err == 0) {
            redisReply *r = redisCommand(c, "PING");
            bool ok = r != NULL && (r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR);
            if (r)
                freeReplyObject(r);
            if (ok)
                return c;
        }
        if (c)
            redisFree(c);
        struct timespec ts = { 0, 20000000 };
        nanosleep(&ts, NULL);   /* waiting for the server process to listen */
    }
    fail_msg("redis on port %d did not start", port);
    return NULL;
}

static void rsrv_start(struct rsrv *s, const char *name, int master_port)
{
    snprintf(s->dir, sizeof s->dir, "%s/%s", g_tmp, name);
    if (s->port == 0)
        s->port = free_port();
    rsrv_spawn(s, master_port);
    s->ctx = rsrv_connect(s->port);
}

static void rsrv_stop(struct rsrv *s)
{
    if (s->ctx) {
        redisFree(s->ctx);
        s->ctx = NULL;
    }
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

static redisReply *rcmd(struct rsrv *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(s->ctx, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    return r;
}

static void rok(struct rsrv *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(s->ctx, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("%s: %s", fmt, r->str);
    freeReplyObject(r);
}

/* The primary's writes are on the replica (WAIT for one replica). */
static void replicated(void)
{
    redisReply *r = rcmd(&g_primary, "WAIT 1 5000");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
}

static char *rget(struct rsrv *s, const char *key)
{
    redisReply *r = rcmd(s, "GET %s", key);
    char *v = r->type == REDIS_REPLY_STRING ? xstrdup(r->str) : NULL;
    freeReplyObject(r);
    return v;
}

static long long rttl(struct rsrv *s, const char *key)
{
    redisReply *r = rcmd(s, "TTL %s", key);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static int group_setup(void **state)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mk_gd_table.XXXXXX");
    if (mkdtemp(g_tmp) == NULL)
        return -1;
    log_init("test_gd_table", getenv("GD_TABLE_LOG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR, NULL);
    rsrv_start(&g_primary, "primary", 0);
    rsrv_start(&g_replica, "replica", g_primary.port);
    int64_t deadline = mk_mono_us() + 10000000;
    for (;;) {
        redisReply *r = rcmd(&g_replica, "INFO replication");
        bool up = strstr(r->str, "master_link_status:up") != NULL;
        freeReplyObject(r);
        if (up)
            break;
        if (mk_mono_us() > deadline)
            return -1;
        struct timespec ts = { 0, 20000000 };
        nanosleep(&ts, NULL);
    }
    return 0;
}

static int group_teardown(void **state)
{
    rsrv_stop(&g_replica);
    rsrv_stop(&g_primary);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- the module on a loop --------------------------------------------------------------- */

struct fx {
    struct ev_loop *loop;
};

static int fx_setup(void **state)
{
    struct fx *f = xcalloc(1, sizeof *f);
    f->loop = ev_loop_new(EVFLAG_AUTO);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    ev_loop_destroy(f->loop);
    free(f);
    return 0;
}

static struct gd_table_params params(const char *dc, const char *prefix)
{
    return (struct gd_table_params){
        .dc = dc, .primary_host = "127.0.0.1", .primary_port = g_primary.port,
        .replica_host = "127.0.0.1", .replica_port = g_replica.port,
        .prefix = prefix, .ttl_sec = 60, .refresh_interval = 30, .refresh_batch = 100,
        .cache_ttl = 5, .cache_max = 100, .neg_ttl = 5, .reconnect_min = 0.05, .reconnect_max = 0.2,
    };
}

static bool cond_ready(void *arg)
{
    return gd_table_connected(arg);
}

static struct gd_table *table_up(struct fx *f, const struct gd_table_params *p)
{
    char err[200] = "";
    struct gd_table *t = gd_table_new(f->loop, p, err, sizeof err);
    if (t == NULL)
        fail_msg("gd_table_new: %s", err);
    assert_true(run_until(f->loop, cond_ready, t, 10));
    return t;
}

struct wres {
    int n;
    enum gd_table_status st;
};

static void on_write(void *arg, enum gd_table_status st)
{
    struct wres *w = arg;
    w->st = st;
    w->n++;
}

static bool cond_wres(void *arg)
{
    return ((struct wres *)arg)->n > 0;
}

static enum gd_table_status open_sync(struct fx *f, struct gd_table *t, const char *jid, uint64_t ver)
{
    struct wres w = { 0 };
    assert_int_equal(gd_table_session_open(t, jid, ver, on_write, &w), 0);
    assert_true(run_until(f->loop, cond_wres, &w, 10));
    return w.st;
}

static enum gd_table_status close_sync(struct fx *f, struct gd_table *t, const char *jid)
{
    struct wres w = { 0 };
    assert_int_equal(gd_table_session_close(t, jid, on_write, &w), 0);
    assert_true(run_until(f->loop, cond_wres, &w, 10));
    return w.st;
}

struct lres {
    int n;
    enum gd_table_status st;
    size_t nlocs;
    char dc[8][64];
    char res[8][64];
    uint64_t ver[8];
};

static void on_lookup(void *arg, enum gd_table_status st, const struct gd_table_loc *locs, size_t n)
{
    struct lres *l = arg;
    l->st = st;
    l->nlocs = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        mk_strlcpy(l->dc[i], locs[i].dc, 64);
        mk_strlcpy(l->res[i], locs[i].resource, 64);
        l->ver[i] = locs[i].version;
    }
    l->n++;
}

static bool cond_lres(void *arg)
{
    return ((struct lres *)arg)->n > 0;
}

static struct lres lookup_sync(struct fx *f, struct gd_table *t, const char *jid)
{
    struct lres l = { 0 };
    assert_int_equal(gd_table_lookup_jid(t, jid, on_lookup, &l), 0);
    assert_true(run_until(f->loop, cond_lres, &l, 10));
    return l;
}

static char *key(const char *prefix, const char *kind, const char *name)
{
    static char k[512];
    snprintf(k, sizeof k, "%s%s%s", prefix, kind, name);
    return k;
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_put_get_delete(void **state)
{
    struct fx *f = *state;
    struct gd_table_params p = params("dc-a", "t1:");
    struct gd_table *t = table_up(f, &p);
    uint64_t v = gd_table_version_next(t);
    assert_int_equal(open_sync(f, t, "alice@example.com/phone", v), GD_TABLE_OK);
    assert_int_equal(gd_table_owned(t), 1);

    /* Exactly the documented layout, with TTLs. */
    char *val = rget(&g_primary, key("t1:", "j:", "alice@example.com/phone"));
    char want[128];
    snprintf(want, sizeof want, "%020llu dc-a", (unsigned long long)v);
    assert_string_equal(val, want);
    free(val);
    assert_true(rttl(&g_primary, key("t1:", "j:", "alice@example.com/phone")) > 50);
    assert_true(rttl(&g_primary, key("t1:", "b:", "alice@example.com")) > 50);

    replicated();
    struct lres l = lookup_sync(f, t, "alice@example.com/phone");
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_int_equal(l.nlocs, 1);
    assert_string_equal(l.dc[0], "dc-a");
    assert_int_equal(l.ver[0], v);
    l = lookup_sync(f, t, "alice@example.com");
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_int_equal(l.nlocs, 1);
    assert_string_equal(l.res[0], "phone");

    assert_int_equal(close_sync(f, t, "alice@example.com/phone"), GD_TABLE_OK);
    assert_int_equal(gd_table_owned(t), 0);
    assert_null(rget(&g_primary, key("t1:", "j:", "alice@example.com/phone")));
    replicated();
    l = lookup_sync(f, t, "alice@example.com/phone");
    assert_int_equal(l.st, GD_TABLE_NOT_FOUND);
    l = lookup_sync(f, t, "alice@example.com");
    assert_int_equal(l.st, GD_TABLE_NOT_FOUND);

    /* Bad arguments are refused, not sent. */
    assert_int_equal(gd_table_session_open(t, "nobody@example.com", 1, NULL, NULL), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(gd_table_session_close(t, "nobody@example.com/x", NULL, NULL), -1);
    assert_int_equal(errno, ENOENT);
    gd_table_free(&t);
    assert_null(t);
}

struct lost {
    int n;
    char name[128];
};

static void on_lost(void *arg, const char *name)
{
    struct lost *l = arg;
    l->n++;
    mk_strlcpy(l->name, name, sizeof l->name);
}

struct passes_at {
    struct gd_table *t;
    uint64_t want;
};

static bool cond_passes(void *arg)
{
    struct passes_at *p = arg;
    return gd_table_refresh_passes(p->t) >= p->want;
}

/* Newer wins; an older login, refresh or delete from another DC is refused. */
static void test_versions(void **state)
{
    struct fx *f = *state;
    struct gd_table_params pa = params("dc-a", "t2:"), pb = params("dc-b", "t2:");
    struct gd_table *a = table_up(f, &pa), *b = table_up(f, &pb);
    struct lost lost = { 0 };
    gd_table_set_lost_cb(a, on_lost, &lost);
    const char *jid = "bob@example.com/laptop";
    assert_int_equal(open_sync(f, a, jid, 1000), GD_TABLE_OK);
    assert_int_equal(open_sync(f, b, jid, 2000), GD_TABLE_OK);
    char *val = rget(&g_primary, key("t2:", "j:", jid));
    assert_string_equal(val, "00000000000000002000 dc-b");
    free(val);

    /* An older login does not overwrite (and is no longer owned). */
    assert_int_equal(open_sync(f, a, jid, 1500), GD_TABLE_STALE);
    assert_int_equal(gd_table_owned(a), 0);
    val = rget(&g_primary, key("t2:", "j:", jid));
    assert_string_equal(val, "00000000000000002000 dc-b");
    free(val);

    /* Equal version: the DC name breaks the tie, the same way on every DC. */
    assert_int_equal(open_sync(f, a, "tie@example.com/r", 5000), GD_TABLE_OK);
    assert_int_equal(open_sync(f, b, "tie@example.com/r", 5000), GD_TABLE_OK);
    assert_int_equal(open_sync(f, a, "tie@example.com/r", 5000), GD_TABLE_STALE);

    /* A newer but dead bare field (its expiry passed, not pruned yet) does not block a
     * login; a newer live one does. */
    rok(&g_primary, "HSET %s r %s", key("t2:", "b:", "zed@example.com"), "99999999999999999999 dc-z 1000");
    assert_int_equal(open_sync(f, a, "zed@example.com/r", 10), GD_TABLE_OK);
    rok(&g_primary, "HSET %s s %s", key("t2:", "b:", "zed@example.com"), "99999999999999999999 dc-z 9999999999");
    assert_int_equal(open_sync(f, a, "zed@example.com/s", 11), GD_TABLE_STALE);

    /* A stale delete leaves the newer login alone (the GET-then-DEL race). */
    assert_int_equal(open_sync(f, a, "carol@example.com/x", 10), GD_TABLE_OK);
    assert_int_equal(open_sync(f, b, "carol@example.com/x", 20), GD_TABLE_OK);
    assert_int_equal(close_sync(f, a, "carol@example.com/x"), GD_TABLE_STALE);
    val = rget(&g_primary, key("t2:", "j:", "carol@example.com/x"));
    assert_string_equal(val, "00000000000000000020 dc-b");
    free(val);
    redisReply *r = rcmd(&g_primary, "HGET %s x", key("t2:", "b:", "carol@example.com"));
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_memory_equal(r->str, "00000000000000000020 dc-b ", 26);
    freeReplyObject(r);
    gd_table_free(&a);
    gd_table_free(&b);
}

/* MongooseIM #2392: Eve's session dies on A (still in A's table), she logs in on B,
 * A's refresher runs: it must not put A back. Then A closes the dead session late. */
static void test_2392_race(void **state)
{
    struct fx *f = *state;
    struct gd_table_params pa = params("dc-a", "t3:"), pb = params("dc-b", "t3:");
    pa.refresh_interval = 0.2;
    struct gd_table *a = table_up(f, &pa), *b = table_up(f, &pb);
    struct lost lost = { 0 };
    gd_table_set_lost_cb(a, on_lost, &lost);
    const char *eve = "eve@example.com/mobile";
    assert_int_equal(open_sync(f, a, eve, gd_table_version_next(a)), GD_TABLE_OK);
    assert_int_equal(open_sync(f, a, "other@example.com/x", gd_table_version_next(a)), GD_TABLE_OK);
    uint64_t vb = gd_table_version_next(b);
    /* B's login and A's refresh leave in the same loop turn: whichever Redis runs first,
     * the result must be B's. */
    struct wres w = { 0 };
    gd_table_refresh_now(a);
    assert_int_equal(gd_table_session_open(b, eve, vb, on_write, &w), 0);
    assert_true(run_until(f->loop, cond_wres, &w, 10));
    assert_int_equal(w.st, GD_TABLE_OK);
    /* Two more whole passes of A's refresher after B's login. */
    struct passes_at pw = { a, gd_table_refresh_passes(a) + 2 };
    assert_true(run_until(f->loop, cond_passes, &pw, 10));
    char want[64];
    snprintf(want, sizeof want, "%020llu dc-b", (unsigned long long)vb);
    char *val = rget(&g_primary, key("t3:", "j:", eve));
    assert_string_equal(val, want);
    free(val);
    /* A learnt that it lost Eve, and keeps refreshing its other session. */
    assert_int_equal(lost.n, 1);
    assert_string_equal(lost.name, eve);
    assert_int_equal(gd_table_owned(a), 1);
    assert_int_equal(gd_table_stats(a)->lost, 1);
    /* A's late close of the dead session: ENOENT, it is not A's any more. */
    assert_int_equal(gd_table_session_close(a, eve, NULL, NULL), -1);
    replicated();
    struct lres l = lookup_sync(f, a, eve);
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_string_equal(l.dc[0], "dc-b");
    gd_table_free(&a);
    gd_table_free(&b);
}

static bool cond_key_gone(void *arg)
{
    char *v = rget(&g_primary, arg);
    free(v);
    return v == NULL;
}

/* Entries expire unless refreshed; the refresh keeps them past their TTL. */
static void test_ttl_expiry(void **state)
{
    struct fx *f = *state;
    struct gd_table_params pa = params("dc-a", "t4:"), pb = params("dc-b", "t4:");
    pa.ttl_sec = 1;
    pa.refresh_interval = 100;   /* no refresh during the test */
    pb.ttl_sec = 1;
    pb.refresh_interval = 0.25;
    struct gd_table *a = table_up(f, &pa), *b = table_up(f, &pb);
    assert_int_equal(open_sync(f, a, "gone@example.com/r", gd_table_version_next(a)), GD_TABLE_OK);
    assert_int_equal(open_sync(f, b, "kept@example.com/r", gd_table_version_next(b)), GD_TABLE_OK);
    char gone[512], kept[512];
    snprintf(gone, sizeof gone, "%s", key("t4:", "j:", "gone@example.com/r"));
    snprintf(kept, sizeof kept, "%s", key("t4:", "j:", "kept@example.com/r"));
    assert_true(run_until(f->loop, cond_key_gone, gone, 10));
    /* 8 passes of 0.25 s = 2 s, twice the TTL: still there. */
    struct passes_at pw = { b, gd_table_refresh_passes(b) + 8 };
    assert_true(run_until(f->loop, cond_passes, &pw, 10));
    char *v = rget(&g_primary, kept);
    assert_non_null(v);
    free(v);
    assert_true(gd_table_stats(b)->refresh_entries >= 8);
    gd_table_free(&a);
    gd_table_free(&b);
}

/* One account online in two DCs: the bare JID lists both; closing one keeps the other. */
static void test_bare_two_dcs(void **state)
{
    struct fx *f = *state;
    struct gd_table_params pa = params("dc-a", "t5:"), pb = params("dc-b", "t5:"), pr = params("dc-r", "t5:");
    pr.cache_ttl = -1;
    pr.neg_ttl = -1;
    struct gd_table *a = table_up(f, &pa), *b = table_up(f, &pb), *r = table_up(f, &pr);
    assert_int_equal(open_sync(f, a, "dan@example.com/one", gd_table_version_next(a)), GD_TABLE_OK);
    assert_int_equal(open_sync(f, a, "dan@example.com/two", gd_table_version_next(a)), GD_TABLE_OK);
    assert_int_equal(open_sync(f, b, "dan@example.com/three", gd_table_version_next(b)), GD_TABLE_OK);
    replicated();
    struct lres l = lookup_sync(f, r, "dan@example.com");
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_int_equal(l.nlocs, 3);
    int seen = 0;
    for (size_t i = 0; i < 3; i++) {
        if (strcmp(l.res[i], "one") == 0 && strcmp(l.dc[i], "dc-a") == 0)
            seen |= 1;
        if (strcmp(l.res[i], "two") == 0 && strcmp(l.dc[i], "dc-a") == 0)
            seen |= 2;
        if (strcmp(l.res[i], "three") == 0 && strcmp(l.dc[i], "dc-b") == 0)
            seen |= 4;
    }
    assert_int_equal(seen, 7);
    /* One of A's two sessions closes: the bare JID still has A's other one and B's. */
    assert_int_equal(close_sync(f, a, "dan@example.com/one"), GD_TABLE_OK);
    replicated();
    l = lookup_sync(f, r, "dan@example.com");
    assert_int_equal(l.nlocs, 2);
    assert_true(strcmp(l.res[0], "one") != 0 && strcmp(l.res[1], "one") != 0);
    assert_int_equal(close_sync(f, a, "dan@example.com/two"), GD_TABLE_OK);
    replicated();
    l = lookup_sync(f, r, "dan@example.com");
    assert_int_equal(l.nlocs, 1);
    assert_string_equal(l.dc[0], "dc-b");
    assert_string_equal(l.res[0], "three");
    /* A dead resource (expiry passed) is not reported even while its field is there. */
    rok(&g_primary, "HSET %s ghost %s", key("t5:", "b:", "dan@example.com"), "00000000000000000001 dc-a 1000");
    replicated();
    l = lookup_sync(f, r, "dan@example.com");
    assert_int_equal(l.nlocs, 1);
    gd_table_free(&a);
    gd_table_free(&b);
    gd_table_free(&r);
}

struct inval_at {
    struct gd_table *t;
    uint64_t before;
};

static bool cond_invalidated(void *arg)
{
    struct inval_at *w = arg;
    return gd_table_stats(w->t)->cache_invalidations > w->before;
}

/* Cache and negative cache: answered locally until an arrival clears them. */
static void test_cache_invalidation(void **state)
{
    struct fx *f = *state;
    struct gd_table_params pa = params("dc-a", "t6:"), pb = params("dc-b", "t6:"), pr = params("dc-r", "t6:");
    pr.neg_ttl = 60;
    pr.cache_ttl = 60;
    struct gd_table *a = table_up(f, &pa), *b = table_up(f, &pb), *r = table_up(f, &pr);
    const char *jid = "fay@example.com/r";
    struct lres l = lookup_sync(f, r, jid);
    assert_int_equal(l.st, GD_TABLE_NOT_FOUND);
    assert_int_equal(gd_table_stats(r)->redis_reads, 1);
    l = lookup_sync(f, r, jid);   /* negative cache, answered at once */
    assert_int_equal(l.st, GD_TABLE_NOT_FOUND);
    assert_int_equal(gd_table_stats(r)->redis_reads, 1);
    assert_int_equal(gd_table_stats(r)->neg_hits, 1);

    /* Fay arrives on A: the arrival clears R's negative entry, R finds her. */
    assert_int_equal(open_sync(f, a, jid, gd_table_version_next(a)), GD_TABLE_OK);
    struct inval_at iw = { r, 0 };
    assert_true(run_until(f->loop, cond_invalidated, &iw, 10));
    l = lookup_sync(f, r, jid);
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_string_equal(l.dc[0], "dc-a");
    assert_int_equal(gd_table_stats(r)->redis_reads, 2);
    l = lookup_sync(f, r, jid);   /* positive cache */
    assert_int_equal(gd_table_stats(r)->redis_reads, 2);
    assert_int_equal(gd_table_stats(r)->cache_hits, 1);

    /* She moves to B: R's cached "dc-a" goes away with the arrival. */
    iw.before = gd_table_stats(r)->cache_invalidations;
    assert_int_equal(open_sync(f, b, jid, gd_table_version_next(b)), GD_TABLE_OK);
    assert_true(run_until(f->loop, cond_invalidated, &iw, 10));
    l = lookup_sync(f, r, jid);
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_string_equal(l.dc[0], "dc-b");

    /* Origin learnt from a forwarded message: cache only, no Redis read. */
    uint64_t reads = gd_table_stats(r)->redis_reads;
    gd_table_cache_origin(r, "gus@example.com/x", "dc-b", 7);
    l = lookup_sync(f, r, "gus@example.com/x");
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_string_equal(l.dc[0], "dc-b");
    assert_int_equal(gd_table_stats(r)->redis_reads, reads);
    /* Every message brings it again: the same answer is kept (its lifetime restarted), a
     * different one (another DC, another version) replaces it. */
    gd_table_cache_origin(r, "gus@example.com/x", "dc-b", 7);
    l = lookup_sync(f, r, "gus@example.com/x");
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_string_equal(l.dc[0], "dc-b");
    gd_table_cache_origin(r, "gus@example.com/x", "dc-c", 7);
    l = lookup_sync(f, r, "gus@example.com/x");
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_string_equal(l.dc[0], "dc-c");
    gd_table_cache_origin(r, "gus@example.com/x", "dc-c", 9);
    l = lookup_sync(f, r, "gus@example.com/x");
    assert_int_equal(l.nlocs, 1);
    assert_int_equal(l.ver[0], 9);
    assert_int_equal(gd_table_stats(r)->redis_reads, reads);
    gd_table_cache_forget(r, "gus@example.com/x");
    l = lookup_sync(f, r, "gus@example.com/x");
    assert_int_equal(l.st, GD_TABLE_NOT_FOUND);
    assert_int_equal(gd_table_stats(r)->redis_reads, reads + 1);
    gd_table_free(&a);
    gd_table_free(&b);
    gd_table_free(&r);
}

/* The cache is bounded: past cache_max, old entries are evicted. */
static void test_cache_bounded(void **state)
{
    struct fx *f = *state;
    struct gd_table_params pr = params("dc-r", "t7:");
    pr.cache_max = 8;
    struct gd_table *r = table_up(f, &pr);
    char jid[64];
    for (int i = 0; i < 50; i++) {
        snprintf(jid, sizeof jid, "u%d@example.com/r", i);
        lookup_sync(f, r, jid);
    }
    uint64_t reads = gd_table_stats(r)->redis_reads;
    assert_int_equal(reads, 50);
    lookup_sync(f, r, "u49@example.com/r");   /* recent: cached */
    assert_int_equal(gd_table_stats(r)->redis_reads, 50);
    lookup_sync(f, r, "u0@example.com/r");    /* evicted long ago */
    assert_int_equal(gd_table_stats(r)->redis_reads, 51);
    gd_table_free(&r);
}

/* Reads go to the replica: a key only the replica holds is found. */
static void test_replica_reads(void **state)
{
    struct fx *f = *state;
    struct gd_table_params pr = params("dc-r", "t8:");
    struct gd_table *r = table_up(f, &pr);
    rok(&g_replica, "CONFIG SET replica-read-only no");
    rok(&g_replica, "SET %s %s EX 60", key("t8:", "j:", "hal@example.com/r"), "00000000000000000009 dc-x");
    rok(&g_replica, "CONFIG SET replica-read-only yes");
    struct lres l = lookup_sync(f, r, "hal@example.com/r");
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_string_equal(l.dc[0], "dc-x");
    assert_int_equal(l.ver[0], 9);
    /* A wrongly shaped value in Redis: an error status and a log line, no crash. */
    rok(&g_primary, "SET %s garbage EX 60", key("t8:", "j:", "bad@example.com/r"));
    rok(&g_primary, "HSET %s r garbage", key("t8:", "b:", "bad2@example.com"));
    rok(&g_primary, "SET %s x", key("t8:", "b:", "bad3@example.com"));
    replicated();
    l = lookup_sync(f, r, "bad@example.com/r");
    assert_int_equal(l.st, GD_TABLE_ERROR);
    l = lookup_sync(f, r, "bad2@example.com");
    assert_int_equal(l.st, GD_TABLE_ERROR);
    l = lookup_sync(f, r, "bad3@example.com");   /* WRONGTYPE error reply */
    assert_int_equal(l.st, GD_TABLE_ERROR);
    assert_int_equal(gd_table_stats(r)->reply_errors, 3);
    gd_table_free(&r);
}

struct dcs_res {
    int n;
    enum gd_table_status st;
    size_t ndcs;
    char names[8][64];
    char eps[8][64];
    char keys[8][64];
};

static void on_dcs(void *arg, enum gd_table_status st, const struct gd_table_dc *dcs, size_t n)
{
    struct dcs_res *d = arg;
    d->st = st;
    d->ndcs = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        mk_strlcpy(d->names[i], dcs[i].name, 64);
        mk_strlcpy(d->eps[i], dcs[i].endpoints, 64);
        mk_strlcpy(d->keys[i], dcs[i].pubkey, 64);
    }
    d->n++;
}

static bool cond_dcs(void *arg)
{
    return ((struct dcs_res *)arg)->n > 0;
}

static struct dcs_res dcs_sync(struct fx *f, struct gd_table *t)
{
    struct dcs_res d = { 0 };
    assert_int_equal(gd_table_dcs(t, on_dcs, &d), 0);
    assert_true(run_until(f->loop, cond_dcs, &d, 10));
    return d;
}

static bool cond_setup_failed(void *arg)
{
    return gd_table_stats(arg)->setup_failures > 0;
}

/* AUTH as an ACL user limited to the prefix: the table works; the user cannot touch
 * another key; a wrong password never becomes writable. */
static void test_acl(void **state)
{
    struct fx *f = *state;
    for (int i = 0; i < 2; i++) {
        struct rsrv *s = i ? &g_replica : &g_primary;
        /* The tight set of docs/GD-TABLE.md: the table's commands and its scripts' only. */
        rok(s, "ACL SETUSER mkgd reset on >s3cret ~acl:* &acl:* -@all +ping +select +script|load +evalsha "
               "+eval +get +hgetall +hmget +zrangebyscore +subscribe +set +hget +hset +hdel +del +ttl "
               "+expire +publish +time +zadd +zremrangebyscore");
    }
    struct gd_table_params p = params("dc-a", "acl:");
    p.user = "mkgd";
    p.password = "s3cret";
    p.refresh_interval = 0.1;
    struct gd_table *t = table_up(f, &p);
    gd_table_set_self(t, "tcp://127.0.0.1:5555", "pubkeyZ85");
    assert_int_equal(open_sync(f, t, "ian@example.com/r", gd_table_version_next(t)), GD_TABLE_OK);
    assert_int_equal(open_sync(f, t, "ian@example.com/q", gd_table_version_next(t)), GD_TABLE_OK);
    assert_int_equal(close_sync(f, t, "ian@example.com/q"), GD_TABLE_OK);
    struct wres cw = { 0 };
    assert_int_equal(gd_table_domain_claim(t, "muc.example.com", on_write, &cw), 0);
    assert_true(run_until(f->loop, cond_wres, &cw, 10));
    assert_int_equal(cw.st, GD_TABLE_OK);
    struct dcs_res d = dcs_sync(f, t);
    assert_int_equal(d.st, GD_TABLE_OK);
    struct passes_at pw = { t, gd_table_refresh_passes(t) + 2 };
    assert_true(run_until(f->loop, cond_passes, &pw, 10));
    assert_int_equal(gd_table_stats(t)->reply_errors, 0);
    assert_true(gd_table_stats(t)->refresh_entries >= 2);
    replicated();
    struct lres l = lookup_sync(f, t, "ian@example.com");
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_int_equal(l.nlocs, 1);
    struct lres ld = { 0 };
    assert_int_equal(gd_table_lookup_domain(t, "muc.example.com", on_lookup, &ld), 0);
    assert_true(run_until(f->loop, cond_lres, &ld, 10));
    assert_int_equal(ld.st, GD_TABLE_OK);
    assert_string_equal(ld.dc[0], "dc-a");
    assert_int_equal(gd_table_stats(t)->reply_errors, 0);

    /* The same user, outside the prefix: refused by the server. */
    redisContext *c = redisConnect("127.0.0.1", g_primary.port);
    redisReply *r = redisCommand(c, "AUTH mkgd s3cret");
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    r = redisCommand(c, "SET other:key 1");
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(r->str, "NOPERM"));
    freeReplyObject(r);
    r = redisCommand(c, "EVAL %s 1 %s", "return redis.call('SET', KEYS[1], 1)", "other:key");
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    r = redisCommand(c, "FLUSHALL");
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    redisFree(c);
    gd_table_free(&t);

    p.password = "wrong";
    char err[200];
    t = gd_table_new(f->loop, &p, err, sizeof err);
    assert_non_null(t);
    assert_true(run_until(f->loop, cond_setup_failed, t, 10));
    assert_false(gd_table_writable(t));
    assert_int_equal(gd_table_session_open(t, "ian@example.com/r", 1, NULL, NULL), -1);
    assert_int_equal(errno, ENOTCONN);
    gd_table_free(&t);
}

struct dcs_wait {
    struct fx *f;
    struct gd_table *t;
    size_t want;
};

static bool cond_dcs_count(void *arg)
{
    struct dcs_wait *w = arg;
    struct dcs_res d = dcs_sync(w->f, w->t);
    return d.ndcs == w->want;
}

/* Heartbeats: every live DC is listed with its endpoints and key; a DC that stops
 * heartbeating drops out when its entry expires. */
static void test_dc_heartbeat(void **state)
{
    struct fx *f = *state;
    struct gd_table_params pa = params("dc-a", "t9:"), pb = params("dc-b", "t9:");
    pa.ttl_sec = 1;
    pa.refresh_interval = 0.2;
    pb.ttl_sec = 1;
    pb.refresh_interval = 0.2;
    struct gd_table *a = table_up(f, &pa), *b = table_up(f, &pb);
    gd_table_set_self(a, "tcp://10.0.0.1:5555", "keyA");
    gd_table_set_self(b, "tcp://10.0.0.2:5555", "keyB");
    struct dcs_wait w = { f, a, 2 };
    assert_true(run_until(f->loop, cond_dcs_count, &w, 10));
    struct dcs_res d = dcs_sync(f, a);
    int seen = 0;
    for (size_t i = 0; i < d.ndcs; i++) {
        if (strcmp(d.names[i], "dc-a") == 0 && strcmp(d.eps[i], "tcp://10.0.0.1:5555") == 0 &&
            strcmp(d.keys[i], "keyA") == 0)
            seen |= 1;
        if (strcmp(d.names[i], "dc-b") == 0 && strcmp(d.eps[i], "tcp://10.0.0.2:5555") == 0 &&
            strcmp(d.keys[i], "keyB") == 0)
            seen |= 2;
    }
    assert_int_equal(seen, 3);
    assert_true(rttl(&g_primary, key("t9:", "dc:", "dc-b")) > 0);
    gd_table_free(&b);   /* B stops */
    w.want = 1;
    assert_true(run_until(f->loop, cond_dcs_count, &w, 10));
    d = dcs_sync(f, a);
    assert_string_equal(d.names[0], "dc-a");
    gd_table_free(&a);
}

/* A SCRIPT FLUSH (or a restarted Redis) answers EVALSHA with NOSCRIPT: the script is sent whole. */
static void test_noscript(void **state)
{
    struct fx *f = *state;
    struct gd_table_params p = params("dc-a", "t10:");
    struct gd_table *t = table_up(f, &p);
    rok(&g_primary, "SCRIPT FLUSH");
    assert_int_equal(open_sync(f, t, "jo@example.com/r", 42), GD_TABLE_OK);
    char *v = rget(&g_primary, key("t10:", "j:", "jo@example.com/r"));
    assert_string_equal(v, "00000000000000000042 dc-a");
    free(v);
    gd_table_free(&t);
}

static bool cond_not_writable(void *arg)
{
    return !gd_table_writable(arg);
}

static bool cond_rewritten(void *arg)
{
    return gd_table_stats(arg)->rewritten >= 2;
}

/* Redis goes away and comes back empty: lookups fail fast meanwhile, the owned
 * entries are written again after the reconnect. */
static void test_redis_restart(void **state)
{
    struct fx *f = *state;
    struct rsrv s = { 0 };
    rsrv_start(&s, "restart", 0);
    struct gd_table_params p = params("dc-a", "t11:");
    p.primary_port = s.port;
    p.replica_host = NULL;
    struct gd_table *t = table_up(f, &p);
    assert_int_equal(open_sync(f, t, "kim@example.com/a", 100), GD_TABLE_OK);
    assert_int_equal(open_sync(f, t, "kim@example.com/b", 101), GD_TABLE_OK);
    rsrv_stop(&s);
    assert_true(run_until(f->loop, cond_not_writable, t, 10));
    struct lres l = { 0 };
    assert_int_equal(gd_table_lookup_jid(t, "lee@example.com/x", on_lookup, &l), -1);
    assert_int_equal(errno, ENOTCONN);
    assert_int_equal(l.n, 0);
    /* A login while down: kept, written after the reconnect. */
    assert_int_equal(gd_table_session_open(t, "kim@example.com/c", 102, NULL, NULL), -1);
    assert_int_equal(errno, ENOTCONN);
    rsrv_spawn(&s, 0);
    s.ctx = rsrv_connect(s.port);
    assert_true(run_until(f->loop, cond_ready, t, 10));
    assert_true(run_until(f->loop, cond_rewritten, t, 10));
    const char *jids[3] = { "kim@example.com/a", "kim@example.com/b", "kim@example.com/c" };
    for (int i = 0; i < 3; i++) {
        char *v = rget(&s, key("t11:", "j:", jids[i]));
        char want[64];
        snprintf(want, sizeof want, "%020d dc-a", 100 + i);
        assert_non_null(v);
        assert_string_equal(v, want);
        free(v);
    }
    assert_true(gd_table_stats(t)->reconnects >= 1);
    l = lookup_sync(f, t, "kim@example.com");
    assert_int_equal(l.nlocs, 3);
    gd_table_free(&t);
    rsrv_stop(&s);
}

static bool cond_lost(void *arg)
{
    return ((struct lost *)arg)->n > 0;
}

/* A component / MUC domain moves to the DC that claimed it last; the former owner's
 * refresh and release leave the new claim alone. */
static void test_domain_claim(void **state)
{
    struct fx *f = *state;
    struct gd_table_params pa = params("dc-a", "t15:"), pb = params("dc-b", "t15:"), pr = params("dc-r", "t15:");
    pa.refresh_interval = 0.2;
    pr.cache_ttl = -1;
    pr.neg_ttl = -1;
    struct gd_table *a = table_up(f, &pa), *b = table_up(f, &pb), *r = table_up(f, &pr);
    struct lost lost = { 0 };
    gd_table_set_lost_cb(a, on_lost, &lost);
    struct wres w = { 0 };
    assert_int_equal(gd_table_domain_claim(a, "muc.example.com", on_write, &w), 0);
    assert_true(run_until(f->loop, cond_wres, &w, 10));
    assert_int_equal(w.st, GD_TABLE_OK);
    replicated();
    struct lres l = { 0 };
    assert_int_equal(gd_table_lookup_domain(r, "muc.example.com", on_lookup, &l), 0);
    assert_true(run_until(f->loop, cond_lres, &l, 10));
    assert_string_equal(l.dc[0], "dc-a");
    w.n = 0;
    assert_int_equal(gd_table_domain_claim(b, "muc.example.com", on_write, &w), 0);
    assert_true(run_until(f->loop, cond_wres, &w, 10));
    assert_int_equal(w.st, GD_TABLE_OK);
    assert_true(run_until(f->loop, cond_lost, &lost, 10));   /* A's refresh finds B's claim */
    assert_string_equal(lost.name, "muc.example.com");
    assert_int_equal(gd_table_domain_release(a, "muc.example.com", NULL, NULL), -1);
    assert_int_equal(errno, ENOENT);
    replicated();
    l.n = 0;
    assert_int_equal(gd_table_lookup_domain(r, "muc.example.com", on_lookup, &l), 0);
    assert_true(run_until(f->loop, cond_lres, &l, 10));
    assert_string_equal(l.dc[0], "dc-b");
    w.n = 0;
    assert_int_equal(gd_table_domain_release(b, "muc.example.com", on_write, &w), 0);
    assert_true(run_until(f->loop, cond_wres, &w, 10));
    assert_int_equal(w.st, GD_TABLE_OK);
    replicated();
    l.n = 0;
    assert_int_equal(gd_table_lookup_domain(r, "muc.example.com", on_lookup, &l), 0);
    assert_true(run_until(f->loop, cond_lres, &l, 10));
    assert_int_equal(l.st, GD_TABLE_NOT_FOUND);
    gd_table_free(&a);
    gd_table_free(&b);
    gd_table_free(&r);
}

struct entries_at {
    struct gd_table *t;
    uint64_t want;
};

static bool cond_entries(void *arg)
{
    struct entries_at *e = arg;
    return gd_table_stats(e->t)->refresh_entries >= e->want;
}

/* A session closed after the refresh pass has sent it: the sessions not sent yet are
 * all still refreshed in this pass (none moved into the sent part and skipped). */
static void test_refresh_close_midpass(void **state)
{
    struct fx *f = *state;
    struct gd_table_params p = params("dc-a", "t14:");
    p.refresh_batch = 1;
    p.refresh_interval = 0.6;   /* 3 entries: one batch every 0.2 s */
    struct gd_table *t = table_up(f, &p);
    assert_int_equal(open_sync(f, t, "s0@example.com/r", 1), GD_TABLE_OK);
    assert_int_equal(open_sync(f, t, "s1@example.com/r", 2), GD_TABLE_OK);
    assert_int_equal(open_sync(f, t, "s2@example.com/r", 3), GD_TABLE_OK);
    uint64_t base = gd_table_stats(t)->refresh_entries;
    gd_table_refresh_now(t);
    struct entries_at e = { t, base + 1 };
    assert_true(run_until(f->loop, cond_entries, &e, 10));
    uint64_t passes = gd_table_refresh_passes(t);
    assert_int_equal(close_sync(f, t, "s0@example.com/r"), GD_TABLE_OK);   /* the one sent */
    struct passes_at pw = { t, passes + 1 };
    assert_true(run_until(f->loop, cond_passes, &pw, 10));
    assert_int_equal(gd_table_stats(t)->refresh_entries - base, 3);
    gd_table_free(&t);
}

static bool cond_replica_down(void *arg)
{
    return !gd_table_connected(arg) && gd_table_readable(arg);
}

static bool cond_replica_synced(void *arg)
{
    struct rsrv *r = arg;
    redisReply *rep = rcmd(r, "INFO replication");
    bool up = strstr(rep->str, "master_link_status:up") != NULL;
    freeReplyObject(rep);
    return up;
}

/* The replica goes away: reads fall back to the primary; when it returns, the
 * subscriber is back and arrivals clear the negative cache again. */
static void test_replica_restart(void **state)
{
    struct fx *f = *state;
    struct rsrv pr = { 0 }, rp = { 0 };
    rsrv_start(&pr, "rr-primary", 0);
    rsrv_start(&rp, "rr-replica", pr.port);
    assert_true(run_until(f->loop, cond_replica_synced, &rp, 10));
    struct gd_table_params pa = params("dc-a", "t13:"), pb = params("dc-b", "t13:");
    pa.primary_port = pb.primary_port = pr.port;
    pa.replica_port = pb.replica_port = rp.port;
    struct gd_table *a = table_up(f, &pa), *b = table_up(f, &pb);
    assert_int_equal(open_sync(f, b, "max@example.com/r", 5), GD_TABLE_OK);
    rsrv_stop(&rp);
    assert_true(run_until(f->loop, cond_replica_down, a, 10));
    struct lres l = lookup_sync(f, a, "max@example.com/r");   /* from the primary */
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_string_equal(l.dc[0], "dc-b");

    rsrv_spawn(&rp, pr.port);
    rp.ctx = rsrv_connect(rp.port);
    assert_true(run_until(f->loop, cond_replica_synced, &rp, 10));
    assert_true(run_until(f->loop, cond_ready, a, 10));
    l = lookup_sync(f, a, "ned@example.com/r");
    assert_int_equal(l.st, GD_TABLE_NOT_FOUND);
    struct inval_at iw = { a, gd_table_stats(a)->cache_invalidations };
    assert_int_equal(open_sync(f, b, "ned@example.com/r", 6), GD_TABLE_OK);
    assert_true(run_until(f->loop, cond_invalidated, &iw, 10));
    redisReply *w = rcmd(&pr, "WAIT 1 5000");
    freeReplyObject(w);
    l = lookup_sync(f, a, "ned@example.com/r");
    assert_int_equal(l.st, GD_TABLE_OK);
    gd_table_free(&a);
    gd_table_free(&b);
    rsrv_stop(&rp);
    rsrv_stop(&pr);
}

static bool port_listens(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Encryption to Redis the documented way (Debian's hiredis has no TLS): Redis 7's
 * tls-port, reached through a local stunnel client that verifies the server's
 * certificate; the table only knows the stunnel port. */
static void test_tls_stunnel(void **state)
{
    struct fx *f = *state;
    char dir[400], cmd[1600], conf[500], cert[500], keyf[500];
    snprintf(dir, sizeof dir, "%s/tls", g_tmp);
    mkdir(dir, 0700);
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(keyf, sizeof keyf, "%s/key.pem", dir);
    snprintf(cmd, sizeof cmd, "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s -out %s -subj /CN=localhost -addext subjectAltName=DNS:localhost -days 2 "
             ">/dev/null 2>&1", keyf, cert);
    assert_int_equal(system(cmd), 0);
    int tls_port = free_port();
    char tp[16];
    snprintf(tp, sizeof tp, "%d", tls_port);
    char *extra[] = { "--tls-port", tp, "--tls-cert-file", cert, "--tls-key-file", keyf,
                      "--tls-ca-cert-file", cert, "--tls-auth-clients", "no", NULL };
    struct rsrv s = { .extra = extra };
    rsrv_start(&s, "tls", 0);   /* the plain port is for the test's own checks only */

    int stunnel_port = free_port();
    snprintf(conf, sizeof conf, "%s/stunnel.conf", dir);
    FILE *cf = fopen(conf, "w");
    assert_non_null(cf);
    fprintf(cf, "foreground = yes\npid =\n[redis]\nclient = yes\naccept = 127.0.0.1:%d\n"
            "connect = 127.0.0.1:%d\nverifyChain = yes\nCAfile = %s\ncheckHost = localhost\n",
            stunnel_port, tls_port, cert);
    fclose(cf);
    pid_t st = fork();
    assert_true(st >= 0);
    if (st == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execlp("stunnel", "stunnel", conf, (char *)NULL);
        _exit(127);
    }
    int64_t deadline = mk_mono_us() + 10000000;
    while (!port_listens(stunnel_port)) {
        assert_true(mk_mono_us() < deadline);
        struct timespec ts = { 0, 20000000 };
        nanosleep(&ts, NULL);   /* waiting for stunnel to listen */
    }

    struct gd_table_params p = params("dc-a", "t12:");
    p.primary_port = stunnel_port;
    p.replica_host = NULL;
    struct gd_table *t = table_up(f, &p);
    assert_int_equal(open_sync(f, t, "tls@example.com/r", 77), GD_TABLE_OK);
    char *v = rget(&s, key("t12:", "j:", "tls@example.com/r"));
    assert_non_null(v);
    assert_string_equal(v, "00000000000000000077 dc-a");
    free(v);
    struct lres l = lookup_sync(f, t, "tls@example.com");
    assert_int_equal(l.st, GD_TABLE_OK);
    assert_string_equal(l.dc[0], "dc-a");
    /* The table's connections reached Redis on its TLS port. */
    redisReply *r = rcmd(&s, "INFO clients");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    freeReplyObject(r);
    r = rcmd(&s, "CLIENT LIST");
    assert_non_null(strstr(r->str, "laddr=127.0.0.1:"));
    char laddr[64];
    snprintf(laddr, sizeof laddr, "laddr=127.0.0.1:%d", tls_port);
    assert_non_null(strstr(r->str, laddr));
    freeReplyObject(r);
    gd_table_free(&t);
    kill(st, SIGTERM);
    waitpid(st, NULL, 0);
    rsrv_stop(&s);
}

static void test_bad_params(void **state)
{
    struct fx *f = *state;
    char err[200];
    struct gd_table_params p = params("dc a", "t:");
    assert_null(gd_table_new(f->loop, &p, err, sizeof err));
    assert_non_null(strstr(err, "data center name"));
    p = params("dc-a", "");
    assert_null(gd_table_new(f->loop, &p, err, sizeof err));
    p = params("dc-a", "t:");
    p.primary_host = "redis.example.com";
    assert_null(gd_table_new(f->loop, &p, err, sizeof err));
    assert_non_null(strstr(err, "not an IP address"));
    p = params("dc-a", "t:");
    p.user = "u";
    assert_null(gd_table_new(f->loop, &p, err, sizeof err));
}

/* ---- the parsers on replies built from RESP bytes ---------------------------------------- */

static redisReply *resp(const char *bytes)
{
    redisReader *rd = redisReaderCreate();
    redisReaderFeed(rd, bytes, strlen(bytes));
    void *out = NULL;
    assert_int_equal(redisReaderGetReply(rd, &out), REDIS_OK);
    redisReaderFree(rd);
    assert_non_null(out);
    return out;
}

static void count_each(void *arg, const char *resource, const char *dc, uint64_t version)
{
    (*(int *)arg)++;
}

static void test_parsers(void **state)
{
    char err[160], dc[GD_TABLE_DC_MAX + 1];
    bool found;
    uint64_t v;
    redisReply *r = resp("$25\r\n00000000000000000042 dc-a\r\n");
    assert_int_equal(gd_table_parse_entry(r, &found, &v, dc, err, sizeof err), 0);
    assert_true(found);
    assert_int_equal(v, 42);
    assert_string_equal(dc, "dc-a");
    freeReplyObject(r);
    const char *bad[] = { "$2\r\n42\r\n", "$3\r\n42 \r\n", "$5\r\n a bc\r\n", "$7\r\n1 dc a!\r\n",
                          "$26\r\n999999999999999999999 dc-a\r\n", ":5\r\n", "*0\r\n", "-ERR no\r\n",
                          "$7\r\n1 dc\xff-a\r\n" };
    for (size_t i = 0; i < MK_ARRAY_LEN(bad); i++) {
        r = resp(bad[i]);
        assert_int_equal(gd_table_parse_entry(r, &found, &v, dc, err, sizeof err), -1);
        freeReplyObject(r);
    }
    r = resp("$-1\r\n");
    assert_int_equal(gd_table_parse_entry(r, &found, &v, dc, err, sizeof err), 0);
    assert_false(found);
    freeReplyObject(r);

    int n = 0;
    r = resp("*4\r\n$1\r\na\r\n$11\r\n1 dc-a 2000\r\n$1\r\nb\r\n$9\r\n2 dc-b 10\r\n");
    assert_int_equal(gd_table_parse_bare(r, 1000, count_each, &n, err, sizeof err), 1);
    assert_int_equal(n, 1);
    freeReplyObject(r);
    n = 0;
    r = resp("*4\r\n$1\r\na\r\n$11\r\n1 dc-a 2000\r\n$1\r\nb\r\n$6\r\n2 dc-b\r\n");
    assert_int_equal(gd_table_parse_bare(r, 1000, count_each, &n, err, sizeof err), -1);
    assert_int_equal(n, 0);   /* nothing delivered from a bad reply */
    freeReplyObject(r);
    r = resp("*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n");
    assert_int_equal(gd_table_parse_bare(r, 0, NULL, NULL, err, sizeof err), -1);
    freeReplyObject(r);

    r = resp("*1\r\n:1\r\n");
    assert_int_equal(gd_table_parse_write(r, err, sizeof err), 1);
    freeReplyObject(r);
    r = resp("*2\r\n:0\r\n$4\r\nheld\r\n");
    assert_int_equal(gd_table_parse_write(r, err, sizeof err), 0);
    freeReplyObject(r);
    r = resp("-NOPERM this user has no permissions\r\n");
    assert_int_equal(gd_table_parse_write(r, err, sizeof err), -1);
    assert_non_null(strstr(err, "NOPERM"));
    freeReplyObject(r);
    r = resp("*1\r\n:7\r\n");
    assert_int_equal(gd_table_parse_write(r, err, sizeof err), -1);
    freeReplyObject(r);

    unsigned char out[3];
    r = resp("*3\r\n:0\r\n:1\r\n:2\r\n");
    assert_int_equal(gd_table_parse_refresh(r, 3, out, err, sizeof err), 0);
    assert_int_equal(out[2], 2);
    assert_int_equal(gd_table_parse_refresh(r, 2, out, err, sizeof err), -1);
    freeReplyObject(r);
    r = resp("*2\r\n:0\r\n$1\r\n1\r\n");
    assert_int_equal(gd_table_parse_refresh(r, 2, out, err, sizeof err), -1);
    freeReplyObject(r);
}

/* params.latency: every command's reply is one observation under its op. */
static void test_latency(void **state)
{
    struct fx *f = *state;
    struct metrics *m = metrics_new("gd", "gd.0");
    struct metric *h = metrics_histogram(m, "meerkat_gd_redis_seconds", "round trips", "op", NULL, 0);
    struct gd_table_params p = params("dc-a", "t16:");
    p.latency = h;
    struct gd_table *t = table_up(f, &p);
    assert_true(metric_value(h, "write") == 0);
    assert_int_equal(open_sync(f, t, "lat@example.com/r", gd_table_version_next(t)), GD_TABLE_OK);
    assert_int_equal((int)metric_value(h, "write"), 1);
    struct lres l = lookup_sync(f, t, "nobody@example.com/x");
    assert_int_equal(l.st, GD_TABLE_NOT_FOUND);
    assert_int_equal((int)metric_value(h, "lookup"), 1);
    struct buf out;
    buf_init(&out);
    metrics_render(m, &out);
    assert_non_null(strstr(buf_cstr(&out), "meerkat_gd_redis_seconds_count{role=\"gd\",id=\"gd.0\",op=\"write\"} 1\n"));
    buf_release(&out);
    gd_table_free(&t);
    metrics_free(&m);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parsers),
        cmocka_unit_test_setup_teardown(test_bad_params, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_put_get_delete, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_versions, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_2392_race, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_ttl_expiry, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bare_two_dcs, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_cache_invalidation, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_cache_bounded, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_replica_reads, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_acl, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_dc_heartbeat, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_noscript, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_redis_restart, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_domain_claim, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_refresh_close_midpass, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_replica_restart, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tls_stunnel, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_latency, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
