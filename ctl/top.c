/* ctl/top.c - meerkat ctl top: a live per-process view (sessions, msgs/s, queues, CPU, RSS, loop lag) from each /metrics. */
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "cfg.h"
#include "ctl.h"
#include "util.h"

#define TOP_FETCH_TIMEOUT_MS 1000
#define TOP_MAX_BODY         (4u << 20)   /* a /metrics body is a few tens of KiB */
#define TOP_LAG_BUCKETS      32

/* What each role's columns are made of: the families summed (every label value). */
struct top_role {
    const char *sessions;        /* gauge, or NULL: the role holds no sessions */
    const char *work[2];         /* counters whose rate is the MSGS/S column */
    const char *queues[2];       /* gauges summed into the QUEUE column */
};

static const struct top_role top_roles[CFG_ROLE_COUNT] = {
    [CFG_ROLE_C2S] = {"meerkat_c2s_sessions", {"meerkat_c2s_stanzas_in_total", NULL},
                      {"meerkat_c2s_routes_pending", NULL}},
    [CFG_ROLE_ROUTER] = {"meerkat_router_sessions", {"meerkat_router_routed_total", NULL},
                         {"meerkat_router_intake_waiting", NULL}},
    [CFG_ROLE_MAM] = {NULL, {"meerkat_mam_archive_writes_total", "meerkat_mam_offline_total"},
                      {"meerkat_mam_archive_pending", "meerkat_mam_offline_queued"}},
    [CFG_ROLE_PUSHER] = {NULL, {"meerkat_push_events_received_total", NULL}, {"meerkat_push_events_pending", NULL}},
    [CFG_ROLE_GD] = {"meerkat_gd_sessions", {"meerkat_gd_forwards_total", "meerkat_gd_injected_total"},
                     {"meerkat_gd_waiting", "meerkat_gd_link_queue"}},
};

/* One scrape of one process. */
struct top_snap {
    bool up;
    int64_t at_us;               /* monotonic */
    double sessions, work, queue, rss, cpu;
    size_t nlag;                 /* meerkat_loop_lag_seconds buckets, cumulative, ascending le */
    double lag_le[TOP_LAG_BUCKETS];
    double lag_cum[TOP_LAG_BUCKETS];
};

static bool is_one_of(const char *name, size_t len, const char *const *set, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] != NULL && strlen(set[i]) == len && memcmp(set[i], name, len) == 0)
            return true;
    return false;
}

static bool name_is(const char *name, size_t len, const char *want)
{
    return want != NULL && strlen(want) == len && memcmp(want, name, len) == 0;
}

/* Reads the samples of one exposition text (NUL-terminated) into s. */
static void top_parse(const struct top_role *r, const char *text, struct top_snap *s)
{
    for (const char *line = text; *line != '\0';) {
        const char *eol = strchr(line, '\n');
        size_t linelen = eol != NULL ? (size_t)(eol - line) : strlen(line);
        const char *next = eol != NULL ? eol + 1 : line + linelen;
        if (linelen == 0 || line[0] == '#') {
            line = next;
            continue;
        }
        size_t nlen = strcspn(line, "{ \n");
        const char *sp = NULL;
        for (const char *p = line + linelen; p > line; p--)
            if (p[-1] == ' ') {
                sp = p;
                break;
            }
        if (sp == NULL || nlen > linelen) {
            line = next;
            continue;
        }
        double v = strtod(sp, NULL);
        if (name_is(line, nlen, r->sessions))
            s->sessions += v;
        else if (is_one_of(line, nlen, r->work, 2))
            s->work += v;
        else if (is_one_of(line, nlen, r->queues, 2))
            s->queue += v;
        else if (name_is(line, nlen, "meerkat_process_resident_memory_bytes"))
            s->rss = v;
        else if (name_is(line, nlen, "meerkat_process_cpu_seconds_total"))
            s->cpu = v;
        else if (name_is(line, nlen, "meerkat_loop_lag_seconds_bucket") && s->nlag < TOP_LAG_BUCKETS) {
            const char *le = strstr(line, ",le=\"");   /* not the "le=" that ends "role=" */
            if (le != NULL && le < sp) {
                s->lag_le[s->nlag] = strtod(le + 5, NULL);   /* "+Inf" reads as infinity */
                s->lag_cum[s->nlag] = v;
                s->nlag++;
            }
        }
        line = next;
    }
}

static void top_scrape(const struct cfg_proc *p, struct top_snap *s)
{
    memset(s, 0, sizeof *s);
    s->at_us = mk_mono_us();
    if (p->metrics_port <= 0)
        return;
    struct buf body;
    buf_init(&body);
    int st = ctl_http_fetch(p->metrics_host, p->metrics_port, "/metrics", TOP_FETCH_TIMEOUT_MS, TOP_MAX_BODY, &body);
    if (st == 200) {
        s->up = true;
        top_parse(&top_roles[p->role], buf_cstr(&body), s);
    }
    buf_release(&body);
}

/* The 99th percentile of the lag samples taken between a and b (bucket upper bound),
 * or NAN when there were none. */
static double lag_p99(const struct top_snap *a, const struct top_snap *b)
{
    if (b->nlag == 0 || a->nlag != b->nlag)
        return NAN;
    double total = b->lag_cum[b->nlag - 1] - a->lag_cum[a->nlag - 1];
    if (total <= 0)
        return NAN;
    for (size_t i = 0; i < b->nlag; i++)
        if (b->lag_cum[i] - a->lag_cum[i] >= 0.99 * total)
            return b->lag_le[i];
    return INFINITY;
}

static void put_num(char *out, size_t outlen, double v, int prec)
{
    if (isnan(v))
        snprintf(out, outlen, "-");
    else if (isinf(v))
        snprintf(out, outlen, "inf");
    else
        snprintf(out, outlen, "%.*f", prec, v);
}

/* Prints one frame from two scrapes of every process; returns the processes down. */
static int top_frame(const struct cfg *c, const struct top_snap *prev, const struct top_snap *cur)
{
    int down = 0;
    double sessions = 0, msgs = 0;
    printf("%-12s %-7s %-6s %9s %10s %8s %6s %8s %11s\n", "PROCESS", "ROLE", "STATUS", "SESSIONS", "MSGS/S",
           "QUEUE", "CPU%", "RSS_MB", "LAG_P99_MS");
    for (size_t i = 0; i < c->nprocs; i++) {
        const struct cfg_proc *p = &c->procs[i];
        const struct top_snap *a = &prev[i], *b = &cur[i];
        const struct top_role *r = &top_roles[p->role];
        if (!b->up) {
            down++;
            printf("%-12s %-7s %-6s %9s %10s %8s %6s %8s %11s\n", p->id, cfg_role_name(p->role),
                   p->metrics_port > 0 ? "down" : "no-mx", "-", "-", "-", "-", "-", "-");
            continue;
        }
        double dt = (double)(b->at_us - a->at_us) / 1e6;
        /* A restart between the scrapes resets the counters: no rate then. */
        bool rates = a->up && dt > 0 && b->work >= a->work && b->cpu >= a->cpu;
        double rate = rates ? (b->work - a->work) / dt : NAN;
        double cpu = rates ? (b->cpu - a->cpu) / dt * 100. : NAN;
        double lag = rates ? lag_p99(a, b) : NAN;
        char ses[24], mps[24], q[24], cp[24], rss[24], lg[24];
        put_num(ses, sizeof ses, r->sessions != NULL ? b->sessions : NAN, 0);
        put_num(mps, sizeof mps, rate, 1);
        put_num(q, sizeof q, b->queue, 0);
        put_num(cp, sizeof cp, cpu, 1);
        put_num(rss, sizeof rss, b->rss / (1024. * 1024.), 1);
        put_num(lg, sizeof lg, isnan(lag) || isinf(lag) ? lag : lag * 1000., 2);
        printf("%-12s %-7s %-6s %9s %10s %8s %6s %8s %11s\n", p->id, cfg_role_name(p->role), "up", ses, mps, q, cp,
               rss, lg);
        if (p->role == CFG_ROLE_C2S) {
            sessions += b->sessions;
            if (!isnan(rate))
                msgs += rate;
        }
    }
    printf("%zu processes, %d down; %.0f client sessions; %.1f client stanzas/s\n", c->nprocs, down, sessions, msgs);
    fflush(stdout);
    return down;
}

static void top_usage(void)
{
    fprintf(stderr, "usage: meerkat ctl [-c FILE] top [--once] [--interval SEC]\n"
                    "  every SEC seconds (default 1; 0.1-3600), one line per configured process from its\n"
                    "  /metrics: sessions held, messages handled per second (c2s: stanzas from clients,\n"
                    "  router: routes, mam: archive and offline writes, pusher: events, gd: forwards and\n"
                    "  injections), queued work, CPU, resident memory, 99th percentile of the loop lag.\n"
                    "  --once: one frame (two scrapes SEC apart) and exit: 0, or 1 when a process is down.\n");
}

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) == -1)
        ;
}

int ctl_top(const struct cfg *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"once", no_argument, NULL, 'o'},
        {"interval", required_argument, NULL, 'i'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool once = false;
    double interval = 1.0;
    /* argv[0] is the first argument after "top": give getopt a program name slot. */
    char **av = xcalloc((size_t)argc + 2, sizeof *av);
    av[0] = (char *)"top";
    for (int i = 0; i < argc; i++)
        av[i + 1] = argv[i];
    int o, rc = 0;
    optind = 0;   /* glibc: 0 reinitialises the parser (meerkat ctl parsed its own options) */
    while ((o = getopt_long(argc + 1, av, "+h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (o) {
        case 'o': once = true; break;
        case 'i':
            interval = strtod(optarg, &end);
            if (end == optarg || *end != '\0' || !(interval >= 0.1 && interval <= 3600)) {
                fprintf(stderr, "meerkat ctl top: --interval %s is not a number of seconds in 0.1-3600\n", optarg);
                rc = 2;
            }
            break;
        case 'h': top_usage(); free(av); return 0;
        default: rc = 2; break;
        }
        if (rc != 0)
            break;
    }
    if (rc == 0 && optind < argc + 1) {
        fprintf(stderr, "meerkat ctl top: unexpected argument %s\n", av[optind]);
        rc = 2;
    }
    free(av);
    if (rc != 0) {
        top_usage();
        return rc;
    }
    struct top_snap *prev = xcalloc(c->nprocs ? c->nprocs : 1, sizeof *prev);
    struct top_snap *cur = xcalloc(c->nprocs ? c->nprocs : 1, sizeof *cur);
    bool tty = isatty(STDOUT_FILENO);
    for (size_t i = 0; i < c->nprocs; i++)
        top_scrape(&c->procs[i], &prev[i]);
    for (;;) {
        sleep_s(interval);
        for (size_t i = 0; i < c->nprocs; i++)
            top_scrape(&c->procs[i], &cur[i]);
        if (!once && tty)
            printf("\033[H\033[2J");
        int down = top_frame(c, prev, cur);
        if (once) {
            rc = down > 0 ? 1 : 0;
            break;
        }
        if (!tty)
            printf("\n");
        struct top_snap *t = prev;
        prev = cur;
        cur = t;
    }
    free(prev);
    free(cur);
    return rc;
}
