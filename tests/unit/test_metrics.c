/* tests/unit/test_metrics.c - the metrics registry, its text format and its HTTP server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "buf.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

/* ---------------------------------------------------------------------------
 * Registry and rendering */

static const char *render(struct metrics *m, struct buf *out)
{
    buf_reset(out);
    metrics_render(m, out);
    return buf_cstr(out);
}

static void test_values(void **state)
{
    struct metrics *m = metrics_new("c2s", "c2s.1");
    struct metric *c = metrics_counter(m, "meerkat_test_stanzas_total", "Stanzas.", "kind");
    struct metric *g = metrics_gauge(m, "meerkat_test_sessions", "Sessions.", NULL);
    struct metric *h = metrics_histogram(m, "meerkat_test_route_seconds", "Latency.", "kind", NULL, 0);

    metric_inc(c, "message");
    metric_inc(c, "message");
    metric_add(c, "iq", 2.5);
    metric_add(c, "iq", -1);          /* counters never go down */
    metric_add(c, "iq", NAN);
    assert_true(metric_value(c, "message") == 2);
    assert_true(metric_value(c, "iq") == 2.5);
    assert_true(metric_value(c, "presence") == 0);
    metric_set(c, "presence", 40);    /* mirrored from a count kept elsewhere */
    assert_true(metric_value(c, "presence") == 40);

    assert_true(metric_value(g, NULL) == 0);
    metric_set(g, NULL, 10);
    metric_inc(g, NULL);
    metric_add(g, NULL, -4);
    assert_true(metric_value(g, NULL) == 7);

    metric_observe(h, "message", 0.001);
    metric_observe(h, "message", 20);
    metric_observe(h, "message", NAN);   /* dropped */
    assert_true(metric_value(h, "message") == 2);
    assert_true(metric_value(h, "iq") == 0);

    /* A labelled family given no value counts under "other". */
    metric_inc(c, NULL);
    assert_true(metric_value(c, "other") == 1);
    assert_true(metric_value(c, NULL) == 1);
    metrics_free(&m);
    assert_null(m);
    metrics_free(&m);
    metrics_free(NULL);
}

static const char expected_small[] =
    "# HELP meerkat_test_stanzas_total Stanzas handled.\n"
    "# TYPE meerkat_test_stanzas_total counter\n"
    "meerkat_test_stanzas_total{role=\"c2s\",id=\"c2s.1\",kind=\"message\"} 2\n"
    "meerkat_test_stanzas_total{role=\"c2s\",id=\"c2s.1\",kind=\"presence\"} 0.5\n"
    "# HELP meerkat_test_sessions Open sessions.\n"
    "# TYPE meerkat_test_sessions gauge\n"
    "meerkat_test_sessions{role=\"c2s\",id=\"c2s.1\"} 5\n"
    "# HELP meerkat_test_route_seconds Routing latency.\n"
    "# TYPE meerkat_test_route_seconds histogram\n"
    "meerkat_test_route_seconds_bucket{role=\"c2s\",id=\"c2s.1\",le=\"0.001\"} 0\n"
    "meerkat_test_route_seconds_bucket{role=\"c2s\",id=\"c2s.1\",le=\"0.5\"} 2\n"
    "meerkat_test_route_seconds_bucket{role=\"c2s\",id=\"c2s.1\",le=\"1\"} 2\n"
    "meerkat_test_route_seconds_bucket{role=\"c2s\",id=\"c2s.1\",le=\"+Inf\"} 3\n"
    "meerkat_test_route_seconds_sum{role=\"c2s\",id=\"c2s.1\"} 3.75\n"
    "meerkat_test_route_seconds_count{role=\"c2s\",id=\"c2s.1\"} 3\n"
    "# HELP meerkat_test_empty_total Never touched.\n"
    "# TYPE meerkat_test_empty_total counter\n"
    "# HELP meerkat_process_start_time_seconds ";

static struct metrics *small_registry(void)
{
    struct metrics *m = metrics_new("c2s", "c2s.1");
    struct metric *c = metrics_counter(m, "meerkat_test_stanzas_total", "Stanzas handled.", "kind");
    struct metric *g = metrics_gauge(m, "meerkat_test_sessions", "Open sessions.", NULL);
    static const double bounds[] = {0.001, 0.5, 1, INFINITY};
    struct metric *h = metrics_histogram(m, "meerkat_test_route_seconds", "Routing latency.", NULL, bounds, 4);
    metrics_counter(m, "meerkat_test_empty_total", "Never touched.", "kind");
    metric_inc(c, "message");
    metric_inc(c, "message");
    metric_add(c, "presence", 0.5);
    metric_set(g, NULL, 7);
    metric_add(g, NULL, -2);
    metric_observe(h, NULL, 0.25);
    metric_observe(h, NULL, 0.5);   /* le is inclusive */
    metric_observe(h, NULL, 3);
    return m;
}

static void test_render_exact(void **state)
{
    struct metrics *m = small_registry();
    struct buf out;
    buf_init(&out);
    const char *text = render(m, &out);
    assert_true(out.len > strlen(expected_small));
    assert_memory_equal(text, expected_small, strlen(expected_small));
    /* The process metrics every process gets. */
    assert_non_null(strstr(text, "# TYPE meerkat_process_start_time_seconds gauge\n"
                                 "meerkat_process_start_time_seconds{role=\"c2s\",id=\"c2s.1\"} "));
    assert_non_null(strstr(text, "# TYPE meerkat_process_resident_memory_bytes gauge\n"
                                 "meerkat_process_resident_memory_bytes{role=\"c2s\",id=\"c2s.1\"} "));
    assert_non_null(strstr(text, "# TYPE meerkat_process_cpu_seconds_total counter\n"
                                 "meerkat_process_cpu_seconds_total{role=\"c2s\",id=\"c2s.1\"} "));
    assert_non_null(strstr(text, "# TYPE meerkat_process_open_fds gauge\n"
                                 "meerkat_process_open_fds{role=\"c2s\",id=\"c2s.1\"} "));
    {
        struct rlimit rl;
        assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
        char want[160];
        snprintf(want, sizeof want, "# TYPE meerkat_process_max_fds gauge\nmeerkat_process_max_fds{role=\"c2s\",id=\"c2s.1\"} %llu\n",
                 (unsigned long long)rl.rlim_cur);
        assert_non_null(strstr(text, want));
    }
    /* Plausible values: started within the last day, some memory, at least stdio open. */
    const char *p = strstr(text, "meerkat_process_start_time_seconds{role=\"c2s\",id=\"c2s.1\"} ");
    double start = strtod(strchr(p, '}') + 2, NULL);
    double now = (double)time(NULL);
    assert_true(start > now - 86400 && start <= now + 1);
    p = strstr(text, "meerkat_process_resident_memory_bytes{");
    assert_true(strtod(strchr(p, '}') + 2, NULL) > 100000);
    p = strstr(text, "meerkat_process_open_fds{");
    assert_true(strtod(strchr(p, '}') + 2, NULL) >= 3);
    assert_true(text[out.len - 1] == '\n');
    buf_release(&out);
    metrics_free(&m);
}

static void test_label_overflow(void **state)
{
    struct metrics *m = metrics_new("router", "router.1");
    struct metric *c = metrics_counter(m, "meerkat_test_kinds_total", "Kinds.", "kind");
    struct metric *h = metrics_histogram(m, "meerkat_test_kinds_seconds", "Kinds.", "kind", NULL, 0);
    char lv[32];
    for (int i = 0; i < 40; i++) {
        snprintf(lv, sizeof lv, "k%d", i);
        metric_inc(c, lv);
        metric_inc(c, lv);
        metric_observe(h, lv, 0.01);
    }
    assert_true(metric_value(c, "k0") == 2);
    assert_true(metric_value(c, "k31") == 2);
    assert_true(metric_value(c, "k32") == 0);    /* never got its own series */
    assert_true(metric_value(c, "other") == 16);
    assert_true(metric_value(h, "other") == 8);
    /* Known values still count under their own name once the family is full. */
    metric_inc(c, "k5");
    assert_true(metric_value(c, "k5") == 3);

    struct buf out;
    buf_init(&out);
    const char *text = render(m, &out);
    assert_non_null(strstr(text, "meerkat_test_kinds_total{role=\"router\",id=\"router.1\",kind=\"other\"} 16\n"));
    assert_null(strstr(text, "kind=\"k32\""));
    int lines = 0;
    for (const char *p = text; (p = strstr(p, "\nmeerkat_test_kinds_total{")) != NULL; p++)
        lines++;
    assert_int_equal(lines, 33);
    buf_release(&out);
    metrics_free(&m);
}

static void test_escaping(void **state)
{
    struct metrics *m = metrics_new("c2s", "c2s.\"1\"");
    struct metric *g = metrics_gauge(m, "meerkat_test_escape", "Line one\nback\\slash \"quoted\".", "kind");
    metric_set(g, "a\"b\\c\nd", 1);
    struct buf out;
    buf_init(&out);
    const char *text = render(m, &out);
    assert_non_null(strstr(text, "# HELP meerkat_test_escape Line one\\nback\\\\slash \"quoted\".\n"));
    assert_non_null(strstr(text, "meerkat_test_escape{role=\"c2s\",id=\"c2s.\\\"1\\\"\",kind=\"a\\\"b\\\\c\\nd\"} 1\n"));
    /* Invalid UTF-8 is repaired (Prometheus would reject the scrape); valid UTF-8 is kept. */
    metric_set(g, "bad\xff\xc3(", 2);
    metric_add(g, "bad\xff\xc3(", 1);
    metric_set(g, "caf\xc3\xa9", 4);
    assert_true(metric_value(g, "bad\xff\xc3(") == 3);
    assert_true(metric_value(g, "bad?\?(") == 3);
    text = render(m, &out);
    assert_non_null(strstr(text, ",kind=\"bad?\?(\"} 3\n"));
    assert_non_null(strstr(text, ",kind=\"caf\xc3\xa9\"} 4\n"));
    buf_release(&out);
    metrics_free(&m);
}

static void test_number_format(void **state)
{
    static const struct {
        const char *lv;
        double v;
        const char *text;
    } cases[] = {
        {"zero", 0.0, "0"},
        {"negzero", -0.0, "0"},
        {"int", -3, "-3"},
        {"big", 123456789012.0, "123456789012"},
        {"huge", 1e20, "1e+20"},
        {"tenth", 0.1, "0.1"},
        {"tiny", 1e-05, "1e-05"},
        {"third", 1.0 / 3.0, "0.3333333333333333"},
        {"sum", 0.1 + 0.2, "0.30000000000000004"},
        {"nan", NAN, "NaN"},
        {"inf", INFINITY, "+Inf"},
        {"ninf", -INFINITY, "-Inf"},
    };
    struct metrics *m = metrics_new("gd", "gd.1");
    struct metric *g = metrics_gauge(m, "meerkat_test_numbers", "Numbers.", "case");
    for (size_t i = 0; i < MK_ARRAY_LEN(cases); i++)
        metric_set(g, cases[i].lv, cases[i].v);
    struct buf out;
    buf_init(&out);
    const char *text = render(m, &out);
    for (size_t i = 0; i < MK_ARRAY_LEN(cases); i++) {
        char *line = xasprintf("meerkat_test_numbers{role=\"gd\",id=\"gd.1\",case=\"%s\"} %s\n",
                               cases[i].lv, cases[i].text);
        if (strstr(text, line) == NULL)
            fail_msg("missing line: %s", line);
        free(line);
    }
    buf_release(&out);
    metrics_free(&m);
}

/* A registry that touches every rendering path, for promtool. */
static struct metrics *full_registry(void)
{
    struct metrics *m = small_registry();
    struct metric *g = metrics_gauge(m, "meerkat_test_escape", "Help with \\ and\nnewline.", "kind");
    metric_set(g, "q\"uote\\back\nline", 1);
    metric_set(g, "nan", NAN);
    metric_set(g, "inf", INFINITY);
    metric_set(g, "small", 1e-9);
    metric_set(g, "bad\xfe\xed\xa0\x80", 1);
    metric_set(g, "utf8 \xe2\x82\xac", 1);
    struct metric *h = metrics_histogram(m, "meerkat_test_batch_bytes", "Batch sizes.", "table", NULL, 0);
    for (int i = 0; i < 100; i++)
        metric_observe(h, i % 2 ? "message" : "receipt", i * 0.013);
    struct metric *c = metrics_counter(m, "meerkat_test_kinds_total", "Kinds.", "kind");
    char lv[32];
    for (int i = 0; i < 40; i++) {
        snprintf(lv, sizeof lv, "k%d", i);
        metric_inc(c, lv);
    }
    return m;
}

static void test_promtool(void **state)
{
    /* promtool comes with Debian's prometheus (deploy/install-deps.sh): its absence fails. */
    assert_int_equal(access("/usr/bin/promtool", X_OK), 0);
    struct metrics *m = full_registry();
    struct buf out;
    buf_init(&out);
    render(m, &out);
    char path[] = "/tmp/test_metrics.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd != -1);
    assert_true(write(fd, out.data, out.len) == (ssize_t)out.len);
    close(fd);
    char *cmd = xasprintf("/usr/bin/promtool check metrics < %s", path);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "promtool rejected:\n%s", buf_cstr(&out));
    assert_int_equal(rc, 0);
    free(cmd);
    unlink(path);
    buf_release(&out);
    metrics_free(&m);
}

/* Misuse is a programming error: the process aborts. Each case runs in a child. */
static void misuse_case(int which)
{
    struct metrics *m = metrics_new("c2s", "c2s.1");
    struct metric *c = metrics_counter(m, "meerkat_ok_total", "Ok.", NULL);
    static const double descending[] = {1, 0.5};
    switch (which) {
    case 0: metrics_counter(m, "meerkat_no_suffix", "Bad.", NULL); break;
    case 1: metrics_gauge(m, "meerkat_gauge_total", "Bad.", NULL); break;
    case 2: metrics_counter(m, "meerkat_ok_total", "Twice.", NULL); break;
    case 3: metrics_counter(m, "other_prefix_total", "Bad.", NULL); break;
    case 4: metrics_histogram(m, "meerkat_latency_milliseconds", "Bad.", NULL, NULL, 0); break;
    case 5: metrics_gauge(m, "meerkat_x", "Bad.", "le"); break;
    case 6: metrics_gauge(m, "meerkat_x", "Bad.", "role"); break;
    case 7: metric_observe(c, NULL, 1); break;
    case 8: metrics_histogram(m, "meerkat_y_seconds", "Bad.", NULL, descending, 2); break;
    case 9: metrics_gauge(m, "meerkat_process_open_fds", "Reserved.", NULL); break;
    case 10: metrics_gauge(m, "meerkat-dash", "Bad.", NULL); break;
    case 11: metrics_histogram(m, "meerkat_z_count", "Bad.", NULL, NULL, 0); break;
    case 12: metrics_gauge(m, "meerkat_x", "Bad.", "a,b,c"); break;
    case 13: metrics_gauge(m, "meerkat_x", "Bad.", "a,id"); break;
    case 14: metrics_gauge(m, "meerkat_x", "Bad.", "a,a"); break;
    default: break;   /* control: no misuse */
    }
}

/* A family with two labels ("backend,result"): each value pair is one series, rendered
 * as two labels; the histogram's le comes after both. */
static void test_two_labels(void **state)
{
    struct metrics *m = metrics_new("pusher", "pusher.0");
    struct metric *c = metrics_counter(m, "meerkat_t_events_total", "Events", "backend,result");
    struct metric *h = metrics_histogram(m, "meerkat_t_seconds", "Latency", "backend,result", NULL, 0);
    metric_inc(c, "hook,ok");
    metric_inc(c, "hook,ok");
    metric_inc(c, "hook,failed");
    metric_inc(c, "noresult");
    metric_observe(h, "b,x", 0.5);
    assert_true(metric_value(c, "hook,ok") == 2.0);
    assert_true(metric_value(c, "hook,failed") == 1.0);
    struct buf out;
    buf_init(&out);
    const char *text = render(m, &out);
    assert_non_null(strstr(text, "meerkat_t_events_total{role=\"pusher\",id=\"pusher.0\",backend=\"hook\",result=\"ok\"} 2\n"));
    assert_non_null(strstr(text, "meerkat_t_events_total{role=\"pusher\",id=\"pusher.0\",backend=\"hook\",result=\"failed\"} 1\n"));
    assert_non_null(strstr(text, "meerkat_t_events_total{role=\"pusher\",id=\"pusher.0\",backend=\"noresult\",result=\"\"} 1\n"));
    assert_non_null(strstr(text, "meerkat_t_seconds_bucket{role=\"pusher\",id=\"pusher.0\",backend=\"b\",result=\"x\",le=\"+Inf\"} 1\n"));
    buf_release(&out);
    metrics_free(&m);
}

static void test_misuse_aborts(void **state)
{
    for (int which = 0; which <= 15; which++) {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        assert_true(pid != -1);
        if (pid == 0) {
            int devnull = open("/dev/null", O_WRONLY);
            dup2(devnull, 2);
            misuse_case(which);
            _exit(0);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (which == 15) {
            assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        } else if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT)) {
            fail_msg("misuse case %d did not abort (status %d)", which, status);
        }
    }
}

/* ---------------------------------------------------------------------------
 * HTTP server: the server runs on this process's loop while a forked child
 * makes blocking requests; the child's exit status says whether its checks held. */

struct server {
    struct ev_loop *loop;
    struct metrics *m;
    struct metric  *scrapes;
    bool            ready;
    int             port;
};

static bool server_ready(void *ud, char *why, size_t whylen)
{
    struct server *s = ud;
    if (!s->ready)
        snprintf(why, whylen, "bus not joined");
    return s->ready;
}

static void server_collect(void *ud)
{
    struct server *s = ud;
    metric_inc(s->scrapes, NULL);
}

static void server_start(struct server *s)
{
    memset(s, 0, sizeof *s);
    s->loop = ev_default_loop(0);
    s->m = metrics_new("c2s", "c2s.1");
    s->scrapes = metrics_counter(s->m, "meerkat_test_scrapes_total", "Scrapes seen by collect().", NULL);
    char err[256] = "";
    assert_int_equal(metrics_port(s->m), -1);
    int rc = metrics_listen(s->m, s->loop, "127.0.0.1", 0, server_ready, server_collect, s, err, sizeof err);
    if (rc != 0)
        fail_msg("metrics_listen: %s", err);
    s->port = metrics_port(s->m);
    assert_true(s->port > 0);
    assert_int_equal(metrics_listen(s->m, s->loop, "127.0.0.1", 0, NULL, NULL, NULL, err, sizeof err), -1);
}

static void server_stop(struct server *s)
{
    metrics_free(&s->m);
    /* Nothing of the server may be left on the loop. */
    ev_run(s->loop, EVRUN_NOWAIT);
}

static int child_exit;

static void child_cb(struct ev_loop *loop, ev_child *w, int revents)
{
    ev_child_stop(loop, w);
    child_exit = WIFEXITED(w->rstatus) ? WEXITSTATUS(w->rstatus) : 128 + WTERMSIG(w->rstatus);
    ev_break(loop, EVBREAK_ALL);
}

static void guard_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    kill((pid_t)(intptr_t)w->data, SIGKILL);
}

/* Forks scenario(port) into a child and runs the loop until it exits; returns its status. */
static int run_client(struct server *s, int (*scenario)(int port))
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid != -1);
    if (pid == 0)
        _exit(scenario(s->port));
    ev_child cw;
    ev_child_init(&cw, child_cb, pid, 0);
    ev_child_start(s->loop, &cw);
    ev_timer guard;
    ev_timer_init(&guard, guard_cb, 30., 0.);
    guard.data = (void *)(intptr_t)pid;
    ev_timer_start(s->loop, &guard);
    child_exit = -1;
    ev_run(s->loop, 0);
    ev_timer_stop(s->loop, &guard);
    ev_child_stop(s->loop, &cw);
    return child_exit;
}

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "child: check failed at line %d: %s\n", __LINE__, #cond);     \
            return 1;                                                                     \
        }                                                                                 \
    } while (0)

static int client_connect(int port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd == -1)
        return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) == -1) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k == -1 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads until EOF; -1 on error or timeout. */
static int read_all(int fd, struct buf *out)
{
    char chunk[8192];
    for (;;) {
        ssize_t k = recv(fd, chunk, sizeof chunk, 0);
        if (k == -1 && errno == EINTR)
            continue;
        if (k == -1)
            return -1;
        if (k == 0)
            return 0;
        buf_append(out, chunk, (size_t)k);
    }
}

/* One request on its own connection; the whole response (head and body) goes to out. */
static int http(int port, const char *req, size_t reqlen, struct buf *out)
{
    buf_reset(out);
    int fd = client_connect(port, 0);
    if (fd == -1)
        return -1;
    int rc = send_all(fd, req, reqlen) == 0 ? read_all(fd, out) : -1;
    close(fd);
    buf_cstr(out);
    return rc;
}

static int http_str(int port, const char *req, struct buf *out)
{
    return http(port, req, strlen(req), out);
}

static bool status_is(struct buf *r, int status)
{
    char prefix[32];
    snprintf(prefix, sizeof prefix, "HTTP/1.1 %d ", status);
    return r->len >= strlen(prefix) && memcmp(r->data, prefix, strlen(prefix)) == 0;
}

static const char *body_of(struct buf *r)
{
    const char *p = strstr(buf_cstr(r), "\r\n\r\n");
    return p != NULL ? p + 4 : "";
}

/* Content-Length agrees with the bytes after the head. */
static bool length_ok(struct buf *r)
{
    const char *cl = strstr(buf_cstr(r), "\r\nContent-Length: ");
    const char *body = strstr(r->data, "\r\n\r\n");
    if (cl == NULL || body == NULL)
        return false;
    size_t n = strtoul(cl + 18, NULL, 10);
    return n == r->len - (size_t)(body + 4 - r->data);
}

static int scenario_routes(int port)
{
    struct buf r;
    buf_init(&r);
    CHECK(http_str(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 200));
    CHECK(strstr(r.data, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n") != NULL);
    CHECK(strstr(r.data, "\r\nConnection: close\r\n") != NULL);
    CHECK(length_ok(&r));
    /* collect() ran before rendering. */
    CHECK(strstr(body_of(&r), "meerkat_test_scrapes_total{role=\"c2s\",id=\"c2s.1\"} 1\n") != NULL);
    CHECK(strstr(body_of(&r), "\nmeerkat_process_open_fds{role=\"c2s\",id=\"c2s.1\"} ") != NULL);

    CHECK(http_str(port, "GET /metrics?name[]=x HTTP/1.0\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 200));
    CHECK(strstr(body_of(&r), "meerkat_test_scrapes_total{role=\"c2s\",id=\"c2s.1\"} 2\n") != NULL);

    CHECK(http_str(port, "HEAD /metrics HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 200));
    CHECK(body_of(&r)[0] == '\0');
    CHECK(strstr(r.data, "\r\nContent-Length: 0\r\n") == NULL);

    CHECK(http_str(port, "GET /healthz HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 200));
    CHECK(strcmp(body_of(&r), "ok\n") == 0);
    CHECK(length_ok(&r));
    CHECK(http_str(port, "HEAD /healthz HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 200));
    CHECK(strstr(r.data, "\r\nContent-Length: 3\r\n") != NULL);
    CHECK(body_of(&r)[0] == '\0');
    /* Bare LF line ends, as typed into netcat. */
    CHECK(http_str(port, "GET /healthz HTTP/1.0\n\n", &r) == 0);
    CHECK(status_is(&r, 200));

    CHECK(http_str(port, "GET /nothing HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 404));
    CHECK(length_ok(&r));
    CHECK(http_str(port, "GET /metricsx HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 404));
    CHECK(http_str(port, "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", &r) == 0);
    CHECK(status_is(&r, 405));
    CHECK(strstr(r.data, "\r\nAllow: GET, HEAD\r\n") != NULL);
    CHECK(http_str(port, "DELETE /healthz HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 405));

    CHECK(http_str(port, "GARBAGE\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 400));
    CHECK(http_str(port, "GET /metrics HTTP/2.0\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 400));
    CHECK(http_str(port, "GET  HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 400));
    buf_release(&r);
    return 0;
}

static void test_http_routes(void **state)
{
    struct server s;
    server_start(&s);
    assert_int_equal(run_client(&s, scenario_routes), 0);
    assert_true(metric_value(s.scrapes, NULL) == 3);
    server_stop(&s);
}

static int scenario_not_ready(int port)
{
    struct buf r;
    buf_init(&r);
    CHECK(http_str(port, "GET /readyz HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 503));
    CHECK(strcmp(body_of(&r), "not ready: bus not joined\n") == 0);
    CHECK(http_str(port, "HEAD /readyz HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 503));
    CHECK(body_of(&r)[0] == '\0');
    /* Liveness does not depend on readiness. */
    CHECK(http_str(port, "GET /healthz HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 200));
    buf_release(&r);
    return 0;
}

static int scenario_ready(int port)
{
    struct buf r;
    buf_init(&r);
    CHECK(http_str(port, "GET /readyz HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 200));
    CHECK(strcmp(body_of(&r), "ready\n") == 0);
    buf_release(&r);
    return 0;
}

static void test_http_readyz(void **state)
{
    struct server s;
    server_start(&s);
    s.ready = false;
    assert_int_equal(run_client(&s, scenario_not_ready), 0);
    s.ready = true;
    assert_int_equal(run_client(&s, scenario_ready), 0);
    server_stop(&s);
}

static int scenario_oversized(int port)
{
    struct buf r;
    buf_init(&r);
    struct buf req;
    buf_init(&req);
    buf_append_str(&req, "GET /metrics HTTP/1.1\r\nX-Pad: ");
    while (req.len < 6000)
        buf_append_str(&req, "aaaaaaaaaa");
    /* No blank line: the head never ends within 4 KiB. */
    CHECK(http(port, req.data, req.len, &r) == 0);
    CHECK(status_is(&r, 431));
    /* Just under the limit is fine. */
    buf_reset(&req);
    buf_append_str(&req, "GET /healthz HTTP/1.1\r\nX-Pad: ");
    while (req.len < 4096 - 4)
        buf_append_str(&req, "a");
    buf_append_str(&req, "\r\n\r\n");
    CHECK(req.len == 4096);
    CHECK(http(port, req.data, req.len, &r) == 0);
    CHECK(status_is(&r, 200));
    buf_release(&req);
    buf_release(&r);
    return 0;
}

static void test_http_oversized(void **state)
{
    struct server s;
    server_start(&s);
    assert_int_equal(run_client(&s, scenario_oversized), 0);
    server_stop(&s);
}

static int scenario_silent(int port)
{
    struct buf r;
    buf_init(&r);
    /* Says nothing: the server's deadline closes the connection without an answer. */
    int fd = client_connect(port, 0);
    CHECK(fd != -1);
    CHECK(read_all(fd, &r) == 0);
    CHECK(r.len == 0);
    close(fd);
    /* Starts a request and stalls. */
    fd = client_connect(port, 0);
    CHECK(fd != -1);
    CHECK(send_all(fd, "GET /metrics HTTP/1.1\r\n", 23) == 0);
    CHECK(read_all(fd, &r) == 0);
    CHECK(r.len == 0);
    close(fd);
    /* The server still answers. */
    CHECK(http_str(port, "GET /healthz HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 200));
    buf_release(&r);
    return 0;
}

static void test_http_timeout(void **state)
{
    struct server s;
    server_start(&s);
    metrics_set_timeout(s.m, 0.2);
    assert_int_equal(run_client(&s, scenario_silent), 0);
    server_stop(&s);
}

#define MANY 50

static int scenario_many(int port)
{
    int fds[MANY];
    for (int i = 0; i < MANY; i++) {
        fds[i] = client_connect(port, 0);
        CHECK(fds[i] != -1);
    }
    static const char req[] = "GET /metrics HTTP/1.1\r\n\r\n";
    for (int i = 0; i < MANY; i++)
        CHECK(send_all(fds[i], req, sizeof req - 1) == 0);
    struct buf r;
    buf_init(&r);
    for (int i = MANY - 1; i >= 0; i--) {
        buf_reset(&r);
        CHECK(read_all(fds[i], &r) == 0);
        CHECK(status_is(&r, 200));
        CHECK(length_ok(&r));
        close(fds[i]);
    }
    buf_release(&r);
    return 0;
}

static void test_http_many(void **state)
{
    struct server s;
    server_start(&s);
    assert_int_equal(run_client(&s, scenario_many), 0);
    assert_true(metric_value(s.scrapes, NULL) == MANY);
    server_stop(&s);
}

static int scenario_limit(int port)
{
    int fds[4];
    struct buf r;
    buf_init(&r);
    for (int i = 0; i < 4; i++) {
        fds[i] = client_connect(port, 0);
        CHECK(fds[i] != -1);
    }
    /* The fifth is over the limit: told so and closed. */
    int fd = client_connect(port, 0);
    CHECK(fd != -1);
    CHECK(read_all(fd, &r) == 0);
    CHECK(status_is(&r, 503));
    close(fd);
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    /* Slots come back once the server has seen those closes. Until then an attempt is
     * refused with a 503 and a close that may come as a reset (our request unread). */
    for (int tries = 0;; tries++) {
        CHECK(tries < 200);
        if (http_str(port, "GET /healthz HTTP/1.1\r\n\r\n", &r) == 0 && status_is(&r, 200))
            break;
        usleep(20000);
    }
    buf_release(&r);
    return 0;
}

static void test_http_limit(void **state)
{
    struct server s;
    server_start(&s);
    metrics_set_max_conns(s.m, 4);
    assert_int_equal(run_client(&s, scenario_limit), 0);
    server_stop(&s);
}

/* A body of about 6 MB: more than loopback's largest send buffer (4 MB) takes at
 * once, so the server meets EAGAIN and finishes through its write watcher. */
static void add_bulk(struct metrics *m)
{
    char name[64], lv[32];
    for (int f = 0; f < 100; f++) {
        snprintf(name, sizeof name, "meerkat_test_bulk%d_seconds", f);
        struct metric *h = metrics_histogram(m, name, "Bulk.", "kind", NULL, 0);
        for (int i = 0; i < 32; i++) {
            snprintf(lv, sizeof lv, "kind_with_a_long_value_%d", i);
            metric_observe(h, lv, 0.001 * i);
        }
    }
}

static int scenario_slow_and_vanishing(int port)
{
    struct buf r;
    buf_init(&r);
    static const char req[] = "GET /metrics HTTP/1.1\r\n\r\n";

    /* A slow reader with a small window: the server must finish through partial writes. */
    int fd = client_connect(port, 4096);
    CHECK(fd != -1);
    CHECK(send_all(fd, req, sizeof req - 1) == 0);
    usleep(200000);
    CHECK(read_all(fd, &r) == 0);
    close(fd);
    CHECK(status_is(&r, 200));
    CHECK(r.len > 5000000);
    CHECK(length_ok(&r));

    /* Reads a little, then resets the connection. */
    fd = client_connect(port, 4096);
    CHECK(fd != -1);
    CHECK(send_all(fd, req, sizeof req - 1) == 0);
    char some[100];
    CHECK(recv(fd, some, sizeof some, 0) > 0);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);

    /* Sends a request and vanishes before the answer. */
    fd = client_connect(port, 0);
    CHECK(fd != -1);
    CHECK(send_all(fd, req, sizeof req - 1) == 0);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);

    /* Half a request, then gone. */
    fd = client_connect(port, 0);
    CHECK(fd != -1);
    CHECK(send_all(fd, "GET /met", 8) == 0);
    close(fd);

    usleep(100000);
    CHECK(http_str(port, "GET /healthz HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(status_is(&r, 200));
    buf_release(&r);
    return 0;
}

static void test_http_slow_and_vanishing(void **state)
{
    struct server s;
    server_start(&s);
    add_bulk(s.m);
    assert_int_equal(run_client(&s, scenario_slow_and_vanishing), 0);
    server_stop(&s);
}

static void test_listen_errors(void **state)
{
    struct ev_loop *loop = ev_default_loop(0);
    struct metrics *m = metrics_new("c2s", "c2s.1");
    char err[256] = "";
    assert_int_equal(metrics_listen(m, loop, "example.org", 0, NULL, NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "numeric"));
    assert_int_equal(metrics_listen(m, loop, "127.0.0.1", 70000, NULL, NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "out of range"));

    /* The port another registry holds. */
    struct metrics *m2 = metrics_new("c2s", "c2s.2");
    assert_int_equal(metrics_listen(m2, loop, "127.0.0.1", 0, NULL, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(metrics_listen(m, loop, "127.0.0.1", metrics_port(m2), NULL, NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "metrics listen on 127.0.0.1:"));
    assert_int_equal(metrics_port(m), -1);
    metrics_free(&m2);
    /* IPv6 loopback, bracketed or not, where the host has it. */
    if (metrics_listen(m, loop, "[::1]", 0, NULL, NULL, NULL, err, sizeof err) == 0)
        assert_true(metrics_port(m) > 0);
    metrics_free(&m);
}

int main(void)
{
    log_init("test_metrics", LOG_LEVEL_WARN, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_render_exact),
        cmocka_unit_test(test_two_labels),
        cmocka_unit_test(test_label_overflow),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_number_format),
        cmocka_unit_test(test_promtool),
        cmocka_unit_test(test_misuse_aborts),
        cmocka_unit_test(test_http_routes),
        cmocka_unit_test(test_http_readyz),
        cmocka_unit_test(test_http_oversized),
        cmocka_unit_test(test_http_timeout),
        cmocka_unit_test(test_http_many),
        cmocka_unit_test(test_http_limit),
        cmocka_unit_test(test_http_slow_and_vanishing),
        cmocka_unit_test(test_listen_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
