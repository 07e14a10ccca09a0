/* common/metrics.c - Prometheus registry and its tiny HTTP server (/metrics, /healthz, /readyz) on the loop. */
#include "metrics.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define METRICS_MAX_VALUES   32          /* distinct extra-label values per family */
#define METRICS_OTHER        "other"     /* where values beyond the cap are counted */
#define METRICS_HEAD_MAX     4096        /* request head limit, terminator included */
#define METRICS_TIMEOUT      5.0         /* seconds a connection may live */
#define METRICS_MAX_CONNS    64
#define METRICS_ACCEPT_BURST 16          /* accepts per callback, so one burst cannot starve the loop */

static const double default_buckets[] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

/* Names the process metrics take; families may not reuse them. */
static const char *const process_names[] = {
    "meerkat_process_start_time_seconds",
    "meerkat_process_resident_memory_bytes",
    "meerkat_process_cpu_seconds_total",
    "meerkat_process_open_fds",
    "meerkat_process_max_fds",
};

struct metric_series {
    char     *lv;       /* extra label value; NULL when the family has no label */
    double    value;    /* counter or gauge */
    uint64_t *counts;   /* histogram: observations per bucket, not cumulative */
    double    sum;      /* histogram */
    uint64_t  count;    /* histogram */
};

struct metric {
    struct metric   *next;
    enum metric_type type;
    char            *name;
    const char      *help;
    char            *label;      /* extra label name or NULL */
    double          *buckets;    /* histogram upper bounds, ascending, +Inf implied */
    size_t           nbuckets;
    size_t           nseries;
    /* The cap plus one slot for "other". */
    struct metric_series series[METRICS_MAX_VALUES + 1];
};

enum conn_state {
    CONN_READING = 0,   /* collecting the request head */
    CONN_WRITING,       /* response queued in out */
    CONN_LINGER,        /* response sent and write side shut: discard input until EOF */
};

struct metrics_conn {
    struct metrics_conn *next;
    struct metrics      *m;
    int                  fd;
    enum conn_state      state;
    ev_io                io;
    ev_timer             timer;
    struct buf           out;
    size_t               out_off;
    size_t               inlen;
    char                 in[METRICS_HEAD_MAX + 1];   /* + NUL */
};

struct metrics {
    char          *role;
    char          *id;
    struct metric *families;
    struct metric *last;
    double         start_time;

    struct ev_loop      *loop;          /* NULL until metrics_listen */
    int                  lfd;
    int                  port;
    ev_io                accept_io;
    ev_timer             accept_retry;  /* re-arms accept after EMFILE */
    ev_prepare           reaper;        /* frees closed connections */
    metrics_ready_fn    *ready;
    metrics_collect_fn  *collect;
    void                *ud;
    struct metrics_conn *conns;         /* open */
    struct metrics_conn *dead;          /* closed, freed by the reaper */
    int                  nconns;
    int                  max_conns;
    double               timeout;
};

/* ---------------------------------------------------------------------------
 * Number formatting: the shortest form that reads back as the same double, and
 * integers without an exponent, which every Prometheus parser accepts. */

static void fmt_double(char *out, size_t outlen, double v)
{
    if (isnan(v)) {
        snprintf(out, outlen, "NaN");
    } else if (isinf(v)) {
        snprintf(out, outlen, v > 0 ? "+Inf" : "-Inf");
    } else if (v == 0) {
        snprintf(out, outlen, "0");
    } else if (v == trunc(v) && fabs(v) < 1e15) {
        snprintf(out, outlen, "%.0f", v);
    } else {
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(out, outlen, "%.*g", prec, v);
            if (strtod(out, NULL) == v)
                break;
        }
    }
}

/* ---------------------------------------------------------------------------
 * Registration. Misnamed metrics are programming errors: we abort with a line
 * saying why, so they never reach a scrape. */

static void misuse(const char *name, const char *why)
{
    fprintf(stderr, "level=fatal event=metric_misuse name=%s reason=\"%s\"\n", name, why);
    abort();
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static bool valid_name(const char *s, bool is_label)
{
    if (s[0] == '\0')
        return false;
    for (const char *p = s; *p != '\0'; p++) {
        bool alpha = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_';
        bool digit = *p >= '0' && *p <= '9';
        if (!alpha && !(digit && p != s))
            return false;
    }
    return !is_label || strncmp(s, "__", 2) != 0;
}

static bool valid_label_name(const char *s)
{
    return valid_name(s, true) && strcmp(s, "role") != 0 && strcmp(s, "id") != 0 && strcmp(s, "le") != 0 &&
           strcmp(s, "quantile") != 0;
}

/* One label name, or two as "a,b". */
static bool valid_label_names(const char *label)
{
    const char *comma = strchr(label, ',');
    if (comma == NULL)
        return valid_label_name(label);
    char first[64];
    size_t n = (size_t)(comma - label);
    if (n >= sizeof first)
        return false;
    memcpy(first, label, n);
    first[n] = '\0';
    return valid_label_name(first) && valid_label_name(comma + 1) && strcmp(first, comma + 1) != 0;
}

/* Units that have a base unit Prometheus prefers (seconds, bytes). */
static bool has_non_base_unit(const char *name)
{
    static const char *const bad[] = {
        "ms", "us", "ns", "millis", "milliseconds", "microseconds", "nanoseconds", "minutes",
        "hours", "days", "kb", "mb", "gb", "kilobytes", "megabytes", "gigabytes", "bits",
    };
    const char *p = name;
    while (*p != '\0') {
        size_t n = strcspn(p, "_");
        for (size_t i = 0; i < MK_ARRAY_LEN(bad); i++)
            if (strlen(bad[i]) == n && strncmp(p, bad[i], n) == 0)
                return true;
        p += n;
        if (*p == '_')
            p++;
    }
    return false;
}

static struct metric *family_find(struct metrics *m, const char *name)
{
    for (struct metric *f = m->families; f != NULL; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static struct metric *family_new(struct metrics *m, enum metric_type type, const char *name,
                                 const char *help, const char *label)
{
    if (m == NULL || name == NULL || help == NULL)
        misuse(name ? name : "(null)", "NULL registry, name or help");
    if (!valid_name(name, false) || strncmp(name, "meerkat_", 8) != 0)
        misuse(name, "names match meerkat_[a-zA-Z0-9_]*");
    if (has_non_base_unit(name))
        misuse(name, "use base units (_seconds, _bytes)");
    if (type == METRIC_COUNTER && !ends_with(name, "_total"))
        misuse(name, "counter names end in _total");
    if (type != METRIC_COUNTER && ends_with(name, "_total"))
        misuse(name, "only counter names end in _total");
    if (type == METRIC_HISTOGRAM && (ends_with(name, "_bucket") || ends_with(name, "_sum") ||
                                     ends_with(name, "_count")))
        misuse(name, "histogram names may not end in _bucket, _sum or _count");
    if (label != NULL && (!valid_label_names(label) || strchr(label, ',') != strrchr(label, ',')))
        misuse(name, "bad or reserved extra label name");
    if (family_find(m, name) != NULL)
        misuse(name, "registered twice");
    for (size_t i = 0; i < MK_ARRAY_LEN(process_names); i++)
        if (strcmp(name, process_names[i]) == 0)
            misuse(name, "reserved for the process metrics");

    struct metric *f = xcalloc(1, sizeof *f);
    f->type = type;
    f->name = xstrdup(name);
    f->help = help;
    f->label = xstrdup(label);
    if (m->last != NULL)
        m->last->next = f;
    else
        m->families = f;
    m->last = f;
    return f;
}

static struct metric_series *series_add(struct metric *f, const char *lv)
{
    struct metric_series *s = &f->series[f->nseries++];
    s->lv = xstrdup(lv);
    if (f->type == METRIC_HISTOGRAM)
        s->counts = xcalloc(f->nbuckets ? f->nbuckets : 1, sizeof *s->counts);
    return s;
}

/* An unlabelled family has its one series from the start, so it renders 0 before
 * the first update instead of being absent. */
static void family_ready(struct metric *f)
{
    if (f->label == NULL)
        series_add(f, NULL);
}

/* Registers a counter (name must end in _total). Aborts on a misnamed or duplicate
 * metric. help is borrowed; name and label are copied. The family is owned by m. */
struct metric *metrics_counter(struct metrics *m, const char *name, const char *help, const char *label)
{
    struct metric *f = family_new(m, METRIC_COUNTER, name, help, label);
    family_ready(f);
    return f;
}

/* Registers a gauge; same rules as metrics_counter except the name must not end in _total. */
struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help, const char *label)
{
    struct metric *f = family_new(m, METRIC_GAUGE, name, help, label);
    family_ready(f);
    return f;
}

/* Registers a histogram. buckets (borrowed, copied) must be finite and strictly
 * ascending; a trailing +Inf is accepted and dropped since it is always implied.
 * NULL gives latency buckets from 100 us to 10 s. Aborts on misuse. */
struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help, const char *label,
                                 const double *buckets, size_t nbuckets)
{
    if (buckets == NULL) {
        buckets = default_buckets;
        nbuckets = MK_ARRAY_LEN(default_buckets);
    }
    if (nbuckets > 0 && isinf(buckets[nbuckets - 1]) && buckets[nbuckets - 1] > 0)
        nbuckets--;
    for (size_t i = 0; i < nbuckets; i++)
        if (!isfinite(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1])))
            misuse(name ? name : "(null)", "buckets must be finite and strictly ascending");
    struct metric *f = family_new(m, METRIC_HISTOGRAM, name, help, label);
    f->nbuckets = nbuckets;
    f->buckets = xmalloc((nbuckets ? nbuckets : 1) * sizeof *f->buckets);
    if (nbuckets > 0)
        memcpy(f->buckets, buckets, nbuckets * sizeof *f->buckets);
    family_ready(f);
    return f;
}

/* ---------------------------------------------------------------------------
 * Updates */

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    size_t len;
    unsigned min;
    if (p[0] < 0x80)
        return 1;
    else if ((p[0] & 0xe0) == 0xc0)
        len = 2, min = 0x80;
    else if ((p[0] & 0xf0) == 0xe0)
        len = 3, min = 0x800;
    else if ((p[0] & 0xf8) == 0xf0)
        len = 4, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    unsigned cp = p[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* A copy of s with every byte that is not part of valid UTF-8 replaced by '?':
 * Prometheus rejects a whole scrape over one invalid label value. NULL if s is
 * already valid (the usual case). */
static char *utf8_fixed(const char *s)
{
    size_t n = strlen(s), i = 0;
    char *fixed = NULL;
    while (i < n) {
        size_t k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k == 0) {
            if (fixed == NULL)
                fixed = xstrdup(s);
            fixed[i] = '?';
            k = 1;
        }
        i += k;
    }
    return fixed;
}

static char *label_value_dup(const char *s)
{
    char *fixed = utf8_fixed(s);
    return fixed != NULL ? fixed : xstrdup(s);
}

static struct metric_series *series_lookup_raw(struct metric *f, const char *lv)
{
    for (size_t i = 0; i < f->nseries; i++)
        if (strcmp(f->series[i].lv, lv) == 0)
            return &f->series[i];
    return NULL;
}

/* Finds the series of lv as stored: invalid UTF-8 is stored repaired, so a miss on
 * such a value retries with the repaired form. *fixedp (if not NULL) receives that
 * form for the caller to free. */
static struct metric_series *series_lookup(struct metric *f, const char *lv, char **fixedp)
{
    if (f->label == NULL)
        return &f->series[0];
    struct metric_series *s = series_lookup_raw(f, lv);
    if (s != NULL)
        return s;
    char *fixed = utf8_fixed(lv);
    if (fixed != NULL)
        s = series_lookup_raw(f, fixed);
    if (fixedp != NULL)
        *fixedp = fixed;
    else
        free(fixed);
    return s;
}

/* Finds or creates the series for lv; a labelled family given NULL, or given a new
 * value once it holds METRICS_MAX_VALUES, counts under "other". */
static struct metric_series *series_get(struct metric *f, const char *lv)
{
    if (f->label != NULL && lv == NULL)
        lv = METRICS_OTHER;
    char *fixed = NULL;
    struct metric_series *s = series_lookup(f, lv, &fixed);
    if (s == NULL) {
        if (f->nseries < METRICS_MAX_VALUES) {
            s = series_add(f, fixed != NULL ? fixed : lv);
        } else {
            s = series_lookup_raw(f, METRICS_OTHER);
            if (s == NULL)
                s = series_add(f, METRICS_OTHER);
        }
    }
    free(fixed);
    return s;
}

static void need_type(struct metric *f, bool ok, const char *why)
{
    if (f == NULL)
        misuse("(null)", "update of a NULL metric");
    if (!ok)
        misuse(f->name, why);
}

/* Adds 1 to a counter or gauge. Borrows lv. */
void metric_inc(struct metric *f, const char *lv)
{
    metric_add(f, lv, 1);
}

/* Adds v to a counter (v < 0 or NaN is ignored: counters never go down) or a gauge. */
void metric_add(struct metric *f, const char *lv, double v)
{
    need_type(f, f == NULL || f->type != METRIC_HISTOGRAM, "add on a histogram");
    if (f->type == METRIC_COUNTER && !(v >= 0))
        return;
    series_get(f, lv)->value += v;
}

/* Sets a gauge, or a counter mirrored from a count kept elsewhere. */
void metric_set(struct metric *f, const char *lv, double v)
{
    need_type(f, f == NULL || f->type != METRIC_HISTOGRAM, "set on a histogram");
    series_get(f, lv)->value = v;
}

/* Records one observation in a histogram; NaN is dropped. */
void metric_observe(struct metric *f, const char *lv, double v)
{
    need_type(f, f == NULL || f->type == METRIC_HISTOGRAM, "observe on a counter or gauge");
    if (isnan(v))
        return;
    struct metric_series *s = series_get(f, lv);
    size_t i = 0;
    while (i < f->nbuckets && v > f->buckets[i])
        i++;
    if (i < f->nbuckets)
        s->counts[i]++;
    s->count++;
    s->sum += v;
}

/* The value of a counter or gauge series, or a histogram's observation count;
 * 0 for a label value never seen. Creates nothing. */
double metric_value(struct metric *f, const char *lv)
{
    need_type(f, true, "");
    struct metric_series *s = series_lookup(f, lv != NULL || f->label == NULL ? lv : METRICS_OTHER, NULL);
    if (s == NULL)
        return 0;
    return f->type == METRIC_HISTOGRAM ? (double)s->count : s->value;
}

/* ---------------------------------------------------------------------------
 * Rendering: text exposition format 0.0.4 */

static void put_escaped(struct buf *out, const char *s, bool quote)
{
    for (const char *p = s; *p != '\0'; p++) {
        switch (*p) {
        case '\\': buf_append(out, "\\\\", 2); break;
        case '\n': buf_append(out, "\\n", 2); break;
        case '"':
            if (quote)
                buf_append(out, "\\\"", 2);
            else
                buf_append(out, "\"", 1);
            break;
        default: buf_append(out, p, 1); break;
        }
    }
}

static void put_header(struct buf *out, const char *name, const char *help, const char *type)
{
    buf_printf(out, "# HELP %s ", name);
    put_escaped(out, help, false);
    buf_printf(out, "\n# TYPE %s %s\n", name, type);
}

/* Writes name{role="..",id=".."[,label="lv"][,le="x"]} value\n */
static void put_sample(struct buf *out, const struct metrics *m, const char *name, const char *suffix,
                       const char *label, const char *lv, const char *le, double v)
{
    char num[64];
    buf_printf(out, "%s%s{role=\"", name, suffix);
    put_escaped(out, m->role, true);
    buf_append_str(out, "\",id=\"");
    put_escaped(out, m->id, true);
    buf_append(out, "\"", 1);
    const char *comma = label != NULL ? strchr(label, ',') : NULL;
    if (comma != NULL) {
        /* Two labels: the value is "first,second", split at its first comma. */
        const char *vc = strchr(lv, ',');
        size_t vlen = vc != NULL ? (size_t)(vc - lv) : strlen(lv);
        char *first = xstrndup(lv, vlen);
        buf_printf(out, ",%.*s=\"", (int)(comma - label), label);
        put_escaped(out, first, true);
        buf_printf(out, "\",%s=\"", comma + 1);
        put_escaped(out, vc != NULL ? vc + 1 : "", true);
        buf_append(out, "\"", 1);
        free(first);
    } else if (label != NULL) {
        buf_printf(out, ",%s=\"", label);
        put_escaped(out, lv, true);
        buf_append(out, "\"", 1);
    }
    if (le != NULL)
        buf_printf(out, ",le=\"%s\"", le);
    fmt_double(num, sizeof num, v);
    buf_printf(out, "} %s\n", num);
}

static void render_family(const struct metrics *m, const struct metric *f, struct buf *out)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    put_header(out, f->name, f->help, type_names[f->type]);
    for (size_t i = 0; i < f->nseries; i++) {
        const struct metric_series *s = &f->series[i];
        if (f->type != METRIC_HISTOGRAM) {
            put_sample(out, m, f->name, "", f->label, s->lv, NULL, s->value);
            continue;
        }
        uint64_t cum = 0;
        char le[64];
        for (size_t b = 0; b < f->nbuckets; b++) {
            cum += s->counts[b];
            fmt_double(le, sizeof le, f->buckets[b]);
            put_sample(out, m, f->name, "_bucket", f->label, s->lv, le, (double)cum);
        }
        put_sample(out, m, f->name, "_bucket", f->label, s->lv, "+Inf", (double)s->count);
        put_sample(out, m, f->name, "_sum", f->label, s->lv, NULL, s->sum);
        put_sample(out, m, f->name, "_count", f->label, s->lv, NULL, (double)s->count);
    }
}

static double process_rss_bytes(void)
{
    FILE *fp = fopen("/proc/self/statm", "re");
    if (fp == NULL)
        return 0;
    unsigned long size = 0, resident = 0;
    int n = fscanf(fp, "%lu %lu", &size, &resident);
    fclose(fp);
    if (n != 2)
        return 0;
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

static double process_cpu_seconds(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == -1)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double process_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n > 0 ? n - 1 : 0;   /* not counting the directory's own descriptor */
}

/* The soft limit on open files (RLIMIT_NOFILE): what open_fds saturates against. */
static double process_max_fds(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1 || rl.rlim_cur == RLIM_INFINITY)
        return 0;
    return (double)rl.rlim_cur;
}

/* The real start of the process: field 22 of /proc/self/stat is its start in clock
 * ticks after boot, and btime in /proc/stat is the boot time. */
static double process_start_time(void)
{
    char line[1024];
    double start = 0;
    FILE *fp = fopen("/proc/self/stat", "re");
    if (fp == NULL)
        return 0;
    size_t n = fread(line, 1, sizeof line - 1, fp);
    fclose(fp);
    line[n] = '\0';
    /* The command name may hold spaces and parentheses: fields start after the last ')'. */
    char *p = strrchr(line, ')');
    unsigned long long ticks = 0;
    if (p == NULL)
        return 0;
    p++;
    for (int field = 3; field <= 22 && p != NULL; field++) {
        p = strchr(p + 1, ' ');
        if (p != NULL && field == 21)
            ticks = strtoull(p + 1, NULL, 10);
    }
    fp = fopen("/proc/stat", "re");
    if (fp == NULL)
        return 0;
    unsigned long long btime = 0;
    while (fgets(line, sizeof line, fp) != NULL)
        if (sscanf(line, "btime %llu", &btime) == 1)
            break;
    fclose(fp);
    long hz = sysconf(_SC_CLK_TCK);
    if (btime > 0 && ticks > 0 && hz > 0)
        start = (double)btime + (double)ticks / (double)hz;
    return start;
}

static void render_process(const struct metrics *m, struct buf *out)
{
    put_header(out, process_names[0], "Start time of the process since the Unix epoch in seconds.", "gauge");
    put_sample(out, m, process_names[0], "", NULL, NULL, NULL, m->start_time);
    put_header(out, process_names[1], "Resident memory size in bytes.", "gauge");
    put_sample(out, m, process_names[1], "", NULL, NULL, NULL, process_rss_bytes());
    put_header(out, process_names[2], "Total user and system CPU time spent in seconds.", "counter");
    put_sample(out, m, process_names[2], "", NULL, NULL, NULL, process_cpu_seconds());
    put_header(out, process_names[3], "Number of open file descriptors.", "gauge");
    put_sample(out, m, process_names[3], "", NULL, NULL, NULL, process_open_fds());
    put_header(out, process_names[4], "Maximum number of open file descriptors (the soft limit).", "gauge");
    put_sample(out, m, process_names[4], "", NULL, NULL, NULL, process_max_fds());
}

/* Appends every registered family in registration order, then the process metrics.
 * Borrows m and out. */
void metrics_render(struct metrics *m, struct buf *out)
{
    for (const struct metric *f = m->families; f != NULL; f = f->next)
        render_family(m, f, out);
    render_process(m, out);
}

/* ---------------------------------------------------------------------------
 * Lifetime */

/* Creates an empty registry whose series carry role and id (both copied).
 * Returns a registry the caller frees with metrics_free. */
struct metrics *metrics_new(const char *role, const char *id)
{
    struct metrics *m = xcalloc(1, sizeof *m);
    m->role = label_value_dup(role != NULL ? role : "");
    m->id = label_value_dup(id != NULL ? id : "");
    m->lfd = -1;
    m->port = -1;
    m->max_conns = METRICS_MAX_CONNS;
    m->timeout = METRICS_TIMEOUT;
    m->start_time = process_start_time();
    if (m->start_time <= 0)
        m->start_time = (double)mk_now_us() / 1e6;
    return m;
}

static void conn_destroy(struct metrics_conn *c);

/* Closes the listener and every connection, then frees the registry and its
 * families. Consumes *mp (NULL on return); NULL-safe. Not to be called from a
 * metrics callback (ready, collect). */
void metrics_free(struct metrics **mp)
{
    if (mp == NULL || *mp == NULL)
        return;
    struct metrics *m = *mp;
    if (m->loop != NULL) {
        ev_io_stop(m->loop, &m->accept_io);
        ev_timer_stop(m->loop, &m->accept_retry);
        ev_prepare_stop(m->loop, &m->reaper);
        while (m->conns != NULL) {
            struct metrics_conn *c = m->conns;
            m->conns = c->next;
            conn_destroy(c);
        }
        while (m->dead != NULL) {
            struct metrics_conn *c = m->dead;
            m->dead = c->next;
            conn_destroy(c);
        }
    }
    if (m->lfd != -1)
        close(m->lfd);
    struct metric *f = m->families;
    while (f != NULL) {
        struct metric *next = f->next;
        for (size_t i = 0; i < f->nseries; i++) {
            free(f->series[i].lv);
            free(f->series[i].counts);
        }
        free(f->name);
        free(f->label);
        free(f->buckets);
        free(f);
        f = next;
    }
    free(m->role);
    free(m->id);
    free(m);
    *mp = NULL;
}

/* ---------------------------------------------------------------------------
 * HTTP server */

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);

/* Stops and closes without freeing; safe inside the connection's own callbacks.
 * The struct waits on m->dead until the reaper runs. */
static void conn_close(struct metrics_conn *c)
{
    struct metrics *m = c->m;
    ev_io_stop(m->loop, &c->io);
    ev_timer_stop(m->loop, &c->timer);
    if (c->fd != -1) {
        close(c->fd);
        c->fd = -1;
    }
    buf_release(&c->out);
    for (struct metrics_conn **pp = &m->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    m->nconns--;
    c->next = m->dead;
    m->dead = c;
    ev_prepare_start(m->loop, &m->reaper);
}

/* Outside any of the connection's callbacks only. */
static void conn_destroy(struct metrics_conn *c)
{
    if (c->fd != -1) {
        ev_io_stop(c->m->loop, &c->io);
        ev_timer_stop(c->m->loop, &c->timer);
        close(c->fd);
    }
    buf_release(&c->out);
    free(c);
}

/* An ev_prepare runs before the loop next blocks, after every callback of this
 * iteration has returned: the earliest moment a closed connection may be freed.
 * (An ev_check would wait for the next event to wake the loop.) */
static void reaper_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct metrics *m = w->data;
    while (m->dead != NULL) {
        struct metrics_conn *c = m->dead;
        m->dead = c->next;
        conn_destroy(c);
    }
    ev_prepare_stop(loop, w);
}

static void conn_watch(struct metrics_conn *c, int events)
{
    if ((c->io.events & (EV_READ | EV_WRITE)) == events && ev_is_active(&c->io))
        return;
    ev_io_stop(c->m->loop, &c->io);
    ev_io_set(&c->io, c->fd, events);
    ev_io_start(c->m->loop, &c->io);
}

/* Reads and discards what the client still sends after the response, so closing
 * does not reset the connection and destroy the response in flight. */
static void conn_drain(struct metrics_conn *c)
{
    char scratch[4096];
    for (;;) {
        ssize_t n = recv(c->fd, scratch, sizeof scratch, 0);
        if (n > 0)
            continue;
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        conn_close(c);
        return;
    }
}

static void conn_flush(struct metrics_conn *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_watch(c, EV_WRITE);
            return;
        }
        log_debug("metrics_write_failed", "errno=%d", errno);
        conn_close(c);
        return;
    }
    buf_release(&c->out);
    c->out_off = 0;
    c->state = CONN_LINGER;
    if (shutdown(c->fd, SHUT_WR) == -1) {
        conn_close(c);
        return;
    }
    conn_watch(c, EV_READ);
    conn_drain(c);
}

static const char *status_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default:  return "Error";
    }
}

/* Queues a complete response and starts sending it. body is borrowed. */
static void conn_respond(struct metrics_conn *c, int status, const char *ctype, const char *extra,
                         const char *body, size_t bodylen, bool head_only)
{
    buf_printf(&c->out,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n",
               status, status_reason(status), ctype, bodylen, extra ? extra : "");
    if (!head_only)
        buf_append(&c->out, body, bodylen);
    c->state = CONN_WRITING;
    conn_flush(c);
}

static void conn_respond_text(struct metrics_conn *c, int status, const char *extra, const char *body,
                              bool head_only)
{
    conn_respond(c, status, "text/plain; charset=utf-8", extra, body, strlen(body), head_only);
}

static bool token_eq(const char *p, size_t n, const char *s)
{
    return strlen(s) == n && memcmp(p, s, n) == 0;
}

/* Parses the request line of a complete head and answers it. */
static void conn_handle(struct metrics_conn *c)
{
    struct metrics *m = c->m;
    const char *line = c->in;
    size_t linelen = strcspn(line, "\r\n");   /* in[] is NUL-terminated by the caller */

    /* METHOD SP request-target SP HTTP-version */
    const char *sp1 = memchr(line, ' ', linelen);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', linelen - (size_t)(sp1 + 1 - line)) : NULL;
    if (sp1 == NULL || sp2 == NULL || sp1 == line || sp2 == sp1 + 1) {
        conn_respond_text(c, 400, NULL, "bad request\n", false);
        return;
    }
    const char *version = sp2 + 1;
    size_t versionlen = linelen - (size_t)(version - line);
    if (versionlen != 8 || memcmp(version, "HTTP/1.", 7) != 0 || version[7] < '0' || version[7] > '9') {
        conn_respond_text(c, 400, NULL, "bad request\n", false);
        return;
    }
    const char *method = line;
    size_t methodlen = (size_t)(sp1 - line);
    const char *target = sp1 + 1;
    size_t targetlen = (size_t)(sp2 - target);
    size_t pathlen = 0;
    while (pathlen < targetlen && target[pathlen] != '?' && target[pathlen] != '#')
        pathlen++;

    bool is_metrics = token_eq(target, pathlen, "/metrics");
    bool is_healthz = token_eq(target, pathlen, "/healthz");
    bool is_readyz = token_eq(target, pathlen, "/readyz");
    if (!is_metrics && !is_healthz && !is_readyz) {
        conn_respond_text(c, 404, NULL, "not found\n", false);
        return;
    }
    bool head_only = token_eq(method, methodlen, "HEAD");
    if (!head_only && !token_eq(method, methodlen, "GET")) {
        conn_respond_text(c, 405, "Allow: GET, HEAD\r\n", "method not allowed\n", false);
        return;
    }

    if (is_healthz) {
        conn_respond_text(c, 200, NULL, "ok\n", head_only);
    } else if (is_readyz) {
        char why[200] = "";
        if (m->ready == NULL || m->ready(m->ud, why, sizeof why)) {
            conn_respond_text(c, 200, NULL, "ready\n", head_only);
        } else {
            char body[256];
            why[sizeof why - 1] = '\0';
            snprintf(body, sizeof body, "not ready: %s\n", why[0] != '\0' ? why : "unknown");
            conn_respond_text(c, 503, NULL, body, head_only);
        }
    } else {
        struct buf body;
        buf_init(&body);
        if (m->collect != NULL)
            m->collect(m->ud);
        metrics_render(m, &body);
        conn_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, body.data, body.len, head_only);
        buf_release(&body);
    }
}

/* Finds the end of the request head: a blank line (CRLF CRLF, or bare LF LF from
 * hand-typed requests). */
static bool head_complete(const char *p, size_t n)
{
    return memmem(p, n, "\r\n\r\n", 4) != NULL || memmem(p, n, "\n\n", 2) != NULL;
}

static void conn_read(struct metrics_conn *c)
{
    for (;;) {
        size_t room = METRICS_HEAD_MAX - c->inlen;
        if (room == 0) {
            c->in[c->inlen] = '\0';
            conn_respond_text(c, 431, NULL, "request head too large\n", false);
            return;
        }
        ssize_t n = recv(c->fd, c->in + c->inlen, room, 0);
        if (n > 0) {
            size_t from = c->inlen > 3 ? c->inlen - 3 : 0;
            c->inlen += (size_t)n;
            if (head_complete(c->in + from, c->inlen - from)) {
                c->in[c->inlen] = '\0';
                conn_handle(c);
                return;
            }
            continue;
        }
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        conn_close(c);   /* EOF or reset before a whole request */
        return;
    }
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct metrics_conn *c = w->data;
    switch (c->state) {
    case CONN_READING: conn_read(c); break;
    case CONN_WRITING: conn_flush(c); break;
    case CONN_LINGER:  conn_drain(c); break;
    }
}

static void conn_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct metrics_conn *c = w->data;
    log_debug("metrics_conn_timeout", "state=%d", (int)c->state);
    conn_close(c);
}

/* Over the limit: a best-effort 503 that fits any socket buffer, then close. */
static void reject_busy(int fd)
{
    static const char busy[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n";
    ssize_t n = send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
    close(fd);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct metrics *m = w->data;
    for (int i = 0; i < METRICS_ACCEPT_BURST; i++) {
        int fd = accept4(m->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* The pending connection stays readable: pause instead of spinning. */
                log_warn("metrics_accept_paused", "errno=%d", errno);
                ev_io_stop(loop, &m->accept_io);
                ev_timer_set(&m->accept_retry, 1.0, 0.);
                ev_timer_start(loop, &m->accept_retry);
            }
            return;
        }
        if (m->nconns >= m->max_conns) {
            reject_busy(fd);
            continue;
        }
        struct metrics_conn *c = xcalloc(1, sizeof *c);
        c->m = m;
        c->fd = fd;
        c->state = CONN_READING;
        ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
        c->io.data = c;
        ev_timer_init(&c->timer, conn_timeout_cb, m->timeout, 0.);
        c->timer.data = c;
        c->next = m->conns;
        m->conns = c;
        m->nconns++;
        ev_io_start(loop, &c->io);
        ev_timer_start(loop, &c->timer);
    }
}

static void accept_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct metrics *m = w->data;
    ev_io_start(loop, &m->accept_io);
}

static int resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *sslen)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    /* Numeric addresses only: name resolution could block the loop. */
    if (host == NULL || host[0] == '\0' || strcmp(host, "*") == 0)
        host = "0.0.0.0";
    else if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        *sslen = sizeof *sin;
        return 0;
    }
    const char *h6 = host;
    char tmp[64];
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']' && hl - 2 < sizeof tmp) {
        memcpy(tmp, host + 1, hl - 2);
        tmp[hl - 2] = '\0';
        h6 = tmp;
    }
    if (inet_pton(AF_INET6, h6, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        *sslen = sizeof *sin6;
        return 0;
    }
    return -1;
}

/* Binds host:port (numeric address, "localhost", or NULL/""/"*" for every IPv4
 * address) and serves on loop until metrics_free. ready, collect and ud are
 * borrowed and called from the loop. Returns 0, or -1 with a sentence in err. */
int metrics_listen(struct metrics *m, struct ev_loop *loop, const char *host, int port,
                   metrics_ready_fn *ready, metrics_collect_fn *collect, void *ud,
                   char *err, size_t errlen)
{
    if (m->loop != NULL) {
        snprintf(err, errlen, "metrics already listening on port %d", m->port);
        return -1;
    }
    if (port < 0 || port > 65535) {
        snprintf(err, errlen, "metrics port %d out of range", port);
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (resolve(host, port, &ss, &sslen) == -1) {
        snprintf(err, errlen, "metrics host '%s' is not a numeric address", host);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, errlen, "metrics socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == -1 ||
        bind(fd, (struct sockaddr *)&ss, sslen) == -1 || listen(fd, 128) == -1) {
        snprintf(err, errlen, "metrics listen on %s:%d: %s", host ? host : "*", port, strerror(errno));
        close(fd);
        return -1;
    }
    struct sockaddr_storage bound;
    socklen_t boundlen = sizeof bound;
    if (getsockname(fd, (struct sockaddr *)&bound, &boundlen) == -1) {
        snprintf(err, errlen, "metrics getsockname: %s", strerror(errno));
        close(fd);
        return -1;
    }
    m->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    m->lfd = fd;
    m->loop = loop;
    m->ready = ready;
    m->collect = collect;
    m->ud = ud;
    ev_io_init(&m->accept_io, accept_cb, fd, EV_READ);
    m->accept_io.data = m;
    ev_timer_init(&m->accept_retry, accept_retry_cb, 1.0, 0.);
    m->accept_retry.data = m;
    ev_prepare_init(&m->reaper, reaper_cb);
    m->reaper.data = m;
    ev_io_start(loop, &m->accept_io);
    return 0;
}

/* The bound port, or -1 before metrics_listen succeeded. */
int metrics_port(const struct metrics *m)
{
    return m->port;
}

/* Sets how long a connection may live, from accept to close (default 5 s); applies
 * to connections accepted afterwards. For tests. */
void metrics_set_timeout(struct metrics *m, double seconds)
{
    m->timeout = seconds > 0 ? seconds : METRICS_TIMEOUT;
}

/* Sets how many connections are served at once (default 64); further ones get a
 * 503 and are closed. For tests. */
void metrics_set_max_conns(struct metrics *m, int max_conns)
{
    m->max_conns = max_conns > 0 ? max_conns : METRICS_MAX_CONNS;
}
