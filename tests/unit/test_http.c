/* tests/unit/test_http.c - the pusher's HTTP client against a real HTTP/1.1 server on the same loop: keep-alive, bounds, timeouts, refusals, Retry-After, the pipelining probe. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <curl/curl.h>

#include "../../pusher/pusher.h"
#include "buf.h"
#include "http_srv.h"
#include "loop_until.h"
#include "util.h"

/* ---- the client side ---------------------------------------------------------------- */

struct result {
    int done;
    long status;
    bool error;
    bool timed_out;
    long retry_after_ms;
    struct buf body;
    double seconds;
};

static void on_done(void *ud, const struct http_response *r)
{
    struct result *res = ud;
    res->done++;
    res->status = r->status;
    res->error = r->error != NULL;
    res->timed_out = r->timed_out;
    res->retry_after_ms = r->retry_after_ms;
    res->seconds = r->seconds;
    buf_reset(&res->body);
    buf_append(&res->body, r->body, r->body_len);
    assert_int_equal(r->body[r->body_len], '\0');
}

static struct cfg_push_backend backend_cfg(unsigned max_connections, unsigned timeout_ms)
{
    struct cfg_push_backend b = {
        .name = "test",
        .connect_timeout_ms = 2000,
        .timeout_ms = timeout_ms,
        .max_connections = max_connections,
        .pipeline = 1,   /* today's one request per connection; the automatic mode's tests set 0 */
        .tls_verify = true,
    };
    return b;
}

static bool result_done(void *arg)
{
    return ((struct result *)arg)->done > 0;
}

struct many {
    int want;
    int done;
    int ok;
};

static bool many_done(void *arg)
{
    struct many *m = arg;
    return m->done >= m->want;
}

static void on_many(void *ud, const struct http_response *r)
{
    struct many *m = ud;
    m->done++;
    if (r->status == 200 && r->body_len == 5 && memcmp(r->body, "hello", 5) == 0)
        m->ok++;
}

static char *url_of(const struct srv *s, const char *path)
{
    return xasprintf("http://127.0.0.1:%d%s", s->port, path);
}

/* Requests one after another on an idle pool use one keep-alive connection; the
 * method, headers and body arrive as given. */
static void test_keepalive_sequential(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    struct cfg_push_backend cfg = backend_cfg(4, 5000);
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    assert_non_null(pool);
    char *url = url_of(&s, "/hook?x=1");
    const char *headers[] = { "Content-Type: application/x-www-form-urlencoded", "X-Test: yes", NULL };
    struct result res = { 0 };
    buf_init(&res.body);
    for (int i = 0; i < 50; i++) {
        char body[64];
        int n = snprintf(body, sizeof body, "n=%d&x=%%26", i);
        struct http_request req = { .url = url, .headers = headers, .body = body, .body_len = (size_t)n };
        res.done = 0;
        assert_int_equal(http_send(pool, &req, on_done, &res), 0);
        assert_int_equal(http_pool_in_flight(pool), 1);
        assert_true(run_until(loop, result_done, &res, 10));
        assert_int_equal(res.done, 1);
        assert_int_equal(res.status, 200);
        assert_false(res.error);
        assert_int_equal(res.retry_after_ms, -1);
        assert_int_equal(res.body.len, (size_t)n);
        assert_memory_equal(res.body.data, body, (size_t)n);
        assert_memory_equal(s.last_body.data, body, (size_t)n);
        assert_int_equal(http_pool_in_flight(pool), 0);
    }
    assert_int_equal(s.requests, 50);
    assert_int_equal(s.accepted, 1);
    const char *head = buf_cstr(&s.last_head);
    assert_non_null(strstr(head, "POST /hook?x=1 HTTP/1.1\r\n"));
    assert_non_null(strstr(head, "\r\nX-Test: yes\r\n"));
    assert_non_null(strstr(head, "\r\nContent-Type: application/x-www-form-urlencoded\r\n"));
    assert_null(strstr(head, "Expect:"));
    free(url);
    http_pool_free(&pool);
    assert_null(pool);
    http_pool_free(&pool);
    buf_release(&res.body);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* Many requests at once never open more than max_connections; all complete. */
static void test_max_connections(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    struct cfg_push_backend cfg = backend_cfg(2, 10000);
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    assert_non_null(pool);
    char *url = url_of(&s, "/");
    struct many m = { .want = 300 };
    struct http_request req = { .url = url, .body = "hello", .body_len = 5 };
    for (int i = 0; i < m.want; i++)
        assert_int_equal(http_send(pool, &req, on_many, &m), 0);
    assert_int_equal(http_pool_in_flight(pool), 300);
    assert_true(run_until(loop, many_done, &m, 20));
    assert_int_equal(m.ok, 300);
    assert_int_equal(s.requests, 300);
    assert_true(s.accepted >= 1 && s.accepted <= 2);
    /* A second wave reuses the same connections. */
    int before = s.accepted;
    m.want = 600;
    for (int i = 0; i < 300; i++)
        assert_int_equal(http_send(pool, &req, on_many, &m), 0);
    assert_true(run_until(loop, many_done, &m, 20));
    assert_int_equal(m.ok, 600);
    assert_int_equal(s.accepted, before);
    free(url);
    http_pool_free(&pool);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* Each request's callback checks that the response it got is its own (the echo of its
 * body): pipelined responses are matched to requests in order. */
struct own_body {
    int *done;
    int *ok;
    char body[32];
    size_t len;
};

static void on_own_body(void *ud, const struct http_response *r)
{
    struct own_body *ob = ud;
    (*ob->done)++;
    if (r->error == NULL && r->status == 200 && r->body_len == ob->len && memcmp(r->body, ob->body, ob->len) == 0)
        (*ob->ok)++;
}

struct count_goal {
    int *done;
    int want;
};

static bool count_reached(void *arg)
{
    struct count_goal *g = arg;
    return *g->done >= g->want;
}

/* pipeline: 4 on one connection: the 8 requests of one loop turn leave in one write per
 * connection and the server finds 4 complete requests in one read; every response goes
 * to its own request, on one connection. */
static void test_pipeline_one_write(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    struct cfg_push_backend cfg = backend_cfg(1, 5000);
    cfg.pipeline = 4;
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    assert_non_null(pool);
    char *url = url_of(&s, "/p");
    int done = 0, ok = 0;
    struct own_body obs[8];
    for (int i = 0; i < 8; i++) {
        obs[i] = (struct own_body){ .done = &done, .ok = &ok };
        obs[i].len = (size_t)snprintf(obs[i].body, sizeof obs[i].body, "body-%d-%s", i, i % 2 ? "odd" : "even");
        struct http_request req = { .url = url, .body = obs[i].body, .body_len = obs[i].len };
        assert_int_equal(http_send(pool, &req, on_own_body, &obs[i]), 0);
    }
    assert_int_equal(http_pool_in_flight(pool), 8);
    struct count_goal g = { &done, 8 };
    assert_true(run_until(loop, count_reached, &g, 10));
    assert_int_equal(ok, 8);
    assert_int_equal(s.requests, 8);
    assert_int_equal(s.accepted, 1);
    assert_int_equal(s.max_batch, 4);
    assert_int_equal(http_pool_in_flight(pool), 0);
    free(url);
    http_pool_free(&pool);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* A server that answers the first request of each connection with Connection: close and
 * never reads the rest: the requests pipelined behind it go again on new connections (the
 * server processed none of them, RFC 9112 §9.6), none is reported failed, each is
 * answered exactly once. */
static void test_pipeline_close_resends_the_rest(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    s.mode = SRV_ECHO_CLOSE;
    struct cfg_push_backend cfg = backend_cfg(1, 5000);
    cfg.pipeline = 4;
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    assert_non_null(pool);
    char *url = url_of(&s, "/c");
    int done = 0, ok = 0;
    struct own_body obs[4];
    for (int i = 0; i < 4; i++) {
        obs[i] = (struct own_body){ .done = &done, .ok = &ok };
        obs[i].len = (size_t)snprintf(obs[i].body, sizeof obs[i].body, "close-%d", i);
        struct http_request req = { .url = url, .body = obs[i].body, .body_len = obs[i].len };
        assert_int_equal(http_send(pool, &req, on_own_body, &obs[i]), 0);
    }
    struct count_goal g = { &done, 4 };
    assert_true(run_until(loop, count_reached, &g, 10));
    assert_int_equal(done, 4);
    assert_int_equal(ok, 4);
    assert_int_equal(s.answered, 4);
    assert_int_equal(s.accepted, 4);
    assert_int_equal(http_pool_in_flight(pool), 0);
    free(url);
    http_pool_free(&pool);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* ---- automatic pipelining (no `pipeline` in the config) ------------------------------- */

/* Sends n requests in one loop turn to pool (bodies "<tag>-<first + i>"), runs the loop
 * until all are answered or secs pass; returns how many came back as their own echo. */
static int auto_burst(struct ev_loop *loop, struct http_pool *pool, const char *url, const char *tag, int first,
                      int n, double secs)
{
    int done = 0, ok = 0;
    struct own_body obs[16];
    assert_true(n <= 16);
    for (int i = 0; i < n; i++) {
        obs[i] = (struct own_body){ .done = &done, .ok = &ok };
        obs[i].len = (size_t)snprintf(obs[i].body, sizeof obs[i].body, "%s-%d", tag, first + i);
        struct http_request req = { .url = url, .body = obs[i].body, .body_len = obs[i].len };
        assert_int_equal(http_send(pool, &req, on_own_body, &obs[i]), 0);
    }
    struct count_goal g = { &done, n };
    assert_true(run_until(loop, count_reached, &g, secs));
    return ok;
}

/* The bodies "<tag>-0\n" ... "<tag>-<n-1>\n". */
static void expect_seen(const struct srv *s, const char *tag, int n)
{
    struct buf want;
    buf_init(&want);
    for (int i = 0; i < n; i++)
        buf_printf(&want, "%s-%d\n", tag, i);
    assert_int_equal(s->seen.len, want.len);
    assert_memory_equal(s->seen.data, want.data, want.len);
    buf_release(&want);
}

/* A receiver that handles pipelining: one request alone first (the connection is kept
 * alive), then 8 in one turn: the first two go together (the probe), both answered, the
 * pool goes to 8 per connection and the next 8 leave in one write; everything arrives
 * once, in order, on one connection, nothing re-sent. */
static void test_auto_pipelines_when_answered(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    struct cfg_push_backend cfg = backend_cfg(1, 60000);
    cfg.pipeline = 0;
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    assert_non_null(pool);
    char *url = url_of(&s, "/a");
    assert_int_equal(http_pool_pipeline_depth(pool), 1);
    assert_int_equal(auto_burst(loop, pool, url, "e", 0, 1, 10), 1);
    assert_int_equal(http_pool_pipeline_depth(pool), 1);
    assert_int_equal(auto_burst(loop, pool, url, "e", 1, 8, 10), 8);
    assert_int_equal(http_pool_pipeline_depth(pool), 8);
    assert_int_equal(auto_burst(loop, pool, url, "e", 9, 8, 10), 8);
    expect_seen(&s, "e", 17);
    assert_int_equal(s.accepted, 1);
    assert_int_equal(s.max_batch, 8);
    assert_int_equal(http_pool_pipeline_resent(pool), 0);
    assert_int_equal(http_pool_in_flight(pool), 0);
    free(url);
    http_pool_free(&pool);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* A receiver that answers the first request of each read and discards the rest (keeping
 * the connection): the probe's second goes unanswered, the pool falls back to one
 * request per connection, the dropped request goes again on a new connection without
 * being reported, and nothing waits for the 60 s request timeout (the test gives 10 s). */
static void test_auto_falls_back_when_dropped(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    s.mode = SRV_ECHO_FIRST;
    struct cfg_push_backend cfg = backend_cfg(1, 60000);
    cfg.pipeline = 0;
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    assert_non_null(pool);
    char *url = url_of(&s, "/d");
    assert_int_equal(auto_burst(loop, pool, url, "e", 0, 1, 10), 1);
    assert_int_equal(auto_burst(loop, pool, url, "e", 1, 8, 10), 8);
    assert_int_equal(http_pool_pipeline_depth(pool), 1);
    assert_int_equal(http_pool_pipeline_resent(pool), 1);
    assert_int_equal(s.dropped, 1);
    /* From now on one at a time: nothing more is dropped. */
    assert_int_equal(auto_burst(loop, pool, url, "e", 9, 8, 10), 8);
    assert_int_equal(s.dropped, 1);
    expect_seen(&s, "e", 17);
    assert_int_equal(s.accepted, 2);
    assert_int_equal(http_pool_in_flight(pool), 0);
    free(url);
    http_pool_free(&pool);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* A receiver that closes after each answer (Connection: close) never keeps a connection:
 * no probe, one request per connection, everything answered once, in order. */
static void test_auto_connection_close(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    s.mode = SRV_ECHO_CLOSE;
    struct cfg_push_backend cfg = backend_cfg(1, 60000);
    cfg.pipeline = 0;
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    assert_non_null(pool);
    char *url = url_of(&s, "/c");
    assert_int_equal(auto_burst(loop, pool, url, "e", 0, 1, 10), 1);
    assert_int_equal(auto_burst(loop, pool, url, "e", 1, 8, 10), 8);
    expect_seen(&s, "e", 9);
    assert_int_equal(s.accepted, 9);
    assert_int_equal(s.max_batch, 1);
    assert_int_equal(http_pool_pipeline_depth(pool), 1);
    assert_int_equal(http_pool_pipeline_resent(pool), 0);
    free(url);
    http_pool_free(&pool);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* A server that never answers: with pipeline 3 the first request times out and the two
 * behind it fail with the connection (each reported once; the caller retries them). */
static void test_pipeline_timeout_fails_all(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    s.mode = SRV_HANG;
    struct cfg_push_backend cfg = backend_cfg(1, 200);
    cfg.pipeline = 3;
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    assert_non_null(pool);
    char *url = url_of(&s, "/t");
    struct result res[3];
    struct http_request req = { .url = url, .body = "x", .body_len = 1 };
    for (int i = 0; i < 3; i++) {
        res[i] = (struct result){ 0 };
        buf_init(&res[i].body);
        assert_int_equal(http_send(pool, &req, on_done, &res[i]), 0);
    }
    assert_true(run_until(loop, result_done, &res[2], 10));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(res[i].done, 1);
        assert_int_equal(res[i].status, 0);
        assert_true(res[i].error);
        assert_int_equal(res[i].timed_out, i == 0);
        buf_release(&res[i].body);
    }
    assert_int_equal(s.requests, 3);
    assert_int_equal(s.accepted, 1);
    assert_int_equal(http_pool_in_flight(pool), 0);
    free(url);
    http_pool_free(&pool);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* A server that never answers: the request ends at timeout_ms with timed_out set. */
static void test_timeout(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    s.mode = SRV_HANG;
    struct cfg_push_backend cfg = backend_cfg(4, 300);
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    char *url = url_of(&s, "/");
    struct result res = { 0 };
    buf_init(&res.body);
    struct http_request req = { .url = url, .body = "a", .body_len = 1 };
    int64_t t0 = mk_mono_us();
    assert_int_equal(http_send(pool, &req, on_done, &res), 0);
    assert_true(run_until(loop, result_done, &res, 10));
    int64_t took = mk_mono_us() - t0;
    assert_int_equal(res.done, 1);
    assert_int_equal(res.status, 0);
    assert_true(res.error);
    assert_true(res.timed_out);
    assert_int_equal(s.requests, 1);
    assert_true(took >= 290000);
    assert_true(res.seconds >= 0.29);
    free(url);
    http_pool_free(&pool);
    buf_release(&res.body);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

struct timed {
    int done;
    int timed_out;
    double seconds[4];
    int64_t at_us[4];
};

static void on_timed(void *ud, const struct http_response *r)
{
    struct timed *t = ud;
    if (t->done < 4) {
        t->seconds[t->done] = r->seconds;
        t->at_us[t->done] = mk_mono_us();
    }
    t->done++;
    t->timed_out += r->timed_out;
}

static bool timed_done(void *arg)
{
    return ((struct timed *)arg)->done >= 3;
}

/* Past max_connections requests wait in the pool, in order, and their timeout starts
 * when they get a connection: with one connection to a server that never answers,
 * three requests time out one after another, each after its own full timeout. */
static void test_queue_timeouts(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    s.mode = SRV_HANG;
    struct cfg_push_backend cfg = backend_cfg(1, 250);
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    char *url = url_of(&s, "/");
    struct timed t = { 0 };
    struct http_request req = { .url = url, .body = "q", .body_len = 1 };
    int64_t t0 = mk_mono_us();
    for (int i = 0; i < 3; i++)
        assert_int_equal(http_send(pool, &req, on_timed, &t), 0);
    assert_int_equal(http_pool_in_flight(pool), 3);
    assert_true(run_until(loop, timed_done, &t, 10));
    assert_int_equal(t.done, 3);
    assert_int_equal(t.timed_out, 3);
    for (int i = 0; i < 3; i++) {
        assert_true(t.seconds[i] >= 0.24);
        assert_true(t.at_us[i] - t0 >= (int64_t)(i + 1) * 240000);
    }
    assert_int_equal(http_pool_in_flight(pool), 0);
    free(url);
    http_pool_free(&pool);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* A server that closes the connection instead of answering: a transport error (no
 * status); the pool then opens a new connection and works on. */
static void test_closed_without_answer(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    struct cfg_push_backend cfg = backend_cfg(2, 5000);
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    char *url = url_of(&s, "/");
    struct result res = { 0 };
    buf_init(&res.body);
    struct http_request req = { .url = url, .body = "hello", .body_len = 5 };
    /* a kept-alive connection first, so the close hits a reused one */
    assert_int_equal(http_send(pool, &req, on_done, &res), 0);
    assert_true(run_until(loop, result_done, &res, 10));
    assert_int_equal(res.status, 200);
    s.mode = SRV_CLOSE;
    res.done = 0;
    assert_int_equal(http_send(pool, &req, on_done, &res), 0);
    assert_true(run_until(loop, result_done, &res, 10));
    assert_int_equal(res.status, 0);
    assert_true(res.error);
    assert_false(res.timed_out);
    s.mode = SRV_ECHO;
    struct many m = { .want = 20 };
    for (int i = 0; i < 20; i++)
        assert_int_equal(http_send(pool, &req, on_many, &m), 0);
    assert_true(run_until(loop, many_done, &m, 10));
    assert_int_equal(m.ok, 20);
    assert_true(s.accepted >= 2 && s.accepted <= 4);
    free(url);
    http_pool_free(&pool);
    buf_release(&res.body);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* Nobody listens on the port: an error, not a timeout, and no status. */
static void test_refused(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    char *url = url_of(&s, "/");
    srv_stop(&s);   /* the port is now closed */
    struct cfg_push_backend cfg = backend_cfg(4, 5000);
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    struct result res = { 0 };
    buf_init(&res.body);
    struct http_request req = { .url = url, .body = "a", .body_len = 1 };
    assert_int_equal(http_send(pool, &req, on_done, &res), 0);
    assert_true(run_until(loop, result_done, &res, 10));
    assert_int_equal(res.status, 0);
    assert_true(res.error);
    assert_false(res.timed_out);
    assert_int_equal(res.body.len, 0);
    free(url);
    http_pool_free(&pool);
    buf_release(&res.body);
    ev_loop_destroy(loop);
}

static void status_with(struct ev_loop *loop, struct http_pool *pool, struct srv *s, int status,
                        const char *headers, struct result *res)
{
    s->mode = SRV_STATUS;
    s->status = status;
    s->extra_headers = headers;
    char *url = url_of(s, "/");
    struct http_request req = { .url = url, .body = "a", .body_len = 1 };
    res->done = 0;
    assert_int_equal(http_send(pool, &req, on_done, res), 0);
    assert_true(run_until(loop, result_done, res, 10));
    assert_int_equal(res->status, status);
    assert_false(res->error);
    free(url);
}

/* Retry-After reaches the caller as milliseconds, in both forms; statuses pass through. */
static void test_retry_after_header(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    struct cfg_push_backend cfg = backend_cfg(4, 5000);
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    struct result res = { 0 };
    buf_init(&res.body);

    status_with(loop, pool, &s, 429, "Retry-After: 7\r\n", &res);
    assert_int_equal(res.retry_after_ms, 7000);
    status_with(loop, pool, &s, 503, "", &res);
    assert_int_equal(res.retry_after_ms, -1);
    /* An HTTP date two minutes ahead. */
    char hdr[128];
    time_t t = time(NULL) + 120;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(hdr, sizeof hdr, "Retry-After: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    status_with(loop, pool, &s, 503, hdr, &res);
    assert_true(res.retry_after_ms >= 115000 && res.retry_after_ms <= 120000);
    status_with(loop, pool, &s, 429, "Retry-After: soon\r\n", &res);
    assert_int_equal(res.retry_after_ms, -1);
    status_with(loop, pool, &s, 404, "", &res);
    assert_int_equal(s.accepted, 1);

    http_pool_free(&pool);
    buf_release(&res.body);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* A large response body is cut at 64 KiB and the connection stays usable. */
static void test_body_bounded(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    s.mode = SRV_BIG;
    s.big_len = 300 * 1024;
    struct cfg_push_backend cfg = backend_cfg(4, 5000);
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    char *url = url_of(&s, "/");
    struct result res = { 0 };
    buf_init(&res.body);
    struct http_request req = { .url = url, .method = "GET" };
    assert_int_equal(http_send(pool, &req, on_done, &res), 0);
    assert_true(run_until(loop, result_done, &res, 10));
    assert_int_equal(res.status, 200);
    assert_int_equal(res.body.len, 64 * 1024);
    assert_non_null(strstr(buf_cstr(&s.last_head), "GET / HTTP/1.1\r\n"));
    s.mode = SRV_ECHO;
    struct http_request req2 = { .url = url, .method = "PUT", .body = "put!", .body_len = 4 };
    res.done = 0;
    assert_int_equal(http_send(pool, &req2, on_done, &res), 0);
    assert_true(run_until(loop, result_done, &res, 10));
    assert_int_equal(res.status, 200);
    assert_int_equal(res.body.len, 4);
    assert_non_null(strstr(buf_cstr(&s.last_head), "PUT / HTTP/1.1\r\n"));
    assert_int_equal(s.accepted, 1);
    free(url);
    http_pool_free(&pool);
    buf_release(&res.body);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* Freeing a pool with requests in flight calls nothing back and leaks nothing (ASan). */
static void test_free_in_flight(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    s.mode = SRV_HANG;
    struct cfg_push_backend cfg = backend_cfg(4, 5000);
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    char *url = url_of(&s, "/");
    struct result res = { 0 };
    buf_init(&res.body);
    struct http_request req = { .url = url, .body = "a", .body_len = 1 };
    for (int i = 0; i < 5; i++)
        assert_int_equal(http_send(pool, &req, on_done, &res), 0);
    /* Until the server holds them (4 connections; the fifth waits for one). */
    for (int i = 0; i < 1000 && s.requests < 4; i++)
        ev_run(loop, EVRUN_ONCE);
    assert_true(s.requests >= 4);
    http_pool_free(&pool);
    ev_run(loop, EVRUN_NOWAIT);
    assert_int_equal(res.done, 0);
    free(url);
    buf_release(&res.body);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* The server ends connections two ways: "Connection: close" on a response (the next
 * request opens a new connection), and closing an idle kept-alive connection between
 * requests (seen while idle: the next request succeeds on a new connection, no error).
 * The request head carries Host, User-Agent and Content-Length exactly. */
static void test_server_closes(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv s;
    srv_start(&s, loop);
    struct cfg_push_backend cfg = backend_cfg(1, 5000);
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    char *url = url_of(&s, "/h#frag");
    struct result res = { 0 };
    buf_init(&res.body);
    struct http_request req = { .url = url, .body = "hello", .body_len = 5 };
    s.mode = SRV_STATUS;
    s.status = 200;
    s.extra_headers = "Connection: close\r\n";
    assert_int_equal(http_send(pool, &req, on_done, &res), 0);
    assert_true(run_until(loop, result_done, &res, 10));
    assert_int_equal(res.status, 200);
    char want[128];
    snprintf(want, sizeof want, "POST /h HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: meerkat-pusher\r\n", s.port);
    assert_memory_equal(s.last_head.data, want, strlen(want));
    assert_non_null(strstr(buf_cstr(&s.last_head), "\r\nContent-Length: 5\r\n\r\n"));
    s.extra_headers = NULL;
    res.done = 0;
    assert_int_equal(http_send(pool, &req, on_done, &res), 0);
    assert_true(run_until(loop, result_done, &res, 10));
    assert_int_equal(res.status, 200);
    assert_int_equal(s.accepted, 2);
    /* the server drops its idle connection; the client notices before its next request */
    for (struct srv_conn *c = s.conns; c != NULL; c = c->next)
        if (c->io.fd != -1)
            srv_close_conn(c);
    for (int i = 0; i < 20; i++)
        ev_run(loop, EVRUN_NOWAIT);
    res.done = 0;
    assert_int_equal(http_send(pool, &req, on_done, &res), 0);
    assert_true(run_until(loop, result_done, &res, 10));
    assert_int_equal(res.status, 200);
    assert_false(res.error);
    assert_int_equal(s.accepted, 3);
    assert_int_equal(s.requests, 3);
    free(url);
    http_pool_free(&pool);
    buf_release(&res.body);
    srv_stop(&s);
    ev_loop_destroy(loop);
}

/* One pool given URLs that change between requests (another server, another path,
 * one in a reused buffer rewritten in place): each request goes where its own URL says,
 * with its target and Host, and its exact Content-Length (the pool keeps the last URL it
 * parsed: the cache must follow the text, not the pointer). */
static void test_url_changes(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct srv a, b;
    srv_start(&a, loop);
    srv_start(&b, loop);
    struct cfg_push_backend cfg = backend_cfg(2, 5000);
    char err[200];
    struct http_pool *pool = http_pool_new(loop, &cfg, "test", err, sizeof err);
    assert_non_null(pool);
    char url[96];
    static char body[1234];
    memset(body, 'b', sizeof body);
    struct result res = { 0 };
    buf_init(&res.body);
    for (int i = 0; i < 6; i++) {
        struct srv *to = i % 2 == 0 ? &a : &b;
        snprintf(url, sizeof url, "http://127.0.0.1:%d/p%d", to->port, i);
        size_t len = i == 4 ? 0 : i == 5 ? sizeof body : (size_t)(i + 1);
        struct http_request req = { .url = url, .body = body, .body_len = len };
        int before = to->requests;
        res.done = 0;
        assert_int_equal(http_send(pool, &req, on_done, &res), 0);
        assert_true(run_until(loop, result_done, &res, 10));
        assert_int_equal(res.status, 200);
        assert_int_equal(to->requests, before + 1);
        char want[160];
        snprintf(want, sizeof want, "POST /p%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n", i, to->port);
        assert_memory_equal(to->last_head.data, want, strlen(want));
        snprintf(want, sizeof want, "\r\nContent-Length: %zu\r\n\r\n", len);
        assert_non_null(strstr(buf_cstr(&to->last_head), want));
        assert_int_equal(to->last_body.len, len);
    }
    assert_int_equal(a.requests, 3);
    assert_int_equal(b.requests, 3);
    http_pool_free(&pool);
    buf_release(&res.body);
    srv_stop(&a);
    srv_stop(&b);
    ev_loop_destroy(loop);
}

/* Bad configuration and bad requests are refused up front. */
static void test_refusals(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct cfg_push_backend cfg = backend_cfg(4, 5000);
    cfg.ca_file = "/nonexistent/ca.pem";
    char err[200] = "";
    assert_null(http_pool_new(loop, &cfg, "hook", err, sizeof err));
    assert_non_null(strstr(err, "hook: ca_file /nonexistent/ca.pem"));
    cfg.ca_file = NULL;
    struct http_pool *pool = http_pool_new(loop, &cfg, "hook", err, sizeof err);
    struct result res = { 0 };
    struct http_request req = { .url = NULL };
    assert_int_equal(http_send(pool, &req, on_done, &res), -1);
    /* A scheme other than http(s) fails as a transport error, through the callback. */
    buf_init(&res.body);
    struct http_request file = { .url = "file:///etc/passwd", .method = "GET" };
    assert_int_equal(http_send(pool, &file, on_done, &res), 0);
    assert_true(run_until(loop, result_done, &res, 10));
    assert_true(res.error);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.body.len, 0);
    http_pool_free(&pool);
    buf_release(&res.body);
    ev_loop_destroy(loop);
}

/* ---- Retry-After, the pure parser ---------------------------------------------------- */

static long ra(const char *s, int64_t now)
{
    return http_retry_after_ms(s, strlen(s), now);
}

static void test_retry_after_parse(void **state)
{
    (void)state;
    const int64_t t = 784111777;   /* Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example) */
    assert_int_equal(ra("120", 0), 120000);
    assert_int_equal(ra("0", 0), 0);
    assert_int_equal(ra(" 5\t", 0), 5000);
    assert_int_equal(ra("99999999999999999999999", 0), 2147483647L);
    assert_int_equal(ra("Sun, 06 Nov 1994 08:49:37 GMT", t - 10), 10000);
    assert_int_equal(ra("Sunday, 06-Nov-94 08:49:37 GMT", t - 10), 10000);
    assert_int_equal(ra("Sun Nov  6 08:49:37 1994", t - 10), 10000);
    assert_int_equal(ra("Sun, 06 Nov 1994 08:49:37 GMT", t + 10), 0);
    assert_int_equal(ra("Thu, 01 Jan 1970 00:00:00 GMT", -3), 3000);
    assert_int_equal(ra("Tue, 29 Feb 2028 23:59:59 GMT", 1835481599 - 1), 1000);
    /* rfc850's two-digit year: within 50 years ahead, else the previous century. */
    assert_int_equal(ra("Monday, 01-Jan-52 00:00:00 GMT", 1735689600 /* 2025 */), 2147483647L);
    assert_int_equal(ra("Sunday, 01-Jan-96 00:00:00 GMT", 1735689600), 0);
    assert_int_equal(ra("", 0), -1);
    assert_int_equal(ra("   ", 0), -1);
    assert_int_equal(ra("1.5", 0), -1);
    assert_int_equal(ra("-1", 0), -1);
    assert_int_equal(ra("12a", 0), -1);
    assert_int_equal(ra("Sun, 30 Feb 1994 08:49:37 GMT", 0), -1);
    assert_int_equal(ra("Sun, 06 Nov 1994 24:00:00 GMT", 0), -1);
    assert_int_equal(ra("Sun, 06 Nov 1994 08:49:37 UTC", 0), -1);
    assert_int_equal(ra("Sun, 06 Nov 1994 08:49:37 GMTx", 0), -1);
    assert_int_equal(ra("Sun, 6 Nov 1994 08:49:37 GMT", 0), -1);
    assert_int_equal(ra("Xyz, 06 Nov 1994 08:49:37 GMT", 0), -1);
    assert_int_equal(ra("Sun Nov 6 08:49:37 1994", 0), -1);
    /* Not NUL-terminated: only len bytes count. */
    assert_int_equal(http_retry_after_ms("3000", 1, 0), 3000);
    assert_int_equal(http_retry_after_ms(NULL, 0, 0), -1);
}

int main(void)
{
    assert_int_equal(http_global_init(), 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_after_parse),
        cmocka_unit_test(test_keepalive_sequential),
        cmocka_unit_test(test_max_connections),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_queue_timeouts),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_closed_without_answer),
        cmocka_unit_test(test_retry_after_header),
        cmocka_unit_test(test_body_bounded),
        cmocka_unit_test(test_free_in_flight),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_server_closes),
        cmocka_unit_test(test_url_changes),
        cmocka_unit_test(test_pipeline_one_write),
        cmocka_unit_test(test_pipeline_close_resends_the_rest),
        cmocka_unit_test(test_pipeline_timeout_fails_all),
        cmocka_unit_test(test_auto_pipelines_when_answered),
        cmocka_unit_test(test_auto_falls_back_when_dropped),
        cmocka_unit_test(test_auto_connection_close),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
