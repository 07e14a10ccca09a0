/* gd/table.h - the global routing table in Redis: who is online in which data center, seen from meerkat-gd's libev loop. */
#ifndef MK_GD_TABLE_H
#define MK_GD_TABLE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "metrics.h"

/* Key space, every key under params.prefix and every key with a TTL:
 *   <p>j:<full jid>   string "<version:20 digits> <dc>"             session of one resource
 *   <p>b:<bare jid>   hash resource -> "<version> <dc> <expiry unix s>"  all resources, every DC
 *   <p>d:<domain>     string "<version> <dc>"                       component / MUC domain owner
 *   <p>dc:<name>      hash endpoints, pubkey, seen                  a DC's gd, heartbeated
 *   <p>dcs            zset name -> expiry unix s                    the live DCs
 *   <p>arrive         pub/sub channel: the full JID of every login (invalidates caches)
 * Entries are ordered by (version, dc); every write is a Lua script on the primary:
 * a login writes only when nothing newer is there, a refresh or delete touches an
 * entry only while it still holds this DC's own (version, dc). Versions come from
 * gd_table_version_next (login time in microseconds, strictly increasing per process). */

#define GD_TABLE_DC_MAX 63   /* longest DC name: [A-Za-z0-9._-] */

struct gd_table_params {
    const char *dc;               /* this data center's name (required) */
    const char *primary_host;     /* numeric address or "localhost" (hiredis would resolve a name with a blocking getaddrinfo) */
    int primary_port;
    const char *replica_host;     /* the local read replica; NULL: read from the primary */
    int replica_port;
    const char *user;             /* ACL user; NULL: AUTH with the password only (or no AUTH) */
    const char *password;         /* NULL: no AUTH. Borrowed during gd_table_new only (copied); never logged */
    const char *prefix;           /* key prefix, e.g. "meerkat:" (required, non-empty) */
    int db;                       /* SELECT db (0 skips SELECT) */
    unsigned ttl_sec;             /* TTL of every entry (0: default 120) */
    double refresh_interval;      /* seconds to re-arm all owned entries once (default ttl_sec/3) */
    unsigned refresh_batch;       /* entries per refresh script call, one round trip (default 100: ~1 ms of Redis time) */
    double cache_ttl;             /* seconds a lookup's answer is cached (0: default 5; negative: no cache) */
    unsigned cache_max;           /* cached answers kept at most, clock eviction (default 10000) */
    double neg_ttl;               /* seconds a "not found" is cached (0: default 0.5; negative: none); an arrival clears it */
    double reconnect_min;         /* backoff after a lost connection: first wait (default 0.1 s) */
    double reconnect_max;         /* ... doubled up to this (default 5 s) */
    struct metric *latency;       /* histogram, label op (write, refresh, heartbeat, lookup, dcs_list,
                                   * dcs_get): each command's round trip to Redis; NULL = not measured */
};

enum gd_table_status {
    GD_TABLE_OK = 0,         /* written / found */
    GD_TABLE_NOT_FOUND,      /* lookup: no live entry */
    GD_TABLE_STALE,          /* write refused: a newer login (or another DC's entry) holds the key */
    GD_TABLE_UNAVAILABLE,    /* Redis unreachable or the connection dropped before the reply */
    GD_TABLE_ERROR,          /* Redis answered with an error or a reply of the wrong shape (logged) */
};

/* One location of a JID or domain. Strings are valid only during the callback. */
struct gd_table_loc {
    const char *dc;
    const char *resource;    /* bare-JID lookups: the resource; otherwise "" */
    uint64_t version;
};

/* One live data center, as its gd heartbeats it. Strings valid during the callback. */
struct gd_table_dc {
    const char *name;
    const char *endpoints;   /* as given to gd_table_set_self, e.g. "tcp://10.0.0.1:5555" */
    const char *pubkey;      /* CURVE public key (Z85) */
};

struct gd_table_stats {
    uint64_t lookups, cache_hits, neg_hits, redis_reads;
    uint64_t writes, stale_refused, lost;          /* lost: owned entries taken over by a newer login */
    uint64_t refresh_rounds, refresh_entries, rewritten;   /* rewritten: missing on refresh, written again */
    uint64_t reconnects, setup_failures, reply_errors;   /* setup: AUTH / SELECT / SCRIPT LOAD refused */
    uint64_t cache_invalidations;
};

struct gd_table;

typedef void gd_table_write_cb(void *arg, enum gd_table_status st);
typedef void gd_table_lookup_cb(void *arg, enum gd_table_status st, const struct gd_table_loc *locs, size_t n);
typedef void gd_table_dcs_cb(void *arg, enum gd_table_status st, const struct gd_table_dc *dcs, size_t n);
/* An owned entry (full JID or domain, key without prefix) was found holding another
 * login at refresh: this DC no longer owns it (the user logged in elsewhere later). */
typedef void gd_table_lost_cb(void *arg, const char *name);

/* Validates p, copies what it needs, and starts connecting (primary, replica and a
 * subscriber on the replica) on loop. Borrows loop and p. Returns the table, or NULL
 * with one sentence in err (bad parameter). Unreachable Redis is not an error: it
 * reconnects with backoff. */
struct gd_table *gd_table_new(struct ev_loop *loop, const struct gd_table_params *p, char *err, size_t errlen);
/* Closes the connections and frees everything; callbacks still pending are not called.
 * Not from inside one of the table's own callbacks (hiredis is running them). NULL-safe;
 * sets *tp to NULL. */
void gd_table_free(struct gd_table **tp);

/* True while the primary connection is authenticated and has its scripts (writes go
 * through). gd_table_readable: lookups can go to Redis (replica, or primary). */
bool gd_table_writable(const struct gd_table *t);
bool gd_table_readable(const struct gd_table *t);
/* True when the primary, the replica and the arrival subscriber are all up (readiness). */
bool gd_table_connected(const struct gd_table *t);

/* A new login version: wall clock in microseconds, strictly increasing in this process. */
uint64_t gd_table_version_next(struct gd_table *t);

/* Records full_jid (normalized, "user@domain/resource") as online here with version,
 * owned by this table (refreshed until gd_table_session_close), and writes it:
 * the full key only if nothing newer is there, the bare hash's field for the resource,
 * and a publish on the arrival channel. Borrows full_jid. cb(arg, OK | STALE |
 * UNAVAILABLE | ERROR) later (cb may be NULL). Returns 0, or -1 with errno EINVAL (not
 * a full JID) or ENOTCONN (primary down: cb is not called; the entry stays owned and
 * is written by the refresh after the reconnect). On STALE the entry is no longer owned. */
int gd_table_session_open(struct gd_table *t, const char *full_jid, uint64_t version,
                          gd_table_write_cb *cb, void *arg);
/* Forgets full_jid and deletes its full key and its bare field, each only if it still
 * holds this login (another DC's newer login is left alone: cb gets STALE). Returns 0,
 * or -1 with errno ENOENT (not owned) or ENOTCONN (forgotten; the keys expire). */
int gd_table_session_close(struct gd_table *t, const char *full_jid, gd_table_write_cb *cb, void *arg);

/* Claims / releases a component or MUC domain for this DC, as sessions (versioned, owned,
 * refreshed). Same returns as the session calls. */
int gd_table_domain_claim(struct gd_table *t, const char *domain, gd_table_write_cb *cb, void *arg);
int gd_table_domain_release(struct gd_table *t, const char *domain, gd_table_write_cb *cb, void *arg);

/* Where is jid? A full JID gives at most one location; a bare JID every live resource
 * in every DC. Looks in the cache, then the negative cache, then the replica (the
 * primary while the replica is down). Borrows jid. cb(arg, OK | NOT_FOUND | ERROR |
 * UNAVAILABLE, locs, n); on a cache hit cb runs before this returns. Returns 0, or -1
 * with errno ENOTCONN (Redis unreachable and nothing cached: cb is not called; the
 * caller bounces or queues) or EINVAL. */
int gd_table_lookup_jid(struct gd_table *t, const char *jid, gd_table_lookup_cb *cb, void *arg);
/* Which DC owns domain (component / MUC)? Same contract as gd_table_lookup_jid. */
int gd_table_lookup_domain(struct gd_table *t, const char *domain, gd_table_lookup_cb *cb, void *arg);
/* Puts jid -> dc in the cache only (not Redis): the sender's origin learned from a
 * message forwarded by dc, so the reply goes back before replication catches up.
 * Borrows both. */
void gd_table_cache_origin(struct gd_table *t, const char *full_jid, const char *dc, uint64_t version);
/* Drops jid's cached answers (full and bare): before re-resolving a bounced message. */
void gd_table_cache_forget(struct gd_table *t, const char *jid);

/* This DC's link endpoints and CURVE public key, heartbeated with the refresh (a DC whose
 * heartbeats stop drops out when its keys expire). Copies both; writes at once if connected. */
void gd_table_set_self(struct gd_table *t, const char *endpoints, const char *pubkey);
/* Lists the live DCs (this one included) from the replica. Returns 0 or -1 ENOTCONN. */
int gd_table_dcs(struct gd_table *t, gd_table_dcs_cb *cb, void *arg);

/* Called for each owned entry lost to a newer login elsewhere (see gd_table_lost_cb). */
void gd_table_set_lost_cb(struct gd_table *t, gd_table_lost_cb *cb, void *arg);
/* Starts a refresh pass now (after a reconnect it starts by itself). */
void gd_table_refresh_now(struct gd_table *t);
/* Owned entries (sessions and domains), and the passes of refresh completed. */
size_t gd_table_owned(const struct gd_table *t);
uint64_t gd_table_refresh_passes(const struct gd_table *t);
const struct gd_table_stats *gd_table_stats(const struct gd_table *t);

/* Reply parsers of the scripts' and reads' results (pure; fuzzed by tests/fuzz/fuzz_gd_reply.c).
 * Each returns 0 on a well-formed reply, or -1 with a sentence in err (wrong type,
 * bad value): never crashes on any reply. */
/* "<version> <dc>" string or nil: *found false on nil. dc gets at most GD_TABLE_DC_MAX+1 bytes. */
int gd_table_parse_entry(const redisReply *r, bool *found, uint64_t *version, char dc[GD_TABLE_DC_MAX + 1],
                         char *err, size_t errlen);
/* HGETALL of a bare hash: calls each(arg, resource, dc, version) for every field whose
 * expiry is after now_sec (a malformed field makes the whole reply an error; nothing
 * is called then). Returns the number of live fields, or -1. */
int gd_table_parse_bare(const redisReply *r, int64_t now_sec,
                        void (*each)(void *arg, const char *resource, const char *dc, uint64_t version),
                        void *arg, char *err, size_t errlen);
/* A write script's result: {1} written, {0, holder} refused. Returns 1, 0, or -1. */
int gd_table_parse_write(const redisReply *r, char *err, size_t errlen);
/* The refresh script's result: an array of n integers 0 (lost), 1 (re-armed), 2 (rewritten),
 * stored in out[n]. Returns 0 or -1. */
int gd_table_parse_refresh(const redisReply *r, size_t n, unsigned char *out, char *err, size_t errlen);
#endif
