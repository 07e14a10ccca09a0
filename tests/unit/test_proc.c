/* tests/unit/test_proc.c - argv parsing, signal watchers and the pid file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "proc.h"
#include "util.h"

/* Parses a NULL-terminated list of arguments (copied, since getopt may permute). */
static int parse(struct proc_args *a, char *err, size_t errlen, ...)
{
    static char store[16][128];
    static char *argv[17];
    int argc = 0;
    va_list ap;
    va_start(ap, errlen);
    const char *s;
    while ((s = va_arg(ap, const char *)) != NULL && argc < 16) {
        mk_strlcpy(store[argc], s, sizeof store[argc]);
        argv[argc] = store[argc];
        argc++;
    }
    va_end(ap);
    argv[argc] = NULL;
    err[0] = '\0';
    return proc_parse_args(argc, argv, a, err, errlen);
}

static void test_parse_good(void **state)
{
    struct proc_args a;
    char err[256];
    assert_int_equal(parse(&a, err, sizeof err, "prog", NULL), 0);
    assert_null(a.config);
    assert_null(a.id);
    assert_false(a.help);

    assert_int_equal(parse(&a, err, sizeof err, "prog", "-c", "/etc/meerkat.yaml", "--id", "c2s.1",
                           "--log-level", "debug", "--pid-file", "/run/c2s.pid", NULL), 0);
    assert_string_equal(a.config, "/etc/meerkat.yaml");
    assert_string_equal(a.id, "c2s.1");
    assert_string_equal(a.log_level, "debug");
    assert_string_equal(a.pid_file, "/run/c2s.pid");
    assert_null(a.bus_bind);
    assert_false(a.help);

    assert_int_equal(parse(&a, err, sizeof err, "prog", "--id", "router.1", "--bus-bind", "tcp://*:7200", NULL), 0);
    assert_string_equal(a.bus_bind, "tcp://*:7200");

    assert_int_equal(parse(&a, err, sizeof err, "prog", "--config=x.yaml", "--id=router.2", "-h", NULL), 0);
    assert_string_equal(a.config, "x.yaml");
    assert_string_equal(a.id, "router.2");
    assert_true(a.help);

    assert_int_equal(parse(&a, err, sizeof err, "prog", "-cfile.yaml", "--help", NULL), 0);
    assert_string_equal(a.config, "file.yaml");
    assert_true(a.help);
    assert_null(a.id);   /* nothing left over from the previous call */
}

static void test_parse_bad(void **state)
{
    struct proc_args a;
    char err[256];
    assert_int_equal(parse(&a, err, sizeof err, "prog", "--bogus", NULL), -1);
    assert_non_null(strstr(err, "unknown option '--bogus'"));
    assert_int_equal(parse(&a, err, sizeof err, "prog", "-x", NULL), -1);
    assert_non_null(strstr(err, "unknown option '-x'"));
    assert_int_equal(parse(&a, err, sizeof err, "prog", "-c", NULL), -1);
    assert_non_null(strstr(err, "-c needs a value"));
    assert_int_equal(parse(&a, err, sizeof err, "prog", "--id", NULL), -1);
    assert_non_null(strstr(err, "--id needs a value"));
    assert_int_equal(parse(&a, err, sizeof err, "prog", "--config", NULL), -1);
    assert_non_null(strstr(err, "--config needs a value"));
    assert_int_equal(parse(&a, err, sizeof err, "prog", "--pid-file=", NULL), -1);
    assert_non_null(strstr(err, "non-empty"));
    assert_int_equal(parse(&a, err, sizeof err, "prog", "--log-level", "loud", NULL), -1);
    assert_non_null(strstr(err, "unknown log level 'loud'"));
    assert_int_equal(parse(&a, err, sizeof err, "prog", "--id", "c2s 1", NULL), -1);
    assert_non_null(strstr(err, "--id"));
    assert_int_equal(parse(&a, err, sizeof err, "prog", "--help=yes", NULL), -1);
    assert_non_null(strstr(err, "takes no value"));
    assert_int_equal(parse(&a, err, sizeof err, "prog", "-c", "a.yaml", "stray", NULL), -1);
    assert_non_null(strstr(err, "unexpected argument 'stray'"));
    assert_int_equal(parse(&a, err, sizeof err, "prog", "--bus-bind", "ipc:///tmp/x", NULL), -1);
    assert_non_null(strstr(err, "--bus-bind 'ipc:///tmp/x' is not tcp://ADDRESS:PORT"));
    assert_int_equal(parse(&a, err, sizeof err, "prog", "--bus-bind", "tcp://", NULL), -1);
    assert_non_null(strstr(err, "--bus-bind"));
    /* A good parse after bad ones: getopt's state is reset. */
    assert_int_equal(parse(&a, err, sizeof err, "prog", "--id", "mam.3", NULL), 0);
    assert_string_equal(a.id, "mam.3");
}

static void test_usage(void **state)
{
    proc_usage("meerkat-c2s");   /* prints to stderr; must not crash */
    proc_usage(NULL);
}

static char tmpdir[64];

static int make_tmpdir(void **state)
{
    mk_strlcpy(tmpdir, "/tmp/test_proc.XXXXXX", sizeof tmpdir);
    return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
    char *cmd = xasprintf("rm -rf '%s'", tmpdir);
    int rc = system(cmd);
    free(cmd);
    return rc == 0 ? 0 : -1;
}

static void test_pid_file(void **state)
{
    char *path = xasprintf("%s/role.pid", tmpdir);
    assert_int_equal(proc_pid_write(path), 0);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    long pid = 0;
    assert_int_equal(fscanf(fp, "%ld", &pid), 1);
    fclose(fp);
    assert_int_equal(pid, (long)getpid());
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);

    /* Another process's pid file is left alone. */
    fp = fopen(path, "w");
    assert_non_null(fp);
    fprintf(fp, "%ld\n", (long)getpid() + 1);
    fclose(fp);
    proc_pid_remove(path);
    assert_int_equal(access(path, F_OK), 0);

    assert_int_equal(proc_pid_write(path), 0);
    proc_pid_remove(path);
    assert_int_equal(access(path, F_OK), -1);
    proc_pid_remove(path);   /* already gone */
    proc_pid_remove(NULL);

    char *bad = xasprintf("%s/missing/dir/role.pid", tmpdir);
    assert_int_equal(proc_pid_write(bad), -1);
    free(bad);
    free(path);
}

struct stop_state {
    int calls;
    int hups;      /* on_hup calls */
};

static void on_stop(void *ud)
{
    struct stop_state *s = ud;
    s->calls++;
}

static void on_hup(void *ud)
{
    ((struct stop_state *)ud)->hups++;
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    ev_break(loop, EVBREAK_ONE);
}

/* Runs the loop until something has happened (one short timer tick). */
static void spin(struct ev_loop *loop)
{
    ev_timer t;
    ev_timer_init(&t, tick_cb, 0.05, 0.);
    ev_timer_start(loop, &t);
    ev_run(loop, 0);
    ev_timer_stop(loop, &t);
}

static void test_signals(void **state)
{
    struct ev_loop *loop = ev_default_loop(0);
    struct stop_state st = {0};
    proc_signals(loop, on_stop, &st);

    struct sigaction sa;
    assert_int_equal(sigaction(SIGPIPE, NULL, &sa), 0);
    assert_true(sa.sa_handler == SIG_IGN);

    /* The signal watchers alone do not keep the loop running. */
    ev_run(loop, 0);

    raise(SIGTERM);
    spin(loop);
    assert_int_equal(st.calls, 1);
    raise(SIGINT);
    spin(loop);
    assert_int_equal(st.calls, 2);

    /* SIGHUP reopens the log file: after a rotation the path exists again. */
    char *logpath = xasprintf("%s/role.log", tmpdir);
    char *rotated = xasprintf("%s/role.log.1", tmpdir);
    assert_int_equal(log_init("test", LOG_LEVEL_INFO, logpath), 0);
    assert_int_equal(rename(logpath, rotated), 0);
    raise(SIGHUP);
    spin(loop);
    assert_int_equal(access(logpath, F_OK), 0);
    /* With on_hup set, SIGHUP also calls it with proc_signals's ud (a reload). */
    proc_signals_on_hup(on_hup);
    raise(SIGHUP);
    spin(loop);
    assert_int_equal(st.hups, 1);
    assert_int_equal(st.calls, 2);
    proc_signals_on_hup(NULL);
    raise(SIGHUP);
    spin(loop);
    assert_int_equal(st.hups, 1);
    log_init("test", LOG_LEVEL_WARN, NULL);
    free(logpath);
    free(rotated);

    proc_signals_stop();
    proc_signals_stop();
    assert_int_equal(sigaction(SIGTERM, NULL, &sa), 0);
    assert_true(sa.sa_handler == SIG_DFL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_usage),
        cmocka_unit_test(test_pid_file),
        cmocka_unit_test(test_signals),
    };
    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
