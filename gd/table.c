/* gd/table.c - the global routing table in Redis: versioned compare-and-set scripts, pipelined refresh, cached lookups on the read replica. */
#include "table.h"

#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>
#include <openssl/evp.h>

#include "log.h"
#include "util.h"

#define JID_MAX      3071     /* node@domain/resource, 1023 bytes each */
#define VALUE_MAX    (20 + 1 + GD_TABLE_DC_MAX + 1)

/* ---- scripts --------------------------------------------------------------------------
 * Values are "<version, 20 digits> <dc>", so comparing two values as strings orders
 * them by (version, dc). A bare hash field is "<value> <expiry unix s>". */

/* KEYS[1] entry key, KEYS[2] bare hash (= KEYS[1] when none); ARGV: value, ttl,
 * resource ('' none), channel, payload. A newer value in the key or in the resource's
 * live bare field (expiry not passed) refuses the write. */
static const char script_login[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur and cur > ARGV[1] then return {0, cur} end\n"
    "local ttl = tonumber(ARGV[2])\n"
    "local now = tonumber(redis.call('TIME')[1])\n"
    "if ARGV[3] ~= '' then\n"
    "  local f = redis.call('HGET', KEYS[2], ARGV[3])\n"
    "  local fv, fe = string.match(f or '', '^(%d+ %S+) (%d+)$')\n"
    "  if fv and tonumber(fe) > now and fv > ARGV[1] then return {0, fv} end\n"
    "end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)\n"
    "if ARGV[3] ~= '' then\n"
    "  redis.call('HSET', KEYS[2], ARGV[3], ARGV[1] .. ' ' .. (now + ttl))\n"
    "  local all = redis.call('HGETALL', KEYS[2])\n"
    "  for i = 1, #all, 2 do\n"
    "    local e = tonumber(string.match(all[i + 1], ' (%d+)$'))\n"
    "    if e == nil or e <= now then redis.call('HDEL', KEYS[2], all[i]) end\n"
    "  end\n"
    "  if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIRE', KEYS[2], ttl) end\n"
    "end\n"
    "redis.call('PUBLISH', ARGV[4], ARGV[5])\n"
    "return {1}\n";

/* KEYS: (entry, bare) pairs; ARGV[1] ttl, then (value, resource) pairs. Per entry:
 * 1 = still ours, TTL re-armed; 2 = missing (expired, Redis restarted), written again;
 * 0 = another login holds it, left alone. */
static const char script_refresh[] =
    "local ttl = tonumber(ARGV[1])\n"
    "local now = tonumber(redis.call('TIME')[1])\n"
    "local out = {}\n"
    "for i = 1, #KEYS / 2 do\n"
    "  local k, b, v, res = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i], ARGV[2 * i + 1]\n"
    "  local cur = redis.call('GET', k)\n"
    "  local st = 0\n"
    "  if cur == v then st = 1 elseif not cur then st = 2 end\n"
    "  if st == 2 and res ~= '' then\n"
    "    local f = redis.call('HGET', b, res)\n"
    "    local fv, fe = string.match(f or '', '^(%d+ %S+) (%d+)$')\n"
    "    if fv and tonumber(fe) > now and fv > v then st = 0 end\n"
    "  end\n"
    "  if st == 1 then redis.call('EXPIRE', k, ttl) elseif st == 2 then redis.call('SET', k, v, 'EX', ttl) end\n"
    "  if st ~= 0 and res ~= '' then\n"
    "    redis.call('HSET', b, res, v .. ' ' .. (now + ttl))\n"
    "    if redis.call('TTL', b) < ttl then redis.call('EXPIRE', b, ttl) end\n"
    "  end\n"
    "  out[i] = st\n"
    "end\n"
    "return out\n";

/* KEYS[1] entry, KEYS[2] bare; ARGV value, resource. Deletes only this login's value. */
static const char script_delete[] =
    "local st = 0\n"
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]); st = 1 end\n"
    "if ARGV[2] ~= '' then\n"
    "  local f = redis.call('HGET', KEYS[2], ARGV[2])\n"
    "  if f and string.match(f, '^(%d+ %S+)') == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]); st = 1 end\n"
    "end\n"
    "if st == 1 then return {1} end\n"
    "return {0, redis.call('GET', KEYS[1])}\n";

/* KEYS[1] dc hash, KEYS[2] dcs zset; ARGV name, ttl, endpoints, pubkey. */
static const char script_heartbeat[] =
    "local ttl = tonumber(ARGV[2])\n"
    "local now = tonumber(redis.call('TIME')[1])\n"
    "redis.call('HSET', KEYS[1], 'endpoints', ARGV[3], 'pubkey', ARGV[4], 'seen', now)\n"
    "redis.call('EXPIRE', KEYS[1], ttl)\n"
    "redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)\n"
    "if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIRE', KEYS[2], ttl) end\n"
    "return {1}\n";

enum script_id {
    SCRIPT_LOGIN = 0,
    SCRIPT_REFRESH,
    SCRIPT_DELETE,
    SCRIPT_HEARTBEAT,
    SCRIPT_COUNT,
};

static const char *const script_text[SCRIPT_COUNT] = {
    script_login, script_refresh, script_delete, script_heartbeat,
};
static const char *const script_name[SCRIPT_COUNT] = { "login", "refresh", "delete", "heartbeat" };

/* ---- connections ---------------------------------------------------------------------- */

enum conn_role {
    CONN_PRIMARY = 0,
    CONN_REPLICA,
    CONN_SUB,        /* SUBSCRIBEd to the arrival channel, on the replica */
    CONN_COUNT,
};
static const char *const conn_role_name[CONN_COUNT] = { "primary", "replica", "subscriber" };

enum conn_state {
    CONN_DOWN = 0,
    CONN_SETUP,      /* connected; AUTH / SELECT / SCRIPT LOAD / SUBSCRIBE pending */
    CONN_READY,
};

struct conn {
    struct gd_table *t;
    enum conn_role role;
    enum conn_state state;
    redisAsyncContext *ac;
    unsigned setup_pending;
    double backoff;
    ev_timer retry;
    char host[64];
    int port;
};

/* ---- cache: answers by key ("j:<full>", "b:<bare>", "d:<domain>"), clock eviction ---- */

struct centry {
    struct centry *next;      /* hash chain */
    uint64_t h;
    int64_t expires_us;       /* monotonic */
    unsigned slot;            /* index in the clock ring */
    bool ref;                 /* used since the hand last passed */
    bool neg;                 /* a cached "not found" */
    size_t nlocs;
    struct gd_table_loc *locs;   /* strings point into this allocation */
    char key[];
};

/* ---- owned entries: what this gd refreshes --------------------------------------------- */

struct owned {
    struct owned *next;       /* hash chain */
    uint64_t h;
    uint64_t version;
    size_t idx;               /* in t->owned_arr */
    bool domain;
    char name[];
};

enum req_kind {
    REQ_WRITE = 0,            /* login / claim / delete: a write script */
    REQ_REFRESH,
    REQ_HEARTBEAT,
    REQ_LOOKUP,
    REQ_DCS_LIST,
    REQ_DCS_GET,
};

struct dcs_state {
    size_t n, got;
    char **names;
    char **endpoints;
    char **pubkeys;
    gd_table_dcs_cb *cb;
    void *arg;
    bool failed;
};

struct req {
    struct gd_table *t;
    enum req_kind kind;
    enum script_id script;
    bool delete;              /* REQ_WRITE: a delete (else a login/claim) */
    gd_table_write_cb *wcb;
    gd_table_lookup_cb *lcb;
    void *arg;
    char *name;               /* jid / domain (without prefix) */
    char ckey_kind;           /* REQ_LOOKUP: 'j', 'b' or 'd' */
    uint64_t version;
    uint64_t inval_epoch;     /* REQ_LOOKUP: arrivals seen when it was sent */
    /* the command, kept for the EVAL fallback on NOSCRIPT; argv[own_from..] are owned */
    int argc;
    int own_from;
    char **argv;
    size_t *argvlen;
    /* REQ_REFRESH: the entries sent, by name and version */
    size_t nbatch;
    char **bnames;
    uint64_t *bversions;
    struct dcs_state *dcs;    /* REQ_DCS_*; shared by the get requests */
    size_t dcs_idx;
    int64_t sent_us;          /* monotonic, when handed to hiredis: the round trip for params.latency */
};

struct gd_table {
    struct ev_loop *loop;
    bool closing;
    char dc[GD_TABLE_DC_MAX + 1];
    char *prefix;
    size_t prefix_len;
    char *user, *password;
    int db;
    unsigned ttl;
    double refresh_interval;
    unsigned refresh_batch;
    double cache_ttl, neg_ttl;
    unsigned cache_max;
    double reconnect_min, reconnect_max;
    char ttl_str[16];
    char *channel;
    char sha[SCRIPT_COUNT][41];

    struct conn conns[CONN_COUNT];

    /* cache */
    struct centry **cbuckets;
    size_t cmask;
    struct centry **ring;     /* cache_max slots; NULL = free */
    unsigned *free_slots;
    size_t nfree;
    size_t hand;
    size_t ccount;
    uint64_t inval_epoch;

    /* owned */
    struct owned **obuckets;
    size_t omask;
    struct owned **owned_arr;
    size_t owned_n, owned_cap;

    /* refresh */
    ev_timer refresh_timer;
    bool refresh_inflight;
    bool refresh_again;       /* refresh_now while a batch was in flight */
    size_t cursor;            /* owned_arr[0, cursor) has been sent in this pass */
    double pass_t0;
    size_t pass_batches, batch_i;
    uint64_t passes;

    char *self_endpoints, *self_pubkey;
    uint64_t last_version;
    gd_table_lost_cb *lost_cb;
    void *lost_arg;
    struct gd_table_stats st;
    struct metric *latency;   /* params.latency, or NULL */
};

static void conn_start(struct conn *c);
static void refresh_start_pass(struct gd_table *t);
static void refresh_schedule(struct gd_table *t);
static void heartbeat_send(struct gd_table *t);

/* ---- small helpers -------------------------------------------------------------------- */

static bool dc_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > GD_TABLE_DC_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

static void fmt_value(char out[VALUE_MAX], uint64_t version, const char *dc)
{
    snprintf(out, VALUE_MAX, "%020" PRIu64 " %s", version, dc);
}

static char *key_of(const struct gd_table *t, const char *kind, const char *name, size_t namelen)
{
    size_t kl = strlen(kind);
    char *k = xmalloc(t->prefix_len + kl + namelen + 1);
    memcpy(k, t->prefix, t->prefix_len);
    memcpy(k + t->prefix_len, kind, kl);
    memcpy(k + t->prefix_len + kl, name, namelen);
    k[t->prefix_len + kl + namelen] = '\0';
    return k;
}

static uint64_t hash_str(const char *s, size_t n)
{
    return mk_hash64(s, n, 0x6764746162ull);
}

static void sha1_hex(const char *text, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(text, strlen(text), md, &mdlen, EVP_sha1(), NULL);
    for (unsigned i = 0; i < mdlen && i < 20; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    out[40] = '\0';
}

static void reply_error(const char *what, const char *detail)
{
    char sample[256];
    mk_sanitize(sample, sizeof sample, detail, strnlen(detail, 60));
    log_warn("gd_table_bad_reply", "what=%s err=\"%s\"", what, sample);
}

/* ---- reply parsers ---------------------------------------------------------------------- */

static int reply_is_error(const redisReply *r, char *err, size_t errlen)
{
    if (r == NULL) {
        mk_errf(err, errlen, "no reply");
        return 1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        char sample[200];
        mk_sanitize(sample, sizeof sample, r->str ? r->str : "", r->str ? strnlen(r->str, 48) : 0);
        mk_errf(err, errlen, "redis error: %s", sample);
        return 1;
    }
    return 0;
}

/* "<digits> <dc>" of exactly len bytes. */
static int parse_value(const char *s, size_t len, uint64_t *version, char dc[GD_TABLE_DC_MAX + 1])
{
    size_t i = 0;
    uint64_t v = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        i++;
    }
    if (i == 0 || i > 20 || i >= len || s[i] != ' ')
        return -1;
    i++;
    size_t dl = len - i;
    if (dl == 0 || dl > GD_TABLE_DC_MAX)
        return -1;
    char tmp[GD_TABLE_DC_MAX + 1];
    memcpy(tmp, s + i, dl);
    tmp[dl] = '\0';
    if (memchr(s + i, '\0', dl) != NULL || !dc_name_ok(tmp))
        return -1;
    memcpy(dc, tmp, dl + 1);
    *version = v;
    return 0;
}

int gd_table_parse_entry(const redisReply *r, bool *found, uint64_t *version, char dc[GD_TABLE_DC_MAX + 1],
                         char *err, size_t errlen)
{
    *found = false;
    if (reply_is_error(r, err, errlen))
        return -1;
    if (r->type == REDIS_REPLY_NIL)
        return 0;
    if (r->type != REDIS_REPLY_STRING || r->str == NULL) {
        mk_errf(err, errlen, "entry: expected a string or nil, got type %d", r->type);
        return -1;
    }
    if (parse_value(r->str, r->len, version, dc) == -1) {
        mk_errf(err, errlen, "entry: not \"<version> <dc>\" (%zu bytes)", r->len);
        return -1;
    }
    *found = true;
    return 0;
}

/* A bare field value "<version> <dc> <expiry>": splits at the last space. */
static int parse_field(const redisReply *v, uint64_t *version, char dc[GD_TABLE_DC_MAX + 1], int64_t *expiry)
{
    if (v == NULL || v->type != REDIS_REPLY_STRING || v->str == NULL || v->len == 0)
        return -1;
    size_t sp = v->len;
    while (sp > 0 && v->str[sp - 1] != ' ')
        sp--;
    if (sp < 2)
        return -1;
    size_t el = v->len - sp;
    if (el == 0 || el > 18)
        return -1;
    int64_t e = 0;
    for (size_t i = sp; i < v->len; i++) {
        if (v->str[i] < '0' || v->str[i] > '9')
            return -1;
        e = e * 10 + (v->str[i] - '0');
    }
    if (parse_value(v->str, sp - 1, version, dc) == -1)
        return -1;
    *expiry = e;
    return 0;
}

int gd_table_parse_bare(const redisReply *r, int64_t now_sec,
                        void (*each)(void *arg, const char *resource, const char *dc, uint64_t version),
                        void *arg, char *err, size_t errlen)
{
    if (reply_is_error(r, err, errlen))
        return -1;
    if (r->type != REDIS_REPLY_ARRAY || (r->elements % 2) != 0 || (r->elements > 0 && r->element == NULL)) {
        mk_errf(err, errlen, "bare: expected an array of field/value pairs, got type %d", r->type);
        return -1;
    }
    /* Validate everything first, so a bad reply delivers nothing. */
    int live = 0;
    for (size_t i = 0; i < r->elements; i += 2) {
        const redisReply *f = r->element[i];
        uint64_t ver;
        char dc[GD_TABLE_DC_MAX + 1];
        int64_t exp;
        if (f == NULL || f->type != REDIS_REPLY_STRING || f->str == NULL || f->len == 0 ||
            f->len > 1023 || memchr(f->str, '\0', f->len) != NULL) {
            mk_errf(err, errlen, "bare: field %zu is not a resource", i / 2);
            return -1;
        }
        if (parse_field(r->element[i + 1], &ver, dc, &exp) == -1) {
            mk_errf(err, errlen, "bare: value %zu is not \"<version> <dc> <expiry>\"", i / 2);
            return -1;
        }
        if (exp > now_sec)
            live++;
    }
    if (each != NULL) {
        for (size_t i = 0; i < r->elements; i += 2) {
            uint64_t ver;
            char dc[GD_TABLE_DC_MAX + 1];
            int64_t exp;
            parse_field(r->element[i + 1], &ver, dc, &exp);
            if (exp <= now_sec)
                continue;
            char res[1024];
            memcpy(res, r->element[i]->str, r->element[i]->len);
            res[r->element[i]->len] = '\0';
            each(arg, res, dc, ver);
        }
    }
    return live;
}

int gd_table_parse_write(const redisReply *r, char *err, size_t errlen)
{
    if (reply_is_error(r, err, errlen))
        return -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element == NULL || r->element[0] == NULL ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        mk_errf(err, errlen, "write: expected {status, ...}, got type %d", r->type);
        return -1;
    }
    long long s = r->element[0]->integer;
    if (s == 1 && r->elements == 1)
        return 1;
    if (s == 0 && r->elements <= 2)
        return 0;
    mk_errf(err, errlen, "write: unexpected status %lld with %zu elements", s, r->elements);
    return -1;
}

int gd_table_parse_refresh(const redisReply *r, size_t n, unsigned char *out, char *err, size_t errlen)
{
    if (reply_is_error(r, err, errlen))
        return -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != n || (n > 0 && r->element == NULL)) {
        mk_errf(err, errlen, "refresh: expected an array of %zu statuses, got type %d with %zu",
                n, r->type, r->type == REDIS_REPLY_ARRAY ? r->elements : 0);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = r->element[i];
        if (e == NULL || e->type != REDIS_REPLY_INTEGER || e->integer < 0 || e->integer > 2) {
            mk_errf(err, errlen, "refresh: status %zu is not 0, 1 or 2", i);
            return -1;
        }
        out[i] = (unsigned char)e->integer;
    }
    return 0;
}

/* ---- cache ------------------------------------------------------------------------------ */

static struct centry **cache_find(struct gd_table *t, const char *key, size_t klen, uint64_t h)
{
    struct centry **pp = &t->cbuckets[h & t->cmask];
    for (; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->h == h && strncmp((*pp)->key, key, klen) == 0 && (*pp)->key[klen] == '\0')
            return pp;
    return pp;
}

static void cache_unlink(struct gd_table *t, struct centry **pp)
{
    struct centry *e = *pp;
    *pp = e->next;
    t->ring[e->slot] = NULL;
    t->free_slots[t->nfree++] = e->slot;
    t->ccount--;
    free(e);
}

static void cache_remove(struct gd_table *t, const char *key)
{
    if (t->cache_max == 0)
        return;
    size_t kl = strlen(key);
    uint64_t h = hash_str(key, kl);
    struct centry **pp = cache_find(t, key, kl, h);
    if (*pp != NULL) {
        cache_unlink(t, pp);
        t->st.cache_invalidations++;
    }
}

/* Frees a slot when the ring is full: the first entry expired or not used since the hand passed. */
static void cache_evict_one(struct gd_table *t)
{
    int64_t now = mk_mono_us();
    for (;;) {
        struct centry *e = t->ring[t->hand];
        size_t at = t->hand;
        t->hand = (t->hand + 1) % t->cache_max;
        if (e == NULL)
            continue;
        if (e->ref && e->expires_us > now) {
            e->ref = false;
            continue;
        }
        struct centry **pp = cache_find(t, e->key, strlen(e->key), e->h);
        (void)at;
        cache_unlink(t, pp);
        return;
    }
}

static void cache_put(struct gd_table *t, const char *key, bool neg, const struct gd_table_loc *locs, size_t n)
{
    double ttl = neg ? t->neg_ttl : t->cache_ttl;
    if (t->cache_max == 0 || ttl <= 0)
        return;
    size_t kl = strlen(key);
    uint64_t h = hash_str(key, kl);
    struct centry **pp = cache_find(t, key, kl, h);
    if (*pp != NULL)
        cache_unlink(t, pp);
    if (t->nfree == 0)
        cache_evict_one(t);
    /* One allocation: the entry, its key, then the locations (aligned) and their strings. */
    size_t off = offsetof(struct centry, key) + kl + 1;
    size_t align = _Alignof(struct gd_table_loc);
    off = (off + align - 1) & ~(align - 1);
    size_t sz = off + n * sizeof(struct gd_table_loc);
    for (size_t i = 0; i < n; i++)
        sz += strlen(locs[i].dc) + 1 + strlen(locs[i].resource) + 1;
    struct centry *e = xmalloc(sz);
    memcpy(e->key, key, kl + 1);
    e->locs = (struct gd_table_loc *)((char *)e + off);
    char *at = (char *)(e->locs + n);
    for (size_t i = 0; i < n; i++) {
        e->locs[i].version = locs[i].version;
        e->locs[i].dc = mk_put_str(&at, locs[i].dc, strlen(locs[i].dc));
        e->locs[i].resource = mk_put_str(&at, locs[i].resource, strlen(locs[i].resource));
    }
    e->nlocs = n;
    e->h = h;
    e->neg = neg;
    e->ref = false;
    e->expires_us = mk_mono_us() + (int64_t)(ttl * 1e6);
    e->slot = t->free_slots[--t->nfree];
    t->ring[e->slot] = e;
    pp = cache_find(t, key, kl, h);   /* the bucket's tail */
    e->next = NULL;
    *pp = e;
    t->ccount++;
}

/* Returns the live entry for key (marked used), or NULL; drops an expired one. */
static struct centry *cache_get(struct gd_table *t, const char *key)
{
    if (t->cache_max == 0)
        return NULL;
    size_t kl = strlen(key);
    uint64_t h = hash_str(key, kl);
    struct centry **pp = cache_find(t, key, kl, h);
    struct centry *e = *pp;
    if (e == NULL)
        return NULL;
    if (e->expires_us <= mk_mono_us()) {
        cache_unlink(t, pp);
        return NULL;
    }
    e->ref = true;
    return e;
}

/* An arrival or a forget: the full JID's and the bare JID's answers go. */
static void cache_forget_jid(struct gd_table *t, const char *jid, size_t len)
{
    if (len > JID_MAX)
        return;
    char key[JID_MAX + 3];
    const char *slash = memchr(jid, '/', len);
    key[0] = 'j';
    key[1] = ':';
    memcpy(key + 2, jid, len);
    key[2 + len] = '\0';
    if (slash != NULL)
        cache_remove(t, key);
    key[0] = 'b';
    key[2 + (slash ? (size_t)(slash - jid) : len)] = '\0';
    cache_remove(t, key);
}

/* ---- owned ------------------------------------------------------------------------------ */

static struct owned **owned_find(struct gd_table *t, const char *name, uint64_t h)
{
    struct owned **pp = &t->obuckets[h & t->omask];
    for (; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->h == h && strcmp((*pp)->name, name) == 0)
            return pp;
    return pp;
}

static void owned_grow(struct gd_table *t)
{
    size_t nb = (t->omask + 1) * 2;
    struct owned **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < t->owned_n; i++) {
        struct owned *o = t->owned_arr[i];
        o->next = b[o->h & (nb - 1)];
        b[o->h & (nb - 1)] = o;
    }
    free(t->obuckets);
    t->obuckets = b;
    t->omask = nb - 1;
}

static struct owned *owned_get(struct gd_table *t, const char *name)
{
    return *owned_find(t, name, hash_str(name, strlen(name)));
}

static void owned_set(struct gd_table *t, const char *name, uint64_t version, bool domain)
{
    uint64_t h = hash_str(name, strlen(name));
    struct owned **pp = owned_find(t, name, h);
    if (*pp != NULL) {
        (*pp)->version = version;
        return;
    }
    if (t->owned_n == t->owned_cap) {
        t->owned_cap = t->owned_cap ? t->owned_cap * 2 : 64;
        t->owned_arr = xrealloc(t->owned_arr, t->owned_cap * sizeof *t->owned_arr);
    }
    size_t nl = strlen(name);
    struct owned *o = xmalloc(sizeof *o + nl + 1);
    memcpy(o->name, name, nl + 1);
    o->h = h;
    o->version = version;
    o->domain = domain;
    o->idx = t->owned_n;
    o->next = NULL;
    *pp = o;
    t->owned_arr[t->owned_n++] = o;
    if (t->owned_n > (t->omask + 1))
        owned_grow(t);
}

static void owned_remove(struct gd_table *t, const char *name)
{
    uint64_t h = hash_str(name, strlen(name));
    struct owned **pp = owned_find(t, name, h);
    struct owned *o = *pp;
    if (o == NULL)
        return;
    *pp = o->next;
    /* [0, cursor) is what the refresh pass has already sent: keep it so, or the entry
     * moved into the hole would be skipped until the next pass. */
    size_t hole = o->idx;
    if (hole < t->cursor) {
        size_t j = --t->cursor;
        if (j != hole) {
            t->owned_arr[hole] = t->owned_arr[j];
            t->owned_arr[hole]->idx = hole;
        }
        hole = j;
    }
    size_t last = --t->owned_n;
    if (hole != last) {
        t->owned_arr[hole] = t->owned_arr[last];
        t->owned_arr[hole]->idx = hole;
    }
    free(o);
}

/* ---- requests --------------------------------------------------------------------------- */

static struct req *req_new(struct gd_table *t, enum req_kind kind)
{
    struct req *r = xcalloc(1, sizeof *r);
    r->t = t;
    r->kind = kind;
    return r;
}

static void req_free(struct req *r)
{
    if (r == NULL)
        return;
    for (int i = r->own_from; i < r->argc; i++)
        free(r->argv[i]);
    free(r->argv);
    free(r->argvlen);
    for (size_t i = 0; i < r->nbatch; i++)
        free(r->bnames[i]);
    free(r->bnames);
    free(r->bversions);
    free(r->name);
    free(r);
}

static void req_arg(struct req *r, int i, char *s)
{
    r->argv[i] = s;
    r->argvlen[i] = strlen(s);
}

/* Script command: EVALSHA sha nkeys keys... args...; takes ownership of the strings. */
static void req_script(struct req *r, enum script_id s, int nkeys, int nargs)
{
    r->script = s;
    r->argc = 3 + nkeys + nargs;
    r->argv = xcalloc((size_t)r->argc, sizeof *r->argv);
    r->argvlen = xcalloc((size_t)r->argc, sizeof *r->argvlen);
    r->own_from = 2;
    r->argv[0] = (char *)"EVALSHA";
    r->argv[1] = r->t->sha[s];
    req_arg(r, 2, xasprintf("%d", nkeys));
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* The op label of params.latency, by req_kind. */
static const char *const req_op[] = { "write", "refresh", "heartbeat", "lookup", "dcs_list", "dcs_get" };

static int req_send(struct req *r, struct conn *c)
{
    for (int i = 0; i < r->own_from; i++)
        r->argvlen[i] = strlen(r->argv[i]);
    if (r->t->latency != NULL)
        r->sent_us = mk_mono_us();
    if (c->state != CONN_READY || c->ac == NULL ||
        redisAsyncCommandArgv(c->ac, on_reply, r, r->argc, (const char **)r->argv, r->argvlen) != REDIS_OK) {
        errno = ENOTCONN;
        return -1;
    }
    return 0;
}

static struct conn *read_conn(struct gd_table *t)
{
    if (t->conns[CONN_REPLICA].state == CONN_READY)
        return &t->conns[CONN_REPLICA];
    if (t->conns[CONN_PRIMARY].state == CONN_READY)
        return &t->conns[CONN_PRIMARY];
    return NULL;
}

/* ---- write results ---------------------------------------------------------------------- */

static void lost_entry(struct gd_table *t, const char *name, uint64_t version)
{
    struct owned *o = owned_get(t, name);
    if (o == NULL || o->version != version)
        return;   /* closed or re-opened meanwhile */
    owned_remove(t, name);
    t->st.lost++;
    log_info("gd_table_lost", "name_len=%zu reason=newer_login_elsewhere", strlen(name));
    if (t->lost_cb != NULL)
        t->lost_cb(t->lost_arg, name);
}

static void done_write(struct req *r, const redisReply *rep)
{
    struct gd_table *t = r->t;
    enum gd_table_status st;
    char err[160];
    if (rep == NULL) {
        st = GD_TABLE_UNAVAILABLE;
    } else {
        int w = gd_table_parse_write(rep, err, sizeof err);
        if (w == -1) {
            t->st.reply_errors++;
            reply_error(script_name[r->script], err);
            st = GD_TABLE_ERROR;
        } else if (w == 1) {
            st = GD_TABLE_OK;
        } else {
            st = GD_TABLE_STALE;
            t->st.stale_refused++;
            if (!r->delete) {
                struct owned *o = owned_get(t, r->name);
                if (o != NULL && o->version == r->version)
                    owned_remove(t, r->name);
            }
        }
    }
    if (r->wcb != NULL)
        r->wcb(r->arg, st);
}

static void done_refresh(struct req *r, const redisReply *rep)
{
    struct gd_table *t = r->t;
    t->refresh_inflight = false;
    if (rep == NULL)
        return;   /* disconnected: the pass restarts after the reconnect */
    unsigned char stack[512];
    unsigned char *out = r->nbatch <= sizeof stack ? stack : xmalloc(r->nbatch);
    char err[160];
    if (gd_table_parse_refresh(rep, r->nbatch, out, err, sizeof err) == -1) {
        t->st.reply_errors++;
        reply_error("refresh", err);
    } else {
        t->st.refresh_rounds++;
        t->st.refresh_entries += r->nbatch;
        for (size_t i = 0; i < r->nbatch; i++) {
            if (out[i] == 0)
                lost_entry(t, r->bnames[i], r->bversions[i]);
            else if (out[i] == 2)
                t->st.rewritten++;
        }
    }
    if (out != stack)
        free(out);
    t->batch_i++;
    refresh_schedule(t);
}

struct loc_acc {
    struct gd_table_loc *locs;
    size_t n, cap;
    struct buf_s { char *p; size_t len, cap; } text;
    size_t *dc_off, *res_off;
};

static void acc_each(void *arg, const char *resource, const char *dc, uint64_t version)
{
    struct loc_acc *a = arg;
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 8;
        a->locs = xrealloc(a->locs, a->cap * sizeof *a->locs);
        a->dc_off = xrealloc(a->dc_off, a->cap * sizeof *a->dc_off);
        a->res_off = xrealloc(a->res_off, a->cap * sizeof *a->res_off);
    }
    size_t dl = strlen(dc) + 1, rl = strlen(resource) + 1;
    if (a->text.len + dl + rl > a->text.cap) {
        a->text.cap = (a->text.len + dl + rl) * 2;
        a->text.p = xrealloc(a->text.p, a->text.cap);
    }
    a->dc_off[a->n] = a->text.len;
    memcpy(a->text.p + a->text.len, dc, dl);
    a->text.len += dl;
    a->res_off[a->n] = a->text.len;
    memcpy(a->text.p + a->text.len, resource, rl);
    a->text.len += rl;
    a->locs[a->n].version = version;
    a->n++;
}

static void done_lookup(struct req *r, const redisReply *rep)
{
    struct gd_table *t = r->t;
    char err[160];
    char ckey[JID_MAX + 3];
    snprintf(ckey, sizeof ckey, "%c:%s", r->ckey_kind, r->name);
    if (rep == NULL) {
        r->lcb(r->arg, GD_TABLE_UNAVAILABLE, NULL, 0);
        return;
    }
    bool cacheable_neg = r->inval_epoch == t->inval_epoch;
    if (r->ckey_kind == 'b') {
        struct loc_acc a = { 0 };
        int n = gd_table_parse_bare(rep, mk_now_us() / 1000000, acc_each, &a, err, sizeof err);
        if (n == -1) {
            t->st.reply_errors++;
            reply_error("lookup_bare", err);
            r->lcb(r->arg, GD_TABLE_ERROR, NULL, 0);
        } else {
            for (size_t i = 0; i < a.n; i++) {
                a.locs[i].dc = a.text.p + a.dc_off[i];
                a.locs[i].resource = a.text.p + a.res_off[i];
            }
            if (a.n > 0 || cacheable_neg)
                cache_put(t, ckey, a.n == 0, a.locs, a.n);
            r->lcb(r->arg, a.n ? GD_TABLE_OK : GD_TABLE_NOT_FOUND, a.locs, a.n);
        }
        free(a.locs);
        free(a.dc_off);
        free(a.res_off);
        free(a.text.p);
        return;
    }
    bool found;
    uint64_t ver;
    char dc[GD_TABLE_DC_MAX + 1];
    if (gd_table_parse_entry(rep, &found, &ver, dc, err, sizeof err) == -1) {
        t->st.reply_errors++;
        reply_error(r->ckey_kind == 'd' ? "lookup_domain" : "lookup_jid", err);
        r->lcb(r->arg, GD_TABLE_ERROR, NULL, 0);
        return;
    }
    if (!found) {
        if (cacheable_neg)
            cache_put(t, ckey, true, NULL, 0);
        r->lcb(r->arg, GD_TABLE_NOT_FOUND, NULL, 0);
        return;
    }
    struct gd_table_loc loc = { .dc = dc, .resource = "", .version = ver };
    cache_put(t, ckey, false, &loc, 1);
    r->lcb(r->arg, GD_TABLE_OK, &loc, 1);
}

static void dcs_finish(struct gd_table *t, struct dcs_state *d)
{
    struct gd_table_dc *v = xcalloc(d->n ? d->n : 1, sizeof *v);
    size_t k = 0;
    for (size_t i = 0; i < d->n; i++)
        if (d->endpoints[i] != NULL)
            v[k++] = (struct gd_table_dc){ d->names[i], d->endpoints[i], d->pubkeys[i] ? d->pubkeys[i] : "" };
    if (!t->closing)
        d->cb(d->arg, d->failed ? GD_TABLE_UNAVAILABLE : GD_TABLE_OK, v, k);
    for (size_t i = 0; i < d->n; i++) {
        free(d->names[i]);
        free(d->endpoints[i]);
        free(d->pubkeys[i]);
    }
    free(d->names);
    free(d->endpoints);
    free(d->pubkeys);
    free(v);
    free(d);
}

static void done_dcs_list(struct req *r, const redisReply *rep)
{
    struct gd_table *t = r->t;
    char err[160];
    if (rep == NULL || reply_is_error(rep, err, sizeof err) || rep->type != REDIS_REPLY_ARRAY) {
        if (rep != NULL) {
            t->st.reply_errors++;
            reply_error("dcs", rep->type == REDIS_REPLY_ARRAY ? err : "not an array");
        }
        r->dcs->cb(r->dcs->arg, rep ? GD_TABLE_ERROR : GD_TABLE_UNAVAILABLE, NULL, 0);
        free(r->dcs);
        return;
    }
    struct dcs_state *d = r->dcs;
    d->names = xcalloc(rep->elements + 1, sizeof *d->names);
    d->endpoints = xcalloc(rep->elements + 1, sizeof *d->endpoints);
    d->pubkeys = xcalloc(rep->elements + 1, sizeof *d->pubkeys);
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        if (e != NULL && e->type == REDIS_REPLY_STRING && e->str != NULL &&
            memchr(e->str, '\0', e->len) == NULL && dc_name_ok(e->str))
            d->names[d->n++] = xstrdup(e->str);
    }
    if (d->n == 0) {
        dcs_finish(t, d);
        return;
    }
    struct conn *c = read_conn(t);
    for (size_t i = 0; i < d->n; i++) {
        struct req *g = req_new(t, REQ_DCS_GET);
        g->dcs = d;
        g->dcs_idx = i;
        g->argc = 4;
        g->own_from = 1;
        g->argv = xcalloc(4, sizeof *g->argv);
        g->argvlen = xcalloc(4, sizeof *g->argvlen);
        g->argv[0] = (char *)"HMGET";
        req_arg(g, 1, key_of(t, "dc:", d->names[i], strlen(d->names[i])));
        req_arg(g, 2, xstrdup("endpoints"));
        req_arg(g, 3, xstrdup("pubkey"));
        if (c == NULL || req_send(g, c) == -1) {
            d->failed = true;
            d->got++;
            req_free(g);
        }
    }
    if (d->got == d->n)
        dcs_finish(t, d);
}

static void done_dcs_get(struct req *r, const redisReply *rep)
{
    struct dcs_state *d = r->dcs;
    if (rep == NULL) {
        d->failed = true;
    } else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 && rep->element != NULL &&
               rep->element[0] != NULL && rep->element[0]->type == REDIS_REPLY_STRING &&
               rep->element[0]->str != NULL) {
        d->endpoints[r->dcs_idx] = xstrndup(rep->element[0]->str, rep->element[0]->len);
        if (rep->element[1] != NULL && rep->element[1]->type == REDIS_REPLY_STRING && rep->element[1]->str)
            d->pubkeys[r->dcs_idx] = xstrndup(rep->element[1]->str, rep->element[1]->len);
    } else if (rep->type != REDIS_REPLY_ARRAY) {
        r->t->st.reply_errors++;
        reply_error("dc_get", rep->type == REDIS_REPLY_ERROR && rep->str ? rep->str : "wrong type");
    }
    if (++d->got == d->n)
        dcs_finish(r->t, d);
}

/* Every command's reply comes here; NULL when the connection went away first. */
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct req *r = privdata;
    struct gd_table *t = r->t;
    redisReply *rep = reply;
    if (t->closing) {
        if (r->kind == REQ_DCS_GET) {
            r->dcs->failed = true;
            if (++r->dcs->got == r->dcs->n)
                dcs_finish(t, r->dcs);
        } else if (r->kind == REQ_DCS_LIST) {
            free(r->dcs);
        }
        req_free(r);
        return;
    }
    /* A script not in the server's cache (Redis restarted, SCRIPT FLUSH): send it whole. */
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR && rep->str != NULL &&
        strncmp(rep->str, "NOSCRIPT", 8) == 0 && r->argv != NULL && r->argv[0] != NULL &&
        strcmp(r->argv[0], "EVALSHA") == 0) {
        r->argv[0] = (char *)"EVAL";
        r->argv[1] = (char *)script_text[r->script];
        log_info("gd_table_noscript", "script=%s", script_name[r->script]);
        if (ac != NULL && redisAsyncCommandArgv(ac, on_reply, r, r->argc, (const char **)r->argv,
                                                (r->argvlen[0] = 4, r->argvlen[1] = strlen(r->argv[1]),
                                                 r->argvlen)) == REDIS_OK)
            return;
        rep = NULL;
    }
    /* A reply's round trip (a NOSCRIPT fallback's included); none for a lost connection. */
    if (rep != NULL && t->latency != NULL)
        metric_observe(t->latency, req_op[r->kind], (double)(mk_mono_us() - r->sent_us) / 1e6);
    switch (r->kind) {
    case REQ_WRITE:     done_write(r, rep); break;
    case REQ_REFRESH:   done_refresh(r, rep); break;
    case REQ_HEARTBEAT:
        if (rep != NULL && gd_table_parse_write(rep, (char[160]){ 0 }, 160) != 1) {
            t->st.reply_errors++;
            reply_error("heartbeat", rep->type == REDIS_REPLY_ERROR && rep->str ? rep->str : "wrong type");
        }
        break;
    case REQ_LOOKUP:    done_lookup(r, rep); break;
    case REQ_DCS_LIST:  done_dcs_list(r, rep); break;
    case REQ_DCS_GET:   done_dcs_get(r, rep); break;
    }
    req_free(r);
}

/* ---- connections -------------------------------------------------------------------------- */

static void conn_ready(struct conn *c)
{
    struct gd_table *t = c->t;
    c->state = CONN_READY;
    c->backoff = t->reconnect_min;
    log_info("gd_table_connected", "role=%s host=%s port=%d", conn_role_name[c->role], c->host, c->port);
    if (c->role == CONN_PRIMARY) {
        /* Writes lost while down are re-done now: the pass rewrites missing entries. */
        heartbeat_send(t);
        refresh_start_pass(t);
    }
}

static void conn_schedule_retry(struct conn *c)
{
    struct gd_table *t = c->t;
    if (t->closing)
        return;
    c->state = CONN_DOWN;
    ev_timer_stop(t->loop, &c->retry);
    ev_timer_set(&c->retry, c->backoff, 0.);
    ev_timer_start(t->loop, &c->retry);
    c->backoff *= 2;
    if (c->backoff > t->reconnect_max)
        c->backoff = t->reconnect_max;
}

static void on_setup_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct conn *c = privdata;
    redisReply *rep = reply;
    if (c->t->closing || rep == NULL || ac != c->ac || c->state == CONN_DOWN)
        return;
    if (rep->type == REDIS_REPLY_ERROR) {
        char sample[160];
        mk_sanitize(sample, sizeof sample, rep->str ? rep->str : "", rep->str ? strnlen(rep->str, 36) : 0);
        log_error("gd_table_setup_failed", "role=%s host=%s port=%d err=\"%s\"",
                  conn_role_name[c->role], c->host, c->port, sample);
        c->t->st.setup_failures++;
        c->state = CONN_DOWN;
        redisAsyncDisconnect(ac);
        return;
    }
    if (c->role == CONN_SUB) {
        /* ["subscribe", channel, n] then ["message", channel, payload] for ever. */
        if (rep->type == REDIS_REPLY_STATUS) {   /* AUTH's +OK */
            if (c->state == CONN_SETUP && c->setup_pending > 0 && --c->setup_pending == 0)
                conn_ready(c);
            return;
        }
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 || rep->element[0]->type != REDIS_REPLY_STRING ||
            rep->element[0]->str == NULL)
            return;
        const char *kind = rep->element[0]->str;
        if (strcmp(kind, "subscribe") == 0) {
            if (c->state == CONN_SETUP && c->setup_pending > 0 && --c->setup_pending == 0)
                conn_ready(c);
        } else if (strcmp(kind, "message") == 0 && rep->element[2]->type == REDIS_REPLY_STRING) {
            const char *p = rep->element[2]->str;
            size_t n = rep->element[2]->len;
            struct gd_table *t = c->t;
            t->inval_epoch++;
            if (n > 2 && p[0] == 'j' && p[1] == ':')
                cache_forget_jid(t, p + 2, n - 2);
            else if (n > 2 && p[0] == 'd' && p[1] == ':' && n < JID_MAX) {
                char key[JID_MAX + 1];
                memcpy(key, p, n);
                key[n] = '\0';
                cache_remove(t, key);
            }
        }
        return;
    }
    if (c->state == CONN_SETUP && c->setup_pending > 0 && --c->setup_pending == 0)
        conn_ready(c);
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    struct conn *c = cac->data;
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    if (c->t->closing)
        return;
    if (status != REDIS_OK) {
        log_warn("gd_table_connect_failed", "role=%s host=%s port=%d err=\"%s\"", conn_role_name[c->role],
                 c->host, c->port, cac->errstr);
        c->ac = NULL;   /* hiredis frees it */
        conn_schedule_retry(c);
        return;
    }
    struct gd_table *t = c->t;
    c->state = CONN_SETUP;
    c->setup_pending = 0;
    if (t->password != NULL) {
        if (t->user != NULL) {
            const char *argv[3] = { "AUTH", t->user, t->password };
            redisAsyncCommandArgv(ac, on_setup_reply, c, 3, argv, NULL);
        } else {
            const char *argv[2] = { "AUTH", t->password };
            redisAsyncCommandArgv(ac, on_setup_reply, c, 2, argv, NULL);
        }
        c->setup_pending++;
    }
    if (c->role == CONN_SUB) {
        const char *argv[2] = { "SUBSCRIBE", t->channel };
        redisAsyncCommandArgv(ac, on_setup_reply, c, 2, argv, NULL);
        c->setup_pending++;
        return;
    }
    if (t->db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", t->db);
        const char *argv[2] = { "SELECT", db };
        redisAsyncCommandArgv(ac, on_setup_reply, c, 2, argv, NULL);
        c->setup_pending++;
    }
    if (c->role == CONN_PRIMARY) {
        for (int s = 0; s < SCRIPT_COUNT; s++) {
            const char *argv[3] = { "SCRIPT", "LOAD", script_text[s] };
            redisAsyncCommandArgv(ac, on_setup_reply, c, 3, argv, NULL);
            c->setup_pending++;
        }
    }
    const char *ping[1] = { "PING" };
    redisAsyncCommandArgv(ac, on_setup_reply, c, 1, ping, NULL);
    c->setup_pending++;
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    struct conn *c = cac->data;
    if (c->t->closing)
        return;
    if (cac == c->ac) {
        c->ac = NULL;
        c->t->st.reconnects++;
        log_warn("gd_table_disconnected", "role=%s host=%s port=%d err=\"%s\"", conn_role_name[c->role],
                 c->host, c->port, status == REDIS_OK ? "closed" : cac->errstr);
        if (c->role == CONN_PRIMARY) {
            ev_timer_stop(c->t->loop, &c->t->refresh_timer);
            c->t->refresh_inflight = false;
        }
        conn_schedule_retry(c);
    }
}

static void conn_start(struct conn *c)
{
    struct gd_table *t = c->t;
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->port);
    if (ac == NULL || ac->err) {
        log_warn("gd_table_connect_failed", "role=%s host=%s port=%d err=\"%s\"", conn_role_name[c->role],
                 c->host, c->port, ac ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        conn_schedule_retry(c);
        return;
    }
    ac->data = c;
    c->ac = ac;
    c->state = CONN_SETUP;
    c->setup_pending = 1000;   /* until on_connect queues the setup */
    redisLibevAttach(t->loop, ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = w->data;
    conn_start(c);
}

/* ---- refresh ------------------------------------------------------------------------------ */

static void refresh_send_batch(struct gd_table *t)
{
    struct conn *c = &t->conns[CONN_PRIMARY];
    if (c->state != CONN_READY)
        return;
    if (t->cursor >= t->owned_n)
        return;
    size_t n = t->owned_n - t->cursor;
    if (n > t->refresh_batch)
        n = t->refresh_batch;
    struct req *r = req_new(t, REQ_REFRESH);
    req_script(r, SCRIPT_REFRESH, (int)(2 * n), (int)(1 + 2 * n));
    r->nbatch = n;
    r->bnames = xcalloc(n, sizeof *r->bnames);
    r->bversions = xcalloc(n, sizeof *r->bversions);
    int ki = 3, ai = 3 + 2 * (int)n;
    req_arg(r, ai++, xstrdup(t->ttl_str));
    for (size_t i = 0; i < n; i++) {
        struct owned *o = t->owned_arr[t->cursor + i];
        r->bnames[i] = xstrdup(o->name);
        r->bversions[i] = o->version;
        size_t nl = strlen(o->name);
        char value[VALUE_MAX];
        fmt_value(value, o->version, t->dc);
        if (o->domain) {
            req_arg(r, ki++, key_of(t, "d:", o->name, nl));
            req_arg(r, ki++, key_of(t, "d:", o->name, nl));
            req_arg(r, ai++, xstrdup(value));
            req_arg(r, ai++, xstrdup(""));
        } else {
            const char *slash = strchr(o->name, '/');
            req_arg(r, ki++, key_of(t, "j:", o->name, nl));
            req_arg(r, ki++, key_of(t, "b:", o->name, (size_t)(slash - o->name)));
            req_arg(r, ai++, xstrdup(value));
            req_arg(r, ai++, xstrdup(slash + 1));
        }
    }
    if (req_send(r, c) == -1) {
        req_free(r);
        return;
    }
    t->cursor += n;   /* sent: a removal below the cursor keeps the unsent ones unsent */
    t->refresh_inflight = true;
}

/* Called after each batch's reply: the next batch at its place in the interval, or the next pass. */
static void refresh_schedule(struct gd_table *t)
{
    ev_timer_stop(t->loop, &t->refresh_timer);
    if (t->closing || t->conns[CONN_PRIMARY].state != CONN_READY)
        return;
    if (t->refresh_again) {
        t->refresh_again = false;
        refresh_start_pass(t);
        return;
    }
    double now = ev_now(t->loop);
    double at;
    if (t->cursor < t->owned_n && t->batch_i < t->pass_batches) {
        at = t->pass_t0 + t->refresh_interval * (double)t->batch_i / (double)t->pass_batches;
    } else {
        if (t->cursor >= t->owned_n || t->batch_i >= t->pass_batches)
            t->passes++;
        t->cursor = t->owned_n;   /* pass over: the timer starts the next */
        at = t->pass_t0 + t->refresh_interval;
    }
    double wait = at - now;
    ev_timer_set(&t->refresh_timer, wait > 0 ? wait : 0., 0.);
    ev_timer_start(t->loop, &t->refresh_timer);
}

static void refresh_start_pass(struct gd_table *t)
{
    if (t->refresh_inflight) {
        t->refresh_again = true;
        return;
    }
    ev_timer_stop(t->loop, &t->refresh_timer);
    if (t->conns[CONN_PRIMARY].state != CONN_READY)
        return;
    t->pass_t0 = ev_now(t->loop);
    t->cursor = 0;
    t->batch_i = 0;
    t->pass_batches = (t->owned_n + t->refresh_batch - 1) / t->refresh_batch;
    heartbeat_send(t);
    if (t->owned_n == 0) {
        t->passes++;
        ev_timer_set(&t->refresh_timer, t->refresh_interval, 0.);
        ev_timer_start(t->loop, &t->refresh_timer);
        return;
    }
    refresh_send_batch(t);
    if (!t->refresh_inflight)
        refresh_schedule(t);
}

static void on_refresh_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gd_table *t = w->data;
    if (t->refresh_inflight)
        return;
    if (t->cursor >= t->owned_n || t->batch_i >= t->pass_batches) {
        refresh_start_pass(t);
        return;
    }
    refresh_send_batch(t);
    if (!t->refresh_inflight)
        refresh_schedule(t);
}

static void heartbeat_send(struct gd_table *t)
{
    struct conn *c = &t->conns[CONN_PRIMARY];
    if (t->self_endpoints == NULL || c->state != CONN_READY)
        return;
    struct req *r = req_new(t, REQ_HEARTBEAT);
    req_script(r, SCRIPT_HEARTBEAT, 2, 4);
    req_arg(r, 3, key_of(t, "dc:", t->dc, strlen(t->dc)));
    req_arg(r, 4, key_of(t, "dcs", "", 0));
    req_arg(r, 5, xstrdup(t->dc));
    req_arg(r, 6, xstrdup(t->ttl_str));
    req_arg(r, 7, xstrdup(t->self_endpoints));
    req_arg(r, 8, xstrdup(t->self_pubkey));
    if (req_send(r, c) == -1)
        req_free(r);
}

/* ---- public API ----------------------------------------------------------------------------- */

static int host_copy(char out[64], const char *host, char *err, size_t errlen, const char *what)
{
    if (host == NULL || host[0] == '\0') {
        mk_errf(err, errlen, "gd table: %s host is missing", what);
        return -1;
    }
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    unsigned char tmp[16];
    if (inet_pton(AF_INET, host, tmp) != 1 && inet_pton(AF_INET6, host, tmp) != 1) {
        mk_errf(err, errlen, "gd table: %s host \"%.60s\" is not an IP address (a name would be resolved "
                "with a blocking getaddrinfo)", what, host);
        return -1;
    }
    mk_strlcpy(out, host, 64);
    return 0;
}

struct gd_table *gd_table_new(struct ev_loop *loop, const struct gd_table_params *p, char *err, size_t errlen)
{
    if (p->dc == NULL || !dc_name_ok(p->dc)) {
        mk_errf(err, errlen, "gd table: data center name must be 1-%d characters of [A-Za-z0-9._-]", GD_TABLE_DC_MAX);
        return NULL;
    }
    if (p->prefix == NULL || p->prefix[0] == '\0' || strlen(p->prefix) > 200) {
        mk_errf(err, errlen, "gd table: key prefix must be 1-200 bytes");
        return NULL;
    }
    if (p->primary_port <= 0 || p->primary_port > 65535 ||
        (p->replica_host != NULL && (p->replica_port <= 0 || p->replica_port > 65535))) {
        mk_errf(err, errlen, "gd table: Redis port out of range");
        return NULL;
    }
    if (p->db < 0) {
        mk_errf(err, errlen, "gd table: db must be >= 0");
        return NULL;
    }
    if (p->user != NULL && p->password == NULL) {
        mk_errf(err, errlen, "gd table: an ACL user needs a password");
        return NULL;
    }
    struct gd_table *t = xcalloc(1, sizeof *t);
    if (host_copy(t->conns[CONN_PRIMARY].host, p->primary_host, err, errlen, "primary") == -1 ||
        host_copy(t->conns[CONN_REPLICA].host, p->replica_host ? p->replica_host : p->primary_host,
                  err, errlen, "replica") == -1) {
        free(t);
        return NULL;
    }
    t->loop = loop;
    t->latency = p->latency;
    mk_strlcpy(t->dc, p->dc, sizeof t->dc);
    t->prefix = xstrdup(p->prefix);
    t->prefix_len = strlen(p->prefix);
    t->user = xstrdup(p->user);
    t->password = xstrdup(p->password);
    t->db = p->db;
    t->ttl = p->ttl_sec ? p->ttl_sec : 120;
    t->refresh_interval = p->refresh_interval > 0 ? p->refresh_interval : t->ttl / 3.0;
    t->refresh_batch = p->refresh_batch ? p->refresh_batch : 100;
    t->cache_ttl = p->cache_ttl > 0 ? p->cache_ttl : (p->cache_ttl < 0 ? 0 : 5.0);
    t->neg_ttl = p->neg_ttl > 0 ? p->neg_ttl : (p->neg_ttl < 0 ? 0 : 0.5);
    t->cache_max = p->cache_max ? p->cache_max : 10000;
    t->reconnect_min = p->reconnect_min > 0 ? p->reconnect_min : 0.1;
    t->reconnect_max = p->reconnect_max > 0 ? p->reconnect_max : 5.0;
    snprintf(t->ttl_str, sizeof t->ttl_str, "%u", t->ttl);
    if (t->refresh_interval >= t->ttl)
        log_warn("gd_table_refresh_too_slow", "refresh_interval=%.1f ttl_sec=%u reason=\"entries expire between "
                 "two refreshes\"", t->refresh_interval, t->ttl);
    t->channel = xasprintf("%sarrive", t->prefix);
    for (int s = 0; s < SCRIPT_COUNT; s++)
        sha1_hex(script_text[s], t->sha[s]);

    size_t nb = 64;
    while (nb < 2 * (size_t)t->cache_max)
        nb *= 2;
    t->cbuckets = xcalloc(nb, sizeof *t->cbuckets);
    t->cmask = nb - 1;
    t->ring = xcalloc(t->cache_max, sizeof *t->ring);
    t->free_slots = xmalloc(t->cache_max * sizeof *t->free_slots);
    for (unsigned i = 0; i < t->cache_max; i++)
        t->free_slots[i] = t->cache_max - 1 - i;
    t->nfree = t->cache_max;
    t->obuckets = xcalloc(64, sizeof *t->obuckets);
    t->omask = 63;

    ev_timer_init(&t->refresh_timer, on_refresh_timer, 0., 0.);
    t->refresh_timer.data = t;
    t->conns[CONN_PRIMARY].port = p->primary_port;
    t->conns[CONN_REPLICA].port = p->replica_host ? p->replica_port : p->primary_port;
    memcpy(t->conns[CONN_SUB].host, t->conns[CONN_REPLICA].host, 64);
    t->conns[CONN_SUB].port = t->conns[CONN_REPLICA].port;
    for (int i = 0; i < CONN_COUNT; i++) {
        struct conn *c = &t->conns[i];
        c->t = t;
        c->role = (enum conn_role)i;
        c->backoff = t->reconnect_min;
        ev_timer_init(&c->retry, on_retry, 0., 0.);
        c->retry.data = c;
    }
    for (int i = 0; i < CONN_COUNT; i++)
        conn_start(&t->conns[i]);
    return t;
}

void gd_table_free(struct gd_table **tp)
{
    struct gd_table *t = *tp;
    if (t == NULL)
        return;
    *tp = NULL;
    t->closing = true;
    ev_timer_stop(t->loop, &t->refresh_timer);
    for (int i = 0; i < CONN_COUNT; i++) {
        struct conn *c = &t->conns[i];
        ev_timer_stop(t->loop, &c->retry);
        if (c->ac != NULL) {
            redisAsyncContext *ac = c->ac;
            c->ac = NULL;
            redisAsyncFree(ac);
        }
    }
    for (size_t i = 0; i < t->cache_max; i++)
        free(t->ring[i]);
    free(t->ring);
    free(t->free_slots);
    free(t->cbuckets);
    for (size_t i = 0; i < t->owned_n; i++)
        free(t->owned_arr[i]);
    free(t->owned_arr);
    free(t->obuckets);
    free(t->prefix);
    free(t->user);
    if (t->password != NULL) {
        memset(t->password, 0, strlen(t->password));
        free(t->password);
    }
    free(t->channel);
    free(t->self_endpoints);
    free(t->self_pubkey);
    free(t);
}

bool gd_table_writable(const struct gd_table *t)
{
    return t->conns[CONN_PRIMARY].state == CONN_READY;
}

bool gd_table_readable(const struct gd_table *t)
{
    return t->conns[CONN_REPLICA].state == CONN_READY || t->conns[CONN_PRIMARY].state == CONN_READY;
}

bool gd_table_connected(const struct gd_table *t)
{
    for (int i = 0; i < CONN_COUNT; i++)
        if (t->conns[i].state != CONN_READY)
            return false;
    return true;
}

uint64_t gd_table_version_next(struct gd_table *t)
{
    uint64_t v = (uint64_t)mk_now_us();
    if (v <= t->last_version)
        v = t->last_version + 1;
    t->last_version = v;
    return v;
}

static bool full_jid_ok(const char *jid)
{
    size_t n = strlen(jid);
    const char *slash = strchr(jid, '/');
    return n > 0 && n <= JID_MAX && slash != NULL && slash != jid && slash[1] != '\0';
}

/* Sends the login/claim script for an owned entry. */
static int write_login(struct gd_table *t, const char *name, bool domain, uint64_t version,
                       gd_table_write_cb *cb, void *arg)
{
    struct req *r = req_new(t, REQ_WRITE);
    r->name = xstrdup(name);
    r->version = version;
    r->wcb = cb;
    r->arg = arg;
    req_script(r, SCRIPT_LOGIN, 2, 5);
    size_t nl = strlen(name);
    char value[VALUE_MAX];
    fmt_value(value, version, t->dc);
    if (domain) {
        req_arg(r, 3, key_of(t, "d:", name, nl));
        req_arg(r, 4, key_of(t, "d:", name, nl));
        req_arg(r, 7, xstrdup(""));
        req_arg(r, 9, xasprintf("d:%s", name));
    } else {
        const char *slash = strchr(name, '/');
        req_arg(r, 3, key_of(t, "j:", name, nl));
        req_arg(r, 4, key_of(t, "b:", name, (size_t)(slash - name)));
        req_arg(r, 7, xstrdup(slash + 1));
        req_arg(r, 9, xasprintf("j:%s", name));
    }
    req_arg(r, 5, xstrdup(value));
    req_arg(r, 6, xstrdup(t->ttl_str));
    req_arg(r, 8, xstrdup(t->channel));
    t->st.writes++;
    if (req_send(r, &t->conns[CONN_PRIMARY]) == -1) {
        req_free(r);
        errno = ENOTCONN;
        return -1;
    }
    return 0;
}

static int write_delete(struct gd_table *t, const char *name, bool domain, uint64_t version,
                        gd_table_write_cb *cb, void *arg)
{
    struct req *r = req_new(t, REQ_WRITE);
    r->delete = true;
    r->name = xstrdup(name);
    r->version = version;
    r->wcb = cb;
    r->arg = arg;
    req_script(r, SCRIPT_DELETE, 2, 2);
    size_t nl = strlen(name);
    char value[VALUE_MAX];
    fmt_value(value, version, t->dc);
    if (domain) {
        req_arg(r, 3, key_of(t, "d:", name, nl));
        req_arg(r, 4, key_of(t, "d:", name, nl));
        req_arg(r, 6, xstrdup(""));
    } else {
        const char *slash = strchr(name, '/');
        req_arg(r, 3, key_of(t, "j:", name, nl));
        req_arg(r, 4, key_of(t, "b:", name, (size_t)(slash - name)));
        req_arg(r, 6, xstrdup(slash + 1));
    }
    req_arg(r, 5, xstrdup(value));
    t->st.writes++;
    if (req_send(r, &t->conns[CONN_PRIMARY]) == -1) {
        req_free(r);
        errno = ENOTCONN;
        return -1;
    }
    return 0;
}

int gd_table_session_open(struct gd_table *t, const char *full_jid, uint64_t version,
                          gd_table_write_cb *cb, void *arg)
{
    if (!full_jid_ok(full_jid)) {
        errno = EINVAL;
        return -1;
    }
    owned_set(t, full_jid, version, false);
    /* Our own session: what we cached about this JID is out of date. */
    cache_forget_jid(t, full_jid, strlen(full_jid));
    return write_login(t, full_jid, false, version, cb, arg);
}

int gd_table_session_close(struct gd_table *t, const char *full_jid, gd_table_write_cb *cb, void *arg)
{
    struct owned *o = full_jid_ok(full_jid) ? owned_get(t, full_jid) : NULL;
    if (o == NULL || o->domain) {
        errno = ENOENT;
        return -1;
    }
    uint64_t version = o->version;
    owned_remove(t, full_jid);
    cache_forget_jid(t, full_jid, strlen(full_jid));
    return write_delete(t, full_jid, false, version, cb, arg);
}

static bool domain_ok(const char *d)
{
    size_t n = strlen(d);
    return n > 0 && n <= 1023 && strchr(d, '/') == NULL && strchr(d, '@') == NULL;
}

int gd_table_domain_claim(struct gd_table *t, const char *domain, gd_table_write_cb *cb, void *arg)
{
    if (!domain_ok(domain)) {
        errno = EINVAL;
        return -1;
    }
    uint64_t version = gd_table_version_next(t);
    owned_set(t, domain, version, true);
    char key[1030];
    snprintf(key, sizeof key, "d:%s", domain);
    cache_remove(t, key);
    return write_login(t, domain, true, version, cb, arg);
}

int gd_table_domain_release(struct gd_table *t, const char *domain, gd_table_write_cb *cb, void *arg)
{
    struct owned *o = domain_ok(domain) ? owned_get(t, domain) : NULL;
    if (o == NULL || !o->domain) {
        errno = ENOENT;
        return -1;
    }
    uint64_t version = o->version;
    owned_remove(t, domain);
    char key[1030];
    snprintf(key, sizeof key, "d:%s", domain);
    cache_remove(t, key);
    return write_delete(t, domain, true, version, cb, arg);
}

/* "<kind>:<name>" into ckey (JID_MAX + 3 bytes); name is at most JID_MAX bytes (checked by
 * the callers). */
static void cache_key(char *ckey, char kind, const char *name, size_t len)
{
    ckey[0] = kind;
    ckey[1] = ':';
    memcpy(ckey + 2, name, len);
    ckey[2 + len] = '\0';
}

static int lookup(struct gd_table *t, char kind, const char *name, gd_table_lookup_cb *cb, void *arg)
{
    char ckey[JID_MAX + 3];
    size_t len = strlen(name);
    if (len > JID_MAX) {
        errno = EINVAL;
        return -1;
    }
    cache_key(ckey, kind, name, len);
    t->st.lookups++;
    struct centry *e = cache_get(t, ckey);
    if (e != NULL) {
        if (e->neg) {
            t->st.neg_hits++;
            cb(arg, GD_TABLE_NOT_FOUND, NULL, 0);
        } else {
            t->st.cache_hits++;
            cb(arg, GD_TABLE_OK, e->locs, e->nlocs);
        }
        return 0;
    }
    struct conn *c = read_conn(t);
    if (c == NULL) {
        errno = ENOTCONN;
        return -1;
    }
    struct req *r = req_new(t, REQ_LOOKUP);
    r->name = xstrdup(name);
    r->ckey_kind = kind;
    r->lcb = cb;
    r->arg = arg;
    r->inval_epoch = t->inval_epoch;
    r->argc = 2;
    r->own_from = 1;
    r->argv = xcalloc(2, sizeof *r->argv);
    r->argvlen = xcalloc(2, sizeof *r->argvlen);
    r->argv[0] = (char *)(kind == 'b' ? "HGETALL" : "GET");
    char kp[3] = { kind, ':', '\0' };
    req_arg(r, 1, key_of(t, kp, name, strlen(name)));
    t->st.redis_reads++;
    if (req_send(r, c) == -1) {
        req_free(r);
        errno = ENOTCONN;
        return -1;
    }
    return 0;
}

int gd_table_lookup_jid(struct gd_table *t, const char *jid, gd_table_lookup_cb *cb, void *arg)
{
    size_t n = strlen(jid);
    if (n == 0 || n > JID_MAX || jid[0] == '/') {
        errno = EINVAL;
        return -1;
    }
    const char *slash = strchr(jid, '/');
    if (slash != NULL && slash[1] == '\0') {
        errno = EINVAL;
        return -1;
    }
    return lookup(t, slash ? 'j' : 'b', jid, cb, arg);
}

int gd_table_lookup_domain(struct gd_table *t, const char *domain, gd_table_lookup_cb *cb, void *arg)
{
    if (!domain_ok(domain)) {
        errno = EINVAL;
        return -1;
    }
    return lookup(t, 'd', domain, cb, arg);
}

void gd_table_cache_origin(struct gd_table *t, const char *full_jid, const char *dc, uint64_t version)
{
    if (!full_jid_ok(full_jid) || !dc_name_ok(dc))
        return;
    char ckey[JID_MAX + 3];
    cache_key(ckey, 'j', full_jid, strlen(full_jid));
    if (t->cache_max > 0 && t->cache_ttl > 0) {
        /* The same answer cached already (every message of a conversation brings it):
         * its lifetime starts again, as a new entry's would, without a free and a malloc. */
        size_t kl = strlen(ckey);
        struct centry *e = *cache_find(t, ckey, kl, hash_str(ckey, kl));
        if (e != NULL && !e->neg && e->nlocs == 1 && e->locs[0].version == version &&
            strcmp(e->locs[0].dc, dc) == 0 && e->locs[0].resource[0] == '\0') {
            e->expires_us = mk_mono_us() + (int64_t)(t->cache_ttl * 1e6);
            return;
        }
    }
    struct gd_table_loc loc = { .dc = dc, .resource = "", .version = version };
    cache_put(t, ckey, false, &loc, 1);
}

void gd_table_cache_forget(struct gd_table *t, const char *jid)
{
    cache_forget_jid(t, jid, strlen(jid));
}

void gd_table_set_self(struct gd_table *t, const char *endpoints, const char *pubkey)
{
    free(t->self_endpoints);
    free(t->self_pubkey);
    t->self_endpoints = xstrdup(endpoints ? endpoints : "");
    t->self_pubkey = xstrdup(pubkey ? pubkey : "");
    heartbeat_send(t);
}

int gd_table_dcs(struct gd_table *t, gd_table_dcs_cb *cb, void *arg)
{
    struct conn *c = read_conn(t);
    if (c == NULL) {
        errno = ENOTCONN;
        return -1;
    }
    struct req *r = req_new(t, REQ_DCS_LIST);
    r->dcs = xcalloc(1, sizeof *r->dcs);
    r->dcs->cb = cb;
    r->dcs->arg = arg;
    r->argc = 4;
    r->own_from = 1;
    r->argv = xcalloc(4, sizeof *r->argv);
    r->argvlen = xcalloc(4, sizeof *r->argvlen);
    r->argv[0] = (char *)"ZRANGEBYSCORE";
    req_arg(r, 1, key_of(t, "dcs", "", 0));
    req_arg(r, 2, xasprintf("(%" PRId64, mk_now_us() / 1000000));
    req_arg(r, 3, xstrdup("+inf"));
    if (req_send(r, c) == -1) {
        free(r->dcs);
        req_free(r);
        errno = ENOTCONN;
        return -1;
    }
    return 0;
}

void gd_table_set_lost_cb(struct gd_table *t, gd_table_lost_cb *cb, void *arg)
{
    t->lost_cb = cb;
    t->lost_arg = arg;
}

void gd_table_refresh_now(struct gd_table *t)
{
    refresh_start_pass(t);
}

size_t gd_table_owned(const struct gd_table *t)
{
    return t->owned_n;
}

uint64_t gd_table_refresh_passes(const struct gd_table *t)
{
    return t->passes;
}

const struct gd_table_stats *gd_table_stats(const struct gd_table *t)
{
    return &t->st;
}
