/* tests/unit/test_bus_keys.c - the cluster's CURVE key file: made once 0600, read back, refused when open to others or not a key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus_keys.h"

static char *temp_dir(void)
{
    char tmpl[] = "/tmp/test_bus_keys.XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static void remove_tree(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    assert_true(fd != -1);
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void test_made_once_0600_and_read_back(void **state)
{
    char *base = temp_dir();
    char dir[512], path[600], err[512];
    snprintf(dir, sizeof dir, "%s/data/keys", base);   /* missing directories are made */
    snprintf(path, sizeof path, "%s/%s", dir, BUS_KEYS_FILE);
    struct bus_keys a, b;
    assert_int_equal(bus_keys_load(dir, false, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "no bus key"));
    assert_int_equal(bus_keys_load(dir, true, &a, err, sizeof err), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(strlen(a.public_key), 40);
    assert_int_equal(strlen(a.secret_key), 40);
    /* Read again, with or without create: the same pair. */
    assert_int_equal(bus_keys_load(dir, true, &b, err, sizeof err), 0);
    assert_string_equal(a.public_key, b.public_key);
    assert_string_equal(a.secret_key, b.secret_key);
    assert_int_equal(bus_keys_load(dir, false, &b, err, sizeof err), 0);
    assert_string_equal(a.secret_key, b.secret_key);
    /* The secret never appears in an error. */
    assert_int_equal(chmod(path, 0640), 0);
    assert_int_equal(bus_keys_load(dir, true, &b, err, sizeof err), -1);
    assert_non_null(strstr(err, "0600"));
    assert_null(strstr(err, a.secret_key));
    remove_tree(base);
    free(base);
}

static void test_bad_files_refused(void **state)
{
    char *dir = temp_dir();
    char path[600], err[512];
    snprintf(path, sizeof path, "%s/%s", dir, BUS_KEYS_FILE);
    struct bus_keys k;
    write_file(path, "# comment only\n", 0600);
    assert_int_equal(bus_keys_load(dir, true, &k, err, sizeof err), -1);
    assert_non_null(strstr(err, "does not hold"));
    write_file(path, "short\n", 0600);
    assert_int_equal(bus_keys_load(dir, true, &k, err, sizeof err), -1);
    /* 40 characters, not all Z85 */
    write_file(path, "~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~\n", 0600);
    assert_int_equal(bus_keys_load(dir, true, &k, err, sizeof err), -1);
    assert_non_null(strstr(err, "not Z85"));
    /* A good key written by hand, after a comment */
    write_file(path, "# the cluster's key\nJTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6\n", 0600);
    assert_int_equal(bus_keys_load(dir, false, &k, err, sizeof err), 0);
    assert_string_equal(k.secret_key, "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6");
    assert_string_equal(k.public_key, "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7");
    bus_keys_wipe(&k);
    assert_int_equal(k.secret_key[0], '\0');
    remove_tree(dir);
    free(dir);
}

/* Processes started at the same moment on a fresh directory all end up with one key. */
static void test_concurrent_creation_agrees(void **state)
{
    char *dir = temp_dir();
    enum { KIDS = 8 };
    int fds[KIDS][2];
    pid_t pids[KIDS];
    for (int i = 0; i < KIDS; i++) {
        assert_int_equal(pipe(fds[i]), 0);
        pids[i] = fork();
        assert_true(pids[i] != -1);
        if (pids[i] == 0) {
            struct bus_keys k;
            char err[256];
            int ok = bus_keys_load(dir, true, &k, err, sizeof err) == 0;
            ssize_t w = write(fds[i][1], ok ? k.public_key : "failed", ok ? 40 : 6);
            _exit(w > 0 ? 0 : 1);
        }
        close(fds[i][1]);
    }
    char first[41] = "";
    for (int i = 0; i < KIDS; i++) {
        char pub[41] = "";
        ssize_t n = read(fds[i][0], pub, 40);
        close(fds[i][0]);
        int status;
        assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
        assert_int_equal(n, 40);
        if (i == 0)
            memcpy(first, pub, sizeof first);
        assert_string_equal(pub, first);
    }
    /* No temporary file is left behind. */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) -eq 1", dir);
    assert_int_equal(system(cmd), 0);
    remove_tree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_made_once_0600_and_read_back),
        cmocka_unit_test(test_bad_files_refused),
        cmocka_unit_test(test_concurrent_creation_agrees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
