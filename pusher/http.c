/* pusher/http.c - the pusher's HTTP client, one keep-alive pool per backend: http:// to an address is its own HTTP/1.1 client on the libev loop; the rest (https://, names to resolve) is libcurl's multi interface driven by the loop. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <curl/curl.h>
#include <ev.h>

#include "buf.h"
#include "http_resp.h"
#include "log.h"
#include "pusher.h"
#include "util.h"

/* A response body is kept up to this many bytes (the rest is read and dropped):
 * backends only look at short status documents, and a hostile server must not
 * make the pusher grow. */
#define HTTP_BODY_MAX (64 * 1024)
/* Idle request slots (easy handles and their buffers) kept per pool for reuse. */
#define HTTP_SPARE_MAX 64
/* A slot's buffers above this size are released instead of kept for the next request. */
#define HTTP_KEEP_BYTES (64 * 1024)
/* Retry-After beyond this is clamped (about 24.8 days, fits any long). */
#define HTTP_RETRY_AFTER_MAX_MS 2147483647L
/* Header lines a request carries in its own slot (list nodes in the slot, text in its
 * request copy): no allocation per header. More than this: a curl_slist is built. */
#define HTTP_INLINE_HEADERS 8
/* Requests of one connection written by one sendmsg. */
#define HTTP_WRITEV_MAX 64
/* Requests per connection once a backend without `pipeline` in its config has shown
 * that it answers pipelined requests (its probe succeeded). 8 measured as well as any
 * deeper setting at 16,000 msgs/s (docs/BENCHMARKS.md) and bounds what one broken
 * connection re-sends. */
#define HTTP_PIPELINE_AUTO 8
/* The probe's second answer is awaited this long after the first (or twice the first's
 * round trip when that is longer, never past the request's own timeout): both requests
 * arrived in one segment, so a receiver that pipelines has the second in hand when it
 * answers the first and answers it after about one more request's work. A slow receiver
 * misjudged by it only loses pipelining (one request per connection, as with pipeline 1). */
#define HTTP_PROBE_MIN_MS 250

struct http_call;

/* Whether the own client pipelines to a backend. */
enum http_pipe {
    HTTP_PIPE_FIXED = 0,           /* `pipeline` in the config: that depth, trusted, no probe */
    HTTP_PIPE_UNKNOWN,             /* automatic, not yet probed: one request per connection */
    HTTP_PIPE_PROBING,             /* automatic: one connection carries the probe's two requests */
    HTTP_PIPE_ON,                  /* automatic: the probe was answered: HTTP_PIPELINE_AUTO */
    HTTP_PIPE_OFF,                 /* automatic: the probe's second was dropped: 1 until the pool is remade */
};

enum http_method {
    HTTP_METHOD_POST = 0,
    HTTP_METHOD_GET,
    HTTP_METHOD_OTHER,             /* its name follows the body in http_call.req */
};

/* One socket curl asked us to watch (one per connection, not per request). */
struct http_sock {
    ev_io io;                      /* io.data = the pool */
    struct http_pool *pool;
    int events;                    /* EV_READ|EV_WRITE being watched */
    struct http_sock *prev, *next;
};

/* One connection of the pool's own client (http:// to an address). The slots are an array
 * of max_connections in the pool, never freed before the pool: a connection that fails
 * inside its own callback is closed (fd -1), not freed. It carries up to the backend's
 * `pipeline` requests (1 by default), answered in the order they were sent (RFC 9112
 * §9.3.2); what a loop turn adds is written with one sendmsg at the end of the turn. */
struct http_conn {
    struct http_pool *pool;
    int fd;                        /* -1: closed */
    ev_io rio;                     /* EV_READ, on while the connection is open: responses, and an idle
                                    * connection's close by the server (seen at once, not at the next request) */
    ev_io wio;                     /* EV_WRITE: connecting, or requests the socket did not take at once */
    ev_timer timer;                /* the oldest request's deadline (connect_timeout_ms while connecting) */
    bool connecting;
    bool kept;                     /* answered at least once and kept open: the receiver keeps connections alive */
    bool probe;                    /* carries the probe (two requests written together; n <= 2 while it runs) */
    bool flush_due;                /* on the pool's list of connections to write at the end of the turn */
    int fail_errno;                /* a failure found inside http_send: reported from the timer, on the loop */
    struct sockaddr_storage addr;  /* where it is connected */
    socklen_t addrlen;
    struct http_call *head, *tail; /* the requests on this connection, oldest first, through next */
    size_t n;                      /* how many */
    struct http_call *unsent;      /* the first request not completely written, NULL when all are */
    size_t out_off;                /* bytes of unsent->req written */
    struct http_conn *next_flush;
    struct http_resp resp;         /* the response to head */
};

struct http_pool {
    struct ev_loop *loop;
    struct http_conn *conns;       /* max_active slots of the own client */
    CURLM *multi;
    ev_timer timer;                /* curl's one timeout (CURLMOPT_TIMERFUNCTION) */
    char *name;
    long connect_timeout_ms, timeout_ms;
    bool tls_verify;
    char *ca_file;
    struct http_call *busy;        /* in curl, doubly linked */
    struct http_call *queue_head;  /* waiting for a free connection, FIFO through next */
    struct http_call *queue_tail;
    struct http_call *spare;       /* idle slots, singly linked through next */
    CURL **idle_easy;              /* easy handles to reuse (at most max_active) */
    size_t nidle_easy;
    size_t active, queued, nspare; /* active: in curl or on a connection of the own client */
    size_t curl_active;            /* of active, in curl */
    size_t max_active;             /* max_connections: curl never holds more requests than connections */
    size_t depth;                  /* requests per own connection (the backend's pipeline, or the probe's verdict) */
    enum http_pipe pipe;
    uint64_t probe_resent;         /* requests re-sent because the probe's receiver dropped them */
    struct http_sock *socks;       /* every socket being watched */
    struct http_conn *flush;       /* own connections with requests to write at the end of this turn */
    ev_prepare flush_w;
    /* The last URL own_parse_url read, and what it found (a backend sends every request
     * to one URL: parsed once, not per event). host and target are offsets into it. */
    char *url_seen;
    bool url_own;
    struct sockaddr_storage url_addr;
    socklen_t url_addrlen;
    size_t url_host, url_host_len, url_target, url_target_len;
};

/* One request: its copy of the request, and an easy handle while it is in curl (easy
 * handles are reused request after request; curl keeps the connection cache in the
 * multi handle, so reuse only saves the setup). */
struct http_call {
    struct http_pool *pool;
    CURL *easy;                    /* NULL while queued */
    struct curl_slist *headers;    /* what curl sends: hnodes, or an allocated list (headers_owned) */
    bool headers_owned;
    struct curl_slist hnodes[HTTP_INLINE_HEADERS];   /* "Expect:" then the caller's lines, text in req */
    struct buf req;                /* url NUL body NUL method NUL header NUL..., copied from the caller */
    size_t body_len;
    enum http_method method;
    bool own;                      /* the pool's own client: req holds the request as sent */
    bool head;                     /* a HEAD request (no response body) */
    struct sockaddr_storage addr;  /* own: the server */
    socklen_t addrlen;
    struct buf resp;               /* response body, at most HTTP_BODY_MAX bytes */
    http_done_fn done;
    void *ud;
    int64_t started_us;
    struct http_call *prev, *next;
    char errbuf[CURL_ERROR_SIZE];
};

/* ---- Retry-After (pure) ----------------------------------------------------------- */

static const char http_months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
static const char http_days[7][4] = { "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun" };
static const char *const http_long_days[7] = { "Monday", "Tuesday", "Wednesday", "Thursday",
                                               "Friday", "Saturday", "Sunday" };

/* Reads exactly n digits at *p (moving it); -1 when one is not a digit. */
static int64_t take_digits(const char **p, const char *end, int n)
{
    if (end - *p < n)
        return -1;
    int64_t v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *p += n;
    return v;
}

static bool take_lit(const char **p, const char *end, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0)
        return false;
    *p += n;
    return true;
}

static int take_month(const char **p, const char *end)
{
    for (int m = 0; m < 12; m++)
        if (take_lit(p, end, http_months[m]))
            return m + 1;
    return -1;
}

static bool take_day_name(const char **p, const char *end, bool long_form)
{
    for (int d = 0; d < 7; d++)
        if (take_lit(p, end, long_form ? http_long_days[d] : http_days[d]))
            return true;
    return false;
}

/* "HH:MM:SS" into seconds of the day; -1 when malformed or out of range (60 = leap second). */
static int64_t take_time(const char **p, const char *end)
{
    int64_t h = take_digits(p, end, 2);
    if (h < 0 || h > 23 || !take_lit(p, end, ":"))
        return -1;
    int64_t m = take_digits(p, end, 2);
    if (m < 0 || m > 59 || !take_lit(p, end, ":"))
        return -1;
    int64_t s = take_digits(p, end, 2);
    if (s < 0 || s > 60)
        return -1;
    return h * 3600 + m * 60 + s;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (Howard Hinnant's
 * civil-days algorithm). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int month_days(int64_t y, int64_t m)
{
    static const int days[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return days[m - 1];
}

static int64_t civil_seconds(int64_t y, int64_t mon, int64_t d, int64_t tod)
{
    if (mon < 1 || d < 1 || d > month_days(y, mon))
        return INT64_MIN;
    return days_from_civil(y, mon, d) * 86400 + tod;
}

/* The three HTTP-date forms of RFC 9110 §5.6.7 into seconds since the epoch;
 * INT64_MIN when p..end is none of them. */
static int64_t parse_http_date(const char *p, const char *end, int64_t now_sec)
{
    const char *s = p;
    int64_t d, mon, y, tod;
    /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
    if (take_day_name(&s, end, false) && take_lit(&s, end, ", ") && (d = take_digits(&s, end, 2)) >= 0 &&
        take_lit(&s, end, " ") && (mon = take_month(&s, end)) > 0 && take_lit(&s, end, " ") &&
        (y = take_digits(&s, end, 4)) >= 0 && take_lit(&s, end, " ") && (tod = take_time(&s, end)) >= 0 &&
        take_lit(&s, end, " GMT") && s == end)
        return civil_seconds(y, mon, d, tod);
    /* rfc850-date: Sunday, 06-Nov-94 08:49:37 GMT */
    s = p;
    if (take_day_name(&s, end, true) && take_lit(&s, end, ", ") && (d = take_digits(&s, end, 2)) >= 0 &&
        take_lit(&s, end, "-") && (mon = take_month(&s, end)) > 0 && take_lit(&s, end, "-") &&
        (y = take_digits(&s, end, 2)) >= 0 && take_lit(&s, end, " ") && (tod = take_time(&s, end)) >= 0 &&
        take_lit(&s, end, " GMT") && s == end) {
        /* A two-digit year more than 50 years ahead is the latest past year with
         * those digits (RFC 9110 §5.6.7). */
        int64_t now_days = now_sec / 86400 - (now_sec % 86400 < 0);
        int64_t now_year = 1970 + now_days / 365;   /* close enough to pick the century */
        while (days_from_civil(now_year + 1, 1, 1) <= now_days)
            now_year++;
        while (days_from_civil(now_year, 1, 1) > now_days)
            now_year--;
        int64_t century = now_year - ((now_year % 100) + 100) % 100;
        y += century;
        if (y > now_year + 50)
            y -= 100;
        else if (y <= now_year - 50)
            y += 100;
        return civil_seconds(y, mon, d, tod);
    }
    /* asctime-date: Sun Nov  6 08:49:37 1994 */
    s = p;
    if (take_day_name(&s, end, false) && take_lit(&s, end, " ") && (mon = take_month(&s, end)) > 0 &&
        take_lit(&s, end, " ")) {
        if (take_lit(&s, end, " "))
            d = take_digits(&s, end, 1);
        else
            d = take_digits(&s, end, 2);
        if (d >= 0 && take_lit(&s, end, " ") && (tod = take_time(&s, end)) >= 0 && take_lit(&s, end, " ") &&
            (y = take_digits(&s, end, 4)) >= 0 && s == end)
            return civil_seconds(y, mon, d, tod);
    }
    return INT64_MIN;
}

long http_retry_after_ms(const char *value, size_t len, int64_t now_sec)
{
    if (value == NULL)
        return -1;
    const char *p = value, *end = value + len;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r' || end[-1] == '\n'))
        end--;
    if (p == end)
        return -1;
    if (*p >= '0' && *p <= '9') {
        /* delay-seconds = 1*DIGIT; saturate rather than overflow */
        int64_t secs = 0;
        for (const char *q = p; q < end; q++) {
            if (*q < '0' || *q > '9')
                return -1;
            if (secs <= HTTP_RETRY_AFTER_MAX_MS / 1000 + 1)
                secs = secs * 10 + (*q - '0');
        }
        return secs > HTTP_RETRY_AFTER_MAX_MS / 1000 ? HTTP_RETRY_AFTER_MAX_MS : (long)(secs * 1000);
    }
    int64_t t = parse_http_date(p, end, now_sec);
    if (t == INT64_MIN)
        return -1;
    if (t <= now_sec)
        return 0;
    if (t - now_sec > HTTP_RETRY_AFTER_MAX_MS / 1000)
        return HTTP_RETRY_AFTER_MAX_MS;
    return (long)((t - now_sec) * 1000);
}

/* ---- global ------------------------------------------------------------------------ */

int http_global_init(void)
{
    CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK) {
        log_error("http_init_failed", "reason=\"%s\"", curl_easy_strerror(rc));
        return -1;
    }
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    /* Without an asynchronous resolver curl resolves names inside curl_multi_socket_action,
     * blocking the loop: refuse rather than stall chat-side acks behind DNS. */
    if (!(v->features & CURL_VERSION_ASYNCHDNS)) {
        log_error("http_init_failed", "reason=\"libcurl %s has no asynchronous resolver\"", v->version);
        return -1;
    }
    return 0;
}

/* ---- the multi handle on the loop -------------------------------------------------- */

static void check_done(struct http_pool *pool);

static void sock_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct http_pool *pool = w->data;
    int action = ((revents & EV_READ) ? CURL_CSELECT_IN : 0) | ((revents & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;
    /* w may be freed inside (CURL_POLL_REMOVE): not touched after. */
    CURLMcode rc = curl_multi_socket_action(pool->multi, w->fd, action, &running);
    if (rc != CURLM_OK)
        log_error("http_socket_action", "pool=%s reason=\"%s\"", pool->name, curl_multi_strerror(rc));
    check_done(pool);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct http_pool *pool = w->data;
    int running;
    CURLMcode rc = curl_multi_socket_action(pool->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    if (rc != CURLM_OK)
        log_error("http_socket_action", "pool=%s reason=\"%s\"", pool->name, curl_multi_strerror(rc));
    check_done(pool);
}

/* CURLMOPT_SOCKETFUNCTION: watch (or stop watching) one socket. */
static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    struct http_pool *pool = userp;
    struct http_sock *hs = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (hs != NULL) {
            ev_io_stop(pool->loop, &hs->io);
            if (hs->prev != NULL)
                hs->prev->next = hs->next;
            else
                pool->socks = hs->next;
            if (hs->next != NULL)
                hs->next->prev = hs->prev;
            free(hs);
            curl_multi_assign(pool->multi, s, NULL);
        }
        return 0;
    }
    int events = ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (hs == NULL) {
        hs = xcalloc(1, sizeof *hs);
        hs->pool = pool;
        hs->next = pool->socks;
        if (pool->socks != NULL)
            pool->socks->prev = hs;
        pool->socks = hs;
        ev_io_init(&hs->io, sock_io_cb, s, events);
        hs->io.data = pool;
        curl_multi_assign(pool->multi, s, hs);
    } else {
        if (hs->io.fd == s && hs->events == events)
            return 0;
        ev_io_stop(pool->loop, &hs->io);
        ev_io_set(&hs->io, s, events);
    }
    hs->events = events;
    if (events != 0)
        ev_io_start(pool->loop, &hs->io);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: curl wants curl_multi_socket_action(TIMEOUT) in timeout_ms
 * (-1: never). Never called back from here (curl forbids the recursion): even a 0
 * becomes a timer that fires on the next loop turn. */
static int multi_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct http_pool *pool = userp;
    ev_timer_stop(pool->loop, &pool->timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&pool->timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(pool->loop, &pool->timer);
    }
    return 0;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct http_call *c = userdata;
    size_t n = size * nmemb;
    if (c->resp.len < HTTP_BODY_MAX) {
        size_t keep = n < HTTP_BODY_MAX - c->resp.len ? n : HTTP_BODY_MAX - c->resp.len;
        buf_append(&c->resp, ptr, keep);
    }
    return n;   /* the rest is read and dropped so the connection stays reusable */
}

static void call_unlink(struct http_pool *pool, struct http_call *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        pool->busy = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    pool->active--;
    pool->curl_active--;
}

static void easy_release(struct http_pool *pool, CURL **ep)
{
    if (*ep == NULL)
        return;
    if (pool->nidle_easy < pool->max_active)
        pool->idle_easy[pool->nidle_easy++] = *ep;
    else
        curl_easy_cleanup(*ep);
    *ep = NULL;
}

static void call_destroy(struct http_call *c)
{
    if (c->easy != NULL)
        curl_easy_cleanup(c->easy);
    if (c->headers_owned)
        curl_slist_free_all(c->headers);
    buf_release(&c->req);
    buf_release(&c->resp);
    free(c);
}

/* Back to the spare list (or freed past HTTP_SPARE_MAX). c is unlinked and out of the
 * multi; its easy handle goes back to the pool's idle ones. */
static void call_recycle(struct http_pool *pool, struct http_call *c)
{
    easy_release(pool, &c->easy);
    if (c->headers_owned)
        curl_slist_free_all(c->headers);
    c->headers = NULL;
    c->headers_owned = false;
    c->done = NULL;
    c->ud = NULL;
    c->next = c->prev = NULL;
    if (pool->nspare >= HTTP_SPARE_MAX) {
        call_destroy(c);
        return;
    }
    if (c->req.cap > HTTP_KEEP_BYTES)
        buf_release(&c->req);
    if (c->resp.cap > HTTP_KEEP_BYTES)
        buf_release(&c->resp);
    buf_reset(&c->req);
    buf_reset(&c->resp);
    c->next = pool->spare;
    pool->spare = c;
    pool->nspare++;
}

/* ---- the own HTTP/1.1 client (http:// to an address) ------------------------------- */

static void start_queued(struct http_pool *pool);

/* Stops watching and closes the socket; the slot stays for the next connection. Its
 * requests must have been taken off it (conn_detach) first. */
static void conn_close(struct http_conn *k)
{
    ev_io_stop(k->pool->loop, &k->rio);
    ev_io_stop(k->pool->loop, &k->wio);
    ev_timer_stop(k->pool->loop, &k->timer);
    if (k->fd != -1)
        close(k->fd);
    k->fd = -1;
    k->connecting = false;
    k->kept = false;
    k->fail_errno = 0;
}

/* Takes every request off k (oldest first, through next; NULL when none) and closes it. */
static struct http_call *conn_detach(struct http_conn *k)
{
    struct http_call *list = k->head;
    if (k->probe) {
        /* Ended before a verdict (the first request failed, or the connection closed
         * as HTTP allows): a later connection probes again. */
        k->probe = false;
        if (k->pool->pipe == HTTP_PIPE_PROBING)
            k->pool->pipe = HTTP_PIPE_UNKNOWN;
    }
    k->pool->active -= k->n;
    k->head = k->tail = k->unsent = NULL;
    k->n = 0;
    k->out_off = 0;
    conn_close(k);
    return list;
}

/* The deadline of k's oldest request, from now (seconds, >= 0). */
static double conn_deadline_left(const struct http_conn *k)
{
    double left = (double)k->pool->timeout_ms / 1000.0 - (double)(mk_mono_us() - k->head->started_us) / 1e6;
    return left > 0 ? left : 0;
}

/* k's oldest request is the one whose response comes next: the parser and the deadline
 * are its; the timer fires at that deadline, or after max_s when that is sooner. */
static void conn_arm_head_within(struct http_conn *k, double max_s)
{
    ev_timer_stop(k->pool->loop, &k->timer);
    if (k->head == NULL)
        return;
    http_resp_start(&k->resp, &k->head->resp, HTTP_BODY_MAX, k->head->head);
    double left = conn_deadline_left(k);
    ev_timer_set(&k->timer, left < max_s ? left : max_s, 0.);
    ev_timer_start(k->pool->loop, &k->timer);
}

static void conn_arm_head(struct http_conn *k)
{
    conn_arm_head_within(k, HUGE_VAL);
}

/* The probe's first answer came after first_s seconds (k->head is its second): the
 * second's answer is awaited HTTP_PROBE_MIN_MS or twice that round trip, within the
 * request's own deadline. */
static void conn_arm_probe(struct http_conn *k, double first_s)
{
    double wait = (double)HTTP_PROBE_MIN_MS / 1000.0;
    conn_arm_head_within(k, 2 * first_s > wait ? 2 * first_s : wait);
}

/* Reports one finished request to its caller and recycles it. */
static void call_report(struct http_pool *pool, struct http_call *c, const struct http_resp *resp, const char *error,
                        bool timed_out)
{
    struct http_response r = { .retry_after_ms = -1 };
    r.seconds = (double)(mk_mono_us() - c->started_us) / 1e6;
    if (error == NULL) {
        r.status = resp->status;
        /* Only a refusal's Retry-After means anything to a caller (a 2xx is done). */
        if ((r.status < 200 || r.status >= 300) && resp->has_retry_after)
            r.retry_after_ms = http_retry_after_ms(resp->retry_after, resp->retry_after_len, mk_now_us() / 1000000);
    } else {
        r.error = error;
        r.timed_out = timed_out;
        buf_reset(&c->resp);
    }
    r.body = buf_cstr(&c->resp);
    r.body_len = c->resp.len;
    c->done(c->ud, &r);
    call_recycle(pool, c);
}

/* Puts list (through next) back at the front of the pool's queue, in its order: requests
 * the server will not process (it closed the connection after announcing it, RFC 9112
 * §9.6), sent again on another connection without counting as an attempt. */
static void queue_front(struct http_pool *pool, struct http_call *list)
{
    if (list == NULL)
        return;
    struct http_call *last = list;
    size_t n = 1;
    while (last->next != NULL) {
        last = last->next;
        n++;
    }
    last->next = pool->queue_head;
    pool->queue_head = list;
    if (pool->queue_tail == NULL)
        pool->queue_tail = last;
    pool->queued += n;
}

/* Every request on k failed (the connection broke, timed out, or answered garbage): the
 * oldest with error, the others (sent, or waiting behind it) as lost with the
 * connection; the caller retries them. k is closed. Reported last: the callbacks may
 * start requests, on this very slot too. */
static void conn_fail_all(struct http_conn *k, const char *error, bool timed_out)
{
    struct http_pool *pool = k->pool;
    const char *rest = timed_out ? "connection closed: an earlier request on it timed out" : error;
    struct http_call *c = conn_detach(k);
    for (bool first = true; c != NULL; first = false) {
        struct http_call *next = c->next;
        c->next = NULL;
        call_report(pool, c, NULL, first ? error : rest, first && timed_out);
        c = next;
    }
    start_queued(pool);
}

static void conn_fail_errno(struct http_conn *k, const char *what, int err)
{
    char why[160];
    snprintf(why, sizeof why, "%s: %s", what, strerror(err));
    conn_fail_all(k, why, false);
}

/* The probe's first request was answered and its second was not (no answer in time, or
 * the connection closed): the receiver drops pipelined requests. The pool sends one
 * request per connection from now on, and the unanswered one goes again at once on
 * another connection, reported to nobody (not an attempt: the receiver never processed
 * it, or, if it did, the event's stable id lets it see the duplicate). k is closed. */
static void conn_probe_dropped(struct http_conn *k, const char *why)
{
    struct http_pool *pool = k->pool;
    k->probe = false;
    pool->pipe = HTTP_PIPE_OFF;
    pool->depth = 1;
    pool->probe_resent += k->n;
    log_warn("http_pipeline_off",
             "pool=%s reason=\"%s\" action=\"one request per connection from now on, the unanswered one re-sent\"",
             pool->name, why);
    queue_front(pool, conn_detach(k));
    start_queued(pool);
}

/* k's oldest request has its complete response in k->resp. The connection keeps the
 * others only when the response does not end it, close_after is false (the server
 * closed, or bytes no request asked for follow) and the request was completely written
 * (a server may answer early, before the whole body): else the requests behind it go
 * back to the pool's queue (a server processes nothing after a response that closes,
 * RFC 9112 §9.6) and k is closed. Reports to the caller last: its callback may start
 * requests, on this very connection too. Returns whether k kept its connection. */
static bool conn_head_done(struct http_conn *k, bool close_after)
{
    struct http_pool *pool = k->pool;
    struct http_call *c = k->head;
    struct http_resp done = k->resp;   /* reported after k's parser may have moved on */
    bool keep = !close_after && !done.close && k->unsent != c;
    k->head = c->next;
    if (k->head == NULL)
        k->tail = NULL;
    c->next = NULL;
    k->n--;
    pool->active--;
    if (keep) {
        k->kept = true;
        if (k->probe && k->head == NULL) {
            /* Both answers, in order, on this connection: the receiver pipelines. */
            k->probe = false;
            pool->pipe = HTTP_PIPE_ON;
            pool->depth = HTTP_PIPELINE_AUTO;
            log_info("http_pipeline_on", "pool=%s depth=%d", pool->name, HTTP_PIPELINE_AUTO);
        }
        if (k->probe)
            conn_arm_probe(k, (double)(mk_mono_us() - c->started_us) / 1e6);
        else
            conn_arm_head(k);
    } else {
        if (k->unsent == c)
            k->unsent = k->head;
        queue_front(pool, conn_detach(k));
    }
    call_report(pool, c, &done, NULL, false);
    start_queued(pool);
    return keep;
}

/* Writes what the socket takes of k's unsent requests, several in one writev; the rest
 * waits for EV_WRITE. 0, or -1 when the connection failed (reported, k closed). */
static int conn_write(struct http_conn *k)
{
    while (k->unsent != NULL) {
        struct iovec iov[HTTP_WRITEV_MAX];
        int n = 0;
        for (struct http_call *c = k->unsent; c != NULL && n < HTTP_WRITEV_MAX; c = c->next, n++) {
            size_t off = n == 0 ? k->out_off : 0;
            iov[n].iov_base = c->req.data + off;
            iov[n].iov_len = c->req.len - off;
        }
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t w = sendmsg(k->fd, &msg, MSG_NOSIGNAL);
        if (w == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!ev_is_active(&k->wio))
                    ev_io_start(k->pool->loop, &k->wio);
                return 0;
            }
            conn_fail_errno(k, "send", errno);
            return -1;
        }
        size_t left = (size_t)w;
        while (k->unsent != NULL && left >= k->unsent->req.len - k->out_off) {
            left -= k->unsent->req.len - k->out_off;
            k->unsent = k->unsent->next;
            k->out_off = 0;
        }
        k->out_off += left;
    }
    ev_io_stop(k->pool->loop, &k->wio);
    return 0;
}

/* The end of the loop turn: each connection given requests in this turn writes them. */
static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    struct http_pool *pool = w->data;
    ev_prepare_stop(loop, w);
    while (pool->flush != NULL) {
        struct http_conn *k = pool->flush;
        pool->flush = k->next_flush;
        k->next_flush = NULL;
        k->flush_due = false;
        if (k->fd != -1 && !k->connecting && k->unsent != NULL && !ev_is_active(&k->wio))
            conn_write(k);
    }
}

static void conn_flush_later(struct http_conn *k)
{
    struct http_pool *pool = k->pool;
    if (k->flush_due)
        return;
    k->flush_due = true;
    k->next_flush = pool->flush;
    pool->flush = k;
    if (!ev_is_active(&pool->flush_w))
        ev_prepare_start(pool->loop, &pool->flush_w);
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct http_conn *k = w->data;
    if (k->head == NULL)
        return;
    if (k->fail_errno != 0) {
        conn_fail_errno(k, "connect", k->fail_errno);
        return;
    }
    if (k->probe && k->n == 1) {
        conn_probe_dropped(k, "no answer to the second of two pipelined requests after the first's");
        return;
    }
    char why[96];
    snprintf(why, sizeof why, "%s timed out after %ld ms", k->connecting ? "connect" : "request",
             k->connecting ? (k->pool->connect_timeout_ms < k->pool->timeout_ms ? k->pool->connect_timeout_ms
                                                                                : k->pool->timeout_ms)
                           : k->pool->timeout_ms);
    conn_fail_all(k, why, true);
}

static void conn_wio_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct http_conn *k = w->data;
    if (k->head == NULL) {
        ev_io_stop(loop, w);
        return;
    }
    if (k->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
            err = errno;
        if (err != 0) {
            conn_fail_errno(k, "connect", err);
            return;
        }
        k->connecting = false;
        ev_io_start(loop, &k->rio);
        conn_arm_head(k);
    }
    conn_write(k);
}

static void conn_rio_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop, (void)revents;
    struct http_conn *k = w->data;
    char in[16384];
    for (;;) {
        ssize_t n = recv(k->fd, in, sizeof in, 0);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (k->probe && k->n == 1)
                conn_probe_dropped(k, "connection reset with the second of two pipelined requests unanswered");
            else if (k->head != NULL)
                conn_fail_errno(k, "recv", errno);
            else
                conn_close(k);
            return;
        }
        if (k->head == NULL) {
            /* idle: the server closed it (n == 0), or sent what nobody asked for */
            conn_close(k);
            return;
        }
        if (n == 0) {
            if (http_resp_eof(&k->resp) == 0)
                conn_head_done(k, true);
            else if (k->probe && k->n == 1)
                conn_probe_dropped(k, "connection closed with the second of two pipelined requests unanswered");
            else
                conn_fail_all(k, k->resp.error, false);
            return;
        }
        const char *p = in;
        size_t left = (size_t)n;
        while (left > 0) {
            ssize_t used = http_resp_feed(&k->resp, p, left);
            if (used == -1) {
                char why[160];
                snprintf(why, sizeof why, "malformed HTTP response: %s", k->resp.error);
                conn_fail_all(k, why, false);
                return;
            }
            p += used;
            left -= (size_t)used;
            if (k->resp.state != HTTP_RESP_DONE)
                continue;
            /* Bytes past the last response we asked for: the connection cannot be trusted. */
            if (!conn_head_done(k, left > 0 && k->n == 1) || k->head == NULL)
                return;   /* closed (the callback may have opened the slot again), or nothing left to read for */
        }
        if ((size_t)n < sizeof in)
            return;
    }
}

/* Opens k to c's server. 0 (connected or connecting), or -1 with errno. */
static int conn_open(struct http_conn *k, const struct http_call *c)
{
    int fd = socket(c->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    k->fd = fd;
    memcpy(&k->addr, &c->addr, c->addrlen);
    k->addrlen = c->addrlen;
    ev_io_set(&k->rio, fd, EV_READ);
    ev_io_set(&k->wio, fd, EV_WRITE);
    if (connect(fd, (const struct sockaddr *)&c->addr, c->addrlen) == 0) {
        k->connecting = false;
        ev_io_start(k->pool->loop, &k->rio);
        return 0;
    }
    if (errno != EINPROGRESS) {
        int err = errno;
        conn_close(k);
        errno = err;
        return -1;
    }
    k->connecting = true;
    ev_io_start(k->pool->loop, &k->wio);
    return 0;
}

static bool same_addr(const struct http_conn *k, const struct http_call *c)
{
    return k->addrlen == c->addrlen && memcmp(&k->addr, &c->addr, c->addrlen) == 0;
}

/* The connection for c, or NULL when every one is full: one to its server that writes at
 * the end of this turn anyway (c joins that write), else an idle one to its server, else a
 * closed slot, else the least busy one to its server with room, else an idle one to
 * another server (closed for it). With pipeline 1 only the idle and closed ones qualify. */
static struct http_conn *own_pick(struct http_pool *pool, const struct http_call *c)
{
    struct http_conn *idle = NULL, *closed = NULL, *least = NULL, *other = NULL;
    for (size_t i = 0; i < pool->max_active; i++) {
        struct http_conn *t = &pool->conns[i];
        if (t->fd == -1) {
            if (closed == NULL && t->n == 0)
                closed = t;   /* (n > 0: a failed connect waiting to be reported) */
            continue;
        }
        if (!same_addr(t, c)) {
            if (t->n == 0 && other == NULL)
                other = t;
            continue;
        }
        /* Automatic and not yet probed: a connection the receiver kept alive takes a
         * second request beside a first still to be written this turn (the probe). */
        size_t room = pool->pipe == HTTP_PIPE_UNKNOWN && t->kept && t->n == 1 && t->unsent == t->head ? 2 : pool->depth;
        if (t->n >= room)
            continue;
        if (t->n > 0 && (t->connecting || t->unsent != NULL))
            return t;
        if (t->n == 0) {
            if (idle == NULL)
                idle = t;
        } else if (least == NULL || t->n < least->n) {
            least = t;
        }
    }
    return idle != NULL ? idle : closed != NULL ? closed : least != NULL ? least : other;
}

/* Puts c on k (from own_pick); written at the end of this turn. Never fails here: a
 * failure to connect is reported from the loop. */
static void own_start(struct http_pool *pool, struct http_conn *k, struct http_call *c)
{
    if (k->n == 0 && k->fd != -1 && !same_addr(k, c))
        conn_close(k);
    c->started_us = mk_mono_us();
    c->next = NULL;
    if (k->tail != NULL)
        k->tail->next = c;
    else
        k->head = c;
    k->tail = c;
    if (k->unsent == NULL) {
        k->unsent = c;
        k->out_off = 0;
    }
    k->n++;
    pool->active++;
    if (k->n == 2 && pool->pipe == HTTP_PIPE_UNKNOWN) {
        pool->pipe = HTTP_PIPE_PROBING;
        k->probe = true;
    }
    if (k->fd == -1) {
        if (conn_open(k, c) == -1) {
            k->fail_errno = errno;
            ev_timer_set(&k->timer, 0., 0.);
            ev_timer_start(pool->loop, &k->timer);
            return;
        }
        if (k->connecting) {
            http_resp_start(&k->resp, &c->resp, HTTP_BODY_MAX, c->head);
            double deadline = (double)(pool->connect_timeout_ms < pool->timeout_ms ? pool->connect_timeout_ms
                                                                                    : pool->timeout_ms) / 1000.0;
            ev_timer_set(&k->timer, deadline, 0.);
            ev_timer_start(pool->loop, &k->timer);
            return;
        }
    }
    if (k->n == 1)
        conn_arm_head(k);
    if (!k->connecting)
        conn_flush_later(k);
}

/* For http://<IPv4 or [IPv6]>[:port][/path][?query] (no userinfo; a name would need a
 * resolver: those go to curl, whose resolver does not block the loop): the server's
 * address in c, the authority for Host in *host, the request target in *target.
 * false: not for the own client. */
static bool own_parse_url(const char *url, struct http_call *c, const char **host, size_t *host_len,
                          const char **target, size_t *target_len)
{
    if (strncasecmp(url, "http://", 7) != 0)
        return false;
    const char *a = url + 7;
    size_t alen = strcspn(a, "/?#");
    if (alen == 0 || memchr(a, '@', alen) != NULL)
        return false;
    for (const char *q = url; *q != '\0'; q++)
        if ((unsigned char)*q <= 0x20 || *q == 0x7f)
            return false;
    char hostbuf[64];
    const char *port = NULL;
    size_t hlen;
    bool v6 = a[0] == '[';
    if (v6) {
        const char *rb = memchr(a, ']', alen);
        if (rb == NULL)
            return false;
        hlen = (size_t)(rb - a) - 1;
        if (hlen >= sizeof hostbuf)
            return false;
        memcpy(hostbuf, a + 1, hlen);
        if (rb + 1 < a + alen) {
            if (rb[1] != ':')
                return false;
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(a, ':', alen);
        hlen = colon != NULL ? (size_t)(colon - a) : alen;
        if (hlen >= sizeof hostbuf)
            return false;
        memcpy(hostbuf, a, hlen);
        if (colon != NULL)
            port = colon + 1;
    }
    hostbuf[hlen] = '\0';
    unsigned long pnum = 80;
    if (port != NULL && port < a + alen) {
        pnum = 0;
        for (const char *q = port; q < a + alen; q++) {
            if (*q < '0' || *q > '9' || pnum > 65535)
                return false;
            pnum = pnum * 10 + (unsigned long)(*q - '0');
        }
        if (pnum == 0 || pnum > 65535)
            return false;
    }
    memset(&c->addr, 0, sizeof c->addr);
    if (v6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&c->addr;
        if (inet_pton(AF_INET6, hostbuf, &s6->sin6_addr) != 1)
            return false;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)pnum);
        c->addrlen = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&c->addr;
        if (inet_pton(AF_INET, hostbuf, &s4->sin_addr) != 1)
            return false;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)pnum);
        c->addrlen = sizeof *s4;
    }
    *host = a;
    *host_len = port != NULL && port == a + alen ? alen - 1 : alen;   /* "host:" -> "host" */
    *target = a + alen;
    *target_len = strcspn(*target, "#");
    return true;
}

/* The request as sent, into c->req: request line, Host, User-Agent, the caller's header
 * lines, Content-Length, the body. -1 (EINVAL) when a header line would split the
 * request (CR or LF in it). */
static int own_build(struct http_call *c, const char *method, const struct http_request *req, const char *host,
                     size_t host_len, const char *target, size_t target_len)
{
    struct buf *b = &c->req;
    bool has_host = false;
    size_t need = 64 + strlen(method) + host_len + target_len + req->body_len;
    for (const char *const *hp = req->headers; hp != NULL && *hp != NULL; hp++) {
        size_t n = strlen(*hp);
        if (strpbrk(*hp, "\r\n") != NULL) {
            errno = EINVAL;
            return -1;
        }
        if (strncasecmp(*hp, "Host:", 5) == 0)
            has_host = true;
        need += n + 2;
    }
    buf_reserve(b, need);
    buf_append_str(b, method);
    buf_append(b, " ", 1);
    if (target_len == 0 || target[0] != '/')
        buf_append(b, "/", 1);
    buf_append(b, target, target_len);
    buf_append_str(b, " HTTP/1.1\r\n");
    if (!has_host) {
        buf_append(b, "Host: ", 6);
        buf_append(b, host, host_len);
        buf_append(b, "\r\n", 2);
    }
    buf_append_str(b, "User-Agent: meerkat-pusher\r\n");
    for (const char *const *hp = req->headers; hp != NULL && *hp != NULL; hp++) {
        buf_append_str(b, *hp);
        buf_append(b, "\r\n", 2);
    }
    if (c->method != HTTP_METHOD_GET || req->body_len > 0) {
        /* The digits written directly (no printf per request). */
        char cl[48] = "Content-Length: ", d[20];
        size_t n = 16, nd = 0;
        size_t v = req->body_len;
        do {
            d[nd++] = (char)('0' + v % 10);
            v /= 10;
        } while (v != 0);
        while (nd > 0)
            cl[n++] = d[--nd];
        memcpy(cl + n, "\r\n\r\n", 4);
        buf_append(b, cl, n + 4);
    } else {
        buf_append(b, "\r\n", 2);
    }
    if (req->body_len > 0)
        buf_append(b, req->body, req->body_len);
    return 0;
}

/* Starts c (its request copied, headers built): on a connection of the own client, or
 * in curl. 0 when started, 1 when there is no room now (c untouched: it waits in the
 * queue), -1 when curl refuses it (then c is untouched but for its easy handle, released). */
static int call_start(struct http_pool *pool, struct http_call *c)
{
    if (c->own) {
        struct http_conn *k = own_pick(pool, c);
        if (k == NULL)
            return 1;
        own_start(pool, k, c);
        return 0;
    }
    if (pool->curl_active >= pool->max_active)
        return 1;
    CURL *e;
    if (pool->nidle_easy > 0) {
        e = pool->idle_easy[--pool->nidle_easy];
    } else if ((e = curl_easy_init()) != NULL) {
        /* What every request of the pool shares is set once per easy handle; a reused
         * handle keeps it (no curl_easy_reset: only the per-request options change). */
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
        curl_easy_setopt(e, CURLOPT_USERAGENT, "meerkat-pusher");
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, pool->connect_timeout_ms);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, pool->timeout_ms);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, pool->tls_verify ? 1L : 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, pool->tls_verify ? 2L : 0L);
        if (pool->ca_file != NULL)
            curl_easy_setopt(e, CURLOPT_CAINFO, pool->ca_file);
        curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    } else {
        return -1;
    }
    c->easy = e;
    c->errbuf[0] = '\0';
    const char *url = c->req.data;
    const char *body = url + strlen(url) + 1;
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)c);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    switch (c->method) {
    case HTTP_METHOD_GET:
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, (char *)NULL);
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        break;
    case HTTP_METHOD_POST:
    case HTTP_METHOD_OTHER:
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, c->method == HTTP_METHOD_OTHER ? body + c->body_len + 1 : NULL);
        break;
    }
    c->started_us = mk_mono_us();
    CURLMcode rc = curl_multi_add_handle(pool->multi, e);
    if (rc != CURLM_OK) {
        log_error("http_send_failed", "pool=%s reason=\"%s\"", pool->name, curl_multi_strerror(rc));
        easy_release(pool, &c->easy);
        return -1;
    }
    c->prev = NULL;
    c->next = pool->busy;
    if (pool->busy != NULL)
        pool->busy->prev = c;
    pool->busy = c;
    pool->active++;
    pool->curl_active++;
    return 0;
}

/* Moves queued requests into curl while connections are free. A request curl refuses
 * is reported to its caller as a transport error. */
static void start_queued(struct http_pool *pool)
{
    while (pool->queue_head != NULL) {
        struct http_call *c = pool->queue_head;
        pool->queue_head = c->next;
        if (pool->queue_head == NULL)
            pool->queue_tail = NULL;
        c->next = NULL;
        pool->queued--;
        int rc = call_start(pool, c);
        if (rc == 1) {
            queue_front(pool, c);
            return;
        }
        if (rc == 0)
            continue;
        struct http_response r = { .retry_after_ms = -1, .error = "the request could not be started", .body = "" };
        c->done(c->ud, &r);
        call_recycle(pool, c);
    }
}

/* Reports every finished transfer: after each curl_multi_socket_action. */
static void check_done(struct http_pool *pool)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(pool->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode result = msg->data.result;
        struct http_call *c = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&c);
        curl_multi_remove_handle(pool->multi, easy);
        call_unlink(pool, c);

        struct http_response r = { .retry_after_ms = -1 };
        r.seconds = (double)(mk_mono_us() - c->started_us) / 1e6;
        if (result == CURLE_OK) {
            long status = 0;
            curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
            r.status = status;
            struct curl_header *h;
            /* Only a refusal's Retry-After means anything to a caller (a 2xx is done): no
             * header lookup per accepted request. */
            if ((status < 200 || status >= 300) &&
                curl_easy_header(easy, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
                r.retry_after_ms = http_retry_after_ms(h->value, strlen(h->value), mk_now_us() / 1000000);
        } else {
            r.error = c->errbuf[0] != '\0' ? c->errbuf : curl_easy_strerror(result);
            r.timed_out = result == CURLE_OPERATION_TIMEDOUT;
        }
        r.body = buf_cstr(&c->resp);
        r.body_len = c->resp.len;
        /* The done callback may start new requests on this pool: c is still ours
         * until it returns. */
        c->done(c->ud, &r);
        call_recycle(pool, c);
    }
    start_queued(pool);
}

/* ---- pools ------------------------------------------------------------------------- */

struct http_pool *http_pool_new(struct ev_loop *loop, const struct cfg_push_backend *cfg, const char *name,
                                char *err, size_t errlen)
{
    if (cfg->ca_file != NULL && access(cfg->ca_file, R_OK) == -1) {
        mk_errf(err, errlen, "%s: ca_file %s: %s", name, cfg->ca_file, strerror(errno));
        return NULL;
    }
    CURLM *multi = curl_multi_init();
    if (multi == NULL) {
        mk_errf(err, errlen, "%s: curl_multi_init failed", name);
        return NULL;
    }
    struct http_pool *pool = xcalloc(1, sizeof *pool);
    pool->loop = loop;
    pool->multi = multi;
    pool->name = xstrdup(name);
    pool->connect_timeout_ms = cfg->connect_timeout_ms;
    pool->timeout_ms = cfg->timeout_ms;
    pool->tls_verify = cfg->tls_verify;
    pool->ca_file = xstrdup(cfg->ca_file);
    pool->max_active = cfg->max_connections > 0 ? cfg->max_connections : 1;
    /* No `pipeline` (0): one request per connection until the probe's verdict. */
    pool->depth = cfg->pipeline > 0 ? cfg->pipeline : 1;
    pool->pipe = cfg->pipeline > 0 ? HTTP_PIPE_FIXED : HTTP_PIPE_UNKNOWN;
    ev_prepare_init(&pool->flush_w, flush_cb);
    pool->flush_w.data = pool;
    pool->idle_easy = xcalloc(pool->max_active, sizeof *pool->idle_easy);
    pool->conns = xcalloc(pool->max_active, sizeof *pool->conns);
    for (size_t i = 0; i < pool->max_active; i++) {
        struct http_conn *k = &pool->conns[i];
        k->pool = pool;
        k->fd = -1;
        http_resp_init(&k->resp);
        ev_io_init(&k->rio, conn_rio_cb, -1, EV_READ);
        k->rio.data = k;
        ev_io_init(&k->wio, conn_wio_cb, -1, EV_WRITE);
        k->wio.data = k;
        ev_timer_init(&k->timer, conn_timer_cb, 0., 0.);
        k->timer.data = k;
    }
    ev_timer_init(&pool->timer, timer_cb, 0., 0.);
    pool->timer.data = pool;

    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, pool);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, pool);
    /* At most max_connections to the backend, kept open for keep-alive. The pool itself
     * gives curl no more requests than that (the rest wait in the pool's queue): curl's
     * own bookkeeping of waiting transfers costs per transfer on every removal. */
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)pool->max_active);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long)pool->max_active);
    return pool;
}

void http_pool_free(struct http_pool **pp)
{
    struct http_pool *pool = *pp;
    if (pool == NULL)
        return;
    *pp = NULL;
    while (pool->busy != NULL) {
        struct http_call *c = pool->busy;
        curl_multi_remove_handle(pool->multi, c->easy);
        call_unlink(pool, c);
        call_destroy(c);
    }
    ev_prepare_stop(pool->loop, &pool->flush_w);
    for (size_t i = 0; i < pool->max_active; i++) {
        struct http_conn *k = &pool->conns[i];
        struct http_call *c = conn_detach(k);
        while (c != NULL) {
            struct http_call *next = c->next;
            call_destroy(c);
            c = next;
        }
        http_resp_release(&k->resp);
    }
    free(pool->conns);
    while (pool->queue_head != NULL) {
        struct http_call *c = pool->queue_head;
        pool->queue_head = c->next;
        call_destroy(c);
    }
    while (pool->spare != NULL) {
        struct http_call *c = pool->spare;
        pool->spare = c->next;
        call_destroy(c);
    }
    while (pool->nidle_easy > 0)
        curl_easy_cleanup(pool->idle_easy[--pool->nidle_easy]);
    free(pool->idle_easy);
    curl_multi_cleanup(pool->multi);
    /* Sockets curl did not hand back while closing its connections. */
    while (pool->socks != NULL) {
        struct http_sock *hs = pool->socks;
        pool->socks = hs->next;
        ev_io_stop(pool->loop, &hs->io);
        free(hs);
    }
    ev_timer_stop(pool->loop, &pool->timer);
    free(pool->name);
    free(pool->ca_file);
    free(pool->url_seen);
    free(pool);
}

size_t http_pool_in_flight(const struct http_pool *pool)
{
    return pool->active + pool->queued;
}

size_t http_pool_pipeline_depth(const struct http_pool *pool)
{
    return pool->depth;
}

uint64_t http_pool_pipeline_resent(const struct http_pool *pool)
{
    return pool->probe_resent;
}

static struct http_call *call_get(struct http_pool *pool)
{
    struct http_call *c = pool->spare;
    if (c != NULL) {
        pool->spare = c->next;
        pool->nspare--;
        c->next = NULL;
        return c;
    }
    c = xcalloc(1, sizeof *c);
    c->pool = pool;
    buf_init(&c->req);
    buf_init(&c->resp);
    return c;
}

static int http_submit(struct http_pool *pool, struct http_call *c);

int http_send(struct http_pool *pool, const struct http_request *req, http_done_fn done, void *ud)
{
    if (req->url == NULL || done == NULL) {
        errno = EINVAL;
        return -1;
    }
    const char *method = req->method != NULL ? req->method : "POST";
    struct http_call *c = call_get(pool);
    c->method = strcmp(method, "POST") == 0 ? HTTP_METHOD_POST
              : strcmp(method, "GET") == 0  ? HTTP_METHOD_GET
                                            : HTTP_METHOD_OTHER;
    c->body_len = req->body_len;
    c->head = strcmp(method, "HEAD") == 0;
    const char *host, *target;
    size_t host_len, target_len;
    if (pool->url_seen == NULL || strcmp(pool->url_seen, req->url) != 0) {
        free(pool->url_seen);
        pool->url_seen = xstrdup(req->url);
        pool->url_own = own_parse_url(pool->url_seen, c, &host, &host_len, &target, &target_len);
        if (pool->url_own) {
            memcpy(&pool->url_addr, &c->addr, c->addrlen);
            pool->url_addrlen = c->addrlen;
            pool->url_host = (size_t)(host - pool->url_seen);
            pool->url_host_len = host_len;
            pool->url_target = (size_t)(target - pool->url_seen);
            pool->url_target_len = target_len;
        }
    }
    c->own = pool->url_own;
    if (c->own) {
        memcpy(&c->addr, &pool->url_addr, pool->url_addrlen);
        c->addrlen = pool->url_addrlen;
        host = req->url + pool->url_host;
        host_len = pool->url_host_len;
        target = req->url + pool->url_target;
        target_len = pool->url_target_len;
        if (own_build(c, method, req, host, host_len, target, target_len) == -1) {
            call_recycle(pool, c);
            return -1;
        }
        c->done = done;
        c->ud = ud;
        return http_submit(pool, c);
    }
    size_t url_len = strlen(req->url), method_len = strlen(method);
    buf_reserve(&c->req, url_len + req->body_len + method_len + 3);
    buf_append(&c->req, req->url, url_len + 1);
    if (req->body_len > 0)
        buf_append(&c->req, req->body, req->body_len);
    buf_append(&c->req, "", 1);
    buf_append(&c->req, method, method_len + 1);

    /* "Expect:" off: no 100-continue round trip before a body. */
    size_t nh = 0;
    for (const char *const *hp = req->headers; hp != NULL && *hp != NULL; hp++)
        nh++;
    if (nh < HTTP_INLINE_HEADERS) {
        size_t off = c->req.len;
        for (size_t i = 0; i < nh; i++)
            buf_append(&c->req, req->headers[i], strlen(req->headers[i]) + 1);
        c->hnodes[0].data = (char *)"Expect:";
        const char *t = c->req.data + off;
        for (size_t i = 0; i < nh; i++) {
            c->hnodes[i].next = &c->hnodes[i + 1];
            c->hnodes[i + 1].data = (char *)t;
            t += strlen(t) + 1;
        }
        c->hnodes[nh].next = NULL;
        c->headers = c->hnodes;
        c->headers_owned = false;
        c->done = done;
        c->ud = ud;
        return http_submit(pool, c);
    }
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    for (const char *const *hp = req->headers; h != NULL && hp != NULL && *hp != NULL; hp++) {
        struct curl_slist *n = curl_slist_append(h, *hp);
        if (n == NULL) {
            curl_slist_free_all(h);
            h = NULL;
        } else {
            h = n;
        }
    }
    if (h == NULL) {
        call_recycle(pool, c);
        errno = ENOMEM;
        return -1;
    }
    c->headers = h;
    c->headers_owned = true;
    c->done = done;
    c->ud = ud;
    return http_submit(pool, c);
}

/* Starts c (its request copied, headers set) or queues it behind the others. */
static int http_submit(struct http_pool *pool, struct http_call *c)
{
    if (pool->queue_head == NULL) {
        int rc = call_start(pool, c);
        if (rc == -1) {
            call_recycle(pool, c);
            errno = EIO;
            return -1;
        }
        if (rc == 0)
            return 0;
    }
    c->next = NULL;
    if (pool->queue_tail != NULL)
        pool->queue_tail->next = c;
    else
        pool->queue_head = c;
    pool->queue_tail = c;
    pool->queued++;
    return 0;
}
