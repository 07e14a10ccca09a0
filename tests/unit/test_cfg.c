/* tests/unit/test_cfg.c - configuration loading, validation errors, process lookup and sharding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "cfg.h"
#include "util.h"

#ifndef MK_EXAMPLE_CONFIG
#define MK_EXAMPLE_CONFIG "deploy/meerkat.example.yaml"
#endif

static char err[512];

static struct cfg *load(const char *yaml)
{
    err[0] = '\0';
    return cfg_load_string(yaml, strlen(yaml), "t.yaml", err, sizeof err);
}

/* Loads yaml, expects a failure at line with reason containing what. */
static void expect_error_at(const char *yaml, int line, const char *what, const char *file, int src_line)
{
    struct cfg *c = load(yaml);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "t.yaml:%d: ", line);
    if (c != NULL || strncmp(err, prefix, strlen(prefix)) != 0 || strstr(err, what) == NULL) {
        print_error("%s:%d: for YAML:\n%s\nwanted \"%s...%s...\", got \"%s\" (cfg %s)\n", file, src_line, yaml,
                    prefix, what, err, c ? "loaded" : "NULL");
        cfg_free(&c);
        fail();
    }
}
#define expect_error(yaml, line, what) expect_error_at(yaml, line, what, __FILE__, __LINE__)

/* The defaults, with data_dir at var (the paths derived from it follow). */
static void assert_defaults_at(const struct cfg *c, const char *var)
{
    char want[PATH_MAX + 32];
    assert_int_equal(c->ndomains, 1);
    assert_string_equal(c->domains[0], "localhost");
    assert_string_equal(c->log_level, "info");
    assert_null(c->log_file);
    assert_string_equal(c->data_dir, var);
    snprintf(want, sizeof want, "%s/tls/cert.pem", var);
    assert_string_equal(c->tls_cert, want);
    snprintf(want, sizeof want, "%s/tls/key.pem", var);
    assert_string_equal(c->tls_key, want);
    assert_true(c->starttls_required);
    assert_int_equal(c->tls_session_tickets, 0);
    assert_string_equal(c->c2s.host, "0.0.0.0");
    assert_int_equal(c->c2s.port, 5222);
    assert_string_equal(c->c2s_tls.host, "0.0.0.0");
    assert_int_equal(c->c2s_tls.port, 5223);

    assert_string_equal(c->storage.driver, "sqlite");
    snprintf(want, sizeof want, "%s/meerkat.db", var);
    assert_string_equal(c->storage.sqlite_path, want);
    assert_string_equal(c->storage.pg_host, "127.0.0.1");
    assert_int_equal(c->storage.pg_port, 5432);
    assert_string_equal(c->storage.pg_dbname, "meerkat");
    assert_string_equal(c->storage.pg_user, "meerkat");
    assert_null(c->storage.pg_password);
    assert_null(c->storage.pg_password_file);
    assert_null(c->storage.pg_password_env);
    assert_string_equal(c->storage.pg_sslmode, "prefer");
    assert_null(c->storage.pg_sslrootcert);
    assert_int_equal(c->storage.pool_size, 2);

    assert_int_equal(c->limits.max_stanza_bytes, 65536);
    assert_int_equal(c->limits.max_depth, 64);
    assert_false(c->gd.enabled);
    assert_null(c->gd.dc);
    assert_null(c->gd.link_bind);
    assert_int_equal(c->gd.npeers, 0);
    snprintf(want, sizeof want, "%s/gd_curve.key", var);
    assert_string_equal(c->gd.secret_file, want);
    assert_string_equal(c->gd.redis_primary_host, "127.0.0.1");
    assert_int_equal(c->gd.redis_primary_port, 6379);
    assert_string_equal(c->gd.redis_replica_host, "127.0.0.1");
    assert_int_equal(c->gd.redis_replica_port, 6379);
    assert_null(c->gd.redis_user);
    assert_null(c->gd.redis_password);
    assert_string_equal(c->gd.redis_prefix, "meerkat:");
    assert_int_equal(c->gd.redis_db, 0);
    assert_int_equal(c->gd.ttl_sec, 120);
    assert_int_equal(c->gd.refresh_sec, 40);
    assert_int_equal(c->gd.refresh_batch, 1000);
    assert_int_equal(c->gd.cache_ttl_ms, 5000);
    assert_int_equal(c->gd.cache_max, 100000);
    assert_int_equal(c->gd.negative_ttl_ms, 500);
    assert_int_equal(c->gd.bounce_base_ms, 50);
    assert_int_equal(c->gd.bounce_deadline_ms, 5000);
    assert_int_equal(c->gd.link_queue_max, 100000);
    assert_int_equal(c->gd.link_queue_sec, 30);
    assert_int_equal(c->gd.hop_ttl, 4);
    assert_int_equal(c->limits.max_attrs, 64);
    assert_int_equal(c->limits.max_preauth_bytes, 8192);
    assert_int_equal(c->limits.max_preauth_per_ip, 64);
    assert_int_equal(c->limits.max_sessions_per_user, 10);
    assert_int_equal(c->limits.custody_max_per_c2s, 100000);
    assert_int_equal(c->limits.custody_report_ms, 100);
    assert_int_equal(c->limits.custody_timeout, 120);
    assert_int_equal(c->limits.shaper_bytes_per_sec, 0);
    assert_int_equal(c->limits.idle_timeout_sec, 600);
    assert_int_equal(c->limits.auth_timeout_sec, 30);
    assert_int_equal(c->limits.auth_fail_per_ip, 10);
    assert_int_equal(c->limits.auth_fail_per_user, 5);
    assert_int_equal(c->limits.auth_fail_halflife_sec, 300);
    assert_int_equal(c->limits.register_per_ip, 1);
    assert_int_equal(c->limits.register_interval_sec, 600);
    assert_int_equal(c->limits.offline_max, 100);
    assert_int_equal(c->limits.bus_hwm, 100000);

    assert_true(c->modules.register_enabled);
    assert_false(c->modules.anonymous);
    assert_true(c->modules.mam_enabled);
    assert_int_equal(c->modules.mam_batch_rows, 256);
    assert_int_equal(c->modules.mam_batch_ms, 5);
    assert_int_equal(c->modules.mam_max_page, 100);
    assert_false(c->modules.inbox_enabled);
    assert_int_equal(c->grace_sec, 5);

    assert_string_equal(c->component.host, "127.0.0.1");
    assert_int_equal(c->component.port, 0);
    assert_int_equal(c->ncomponents, 0);
    assert_int_equal(c->pusher.max_pending_events, 100000);
    assert_int_equal(c->pusher.nbackends, 0);
    /* pusher.0 is listed, but with no backend nothing is emitted. */
    assert_int_equal(cfg_push_events(c, "localhost"), 0);

    static const char *const ids[] = { "c2s.0", "router.0", "mam.0", "pusher.0", "gd.0" };
    assert_int_equal(c->nprocs, 5);
    for (size_t i = 0; i < 5; i++) {
        char bus[64];
        snprintf(bus, sizeof bus, "tcp://127.0.0.1:%zu", 7100 + i);
        assert_string_equal(c->procs[i].id, ids[i]);
        assert_int_equal(c->procs[i].role, (enum cfg_role)i);
        assert_int_equal(c->procs[i].index, 0);
        assert_string_equal(c->procs[i].bus, bus);
        assert_string_equal(c->procs[i].metrics_host, "127.0.0.1");
        assert_int_equal(c->procs[i].metrics_port, 9100 + (int)i);
    }
}

static void assert_defaults(const struct cfg *c)
{
    assert_defaults_at(c, "./var");
}

static void test_defaults(void **state)
{
    struct cfg *c = cfg_load(NULL, err, sizeof err);
    assert_non_null(c);
    assert_null(c->path);
    assert_defaults(c);
    cfg_free(&c);
    assert_null(c);
    cfg_free(&c);
    cfg_free(NULL);

    /* An empty file, a comment-only file and a null document are all the defaults. */
    static const char *const empties[] = { "", "# nothing here\n", "~\n", "---\n", "log:\nlimits:\n" };
    for (size_t i = 0; i < MK_ARRAY_LEN(empties); i++) {
        c = load(empties[i]);
        assert_non_null(c);
        assert_defaults(c);
        cfg_free(&c);
    }
}

static const char full_yaml[] =
    "domains: [Example.COM, chat.example.com.]\n"
    "log: {level: debug, file: /var/log/meerkat.log}\n"
    "data_dir: /srv/meerkat/\n"
    "tls:\n"
    "  cert: /etc/meerkat/cert.pem\n"
    "  key: /etc/meerkat/key.pem\n"
    "  starttls_required: false\n"
    "  session_tickets: 2\n"
    "listeners:\n"
    "  c2s: {host: 127.0.0.1, port: 15222}\n"
    "  c2s_tls: {host: '::', port: 0}\n"
    "storage:\n"
    "  driver: sqlite\n"
    "  sqlite: {path: db/mk.sqlite}\n"
    "  pgsql:\n"
    "    host: db.internal\n"
    "    port: 6432\n"
    "    dbname: chat\n"
    "    user: chat_rw\n"
    "    password_env: MK_TEST_SURELY_UNSET_VARIABLE\n"
    "    sslmode: verify-full\n"
    "    sslrootcert: /etc/ssl/ca.pem\n"
    "    pool_size: 8\n"
    "limits:\n"
    "  max_stanza_bytes: 131072\n"
    "  max_depth: 32\n"
    "  max_attrs: 16\n"
    "  max_preauth_bytes: 4096\n"
    "  max_sessions_per_user: 3\n"
    "  custody_max_per_c2s: 0\n"
    "  custody_timeout: 0\n"
    "  shaper_bytes_per_sec: 50000\n"
    "  idle_timeout_sec: 300\n"
    "  auth_timeout_sec: 10\n"
    "  auth_fail_per_ip: 20\n"
    "  auth_fail_per_user: 3\n"
    "  auth_fail_halflife_sec: 60\n"
    "  register_per_ip: 0\n"
    "  register_interval_sec: 3600\n"
    "  offline_max: 0\n"
    "  bus_hwm: 5000\n"
    "modules:\n"
    "  register: {enabled: false}\n"
    "  anonymous: {enabled: True}\n"
    "  mam: {enabled: FALSE, batch_rows: 64, batch_ms: 0, max_page: 50}\n"
    "  inbox: {enabled: true}\n"
    "grace_sec: 0\n"
    "processes:\n"
    "  - {id: c2s.1, bus: \"tcp://10.0.0.1:7100\", metrics: \"10.0.0.1:9100\"}\n"
    "  - id: router.0\n"
    "    bus: ipc://var/run/router.0\n"
    "    metrics: \"[::1]:9200\"\n"
    "  - {id: c2s.0, bus: \"inproc://c2s.0\"}\n"
    "  - {id: mam.3, bus: \"tcp://*:7300\", metrics: null}\n";

/* dir: the directory the file was read from, or NULL when it came from a string. */
static void check_full(const struct cfg *c, const char *dir)
{
    char want[PATH_MAX + 64];
    assert_int_equal(c->ndomains, 2);
    assert_string_equal(c->domains[0], "example.com");
    assert_string_equal(c->domains[1], "chat.example.com");
    assert_string_equal(c->log_level, "debug");
    assert_string_equal(c->log_file, "/var/log/meerkat.log");
    assert_string_equal(c->data_dir, "/srv/meerkat/");
    assert_string_equal(c->tls_cert, "/etc/meerkat/cert.pem");
    assert_string_equal(c->tls_key, "/etc/meerkat/key.pem");
    assert_false(c->starttls_required);
    assert_int_equal(c->tls_session_tickets, 2);
    assert_string_equal(c->c2s.host, "127.0.0.1");
    assert_int_equal(c->c2s.port, 15222);
    assert_string_equal(c->c2s_tls.host, "::");
    assert_int_equal(c->c2s_tls.port, 0);
    assert_string_equal(c->storage.driver, "sqlite");
    /* Relative names follow the file's directory; absolute ones stay. */
    snprintf(want, sizeof want, "%s%sdb/mk.sqlite", dir ? dir : "", dir ? "/" : "");
    assert_string_equal(c->storage.sqlite_path, want);
    assert_string_equal(c->storage.pg_host, "db.internal");
    assert_int_equal(c->storage.pg_port, 6432);
    assert_string_equal(c->storage.pg_dbname, "chat");
    assert_string_equal(c->storage.pg_user, "chat_rw");
    /* Not fetched: the driver is sqlite. */
    assert_null(c->storage.pg_password);
    assert_string_equal(c->storage.pg_password_env, "MK_TEST_SURELY_UNSET_VARIABLE");
    assert_string_equal(c->storage.pg_sslmode, "verify-full");
    assert_string_equal(c->storage.pg_sslrootcert, "/etc/ssl/ca.pem");
    assert_int_equal(c->storage.pool_size, 8);
    assert_int_equal(c->limits.max_stanza_bytes, 131072);
    assert_int_equal(c->limits.max_depth, 32);
    assert_int_equal(c->limits.max_attrs, 16);
    assert_int_equal(c->limits.max_preauth_bytes, 4096);
    assert_int_equal(c->limits.max_sessions_per_user, 3);
    assert_int_equal(c->limits.custody_max_per_c2s, 0);
    assert_int_equal(c->limits.custody_timeout, 0);
    assert_int_equal(c->limits.shaper_bytes_per_sec, 50000);
    assert_int_equal(c->limits.idle_timeout_sec, 300);
    assert_int_equal(c->limits.auth_timeout_sec, 10);
    assert_int_equal(c->limits.auth_fail_per_ip, 20);
    assert_int_equal(c->limits.auth_fail_per_user, 3);
    assert_int_equal(c->limits.auth_fail_halflife_sec, 60);
    assert_int_equal(c->limits.register_per_ip, 0);
    assert_int_equal(c->limits.register_interval_sec, 3600);
    assert_int_equal(c->limits.offline_max, 0);
    assert_int_equal(c->limits.bus_hwm, 5000);
    assert_false(c->modules.register_enabled);
    assert_true(c->modules.anonymous);
    assert_false(c->modules.mam_enabled);
    assert_int_equal(c->modules.mam_batch_rows, 64);
    assert_int_equal(c->modules.mam_batch_ms, 0);
    assert_int_equal(c->modules.mam_max_page, 50);
    assert_true(c->modules.inbox_enabled);
    assert_int_equal(c->grace_sec, 0);

    assert_int_equal(c->nprocs, 4);
    assert_string_equal(c->procs[0].id, "c2s.1");
    assert_int_equal(c->procs[0].role, CFG_ROLE_C2S);
    assert_int_equal(c->procs[0].index, 1);
    assert_string_equal(c->procs[0].bus, "tcp://10.0.0.1:7100");
    assert_string_equal(c->procs[0].metrics_host, "10.0.0.1");
    assert_int_equal(c->procs[0].metrics_port, 9100);
    assert_int_equal(c->procs[1].role, CFG_ROLE_ROUTER);
    snprintf(want, sizeof want, "ipc://%s%svar/run/router.0", dir ? dir : "", dir ? "/" : "");
    assert_string_equal(c->procs[1].bus, want);
    assert_string_equal(c->procs[1].metrics_host, "::1");
    assert_int_equal(c->procs[1].metrics_port, 9200);
    assert_null(c->procs[2].metrics_host);
    assert_int_equal(c->procs[2].metrics_port, 0);
    assert_int_equal(c->procs[3].role, CFG_ROLE_MAM);
    assert_int_equal(c->procs[3].index, 3);
    assert_null(c->procs[3].metrics_host);
    assert_int_equal(c->procs[3].metrics_port, 0);
}

static void test_full_file(void **state)
{
    char path[] = "/tmp/test_cfg_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd != -1);
    assert_int_equal(write(fd, full_yaml, sizeof full_yaml - 1), (ssize_t)(sizeof full_yaml - 1));
    close(fd);
    struct cfg *c = cfg_load(path, err, sizeof err);
    unlink(path);
    if (c == NULL)
        print_error("%s\n", err);
    assert_non_null(c);
    assert_string_equal(c->path, path);
    check_full(c, "/tmp");
    cfg_free(&c);

    c = load(full_yaml);
    assert_non_null(c);
    assert_null(c->path);
    check_full(c, NULL);
    cfg_free(&c);

    c = cfg_load("/nonexistent/meerkat.yaml", err, sizeof err);
    assert_null(c);
    assert_non_null(strstr(err, "/nonexistent/meerkat.yaml: cannot open"));
    c = cfg_load("/", err, sizeof err);
    assert_null(c);
    assert_string_equal(err, "/: cannot read: Is a directory");
}

static void test_data_dir_paths(void **state)
{
    struct cfg *c = load("data_dir: /srv/mk\n");
    assert_non_null(c);
    assert_string_equal(c->tls_cert, "/srv/mk/tls/cert.pem");
    assert_string_equal(c->tls_key, "/srv/mk/tls/key.pem");
    assert_string_equal(c->storage.sqlite_path, "/srv/mk/meerkat.db");
    cfg_free(&c);

    /* An explicit path wins; the others still follow data_dir, wherever it is written. */
    c = load("tls: {cert: my.pem}\nstorage: {sqlite: {path: x.db}}\ndata_dir: rel/dir\n");
    assert_non_null(c);
    assert_string_equal(c->tls_cert, "my.pem");
    assert_string_equal(c->tls_key, "rel/dir/tls/key.pem");
    assert_string_equal(c->storage.sqlite_path, "x.db");
    cfg_free(&c);
}

static void test_example_file(void **state)
{
    struct cfg *c = cfg_load(MK_EXAMPLE_CONFIG, err, sizeof err);
    if (c == NULL)
        print_error("%s\n", err);
    assert_non_null(c);
    /* The example's ./var is beside the example. */
    char cwd[PATH_MAX], var[PATH_MAX + 64];
    assert_non_null(getcwd(cwd, sizeof cwd));
    const char *slash = strrchr(MK_EXAMPLE_CONFIG, '/');
    if (MK_EXAMPLE_CONFIG[0] == '/')
        snprintf(var, sizeof var, "%.*s/var", (int)(slash - MK_EXAMPLE_CONFIG), MK_EXAMPLE_CONFIG);
    else if (slash != NULL)
        snprintf(var, sizeof var, "%s/%.*s/var", cwd, (int)(slash - MK_EXAMPLE_CONFIG), MK_EXAMPLE_CONFIG);
    else
        snprintf(var, sizeof var, "%s/var", cwd);
    assert_defaults_at(c, var);
    cfg_free(&c);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* Every relative file name in a file is resolved against the file's directory, whatever
 * the working directory and however the file itself is named; absolute ones stay. */
static void test_relative_paths_follow_the_file(void **state)
{
    char top[] = "/tmp/test_cfg_dir_XXXXXX", conf[64], file[96], pw[96], want[512], cwd[PATH_MAX];
    assert_non_null(mkdtemp(top));
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(conf, sizeof conf, "%s/conf", top);
    assert_int_equal(mkdir(conf, 0700), 0);
    snprintf(file, sizeof file, "%s/m.yaml", conf);
    snprintf(pw, sizeof pw, "%s/secret/pg.pw", conf);
    snprintf(want, sizeof want, "%s/secret", conf);
    assert_int_equal(mkdir(want, 0700), 0);
    write_file(pw, "hunter2\n");
    write_file(file,
               "data_dir: ./var\n"
               "log: {file: logs/meerkat.log}\n"
               "tls: {cert: ././tls/c.pem, key: /abs/k.pem}\n"
               "storage:\n"
               "  driver: pgsql\n"
               "  sqlite: {path: db.sqlite}\n"
               "  pgsql: {password_file: secret/pg.pw, sslrootcert: ca/root.pem, host: rel-host}\n"
               "processes:\n"
               "  - {id: c2s.0, bus: \"ipc://run/c2s.0\"}\n"
               "  - {id: router.0, bus: \"ipc:///abs/router.0\"}\n");
    /* Named absolute from /, and relative from the top directory: the same result. */
    static const char *const from[] = { "/", NULL };
    for (size_t i = 0; i < MK_ARRAY_LEN(from); i++) {
        assert_int_equal(chdir(from[i] ? from[i] : top), 0);
        struct cfg *c = cfg_load(from[i] ? file : "conf/m.yaml", err, sizeof err);
        if (c == NULL)
            print_error("%s\n", err);
        assert_non_null(c);
        snprintf(want, sizeof want, "%s/var", conf);
        assert_string_equal(c->data_dir, want);
        snprintf(want, sizeof want, "%s/logs/meerkat.log", conf);
        assert_string_equal(c->log_file, want);
        snprintf(want, sizeof want, "%s/tls/c.pem", conf);
        assert_string_equal(c->tls_cert, want);
        assert_string_equal(c->tls_key, "/abs/k.pem");
        snprintf(want, sizeof want, "%s/db.sqlite", conf);
        assert_string_equal(c->storage.sqlite_path, want);
        assert_string_equal(c->storage.pg_password_file, pw);
        assert_string_equal(c->storage.pg_password, "hunter2");
        snprintf(want, sizeof want, "%s/ca/root.pem", conf);
        assert_string_equal(c->storage.pg_sslrootcert, want);
        assert_string_equal(c->storage.pg_host, "rel-host");       /* a host name, not a path */
        snprintf(want, sizeof want, "ipc://%s/run/c2s.0", conf);
        assert_string_equal(c->procs[0].bus, want);
        assert_string_equal(c->procs[1].bus, "ipc:///abs/router.0");
        cfg_free(&c);
    }

    /* data_dir left out: the default ./var is beside the file too, and so are the
     * paths derived from it. */
    write_file(file, "log: {level: debug}\n");
    assert_int_equal(chdir("/"), 0);
    struct cfg *c = cfg_load(file, err, sizeof err);
    assert_non_null(c);
    snprintf(want, sizeof want, "%s/var", conf);
    assert_string_equal(c->data_dir, want);
    snprintf(want, sizeof want, "%s/var/meerkat.db", conf);
    assert_string_equal(c->storage.sqlite_path, want);
    snprintf(want, sizeof want, "%s/var/tls/key.pem", conf);
    assert_string_equal(c->tls_key, want);
    cfg_free(&c);

    /* An ipc endpoint that no longer fits a socket address once resolved is refused. */
    char longname[101], yaml[400];
    memset(longname, 'x', 100);
    longname[100] = '\0';
    snprintf(yaml, sizeof yaml, "processes:\n  - {id: c2s.0, bus: \"ipc://%s\"}\n  - {id: router.0, bus: \"tcp://127.0.0.1:1\"}\n",
             longname);
    write_file(file, yaml);
    c = cfg_load(file, err, sizeof err);
    assert_null(c);
    snprintf(want, sizeof want, "%s:2: processes[0].bus: the socket file %s/%s is longer than 107 bytes", file,
             conf, longname);
    assert_non_null(strstr(err, want));

    assert_int_equal(chdir(cwd), 0);
    unlink(file);
    unlink(pw);
    snprintf(want, sizeof want, "%s/secret", conf);
    rmdir(want);
    rmdir(conf);
    rmdir(top);
}

static void test_syntax_errors(void **state)
{
    expect_error("log:\n  level: info\n   file: x\n", 3, "YAML syntax error");
    expect_error("domains: [localhost\ngrace_sec: 1\n", 2, "YAML syntax error");
    expect_error("data_dir: 'unterminated\n\n", 3, "YAML syntax error");
    expect_error("data_dir: *nowhere\n", 1, "YAML syntax error");
    expect_error("grace_sec: 1\n---\ngrace_sec: 2\n", 3, "only one YAML document");
    expect_error("- a\n- b\n", 1, "the top level must be a mapping");
}

static void test_unknown_keys(void **state)
{
    expect_error("domain: [x]\n", 1, "unknown top-level key \"domain\"");
    expect_error("log:\n  levle: info\n", 2, "unknown key \"levle\" in log (known keys: level, file)");
    expect_error("tls:\n  starttls: true\n", 2, "unknown key \"starttls\" in tls");
    expect_error("listeners:\n  c2s:\n    addr: x\n", 3, "in listeners.c2s");
    expect_error("listeners:\n  s2s: {}\n", 2, "unknown key \"s2s\" in listeners");
    expect_error("storage:\n  pgsql:\n    hots: x\n", 3, "in storage.pgsql");
    expect_error("storage:\n  sqlite: {file: x}\n", 2, "in storage.sqlite");
    expect_error("limits:\n  max_stanza: 5\n", 2, "in limits");
    expect_error("modules:\n  mam:\n    enabled: true\n    page: 5\n", 4, "in modules.mam");
    expect_error("modules:\n  muc_light: {enabled: true}\n", 2, "in modules");
    expect_error("processes:\n  - {id: c2s.0, bus: \"inproc://a\"}\n  - {id: router.0, bus: \"inproc://b\", port: 1}\n",
                 3, "unknown key \"port\" in processes[1]");
    expect_error("grace_sec: 1\nlog: {}\ngrace_sec: 2\n", 3, "grace_sec: duplicate key (first at line 1)");
    expect_error("? [a, b]\n: c\n", 1, "keys must be strings");
}

static void test_wrong_types(void **state)
{
    expect_error("listeners:\n  c2s:\n    port: abc\n", 3, "listeners.c2s.port: expected an integer, got \"abc\"");
    expect_error("listeners:\n  c2s: {port: \"5222\"}\n", 2, "expected an integer, got the quoted string");
    expect_error("limits:\n  max_depth: [1]\n", 2, "limits.max_depth: expected an integer, got a list");
    expect_error("limits:\n  max_depth:\n", 2, "expected an integer, got null");
    expect_error("limits:\n  max_depth: 1.5\n", 2, "expected an integer");
    expect_error("domains: {a: b}\n", 1, "domains: expected a list of domains, got a mapping");
    expect_error("domains: localhost\n", 1, "expected a list of domains");
    expect_error("processes: {id: c2s.0}\n", 1, "processes: expected a list of processes, got a mapping");
    expect_error("processes:\n  - c2s.0\n", 2, "processes[0]: expected a mapping");
    expect_error("log: info\n", 1, "log: expected a mapping, got a plain value");
    expect_error("storage: [sqlite]\n", 1, "storage: expected a mapping, got a list");
    expect_error("tls:\n  starttls_required: yes\n", 2, "tls.starttls_required: expected true or false, got \"yes\"");
    expect_error("tls:\n  session_tickets: 9\n", 2, "session_tickets: 9 is out of range");
    expect_error("modules: {mam: {enabled: \"true\"}}\n", 1, "expected true or false");
    expect_error("data_dir: null\n", 1, "data_dir: expected a string, got null");
    expect_error("data_dir: \"\"\n", 1, "data_dir: must not be empty");
    expect_error("data_dir: {a: 1}\n", 1, "data_dir: expected a string, got a mapping");
    expect_error("log: {file: ''}\n", 1, "log.file: must not be empty (write null for none)");
    expect_error("data_dir: \"a\\0b\"\n", 1, "contains a NUL byte");
    expect_error("log:\n  level: verbose\n", 2, "log.level: \"verbose\" is not one of debug, info, warn, error, none");
    expect_error("storage:\n  driver: mysql\n", 2, "storage.driver: \"mysql\" is not one of sqlite, pgsql");
    expect_error("storage:\n  pgsql: {sslmode: on}\n", 2, "storage.pgsql.sslmode");
}

static void test_ranges(void **state)
{
    expect_error("limits:\n  custody_timeout: 86401\n", 2,
                 "limits.custody_timeout: 86401 is out of range (0 to 86400)");
    expect_error("listeners:\n  c2s: {port: 70000}\n", 2, "listeners.c2s.port: 70000 is out of range (0 to 65535)");
    expect_error("listeners:\n  c2s_tls: {port: -1}\n", 2, "-1 is out of range");
    expect_error("storage:\n  pgsql:\n    port: 0\n", 3, "storage.pgsql.port: 0 is out of range (1 to 65535)");
    expect_error("storage:\n  pgsql:\n    pool_size: 0\n", 3, "pool_size: 0 is out of range");
    expect_error("limits:\n  max_stanza_bytes: 0\n", 2, "max_stanza_bytes: 0 is out of range");
    expect_error("limits:\n  max_depth: 0\n", 2, "max_depth: 0 is out of range");
    expect_error("limits:\n  max_attrs: 0\n", 2, "max_attrs: 0 is out of range");
    expect_error("limits:\n  max_preauth_bytes: 0\n", 2, "max_preauth_bytes: 0 is out of range");
    expect_error("limits:\n  max_sessions_per_user: 0\n", 2, "is out of range");
    expect_error("limits:\n  idle_timeout_sec: 0\n", 2, "is out of range");
    expect_error("limits:\n  auth_timeout_sec: 0\n", 2, "is out of range");
    expect_error("limits:\n  auth_fail_per_ip: 0\n", 2, "is out of range");
    expect_error("limits:\n  auth_fail_per_user: 0\n", 2, "is out of range");
    expect_error("limits:\n  auth_fail_halflife_sec: 0\n", 2, "is out of range");
    expect_error("limits:\n  register_interval_sec: 0\n", 2, "is out of range");
    expect_error("limits:\n  bus_hwm: 0\n", 2, "is out of range");
    expect_error("limits:\n  max_depth: 4294967296\n", 2, "is out of range");
    expect_error("limits:\n  max_depth: 99999999999999999999999999\n", 2, "is out of range");
    expect_error("modules: {mam: {batch_rows: 0}}\n", 1, "modules.mam.batch_rows: 0 is out of range");
    expect_error("modules: {mam: {max_page: 0}}\n", 1, "modules.mam.max_page: 0 is out of range");
    expect_error("grace_sec: 100000\n", 1, "grace_sec: 100000 is out of range (0 to 3600)");
}

static void test_domains(void **state)
{
    expect_error("domains: []\n", 1, "domains: at least one domain is required");
    expect_error("domains:\n  - ok.example\n  - \"exa mple.com\"\n", 3, "domains[1]: domain \"exa mple.com\" may hold only");
    expect_error("domains: [-bad.example]\n", 1, "starting with a hyphen");
    expect_error("domains: [bad-.example]\n", 1, "ending with a hyphen");
    expect_error("domains: [a..b]\n", 1, "empty label");
    expect_error("domains: [\"caf\xc3\xa9.example\"]\n", 1, "may hold only");
    expect_error("domains: [aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example]\n", 1,
                 "label longer than 63 bytes");
    char yaml[400] = "domains: [";
    for (int i = 0; i < 26; i++)
        strcat(yaml, "abcdefghi.");
    strcat(yaml, "com]\n");
    expect_error(yaml, 1, "longer than 253 bytes");
    expect_error("domains: [a.example, A.Example]\n", 1, "duplicate domain \"a.example\"");
    expect_error("domains: [null]\n", 1, "expected a string, got null");

    struct cfg *c = load("domains: [Chat.Example.ORG, xn--caf-dma.example, 127.0.0.1]\n");
    assert_non_null(c);
    assert_int_equal(c->ndomains, 3);
    assert_true(cfg_is_local_domain(c, "chat.example.org"));
    assert_true(cfg_is_local_domain(c, "xn--caf-dma.example"));
    assert_true(cfg_is_local_domain(c, "127.0.0.1"));
    assert_false(cfg_is_local_domain(c, "example.org"));
    assert_false(cfg_is_local_domain(c, "localhost"));
    assert_false(cfg_is_local_domain(c, NULL));
    cfg_free(&c);
}

#define TWO "processes:\n  - {id: c2s.0, bus: \"inproc://a\"}\n"

static void test_processes_errors(void **state)
{
    expect_error(TWO "  - {id: c2s.0, bus: \"inproc://b\"}\n", 3, "processes[1].id: duplicate process id \"c2s.0\"");
    expect_error(TWO "  - {id: router, bus: \"inproc://b\"}\n", 3, "\"router\" is not <role>.<n>");
    expect_error(TWO "  - {id: s2s.0, bus: \"inproc://b\"}\n", 3, "is not <role>.<n>");
    expect_error(TWO "  - {id: router.01, bus: \"inproc://b\"}\n", 3, "is not <role>.<n>");
    expect_error(TWO "  - {id: router.x, bus: \"inproc://b\"}\n", 3, "is not <role>.<n>");
    expect_error(TWO "  - {id: router., bus: \"inproc://b\"}\n", 3, "is not <role>.<n>");
    expect_error(TWO "  - {id: router.1000000, bus: \"inproc://b\"}\n", 3, "is not <role>.<n>");
    expect_error(TWO "  - {bus: \"inproc://b\"}\n", 3, "processes[1]: id is required");
    expect_error(TWO "  - {id: router.0}\n", 3, "processes[1]: bus is required");
    expect_error("processes: []\n", 1, "processes: at least one c2s and one router process are required");
    expect_error("grace_sec: 1\n" TWO "  - {id: mam.0, bus: \"inproc://b\"}\n", 3, "at least one c2s and one router");
    expect_error("processes:\n  - {id: router.0, bus: \"inproc://a\"}\n", 2, "at least one c2s and one router");
    expect_error(TWO "  - {id: router.0, bus: \"http://x:80\"}\n", 3,
                 "processes[1].bus: \"http://x:80\" is not a bus endpoint");
    expect_error(TWO "  - {id: router.0, bus: \"tcp://host\"}\n", 3, "is not a bus endpoint");
    expect_error(TWO "  - {id: router.0, bus: \"tcp://:7100\"}\n", 3, "is not a bus endpoint");
    expect_error(TWO "  - {id: router.0, bus: \"tcp://h:0\"}\n", 3, "is not a bus endpoint");
    expect_error(TWO "  - {id: router.0, bus: \"ipc://\"}\n", 3, "is not a bus endpoint");
    expect_error(TWO "  - {id: router.0, bus: \"inproc://a b\"}\n", 3, "is not a bus endpoint");
    expect_error(TWO "  - {id: router.0, bus: \"inproc://a\"}\n", 3,
                 "processes[1].bus: endpoint \"inproc://a\" is already the bus of c2s.0");
    expect_error(TWO "  - {id: router.0, bus: \"inproc://b\", metrics: localhost}\n", 3,
                 "processes[1].metrics: \"localhost\" is not host:port");
    expect_error(TWO "  - {id: router.0, bus: \"inproc://b\", metrics: \"h:99999\"}\n", 3, "is not host:port");
    expect_error(TWO "  - {id: router.0, bus: \"inproc://b\", metrics: \":9100\"}\n", 3, "is not host:port");
    expect_error(TWO "  - {id: router.0, bus: \"inproc://b\", metrics: \"::1:9100\"}\n", 3, "is not host:port");
    expect_error(TWO "  - {id: router.0, bus: \"inproc://b\", metrics: \"[::1]9100\"}\n", 3, "is not host:port");
    expect_error(TWO "  - {id: router.0, bus: \"inproc://b\", metrics: 9100}\n", 3, "is not host:port");
}

static void test_passwords(void **state)
{
    expect_error("storage:\n  pgsql:\n    user: u\n    password: hunter2\n", 4,
                 "storage.pgsql.password: a password is never written in the config file; use password_file or password_env");
    expect_error("storage:\n  driver: pgsql\n  pgsql:\n    password_file: /nonexistent/pw\n", 4,
                 "storage.pgsql.password_file: cannot read /nonexistent/pw");
    expect_error("storage:\n  driver: pgsql\n  pgsql:\n    password_env: MK_TEST_SURELY_UNSET_VARIABLE\n", 4,
                 "environment variable MK_TEST_SURELY_UNSET_VARIABLE is not set");
    expect_error("storage:\n  driver: pgsql\n  pgsql:\n    password_file: /x\n    password_env: Y\n", 5,
                 "give password_file or password_env, not both");
    /* The error names the file, never the secret. */
    assert_null(strstr(err, "hunter2"));

    char path[] = "/tmp/test_cfg_pw_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd != -1);
    assert_int_equal(write(fd, "s3cret pw\n", 10), 10);
    close(fd);
    char yaml[256];
    snprintf(yaml, sizeof yaml, "storage:\n  driver: pgsql\n  pgsql: {password_file: %s}\n", path);
    struct cfg *c = load(yaml);
    if (c == NULL)
        print_error("%s\n", err);
    assert_non_null(c);
    assert_string_equal(c->storage.pg_password, "s3cret pw");
    assert_string_equal(c->storage.pg_password_file, path);
    cfg_free(&c);
    /* With sqlite as the driver the file is not read at all. */
    unlink(path);
    snprintf(yaml, sizeof yaml, "storage:\n  pgsql: {password_file: %s}\n", path);
    c = load(yaml);
    assert_non_null(c);
    assert_null(c->storage.pg_password);
    cfg_free(&c);

    setenv("MK_TEST_PG_PASSWORD", "from-env", 1);
    c = load("storage:\n  driver: pgsql\n  pgsql: {password_env: MK_TEST_PG_PASSWORD}\n");
    assert_non_null(c);
    assert_string_equal(c->storage.pg_password, "from-env");
    assert_string_equal(c->storage.pg_password_env, "MK_TEST_PG_PASSWORD");
    cfg_free(&c);
    unsetenv("MK_TEST_PG_PASSWORD");
}

static void test_find_and_roles(void **state)
{
    struct cfg *c = load("processes:\n"
                         "  - {id: c2s.2, bus: \"inproc://c2\"}\n"
                         "  - {id: router.0, bus: \"inproc://r0\"}\n"
                         "  - {id: c2s.0, bus: \"inproc://c0\"}\n"
                         "  - {id: c2s.10, bus: \"inproc://c10\"}\n"
                         "  - {id: c2s.1, bus: \"inproc://c1\"}\n");
    assert_non_null(c);
    const struct cfg_proc *p = cfg_find_proc(c, "c2s.10");
    assert_non_null(p);
    assert_string_equal(p->bus, "inproc://c10");
    assert_int_equal(p->index, 10);
    assert_null(cfg_find_proc(c, "c2s.3"));
    assert_null(cfg_find_proc(c, "mam.0"));
    assert_null(cfg_find_proc(c, NULL));

    const struct cfg_proc *out[8];
    assert_int_equal(cfg_procs_of_role(c, CFG_ROLE_C2S, out, 8), 4);
    assert_string_equal(out[0]->id, "c2s.0");
    assert_string_equal(out[1]->id, "c2s.1");
    assert_string_equal(out[2]->id, "c2s.2");
    assert_string_equal(out[3]->id, "c2s.10");
    /* A short array gets the lowest indexes. */
    assert_int_equal(cfg_procs_of_role(c, CFG_ROLE_C2S, out, 2), 2);
    assert_string_equal(out[0]->id, "c2s.0");
    assert_string_equal(out[1]->id, "c2s.1");
    assert_int_equal(cfg_procs_of_role(c, CFG_ROLE_C2S, out, 0), 0);
    assert_int_equal(cfg_procs_of_role(c, CFG_ROLE_ROUTER, out, 8), 1);
    assert_int_equal(cfg_procs_of_role(c, CFG_ROLE_GD, out, 8), 0);
    assert_null(cfg_shard(c, CFG_ROLE_GD, "a@b"));

    enum cfg_role r;
    for (int i = 0; i < CFG_ROLE_COUNT; i++) {
        assert_int_equal(cfg_role_parse(cfg_role_name((enum cfg_role)i), &r), 0);
        assert_int_equal(r, i);
    }
    assert_int_equal(cfg_role_parse("s2s", &r), -1);
    assert_int_equal(cfg_role_parse("C2S", &r), -1);
    assert_string_equal(cfg_role_name(CFG_ROLE_PUSHER), "pusher");
    assert_string_equal(cfg_role_name(CFG_ROLE_COUNT), "unknown");
    cfg_free(&c);
}

/* A config with one c2s and routers router.0 .. router.<n-1>, listed in reverse. */
static struct cfg *load_routers(int n)
{
    char yaml[2048];
    size_t off = (size_t)snprintf(yaml, sizeof yaml, "processes:\n  - {id: c2s.0, bus: \"inproc://c\"}\n");
    for (int i = n - 1; i >= 0; i--)
        off += (size_t)snprintf(yaml + off, sizeof yaml - off, "  - {id: router.%d, bus: \"inproc://r%d\"}\n", i, i);
    struct cfg *c = load(yaml);
    assert_non_null(c);
    return c;
}

/* A reload may only add processes: the rest of the file must read the same. */
static void test_reload_check(void **state)
{
    static const char base[] = "domains: [a.example]\nlimits: {offline_max: 5}\nprocesses:\n"
                               "  - {id: c2s.0, bus: \"inproc://c0\"}\n  - {id: router.0, bus: \"inproc://r0\"}\n";
    char why[256];
    struct cfg *cur = load(base);
    assert_non_null(cur);
    const struct cfg_proc *self = cfg_find_proc(cur, "router.0");
    /* Same file, keys in another layout but the same values: nothing to refuse, nothing added. */
    struct cfg *same = load(base);
    assert_int_equal(cfg_reload_check(cur, same, why, sizeof why), 0);
    cfg_free(&same);
    /* A changed limit and a changed domain list: refused, both named. */
    struct cfg *changed = load("domains: [a.example, b.example]\nlimits: {offline_max: 6}\nprocesses:\n"
                               "  - {id: c2s.0, bus: \"inproc://c0\"}\n  - {id: router.0, bus: \"inproc://r0\"}\n");
    assert_int_equal(cfg_reload_check(cur, changed, why, sizeof why), -1);
    assert_string_equal(why, "changed: domains, limits; a reload only adds processes, the rest needs a restart");
    cfg_free(&changed);
    /* A key added (even one with its default value) is a change too. */
    struct cfg *more = load("domains: [a.example]\nlimits: {offline_max: 5}\ngrace_sec: 5\nprocesses:\n"
                            "  - {id: c2s.0, bus: \"inproc://c0\"}\n  - {id: router.0, bus: \"inproc://r0\"}\n");
    assert_int_equal(cfg_reload_check(cur, more, why, sizeof why), -1);
    assert_string_equal(why, "changed: grace_sec; a reload only adds processes, the rest needs a restart");
    cfg_free(&more);
    /* A process moved or removed: refused. */
    struct cfg *moved = load("domains: [a.example]\nlimits: {offline_max: 5}\nprocesses:\n"
                             "  - {id: c2s.0, bus: \"inproc://c9\"}\n  - {id: router.0, bus: \"inproc://r0\"}\n");
    assert_int_equal(cfg_reload_check(cur, moved, why, sizeof why), -1);
    assert_non_null(strstr(why, "process c2s.0 changed its bus"));
    cfg_free(&moved);
    struct cfg *gone = load("domains: [a.example]\nlimits: {offline_max: 5}\nprocesses:\n"
                            "  - {id: c2s.0, bus: \"inproc://c0\"}\n  - {id: router.1, bus: \"inproc://r1\"}\n");
    assert_non_null(gone);
    assert_int_equal(cfg_reload_check(cur, gone, why, sizeof why), -1);
    assert_non_null(strstr(why, "process router.0 is no longer in the file"));
    cfg_free(&gone);
    /* A new router shard: accepted (the shards hand its share of the bare JIDs over). */
    struct cfg *shard = load("domains: [a.example]\nlimits: {offline_max: 5}\nprocesses:\n"
                             "  - {id: router.1, bus: \"inproc://r1\"}\n"
                             "  - {id: c2s.0, bus: \"inproc://c0\"}\n  - {id: router.0, bus: \"inproc://r0\"}\n");
    assert_int_equal(cfg_reload_check(cur, shard, why, sizeof why), 0);
    cfg_free(&shard);
    /* A new mam shard: refused (its share of the archive owners would not be handed over). */
    struct cfg *mam = load("domains: [a.example]\nlimits: {offline_max: 5}\nprocesses:\n"
                           "  - {id: mam.0, bus: \"inproc://m0\"}\n"
                           "  - {id: c2s.0, bus: \"inproc://c0\"}\n  - {id: router.0, bus: \"inproc://r0\"}\n");
    assert_int_equal(cfg_reload_check(cur, mam, why, sizeof why), -1);
    assert_string_equal(why, "process mam.0 is new: a reload adds c2s and router processes only; a new mam needs a "
                             "restart");
    cfg_free(&mam);
    /* Two processes added (listed first): accepted and adopted; the old entries stay valid. */
    struct cfg *next = load("domains: [a.example]\nlimits: {offline_max: 5}\nprocesses:\n"
                            "  - {id: c2s.2, bus: \"inproc://c2\"}\n  - {id: c2s.1, bus: \"inproc://c1\"}\n"
                            "  - {id: c2s.0, bus: \"inproc://c0\"}\n  - {id: router.0, bus: \"inproc://r0\"}\n");
    assert_int_equal(cfg_reload_check(cur, next, why, sizeof why), 0);
    const struct cfg_proc *added[4];
    assert_int_equal(cfg_adopt_procs(cur, next, added, 4), 2);
    assert_string_equal(added[0]->id, "c2s.2");
    assert_string_equal(added[1]->id, "c2s.1");
    assert_int_equal(next->nprocs, 0);
    cfg_free(&next);
    assert_int_equal(cur->nprocs, 4);
    assert_string_equal(self->id, "router.0");              /* the old list is still there */
    assert_true(cfg_find_proc(cur, "router.0") != self);     /* and the new one is what queries see */
    const struct cfg_proc *c2s[4];
    assert_int_equal(cfg_procs_of_role(cur, CFG_ROLE_C2S, c2s, 4), 3);
    assert_string_equal(c2s[2]->id, "c2s.2");
    /* Adding the same again: nothing new. */
    struct cfg *again = load("domains: [a.example]\nlimits: {offline_max: 5}\nprocesses:\n"
                             "  - {id: c2s.2, bus: \"inproc://c2\"}\n  - {id: c2s.1, bus: \"inproc://c1\"}\n"
                             "  - {id: c2s.0, bus: \"inproc://c0\"}\n  - {id: router.0, bus: \"inproc://r0\"}\n");
    assert_int_equal(cfg_reload_check(cur, again, why, sizeof why), 0);
    assert_int_equal(cfg_adopt_procs(cur, again, added, 4), 0);
    cfg_free(&again);
    cfg_free(&cur);
}

static void test_shard(void **state)
{
    enum { KEYS = 10000 };
    struct cfg *four = load_routers(4), *four_again = load_routers(4), *five = load_routers(5);
    int count[4] = { 0 }, moved = 0;
    char key[64];
    for (int i = 0; i < KEYS; i++) {
        snprintf(key, sizeof key, "user%d@example.com", i);
        const struct cfg_proc *a = cfg_shard(four, CFG_ROLE_ROUTER, key);
        const struct cfg_proc *b = cfg_shard(four_again, CFG_ROLE_ROUTER, key);
        const struct cfg_proc *d = cfg_shard(five, CFG_ROLE_ROUTER, key);
        assert_non_null(a);
        assert_true(a == cfg_shard(four, CFG_ROLE_ROUTER, key));
        /* A full JID's bare part, by length: the same shard as the bare JID. */
        char full[80];
        snprintf(full, sizeof full, "%s/phone", key);
        assert_true(a == cfg_shard_n(four, CFG_ROLE_ROUTER, full, strlen(key)));
        assert_string_equal(a->id, b->id);
        count[a->index]++;
        if (strcmp(a->id, d->id) != 0) {
            /* Adding router.4 only takes keys for itself. */
            assert_string_equal(d->id, "router.4");
            moved++;
        }
    }
    for (int s = 0; s < 4; s++) {
        if (count[s] < KEYS / 4 * 85 / 100 || count[s] > KEYS / 4 * 115 / 100)
            print_error("shard %d has %d keys\n", s, count[s]);
        assert_true(count[s] >= KEYS / 4 * 85 / 100 && count[s] <= KEYS / 4 * 115 / 100);
    }
    /* About a fifth of the keys move to the new shard. */
    assert_true(moved >= KEYS / 5 * 85 / 100 && moved <= KEYS / 5 * 115 / 100);

    /* One router owns everything. */
    struct cfg *one = load_routers(1);
    assert_string_equal(cfg_shard(one, CFG_ROLE_ROUTER, "x@y")->id, "router.0");
    assert_null(cfg_shard(one, CFG_ROLE_ROUTER, NULL));
    cfg_free(&one);
    cfg_free(&four);
    cfg_free(&four_again);
    cfg_free(&five);
}


/* The bus section: CURVE on by default with the key in the data directory, the frame limit. */
static void test_bus_section(void **state)
{
    struct cfg *c = load("data_dir: /srv/mk\n");
    assert_non_null(c);
    assert_true(c->bus.curve);
    assert_string_equal(c->bus.keys_dir, "/srv/mk");
    assert_int_equal(c->limits.bus_max_frame_bytes, 8u << 20);
    cfg_free(&c);
    c = load("bus: {curve: false, keys_dir: /etc/meerkat/keys}\nlimits: {bus_max_frame_bytes: 2097152}\n");
    assert_non_null(c);
    assert_false(c->bus.curve);
    assert_string_equal(c->bus.keys_dir, "/etc/meerkat/keys");
    assert_int_equal(c->limits.bus_max_frame_bytes, 2u << 20);
    cfg_free(&c);
    expect_error("limits:\n  bus_max_frame_bytes: 1000\n", 2, "bus_max_frame_bytes");
    expect_error("bus:\n  curve: maybe\n", 2, "curve");
    expect_error("domains: [a.org]\nlimits:\n  max_stanza_bytes: 1048576\n  bus_max_frame_bytes: 2097152\n", 2,
                 "bus_max_frame_bytes (2097152) must be at least twice max_stanza_bytes (1048576)");
    expect_error("bus:\n  secret: abc\n", 2, "secret");
}

#define ALL_KINDS 0x3fu
#define K(n) CFG_PUSH_BIT(n)   /* 0 sent, 1 delivered, 2 stored, 3 groupchat, 4 online, 5 offline */

static char *secret_file(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/test_cfg_secret_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd != -1);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_pusher_backends(void **state)
{
    char *sec = xstrdup(secret_file("hmac-key\n"));
    char *key = xstrdup(secret_file("AKIDEXAMPLE\n"));
    char yaml[4096];
    setenv("MK_TEST_AWS_SECRET", "wJalrXUtnFEMI/K7MDENG", 1);
    snprintf(yaml, sizeof yaml,
             "domains: [a.example, B.example]\n"
             "pusher:\n"
             "  max_pending_events: 50\n"
             "  backends:\n"
             "    - type: http\n"
             "      url: http://127.0.0.1:8080/hook?x=1\n"
             "    - name: audit\n"
             "      type: http\n"
             "      url: https://[::1]:8443/events\n"
             "      format: json\n"
             "      secret_file: %s\n"
             "      domains: [b.EXAMPLE]\n"
             "      connect_timeout_ms: 100\n"
             "      timeout_ms: 200\n"
             "      max_connections: 3\n"
             "      pipeline: 8\n"
             "      tls_verify: false\n"
             "      ca_file: /etc/ca.pem\n"
             "      max_retries: 2\n"
             "      retry_base_ms: 10\n"
             "      retry_max_ms: 20\n"
             "      deadline_sec: 7\n"
             "    - type: sns\n"
             "      domains: [a.example]\n"
             "      events: [online, offline]\n"
             "      sns:\n"
             "        region: eu-west-1\n"
             "        account_id: \"123456789012\"\n"
             "        presence_topic: presence\n"
             "        access_key_id_file: %s\n"
             "        secret_access_key_env: MK_TEST_AWS_SECRET\n"
             "    - type: xep0357\n"
             "      virtual_hosts: [Push.Example]\n"
             "      mongoosepush_url: https://mpush:8443\n"
             "      mongoosepush_api: v2\n",
             sec, key);
    unsetenv("AWS_SESSION_TOKEN");
    struct cfg *c = load(yaml);
    if (c == NULL)
        print_error("%s\n", err);
    assert_non_null(c);
    assert_int_equal(c->pusher.max_pending_events, 50);
    assert_int_equal(c->pusher.nbackends, 4);

    const struct cfg_push_backend *b = &c->pusher.backends[0];
    assert_string_equal(b->name, "http.0");
    assert_int_equal(b->type, CFG_PUSH_HTTP);
    assert_int_equal(b->format, CFG_PUSH_FORM);
    assert_int_equal(b->events, K(0));
    assert_int_equal(b->ndomains, 0);
    assert_string_equal(b->url, "http://127.0.0.1:8080/hook?x=1");
    assert_int_equal(b->connect_timeout_ms, 2000);
    assert_int_equal(b->timeout_ms, 5000);
    assert_int_equal(b->max_connections, 16);
    assert_int_equal(b->pipeline, 0);   /* automatic */
    assert_true(b->tls_verify);
    assert_null(b->ca_file);
    assert_int_equal(b->max_retries, 8);
    assert_int_equal(b->retry_base_ms, 100);
    assert_int_equal(b->retry_max_ms, 30000);
    assert_int_equal(b->deadline_sec, 300);
    assert_null(b->secret);

    b = &c->pusher.backends[1];
    assert_string_equal(b->name, "audit");
    assert_int_equal(b->format, CFG_PUSH_JSON);
    assert_int_equal(b->events, ALL_KINDS);
    assert_string_equal(b->secret, "hmac-key");
    assert_int_equal(b->ndomains, 1);
    assert_string_equal(b->domains[0], "b.example");
    assert_int_equal(b->connect_timeout_ms, 100);
    assert_int_equal(b->timeout_ms, 200);
    assert_int_equal(b->max_connections, 3);
    assert_int_equal(b->pipeline, 8);
    assert_false(b->tls_verify);
    assert_string_equal(b->ca_file, "/etc/ca.pem");
    assert_int_equal(b->max_retries, 2);
    assert_int_equal(b->retry_base_ms, 10);
    assert_int_equal(b->retry_max_ms, 20);
    assert_int_equal(b->deadline_sec, 7);

    b = &c->pusher.backends[2];
    assert_string_equal(b->name, "sns.2");
    assert_int_equal(b->type, CFG_PUSH_SNS);
    assert_int_equal(b->events, K(4) | K(5));
    assert_string_equal(b->sns_region, "eu-west-1");
    assert_string_equal(b->sns_account_id, "123456789012");
    assert_string_equal(b->sns_endpoint, "https://sns.eu-west-1.amazonaws.com/");
    assert_string_equal(b->sns_signing_region, "eu-west-1");
    assert_string_equal(b->sns_presence_topic, "presence");
    assert_null(b->sns_pm_topic);
    assert_null(b->sns_muc_topic);
    assert_string_equal(b->aws_access_key_id, "AKIDEXAMPLE");
    assert_string_equal(b->aws_secret_access_key, "wJalrXUtnFEMI/K7MDENG");
    assert_null(b->aws_session_token);

    b = &c->pusher.backends[3];
    assert_int_equal(b->type, CFG_PUSH_XEP0357);
    assert_int_equal(b->events, K(1) | K(2) | K(4));   /* the default: ONLINE resets message-count */
    assert_int_equal(b->nvirtual_hosts, 1);
    assert_string_equal(b->virtual_hosts[0], "push.example");
    assert_string_equal(b->mongoosepush_url, "https://mpush:8443");
    assert_string_equal(b->mongoosepush_api, "v2");

    /* Per domain: every backend without domains, plus the ones naming it. */
    assert_int_equal(cfg_push_events(c, "a.example"), K(0) | K(4) | K(5) | K(1) | K(2));
    assert_int_equal(cfg_push_events(c, "b.example"), ALL_KINDS);
    assert_int_equal(cfg_push_events(c, "elsewhere.example"), 0);
    assert_int_equal(cfg_push_events(c, NULL), 0);
    cfg_free(&c);

    /* The sns defaults: keys from the standard AWS variables, the default kinds. */
    setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env", 1);
    setenv("AWS_SESSION_TOKEN", "token-from-env", 1);
    c = load("pusher:\n  backends:\n    - {type: sns, sns: {region: us-east-1, account_id: 000000000001, "
             "endpoint: \"http://127.0.0.1:4566/\", signing_region: us-west-2}}\n"
             "    - {type: xep0357}\n");
    if (c == NULL)
        print_error("%s\n", err);
    assert_non_null(c);
    b = &c->pusher.backends[0];
    assert_int_equal(b->events, K(0) | K(3) | K(4) | K(5));
    assert_string_equal(b->aws_access_key_id, "AKIDENV");
    assert_string_equal(b->aws_access_key_id_env, "AWS_ACCESS_KEY_ID");
    assert_string_equal(b->aws_secret_access_key, "secret-from-env");
    assert_string_equal(b->aws_session_token, "token-from-env");
    assert_string_equal(b->sns_endpoint, "http://127.0.0.1:4566/");
    assert_string_equal(b->sns_signing_region, "us-west-2");
    assert_string_equal(c->pusher.backends[1].mongoosepush_api, "v3");
    assert_null(c->pusher.backends[1].mongoosepush_url);
    cfg_free(&c);
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    unsetenv("AWS_SESSION_TOKEN");

    /* No pusher process: nothing is emitted, whatever the backends. */
    c = load("processes:\n  - {id: c2s.0, bus: \"tcp://127.0.0.1:7100\"}\n  - {id: router.0, bus: \"tcp://127.0.0.1:7101\"}\n"
             "pusher: {backends: [{type: http, url: \"http://h/\"}]}\n");
    assert_non_null(c);
    assert_int_equal(c->pusher.nbackends, 1);
    assert_int_equal(cfg_push_events(c, "localhost"), 0);
    cfg_free(&c);

    /* The key file's content never appears in an error. */
    char *bad = xstrdup(secret_file(""));
    snprintf(yaml, sizeof yaml, "pusher:\n  backends:\n    - type: http\n      url: http://h/\n      format: json\n"
             "      secret_file: %s\n", bad);
    expect_error(yaml, 6, "is empty");
    unlink(bad);
    unlink(sec);
    unlink(key);
    free(bad);
    free(sec);
    free(key);
    unsetenv("MK_TEST_AWS_SECRET");
}

static void test_pusher_errors(void **state)
{
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    expect_error("pusher:\n  backends:\n    - type: smtp\n", 3, "\"smtp\" is not one of http, sns, xep0357");
    expect_error("pusher:\n  backends:\n    - url: http://h/\n", 3, "pusher.backends[0]: type is required");
    expect_error("pusher:\n  backends:\n    - type: http\n", 3, "url is required");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: ftp://h/x\n", 4,
                 "pusher.backends[0].url: is not an http:// or https:// URL");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: \"http:///x\"\n", 4, "has no host");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: \"http://h:99999/\"\n", 4, "has a bad port");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: \"http://h/a b\"\n", 4, "blank");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: \"https://u:p@h/\"\n", 4, "credentials");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: http://h/\n      format: json\n", 5,
                 "format json signs every request: secret_file or secret_env is required");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: http://h/\n      format: json\n"
                 "      secret_env: MK_TEST_SURELY_UNSET_VARIABLE\n", 6,
                 "pusher.backends[0].secret_env: environment variable MK_TEST_SURELY_UNSET_VARIABLE is not set");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: http://h/\n      secret: hunter2\n", 5,
                 "a secret is never written in the config file");
    assert_null(strstr(err, "hunter2"));
    expect_error("pusher:\n  backends:\n    - type: http\n      url: http://h/\n      format: xml\n", 5,
                 "\"xml\" is not one of form, json");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: http://h/\n      events: [sent, typed]\n", 5,
                 "events[1]: \"typed\" is not one of sent, delivered, stored, groupchat, online, offline");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: http://h/\n      events: [sent, sent]\n", 5,
                 "listed twice");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: http://h/\n      events: []\n", 5,
                 "at least one event kind");
    expect_error("pusher:\n  backends:\n    - {type: http, url: \"http://h/\", name: x}\n"
                 "    - {type: http, url: \"http://i/\", name: x}\n", 4, "duplicate backend name \"x\"");
    expect_error("pusher:\n  backends:\n    - {type: http, url: \"http://h/\", name: \"a b\"}\n", 3, "metric label");
    expect_error("domains: [a.example]\npusher:\n  backends:\n    - type: http\n      url: http://h/\n"
                 "      domains: [a.example, other.example]\n", 6,
                 "pusher.backends[0].domains[1]: \"other.example\" is not a hosted domain");
    /* Checked against the domains wherever they are written. */
    expect_error("pusher:\n  backends:\n    - {type: http, url: \"http://h/\", domains: [localhost]}\n"
                 "domains: [a.example]\n", 3, "\"localhost\" is not a hosted domain");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: http://h/\n      retry_base_ms: 500\n"
                 "      retry_max_ms: 100\n", 6, "retry_max_ms (100) is below retry_base_ms (500)");
    expect_error("pusher:\n  backends:\n    - type: http\n      url: http://h/\n      sns: {region: x}\n", 5,
                 "pusher.backends[0].sns: not used by a backend of type http");
    expect_error("pusher:\n  backends:\n    - type: sns\n", 3, "needs an sns: mapping");
    expect_error("pusher:\n  backends:\n    - type: sns\n      sns:\n        account_id: \"123456789012\"\n", 5,
                 "pusher.backends[0].sns: region is required");
    expect_error("pusher:\n  backends:\n    - type: sns\n      sns:\n        region: eu-west-1\n", 5,
                 "account_id is required");
    expect_error("pusher:\n  backends:\n    - type: sns\n      sns:\n        region: eu-west-1\n"
                 "        account_id: \"12345\"\n", 6, "12 digits");
    expect_error("pusher:\n  backends:\n    - type: sns\n      sns:\n        region: eu-west-1\n"
                 "        account_id: \"123456789012\"\n", 5,
                 "access_key_id is required: give access_key_id_file or access_key_id_env, or set AWS_ACCESS_KEY_ID");
    setenv("AWS_ACCESS_KEY_ID", "AKID", 1);
    expect_error("pusher:\n  backends:\n    - type: sns\n      sns:\n        region: eu-west-1\n"
                 "        account_id: \"123456789012\"\n", 5, "secret_access_key is required");
    unsetenv("AWS_ACCESS_KEY_ID");
    expect_error("pusher:\n  backends:\n    - type: sns\n      sns:\n        region: eu-west-1\n"
                 "        account_id: \"123456789012\"\n        endpoint: sns.local\n", 7,
                 "sns.endpoint: is not an http:// or https:// URL");
    expect_error("pusher:\n  backends:\n    - type: sns\n      sns:\n        secret_access_key: abc\n", 5,
                 "keys are never written in the config file");
    expect_error("pusher:\n  backends:\n    - type: xep0357\n      virtual_hosts: [push.example]\n", 4,
                 "mongoosepush_url is required");
    expect_error("pusher:\n  backends:\n    - type: xep0357\n      virtual_hosts: [push.example]\n"
                 "      mongoosepush_url: \"mpush:8443\"\n", 5, "mongoosepush_url: is not an http");
    expect_error("pusher:\n  backends:\n    - type: xep0357\n      mongoosepush_api: v4\n", 4, "is not one of v3, v2");
    expect_error("pusher:\n  backends:\n    - type: xep0357\n      url: http://h/\n", 4,
                 "url: not used by a backend of type xep0357");
    expect_error("pusher:\n  backends: {type: http}\n", 2, "pusher.backends: expected a list of backends");
    expect_error("pusher:\n  max_pending_events: 0\n", 2, "out of range");
    expect_error("pusher:\n  backends:\n    - {type: http, url: 'http://h/', pipeline: 65}\n", 3, "out of range");
    expect_error("pusher:\n  color: red\n", 2, "unknown key \"color\" in pusher");
}

/* modules.sm (XEP-0198): defaults, every key, the ranges and an unknown key. */
static void test_sm_section(void **state)
{
    (void)state;
    struct cfg *c = load("domains: [localhost]\n");
    assert_non_null(c);
    assert_true(c->modules.sm_enabled);
    assert_int_equal(c->modules.sm_resume_timeout, 300);
    assert_int_equal(c->modules.sm_max_unacked, 500);
    cfg_free(&c);
    c = load("modules:\n  sm: {enabled: false, resume_timeout: 0, max_unacked: 20}\n");
    assert_non_null(c);
    assert_false(c->modules.sm_enabled);
    assert_int_equal(c->modules.sm_resume_timeout, 0);
    assert_int_equal(c->modules.sm_max_unacked, 20);
    cfg_free(&c);
    expect_error("modules:\n  sm: {max_unacked: 0}\n", 2, "modules.sm.max_unacked: 0 is out of range (1 to 1000000)");
    expect_error("modules:\n  sm: {resume_timeout: 86401}\n", 2, "modules.sm.resume_timeout: 86401 is out of range");
    expect_error("modules:\n  sm: {resume: true}\n", 2, "resume");
    expect_error("modules:\n  sm: {enabled: maybe}\n", 2, "enabled");
}

static void test_see_other_host(void **state)
{
    (void)state;
    struct cfg *c = load("domains: [localhost]\n");
    assert_non_null(c);
    assert_int_equal(c->see_other_host, CFG_SOH_AUTO);
    assert_null(c->see_other_host_addr);
    cfg_free(&c);
    c = load("see_other_host: off\n");
    assert_non_null(c);
    assert_int_equal(c->see_other_host, CFG_SOH_OFF);
    cfg_free(&c);
    c = load("see_other_host: xmpp.example.org:5222\n");
    assert_non_null(c);
    assert_int_equal(c->see_other_host, CFG_SOH_FIXED);
    assert_string_equal(c->see_other_host_addr, "xmpp.example.org:5222");
    cfg_free(&c);
    c = load("see_other_host: \"[2001:db8::1]:9222\"\nsee_other_host_x: 1\n");
    assert_null(c);
    c = load("see_other_host: \"[2001:db8::1]:9222\"\n");
    assert_non_null(c);
    assert_string_equal(c->see_other_host_addr, "[2001:db8::1]:9222");
    cfg_free(&c);
    expect_error("see_other_host: xmpp.example.org\n", 1, "see_other_host: \"xmpp.example.org\" is not auto, off or host:port");
    expect_error("see_other_host: \"h:0\"\n", 1, "is not auto, off or host:port");
    expect_error("see_other_host: \"2001:db8::1:5222\"\n", 1, "is not auto, off or host:port");
    expect_error("see_other_host: [a]\n", 1, "see_other_host");
}

static void test_muc_section(void **state)
{
    (void)state;
    struct cfg *c = load("domains: [localhost, example.org]\n");
    assert_non_null(c);
    assert_true(c->modules.muc_enabled);   /* on by default */
    assert_int_equal(c->modules.muc_max_rooms_per_user, 10);
    assert_int_equal(c->modules.muc_max_occupants, 200);
    assert_int_equal(c->modules.muc_max_nick_bytes, 128);
    assert_int_equal(c->modules.muc_history_size, 20);
    char *h = cfg_muc_host(c, "example.org");
    assert_string_equal(h, "conference.example.org");
    free(h);
    cfg_free(&c);
    c = load("domains: [localhost]\nmodules:\n  muc: {enabled: false}\n");
    assert_non_null(c);
    assert_false(c->modules.muc_enabled);
    cfg_free(&c);
    c = load("domains: [localhost]\nmodules:\n  muc: {enabled: true, host: \"chat.@HOST@\", max_rooms_per_user: 2, "
             "max_occupants: 5, max_nick_bytes: 16, history_size: 0}\n");
    assert_non_null(c);
    assert_true(c->modules.muc_enabled);
    assert_int_equal(c->modules.muc_max_rooms_per_user, 2);
    assert_int_equal(c->modules.muc_max_occupants, 5);
    assert_int_equal(c->modules.muc_max_nick_bytes, 16);
    assert_int_equal(c->modules.muc_history_size, 0);
    h = cfg_muc_host(c, "localhost");
    assert_string_equal(h, "chat.localhost");
    free(h);
    cfg_free(&c);
    c = load("domains: [localhost]\nmodules:\n  muc: {host: rooms.example.net}\n");   /* one domain: a fixed name */
    assert_non_null(c);
    h = cfg_muc_host(c, "localhost");
    assert_string_equal(h, "rooms.example.net");
    free(h);
    cfg_free(&c);
    expect_error("domains: [a.org, b.org]\nmodules:\n  muc:\n    host: rooms.example.net\n", 4,
                 "modules.muc.host: \"rooms.example.net\" serves two hosted domains");
    expect_error("domains: [localhost, chat.localhost]\nmodules:\n  muc:\n    host: chat.@HOST@\n", 4,
                 "\"chat.localhost\" is a hosted domain");
    expect_error("domains: [localhost]\nmodules:\n  muc:\n    host: \"bad..@HOST@\"\n", 4, "has an empty label");
    expect_error("modules:\n  muc: {max_nick_bytes: 1024}\n", 2, "modules.muc.max_nick_bytes: 1024 is out of range");
    expect_error("modules:\n  muc: {max_occupants: 0}\n", 2, "modules.muc.max_occupants: 0 is out of range");
    expect_error("modules:\n  muc: {history_size: 1001}\n", 2, "modules.muc.history_size");
    expect_error("modules:\n  muc: {rooms: 1}\n", 2, "unknown key \"rooms\" in modules.muc");
}

static void test_components(void **state)
{
    char *sec = xstrdup(secret_file("shared-secret\n"));
    char yaml[1024];
    setenv("MK_TEST_COMPONENT_SECRET", "env-secret", 1);
    snprintf(yaml, sizeof yaml,
             "domains: [example.org]\n"
             "listeners:\n  component: {host: 0.0.0.0, port: 5275}\n"
             "components:\n"
             "  - {domain: Push.Example.org, secret_file: %s}\n"
             "  - {domain: app.example.net, secret_env: MK_TEST_COMPONENT_SECRET}\n", sec);
    struct cfg *c = load(yaml);
    if (c == NULL)
        print_error("%s\n", err);
    assert_non_null(c);
    assert_string_equal(c->component.host, "0.0.0.0");
    assert_int_equal(c->component.port, 5275);
    assert_int_equal(c->ncomponents, 2);
    assert_string_equal(c->components[0].domain, "push.example.org");
    assert_string_equal(c->components[0].secret, "shared-secret");
    assert_string_equal(c->components[1].secret, "env-secret");
    assert_ptr_equal(cfg_find_component(c, "app.example.net"), &c->components[1]);
    assert_ptr_equal(cfg_find_component(c, "push.example.org"), &c->components[0]);
    assert_null(cfg_find_component(c, "example.org"));
    assert_null(cfg_find_component(c, NULL));
    cfg_free(&c);

    expect_error("components:\n  - {domain: localhost, secret_env: MK_TEST_COMPONENT_SECRET}\n", 2,
                 "components[0].domain: \"localhost\" is a hosted domain");
    expect_error("components:\n  - {domain: a.example, secret_env: MK_TEST_COMPONENT_SECRET}\n"
                 "  - {domain: A.example, secret_env: MK_TEST_COMPONENT_SECRET}\n", 3,
                 "components[1].domain: duplicate component \"a.example\"");
    expect_error("components:\n  - {domain: a.example}\n", 2,
                 "components[0]: secret is required: give secret_file or secret_env");
    expect_error("components:\n  - {secret_env: X}\n", 2, "components[0]: domain is required");
    expect_error("components:\n  - {domain: \"a..b\", secret_env: X}\n", 2, "has an empty label");
    expect_error("components:\n  - {domain: a.example, secret: hunter2}\n", 2, "never written in the config file");
    expect_error("components:\n  - domain: a.example\n    secret_file: /nonexistent/s\n"
                 "    secret_env: MK_TEST_COMPONENT_SECRET\n", 4, "give secret_file or secret_env, not both");
    expect_error("listeners:\n  component: {port: 70000}\n", 2, "out of range");
    unsetenv("MK_TEST_COMPONENT_SECRET");
    unlink(sec);
    free(sec);
}

#define KEY_B "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
#define KEY_C "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
#define GD_PROCS "processes:\n  - {id: c2s.0, bus: \"tcp://127.0.0.1:7100\"}\n" \
                 "  - {id: router.0, bus: \"tcp://127.0.0.1:7101\"}\n" \
                 "  - {id: gd.0, bus: \"tcp://127.0.0.1:7104\"}\n"

static void test_gd(void **state)
{
    char *pw = xstrdup(secret_file("redis-secret\n"));
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             GD_PROCS
             "gd:\n"
             "  enabled: true\n"
             "  dc: dc-a\n"
             "  link: {bind: \"tcp://0.0.0.0:5555\", advertise: \"tcp://10.0.0.1:5555\"}\n"
             "  keys: {secret_file: /tmp/gd-a.key}\n"
             "  peers:\n"
             "    - {dc: dc-b, public_key: \"%s\", endpoint: \"tcp://10.0.0.2:5555\"}\n"
             "    - {dc: dc-c, public_key: \"%s\"}\n"
             "  redis: {primary: \"10.0.0.9:6380\", replica: \"[::1]:6381\", user: gd, password_file: %s,\n"
             "          prefix: \"mk:\", db: 3}\n"
             "  ttl_sec: 60\n  refresh_sec: 20\n  refresh_batch: 500\n  cache_ttl_ms: 1000\n"
             "  cache_max: 10\n  negative_ttl_ms: 100\n  bounce_base_ms: 10\n  bounce_deadline_ms: 2000\n"
             "  link_queue_max: 50\n  link_queue_sec: 10\n  hop_ttl: 2\n", KEY_B, KEY_C, pw);
    struct cfg *c = load(yaml);
    if (c == NULL)
        print_error("%s\n", err);
    assert_non_null(c);
    const struct cfg_gd *g = &c->gd;
    assert_true(g->enabled);
    assert_string_equal(g->dc, "dc-a");
    assert_string_equal(g->link_bind, "tcp://0.0.0.0:5555");
    assert_string_equal(g->link_advertise, "tcp://10.0.0.1:5555");
    assert_string_equal(g->secret_file, "/tmp/gd-a.key");
    assert_int_equal(g->npeers, 2);
    assert_string_equal(g->peers[0].dc, "dc-b");
    assert_string_equal(g->peers[0].public_key, KEY_B);
    assert_string_equal(g->peers[0].endpoint, "tcp://10.0.0.2:5555");
    assert_string_equal(g->peers[1].dc, "dc-c");
    assert_null(g->peers[1].endpoint);
    assert_ptr_equal(cfg_find_gd_peer(c, "dc-c"), &g->peers[1]);
    assert_null(cfg_find_gd_peer(c, "dc-a"));
    assert_string_equal(g->redis_primary_host, "10.0.0.9");
    assert_int_equal(g->redis_primary_port, 6380);
    assert_string_equal(g->redis_replica_host, "::1");
    assert_int_equal(g->redis_replica_port, 6381);
    assert_string_equal(g->redis_user, "gd");
    assert_string_equal(g->redis_password, "redis-secret");
    assert_string_equal(g->redis_prefix, "mk:");
    assert_int_equal(g->redis_db, 3);
    assert_int_equal(g->ttl_sec, 60);
    assert_int_equal(g->refresh_sec, 20);
    assert_int_equal(g->refresh_batch, 500);
    assert_int_equal(g->cache_ttl_ms, 1000);
    assert_int_equal(g->cache_max, 10);
    assert_int_equal(g->negative_ttl_ms, 100);
    assert_int_equal(g->bounce_base_ms, 10);
    assert_int_equal(g->bounce_deadline_ms, 2000);
    assert_int_equal(g->link_queue_max, 50);
    assert_int_equal(g->link_queue_sec, 10);
    assert_int_equal(g->hop_ttl, 2);
    cfg_free(&c);

    /* advertise defaults to bind; the replica to the primary; no password when none is given */
    c = load(GD_PROCS "gd:\n  enabled: true\n  dc: a\n  link: {bind: \"tcp://127.0.0.1:5555\"}\n"
             "  redis: {primary: \"localhost:7000\"}\n");
    if (c == NULL)
        print_error("%s\n", err);
    assert_non_null(c);
    assert_string_equal(c->gd.link_advertise, "tcp://127.0.0.1:5555");
    assert_string_equal(c->gd.redis_replica_host, "localhost");
    assert_int_equal(c->gd.redis_replica_port, 7000);
    assert_null(c->gd.redis_password);
    cfg_free(&c);

    /* off: nothing is required, but what is written is still checked */
    c = load("gd: {dc: a}\n");
    assert_non_null(c);
    assert_false(c->gd.enabled);
    cfg_free(&c);
    expect_error("gd:\n  peers:\n    - {dc: b, public_key: short}\n", 3, "gd.peers[0].public_key: is not a CURVE");

    expect_error(GD_PROCS "gd:\n  enabled: true\n  link: {bind: \"tcp://127.0.0.1:5555\"}\n", 5,
                 "gd: dc (this data center's name) is required");
    expect_error(GD_PROCS "gd:\n  enabled: true\n  dc: a\n", 5, "gd: link.bind");
    expect_error(GD_PROCS "gd:\n  enabled: true\n  dc: A_B\n", 7, "gd.dc: \"A_B\" may hold only");
    expect_error(GD_PROCS "gd:\n  enabled: true\n  dc: a\n  link: {bind: \"tcp://*:5555\"}\n", 8,
                 "gd.link.bind: binds a wildcard address: give link.advertise");
    expect_error("gd:\n  link: {bind: \"udp://1.2.3.4:5\"}\n", 2, "gd.link.bind: is not a tcp://host:port");
    expect_error("gd:\n  link: {bind: \"tcp://1.2.3.4:5\", advertise: \"tcp://0.0.0.0:5\"}\n", 2,
                 "gd.link.advertise: a wildcard address");
    expect_error("gd:\n  dc: a\n  peers:\n    - {dc: a, public_key: \"" KEY_B "\"}\n", 4,
                 "gd.peers[0].dc: \"a\" is this data center");
    expect_error("gd:\n  peers:\n    - {dc: b, public_key: \"" KEY_B "\"}\n"
                 "    - {dc: b, public_key: \"" KEY_C "\"}\n", 4, "gd.peers[1].dc: data center \"b\" is listed twice");
    expect_error("gd:\n  peers:\n    - {dc: b, public_key: \"" KEY_B "\"}\n"
                 "    - {dc: c, public_key: \"" KEY_B "\"}\n", 4, "the same key as gd.peers[0]");
    expect_error("gd:\n  peers:\n    - {dc: b, public_key: \"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf\\\"\"}\n", 3,
                 "a character outside ZeroMQ's Z85 alphabet");
    expect_error("gd:\n  peers:\n    - {dc: b}\n", 3, "gd.peers[0]: public_key is required");
    expect_error("gd:\n  peers:\n    - {public_key: \"" KEY_B "\"}\n", 3, "gd.peers[0]: dc is required");
    expect_error("gd:\n  peers:\n    - {dc: b, public_key: \"" KEY_B "\", endpoint: \"b:1\"}\n", 3,
                 "gd.peers[0].endpoint: is not a tcp://host:port");
    expect_error("gd:\n  peers:\n    - {dc: b, public_key: \"" KEY_B "\", port: 1}\n", 3,
                 "unknown key \"port\" in gd.peers[0]");
    expect_error("gd:\n  peers: {dc: b}\n", 2, "gd.peers: expected a list");
    expect_error("gd:\n  redis: {primary: \"nohost\"}\n", 2, "gd.redis.primary: \"nohost\" is not host:port");
    expect_error("gd:\n  redis: {replica: \"h:0\"}\n", 2, "gd.redis.replica: \"h:0\" is not host:port");
    expect_error("gd:\n  redis: {password: x}\n", 2, "never written in the config file");
    expect_error("gd:\n  redis:\n    primary: \"10.0.0.1:6379\"\n    replica: \"redis.example:6379\"\n", 4,
                 "gd.redis.replica: \"redis.example\" is not an IP address");
    expect_error("gd:\n  keys: {secret_key: x}\n", 2, "never written in the config file");
    expect_error("gd:\n  hop_ttl: 0\n", 2, "out of range");
    expect_error(GD_PROCS "gd:\n  enabled: true\n  dc: a\n  link: {bind: \"tcp://127.0.0.1:5555\"}\n"
                 "  ttl_sec: 30\n  refresh_sec: 30\n", 10, "refresh_sec (30) must be less than ttl_sec (30)");
    expect_error("processes:\n  - {id: c2s.0, bus: \"tcp://127.0.0.1:7100\"}\n  - {id: router.0, bus: \"tcp://127.0.0.1:7101\"}\n"
                 "gd:\n  enabled: true\n  dc: a\n  link: {bind: \"tcp://127.0.0.1:5555\"}\n", 4,
                 "gd: enabled, but processes has no gd process");
    expect_error(GD_PROCS "gd:\n  enabled: true\n  dc: a\n  link: {bind: \"tcp://127.0.0.1:5555\"}\n"
                 "  redis: {user: gd}\n", 9, "gd.redis.user: an ACL user needs password_file or password_env");
    unsetenv("MK_TEST_GD_NOPE");
    expect_error(GD_PROCS "gd:\n  enabled: true\n  dc: a\n  link: {bind: \"tcp://127.0.0.1:5555\"}\n"
                 "  redis: {password_env: MK_TEST_GD_NOPE}\n", 9, "environment variable MK_TEST_GD_NOPE is not set");
    unlink(pw);
    free(pw);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_data_dir_paths),
        cmocka_unit_test(test_example_file),
        cmocka_unit_test(test_relative_paths_follow_the_file),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_domains),
        cmocka_unit_test(test_processes_errors),
        cmocka_unit_test(test_passwords),
        cmocka_unit_test(test_find_and_roles),
        cmocka_unit_test(test_shard),
        cmocka_unit_test(test_bus_section),
        cmocka_unit_test(test_pusher_backends),
        cmocka_unit_test(test_pusher_errors),
        cmocka_unit_test(test_components),
        cmocka_unit_test(test_sm_section),
        cmocka_unit_test(test_muc_section),
        cmocka_unit_test(test_see_other_host),
        cmocka_unit_test(test_gd),
        cmocka_unit_test(test_reload_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
