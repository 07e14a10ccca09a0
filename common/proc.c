/* common/proc.c - process plumbing: argv, signals, pid file. */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

enum {
    OPT_ID = 0x100,
    OPT_LOG_LEVEL,
    OPT_PID_FILE,
    OPT_BUS_BIND,
};

static const struct option long_options[] = {
    {"config",    required_argument, NULL, 'c'},
    {"id",        required_argument, NULL, OPT_ID},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"pid-file",  required_argument, NULL, OPT_PID_FILE},
    {"bus-bind",  required_argument, NULL, OPT_BUS_BIND},
    {"help",      no_argument,       NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const char *option_name(int val)
{
    for (const struct option *o = long_options; o->name != NULL; o++)
        if (o->val == val)
            return o->name;
    return "?";
}

/* The id becomes a label value and appears in every log line: keep it to a
 * short run of [A-Za-z0-9_.-]. */
static bool valid_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (const char *p = s; *p != '\0'; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.' || *p == '-'))
            return false;
    return true;
}

/* Parses argv (borrowed; out's strings point into it). Options: -c/--config FILE,
 * --id ROLE.N, --log-level LEVEL, --pid-file FILE, --bus-bind tcp://..., -h/--help. Returns 0, or -1 with
 * a sentence in err for an unknown option, a missing or empty value, a bad log
 * level or id, or a stray argument. Resets getopt's state, so it may be called
 * more than once. */
int proc_parse_args(int argc, char **argv, struct proc_args *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    /* "+": stop at the first non-option instead of permuting argv;
     * ":": report a missing value as ':' rather than '?'. */
    static const char optstring[] = "+:c:h";
    opterr = 0;
    optind = 0;   /* glibc: 0 reinitialises the parser completely */
    for (;;) {
        int longidx = -1;
        int opt = getopt_long(argc, argv, optstring, long_options, &longidx);
        if (opt == -1)
            break;
        switch (opt) {
        case 'c':
        case OPT_ID:
        case OPT_LOG_LEVEL:
        case OPT_PID_FILE:
        case OPT_BUS_BIND:
            if (optarg[0] == '\0') {
                snprintf(err, errlen, "option --%s needs a non-empty value", option_name(opt));
                return -1;
            }
            if (opt == 'c') {
                out->config = optarg;
            } else if (opt == OPT_ID) {
                if (!valid_id(optarg)) {
                    snprintf(err, errlen, "--id '%.64s' is not ROLE.N (letters, digits, '_', '.', '-')", optarg);
                    return -1;
                }
                out->id = optarg;
            } else if (opt == OPT_LOG_LEVEL) {
                enum log_level level;
                if (log_level_parse(optarg, &level) == -1) {
                    snprintf(err, errlen, "unknown log level '%.32s' (debug, info, warn, error, none)", optarg);
                    return -1;
                }
                out->log_level = optarg;
            } else if (opt == OPT_BUS_BIND) {
                if (strncmp(optarg, "tcp://", 6) != 0 || optarg[6] == '\0') {
                    snprintf(err, errlen, "--bus-bind '%.64s' is not tcp://ADDRESS:PORT", optarg);
                    return -1;
                }
                out->bus_bind = optarg;
            } else {
                out->pid_file = optarg;
            }
            break;
        case 'h':
            out->help = true;
            break;
        case ':':
            snprintf(err, errlen, "option %.64s needs a value", argv[optind - 1]);
            return -1;
        default:
            if (strncmp(argv[optind - 1], "--", 2) == 0 && optopt != 0)
                snprintf(err, errlen, "option '%.64s' takes no value", argv[optind - 1]);
            else if (optopt != 0)
                snprintf(err, errlen, "unknown option '-%c'", optopt);
            else
                snprintf(err, errlen, "unknown option '%.64s'", argv[optind - 1]);
            return -1;
        }
    }
    if (optind < argc) {
        snprintf(err, errlen, "unexpected argument '%.64s'", argv[optind]);
        return -1;
    }
    return 0;
}

/* Prints the usage of a role binary to stderr. prog is borrowed (argv[0]). */
void proc_usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [-c FILE] [--id ROLE.N] [--log-level LEVEL] [--pid-file FILE] [--bus-bind ENDPOINT]\n"
            "  -c, --config FILE    configuration file (default: embedded defaults)\n"
            "      --id ROLE.N      identity of this process, e.g. c2s.1\n"
            "      --log-level L    debug, info, warn, error or none (overrides the config)\n"
            "      --pid-file FILE  write the process id to FILE\n"
            "      --bus-bind E     bind the bus inbox at E (tcp://*:7200) instead of the configured\n"
            "                       endpoint, which peers still connect to (a DNS name in containers)\n"
            "  -h, --help           show this help\n",
            prog != NULL ? prog : "meerkat-role");
}

/* One loop per process, so one set of signal watchers. */
static struct {
    struct ev_loop *loop;
    ev_signal       term;
    ev_signal       intr;
    ev_signal       hup;
    void          (*on_stop)(void *ud);
    void          (*on_hup)(void *ud);
    void           *ud;
} proc_sig;

/* The watchers are unref'd so that they alone do not keep ev_run going; ev_ref
 * before stopping one restores the loop's count. */
static void sig_stop(ev_signal *w)
{
    if (ev_is_active(w)) {
        ev_ref(proc_sig.loop);
        ev_signal_stop(proc_sig.loop, w);
    }
}

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    log_info("signal", "signum=%d action=stop", w->signum);
    /* Once per signal: with the watcher gone the default action returns, so a
     * second SIGINT ends a stuck shutdown. */
    sig_stop(w);
    if (proc_sig.on_stop != NULL)
        proc_sig.on_stop(proc_sig.ud);
}

static void hup_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    if (log_reopen() == -1)
        log_error("log_reopen_failed", "errno=%d", errno);
    else
        log_info("signal", "signum=%d action=log_reopen", w->signum);
    if (proc_sig.on_hup != NULL)
        proc_sig.on_hup(proc_sig.ud);
}

static void sig_start(struct ev_loop *loop, ev_signal *w, void (*cb)(struct ev_loop *, ev_signal *, int),
                      int signum)
{
    ev_signal_init(w, cb, signum);
    ev_signal_start(loop, w);
    ev_unref(loop);
}

/* Installs the watchers on loop (replacing any earlier call's): SIGTERM and SIGINT
 * each call on_stop(ud) once, SIGHUP reopens the log. Ignores SIGPIPE. The watchers
 * do not keep ev_run alive by themselves. on_stop and ud are borrowed. */
void proc_signals(struct ev_loop *loop, void (*on_stop)(void *ud), void *ud)
{
    proc_signals_stop();
    signal(SIGPIPE, SIG_IGN);
    proc_sig.loop = loop;
    proc_sig.on_stop = on_stop;
    proc_sig.on_hup = NULL;
    proc_sig.ud = ud;
    sig_start(loop, &proc_sig.term, stop_cb, SIGTERM);
    sig_start(loop, &proc_sig.intr, stop_cb, SIGINT);
    sig_start(loop, &proc_sig.hup, hup_cb, SIGHUP);
}

/* Sets what SIGHUP does after reopening the log (NULL: nothing more). Borrows on_hup. */
void proc_signals_on_hup(void (*on_hup)(void *ud))
{
    proc_sig.on_hup = on_hup;
}

/* Removes the watchers proc_signals installed (their signals get their default
 * action back); does nothing if there are none. */
void proc_signals_stop(void)
{
    if (proc_sig.loop == NULL)
        return;
    sig_stop(&proc_sig.term);
    sig_stop(&proc_sig.intr);
    sig_stop(&proc_sig.hup);
    proc_sig.loop = NULL;
}

/* Writes "<pid>\n" to a temporary file beside path and renames it over path, so a
 * reader never sees a half-written pid. Borrows path. Returns 0 or -1 with errno. */
int proc_pid_write(const char *path)
{
    char *tmp = xasprintf("%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1) {
        int saved = errno;
        free(tmp);
        errno = saved;
        return -1;
    }
    char line[32];
    int n = snprintf(line, sizeof line, "%ld\n", (long)getpid());
    int rc = 0;
    /* fchmod: the mode must not depend on the umask. */
    if (fchmod(fd, 0644) == -1 || write(fd, line, (size_t)n) != n)
        rc = -1;
    int saved = errno;
    if (close(fd) == -1 && rc == 0) {
        rc = -1;
        saved = errno;
    }
    if (rc == 0 && rename(tmp, path) == -1) {
        rc = -1;
        saved = errno;
    }
    if (rc == -1)
        unlink(tmp);
    free(tmp);
    errno = saved;
    return rc;
}

/* Deletes path if it still holds this process's pid, so a stopping process never
 * removes the pid file of the one that replaced it. NULL-safe. */
void proc_pid_remove(const char *path)
{
    if (path == NULL)
        return;
    char line[32] = "";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return;
    ssize_t n = read(fd, line, sizeof line - 1);
    close(fd);
    if (n <= 0)
        return;
    line[n] = '\0';
    if (strtol(line, NULL, 10) == (long)getpid())
        unlink(path);
}
