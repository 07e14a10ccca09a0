/* common/proc.h - process plumbing: argv, signals, pid file. */
#ifndef MK_COMMON_PROC_H
#define MK_COMMON_PROC_H
#include <stdbool.h>

#include <ev.h>

struct proc_args {
    const char *config;     /* -c / --config FILE, or NULL (embedded defaults) */
    const char *id;         /* --id ROLE.N (required for role processes) */
    const char *log_level;  /* --log-level LEVEL, overrides the config */
    const char *pid_file;   /* --pid-file FILE */
    const char *bus_bind;   /* --bus-bind tcp://ADDR:PORT: where the inbox binds, instead of the
                             * configured endpoint (which peers connect to: a pod's DNS name), or NULL */
    bool help;
};

/* Parses argv of a role process. Unknown options give -1 and a sentence in err. */
int proc_parse_args(int argc, char **argv, struct proc_args *out, char *err, size_t errlen);
/* Prints the usage of a role binary to stderr. */
void proc_usage(const char *prog);

/* Installs ev_signal watchers: SIGTERM and SIGINT call on_stop(ud) (once each
 * signal), SIGHUP reopens the log. Ignores SIGPIPE. */
void proc_signals(struct ev_loop *loop, void (*on_stop)(void *ud), void *ud);
/* After proc_signals: SIGHUP also calls on_hup(ud) (proc_signals's ud) once the log is
 * reopened; NULL = only the log. Borrows on_hup. */
void proc_signals_on_hup(void (*on_hup)(void *ud));
/* Removes those watchers again (tests, or before exec); their signals get their
 * default action back. The watchers never keep ev_run alive on their own. */
void proc_signals_stop(void);

/* Writes the pid to path (0644). Returns 0 or -1 with errno. proc_pid_remove deletes it. */
int proc_pid_write(const char *path);
void proc_pid_remove(const char *path);
#endif
