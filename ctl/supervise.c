/* ctl/supervise.c - meerkat start: launch every configured process, restart the ones that die, stop them all on a signal. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ev.h>

#include "bus_keys.h"
#include "cfg.h"
#include "ctl.h"
#include "log.h"
#include "proc.h"
#include "tls.h"
#include "util.h"

#define BACKOFF_MIN_S     0.1
#define BACKOFF_MAX_S     30.0
#define CRASH_LOOP_LIMIT  5      /* quick deaths in a row that make a crash loop */
#define STABLE_US         (10LL * 1000000)   /* a process that ran this long was not crash-looping */

struct child {
    struct supervisor *sup;
    const struct cfg_proc *proc;
    pid_t pid;
    int64_t started_mono;
    unsigned consecutive;                  /* quick deaths in a row: the backoff and the crash loop */
    bool crash_loop_logged;
    ev_child child_w;
    ev_timer restart_w;
};

struct supervisor {
    struct ev_loop *loop;
    struct cfg *cfg;
    const char *config_path;
    const char *log_level;
    char bindir[PATH_MAX];
    struct child **children;               /* each allocated alone: its watchers must not move */
    size_t nchildren;
    bool stopping;
    ev_signal sigterm_w;
    ev_signal sigint_w;
    ev_signal sighup_w;
    ev_timer kill_w;
};

static pid_t supervisor_pid;

static void spawn(struct child *c);

static size_t alive(const struct supervisor *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nchildren; i++)
        if (s->children[i]->pid > 0)
            n++;
    return n;
}

static void on_restart(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct child *c = w->data;
    if (!c->sup->stopping)
        spawn(c);
}

static void on_child(struct ev_loop *loop, ev_child *w, int revents)
{
    struct child *c = w->data;
    struct supervisor *s = c->sup;
    int st = w->rstatus;
    ev_child_stop(loop, w);
    c->pid = 0;
    if (WIFSIGNALED(st))
        log_event(s->stopping ? LOG_LEVEL_INFO : LOG_LEVEL_WARN, "child_exit", "proc=%s signal=%d", c->proc->id,
                  WTERMSIG(st));
    else
        log_event(s->stopping ? LOG_LEVEL_INFO : LOG_LEVEL_WARN, "child_exit", "proc=%s status=%d", c->proc->id,
                  WEXITSTATUS(st));
    if (s->stopping) {
        if (alive(s) == 0)
            ev_break(loop, EVBREAK_ALL);
        return;
    }
    int64_t now = mk_mono_us();
    if (now - c->started_mono > STABLE_US)
        c->consecutive = 0;
    double delay = BACKOFF_MIN_S;
    for (unsigned i = 0; i < c->consecutive && delay < BACKOFF_MAX_S; i++)
        delay *= 2;
    if (delay > BACKOFF_MAX_S)
        delay = BACKOFF_MAX_S;
    c->consecutive++;
    /* Past the limit the process keeps being retried, at the backoff's pace, so
     * it comes back by itself once whatever kills it (a taken port, a database
     * down) is fixed; the operator learns of it from the log and /healthz. */
    if (c->consecutive >= CRASH_LOOP_LIMIT) {
        if (!c->crash_loop_logged)
            log_error("crash_loop", "proc=%s quick_exits=%u next_retry_s=%.1f", c->proc->id, c->consecutive, delay);
        c->crash_loop_logged = true;
    } else {
        c->crash_loop_logged = false;
    }
    log_info("child_restart_scheduled", "proc=%s delay_s=%.2f", c->proc->id, delay);
    ev_timer_set(&c->restart_w, delay, 0.);
    ev_timer_start(loop, &c->restart_w);
}

static void spawn(struct child *c)
{
    struct supervisor *s = c->sup;
    char bin[PATH_MAX + 32];
    snprintf(bin, sizeof bin, "%s/meerkat-%s", s->bindir, cfg_role_name(c->proc->role));
    pid_t pid = fork();
    if (pid == -1) {
        log_error("fork_failed", "proc=%s errno=%d", c->proc->id, errno);
        ev_timer_set(&c->restart_w, 1.0, 0.);
        ev_timer_start(s->loop, &c->restart_w);
        return;
    }
    if (pid == 0) {
        /* The child dies with the supervisor, even on kill -9 of the supervisor. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != supervisor_pid)
            _exit(1);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        const char *argv[10];
        int k = 0;
        argv[k++] = bin;
        argv[k++] = "--id";
        argv[k++] = c->proc->id;
        if (s->config_path != NULL) {
            argv[k++] = "-c";
            argv[k++] = s->config_path;
        }
        if (s->log_level != NULL) {
            argv[k++] = "--log-level";
            argv[k++] = s->log_level;
        }
        argv[k] = NULL;
        execv(bin, (char *const *)argv);
        fprintf(stderr, "level=error event=exec_failed bin=%s errno=%d\n", bin, errno);
        _exit(127);
    }
    c->pid = pid;
    c->started_mono = mk_mono_us();
    ev_child_set(&c->child_w, pid, 0);
    ev_child_start(s->loop, &c->child_w);
    log_info("child_started", "proc=%s pid=%d", c->proc->id, (int)pid);
}

static void on_kill(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct supervisor *s = w->data;
    for (size_t i = 0; i < s->nchildren; i++)
        if (s->children[i]->pid > 0) {
            log_warn("child_kill", "proc=%s pid=%d", s->children[i]->proc->id, (int)s->children[i]->pid);
            kill(s->children[i]->pid, SIGKILL);
        }
}

static struct child *child_new(struct supervisor *s, const struct cfg_proc *proc)
{
    struct child *c = xcalloc(1, sizeof *c);
    c->sup = s;
    c->proc = proc;
    ev_child_init(&c->child_w, on_child, 0, 0);
    c->child_w.data = c;
    ev_timer_init(&c->restart_w, on_restart, 0., 0.);
    c->restart_w.data = c;
    return c;
}

/* SIGHUP: the file read again. Processes added there are started; the running ones get
 * the SIGHUP and read it too (node_reload: the same check, so the same answer). */
static void reload(struct supervisor *s)
{
    char err[512];
    if (s->config_path == NULL) {
        log_warn("reload_refused", "reason=\"no configuration file: started with the embedded defaults\"");
        return;
    }
    struct cfg *next = cfg_load(s->config_path, err, sizeof err);
    if (next == NULL) {
        log_error("reload_refused", "reason=\"%s\"", err);
        return;
    }
    if (cfg_reload_check(s->cfg, next, err, sizeof err) == -1) {
        log_error("reload_refused", "reason=\"%s\"", err);
        cfg_free(&next);
        return;
    }
    const struct cfg_proc *added[256];
    size_t nadded = cfg_adopt_procs(s->cfg, next, added, MK_ARRAY_LEN(added));
    cfg_free(&next);
    for (size_t i = 0; i < s->nchildren; i++)
        s->children[i]->proc = cfg_find_proc(s->cfg, s->children[i]->proc->id);
    log_info("reloaded", "added=%zu processes=%zu", nadded, s->cfg->nprocs);
    if (nadded == 0)
        return;
    s->children = xrealloc(s->children, (s->nchildren + nadded) * sizeof *s->children);
    for (size_t i = 0; i < nadded; i++) {
        struct child *c = child_new(s, added[i]);
        s->children[s->nchildren++] = c;
        spawn(c);
    }
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct supervisor *s = w->data;
    if (w->signum == SIGHUP) {
        log_reopen();
        size_t running = s->nchildren;
        if (!s->stopping)
            reload(s);
        for (size_t i = 0; i < running; i++)
            if (s->children[i]->pid > 0)
                kill(s->children[i]->pid, SIGHUP);
        return;
    }
    if (s->stopping) {
        on_kill(loop, &s->kill_w, 0);
        return;
    }
    s->stopping = true;
    log_info("stopping", "signal=%d children=%zu", w->signum, alive(s));
    for (size_t i = 0; i < s->nchildren; i++) {
        ev_timer_stop(loop, &s->children[i]->restart_w);
        if (s->children[i]->pid > 0)
            kill(s->children[i]->pid, SIGTERM);
    }
    if (alive(s) == 0) {
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    ev_timer_init(&s->kill_w, on_kill, (double)s->cfg->grace_sec + 2.0, 0.);
    s->kill_w.data = s;
    ev_timer_start(loop, &s->kill_w);
}

static int find_bindir(char *out, size_t outlen)
{
    const char *env = getenv("MEERKAT_BIN_DIR");
    if (env != NULL && env[0] != '\0') {
        mk_strlcpy(out, env, outlen);
        return 0;
    }
    ssize_t n = readlink("/proc/self/exe", out, outlen - 1);
    if (n == -1)
        return -1;
    out[n] = '\0';
    char *slash = strrchr(out, '/');
    if (slash != NULL)
        *slash = '\0';
    return 0;
}

static int mkdir_p(const char *path)
{
    char tmp[PATH_MAX];
    mk_strlcpy(tmp, path, sizeof tmp);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) == -1 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    if (mkdir(tmp, 0755) == -1 && errno != EEXIST)
        return -1;
    return 0;
}

static void print_endpoints(const struct supervisor *s)
{
    const struct cfg *c = s->cfg;
    printf("meerkat: %zu processes starting; domain%s:", c->nprocs, c->ndomains > 1 ? "s" : "");
    for (size_t i = 0; i < c->ndomains; i++)
        printf(" %s", c->domains[i]);
    printf("\n");
    if (c->c2s.port > 0)
        printf("meerkat: clients connect to %s:%d (STARTTLS%s)\n", c->c2s.host, c->c2s.port,
               c->starttls_required ? " required" : "");
    if (c->c2s_tls.port > 0)
        printf("meerkat: direct TLS (XEP-0368) on %s:%d\n", c->c2s_tls.host, c->c2s_tls.port);
    printf("meerkat: health: meerkat ctl%s%s health\n", s->config_path ? " -c " : "",
           s->config_path ? s->config_path : "");
    fflush(stdout);
}

int ctl_start(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct supervisor s;
    memset(&s, 0, sizeof s);
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:l:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': s.config_path = optarg; break;
        case 'l': s.log_level = optarg; break;
        case 'h':
            fprintf(stderr, "usage: meerkat start [-c FILE] [--log-level LEVEL]\n");
            return 0;
        default:
            fprintf(stderr, "usage: meerkat start [-c FILE] [--log-level LEVEL]\n");
            return 2;
        }
    }
    char err[512];
    s.cfg = cfg_load(s.config_path, err, sizeof err);
    if (s.cfg == NULL) {
        fprintf(stderr, "meerkat: %s\n", err);
        return 1;
    }
    enum log_level lvl = LOG_LEVEL_INFO;
    const char *lname = s.log_level ? s.log_level : s.cfg->log_level;
    if (lname != NULL && log_level_parse(lname, &lvl) == -1) {
        fprintf(stderr, "meerkat: unknown log level %s\n", lname);
        return 1;
    }
    log_init("meerkat", lvl, s.cfg->log_file);
    if (find_bindir(s.bindir, sizeof s.bindir) == -1) {
        fprintf(stderr, "meerkat: cannot find the directory of the meerkat binaries\n");
        return 1;
    }
    if (mkdir_p(s.cfg->data_dir) == -1) {
        fprintf(stderr, "meerkat: cannot create data_dir %s: %s\n", s.cfg->data_dir, strerror(errno));
        return 1;
    }
    if (s.cfg->bus.curve) {
        /* The cluster's bus key, made here at the first start (0600) and read by every
         * process and by meerkat ctl. */
        struct bus_keys keys;
        if (bus_keys_load(s.cfg->bus.keys_dir, true, &keys, err, sizeof err) == -1) {
            fprintf(stderr, "meerkat: bus key: %s\n", err);
            return 1;
        }
        bus_keys_wipe(&keys);
    }
    if (s.cfg->c2s.port > 0 || s.cfg->c2s_tls.port > 0) {
        if (tls_ensure_self_signed(s.cfg->tls_cert, s.cfg->tls_key, s.cfg->domains[0], err, sizeof err) == -1) {
            fprintf(stderr, "meerkat: TLS certificate: %s\n", err);
            return 1;
        }
    }
    supervisor_pid = getpid();
    /* meerkat ctl reload finds the supervisor of this data_dir here. */
    char *pid_file = xasprintf("%s/meerkat.pid", s.cfg->data_dir);
    if (proc_pid_write(pid_file) == -1)
        log_warn("pid_file_failed", "path=%s errno=%d", pid_file, errno);
    s.loop = EV_DEFAULT;
    ev_signal_init(&s.sigterm_w, on_signal, SIGTERM);
    ev_signal_init(&s.sigint_w, on_signal, SIGINT);
    ev_signal_init(&s.sighup_w, on_signal, SIGHUP);
    s.sigterm_w.data = s.sigint_w.data = s.sighup_w.data = &s;
    ev_signal_start(s.loop, &s.sigterm_w);
    ev_signal_start(s.loop, &s.sigint_w);
    ev_signal_start(s.loop, &s.sighup_w);
    signal(SIGPIPE, SIG_IGN);

    s.nchildren = s.cfg->nprocs;
    s.children = xcalloc(s.nchildren ? s.nchildren : 1, sizeof *s.children);
    print_endpoints(&s);
    for (size_t i = 0; i < s.nchildren; i++) {
        s.children[i] = child_new(&s, &s.cfg->procs[i]);
        spawn(s.children[i]);
    }
    ev_run(s.loop, 0);
    proc_pid_remove(pid_file);
    free(pid_file);
    log_info("stopped", "%s", "");
    for (size_t i = 0; i < s.nchildren; i++)
        free(s.children[i]);
    free(s.children);
    cfg_free(&s.cfg);
    return 0;
}
