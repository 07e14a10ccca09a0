/* pusher/pusher.h - meerkat-pusher's private interface: events in, backends, the HTTP client on the loop. */
#ifndef MK_PUSHER_PUSHER_H
#define MK_PUSHER_PUSHER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "cfg.h"
#include "meerkat.pb-c.h"

/* ---- HTTP client (pusher/http.c) ------------------------------------------------
 * On the libev loop, no thread, no blocking call: http:// to an address through the
 * pusher's own HTTP/1.1 client, the rest (https://, host names) through libcurl's multi
 * interface (socket and timer callbacks). One http_pool per backend: its own keep-alive
 * connections (max_connections), requests in flight per connection of the own client
 * (pipeline; without it one until a probe shows the receiver pipelines), timeouts and TLS settings from the backend's config. */
struct http_pool;

struct http_request {
    const char *method;            /* "POST" (default when NULL), "GET", ... */
    const char *url;
    const char *const *headers;    /* "Name: value" lines, NULL-terminated; may be NULL */
    const void *body;
    size_t body_len;
};

struct http_response {
    long status;                   /* HTTP status, 0 when no response (then error is set) */
    const char *error;             /* transport error text (connect, timeout, TLS), NULL when a response came */
    bool timed_out;
    long retry_after_ms;           /* from a Retry-After header (seconds or HTTP date) of a response that is
                                    * not 2xx; -1 when absent (always for a 2xx) */
    const char *body;              /* response body (bounded, NUL-terminated), may be "" */
    size_t body_len;
    double seconds;                /* request duration */
};

/* Called once per request, on the loop; r and its strings live for the call only. */
typedef void (*http_done_fn)(void *ud, const struct http_response *r);

/* curl_global_init, once, in main before any pool (and the check that libcurl resolves
 * names without blocking). 0, or -1 (logged). */
int http_global_init(void);

/* The value of a Retry-After header (RFC 9110 §10.2.3: delay-seconds, or an HTTP-date
 * in any of its three forms) as milliseconds from now_sec (seconds since the epoch):
 * >= 0 (0 for a date in the past, clamped to about 24 days), or -1 when value (len
 * bytes, borrowed, need not be NUL-terminated) is neither. Pure: no clock, no locale. */
long http_retry_after_ms(const char *value, size_t len, int64_t now_sec);

/* A pool for one backend (timeouts, max_connections, tls_verify, ca_file from cfg);
 * name is for logs. NULL with a reason in err on failure. */
struct http_pool *http_pool_new(struct ev_loop *loop, const struct cfg_push_backend *cfg, const char *name,
                                char *err, size_t errlen);
/* Cancels what is in flight (their callbacks are not called) and frees (NULL-safe).
 * Not from inside one of the pool's done callbacks. */
void http_pool_free(struct http_pool **pp);
/* Starts a request (req and its strings are copied); done is called once, later, on
 * the loop (it may start new requests). Past max_connections requests in flight
 * (max_connections x pipeline on the own client) a request waits in the pool's queue
 * (FIFO) for room; its timeouts start when it leaves the queue. The own client writes
 * what a loop turn gave a connection in one sendmsg at the end of the turn; with
 * pipeline > 1 a request joins a connection that writes in this turn anyway, else an
 * idle one, and requests that the server will not process (behind a response that
 * closes the connection) go back to the queue unreported; any other failure of a
 * connection fails every request on it (the caller retries: a POST may then arrive
 * twice, as after any lost response). -1 when it cannot even be started (then done is
 * never called). */
int http_send(struct http_pool *pool, const struct http_request *req, http_done_fn done, void *ud);
/* Requests started and not yet done (queued ones included). */
size_t http_pool_in_flight(const struct http_pool *pool);
/* Requests per connection of the own client now: the configured `pipeline`, or without
 * one 1 until the pool's probe has shown that the receiver answers two requests written
 * together (then 8), and 1 for good when it dropped the second. */
size_t http_pool_pipeline_depth(const struct http_pool *pool);
/* Requests sent again, not reported, because the probe's receiver dropped them. */
uint64_t http_pool_pipeline_resent(const struct http_pool *pool);

/* ---- Backends ------------------------------------------------------------------
 * A backend turns one event into zero or more requests (HTTP, or an IQ on the bus),
 * and reports each attempt's outcome; the core (pusher/main.c) retries with backoff
 * and jitter within the backend's max_retries and deadline, counts, and acknowledges
 * the event to its emitter when every backend that took it is finished. */
enum push_outcome {
    PUSH_OK = 0,                   /* accepted by the backend */
    PUSH_SKIP,                     /* nothing to do for this event (filtered out) */
    PUSH_RETRY,                    /* temporary failure: try again later */
    PUSH_FAIL,                     /* permanent failure: give up now (logged, counted) */
};

struct push_backend;
struct push_job;                   /* one (event, backend) delivery, owned by the core */

struct push_backend_ops {
    const char *type;              /* "http", "sns", "xep0357" */
    /* Prepares the backend from its config (b->cfg); -1 with a reason in err refuses the start. */
    int (*init)(struct push_backend *b, char *err, size_t errlen);
    void (*fini)(struct push_backend *b);
    /* One attempt for job (push_job_event(job)); the backend calls push_job_finish
     * exactly once, now or later, with the attempt's outcome. */
    void (*attempt)(struct push_backend *b, struct push_job *job);
    /* Optional: an envelope for the backend (IQ replies, registration changes); true = consumed. */
    bool (*envelope)(struct push_backend *b, const Mk__Envelope *e);
};

struct node;

struct push_backend {
    const struct push_backend_ops *ops;
    struct node *node;             /* the process: loop, bus, cfg, metrics, store (common/node.h) */
    const struct cfg_push_backend *cfg;
    struct ev_loop *loop;
    struct http_pool *http;        /* made by the core from cfg before init */
    void *state;                   /* the backend's own */
};

/* The event of a job (borrowed, valid until the job is finished). */
const Mk__PushEvent *push_job_event(const struct push_job *job);
/* Attempts made before this one (0 on the first). */
unsigned push_job_attempt(const struct push_job *job);
/* Ends one attempt. PUSH_RETRY: again after the backoff (at least retry_after_ms when
 * >= 0), unless the retries or the deadline are spent (then a final failure); why
 * (may be NULL) goes to the log line of a failure. */
void push_job_finish(struct push_job *job, enum push_outcome o, long retry_after_ms, const char *why);

/* The backend types (pusher/webhook.c, pusher/sns.c, pusher/xep0357.c). */
extern const struct push_backend_ops push_http_ops;
extern const struct push_backend_ops push_sns_ops;
extern const struct push_backend_ops push_xep0357_ops;
#endif
