/* router/sessions.c - the session table of this shard: bare JID -> sessions, hashed, plus a list per c2s. */
#include <stdlib.h>
#include <string.h>

#include "router.h"
#include "util.h"

#define SESS_HASH_SEED 0x6d65657266617461ULL
#define SESS_MIN_BUCKETS 64

int router_jid_split(const char *s, struct jid_view *v)
{
    memset(v, 0, sizeof *v);
    if (s == NULL || *s == '\0')
        return -1;
    const char *slash = strchr(s, '/');
    size_t bare_len = slash ? (size_t)(slash - s) : strlen(s);
    /* The local part ends at the first '@' before the resource. */
    const char *at = memchr(s, '@', bare_len);
    size_t doff = at ? (size_t)(at - s) + 1 : 0;
    if (doff >= bare_len || (at != NULL && at == s))
        return -1;
    v->bare_len = bare_len;
    v->domain_off = doff;
    v->domain_len = bare_len - doff;
    v->has_local = at != NULL;
    v->resource = slash ? slash + 1 : NULL;
    if (v->resource != NULL && *v->resource == '\0')
        return -1;
    return 0;
}

void sess_table_init(struct sess_table *t)
{
    memset(t, 0, sizeof *t);
    t->nbuckets = SESS_MIN_BUCKETS;
    t->buckets = xcalloc(t->nbuckets, sizeof *t->buckets);
}

static void sess_free(struct router_sess *s)
{
    free(s);   /* the full JID lives in the same block */
}

void sess_table_release(struct sess_table *t)
{
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct router_user *u = t->buckets[i];
        while (u != NULL) {
            struct router_user *un = u->hnext;
            struct router_sess *s = u->sessions;
            while (s != NULL) {
                struct router_sess *sn = s->next;
                sess_free(s);
                s = sn;
            }
            free(u);   /* bare included */
            u = un;
        }
    }
    free(t->buckets);
    for (size_t i = 0; i < t->nc2s; i++) {
        free(t->c2s[i]->id);
        free(t->c2s[i]);
    }
    free(t->c2s);
    router_component_release(t);
    memset(t, 0, sizeof *t);
}

static uint64_t bare_hash(const char *bare, size_t len)
{
    return mk_hash64(bare, len, SESS_HASH_SEED);
}

struct router_user *sess_table_user(const struct sess_table *t, const char *bare, size_t len)
{
    if (bare == NULL || t->nbuckets == 0)
        return NULL;
    uint64_t h = bare_hash(bare, len);
    for (struct router_user *u = t->buckets[h & (t->nbuckets - 1)]; u != NULL; u = u->hnext)
        if (u->hash == h && u->bare_len == len && memcmp(u->bare, bare, len) == 0)
            return u;
    return NULL;
}

static void table_grow(struct sess_table *t)
{
    size_t nb = t->nbuckets * 2;
    struct router_user **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct router_user *u = t->buckets[i];
        while (u != NULL) {
            struct router_user *un = u->hnext;
            u->hnext = b[u->hash & (nb - 1)];
            b[u->hash & (nb - 1)] = u;
            u = un;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = nb;
}

static struct router_user *user_get_or_add(struct sess_table *t, const char *bare, size_t len)
{
    struct router_user *u = sess_table_user(t, bare, len);
    if (u != NULL)
        return u;
    if (t->nusers + 1 > t->nbuckets)
        table_grow(t);
    u = xcalloc(1, sizeof *u + len + 1);   /* the bare JID follows the struct */
    u->bare = (char *)(u + 1);
    memcpy(u->bare, bare, len);
    u->bare_len = len;
    u->hash = bare_hash(bare, len);
    size_t i = u->hash & (t->nbuckets - 1);
    u->hnext = t->buckets[i];
    t->buckets[i] = u;
    t->nusers++;
    return u;
}

static void user_remove(struct sess_table *t, struct router_user *u)
{
    struct router_user **pp = &t->buckets[u->hash & (t->nbuckets - 1)];
    while (*pp != NULL && *pp != u)
        pp = &(*pp)->hnext;
    if (*pp == u)
        *pp = u->hnext;
    t->nusers--;
    free(u);
}

static struct router_c2s *c2s_find(const struct sess_table *t, const char *id)
{
    for (size_t i = 0; i < t->nc2s; i++)
        if (strcmp(t->c2s[i]->id, id) == 0)
            return t->c2s[i];
    return NULL;
}

static struct router_c2s *c2s_get_or_add(struct sess_table *t, const char *id)
{
    struct router_c2s *c = c2s_find(t, id);
    if (c != NULL)
        return c;
    c = xcalloc(1, sizeof *c);
    c->id = xstrdup(id);
    t->c2s = xrealloc(t->c2s, (t->nc2s + 1) * sizeof *t->c2s);
    t->c2s[t->nc2s++] = c;
    return c;
}

static void c2s_link(struct router_c2s *c, struct router_sess *s)
{
    s->c2s = c;
    s->c2s_prev = NULL;
    s->c2s_next = c->head;
    if (c->head != NULL)
        c->head->c2s_prev = s;
    c->head = s;
    c->nsessions++;
}

static void c2s_unlink(struct router_sess *s)
{
    struct router_c2s *c = s->c2s;
    if (s->c2s_prev != NULL)
        s->c2s_prev->c2s_next = s->c2s_next;
    else
        c->head = s->c2s_next;
    if (s->c2s_next != NULL)
        s->c2s_next->c2s_prev = s->c2s_prev;
    s->c2s_prev = s->c2s_next = NULL;
    c->nsessions--;
}

/* Unlinks and frees s; frees its user when it was the last session. */
static void sess_remove(struct sess_table *t, struct router_sess *s)
{
    struct router_user *u = s->user;
    struct router_sess **pp = &u->sessions;
    while (*pp != NULL && *pp != s)
        pp = &(*pp)->next;
    if (*pp == s)
        *pp = s->next;
    u->nsessions--;
    c2s_unlink(s);
    t->nsessions--;
    sess_free(s);
    if (u->nsessions == 0)
        user_remove(t, u);
}

static struct router_sess *user_find_resource(const struct router_user *u, const char *resource)
{
    for (struct router_sess *s = u->sessions; s != NULL; s = s->next)
        if (strcmp(sess_resource(s), resource) == 0)
            return s;
    return NULL;
}

struct router_sess *sess_table_find(const struct sess_table *t, const char *full)
{
    struct jid_view v;
    if (router_jid_split(full, &v) == -1 || v.resource == NULL)
        return NULL;
    struct router_user *u = sess_table_user(t, full, v.bare_len);
    return u ? user_find_resource(u, v.resource) : NULL;
}

static bool older(const struct router_sess *a, const struct router_sess *b)
{
    if (a->login_us != b->login_us)
        return a->login_us < b->login_us;
    return a->seq < b->seq;
}

struct router_sess *sess_table_open(struct sess_table *t, const struct sess_info *in, unsigned max_sessions,
                                    sess_evict_fn *evict, void *ud)
{
    struct jid_view v;
    if (in->full == NULL || in->c2s == NULL || *in->c2s == '\0' || router_jid_split(in->full, &v) == -1 ||
        v.resource == NULL)
        return NULL;
    struct router_user *u = user_get_or_add(t, in->full, v.bare_len);
    struct router_sess *s = user_find_resource(u, v.resource);
    if (s != NULL && (s->session_id != in->session_id || strcmp(s->c2s->id, in->c2s) != 0)) {
        if (in->update)
            return s;   /* a late update of a session that lost the JID (see router.h) */
        if (in->login_us != 0 && in->login_us < s->login_us) {
            /* The incoming login is the older one: it loses. It is not in the table, so
             * the evict callback gets a stand-in carrying what a close needs. */
            struct router_c2s c = {.id = (char *)in->c2s};
            struct router_sess lost = {.user = u, .full = (char *)in->full, .c2s = &c,
                                       .session_id = in->session_id, .login_us = in->login_us};
            if (evict != NULL)
                evict(ud, &lost, "conflict");
            return s;
        }
        /* Same full JID from another login: the new one wins (RFC 6120 7.7.2.2). The old
         * one is told to close; its entry is reused for the new login. */
        if (evict != NULL)
            evict(ud, s, "conflict");
        c2s_unlink(s);
        c2s_link(c2s_get_or_add(t, in->c2s), s);
        s->session_id = in->session_id;
        s->carbons_hint = 0;   /* another session: its c2s has not been told */
        s->seq = ++t->next_seq;
        s->login_us = in->login_us;
    }
    if (s == NULL) {
        size_t lf = strlen(in->full);
        s = xcalloc(1, sizeof *s + lf + 1);   /* the full JID follows the struct */
        s->user = u;
        s->full = (char *)(s + 1);
        memcpy(s->full, in->full, lf + 1);
        s->session_id = in->session_id;
        s->seq = ++t->next_seq;
        s->login_us = in->login_us;
        c2s_link(c2s_get_or_add(t, in->c2s), s);
        /* Append: the list stays in insertion order. */
        struct router_sess **pp = &u->sessions;
        while (*pp != NULL)
            pp = &(*pp)->next;
        *pp = s;
        u->nsessions++;
        t->nsessions++;
    }
    s->priority = in->priority;
    s->available = in->available;
    s->interested = in->interested;
    s->carbons = in->carbons;
    if (in->login_us != 0)
        s->login_us = in->login_us;
    while (max_sessions > 0 && u->nsessions > max_sessions) {
        struct router_sess *oldest = NULL;
        for (struct router_sess *o = u->sessions; o != NULL; o = o->next)
            if (o != s && (oldest == NULL || older(o, oldest)))
                oldest = o;
        if (oldest == NULL)
            break;
        if (evict != NULL)
            evict(ud, oldest, "policy-violation");
        sess_remove(t, oldest);   /* s remains, so u does too */
    }
    return s;
}

int sess_table_close(struct sess_table *t, const char *full, const char *c2s, uint64_t session_id)
{
    struct router_sess *s = sess_table_find(t, full);
    if (s == NULL || c2s == NULL || s->session_id != session_id || strcmp(s->c2s->id, c2s) != 0)
        return -1;
    sess_remove(t, s);
    return 0;
}

size_t sess_table_drop_users(struct sess_table *t, bool (*keep)(void *ud, const char *bare, size_t len), void *ud)
{
    size_t n = 0;
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct router_user *u = t->buckets[i];
        while (u != NULL) {
            struct router_user *next = u->hnext;
            if (!keep(ud, u->bare, u->bare_len)) {
                /* The user goes with its last session (sess_remove): next is read first. */
                while (u->sessions != NULL && u->sessions->next != NULL) {
                    sess_remove(t, u->sessions);
                    n++;
                }
                sess_remove(t, u->sessions);
                n++;
            }
            u = next;
        }
    }
    return n;
}

size_t sess_table_purge_c2s(struct sess_table *t, const char *c2s)
{
    struct router_c2s *c = c2s ? c2s_find(t, c2s) : NULL;
    size_t n = 0;
    while (c != NULL && c->head != NULL) {
        sess_remove(t, c->head);
        n++;
    }
    return n + router_component_purge_c2s(t, c2s);
}

size_t sess_table_kick(struct sess_table *t, const char *jid, const char *reason, sess_evict_fn *evict, void *ud)
{
    struct jid_view v;
    if (router_jid_split(jid, &v) == -1)
        return 0;
    if (v.resource != NULL) {
        struct router_sess *s = sess_table_find(t, jid);
        if (s == NULL)
            return 0;
        if (evict != NULL)
            evict(ud, s, reason);
        sess_remove(t, s);
        return 1;
    }
    struct router_user *u = sess_table_user(t, jid, v.bare_len);
    size_t n = 0;
    /* Removing the last session frees u: count first, then remove that many. */
    size_t total = u ? u->nsessions : 0;
    for (size_t i = 0; i < total; i++) {
        struct router_sess *s = u->sessions;
        if (evict != NULL)
            evict(ud, s, reason);
        sess_remove(t, s);
        n++;
    }
    return n;
}

void sess_table_foreach(const struct sess_table *t, void (*fn)(void *ud, const struct router_sess *s), void *ud)
{
    for (size_t i = 0; i < t->nbuckets; i++)
        for (const struct router_user *u = t->buckets[i]; u != NULL; u = u->hnext)
            for (const struct router_sess *s = u->sessions; s != NULL; s = s->next)
                fn(ud, s);
}
