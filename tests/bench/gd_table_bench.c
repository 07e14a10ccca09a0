/* tests/bench/gd_table_bench.c - cost of the GD routing table (gd/table.c) at N sessions: Redis commands and CPU per login and per refresh pass, against a redis-server it starts. */
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "../../gd/table.h"
#include "log.h"
#include "util.h"

static double cpu_self(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* Redis's own figures: CPU seconds (user+sys), and calls of every command by name
 * (commands run by scripts included) and of EVALSHA/EVAL alone. */
struct rstats {
    double cpu;
    uint64_t calls_all, calls_eval;
};

static struct rstats rstats(redisContext *c)
{
    struct rstats s = { 0 };
    redisReply *r = redisCommand(c, "INFO cpu");
    const char *p = strstr(r->str, "used_cpu_sys:");
    if (p)
        s.cpu += atof(p + 13);
    p = strstr(r->str, "used_cpu_user:");
    if (p)
        s.cpu += atof(p + 14);
    freeReplyObject(r);
    r = redisCommand(c, "INFO commandstats");
    for (p = r->str; (p = strstr(p, "cmdstat_")) != NULL; p++) {
        const char *calls = strstr(p, "calls=");
        if (calls == NULL)
            break;
        uint64_t n = strtoull(calls + 6, NULL, 10);
        if (strncmp(p, "cmdstat_info:", 13) == 0 || strncmp(p, "cmdstat_ping:", 13) == 0)
            continue;
        s.calls_all += n;
        if (strncmp(p, "cmdstat_evalsha:", 16) == 0 || strncmp(p, "cmdstat_eval:", 13) == 0)
            s.calls_eval += n;
    }
    freeReplyObject(r);
    return s;
}

static uint64_t g_done;

static void on_write(void *arg, enum gd_table_status st)
{
    if (st != GD_TABLE_OK) {
        fprintf(stderr, "write failed: %d\n", st);
        exit(1);
    }
    g_done++;
}

static void login_all(struct ev_loop *loop, struct gd_table *t, size_t n)
{
    char jid[64];
    size_t sent = 0;
    while (g_done < n) {
        while (sent < n && sent - g_done < 1000) {
            snprintf(jid, sizeof jid, "user%zu@example.com/res%zu", sent, sent % 3);
            if (gd_table_session_open(t, jid, gd_table_version_next(t), on_write, NULL) == -1) {
                perror("open");
                exit(1);
            }
            sent++;
        }
        ev_run(loop, EVRUN_ONCE);
    }
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    bind(fd, (struct sockaddr *)&a, sizeof a);
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
    unsigned batch = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 500;
    unsigned ttl = 120;
    double interval = ttl / 3.0;
    log_init("gd_table_bench", LOG_LEVEL_WARN, NULL);
    signal(SIGPIPE, SIG_IGN);

    char dir[] = "/tmp/mk_gd_bench.XXXXXX";
    if (mkdtemp(dir) == NULL)
        return 1;
    int port = free_port();
    char ports[16];
    snprintf(ports, sizeof ports, "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        if (freopen("/dev/null", "w", stdout) == NULL)
            _exit(127);
        execlp("redis-server", "redis-server", "--port", ports, "--bind", "127.0.0.1", "--dir", dir, "--save", "",
               "--appendonly", "no", "--logfile", "", (char *)NULL);
        _exit(127);
    }
    redisContext *c = NULL;
    for (int i = 0; i < 500; i++) {
        c = redisConnect("127.0.0.1", port);
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            if (r) {
                freeReplyObject(r);
                break;
            }
        }
        if (c)
            redisFree(c);
        c = NULL;
        struct timespec ts = { 0, 20000000 };
        nanosleep(&ts, NULL);
    }
    if (c == NULL) {
        fprintf(stderr, "redis-server did not start\n");
        return 1;
    }

    struct ev_loop *loop = EV_DEFAULT;
    struct gd_table_params p = {
        .dc = "dc-a", .primary_host = "127.0.0.1", .primary_port = port, .prefix = "bench:",
        .ttl_sec = ttl, .refresh_interval = 1e6, .refresh_batch = batch,
    };
    char err[200];
    struct gd_table *t = gd_table_new(loop, &p, err, sizeof err);
    if (t == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    while (!gd_table_writable(t))
        ev_run(loop, EVRUN_ONCE);

    /* Logins: n sessions, the scripts pipelined 1000 at a time (no refresh meanwhile). */
    struct rstats r0 = rstats(c);
    double cpu0 = cpu_self();
    int64_t t0 = mk_mono_us();
    login_all(loop, t, n);
    int64_t t1 = mk_mono_us();
    double cpu1 = cpu_self();
    struct rstats r1 = rstats(c);
    printf("gd_table_bench sessions=%zu refresh_batch=%u ttl=%us refresh_interval=%.0fs\n", n, batch, ttl, interval);
    printf("login: %.0f logins/s, %.2f Redis calls per login (1 EVALSHA + %.2f inside the script), "
           "gd CPU %.2f us/login, Redis CPU %.2f us/login\n",
           n / ((t1 - t0) / 1e6), (double)(r1.calls_all - r0.calls_all) / n,
           (double)(r1.calls_all - r0.calls_all - (r1.calls_eval - r0.calls_eval)) / n,
           (cpu1 - cpu0) * 1e6 / n, (r1.cpu - r0.cpu) * 1e6 / n);

    /* Refresh: a second table (same DC) whose passes run back to back (interval 1 us)
     * owns the same sessions; measured over 3 whole passes. */
    gd_table_free(&t);
    p.refresh_interval = 1e-6;
    t = gd_table_new(loop, &p, err, sizeof err);
    while (!gd_table_writable(t))
        ev_run(loop, EVRUN_ONCE);
    g_done = 0;
    login_all(loop, t, n);
    uint64_t pass0 = gd_table_refresh_passes(t) + 1;
    while (gd_table_refresh_passes(t) < pass0)
        ev_run(loop, EVRUN_ONCE);
    struct rstats s0 = rstats(c);
    double c0 = cpu_self();
    uint64_t e0 = gd_table_stats(t)->refresh_entries;
    int64_t w0 = mk_mono_us();
    while (gd_table_refresh_passes(t) < pass0 + 3)
        ev_run(loop, EVRUN_ONCE);
    int64_t w1 = mk_mono_us();
    double c1 = cpu_self();
    struct rstats s1 = rstats(c);
    uint64_t entries = gd_table_stats(t)->refresh_entries - e0;
    double passes = 3;
    double pass_wall = (w1 - w0) / 1e6 / passes;
    double gd_cpu = (c1 - c0) / passes;
    double redis_cpu = (s1.cpu - s0.cpu) / passes;
    double evals = (double)(s1.calls_eval - s0.calls_eval) / passes;
    double calls = (double)(s1.calls_all - s0.calls_all) / passes;
    if (entries != (uint64_t)(passes * n) || gd_table_stats(t)->lost != 0 || gd_table_stats(t)->rewritten != 0) {
        fprintf(stderr, "refresh mismatch: entries=%llu lost=%llu rewritten=%llu\n", (unsigned long long)entries,
                (unsigned long long)gd_table_stats(t)->lost, (unsigned long long)gd_table_stats(t)->rewritten);
        return 1;
    }
    printf("refresh pass (all %zu entries, %u per round trip): %.3f s wall, gd CPU %.3f s, Redis CPU %.3f s, "
           "%.0f EVALSHA + %.0f calls inside scripts\n",
           n, batch, pass_wall, gd_cpu, redis_cpu, evals, calls - evals);
    printf("steady state, one pass per %.0f s: %.1f EVALSHA/s, %.0f Redis calls/s (inside scripts), "
           "gd CPU %.2f%%, Redis CPU %.2f%% of one core\n",
           interval, evals / interval, (calls - evals) / interval, 100 * gd_cpu / interval, 100 * redis_cpu / interval);

    gd_table_free(&t);
    redisFree(c);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : 1;
}
