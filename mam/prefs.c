/* mam/prefs.c - XEP-0313 archiving preferences: parse, serialize, decide, and a per-owner LRU cache over the store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "jid.h"
#include "log.h"
#include "store.h"
#include "util.h"

const char *mam_default_name(enum mam_default d)
{
    switch (d) {
    case MAM_DEFAULT_NEVER:
        return "never";
    case MAM_DEFAULT_ROSTER:
        return "roster";
    default:
        return "always";
    }
}

int mam_default_parse(const char *s, enum mam_default *out)
{
    if (s == NULL)
        return -1;
    if (strcmp(s, "always") == 0)
        *out = MAM_DEFAULT_ALWAYS;
    else if (strcmp(s, "never") == 0)
        *out = MAM_DEFAULT_NEVER;
    else if (strcmp(s, "roster") == 0)
        *out = MAM_DEFAULT_ROSTER;
    else
        return -1;
    return 0;
}

static void free_list(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

void mam_prefs_release(struct mam_prefs *p)
{
    if (p == NULL)
        return;
    free_list(p->always, p->nalways);
    free_list(p->never, p->nnever);
    memset(p, 0, sizeof *p);
}

static void prefs_copy(struct mam_prefs *dst, const struct mam_prefs *src)
{
    memset(dst, 0, sizeof *dst);
    dst->def = src->def;
    if (src->nalways > 0) {
        dst->always = xcalloc(src->nalways, sizeof *dst->always);
        for (size_t i = 0; i < src->nalways; i++)
            dst->always[i] = xstrdup(src->always[i]);
        dst->nalways = src->nalways;
    }
    if (src->nnever > 0) {
        dst->never = xcalloc(src->nnever, sizeof *dst->never);
        for (size_t i = 0; i < src->nnever; i++)
            dst->never[i] = xstrdup(src->never[i]);
        dst->nnever = src->nnever;
    }
}

/* True when list holds the bare JID or the full bare/resource. */
static bool list_has(char *const *l, size_t n, const char *bare, const char *res)
{
    size_t blen = strlen(bare);
    for (size_t i = 0; i < n; i++) {
        const char *j = l[i];
        if (strncmp(j, bare, blen) != 0)
            continue;
        if (j[blen] == '\0')
            return true;
        if (j[blen] == '/' && res != NULL && res[0] != '\0' && strcmp(j + blen + 1, res) == 0)
            return true;
    }
    return false;
}

enum mam_verdict mam_prefs_decide(const struct mam_prefs *p, const char *peer, const char *peer_resource)
{
    if (p == NULL)
        return MAM_VERDICT_STORE;
    if (list_has(p->never, p->nnever, peer, peer_resource))
        return MAM_VERDICT_SKIP;
    if (list_has(p->always, p->nalways, peer, peer_resource))
        return MAM_VERDICT_STORE;
    switch (p->def) {
    case MAM_DEFAULT_NEVER:
        return MAM_VERDICT_SKIP;
    case MAM_DEFAULT_ROSTER:
        return MAM_VERDICT_ROSTER;
    default:
        return MAM_VERDICT_STORE;
    }
}

static int parse_list(const struct xml_node *el, char ***out, size_t *n, char *text, size_t textlen)
{
    *out = NULL;
    *n = 0;
    if (el == NULL)
        return 0;
    size_t cap = 0;
    for (struct xml_node *j = xml_child(el, "jid", NULL); j != NULL; j = xml_next(j, "jid", NULL)) {
        char *raw = xml_text(j);
        char *norm = jid_normalize(raw, false);
        if (norm == NULL) {
            snprintf(text, textlen, "Invalid JID in the %s list.", el->name);
            free(raw);
            free_list(*out, *n);
            *out = NULL;
            *n = 0;
            return -1;
        }
        free(raw);
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            *out = xrealloc(*out, cap * sizeof **out);
        }
        (*out)[(*n)++] = norm;
    }
    return 0;
}

int mam_prefs_parse(const struct xml_node *prefs, struct mam_prefs *out, char *text, size_t textlen)
{
    memset(out, 0, sizeof *out);
    const char *def = xml_attr(prefs, "default");
    if (mam_default_parse(def, &out->def) == -1) {
        snprintf(text, textlen, "The default attribute must be always, never or roster.");
        return -1;
    }
    if (parse_list(xml_child(prefs, "always", prefs->ns), &out->always, &out->nalways, text, textlen) == -1 ||
        parse_list(xml_child(prefs, "never", prefs->ns), &out->never, &out->nnever, text, textlen) == -1) {
        mam_prefs_release(out);
        return -1;
    }
    return 0;
}

void mam_prefs_to_xml(const struct mam_prefs *p, const char *ns, struct xml_node *parent)
{
    struct xml_node *el = xml_add_child(parent, "prefs", ns);
    xml_set_attr(el, "default", mam_default_name(p->def));
    struct xml_node *a = xml_add_child(el, "always", ns);
    for (size_t i = 0; i < p->nalways; i++)
        xml_add_text(xml_add_child(a, "jid", ns), p->always[i], strlen(p->always[i]));
    struct xml_node *nv = xml_add_child(el, "never", ns);
    for (size_t i = 0; i < p->nnever; i++)
        xml_add_text(xml_add_child(nv, "jid", ns), p->never[i], strlen(p->never[i]));
}

char *mam_prefs_join(char *const *jids, size_t n)
{
    struct buf b;
    buf_init(&b);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            buf_append(&b, "\n", 1);
        buf_append(&b, jids[i], strlen(jids[i]));
    }
    buf_append(&b, "", 1);
    return b.data;
}

void mam_prefs_split(const char *s, char ***jids, size_t *n)
{
    *jids = NULL;
    *n = 0;
    if (s == NULL)
        return;
    size_t cap = 0;
    while (*s != '\0') {
        const char *e = strchr(s, '\n');
        size_t len = e != NULL ? (size_t)(e - s) : strlen(s);
        if (len > 0) {
            if (*n == cap) {
                cap = cap ? cap * 2 : 8;
                *jids = xrealloc(*jids, cap * sizeof **jids);
            }
            (*jids)[(*n)++] = xstrndup(s, len);
        }
        s += len;
        if (*s == '\n')
            s++;
    }
}

int mam_split_owner(const char *owner, char **user, char **domain)
{
    const char *at = owner != NULL ? strchr(owner, '@') : NULL;
    if (at == NULL || at == owner || at[1] == '\0' || strchr(at + 1, '/') != NULL)
        return -1;
    *user = xstrndup(owner, (size_t)(at - owner));
    *domain = xstrdup(at + 1);
    return 0;
}

/* ---- the cache ----------------------------------------------------------------------------- */

struct prefs_waiter {
    prefs_ready_fn *cb;
    void *ud;
    struct prefs_waiter *next;
};

struct prefs_entry {
    struct prefs_cache *cache;
    char *owner;
    uint64_t hash;
    bool loaded;
    bool overridden;                /* a set arrived while the read was in flight: it wins */
    unsigned pins;                  /* callbacks running with its prefs, or a read in flight */
    struct mam_prefs prefs;
    struct prefs_waiter *waiters;   /* while loading, in arrival order (tail appended) */
    struct prefs_waiter *waiters_tail;
    struct prefs_entry *hnext;
    struct prefs_entry *lru_prev;   /* most recently used at the head */
    struct prefs_entry *lru_next;
};

struct prefs_cache {
    struct store *store;
    size_t capacity;
    size_t count;
    struct prefs_entry **buckets;
    size_t nbuckets;
    struct prefs_entry *lru_head;
    struct prefs_entry *lru_tail;
};

struct prefs_cache *prefs_cache_new(struct store *st, size_t capacity)
{
    struct prefs_cache *c = xcalloc(1, sizeof *c);
    c->store = st;
    c->capacity = capacity > 0 ? capacity : 1;
    c->nbuckets = 64;
    while (c->nbuckets < c->capacity)
        c->nbuckets *= 2;
    c->buckets = xcalloc(c->nbuckets, sizeof *c->buckets);
    return c;
}

static void lru_unlink(struct prefs_cache *c, struct prefs_entry *e)
{
    if (e->lru_prev != NULL)
        e->lru_prev->lru_next = e->lru_next;
    else
        c->lru_head = e->lru_next;
    if (e->lru_next != NULL)
        e->lru_next->lru_prev = e->lru_prev;
    else
        c->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push(struct prefs_cache *c, struct prefs_entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = c->lru_head;
    if (c->lru_head != NULL)
        c->lru_head->lru_prev = e;
    c->lru_head = e;
    if (c->lru_tail == NULL)
        c->lru_tail = e;
}

static void entry_free(struct prefs_entry *e)
{
    struct prefs_waiter *w = e->waiters;
    while (w != NULL) {
        struct prefs_waiter *n = w->next;
        free(w);
        w = n;
    }
    mam_prefs_release(&e->prefs);
    free(e->owner);
    free(e);
}

static void entry_remove(struct prefs_cache *c, struct prefs_entry *e)
{
    struct prefs_entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(c, e);
    c->count--;
}

void prefs_cache_free(struct prefs_cache **cp)
{
    if (cp == NULL || *cp == NULL)
        return;
    struct prefs_cache *c = *cp;
    for (size_t i = 0; i < c->nbuckets; i++) {
        struct prefs_entry *e = c->buckets[i];
        while (e != NULL) {
            struct prefs_entry *n = e->hnext;
            /* A read in flight still points at its entry: it is only freed by the
             * store callback, which cannot run after store_close. */
            entry_free(e);
            e = n;
        }
    }
    free(c->buckets);
    free(c);
    *cp = NULL;
}

static struct prefs_entry *entry_find(struct prefs_cache *c, const char *owner, uint64_t h)
{
    for (struct prefs_entry *e = c->buckets[h & (c->nbuckets - 1)]; e != NULL; e = e->hnext) {
        if (e->hash == h && strcmp(e->owner, owner) == 0)
            return e;
    }
    return NULL;
}

/* Drops least recently used entries that nobody is using until there is room. */
static void evict(struct prefs_cache *c)
{
    struct prefs_entry *e = c->lru_tail;
    while (c->count >= c->capacity && e != NULL) {
        struct prefs_entry *prev = e->lru_prev;
        if (e->loaded && e->pins == 0) {
            entry_remove(c, e);
            entry_free(e);
        }
        e = prev;
    }
}

static struct prefs_entry *entry_new(struct prefs_cache *c, const char *owner, uint64_t h)
{
    evict(c);
    struct prefs_entry *e = xcalloc(1, sizeof *e);
    e->cache = c;
    e->owner = xstrdup(owner);
    e->hash = h;
    size_t b = h & (c->nbuckets - 1);
    e->hnext = c->buckets[b];
    c->buckets[b] = e;
    lru_push(c, e);
    c->count++;
    return e;
}

static void on_prefs_read(void *ud, const struct store_result *res)
{
    struct prefs_entry *e = ud;
    struct prefs_cache *c = e->cache;
    if (e->overridden) {
        /* Newer than what was read. */
    } else if (res->ok != 0) {
        /* Archive by default rather than hold the writes: a failed read is rare and the
         * insert itself is retried. Not cached, so the next write reads again. */
        log_warn("mam_prefs_read_failed", "error=\"%s\"", res->error != NULL ? res->error : "");
    } else if (res->nrows > 0 && res->ncols >= 3) {
        mam_prefs_release(&e->prefs);
        enum mam_default d;
        if (mam_default_parse(res->vals[0], &d) == 0)
            e->prefs.def = d;
        mam_prefs_split(res->vals[1], &e->prefs.always, &e->prefs.nalways);
        mam_prefs_split(res->vals[2], &e->prefs.never, &e->prefs.nnever);
    }
    e->loaded = true;
    /* The waiters may call back into the cache: keep the entry alive while they run. */
    struct prefs_waiter *w = e->waiters;
    e->waiters = e->waiters_tail = NULL;
    while (w != NULL) {
        struct prefs_waiter *n = w->next;
        w->cb(w->ud, &e->prefs);
        free(w);
        w = n;
    }
    e->pins--;
    if (res->ok != 0 && !e->overridden && e->pins == 0 && e->waiters == NULL) {
        entry_remove(c, e);
        entry_free(e);
    }
}

void prefs_cache_get(struct prefs_cache *c, const char *owner, prefs_ready_fn *cb, void *ud)
{
    uint64_t h = mk_hash64(owner, strlen(owner), 0x70726566ULL);
    struct prefs_entry *e = entry_find(c, owner, h);
    if (e != NULL && e->loaded) {
        lru_unlink(c, e);
        lru_push(c, e);
        e->pins++;
        cb(ud, &e->prefs);
        e->pins--;
        return;
    }
    struct prefs_waiter *w = xcalloc(1, sizeof *w);
    w->cb = cb;
    w->ud = ud;
    if (e != NULL) {
        e->waiters_tail->next = w;
        e->waiters_tail = w;
        return;
    }
    e = entry_new(c, owner, h);
    e->waiters = e->waiters_tail = w;
    e->pins++;
    char *user, *domain;
    if (mam_split_owner(owner, &user, &domain) == -1) {
        struct store_result none = {0};
        on_prefs_read(e, &none);
        return;
    }
    const char *params[] = {user, domain};
    store_query(c->store, STORE_MAM_PREFS_GET, params, 2, on_prefs_read, e);
    free(user);
    free(domain);
}

void prefs_cache_put(struct prefs_cache *c, const char *owner, const struct mam_prefs *p)
{
    uint64_t h = mk_hash64(owner, strlen(owner), 0x70726566ULL);
    struct prefs_entry *e = entry_find(c, owner, h);
    if (e == NULL) {
        e = entry_new(c, owner, h);
        e->loaded = true;
    } else if (!e->loaded) {
        e->overridden = true;       /* the read in flight must not overwrite this */
    }
    mam_prefs_release(&e->prefs);
    prefs_copy(&e->prefs, p);
}
