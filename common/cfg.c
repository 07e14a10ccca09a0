/* common/cfg.c - loads and checks the cluster's YAML configuration (libyaml document API), or the defaults. */
#include "cfg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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
    struct cfg_push_backend *cur_backend;   /* the pusher.backends entry being read */
    struct cfg_component *cur_component;    /* the components entry being read */
};

enum field_kind {
    FIELD_STR = 0,     /* char *: a non-empty string */
    FIELD_STR_NULL,    /* char *: a non-empty string, or null for "none" */
    FIELD_PATH,        /* char *: a file name, resolved against the file's directory */
    FIELD_PATH_NULL,   /* char *: the same, or null for "none" */
    FIELD_CHOICE,      /* char *: one of choices */
    FIELD_ENUM,        /* an enum (int-sized): the index of one of choices */
    FIELD_STRLIST,     /* char **, with its size_t count at count_offset: a list of non-empty strings */
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
    size_t count_offset;                 /* FIELD_STRLIST: where the count goes */
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
#define F_ENUM(k, st, m, ch) { .key = k, .kind = FIELD_ENUM, .offset = offsetof(st, m), .choices = ch }
#define F_STRLIST(k, st, m, n) { .key = k, .kind = FIELD_STRLIST, .offset = offsetof(st, m), \
                                 .count_offset = offsetof(st, n) }
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
static int parse_backends(struct cfg_parse *p, yaml_node_t *node, const char *path);
static void free_secret(char **s);
static int key_line(const struct cfg_parse *p, yaml_node_t *node, const char *key);
static int parse_push_events(struct cfg_parse *p, yaml_node_t *node, const char *path);
static int parse_components(struct cfg_parse *p, yaml_node_t *node, const char *path);
static int parse_gd_peers(struct cfg_parse *p, yaml_node_t *node, const char *path);
static int parse_gd_primary(struct cfg_parse *p, yaml_node_t *node, const char *path);
static int parse_gd_replica(struct cfg_parse *p, yaml_node_t *node, const char *path);
static int parse_see_other_host(struct cfg_parse *p, yaml_node_t *node, const char *path);

/* The order of enum cfg_push_type, enum cfg_push_format and Mk__PushEventKind. */
static const char *const push_types[] = { "http", "sns", "xep0357", NULL };
static const char *const push_formats[] = { "form", "json", NULL };
static const char *const push_event_names[] = {
    "sent", "delivered", "stored", "groupchat", "online", "offline", NULL,
};
#define CFG_PUSH_KINDS 6u
#define CFG_PUSH_ALL   ((1u << CFG_PUSH_KINDS) - 1u)
#define CFG_PUSH_UNSET UINT32_MAX   /* events not given: the type's default applies */
static const char *const mongoosepush_apis[] = { "v3", "v2", NULL };

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

static const struct cfg_field ws_listener_fields[] = {
    F_STR("host", struct cfg_listener, host),
    F_INT("port", struct cfg_listener, port, 0, 65535),
    F_BOOL("tls", struct cfg_listener, tls),
    F_STRLIST("origins", struct cfg_listener, origins, norigins),
};
SECTION(ws_listener_section, ws_listener_fields);

static const struct cfg_field listeners_fields[] = {
    F_SECTION("c2s", offsetof(struct cfg, c2s), listener_section),
    F_SECTION("c2s_tls", offsetof(struct cfg, c2s_tls), listener_section),
    F_SECTION("c2s_ws", offsetof(struct cfg, c2s_ws), ws_listener_section),
    F_SECTION("component", offsetof(struct cfg, component), listener_section),
};
SECTION(listeners_section, listeners_fields);

static const struct cfg_field sqlite_fields[] = {
    F_PATH("path", struct cfg_storage, sqlite_path),
    F_INT("checkpoint_pages", struct cfg_storage, sqlite_checkpoint_pages, 16, 1048576),
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
    F_UINT("max_preauth_per_ip", struct cfg_limits, max_preauth_per_ip, 0, 1000000),
    F_UINT("offline_max", struct cfg_limits, offline_max, 0, UINT_MAX),
    F_UINT("bus_hwm", struct cfg_limits, bus_hwm, 1, INT_MAX),
    F_SIZE("max_output_bytes", struct cfg_limits, max_output_bytes, 4096, 1ull << 40),
    F_UINT("max_store_queue", struct cfg_limits, max_store_queue, 1, UINT_MAX),
    F_UINT("max_held_presence", struct cfg_limits, max_held_presence, 1, UINT_MAX),
    F_UINT("max_pending_routes", struct cfg_limits, max_pending_routes, 1, UINT_MAX),
    F_UINT("mam_max_pending_rows", struct cfg_limits, mam_max_pending_rows, 1, UINT_MAX),
    F_UINT("max_roster_items", struct cfg_limits, max_roster_items, 1, UINT_MAX),
    F_UINT("max_block_items", struct cfg_limits, max_block_items, 1, UINT_MAX),
    F_UINT("custody_max_per_c2s", struct cfg_limits, custody_max_per_c2s, 0, UINT_MAX),
    F_UINT("custody_timeout", struct cfg_limits, custody_timeout, 0, 86400),
    F_UINT("custody_report_ms", struct cfg_limits, custody_report_ms, 1, 3600000),
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

static const struct cfg_field sm_fields[] = {
    F_BOOL("enabled", struct cfg_modules, sm_enabled),
    F_UINT("resume_timeout", struct cfg_modules, sm_resume_timeout, 0, 86400),
    F_UINT("max_unacked", struct cfg_modules, sm_max_unacked, 1, 1000000),
};
SECTION(sm_section, sm_fields);
static const struct cfg_field inbox_fields[] = {
    F_BOOL("enabled", struct cfg_modules, inbox_enabled),
};
SECTION(inbox_section, inbox_fields);
static const struct cfg_field pep_fields[] = {
    F_BOOL("enabled", struct cfg_modules, pep_enabled),
    F_SIZE("max_item_bytes", struct cfg_modules, pep_max_item_bytes, 1, 1u << 30),
    F_UINT("max_nodes", struct cfg_modules, pep_max_nodes, 1, 100000),
    F_UINT("max_items", struct cfg_modules, pep_max_items, 1, 100000),
};
SECTION(pep_section, pep_fields);

static const struct cfg_field muc_fields[] = {
    F_BOOL("enabled", struct cfg_modules, muc_enabled),
    F_STR("host", struct cfg_modules, muc_host),
    F_UINT("max_rooms_per_user", struct cfg_modules, muc_max_rooms_per_user, 1, 1000000),
    F_UINT("max_occupants", struct cfg_modules, muc_max_occupants, 1, 1000000),
    F_UINT("max_nick_bytes", struct cfg_modules, muc_max_nick_bytes, 1, 1023),
    F_UINT("history_size", struct cfg_modules, muc_history_size, 0, 1000),
};
SECTION(muc_section, muc_fields);

static const struct cfg_field modules_fields[] = {
    F_SECTION("register", 0, register_section),
    F_SECTION("anonymous", 0, anonymous_section),
    F_SECTION("mam", 0, mam_section),
    F_SECTION("sm", 0, sm_section),
    F_SECTION("inbox", 0, inbox_section),
    F_SECTION("muc", 0, muc_section),
    F_SECTION("pep", 0, pep_section),
};
SECTION(modules_section, modules_fields);

static const struct cfg_field sns_fields[] = {
    F_STR("region", struct cfg_push_backend, sns_region),
    F_STR("account_id", struct cfg_push_backend, sns_account_id),
    F_STR("endpoint", struct cfg_push_backend, sns_endpoint),
    F_STR("signing_region", struct cfg_push_backend, sns_signing_region),
    F_STR_NULL("presence_topic", struct cfg_push_backend, sns_presence_topic),
    F_STR_NULL("pm_topic", struct cfg_push_backend, sns_pm_topic),
    F_STR_NULL("muc_topic", struct cfg_push_backend, sns_muc_topic),
    F_REFUSED("access_key_id", "keys are never written in the config file; "
              "use access_key_id_file or access_key_id_env"),
    F_REFUSED("secret_access_key", "keys are never written in the config file; "
              "use secret_access_key_file or secret_access_key_env"),
    F_REFUSED("session_token", "tokens are never written in the config file; "
              "use session_token_file or session_token_env"),
    F_PATH_NULL("access_key_id_file", struct cfg_push_backend, aws_access_key_id_file),
    F_STR_NULL("access_key_id_env", struct cfg_push_backend, aws_access_key_id_env),
    F_PATH_NULL("secret_access_key_file", struct cfg_push_backend, aws_secret_access_key_file),
    F_STR_NULL("secret_access_key_env", struct cfg_push_backend, aws_secret_access_key_env),
    F_PATH_NULL("session_token_file", struct cfg_push_backend, aws_session_token_file),
    F_STR_NULL("session_token_env", struct cfg_push_backend, aws_session_token_env),
};
SECTION(sns_section, sns_fields);

static const struct cfg_field backend_fields[] = {
    F_STR("name", struct cfg_push_backend, name),
    F_ENUM("type", struct cfg_push_backend, type, push_types),
    F_STRLIST("domains", struct cfg_push_backend, domains, ndomains),
    F_CUSTOM("events", parse_push_events),
    F_UINT("connect_timeout_ms", struct cfg_push_backend, connect_timeout_ms, 1, 600000),
    F_UINT("timeout_ms", struct cfg_push_backend, timeout_ms, 1, 3600000),
    F_UINT("max_connections", struct cfg_push_backend, max_connections, 1, 10000),
    F_UINT("pipeline", struct cfg_push_backend, pipeline, 1, 64),
    F_BOOL("tls_verify", struct cfg_push_backend, tls_verify),
    F_PATH_NULL("ca_file", struct cfg_push_backend, ca_file),
    F_UINT("max_retries", struct cfg_push_backend, max_retries, 0, 1000),
    F_UINT("retry_base_ms", struct cfg_push_backend, retry_base_ms, 1, 3600000),
    F_UINT("retry_max_ms", struct cfg_push_backend, retry_max_ms, 1, 86400000),
    F_UINT("deadline_sec", struct cfg_push_backend, deadline_sec, 1, 7 * 86400),
    F_STR("url", struct cfg_push_backend, url),
    F_ENUM("format", struct cfg_push_backend, format, push_formats),
    F_REFUSED("secret", "a secret is never written in the config file; use secret_file or secret_env"),
    F_PATH_NULL("secret_file", struct cfg_push_backend, secret_file),
    F_STR_NULL("secret_env", struct cfg_push_backend, secret_env),
    F_SECTION("sns", 0, sns_section),
    F_STRLIST("virtual_hosts", struct cfg_push_backend, virtual_hosts, nvirtual_hosts),
    F_STR("mongoosepush_url", struct cfg_push_backend, mongoosepush_url),
    F_CHOICE("mongoosepush_api", struct cfg_push_backend, mongoosepush_api, mongoosepush_apis),
};
SECTION(backend_section, backend_fields);

static const struct cfg_field pusher_fields[] = {
    F_UINT("max_pending_events", struct cfg_pusher, max_pending_events, 1, UINT_MAX),
    F_CUSTOM("backends", parse_backends),
};
SECTION(pusher_section, pusher_fields);

static const struct cfg_field component_fields[] = {
    F_STR("domain", struct cfg_component, domain),
    F_REFUSED("secret", "a secret is never written in the config file; use secret_file or secret_env"),
    F_PATH_NULL("secret_file", struct cfg_component, secret_file),
    F_STR_NULL("secret_env", struct cfg_component, secret_env),
};
SECTION(component_section, component_fields);

static const struct cfg_field gd_link_fields[] = {
    F_STR("bind", struct cfg_gd, link_bind),
    F_STR("advertise", struct cfg_gd, link_advertise),
};
SECTION(gd_link_section, gd_link_fields);

static const struct cfg_field gd_keys_fields[] = {
    F_PATH("secret_file", struct cfg_gd, secret_file),
    F_REFUSED("secret_key", "a secret key is never written in the config file; it lives in secret_file"),
};
SECTION(gd_keys_section, gd_keys_fields);

static const struct cfg_field gd_redis_fields[] = {
    F_CUSTOM("primary", parse_gd_primary),
    F_CUSTOM("replica", parse_gd_replica),
    F_STR_NULL("user", struct cfg_gd, redis_user),
    F_REFUSED("password", "a password is never written in the config file; use password_file or password_env"),
    F_PATH_NULL("password_file", struct cfg_gd, redis_password_file),
    F_STR_NULL("password_env", struct cfg_gd, redis_password_env),
    F_STR("prefix", struct cfg_gd, redis_prefix),
    F_UINT("db", struct cfg_gd, redis_db, 0, 65535),
};
SECTION(gd_redis_section, gd_redis_fields);

static const struct cfg_field gd_peer_fields[] = {
    F_STR("dc", struct cfg_gd_peer, dc),
    F_STR("public_key", struct cfg_gd_peer, public_key),
    F_STR_NULL("endpoint", struct cfg_gd_peer, endpoint),
};
SECTION(gd_peer_section, gd_peer_fields);

static const struct cfg_field gd_fields[] = {
    F_BOOL("enabled", struct cfg_gd, enabled),
    F_STR("dc", struct cfg_gd, dc),
    F_SECTION("link", 0, gd_link_section),
    F_SECTION("keys", 0, gd_keys_section),
    F_CUSTOM("peers", parse_gd_peers),
    F_SECTION("redis", 0, gd_redis_section),
    F_UINT("ttl_sec", struct cfg_gd, ttl_sec, 2, 86400),
    F_UINT("refresh_sec", struct cfg_gd, refresh_sec, 1, 86400),
    F_UINT("refresh_batch", struct cfg_gd, refresh_batch, 1, 1000000),
    F_UINT("cache_ttl_ms", struct cfg_gd, cache_ttl_ms, 0, 3600000),
    F_UINT("cache_max", struct cfg_gd, cache_max, 0, 100000000),
    F_UINT("negative_ttl_ms", struct cfg_gd, negative_ttl_ms, 0, 60000),
    F_UINT("bounce_base_ms", struct cfg_gd, bounce_base_ms, 1, 60000),
    F_UINT("bounce_deadline_ms", struct cfg_gd, bounce_deadline_ms, 0, 3600000),
    F_UINT("link_queue_max", struct cfg_gd, link_queue_max, 0, 100000000),
    F_UINT("link_queue_sec", struct cfg_gd, link_queue_sec, 0, 86400),
    F_UINT("hop_ttl", struct cfg_gd, hop_ttl, 1, 64),
};
SECTION(gd_section, gd_fields);

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
    F_CUSTOM("see_other_host", parse_see_other_host),
    F_CUSTOM("processes", parse_processes),
    F_SECTION("pusher", offsetof(struct cfg, pusher), pusher_section),
    F_CUSTOM("components", parse_components),
    F_SECTION("gd", offsetof(struct cfg, gd), gd_section),
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

static void free_strlist(char ***list, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        free((*list)[i]);
    xfree(list);
    *n = 0;
}

/* A list of non-empty strings (a lone string is refused: it is a list). */
static int get_strlist(struct cfg_parse *p, yaml_node_t *n, const char *path, char ***list, size_t *count)
{
    char item_path[CFG_PATH_MAX + 24];
    if (n->type != YAML_SEQUENCE_NODE)
        return fail(p, n, "%s: expected a list, got %s", path, node_kind(n));
    size_t len = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    free_strlist(list, count);
    *list = xcalloc(len ? len : 1, sizeof **list);
    for (size_t i = 0; i < len; i++) {
        yaml_node_t *item = yaml_document_get_node(p->doc, n->data.sequence.items.start[i]);
        snprintf(item_path, sizeof item_path, "%s[%zu]", path, i);
        if (get_string(p, item, item_path, false, &(*list)[i]) == -1)
            return -1;
        *count = i + 1;
    }
    return 0;
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
    case FIELD_ENUM: {
        char *choice = NULL;
        if (get_choice(p, v, path, f->choices, &choice) == -1)
            return -1;
        int idx = 0;
        while (strcmp(f->choices[idx], choice) != 0)
            idx++;
        free(choice);
        *(int *)at = idx;
        return 0;
    }
    case FIELD_STRLIST:
        return get_strlist(p, v, path, (char ***)at, (size_t *)(void *)(base + f->count_offset));
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

/* see_other_host: auto | off | host:port (port 1-65535, IPv6 in brackets). */
static int parse_see_other_host(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    struct cfg *c = p->c;
    char smp[SAMPLE_BUF], *text = NULL, *host = NULL;
    int port = 0;
    if (get_string(p, node, path, false, &text) == -1)
        return -1;
    xfree(&c->see_other_host_addr);
    if (strcmp(text, "auto") == 0) {
        c->see_other_host = CFG_SOH_AUTO;
    } else if (strcmp(text, "off") == 0) {
        c->see_other_host = CFG_SOH_OFF;
    } else if (hostport_parse(text, &host, &port) == 0 && port > 0) {
        c->see_other_host = CFG_SOH_FIXED;
        c->see_other_host_addr = text;
        text = NULL;
    } else {
        free(text);
        free(host);
        return fail(p, node, "%s: \"%s\" is not auto, off or host:port (port 1-65535, IPv6 in brackets)", path,
                    sample(smp, sizeof smp, node));
    }
    free(text);
    free(host);
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

/* A process list replaced at a reload, kept for the pointers into it. */
struct cfg_retired {
    struct cfg_proc *procs;
    size_t nprocs;
    struct cfg_retired *next;
};

static void free_proc_list(struct cfg_proc *procs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(procs[i].id);
        free(procs[i].bus);
        free(procs[i].metrics_host);
    }
    free(procs);
}

static void free_procs(struct cfg *c)
{
    free_proc_list(c->procs, c->nprocs);
    c->procs = NULL;
    c->nprocs = 0;
    while (c->retired != NULL) {
        struct cfg_retired *r = c->retired;
        c->retired = r->next;
        free_proc_list(r->procs, r->nprocs);
        free(r);
    }
    for (size_t i = 0; i < c->nprints; i++)
        free(c->prints[i].key);
    xfree(&c->prints);
    c->nprints = 0;
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

/* --- pusher and components ------------------------------------------------------- */

static void backend_defaults(struct cfg_push_backend *b)
{
    b->events = CFG_PUSH_UNSET;
    b->connect_timeout_ms = 2000;
    b->timeout_ms = 5000;
    b->max_connections = 16;
    b->pipeline = 0;   /* automatic: the pusher probes the receiver */
    b->tls_verify = true;
    b->max_retries = 8;
    b->retry_base_ms = 100;
    b->retry_max_ms = 30000;
    b->deadline_sec = 300;
}

static void backend_free(struct cfg_push_backend *b)
{
    free(b->name);
    free_strlist(&b->domains, &b->ndomains);
    free(b->ca_file);
    free(b->url);
    free_secret(&b->secret);
    free(b->secret_file);
    free(b->secret_env);
    free(b->sns_region);
    free(b->sns_account_id);
    free(b->sns_endpoint);
    free(b->sns_signing_region);
    free(b->sns_presence_topic);
    free(b->sns_pm_topic);
    free(b->sns_muc_topic);
    free_secret(&b->aws_access_key_id);
    free(b->aws_access_key_id_file);
    free(b->aws_access_key_id_env);
    free_secret(&b->aws_secret_access_key);
    free(b->aws_secret_access_key_file);
    free(b->aws_secret_access_key_env);
    free_secret(&b->aws_session_token);
    free(b->aws_session_token_file);
    free(b->aws_session_token_env);
    free_strlist(&b->virtual_hosts, &b->nvirtual_hosts);
    free(b->mongoosepush_url);
    free(b->mongoosepush_api);
}

static void free_pusher(struct cfg *c)
{
    for (size_t i = 0; i < c->pusher.nbackends; i++)
        backend_free(&c->pusher.backends[i]);
    xfree(&c->pusher.backends);
    c->pusher.nbackends = 0;
}

static void free_components(struct cfg *c)
{
    for (size_t i = 0; i < c->ncomponents; i++) {
        free(c->components[i].domain);
        free_secret(&c->components[i].secret);
        free(c->components[i].secret_file);
        free(c->components[i].secret_env);
    }
    xfree(&c->components);
    c->ncomponents = 0;
}

static int parse_push_events(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    char smp[SAMPLE_BUF], item_path[CFG_PATH_MAX + 24];
    if (node->type != YAML_SEQUENCE_NODE)
        return fail(p, node, "%s: expected a list of event kinds (sent, delivered, stored, groupchat, online, "
                    "offline), got %s", path, node_kind(node));
    size_t n = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    if (n == 0)
        return fail(p, node, "%s: at least one event kind is required (leave the key out for the type's default)",
                    path);
    uint32_t mask = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(p->doc, node->data.sequence.items.start[i]);
        char *name = NULL;
        snprintf(item_path, sizeof item_path, "%s[%zu]", path, i);
        if (get_choice(p, item, item_path, push_event_names, &name) == -1)
            return -1;
        unsigned kind = 0;
        while (strcmp(push_event_names[kind], name) != 0)
            kind++;
        free(name);
        if (mask & CFG_PUSH_BIT(kind))
            return fail(p, item, "%s: \"%s\" is listed twice", item_path, sample(smp, sizeof smp, item));
        mask |= CFG_PUSH_BIT(kind);
    }
    p->cur_backend->events = mask;
    return 0;
}

static int parse_backends(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    struct cfg_pusher *pu = &p->c->pusher;
    char item_path[CFG_PATH_MAX];
    if (node_is_null(node)) {
        free_pusher(p->c);
        return 0;
    }
    if (node->type != YAML_SEQUENCE_NODE)
        return fail(p, node, "%s: expected a list of backends, got %s", path, node_kind(node));
    size_t n = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    free_pusher(p->c);
    pu->backends = xcalloc(n ? n : 1, sizeof *pu->backends);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(p->doc, node->data.sequence.items.start[i]);
        struct cfg_push_backend *b = &pu->backends[i];
        snprintf(item_path, sizeof item_path, "%s[%zu]", path, i);
        backend_defaults(b);
        pu->nbackends = i + 1;   /* counted at once, so that it is freed on error */
        if (item->type != YAML_MAPPING_NODE)
            return fail(p, item, "%s: expected a mapping (name, type, url, ...), got %s", item_path,
                        node_kind(item));
        p->cur_backend = b;
        int rc = walk_section(p, item, item_path, &backend_section, (char *)b);
        p->cur_backend = NULL;
        if (rc == -1)
            return -1;
    }
    return 0;
}

static int parse_components(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    struct cfg *c = p->c;
    char item_path[CFG_PATH_MAX];
    if (node_is_null(node)) {
        free_components(c);
        return 0;
    }
    if (node->type != YAML_SEQUENCE_NODE)
        return fail(p, node, "%s: expected a list of components, got %s", path, node_kind(node));
    size_t n = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    free_components(c);
    c->components = xcalloc(n ? n : 1, sizeof *c->components);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(p->doc, node->data.sequence.items.start[i]);
        snprintf(item_path, sizeof item_path, "%s[%zu]", path, i);
        c->ncomponents = i + 1;
        if (item->type != YAML_MAPPING_NODE)
            return fail(p, item, "%s: expected a mapping with domain and secret_file or secret_env, got %s",
                        item_path, node_kind(item));
        if (walk_section(p, item, item_path, &component_section, (char *)&c->components[i]) == -1)
            return -1;
    }
    return 0;
}

/* --- global distribution ---------------------------------------------------------- */

static void free_gd(struct cfg *c)
{
    struct cfg_gd *g = &c->gd;
    free(g->dc);
    free(g->link_bind);
    free(g->link_advertise);
    free(g->secret_file);
    for (size_t i = 0; i < g->npeers; i++) {
        free(g->peers[i].dc);
        free(g->peers[i].public_key);
        free(g->peers[i].endpoint);
    }
    xfree(&g->peers);
    g->npeers = 0;
    free(g->redis_primary_host);
    free(g->redis_replica_host);
    free(g->redis_user);
    free_secret(&g->redis_password);
    free(g->redis_password_file);
    free(g->redis_password_env);
    free(g->redis_prefix);
}

static int parse_gd_peers(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    struct cfg_gd *g = &p->c->gd;
    char item_path[CFG_PATH_MAX];
    for (size_t i = 0; i < g->npeers; i++) {
        free(g->peers[i].dc);
        free(g->peers[i].public_key);
        free(g->peers[i].endpoint);
    }
    xfree(&g->peers);
    g->npeers = 0;
    if (node_is_null(node))
        return 0;
    if (node->type != YAML_SEQUENCE_NODE)
        return fail(p, node, "%s: expected a list of data centers (dc, public_key, endpoint), got %s", path,
                    node_kind(node));
    size_t n = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    g->peers = xcalloc(n ? n : 1, sizeof *g->peers);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(p->doc, node->data.sequence.items.start[i]);
        snprintf(item_path, sizeof item_path, "%s[%zu]", path, i);
        g->npeers = i + 1;
        if (item->type != YAML_MAPPING_NODE)
            return fail(p, item, "%s: expected a mapping with dc, public_key and endpoint, got %s", item_path,
                        node_kind(item));
        if (walk_section(p, item, item_path, &gd_peer_section, (char *)&g->peers[i]) == -1)
            return -1;
    }
    return 0;
}

static int parse_gd_hostport(struct cfg_parse *p, yaml_node_t *node, const char *path, char **host, int *port)
{
    char *s = NULL, smp[SAMPLE_BUF];
    if (get_string(p, node, path, false, &s) == -1)
        return -1;
    char *h = NULL;
    int v = 0;
    int rc = hostport_parse(s, &h, &v);
    free(s);
    if (rc == -1 || v == 0) {
        free(h);
        return fail(p, node, "%s: \"%s\" is not host:port ([v6addr]:port for IPv6, port 1-65535)", path,
                    sample(smp, sizeof smp, node));
    }
    free(*host);
    *host = h;
    *port = v;
    return 0;
}

static int parse_gd_primary(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    return parse_gd_hostport(p, node, path, &p->c->gd.redis_primary_host, &p->c->gd.redis_primary_port);
}

static int parse_gd_replica(struct cfg_parse *p, yaml_node_t *node, const char *path)
{
    return parse_gd_hostport(p, node, path, &p->c->gd.redis_replica_host, &p->c->gd.redis_replica_port);
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

/* Reads a secret from file: at most CFG_PASSWORD_MAX bytes, the trailing newline
 * dropped, into *out. label names the key in errors (never the secret). The buffer is
 * wiped, as the secret must not linger. */
static int read_secret_file(struct cfg_parse *p, int line, const char *label, const char *file, char **out)
{
    char buf[CFG_PASSWORD_MAX + 1];
    size_t len = 0;
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return fail_line(p, line, "%s: cannot read %s: %s", label, file, strerror(errno));
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof buf - len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1) {
            int e = errno;
            close(fd);
            explicit_bzero(buf, sizeof buf);
            return fail_line(p, line, "%s: cannot read %s: %s", label, file, strerror(e));
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
        rc = fail_line(p, line, "%s: %s is larger than %d bytes", label, file, CFG_PASSWORD_MAX);
    } else {
        if (len > 0 && buf[len - 1] == '\n')
            len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
        if (memchr(buf, '\0', len) != NULL)
            rc = fail_line(p, line, "%s: %s holds a NUL byte", label, file);
        else
            *out = xstrndup(buf, len);
    }
    explicit_bzero(buf, sizeof buf);
    return rc;
}

static int read_password_file(struct cfg_parse *p)
{
    struct cfg_storage *st = &p->c->storage;
    return read_secret_file(p, p->password_file_line, "storage.pgsql.password_file", st->pg_password_file,
                            &st->pg_password);
}

static void free_secret(char **s)
{
    if (*s != NULL)
        explicit_bzero(*s, strlen(*s));
    xfree(s);
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

/* --- pusher and component checks (after the walk: they need the hosted domains) --- */

/* The value node of key in the mapping node, or NULL. */
static yaml_node_t *map_get(const struct cfg_parse *p, yaml_node_t *node, const char *key)
{
    if (node == NULL || node->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start; pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, pair->key);
        if (k != NULL && k->type == YAML_SCALAR_NODE && strcmp((const char *)k->data.scalar.value, key) == 0)
            return yaml_document_get_node(p->doc, pair->value);
    }
    return NULL;
}

/* The line of key in node, or of node itself when key is absent. */
static int line_of(const struct cfg_parse *p, yaml_node_t *node, const char *key)
{
    return map_get(p, node, key) != NULL ? key_line(p, node, key) : node_line(node);
}

/* NULL when url is http(s)://host[:port][/...] with no blank or control byte, else why not. */
static const char *url_check(const char *url)
{
    for (const char *s = url; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f)
            return "holds a blank or a control character";
    const char *rest;
    if (strncasecmp(url, "http://", 7) == 0)
        rest = url + 7;
    else if (strncasecmp(url, "https://", 8) == 0)
        rest = url + 8;
    else
        return "is not an http:// or https:// URL";
    size_t alen = strcspn(rest, "/?#");
    if (memchr(rest, '@', alen) != NULL)
        return "has credentials in it (user@host); they would be logged with the URL";
    const char *port = NULL;
    size_t hlen = alen;
    if (rest[0] == '[') {
        const char *close = memchr(rest, ']', alen);
        if (close == NULL || close == rest + 1)
            return "has a malformed [IPv6] host";
        hlen = (size_t)(close - rest) + 1;
        if (hlen < alen) {
            if (rest[hlen] != ':')
                return "has a malformed [IPv6] host";
            port = rest + hlen + 1;
        }
    } else {
        const char *colon = memchr(rest, ':', alen);
        if (colon != NULL) {
            hlen = (size_t)(colon - rest);
            port = colon + 1;
        }
    }
    if (hlen == 0)
        return "has no host";
    if (port != NULL) {
        size_t plen = (size_t)(rest + alen - port);
        char pbuf[8];
        if (plen == 0 || plen >= sizeof pbuf)
            return "has a bad port";
        memcpy(pbuf, port, plen);
        pbuf[plen] = '\0';
        if (port_parse(pbuf, 1) == -1)
            return "has a bad port";
    }
    return NULL;
}

/* A secret from key_file or key_env (not both), else from default_env when that is
 * set; required: one of them must give it. path names the mapping in errors. */
static int resolve_secret(struct cfg_parse *p, yaml_node_t *item, const char *path, const char *key,
                          const char *file, char **env, const char *default_env, bool required, char **out)
{
    char fkey[64], ekey[64], label[CFG_PATH_MAX + 64];
    snprintf(fkey, sizeof fkey, "%s_file", key);
    snprintf(ekey, sizeof ekey, "%s_env", key);
    if (file != NULL && *env != NULL) {
        int fl = line_of(p, item, fkey), el = line_of(p, item, ekey);
        return fail_line(p, fl > el ? fl : el, "%s: give %s or %s, not both", path, fkey, ekey);
    }
    if (file != NULL) {
        snprintf(label, sizeof label, "%s.%s", path, fkey);
        if (read_secret_file(p, line_of(p, item, fkey), label, file, out) == -1)
            return -1;
        if (**out == '\0')
            return fail_line(p, line_of(p, item, fkey), "%s: %s is empty", label, file);
        return 0;
    }
    if (*env != NULL) {
        const char *v = getenv(*env);
        if (v == NULL || *v == '\0')
            return fail_line(p, line_of(p, item, ekey), "%s.%s: environment variable %s is %s", path, ekey, *env,
                             v == NULL ? "not set" : "empty");
        *out = xstrdup(v);
        return 0;
    }
    if (default_env != NULL) {
        const char *v = getenv(default_env);
        if (v != NULL && *v != '\0') {
            *env = xstrdup(default_env);
            *out = xstrdup(v);
            return 0;
        }
    }
    if (!required)
        return 0;
    if (default_env != NULL)
        return fail_line(p, node_line(item), "%s: %s is required: give %s or %s, or set %s", path, key, fkey, ekey,
                         default_env);
    return fail_line(p, node_line(item), "%s: %s is required: give %s or %s", path, key, fkey, ekey);
}

/* Lower-cases and checks every name of a domain list read from key of item. */
static int check_domain_list(struct cfg_parse *p, yaml_node_t *item, const char *path, const char *key,
                             char **list, size_t n, bool hosted)
{
    yaml_node_t *seq = map_get(p, item, key);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *at = seq != NULL && seq->type == YAML_SEQUENCE_NODE
                              ? yaml_document_get_node(p->doc, seq->data.sequence.items.start[i]) : item;
        char smp[SAMPLE_BUF];
        const char *why = domain_check(list[i]);
        if (why != NULL)
            return fail(p, at, "%s.%s[%zu]: domain \"%s\" %s", path, key, i, sample(smp, sizeof smp, at), why);
        if (hosted && !cfg_is_local_domain(p->c, list[i]))
            return fail(p, at, "%s.%s[%zu]: \"%s\" is not a hosted domain (see domains)", path, key, i, list[i]);
        for (size_t j = 0; j < i; j++)
            if (strcmp(list[j], list[i]) == 0)
                return fail(p, at, "%s.%s[%zu]: \"%s\" is listed twice", path, key, i, list[i]);
    }
    return 0;
}

/* Keys that mean nothing for the backend's type are refused rather than ignored. */
static int refuse_keys(struct cfg_parse *p, yaml_node_t *item, const char *path, const char *type,
                       const char *const *keys)
{
    for (; *keys; keys++)
        if (map_get(p, item, *keys) != NULL)
            return fail_line(p, key_line(p, item, *keys), "%s.%s: not used by a backend of type %s", path, *keys,
                             type);
    return 0;
}

static int check_http_backend(struct cfg_parse *p, yaml_node_t *item, const char *path, struct cfg_push_backend *b)
{
    static const char *const unused[] = { "sns", "virtual_hosts", "mongoosepush_url", "mongoosepush_api", NULL };
    if (refuse_keys(p, item, path, "http", unused) == -1)
        return -1;
    if (b->url == NULL)
        return fail(p, item, "%s: url is required for a backend of type http", path);
    const char *why = url_check(b->url);
    if (why != NULL)
        return fail_line(p, key_line(p, item, "url"), "%s.url: %s", path, why);
    if (b->events == CFG_PUSH_UNSET)
        b->events = b->format == CFG_PUSH_JSON ? CFG_PUSH_ALL : CFG_PUSH_BIT(0);
    if (b->format == CFG_PUSH_JSON) {
        if (b->secret_file == NULL && b->secret_env == NULL)
            return fail_line(p, line_of(p, item, "format"),
                             "%s: format json signs every request: secret_file or secret_env is required", path);
        return resolve_secret(p, item, path, "secret", b->secret_file, &b->secret_env, NULL, true, &b->secret);
    }
    if (b->secret_file != NULL || b->secret_env != NULL)
        return fail_line(p, line_of(p, item, b->secret_file != NULL ? "secret_file" : "secret_env"),
                         "%s: a secret is used only with format json", path);
    return 0;
}

static int check_sns_backend(struct cfg_parse *p, yaml_node_t *item, const char *path, struct cfg_push_backend *b)
{
    static const char *const unused[] = {
        "url", "format", "secret_file", "secret_env", "virtual_hosts", "mongoosepush_url", "mongoosepush_api", NULL,
    };
    char spath[CFG_PATH_MAX + 8];
    if (refuse_keys(p, item, path, "sns", unused) == -1)
        return -1;
    yaml_node_t *sns = map_get(p, item, "sns");
    snprintf(spath, sizeof spath, "%s.sns", path);
    if (sns == NULL || node_is_null(sns))
        return fail(p, item, "%s: a backend of type sns needs an sns: mapping with region and account_id", path);
    if (b->sns_region == NULL)
        return fail(p, sns, "%s: region is required", spath);
    for (const char *s = b->sns_region; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-'))
            return fail_line(p, key_line(p, sns, "region"), "%s.region: \"%s\" is not a region name (e.g. eu-west-1)",
                             spath, b->sns_region);
    if (b->sns_account_id == NULL)
        return fail(p, sns, "%s: account_id is required", spath);
    size_t alen = strlen(b->sns_account_id);
    if (alen != 12 || strspn(b->sns_account_id, "0123456789") != 12)
        return fail_line(p, key_line(p, sns, "account_id"), "%s.account_id: an AWS account id is 12 digits", spath);
    if (b->sns_endpoint == NULL) {
        b->sns_endpoint = xasprintf("https://sns.%s.amazonaws.com/", b->sns_region);
    } else {
        const char *why = url_check(b->sns_endpoint);
        if (why != NULL)
            return fail_line(p, key_line(p, sns, "endpoint"), "%s.endpoint: %s", spath, why);
    }
    if (b->sns_signing_region == NULL)
        b->sns_signing_region = xstrdup(b->sns_region);
    if (b->events == CFG_PUSH_UNSET)
        b->events = CFG_PUSH_BIT(0) | CFG_PUSH_BIT(3) | CFG_PUSH_BIT(4) | CFG_PUSH_BIT(5);
    if (resolve_secret(p, sns, spath, "access_key_id", b->aws_access_key_id_file, &b->aws_access_key_id_env,
                       "AWS_ACCESS_KEY_ID", true, &b->aws_access_key_id) == -1)
        return -1;
    if (resolve_secret(p, sns, spath, "secret_access_key", b->aws_secret_access_key_file,
                       &b->aws_secret_access_key_env, "AWS_SECRET_ACCESS_KEY", true, &b->aws_secret_access_key) == -1)
        return -1;
    return resolve_secret(p, sns, spath, "session_token", b->aws_session_token_file, &b->aws_session_token_env,
                          "AWS_SESSION_TOKEN", false, &b->aws_session_token);
}

static int check_xep0357_backend(struct cfg_parse *p, yaml_node_t *item, const char *path,
                                 struct cfg_push_backend *b)
{
    static const char *const unused[] = { "url", "format", "secret_file", "secret_env", "sns", NULL };
    if (refuse_keys(p, item, path, "xep0357", unused) == -1)
        return -1;
    if (check_domain_list(p, item, path, "virtual_hosts", b->virtual_hosts, b->nvirtual_hosts, false) == -1)
        return -1;
    if (b->nvirtual_hosts > 0 && b->mongoosepush_url == NULL)
        return fail_line(p, key_line(p, item, "virtual_hosts"),
                         "%s: virtual_hosts are served by MongoosePush: mongoosepush_url is required", path);
    if (b->mongoosepush_url != NULL) {
        const char *why = url_check(b->mongoosepush_url);
        if (why != NULL)
            return fail_line(p, key_line(p, item, "mongoosepush_url"), "%s.mongoosepush_url: %s", path, why);
    }
    if (b->mongoosepush_api == NULL)
        b->mongoosepush_api = xstrdup("v3");
    if (b->events == CFG_PUSH_UNSET)
        b->events = CFG_PUSH_BIT(1) | CFG_PUSH_BIT(2) | CFG_PUSH_BIT(4);
    return 0;
}

static int check_pusher(struct cfg_parse *p, yaml_node_t *root)
{
    struct cfg_pusher *pu = &p->c->pusher;
    yaml_node_t *seq = map_get(p, map_get(p, root, "pusher"), "backends");
    char path[CFG_PATH_MAX];
    for (size_t i = 0; i < pu->nbackends; i++) {
        struct cfg_push_backend *b = &pu->backends[i];
        yaml_node_t *item = yaml_document_get_node(p->doc, seq->data.sequence.items.start[i]);
        snprintf(path, sizeof path, "pusher.backends[%zu]", i);
        if (map_get(p, item, "type") == NULL)
            return fail(p, item, "%s: type is required (http, sns or xep0357)", path);
        if (b->name == NULL) {
            b->name = xasprintf("%s.%zu", push_types[b->type], i);
        } else {
            size_t nl = strlen(b->name);
            if (nl > 64 || strspn(b->name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != nl)
                return fail_line(p, key_line(p, item, "name"),
                                 "%s.name: at most 64 letters, digits, '_', '.' or '-' (it is a metric label)", path);
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(pu->backends[j].name, b->name) == 0)
                return fail_line(p, line_of(p, item, "name"), "%s: duplicate backend name \"%s\"", path, b->name);
        if (map_get(p, item, "domains") != NULL && b->ndomains == 0)
            return fail_line(p, key_line(p, item, "domains"),
                             "%s.domains: empty (leave the key out for every hosted domain)", path);
        if (check_domain_list(p, item, path, "domains", b->domains, b->ndomains, true) == -1)
            return -1;
        if (b->retry_max_ms < b->retry_base_ms)
            return fail_line(p, line_of(p, item, "retry_max_ms"), "%s: retry_max_ms (%u) is below retry_base_ms (%u)",
                             path, b->retry_max_ms, b->retry_base_ms);
        int rc = 0;
        switch (b->type) {
        case CFG_PUSH_HTTP:
            rc = check_http_backend(p, item, path, b);
            break;
        case CFG_PUSH_SNS:
            rc = check_sns_backend(p, item, path, b);
            break;
        case CFG_PUSH_XEP0357:
            rc = check_xep0357_backend(p, item, path, b);
            break;
        }
        if (rc == -1)
            return -1;
    }
    return 0;
}

static int check_components(struct cfg_parse *p, yaml_node_t *root)
{
    struct cfg *c = p->c;
    yaml_node_t *seq = map_get(p, root, "components");
    char path[CFG_PATH_MAX], smp[SAMPLE_BUF];
    for (size_t i = 0; i < c->ncomponents; i++) {
        struct cfg_component *cc = &c->components[i];
        yaml_node_t *item = yaml_document_get_node(p->doc, seq->data.sequence.items.start[i]);
        snprintf(path, sizeof path, "components[%zu]", i);
        if (cc->domain == NULL)
            return fail(p, item, "%s: domain is required", path);
        yaml_node_t *dn = map_get(p, item, "domain");
        const char *why = domain_check(cc->domain);
        if (why != NULL)
            return fail(p, dn, "%s.domain: domain \"%s\" %s", path, sample(smp, sizeof smp, dn), why);
        if (cfg_is_local_domain(c, cc->domain))
            return fail(p, dn, "%s.domain: \"%s\" is a hosted domain; a component needs a domain of its own", path,
                        cc->domain);
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->components[j].domain, cc->domain) == 0)
                return fail(p, dn, "%s.domain: duplicate component \"%s\"", path, cc->domain);
        if (resolve_secret(p, item, path, "secret", cc->secret_file, &cc->secret_env, NULL, true, &cc->secret) == -1)
            return -1;
    }
    return 0;
}

char *cfg_muc_host(const struct cfg *c, const char *domain)
{
    static const char mark[] = "@HOST@";
    const char *h = c->modules.muc_host ? c->modules.muc_host : "conference.@HOST@";
    const char *at = strstr(h, mark);
    if (at == NULL)
        return xstrdup(h);
    return xasprintf("%.*s%s%s", (int)(at - h), h, domain, at + sizeof mark - 1);
}

/* modules.muc.host: every hosted domain's service is a valid domain of its own (not a
 * hosted domain, not a component), and two hosted domains do not share one. */
static int check_muc(struct cfg_parse *p, yaml_node_t *root)
{
    struct cfg *c = p->c;
    yaml_node_t *mods = map_get(p, root, "modules");
    yaml_node_t *muc = map_get(p, mods, "muc");
    yaml_node_t *at = map_get(p, muc, "host");
    if (at == NULL)
        at = muc != NULL ? muc : root;
    int line = at != NULL ? node_line(at) : 1;
    for (size_t i = 0; i < c->ndomains; i++) {
        char *h = cfg_muc_host(c, c->domains[i]);
        for (char *q = h; *q; q++)
            if (*q >= 'A' && *q <= 'Z')
                *q = (char)(*q - 'A' + 'a');
        const char *why = domain_check(h);
        int rc = 0;
        if (why != NULL)
            rc = fail_line(p, line, "modules.muc.host: \"%s\" %s", h, why);
        else if (cfg_is_local_domain(c, h))
            rc = fail_line(p, line, "modules.muc.host: \"%s\" is a hosted domain; the MUC service needs a domain of its own", h);
        else if (cfg_find_component(c, h) != NULL)
            rc = fail_line(p, line, "modules.muc.host: \"%s\" is a component's domain", h);
        for (size_t j = 0; rc == 0 && j < i; j++) {
            char *o = cfg_muc_host(c, c->domains[j]);
            if (strcasecmp(o, h) == 0)
                rc = fail_line(p, line, "modules.muc.host: \"%s\" serves two hosted domains (write @HOST@ in it)", h);
            free(o);
        }
        free(h);
        if (rc == -1)
            return -1;
    }
    return 0;
}

/* NULL when name is a data center name: 1-63 bytes of [a-z0-9._-] (it is part of Redis
 * keys and of metric label values), else why not. */
static const char *dc_name_check(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 63)
        return "must be 1-63 bytes long";
    if (strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789._-") != n)
        return "may hold only a-z, 0-9, '.', '_' and '-'";
    return NULL;
}

/* NULL when key is a CURVE public key in Z85 (40 characters of ZeroMQ's alphabet). */
static const char *z85_key_check(const char *key)
{
    static const char z85[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
    if (strlen(key) != 40)
        return "is not a CURVE public key: Z85 text of 40 characters";
    if (strspn(key, z85) != 40)
        return "is not a CURVE public key: a character outside ZeroMQ's Z85 alphabet";
    return NULL;
}

/* NULL when e is tcp://host:port (the only transport of an inter-DC link). */
static const char *gd_endpoint_check(const char *e)
{
    if (strncmp(e, "tcp://", 6) != 0 || !endpoint_valid(e))
        return "is not a tcp://host:port endpoint";
    return NULL;
}

static bool gd_endpoint_wildcard(const char *e)
{
    return strncmp(e, "tcp://*:", 8) == 0 || strncmp(e, "tcp://0.0.0.0:", 14) == 0 ||
           strncmp(e, "tcp://[::]:", 11) == 0;
}

/* gd: formats are checked whether or not it is enabled (a wrong key fails now, not on
 * the day it is switched on); what only a running gd needs is required when enabled. */
static int check_gd(struct cfg_parse *p, yaml_node_t *root)
{
    struct cfg_gd *g = &p->c->gd;
    yaml_node_t *gn = map_get(p, root, "gd");
    yaml_node_t *link = map_get(p, gn, "link"), *redis = map_get(p, gn, "redis");
    yaml_node_t *peers = map_get(p, gn, "peers");
    char path[CFG_PATH_MAX];
    const char *why;
    if (g->dc != NULL && (why = dc_name_check(g->dc)) != NULL)
        return fail_line(p, key_line(p, gn, "dc"), "gd.dc: \"%s\" %s", g->dc, why);
    if (g->link_bind != NULL && (why = gd_endpoint_check(g->link_bind)) != NULL)
        return fail_line(p, key_line(p, link, "bind"), "gd.link.bind: %s", why);
    if (g->link_advertise != NULL) {
        if ((why = gd_endpoint_check(g->link_advertise)) != NULL)
            return fail_line(p, key_line(p, link, "advertise"), "gd.link.advertise: %s", why);
        if (gd_endpoint_wildcard(g->link_advertise))
            return fail_line(p, key_line(p, link, "advertise"),
                             "gd.link.advertise: a wildcard address cannot be dialled by other data centers");
    }
    for (size_t i = 0; i < g->npeers; i++) {
        struct cfg_gd_peer *pe = &g->peers[i];
        yaml_node_t *item = yaml_document_get_node(p->doc, peers->data.sequence.items.start[i]);
        snprintf(path, sizeof path, "gd.peers[%zu]", i);
        if (pe->dc == NULL)
            return fail(p, item, "%s: dc is required", path);
        if ((why = dc_name_check(pe->dc)) != NULL)
            return fail_line(p, key_line(p, item, "dc"), "%s.dc: \"%s\" %s", path, pe->dc, why);
        if (g->dc != NULL && strcmp(pe->dc, g->dc) == 0)
            return fail_line(p, key_line(p, item, "dc"), "%s.dc: \"%s\" is this data center (gd.dc); peers are "
                             "the other ones", path, pe->dc);
        if (pe->public_key == NULL)
            return fail(p, item, "%s: public_key is required (the peer data center's CURVE public key, Z85)", path);
        if ((why = z85_key_check(pe->public_key)) != NULL)
            return fail_line(p, key_line(p, item, "public_key"), "%s.public_key: %s", path, why);
        if (pe->endpoint != NULL && (why = gd_endpoint_check(pe->endpoint)) != NULL)
            return fail_line(p, key_line(p, item, "endpoint"), "%s.endpoint: %s", path, why);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(g->peers[j].dc, pe->dc) == 0)
                return fail_line(p, key_line(p, item, "dc"), "%s.dc: data center \"%s\" is listed twice", path,
                                 pe->dc);
            if (strcmp(g->peers[j].public_key, pe->public_key) == 0)
                return fail_line(p, key_line(p, item, "public_key"),
                                 "%s.public_key: the same key as gd.peers[%zu] (each data center has its own pair)",
                                 path, j);
        }
    }
    /* hiredis would resolve a name with a blocking getaddrinfo on gd's loop */
    static const char *const redis_keys[] = { "primary", "replica" };
    const char *redis_hosts[] = { g->redis_primary_host, g->redis_replica_host };
    for (size_t i = 0; i < 2; i++) {
        unsigned char addr[sizeof(struct in6_addr)];
        const char *h = redis_hosts[i];
        if (h != NULL && strcmp(h, "localhost") != 0 && inet_pton(AF_INET, h, addr) != 1 &&
            inet_pton(AF_INET6, h, addr) != 1)
            return fail_line(p, key_line(p, redis, redis_keys[i]),
                             "gd.redis.%s: \"%s\" is not an IP address (or localhost): gd does not resolve names "
                             "(a blocking lookup on its loop); give the address", redis_keys[i], h);
    }
    if (!g->enabled)
        return 0;
    int gline = gn != NULL ? key_line(p, root, "gd") : 1;
    if (g->dc == NULL)
        return fail_line(p, gline, "gd: dc (this data center's name) is required when gd is enabled");
    if (g->link_bind == NULL)
        return fail_line(p, gline, "gd: link.bind (tcp://host:port of the inter-DC link) is required when gd is "
                         "enabled");
    if (g->link_advertise == NULL) {
        if (gd_endpoint_wildcard(g->link_bind))
            return fail_line(p, key_line(p, link, "bind"), "gd.link.bind: binds a wildcard address: give "
                             "link.advertise, the endpoint other data centers dial");
        g->link_advertise = xstrdup(g->link_bind);
    }
    if (g->refresh_sec >= g->ttl_sec)
        return fail_line(p, key_line(p, gn, map_get(p, gn, "refresh_sec") != NULL ? "refresh_sec" : "ttl_sec"),
                         "gd: refresh_sec (%u) must be less than ttl_sec (%u), or entries expire while their "
                         "sessions live", g->refresh_sec, g->ttl_sec);
    bool has_gd = false;
    for (size_t i = 0; i < p->c->nprocs; i++)
        if (p->c->procs[i].role == CFG_ROLE_GD)
            has_gd = true;
    if (!has_gd)
        return fail_line(p, gline, "gd: enabled, but processes has no gd process");
    if (redis != NULL && map_get(p, redis, "user") != NULL && g->redis_password_file == NULL &&
        g->redis_password_env == NULL)
        return fail_line(p, key_line(p, redis, "user"),
                         "gd.redis.user: an ACL user needs password_file or password_env");
    return resolve_secret(p, redis != NULL ? redis : gn, "gd.redis", "password", g->redis_password_file,
                          &g->redis_password_env, NULL, false, &g->redis_password);
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
    c->c2s_ws.host = xstrdup("0.0.0.0");
    c->c2s_ws.port = 0;
    c->c2s_ws.tls = true;
    c->component.host = xstrdup("127.0.0.1");
    c->component.port = 0;
    c->pusher.max_pending_events = 100000;

    c->gd.redis_primary_host = xstrdup("127.0.0.1");
    c->gd.redis_primary_port = 6379;
    c->gd.redis_prefix = xstrdup("meerkat:");
    c->gd.ttl_sec = 120;
    c->gd.refresh_sec = 40;
    c->gd.refresh_batch = 1000;
    c->gd.cache_ttl_ms = 5000;
    c->gd.cache_max = 100000;
    c->gd.negative_ttl_ms = 500;
    c->gd.bounce_base_ms = 50;
    c->gd.bounce_deadline_ms = 5000;
    c->gd.link_queue_max = 100000;
    c->gd.link_queue_sec = 30;
    c->gd.hop_ttl = 4;

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
    c->limits.max_preauth_per_ip = 64;
    c->limits.offline_max = 100;
    c->limits.bus_hwm = 100000;
    c->limits.max_output_bytes = (size_t)8 << 20;
    c->limits.max_store_queue = 10000;
    c->limits.max_held_presence = 128;
    c->limits.custody_max_per_c2s = 100000;
    c->limits.custody_timeout = 120;
    c->limits.custody_report_ms = 100;
    c->limits.max_pending_routes = 100000;
    c->limits.mam_max_pending_rows = 100000;
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
    c->modules.sm_enabled = true;
    c->modules.sm_resume_timeout = 300;
    c->modules.sm_max_unacked = 500;
    c->modules.muc_enabled = true;
    c->modules.muc_host = xstrdup("conference.@HOST@");
    c->modules.muc_max_rooms_per_user = 10;
    c->modules.muc_max_occupants = 200;
    c->modules.muc_max_nick_bytes = 128;
    c->modules.muc_history_size = 20;
    c->modules.pep_enabled = true;
    c->modules.pep_max_item_bytes = 60 * 1024;
    c->modules.pep_max_nodes = 100;
    c->modules.pep_max_items = 256;

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
    if (c->gd.secret_file == NULL)
        c->gd.secret_file = path_resolve(c->data_dir, "gd_curve.key");
    if (c->gd.redis_replica_host == NULL) {
        c->gd.redis_replica_host = xstrdup(c->gd.redis_primary_host);
        c->gd.redis_replica_port = c->gd.redis_primary_port;
    }
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

/* A hash of node's value as written: kinds, scalars, keys and items in order. */
static uint64_t node_print(yaml_document_t *doc, yaml_node_t *node, unsigned depth)
{
    if (node == NULL || depth > 64)
        return 0;
    uint64_t h = mk_hash64(&node->type, sizeof node->type, 0x6d6b);
    switch (node->type) {
    case YAML_SCALAR_NODE:
        return mk_hash64(node->data.scalar.value, node->data.scalar.length, h);
    case YAML_SEQUENCE_NODE:
        for (yaml_node_item_t *it = node->data.sequence.items.start; it < node->data.sequence.items.top; it++) {
            uint64_t v = node_print(doc, yaml_document_get_node(doc, *it), depth + 1);
            h = mk_hash64(&v, sizeof v, h);
        }
        return h;
    case YAML_MAPPING_NODE:
        for (yaml_node_pair_t *pr = node->data.mapping.pairs.start; pr < node->data.mapping.pairs.top; pr++) {
            uint64_t k = node_print(doc, yaml_document_get_node(doc, pr->key), depth + 1);
            uint64_t v = node_print(doc, yaml_document_get_node(doc, pr->value), depth + 1);
            h = mk_hash64(&k, sizeof k, h);
            h = mk_hash64(&v, sizeof v, h);
        }
        return h;
    default:
        return h;
    }
}

/* Records one print per top-level key but processes (what a reload may not change). */
static void key_prints(struct cfg *c, yaml_document_t *doc, yaml_node_t *root)
{
    if (root->type != YAML_MAPPING_NODE)
        return;
    size_t n = (size_t)(root->data.mapping.pairs.top - root->data.mapping.pairs.start);
    c->prints = xcalloc(n ? n : 1, sizeof *c->prints);
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start; pr < root->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(doc, pr->key);
        if (k == NULL || k->type != YAML_SCALAR_NODE || strcmp((const char *)k->data.scalar.value, "processes") == 0)
            continue;
        c->prints[c->nprints].key = xstrdup((const char *)k->data.scalar.value);
        c->prints[c->nprints].hash = node_print(doc, yaml_document_get_node(doc, pr->value), 0);
        c->nprints++;
    }
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
    if (rc == 0)
        rc = check_pusher(&p, root);
    if (rc == 0)
        rc = check_components(&p, root);
    if (rc == 0)
        rc = check_gd(&p, root);
    if (rc == 0)
        rc = check_muc(&p, root);
    if (rc == 0 && root != NULL)
        key_prints(c, &doc, root);
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
    free(c->see_other_host_addr);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->c2s.host);
    free(c->c2s_tls.host);
    free(c->c2s_ws.host);
    free_strlist(&c->c2s_ws.origins, &c->c2s_ws.norigins);
    free(c->component.host);
    free_components(c);
    free_pusher(c);
    free_gd(c);
    free(c->storage.driver);
    free(c->storage.sqlite_path);
    free(c->bus.keys_dir);
    free(c->modules.muc_host);
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

/* --- reload ----------------------------------------------------------------------- */

static const struct cfg_key_print *find_print(const struct cfg *c, const char *key)
{
    for (size_t i = 0; i < c->nprints; i++)
        if (strcmp(c->prints[i].key, key) == 0)
            return &c->prints[i];
    return NULL;
}

static bool str_same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Appends ", key" (or "key") to out (a string of outlen bytes). */
static void add_name(char *out, size_t outlen, const char *key)
{
    size_t used = strlen(out);
    if (used + 2 < outlen)
        snprintf(out + used, outlen - used, "%s%s", used > 0 ? ", " : "", key);
}

int cfg_reload_check(const struct cfg *cur, const struct cfg *next, char *why, size_t whylen)
{
    if (cur == NULL || next == NULL) {
        set_err(why, whylen, "no configuration file to read again");
        return -1;
    }
    for (size_t i = 0; i < cur->nprocs; i++) {
        const struct cfg_proc *a = &cur->procs[i];
        const struct cfg_proc *b = cfg_find_proc(next, a->id);
        if (b == NULL) {
            set_err(why, whylen, "process %s is no longer in the file: removing a process needs a restart", a->id);
            return -1;
        }
        if (!str_same(a->bus, b->bus) || !str_same(a->metrics_host, b->metrics_host) ||
            a->metrics_port != b->metrics_port) {
            set_err(why, whylen, "process %s changed its bus or metrics address: that needs a restart", a->id);
            return -1;
        }
    }
    for (size_t i = 0; i < next->nprocs; i++) {
        /* A new c2s takes new connections; a new router shard takes its share of the
         * bare JIDs, whose sessions and routes in flight the others hand over to it
         * (c2s/handover.c, router/handover.c). A new shard of the other sharded roles
         * would take JIDs whose state is not handed over: not accepted. */
        enum cfg_role role = next->procs[i].role;
        if (role != CFG_ROLE_C2S && role != CFG_ROLE_ROUTER && cfg_find_proc(cur, next->procs[i].id) == NULL) {
            set_err(why, whylen, "process %s is new: a reload adds c2s and router processes only; a new %s needs a restart",
                    next->procs[i].id, cfg_role_name(next->procs[i].role));
            return -1;
        }
    }
    char changed[256] = "";
    for (size_t i = 0; i < cur->nprints; i++) {
        const struct cfg_key_print *b = find_print(next, cur->prints[i].key);
        if (b == NULL || b->hash != cur->prints[i].hash)
            add_name(changed, sizeof changed, cur->prints[i].key);
    }
    for (size_t i = 0; i < next->nprints; i++)
        if (find_print(cur, next->prints[i].key) == NULL)
            add_name(changed, sizeof changed, next->prints[i].key);
    if (changed[0] != '\0') {
        set_err(why, whylen, "changed: %s; a reload only adds processes, the rest needs a restart", changed);
        return -1;
    }
    return 0;
}

size_t cfg_adopt_procs(struct cfg *cur, struct cfg *next, const struct cfg_proc **added, size_t max)
{
    struct cfg_retired *r = xcalloc(1, sizeof *r);
    r->procs = cur->procs;
    r->nprocs = cur->nprocs;
    r->next = cur->retired;
    cur->retired = r;
    cur->procs = next->procs;
    cur->nprocs = next->nprocs;
    next->procs = NULL;
    next->nprocs = 0;
    size_t n = 0;
    for (size_t i = 0; i < cur->nprocs; i++) {
        bool old = false;
        for (size_t j = 0; j < r->nprocs && !old; j++)
            old = strcmp(r->procs[j].id, cur->procs[i].id) == 0;
        if (!old && n < max)
            added[n++] = &cur->procs[i];
    }
    return n;
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
    return key != NULL ? cfg_shard_n(c, role, key, strlen(key)) : NULL;
}

const struct cfg_proc *cfg_shard_n(const struct cfg *c, enum cfg_role role, const char *key, size_t klen)
{
    const struct cfg_proc *best = NULL;
    uint64_t best_weight = 0;
    if (c == NULL || key == NULL)
        return NULL;
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

uint32_t cfg_push_events(const struct cfg *c, const char *domain)
{
    if (c == NULL || domain == NULL)
        return 0;
    bool has_pusher = false;
    for (size_t i = 0; i < c->nprocs && !has_pusher; i++)
        has_pusher = c->procs[i].role == CFG_ROLE_PUSHER;
    if (!has_pusher)
        return 0;
    uint32_t mask = 0;
    for (size_t i = 0; i < c->pusher.nbackends; i++) {
        const struct cfg_push_backend *b = &c->pusher.backends[i];
        bool wants = b->ndomains == 0 && cfg_is_local_domain(c, domain);
        for (size_t j = 0; j < b->ndomains && !wants; j++)
            wants = strcmp(b->domains[j], domain) == 0;
        if (wants)
            mask |= b->events;
    }
    return mask;
}

const struct cfg_component *cfg_find_component(const struct cfg *c, const char *domain)
{
    if (c == NULL || domain == NULL)
        return NULL;
    for (size_t i = 0; i < c->ncomponents; i++)
        if (strcmp(c->components[i].domain, domain) == 0)
            return &c->components[i];
    return NULL;
}

const struct cfg_gd_peer *cfg_find_gd_peer(const struct cfg *c, const char *dc)
{
    for (size_t i = 0; i < c->gd.npeers; i++)
        if (strcmp(c->gd.peers[i].dc, dc) == 0)
            return &c->gd.peers[i];
    return NULL;
}
