/* ctl/reload.c - meerkat ctl reload: a running cluster reads its file again (SIGHUP to meerkat start), and whether every process took it. */
#include <errno.h>
#include <signal.h>
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

#define RELOAD_WAIT_S            30
#define RELOAD_FETCH_TIMEOUT_MS  1000
#define RELOAD_MAX_BODY          (4u << 20)

/* What one process's /metrics says about its configuration. */
struct reload_view {
    bool up;
    double procs;      /* meerkat_config_processes, -1 when absent */
    double refused;    /* meerkat_config_reloads_total{result="refused"}, 0 when absent */
};

/* The sum of the samples of name in text (Prometheus text format) whose labels contain
 * label (borrowed; NULL: any), or dflt when there is none. */
static double sample_sum(const char *text, const char *name, const char *label, double dflt)
{
    size_t n = strlen(name);
    double sum = 0;
    bool found = false;
    for (const char *line = text; *line != '\0';) {
        const char *nl = strchr(line, '\n');
        size_t len = nl != NULL ? (size_t)(nl - line) : strlen(line);
        if (len > n && strncmp(line, name, n) == 0 && (line[n] == '{' || line[n] == ' ')) {
            const char *sp = line + len;
            while (sp > line && sp[-1] != ' ')
                sp--;
            bool match = label == NULL;
            if (!match) {
                const char *l = strstr(line, label);
                match = l != NULL && l < sp;
            }
            if (match && sp > line) {
                sum += strtod(sp, NULL);
                found = true;
            }
        }
        line += len + (nl != NULL ? 1 : 0);
    }
    return found ? sum : dflt;
}

static void view_of(const struct cfg_proc *p, struct reload_view *v)
{
    v->up = false;
    v->procs = -1;
    v->refused = 0;
    if (p->metrics_port <= 0)
        return;
    struct buf body;
    buf_init(&body);
    if (ctl_http_fetch(p->metrics_host, p->metrics_port, "/metrics", RELOAD_FETCH_TIMEOUT_MS, RELOAD_MAX_BODY,
                       &body) == 200) {
        const char *text = buf_cstr(&body);
        v->up = true;
        v->procs = sample_sum(text, "meerkat_config_processes", NULL, -1);
        v->refused = sample_sum(text, "meerkat_config_reloads_total", "result=\"refused\"", 0);
    }
    buf_release(&body);
}

/* The pid of the meerkat start of c's data_dir (its pid file), or -1 after printing why. */
static pid_t supervisor_of(const struct cfg *c)
{
    char *path = xasprintf("%s/meerkat.pid", c->data_dir);
    FILE *f = fopen(path, "re");
    long pid = -1;
    if (f == NULL || fscanf(f, "%ld", &pid) != 1 || pid <= 1) {
        fprintf(stderr, "meerkat ctl reload: no meerkat start runs for data_dir %s (%s: %s)\n", c->data_dir, path,
                f == NULL ? strerror(errno) : "no pid in it");
        pid = -1;
    }
    if (f != NULL)
        fclose(f);
    free(path);
    if (pid == -1)
        return -1;
    /* A pid file left by a supervisor killed -9 may name another program by now. */
    char comm_path[64], comm[32] = "";
    snprintf(comm_path, sizeof comm_path, "/proc/%ld/comm", pid);
    f = fopen(comm_path, "re");
    if (f == NULL || fgets(comm, sizeof comm, f) == NULL || strncmp(comm, "meerkat\n", 8) != 0) {
        fprintf(stderr, "meerkat ctl reload: process %ld of %s/meerkat.pid is not meerkat start (gone?)\n", pid,
                c->data_dir);
        if (f != NULL)
            fclose(f);
        return -1;
    }
    fclose(f);
    return (pid_t)pid;
}

static void nap_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* meerkat ctl reload: c was just loaded from the file (its errors already refused it).
 * Sends SIGHUP to the file's meerkat start, then waits until every process of the file
 * answers with the file's process count (0), a process counts a refusal (1: the log
 * says why), or RELOAD_WAIT_S passes (1, naming the laggards). */
int ctl_reload(const struct cfg *c, int argc, char **argv)
{
    if (argc != 0) {
        fprintf(stderr, "usage: meerkat ctl -c FILE reload\n");
        return 2;
    }
    if (c->path == NULL) {
        fprintf(stderr, "meerkat ctl reload: needs -c FILE, the file meerkat start was given\n");
        return 2;
    }
    pid_t pid = supervisor_of(c);
    if (pid == -1)
        return 1;
    struct reload_view *before = xcalloc(c->nprocs, sizeof *before);
    for (size_t i = 0; i < c->nprocs; i++)
        view_of(&c->procs[i], &before[i]);
    int rc = 1;
    if (kill(pid, SIGHUP) == -1) {
        fprintf(stderr, "meerkat ctl reload: cannot signal meerkat start (pid %ld): %s\n", (long)pid,
                strerror(errno));
        free(before);
        return 1;
    }
    int64_t deadline = mk_mono_us() + (int64_t)RELOAD_WAIT_S * 1000000;
    struct reload_view v;
    for (;;) {
        size_t ready = 0;
        for (size_t i = 0; i < c->nprocs; i++) {
            view_of(&c->procs[i], &v);
            if (v.up && v.refused > before[i].refused) {
                printf("reload refused by %s: the file differs from what the cluster runs with in more than new c2s "
                       "and router processes; the reason is in its log (event=reload_refused)\n",
                       c->procs[i].id);
                goto out;
            }
            if (v.up && v.procs == (double)c->nprocs)
                ready++;
        }
        if (ready == c->nprocs) {
            printf("reloaded: all %zu processes run with the file's process list\n", c->nprocs);
            rc = 0;
            goto out;
        }
        if (mk_mono_us() > deadline)
            break;
        nap_ms(100);
    }
    printf("reload not complete after %d s:\n", RELOAD_WAIT_S);
    for (size_t i = 0; i < c->nprocs; i++) {
        view_of(&c->procs[i], &v);
        if (!v.up)
            printf("  %s: not answering\n", c->procs[i].id);
        else if (v.procs != (double)c->nprocs)
            printf("  %s: runs with %.0f processes\n", c->procs[i].id, v.procs);
    }
out:
    free(before);
    return rc;
}
