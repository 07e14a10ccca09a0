/* common/metrics.h - Prometheus counters, gauges and histograms, served with /healthz and /readyz over HTTP on the loop. */
#ifndef MK_COMMON_METRICS_H
#define MK_COMMON_METRICS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "buf.h"

/* Every series carries the constant labels role="<role>" and id="<role>.<n>" and
 * may add one extra label with a bounded set of values (e.g. kind="message").
 * Names follow Prometheus's guide: prefix meerkat_, base units, _total on counters. */
struct metrics;
struct metric;

enum metric_type {
    METRIC_COUNTER = 0,
    METRIC_GAUGE,
    METRIC_HISTOGRAM,
};

/* Readiness callback: returns true when the process can serve now, and may write a
 * short reason into why. */
typedef bool metrics_ready_fn(void *ud, char *why, size_t whylen);
/* Called while rendering /metrics so the process can refresh gauges first. */
typedef void metrics_collect_fn(void *ud);

struct metrics *metrics_new(const char *role, const char *id);
void metrics_free(struct metrics **mp);

/* Registers a metric; help is borrowed (a string literal). label is the name of the
 * one extra label or NULL; or two names as "a,b", whose values are then given as one
 * lv "va,vb" (split at its first comma: the first value must hold none), counted
 * together against the family's value limit. For histograms, buckets (upper bounds, ascending) is
 * copied; NULL gives latency buckets from 100 us to 10 s. Returns the family. */
struct metric *metrics_counter(struct metrics *m, const char *name, const char *help, const char *label);
struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help, const char *label);
struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help, const char *label,
                                 const double *buckets, size_t nbuckets);

/* Updates; lv is the extra label's value (NULL when the family has no label). A
 * family keeps at most 32 label values; further values are counted under "other". */
void metric_inc(struct metric *f, const char *lv);
void metric_add(struct metric *f, const char *lv, double v);
void metric_set(struct metric *f, const char *lv, double v);
void metric_observe(struct metric *f, const char *lv, double v);
double metric_value(struct metric *f, const char *lv);   /* counter/gauge value; for tests */
/* For a histogram, metric_value gives the number of observations. */

/* Appends the text exposition format (version 0.0.4) of every family to out. */
void metrics_render(struct metrics *m, struct buf *out);

/* Starts the HTTP listener on host:port on loop: GET /metrics, /healthz (always 200
 * "ok" while the loop runs), /readyz (200 or 503 from ready()). Other paths 404,
 * other methods 405; requests over 4 KiB or slower than 5 s are closed. Returns 0,
 * or -1 with err. Port 0 picks a free port; metrics_port() tells which. */
int metrics_listen(struct metrics *m, struct ev_loop *loop, const char *host, int port,
                   metrics_ready_fn *ready, metrics_collect_fn *collect, void *ud,
                   char *err, size_t errlen);
int metrics_port(const struct metrics *m);

/* Test hooks: how long a connection may live from accept to close (default
 * 5 s), and how many are served at once (default 64; more get a 503 and are closed).
 * They apply to connections accepted afterwards. */
void metrics_set_timeout(struct metrics *m, double seconds);
void metrics_set_max_conns(struct metrics *m, int max_conns);
#endif
