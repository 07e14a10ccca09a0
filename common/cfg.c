/* common/cfg.c - loads and checks the cluster's YAML configuration (libyaml document API), or the defaults. */
#include "cfg.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <yaml.h>

#include "util.h"

#define CFG_PASSWORD_MAX 4096     /* bytes of a password file, newline included */
#define CFG_SAMPLE_MAX   40       /* bytes of a bad value quoted back in an error */
#define CFG_PATH_MAX     128      /* "storage.pgsql.password_file" and the like */
#define CFG_PROC_INDEX_MAX 99999u

static const char *const role_names[CFG_ROLE_COUNT] = {
    [CFG_ROLE_C2S] = "c2s",
    [CFG_ROLE_ROUTER] = "router",
    [CFG_ROLE_MAM] = "mam",
    [CFG_ROLE_PUSHER] = "pusher",
    [CFG_ROLE_GD] = "gd",
};

/* State of one load: where errors go, and what the checks after the walk need. */
struct cfg_parse {
    yaml_document_t *doc;
    const char *name;              /* file name used in messages */
    char *err;
    size_t errlen;
    struct cfg *c;
    struct cfg_proc *cur_proc;     /* the process entry being read */
    const char *base_dir;          /* absolute directory of the file, or NULL: relative paths stay as written */
    int processes_line;            /* 0 when the file has no processes key */
    int password_file_line;
    int password_env_line;
};

enum field_kind {
    FIELD_STR = 0,     /* char *: a non-empty string */
    FIELD_STR_NULL,    /* char *: a non-empty string, or null for "none" */
    FIELD_PATH,        /* char *: a file name, resolved against the file's directory */
    FIELD_PATH_NULL,   /* char *: the same, or null for "none" */
    FIELD_CHOICE,      /* char *: one of choices */
    FIELD_INT,         /* int in [min, max] */
    FIELD_UINT,        /* unsigned in [min, max] */
    FIELD_SIZE,        /* size_t in [min, max] */
    FIELD_BOOL,        /* bool */
    FIELD_SECTION,     /* a nested mapping: sub, at offset from this section's base */
    FIELD_CUSTOM,      /* read by custom */
    FIELD_REFUSED,     /* a key we know and refuse, saying why */
};

struct cfg_section;

/* One key of a mapping and where its value goes. */
struct cfg_field {
    const char *key;
    enum field_kind kind;
    size_t offset;                       /* from the section's base */
    unsigned long long min, max;         /* numbers */
    const char *const *choices;          /* FIELD_CHOICE, NULL-terminated */
    const struct cfg_section *sub;       /* FIELD_SECTION */
    int (*custom)(struct cfg_parse *p, yaml_node_t *node, const char *path);
    const char *why;                     /* FIELD_REFUSED */
};

struct cfg_section {
    const struct cfg_field *fields;
    size_t nfields;
};

#define SECTION(name, arr) static const struct cfg_section name = { arr, MK_ARRAY_LEN(arr) }
#define F_STR(k, st, m)      { .key = k, .kind = FIELD_STR, .offset = offsetof(st, m) }
#define F_STR_NULL(k, st, m) { .key = k, .kind = FIELD_STR_NULL, .offset = offsetof(st, m) }
#define F_PATH(k, st, m)     { .key = k, .kind = FIELD_PATH, .offset = offsetof(st, m) }
#define F_PATH_NULL(k, st, m) { .key = k, .kind = FIELD_PATH_NULL, .offset = offsetof(st, m) }
#define F_CHOICE(k, st, m, ch) { .key = k, .kind = FIELD_CHOICE, .offset = offsetof(st, m), .choices = ch }
#define F_INT(k, st, m, lo, hi)  { .key = k, .kind = FIELD_INT, .offset = offsetof(st, m), .min = lo, .max = hi }
#define F_UINT(k, st, m, lo, hi) { .key = k, .kind = FIELD_UINT, .offset = offsetof(st, m), .min = lo, .max = hi }
#define F_SIZE(k, st, m, lo, hi) { .key = k, .kind = FIELD_SIZE, .offset = offsetof(st, m), .min = lo, .max = hi }
#define F_BOOL(k, st, m)     { .key = k, .kind = FIELD_BOOL, .offset = offsetof(st, m) }
#define F_SECTION(k, off, s) { .key = k, .kind = FIELD_SECTION, .offset = off, .sub = &s }
#define F_CUSTOM(k, fn)      { .key = k, .kind = FIELD_CUSTOM, .custom = fn }
#define F_REFUSED(k, w)      { .key = k, .kind = FIELD_REFUSED, .why = w }

static const char *const log_levels[] = { "debug", "info", "warn", "error", "none", NULL };
static const char *const drivers[] = { "sqlite", "pgsql", NULL };
static const char *const sslmodes[] = {
    "disable", "allow", "prefer", "require", "verify-ca", "verify-full", NULL,
};

static int parse_domains(struct cfg_parse *p, yaml_node_t *node, const char *path);
static int parse_processes(struct cfg_parse *p, yaml_node_t *node, const char *path);
static int parse_proc_id(struct cfg_parse *p, yaml_node_t *node, const char *path);
static int parse_proc_bus(struct cfg_parse *p, yaml_node_t *node, const char *path);
static int parse_proc_metrics(struct cfg_parse *p, yaml_node_t *node, const char *path);
static int parse_password_file(struct cfg_parse *p, yaml_node_t *node, const char *path);
static int parse_password_env(struct cfg_parse *p, yaml_node_t *node, const char *path);

static const struct cfg_field log_fields[] = {
    F_CHOICE("level", struct cfg, log_level, log_levels),
    F_PATH_NULL("file", struct cfg, log_file),
};
SECTION(log_section, log_fields);

static const struct cfg_field tls_fields[] = {
    F_PATH("cert", struct cfg, tls_cert),
    F_PATH("key", struct cfg, tls_key),
    F_BOOL("starttls_required", struct cfg, starttls_required),
    F_UINT("session_tickets", struct cfg, tls_session_tickets, 0, 8),
};
SECTION(tls_section, tls_fields);

static const struct cfg_field listener_fields[] = {
    F_STR("host", struct cfg_listener, host),
    F_INT("port", struct cfg_listener, port, 0, 65535),
};
SECTION(listener_section, listener_fields);

static const struct cfg_field listeners_fields[] = {
    F_SECTION("c2s", offsetof(struct cfg, c2s), listener_section),
    F_SECTION("c2s_tls", offsetof(struct cfg, c2s_tls), listener_section),
};
SECTION(listeners_section, listeners_fields);

static const struct cfg_field sqlite_fields[] = {
    F_PATH("path", struct cfg_storage, sqlite_path),
};
SECTION(sqlite_section, sqlite_fields);

static const struct cfg_field pgsql_fields[] = {
    F_STR("host", struct cfg_storage, pg_host),
    F_INT("port", struct cfg_storage, pg_port, 1, 65535),
    F_STR("dbname", struct cfg_storage, pg_dbname),
    F_STR("user", struct cfg_storage, pg_user),
    F_REFUSED("password", "a password is never written in the config file; "
              "use password_file or password_env"),
    F_CUSTOM("password_file", parse_password_file),
    F_CUSTOM("password_env", parse_password_env),
    F_CHOICE("sslmode", struct cfg_storage, pg_sslmode, sslmodes),
    F_PATH_NULL("sslrootcert", struct cfg_storage, pg_sslrootcert),
    F_INT("pool_size", struct cfg_storage, pool_size, 1, 1000),
};
SECTION(pgsql_section, pgsql_fields);

static const struct cfg_field storage_fields[] = {
    F_CHOICE("driver", struct cfg_storage, driver, drivers),
    F_SECTION("sqlite", 0, sqlite_section),
    F_SECTION("pgsql", 0, pgsql_section),
};
SECTION(storage_section, storage_fields);

static const struct cfg_field limits_fields[] = {
    F_SIZE("max_stanza_bytes", struct cfg_limits, max_stanza_bytes, 1, 1u << 30),
    F_UINT("max_depth", struct cfg_limits, max_depth, 1, UINT_MAX),
    F_UINT("max_attrs", struct cfg_limits, max_attrs, 1, UINT_MAX),
    F_SIZE("max_preauth_bytes", struct cfg_limits, max_preauth_bytes, 1, 1u << 30),
    F_UINT("max_sessions_per_user", struct cfg_limits, max_sessions_per_user, 1, UINT_MAX),
    F_UINT("shaper_bytes_per_sec", struct cfg_limits, shaper_bytes_per_sec, 0, UINT_MAX),
    F_UINT("idle_timeout_sec", struct cfg_limits, idle_timeout_sec, 1, UINT_MAX),
    F_UINT("auth_timeout_sec", struct cfg_limits, auth_timeout_sec, 1, UINT_MAX),
    F_UINT("auth_fail_per_ip", struct cfg_limits, auth_fail_per_ip, 1, UINT_MAX),
    F_UINT("auth_fail_per_user", struct cfg_limits, auth_fail_per_user, 1, UINT_MAX),
    F_UINT("auth_fail_halflife_sec", struct cfg_limits, auth_fail_halflife_sec, 1, 7 * 86400),
    F_UINT("register_per_ip", struct cfg_limits, register_per_ip, 0, UINT_MAX),
    F_UINT("register_interval_sec", struct cfg_limits, register_interval_sec, 1, 30 * 86400),
    F_UINT("offline_max", struct cfg_limits, offline_max, 0, UINT_MAX),
    F_UINT("bus_hwm", struct cfg_limits, bus_hwm, 1, INT_MAX),
    F_SIZE("max_output_bytes", struct cfg_limits, max_output_bytes, 4096, 1ull << 40),
    F_UINT("max_store_queue", struct cfg_limits, max_store_queue, 1, UINT_MAX),
    F_UINT("max_held_presence", struct cfg_limits, max_held_presence, 1, UINT_MAX),
    F_UINT("max_pending_routes", struct cfg_limits, max_pending_routes, 1, UINT_MAX),
    F_UINT("max_roster_items", struct cfg_limits, max_roster_items, 1, UINT_MAX),
    F_UINT("max_block_items", struct cfg_limits, max_block_items, 1, UINT_MAX),
    F_SIZE("bus_max_frame_bytes", struct cfg_limits, bus_max_frame_bytes, 1u << 20, 1u << 30),
};
SECTION(limits_section, limits_fields);

static const struct cfg_field bus_fields[] = {
    F_BOOL("curve", struct cfg_bus, curve),
    F_PATH("keys_dir", struct cfg_bus, keys_dir),
};
SECTION(bus_section, bus_fields);

static const struct cfg_field register_fields[] = {
    F_BOOL("enabled", struct cfg_modules, register_enabled),
};
SECTION(register_section, register_fields);

static const struct cfg_field anonymous_fields[] = {
    F_BOOL("enabled", struct cfg_modules, anonymous),
};
SECTION(anonymous_section, anonymous_fields);

static const struct cfg_field mam_fields[] = {
    F_BOOL("enabled", struct cfg_modules, mam_enabled),
    F_UINT("batch_rows", struct cfg_modules, mam_batch_rows, 1, 1000000),
    F_UINT("batch_ms", struct cfg_modules, mam_batch_ms, 0, 60000),
    F_UINT("max_page", struct cfg_modules, mam_max_page, 1, 100000),
};
SECTION(mam_section, mam_fields);

static const struct cfg_field modules_fields[] = {
    F_SECTION("register", 0, register_section),
    F_SECTION("anonymous", 0, anonymous_section),
    F_SECTION("mam", 0, mam_section),
};
SECTION(modules_section, modules_fields);

static const struct cfg_field proc_fields[] = {
    F_CUSTOM("id", parse_proc_id),
    F_CUSTOM("bus", parse_proc_bus),
    F_CUSTOM("metrics", parse_proc_metrics),
};
SECTION(proc_section, proc_fields);

static const struct cfg_field root_fields[] = {
    F_CUSTOM("domains", parse_domains),
    F_SECTION("log", 0, log_section),
    F_PATH("data_dir", struct cfg, data_dir),
    F_SECTION("tls", 0, tls_section),
    F_SECTION("listeners", 0, listeners_section),
    F_SECTION("storage", offsetof(struct cfg, storage), storage_section),
    F_SECTION("limits", offsetof(struct cfg, limits), limits_section),
    F_SECTION("bus", offsetof(struct cfg, bus), bus_section),
    F_SECTION("modules", offsetof(struct cfg, modules), modules_section),
    F_UINT("grace_sec", struct cfg, grace_sec, 0, 3600),
    F_CUSTOM("processes", parse_processes),
};
SECTION(root_section, root_fields);

/* --- errors ------------------------------------------------------------------ */

#define set_err mk_errf   /* common/util.h */

static int fail_line(struct cfg_parse *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_line(struct cfg_parse *p, int line, const char *fmt, ...)
{
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    set_err(p->err, p->errlen, "%s:%d: %s", p->name, line, reason);
    return -1;
}

static int node_line(const yaml_node_t *n)
{
    return (int)n->start_mark.line + 1;
}

#define fail(p, node, ...) fail_line((p), node_line(node), __VA_ARGS__)

/* A printable, shortened copy of a scalar for an error message. */
static const char *sample(char *out, size_t outlen, const yaml_node_t *n)
{
    size_t len = n->data.scalar.length;
    if (len > CFG_SAMPLE_MAX)
        len = CFG_SAMPLE_MAX;
    mk_sanitize(out, outlen, n->data.scalar.value, len);
    if (n->data.scalar.length > CFG_SAMPLE_MAX && strlen(out) + 4 < outlen)
        strcat(out, "...");
    return out;
}

#define SAMPLE_BUF (4 * CFG_SAMPLE_MAX + 8)

/* --- scalars ------------------------------------------------------------------ */

static bool node_is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = (const char *)n->data.scalar.value;
    return n->data.scalar.length == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

static const char *node_kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_SCALAR_NODE:
        if (node_is_null(n))
            return "null";
        return n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? "a plain value" : "a quoted string";
    default:
        return "nothing";
    }
}

/* The text of a scalar node; refuses other nodes and embedded NUL bytes. */
static int scalar_text(struct cfg_parse *p, yaml_node_t *n, const char *path, const char *want,
                       const char **out)
{
    if (n->type != YAML_SCALAR_NODE)
        return fail(p, n, "%s: expected %s, got %s", path, want, node_kind(n));
    if (strlen((const char *)n->data.scalar.value) != n->data.scalar.length)
        return fail(p, n, "%s: contains a NUL byte", path);
    *out = (const char *)n->data.scalar.value;
    return 0;
}

/* A string value: null gives *out = NULL when nullable, an error otherwise. */
static int get_string(struct cfg_parse *p, yaml_node_t *n, const char *path, bool nullable, char **out)
{
    const char *s;
    if (node_is_null(n)) {
        if (!nullable)
            return fail(p, n, "%s: expected a string, got null", path);
        xfree(out);
        return 0;
    }
    if (scalar_text(p, n, path, "a string", &s) == -1)
        return -1;
    if (*s == '\0')
        return fail(p, n, "%s: must not be empty%s", path, nullable ? " (write null for none)" : "");
    xfree(out);
    *out = xstrdup(s);
    return 0;
}

/* base_dir joined with rel, leading "./" components of rel dropped. */
static char *path_resolve(const char *base_dir, const char *rel)
{
    while (rel[0] == '.' && rel[1] == '/') {
        rel += 2;
        while (*rel == '/')
            rel++;
    }
    if (*rel == '\0' || strcmp(rel, ".") == 0)
        return xstrdup(base_dir);
    size_t n = strlen(base_dir);
    return xasprintf("%s%s%s", base_dir, n > 0 && base_dir[n - 1] == '/' ? "" : "/", rel);
}

/* Replaces a relative *path by its resolution against the file's directory. A
 * process of the cluster and `meerkat ctl` then find the same files whatever
 * their working directory; with no file (base_dir NULL) it stays as written. */
static void resolve_in_place(struct cfg_parse *p, char **path)
{
    if (p->base_dir == NULL || *path == NULL || (*path)[0] == '/')
        return;
    char *abs = path_resolve(p->base_dir, *path);
    free(*path);
    *path = abs;
}

/* A file name: a string as get_string reads it, resolved against the file's directory. */
static int get_path(struct cfg_parse *p, yaml_node_t *n, const char *path, bool nullable, char **out)
{
    if (get_string(p, n, path, nullable, out) == -1)
        return -1;
    resolve_in_place(p, out);
    return 0;
}

/* A decimal integer written plain (not quoted), within [min, max]. */
static int get_number(struct cfg_parse *p, yaml_node_t *n, const char *path,
                      unsigned long long min, unsigned long long max, unsigned long long *out)
{
    char smp[SAMPLE_BUF];
    const char *s;
    if (node_is_null(n))
        return fail(p, n, "%s: expected an integer, got null", path);
    if (scalar_text(p, n, path, "an integer", &s) == -1)
        return -1;
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return fail(p, n, "%s: expected an integer, got the quoted string \"%s\"", path,
                    sample(smp, sizeof smp, n));
    bool neg = false, big = false;
    const char *d = s;
    if (*d == '+' || *d == '-')
        neg = *d++ == '-';
    if (*d == '\0')
        return fail(p, n, "%s: expected an integer, got \"%s\"", path, sample(smp, sizeof smp, n));
    unsigned long long v = 0;
    for (; *d; d++) {
        if (*d < '0' || *d > '9')
            return fail(p, n, "%s: expected an integer, got \"%s\"", path, sample(smp, sizeof smp, n));
        unsigned digit = (unsigned)(*d - '0');
        if (v > (ULLONG_MAX - digit) / 10)
            big = true;
        else
            v = v * 10 + digit;
    }
    if (big || (neg && v != 0) || v < min || v > max)
        return fail(p, n, "%s: %s is out of range (%llu to %llu)", path, sample(smp, sizeof smp, n), min, max);
    *out = v;
    return 0;
}

/* true/false as YAML 1.2 writes them, plain. */
static int get_bool(struct cfg_parse *p, yaml_node_t *n, const char *path, bool *out)
{
    char smp[SAMPLE_BUF];
    if (n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        const char *s = (const char *)n->data.scalar.value;
        if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0) {
            *out = false;
            return 0;
        }
    }
    if (n->type == YAML_SCALAR_NODE && !node_is_null(n))
        return fail(p, n, "%s: expected true or false, got \"%s\"", path, sample(smp, sizeof smp, n));
    return fail(p, n, "%s: expected true or false, got %s", path, node_kind(n));
}

static int get_choice(struct cfg_parse *p, yaml_node_t *n, const char *path,
                      const char *const *choices, char **out)
{
    char smp[SAMPLE_BUF], list[128] = "";
    const char *s;
    if (node_is_null(n))
        return fail(p, n, "%s: expected a string, got null", path);
    if (scalar_text(p, n, path, "a string", &s) == -1)
        return -1;
    for (const char *const *c = choices; *c; c++) {
        if (strcmp(s, *c) == 0) {
            xfree(out);
            *out = xstrdup(s);
            return 0;
        }
    }
    for (const char *const *c = choices; *c; c++) {
        if (c != choices)
            strncat(list, ", ", sizeof list - strlen(list) - 1);
        strncat(list, *c, sizeof list - strlen(list) - 1);
    }
    return fail(p, n, "%s: \"%s\" is not one of %s", path, sample(smp, sizeof smp, n), list);
}

/* --- mappings ------------------------------------------------------------------- */

static void join_path(char *out, size_t outlen, const char *path, const char *key)
{
    if (*path)
        snprintf(out, outlen, "%s.%s", path, key);
    else
        snprintf(out, outlen, "%s", key);
}

static int apply_field(struct cfg_parse *p, const struct cfg_field *f, yaml_node_t *v,
                       const char *path, char *base);

/* Reads a mapping against sec, writing into base. Null is an empty mapping, so that a
 * section whose keys are all commented out keeps its defaults. */
static int walk_section(struct cfg_parse *p, yaml_node_t *node, const char *path,
                        const struct cfg_section *sec, char *base)
{
    if (node_is_null(node))
        return 0;
    if (node->type != YAML_MAPPING_NODE) {
        if (*path == '\0')
            return fail(p, node, "the top level must be a mapping, got %s", node_kind(node));
        return fail(p, node, "%s: expected a mapping, got %s", path, node_kind(node));
    }
    yaml_node_pair_t *start = node->data.mapping.pairs.start;
    for (yaml_node_pair_t *pair = start; pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(p->doc, pair->value);
        char smp[SAMPLE_BUF], sub[CFG_PATH_MAX];
        const char *key;
        if (k == NULL || v == NULL)
            return fail_line(p, node_line(node), "%s: malformed mapping", *path ? path : "top level");
        if (k->type != YAML_SCALAR_NODE || node_is_null(k))
            return fail(p, k, "%s: keys must be strings, got %s", *path ? path : "top level", node_kind(k));
        if (scalar_text(p, k, *path ? path : "key", "a string", &key) == -1)
            return -1;
        for (yaml_node_pair_t *prev = start; prev < pair; prev++) {
            yaml_node_t *pk = yaml_document_get_node(p->doc, prev->key);
            if (pk->type == YAML_SCALAR_NODE && strcmp((const char *)pk->data.scalar.value, key) == 0) {
                join_path(sub, sizeof sub, path, key);
                return fail(p, k, "%s: duplicate key (first at line %d)", sub, node_line(pk));
            }
        }
        const struct cfg_field *f = NULL;
        for (size_t i = 0; i < sec->nfields; i++) {
            if (strcmp(sec->fields[i].key, key) == 0) {
                f = &sec->fields[i];
                break;
            }
        }
        if (f == NULL) {
            char known[256] = "";
            for (size_t i = 0; i < sec->nfields; i++) {
                if (sec->fields[i].kind == FIELD_REFUSED)
                    continue;
                if (*known)
                    strncat(known, ", ", sizeof known - strlen(known) - 1);
                strncat(known, sec->fields[i].key, sizeof known - strlen(known) - 1);
            }
            if (*path)
                return fail(p, k, "unknown key \"%s\" in %s (known keys: %s)", sample(smp, sizeof smp, k),
                            path, known);
            return fail(p, k, "unknown top-level key \"%s\" (known keys: %s)", sample(smp, sizeof smp, k), known);
        }
        join_path(sub, sizeof sub, path, key);
        if (apply_field(p, f, v, sub, base) == -1)
            return -1;
    }
    return 0;
}

static int apply_field(struct cfg_parse *p, const struct cfg_field *f, yaml_node_t *v,
                       const char *path, char *base)
{
    unsigned long long num;
    void *at = base + f->offset;
    switch (f->kind) {
    case FIELD_STR:
        return get_string(p, v, path, false, at);
    case FIELD_STR_NULL:
        return get_string(p, v, path, true, at);
    case FIELD_PATH:
    case FIELD_PATH_NULL:
        return get_path(p, v, path, f->kind == FIELD_PATH_NULL, at);
    case FIELD_CHOICE:
        return get_choice(p, v, path, f->choices, at);
    case FIELD_INT:
        if (get_number(p, v, path, f->min, f->max, &num) == -1)
            return -1;
        *(int *)at = (int)num;
        return 0;
    case FIELD_UINT:
        if (get_number(p, v, path, f->min, f->max, &num) == -1)
            return -1;
        *(unsigned *)at = (unsigned)num;
        return 0;
    case FIELD_SIZE:
        if (get_number(p, v, path, f->min, f->max, &num) == -1)
            return -1;
        *(size_t *)at = (size_t)num;
        return 0;
    case FIELD_BOOL:
        return get_bool(p, v, path, at);
    case FIELD_SECTION:
        return walk_section(p, v, path, f->sub, at);
    case FIELD_CUSTOM:
        return f->custom(p, v, path);
    case FIELD_REFUSED:
        return fail(p, v, "%s: %s", path, f->why);
    }
    return fail(p, v, "%s: internal error", path);
}

/* --- domains ------------------------------------------------------------------- */

/* Lower-cases d in place and drops one trailing dot. Returns NULL when it is a
 * valid DNS name (labels of [a-z0-9-], 1-63 bytes, no hyphen at either end of a
 * label, 253 bytes at most), else the reason. This stands in for nameprep:
 * internationalised domains are written in their ASCII (xn--) form. */
static const char *domain_check(char *d)
{
    size_t len = strlen(d);
    if (len > 0 && d[len - 1] == '.')
        d[--len] = '\0';
    if (len == 0)
        return "is empty";
    if (len > 253)
        return "is longer than 253 bytes";
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        char ch = d[i];
        if (ch == '.' || ch == '\0') {
            if (label == 0)
                return "has an empty label";
            if (label > 63)
                return "has a label longer than 63 bytes";
            if (d[i - 1] == '-')
                return "has a label ending with a hyphen";
            label = 0;
            continue;
        }
        if (ch >= 'A' && ch <= 'Z')
            d[i] = ch = (char)(ch - 'A' + 'a');
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-'))
            return "may hold only letters, digits, hyphens and dots";
        if (ch == '-' && label == 0)
            return "has a label starting with a hyphen";
        label++;
    }
    return NULL;
}

static void free_domains(struct cfg *c)
{
    for (size_t i = 0; i < c->ndomains; i++)
        free(c->domains[i]);
    xfree(&c->domains);
    c->ndomains = 0;
}

static int parse_domains(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    struct cfg *c = p->c;
    char smp[SAMPLE_BUF], item_path[CFG_PATH_MAX];
    if (node->type != YAML_SEQUENCE_NODE)
        return fail(p, node, "%s: expected a list of domains, got %s", path, node_kind(node));
    size_t n = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    if (n == 0)
        return fail(p, node, "%s: at least one domain is required", path);
    free_domains(c);
    c->domains = xcalloc(n, sizeof *c->domains);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(p->doc, node->data.sequence.items.start[i]);
        char *d = NULL;
        snprintf(item_path, sizeof item_path, "%s[%zu]", path, i);
        if (get_string(p, item, item_path, false, &d) == -1)
            return -1;
        const char *why = domain_check(d);
        if (why != NULL) {
            free(d);
            return fail(p, item, "%s: domain \"%s\" %s", item_path, sample(smp, sizeof smp, item), why);
        }
        for (size_t j = 0; j < c->ndomains; j++) {
            if (strcmp(c->domains[j], d) == 0) {
                fail(p, item, "%s: duplicate domain \"%s\"", item_path, d);
                free(d);
                return -1;
            }
        }
        c->domains[c->ndomains++] = d;
    }
    return 0;
}

/* --- processes ------------------------------------------------------------------ */

/* Splits "<role>.<n>": n decimal without leading zeros, at most CFG_PROC_INDEX_MAX. */
static int proc_id_parse(const char *id, enum cfg_role *role, unsigned *index)
{
    const char *dot = strchr(id, '.');
    if (dot == NULL || dot == id)
        return -1;
    char name[16];
    size_t rl = (size_t)(dot - id);
    if (rl >= sizeof name)
        return -1;
    memcpy(name, id, rl);
    name[rl] = '\0';
    if (cfg_role_parse(name, role) == -1)
        return -1;
    const char *d = dot + 1;
    if (*d == '\0' || (d[0] == '0' && d[1] != '\0'))
        return -1;
    unsigned long v = 0;
    for (; *d; d++) {
        if (*d < '0' || *d > '9')
            return -1;
        v = v * 10 + (unsigned)(*d - '0');
        if (v > CFG_PROC_INDEX_MAX)
            return -1;
    }
    *index = (unsigned)v;
    return 0;
}

/* Parses a decimal port of 1-5 digits in [min, 65535]; returns it or -1. */
static int port_parse(const char *s, int min)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= min && v <= 65535 ? v : -1;
}

/* A ZeroMQ endpoint of a transport Meerkat uses; tcp ones must end in :port. */
static bool endpoint_valid(const char *e)
{
    for (const char *s = e; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f)
            return false;
    if (strncmp(e, "ipc://", 6) == 0)
        return e[6] != '\0';
    if (strncmp(e, "inproc://", 9) == 0)
        return e[9] != '\0';
    if (strncmp(e, "tcp://", 6) != 0)
        return false;
    const char *hostport = e + 6, *colon = strrchr(hostport, ':');
    return colon != NULL && colon != hostport && port_parse(colon + 1, 1) != -1;
}

/* Splits "host:port" or "[v6]:port" into a new host string and a port (0-65535). */
static int hostport_parse(const char *s, char **host, int *port)
{
    const char *colon, *h = s;
    size_t hl;
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return -1;
        hl = (size_t)(colon - s);
        if (memchr(s, ':', hl) != NULL)    /* a bare IPv6 address needs brackets */
            return -1;
    }
    if (hl == 0)
        return -1;
    for (size_t i = 0; i < hl; i++)
        if ((unsigned char)h[i] <= 0x20 || h[i] == 0x7f || h[i] == '[' || h[i] == ']')
            return -1;
    int v = port_parse(colon + 1, 0);
    if (v == -1)
        return -1;
    *host = xstrndup(h, hl);
    *port = v;
    return 0;
}

static int parse_proc_id(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    struct cfg_proc *proc = p->cur_proc;
    char smp[SAMPLE_BUF];
    if (get_string(p, node, path, false, &proc->id) == -1)
        return -1;
    if (proc_id_parse(proc->id, &proc->role, &proc->index) == -1)
        return fail(p, node, "%s: \"%s\" is not <role>.<n> with role one of c2s, router, mam, pusher, gd "
                    "and n a number without leading zeros", path, sample(smp, sizeof smp, node));
    for (size_t i = 0; i < p->c->nprocs; i++)
        if (strcmp(p->c->procs[i].id, proc->id) == 0)
            return fail(p, node, "%s: duplicate process id \"%s\"", path, proc->id);
    return 0;
}

/* An ipc:// endpoint names a file: resolved like every other path, and refused when it
 * no longer fits a Unix socket address. */
static int resolve_ipc(struct cfg_parse *p, yaml_node_t *node, const char *path, char **bus)
{
    if (strncmp(*bus, "ipc://", 6) != 0)
        return 0;
    char *file = xstrdup(*bus + 6);
    resolve_in_place(p, &file);
    char *full = xasprintf("ipc://%s", file);
    size_t flen = strlen(file);
    free(file);
    free(*bus);
    *bus = full;
    if (flen >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return fail(p, node, "%s: the socket file %s is longer than %zu bytes%s", path, full + 6,
                    sizeof(((struct sockaddr_un *)0)->sun_path) - 1,
                    p->base_dir != NULL ? " once resolved against the file's directory" : "");
    return 0;
}

static int parse_proc_bus(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    struct cfg_proc *proc = p->cur_proc;
    char smp[SAMPLE_BUF];
    if (get_string(p, node, path, false, &proc->bus) == -1)
        return -1;
    if (!endpoint_valid(proc->bus))
        return fail(p, node, "%s: \"%s\" is not a bus endpoint (tcp://host:port, ipc://path or inproc://name)",
                    path, sample(smp, sizeof smp, node));
    if (resolve_ipc(p, node, path, &proc->bus) == -1)
        return -1;
    for (size_t i = 0; i < p->c->nprocs; i++)
        if (strcmp(p->c->procs[i].bus, proc->bus) == 0)
            return fail(p, node, "%s: endpoint \"%s\" is already the bus of %s", path, proc->bus,
                        p->c->procs[i].id);
    return 0;
}

static int parse_proc_metrics(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    struct cfg_proc *proc = p->cur_proc;
    char smp[SAMPLE_BUF], *text = NULL;
    if (get_string(p, node, path, true, &text) == -1)
        return -1;
    xfree(&proc->metrics_host);
    proc->metrics_port = 0;
    if (text == NULL)
        return 0;
    int rc = hostport_parse(text, &proc->metrics_host, &proc->metrics_port);
    free(text);
    if (rc == -1)
        return fail(p, node, "%s: \"%s\" is not host:port (port 0-65535, IPv6 in brackets)", path,
                    sample(smp, sizeof smp, node));
    return 0;
}

static void free_procs(struct cfg *c)
{
    for (size_t i = 0; i < c->nprocs; i++) {
        free(c->procs[i].id);
        free(c->procs[i].bus);
        free(c->procs[i].metrics_host);
    }
    xfree(&c->procs);
    c->nprocs = 0;
}

static int parse_processes(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    struct cfg *c = p->c;
    char item_path[CFG_PATH_MAX];
    p->processes_line = node_line(node);
    if (node->type != YAML_SEQUENCE_NODE)
        return fail(p, node, "%s: expected a list of processes, got %s", path, node_kind(node));
    size_t n = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    free_procs(c);
    c->procs = xcalloc(n ? n : 1, sizeof *c->procs);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(p->doc, node->data.sequence.items.start[i]);
        struct cfg_proc *proc = &c->procs[i];
        snprintf(item_path, sizeof item_path, "%s[%zu]", path, i);
        if (item->type != YAML_MAPPING_NODE)
            return fail(p, item, "%s: expected a mapping with id, bus and metrics, got %s", item_path,
                        node_kind(item));
        p->cur_proc = proc;
        /* The entry is counted only once complete, so the duplicate checks compare it
         * with the earlier ones; on error it is still freed, being inside procs. */
        int rc = walk_section(p, item, item_path, &proc_section, (char *)proc);
        p->cur_proc = NULL;
        if (rc == -1) {
            c->nprocs = i + 1;
            return -1;
        }
        c->nprocs = i + 1;
        if (proc->id == NULL)
            return fail(p, item, "%s: id is required", item_path);
        if (proc->bus == NULL)
            return fail(p, item, "%s: bus is required (the endpoint of %s's inbox)", item_path, proc->id);
    }
    return 0;
}

/* --- secrets -------------------------------------------------------------------- */

static int parse_password_file(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    p->password_file_line = node_line(node);
    return get_path(p, node, path, true, &p->c->storage.pg_password_file);
}

static int parse_password_env(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    p->password_env_line = node_line(node);
    return get_string(p, node, path, true, &p->c->storage.pg_password_env);
}

/* Reads the password from its file: at most CFG_PASSWORD_MAX bytes, the trailing
 * newline dropped. The buffer is wiped, as the password must not linger. */
static int read_password_file(struct cfg_parse *p)
{
    struct cfg_storage *st = &p->c->storage;
    char buf[CFG_PASSWORD_MAX + 1];
    size_t len = 0;
    int fd = open(st->pg_password_file, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return fail_line(p, p->password_file_line, "storage.pgsql.password_file: cannot read %s: %s",
                         st->pg_password_file, strerror(errno));
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof buf - len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1) {
            int e = errno;
            close(fd);
            explicit_bzero(buf, sizeof buf);
            return fail_line(p, p->password_file_line, "storage.pgsql.password_file: cannot read %s: %s",
                             st->pg_password_file, strerror(e));
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == sizeof buf)
            break;
    }
    close(fd);
    int rc = 0;
    if (len > CFG_PASSWORD_MAX) {
        rc = fail_line(p, p->password_file_line, "storage.pgsql.password_file: %s is larger than %d bytes",
                       st->pg_password_file, CFG_PASSWORD_MAX);
    } else {
        if (len > 0 && buf[len - 1] == '\n')
            len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
        if (memchr(buf, '\0', len) != NULL)
            rc = fail_line(p, p->password_file_line, "storage.pgsql.password_file: %s holds a NUL byte",
                           st->pg_password_file);
        else
            st->pg_password = xstrndup(buf, len);
    }
    explicit_bzero(buf, sizeof buf);
    return rc;
}

/* The password is fetched only when pgsql is the driver: a process does not hold a
 * secret it has no use for. */
static int resolve_password(struct cfg_parse *p)
{
    struct cfg_storage *st = &p->c->storage;
    if (strcmp(st->driver, "pgsql") != 0)
        return 0;
    if (st->pg_password_file != NULL && st->pg_password_env != NULL)
        return fail_line(p, p->password_env_line > p->password_file_line ? p->password_env_line
                                                                          : p->password_file_line,
                         "storage.pgsql: give password_file or password_env, not both");
    if (st->pg_password_file != NULL)
        return read_password_file(p);
    if (st->pg_password_env != NULL) {
        const char *v = getenv(st->pg_password_env);
        if (v == NULL)
            return fail_line(p, p->password_env_line,
                             "storage.pgsql.password_env: environment variable %s is not set",
                             st->pg_password_env);
        st->pg_password = xstrdup(v);
    }
    return 0;
}

/* --- defaults and the load -------------------------------------------------------- */

/* Everything but the paths derived from data_dir, which follow the data_dir finally chosen. */
static struct cfg *cfg_defaults(void)
{
    struct cfg *c = xcalloc(1, sizeof *c);
    c->domains = xcalloc(1, sizeof *c->domains);
    c->domains[0] = xstrdup("localhost");
    c->ndomains = 1;
    c->log_level = xstrdup("info");
    c->data_dir = xstrdup("./var");
    c->starttls_required = true;
    c->c2s.host = xstrdup("0.0.0.0");
    c->c2s.port = 5222;
    c->c2s_tls.host = xstrdup("0.0.0.0");
    c->c2s_tls.port = 5223;

    c->storage.driver = xstrdup("sqlite");
    c->storage.pg_host = xstrdup("127.0.0.1");
    c->storage.pg_port = 5432;
    c->storage.pg_dbname = xstrdup("meerkat");
    c->storage.pg_user = xstrdup("meerkat");
    c->storage.pg_sslmode = xstrdup("prefer");
    c->storage.pool_size = 2;

    c->limits.max_stanza_bytes = 65536;
    c->limits.max_depth = 64;
    c->limits.max_attrs = 64;
    c->limits.max_preauth_bytes = 8192;
    c->limits.max_sessions_per_user = 10;
    c->limits.shaper_bytes_per_sec = 0;
    c->limits.idle_timeout_sec = 600;
    c->limits.auth_timeout_sec = 30;
    c->limits.auth_fail_per_ip = 10;
    c->limits.auth_fail_per_user = 5;
    c->limits.auth_fail_halflife_sec = 300;
    c->limits.register_per_ip = 1;
    c->limits.register_interval_sec = 600;
    c->limits.offline_max = 100;
    c->limits.bus_hwm = 100000;
    c->limits.max_output_bytes = (size_t)8 << 20;
    c->limits.max_store_queue = 10000;
    c->limits.max_held_presence = 128;
    c->limits.max_pending_routes = 100000;
    c->limits.max_roster_items = 1000;
    c->limits.max_block_items = 1000;
    c->limits.bus_max_frame_bytes = 8u << 20;
    c->bus.curve = true;

    c->modules.register_enabled = true;
    c->modules.anonymous = false;
    c->modules.mam_enabled = true;
    c->modules.mam_batch_rows = 256;
    c->modules.mam_batch_ms = 5;
    c->modules.mam_max_page = 100;

    c->grace_sec = 5;

    c->nprocs = CFG_ROLE_COUNT;
    c->procs = xcalloc(c->nprocs, sizeof *c->procs);
    for (int r = 0; r < CFG_ROLE_COUNT; r++) {
        struct cfg_proc *proc = &c->procs[r];
        proc->id = xasprintf("%s.0", role_names[r]);
        proc->role = (enum cfg_role)r;
        proc->index = 0;
        proc->bus = xasprintf("tcp://127.0.0.1:%d", 7100 + r);
        proc->metrics_host = xstrdup("127.0.0.1");
        proc->metrics_port = 9100 + r;
    }
    return c;
}

static void cfg_finish_paths(struct cfg *c)
{
    if (c->tls_cert == NULL)
        c->tls_cert = path_resolve(c->data_dir, "tls/cert.pem");
    if (c->tls_key == NULL)
        c->tls_key = path_resolve(c->data_dir, "tls/key.pem");
    if (c->storage.sqlite_path == NULL)
        c->storage.sqlite_path = path_resolve(c->data_dir, "meerkat.db");
    if (c->bus.keys_dir == NULL)
        c->bus.keys_dir = xstrdup(c->data_dir);
}

static int syntax_error(const yaml_parser_t *parser, const char *name, char *err, size_t errlen)
{
    const yaml_mark_t *m = parser->error == YAML_READER_ERROR ? &parser->mark : &parser->problem_mark;
    const char *problem = parser->problem ? parser->problem : "cannot parse";
    if (parser->error == YAML_MEMORY_ERROR)
        problem = "out of memory";
    if (parser->context != NULL)
        set_err(err, errlen, "%s:%zu: YAML syntax error: %s (%s, line %zu)", name, m->line + 1, problem,
                parser->context, parser->context_mark.line + 1);
    else
        set_err(err, errlen, "%s:%zu: YAML syntax error: %s", name, m->line + 1, problem);
    return -1;
}

/* The line of key in the mapping node (borrowed), or 1. */
static int key_line(const struct cfg_parse *p, yaml_node_t *node, const char *key)
{
    if (node == NULL || node->type != YAML_MAPPING_NODE)
        return 1;
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start; pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, pair->key);
        if (k != NULL && k->type == YAML_SCALAR_NODE && strcmp((const char *)k->data.scalar.value, key) == 0)
            return node_line(k);
    }
    return 1;
}

/* An envelope may carry a stanza twice (an archive write: the XML and its body), and
 * the bus refuses to send an envelope larger than a frame: a stanza the server accepts
 * must always fit. */
static int check_bus_frame(struct cfg_parse *p, yaml_node_t *root)
{
    const struct cfg_limits *l = &p->c->limits;
    if (l->max_stanza_bytes <= (SIZE_MAX - 65536) / 2 && l->bus_max_frame_bytes >= 2 * l->max_stanza_bytes + 65536)
        return 0;
    return fail_line(p, key_line(p, root, "limits"),
                     "limits: bus_max_frame_bytes (%zu) must be at least twice max_stanza_bytes (%zu) plus 64 KiB",
                     l->bus_max_frame_bytes, l->max_stanza_bytes);
}

/* Reads the one document of parser into a new cfg. */
static struct cfg *cfg_from_parser(yaml_parser_t *parser, const char *name, const char *base_dir,
                                   char *err, size_t errlen)
{
    yaml_document_t doc, extra;
    if (!yaml_parser_load(parser, &doc)) {
        syntax_error(parser, name, err, errlen);
        return NULL;
    }
    struct cfg *c = cfg_defaults();
    struct cfg_parse p = { .doc = &doc, .name = name, .base_dir = base_dir, .err = err, .errlen = errlen, .c = c };
    int rc = 0;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root != NULL)
        rc = walk_section(&p, root, "", &root_section, (char *)c);
    resolve_in_place(&p, &c->data_dir);    /* the default too: a file's data lives beside it */
    if (rc == 0) {
        /* A second document would be silently ignored: refuse it. */
        if (!yaml_parser_load(parser, &extra)) {
            rc = syntax_error(parser, name, err, errlen);
        } else {
            yaml_node_t *r2 = yaml_document_get_root_node(&extra);
            if (r2 != NULL)
                rc = fail(&p, r2, "only one YAML document is allowed");
            yaml_document_delete(&extra);
        }
    }
    if (rc == 0) {
        bool has[CFG_ROLE_COUNT] = { false };
        for (size_t i = 0; i < c->nprocs; i++)
            has[c->procs[i].role] = true;
        if (!has[CFG_ROLE_C2S] || !has[CFG_ROLE_ROUTER])
            rc = fail_line(&p, p.processes_line, "processes: at least one c2s and one router process are required");
    }
    if (rc == 0)
        rc = check_bus_frame(&p, root);
    if (rc == 0)
        rc = resolve_password(&p);
    yaml_document_delete(&doc);
    if (rc == -1) {
        cfg_free(&c);
        return NULL;
    }
    cfg_finish_paths(c);
    return c;
}

/* The absolute directory of the file path, as named (symbolic links are not followed,
 * so /etc/meerkat.yaml linked elsewhere still finds ./var under /etc); NULL with errno
 * when the working directory cannot be read. */
static char *file_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir;
    if (slash == NULL)
        dir = xstrdup(".");
    else if (slash == path)
        dir = xstrdup("/");
    else
        dir = xstrndup(path, (size_t)(slash - path));
    if (dir[0] == '/')
        return dir;
    char *cwd = getcwd(NULL, 0);
    if (cwd == NULL) {
        int e = errno;
        free(dir);
        errno = e;
        return NULL;
    }
    char *abs = path_resolve(cwd, dir);
    free(cwd);
    free(dir);
    return abs;
}

struct cfg *cfg_load(const char *path, char *err, size_t errlen)
{
    if (path == NULL) {
        struct cfg *c = cfg_defaults();
        cfg_finish_paths(c);
        return c;
    }
    FILE *f = fopen(path, "rbe");
    if (f == NULL) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        set_err(err, errlen, "%s: cannot read: %s", path, strerror(EISDIR));
        return NULL;
    }
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        set_err(err, errlen, "%s: cannot initialise the YAML parser", path);
        return NULL;
    }
    char *base_dir = file_dir(path);
    if (base_dir == NULL) {
        yaml_parser_delete(&parser);
        fclose(f);
        set_err(err, errlen, "%s: cannot resolve its directory: %s", path, strerror(errno));
        return NULL;
    }
    yaml_parser_set_input_file(&parser, f);
    struct cfg *c = cfg_from_parser(&parser, path, base_dir, err, errlen);
    free(base_dir);
    yaml_parser_delete(&parser);
    if (c != NULL && ferror(f)) {
        set_err(err, errlen, "%s: read error", path);
        cfg_free(&c);
    }
    fclose(f);
    if (c != NULL)
        c->path = xstrdup(path);
    return c;
}

struct cfg *cfg_load_string(const char *yaml, size_t len, const char *name, char *err, size_t errlen)
{
    yaml_parser_t parser;
    if (name == NULL)
        name = "<string>";
    if (!yaml_parser_initialize(&parser)) {
        set_err(err, errlen, "%s: cannot initialise the YAML parser", name);
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)(yaml ? yaml : ""), yaml ? len : 0);
    struct cfg *c = cfg_from_parser(&parser, name, NULL, err, errlen);
    yaml_parser_delete(&parser);
    return c;
}

void cfg_free(struct cfg **cp)
{
    if (cp == NULL || *cp == NULL)
        return;
    struct cfg *c = *cp;
    free(c->path);
    free_domains(c);
    free(c->log_level);
    free(c->log_file);
    free(c->data_dir);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->c2s.host);
    free(c->c2s_tls.host);
    free(c->storage.driver);
    free(c->storage.sqlite_path);
    free(c->bus.keys_dir);
    free(c->storage.pg_host);
    free(c->storage.pg_dbname);
    free(c->storage.pg_user);
    if (c->storage.pg_password != NULL) {
        explicit_bzero(c->storage.pg_password, strlen(c->storage.pg_password));
        free(c->storage.pg_password);
    }
    free(c->storage.pg_password_file);
    free(c->storage.pg_password_env);
    free(c->storage.pg_sslmode);
    free(c->storage.pg_sslrootcert);
    free_procs(c);
    free(c);
    *cp = NULL;
}

/* --- queries ---------------------------------------------------------------------- */

const struct cfg_proc *cfg_find_proc(const struct cfg *c, const char *id)
{
    if (c == NULL || id == NULL)
        return NULL;
    for (size_t i = 0; i < c->nprocs; i++)
        if (strcmp(c->procs[i].id, id) == 0)
            return &c->procs[i];
    return NULL;
}

size_t cfg_procs_of_role(const struct cfg *c, enum cfg_role role, const struct cfg_proc **out, size_t max)
{
    size_t n = 0;
    if (c == NULL || out == NULL)
        return 0;
    /* Insertion into a sorted array capped at max keeps the lowest indexes. */
    for (size_t i = 0; i < c->nprocs; i++) {
        const struct cfg_proc *proc = &c->procs[i];
        if (proc->role != role)
            continue;
        size_t at = n;
        while (at > 0 && out[at - 1]->index > proc->index)
            at--;
        if (at >= max)
            continue;
        size_t last = n < max ? n : max - 1;
        memmove(&out[at + 1], &out[at], (last - at) * sizeof *out);
        out[at] = proc;
        if (n < max)
            n++;
    }
    return n;
}

const char *cfg_role_name(enum cfg_role role)
{
    if ((int)role < 0 || role >= CFG_ROLE_COUNT)
        return "unknown";
    return role_names[role];
}

int cfg_role_parse(const char *s, enum cfg_role *out)
{
    if (s == NULL)
        return -1;
    for (int r = 0; r < CFG_ROLE_COUNT; r++) {
        if (strcmp(s, role_names[r]) == 0) {
            if (out != NULL)
                *out = (enum cfg_role)r;
            return 0;
        }
    }
    return -1;
}

bool cfg_is_local_domain(const struct cfg *c, const char *domain)
{
    if (c == NULL || domain == NULL)
        return false;
    for (size_t i = 0; i < c->ndomains; i++)
        if (strcmp(c->domains[i], domain) == 0)
            return true;
    return false;
}

const struct cfg_proc *cfg_shard(const struct cfg *c, enum cfg_role role, const char *key)
{
    const struct cfg_proc *best = NULL;
    uint64_t best_weight = 0;
    if (c == NULL || key == NULL)
        return NULL;
    size_t klen = strlen(key);
    for (size_t i = 0; i < c->nprocs; i++) {
        const struct cfg_proc *proc = &c->procs[i];
        if (proc->role != role)
            continue;
        uint64_t w = mk_hash64(key, klen, mk_hash64(proc->id, strlen(proc->id), 0));
        /* Ties (vanishingly rare) go to the lower index, whatever the file order. */
        if (best == NULL || w > best_weight || (w == best_weight && proc->index < best->index)) {
            best = proc;
            best_weight = w;
        }
    }
    return best;
}
