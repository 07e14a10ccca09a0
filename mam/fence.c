/* mam/fence.c - read-your-writes for MAM queries: each owner's archive writes not yet committed, and the queries waiting for them. */
#include <stdlib.h>
#include <string.h>

#include "fence.h"
#include "mamid.h"
#include "util.h"

#define FENCE_MIN_BUCKETS 1024u

/* An owner with pending writes or waiting queries; freed when it has neither. */
struct fence_owner {
    struct fence_owner *hnext;
    uint64_t hash;
    struct fence_link *head;       /* oldest pending write */
    struct fence_link *tail;
    struct fence_wait *waits;
    char name[];                   /* the owner's bare JID */
};

struct fence_table {
    struct fence_owner **buckets;
    size_t nbuckets;               /* a power of two */
    size_t nowners;
    size_t nwaiting;
    uint64_t seq;                  /* writes arrived so far */
    uint64_t last_id[MAMID_GEN_MASK + 1];   /* per generator: the highest id arrived */
};

struct fence_table *fence_table_new(void)
{
    struct fence_table *t = xcalloc(1, sizeof *t);
    t->nbuckets = FENCE_MIN_BUCKETS;
    t->buckets = xcalloc(t->nbuckets, sizeof *t->buckets);
    return t;
}

void fence_table_free(struct fence_table **tp)
{
    if (tp == NULL || *tp == NULL)
        return;
    struct fence_table *t = *tp;
    /* First every waiting query, with the table still whole (a callback may look). */
    for (size_t b = 0; b < t->nbuckets; b++) {
        for (struct fence_owner *o = t->buckets[b]; o != NULL; o = o->hnext) {
            while (o->waits != NULL) {
                struct fence_wait *w = o->waits;
                o->waits = w->next;
                w->next = NULL;
                w->owner = NULL;
                t->nwaiting--;
                w->cb(w->ud, true);
            }
        }
    }
    for (size_t b = 0; b < t->nbuckets; b++) {
        struct fence_owner *o = t->buckets[b];
        while (o != NULL) {
            struct fence_owner *n = o->hnext;
            free(o);
            o = n;
        }
    }
    free(t->buckets);
    free(t);
    *tp = NULL;
}

static struct fence_owner *owner_find(const struct fence_table *t, const char *name, uint64_t h)
{
    for (struct fence_owner *o = t->buckets[h & (t->nbuckets - 1)]; o != NULL; o = o->hnext)
        if (o->hash == h && strcmp(o->name, name) == 0)
            return o;
    return NULL;
}

static void grow(struct fence_table *t)
{
    size_t nb = t->nbuckets * 2;
    struct fence_owner **buckets = xcalloc(nb, sizeof *buckets);
    for (size_t b = 0; b < t->nbuckets; b++) {
        struct fence_owner *o = t->buckets[b];
        while (o != NULL) {
            struct fence_owner *n = o->hnext;
            o->hnext = buckets[o->hash & (nb - 1)];
            buckets[o->hash & (nb - 1)] = o;
            o = n;
        }
    }
    free(t->buckets);
    t->buckets = buckets;
    t->nbuckets = nb;
}

static struct fence_owner *owner_get(struct fence_table *t, const char *name, uint64_t h)
{
    struct fence_owner *o = owner_find(t, name, h);
    if (o != NULL)
        return o;
    if (t->nowners >= t->nbuckets)
        grow(t);
    size_t len = strlen(name);
    o = xmalloc(sizeof *o + len + 1);
    memset(o, 0, sizeof *o);
    memcpy(o->name, name, len + 1);
    o->hash = h;
    o->hnext = t->buckets[h & (t->nbuckets - 1)];
    t->buckets[h & (t->nbuckets - 1)] = o;
    t->nowners++;
    return o;
}

/* Frees o when it holds nothing any more. */
static void owner_release(struct fence_table *t, struct fence_owner *o)
{
    if (o->head != NULL || o->waits != NULL)
        return;
    struct fence_owner **pp = &t->buckets[o->hash & (t->nbuckets - 1)];
    while (*pp != o)
        pp = &(*pp)->hnext;
    *pp = o->hnext;
    t->nowners--;
    free(o);
}

static uint64_t owner_hash(const char *name)
{
    return mk_hash64(name, strlen(name), 0);
}

static bool arrived(const struct fence_table *t, uint64_t id)
{
    return t->last_id[mamid_gen_of(id)] >= id;
}

static void note_id(struct fence_table *t, uint64_t id)
{
    unsigned g = mamid_gen_of(id);
    if (id > t->last_id[g])
        t->last_id[g] = id;
}

void fence_seen(struct fence_table *t, uint64_t id)
{
    if (id != 0)
        note_id(t, id);
}

void fence_arrived(struct fence_table *t, struct fence_link *l, const char *owner, uint64_t id)
{
    l->seq = ++t->seq;
    fence_seen(t, id);
    struct fence_owner *o = owner_get(t, owner, owner_hash(owner));
    l->owner = o;
    l->next = NULL;
    l->prev = o->tail;
    if (o->tail != NULL)
        o->tail->next = l;
    else
        o->head = l;
    o->tail = l;
    if (id == 0)
        return;
    /* A waiting query whose fence this is (or one of its generator's later ids: the
     * fence itself then came before, or never will) now waits for this write too. */
    for (struct fence_wait *w = o->waits; w != NULL; w = w->next) {
        bool hit = false;
        for (size_t i = 0; i < w->nids;) {
            if (mamid_gen_of(w->ids[i]) == mamid_gen_of(id) && id >= w->ids[i]) {
                w->ids[i] = w->ids[--w->nids];
                hit = true;
            } else {
                i++;
            }
        }
        if (hit)
            w->upto_seq = l->seq;
    }
}

static bool wait_ready(const struct fence_owner *o, const struct fence_wait *w)
{
    return w->nids == 0 && (o->head == NULL || o->head->seq > w->upto_seq);
}

void fence_done(struct fence_table *t, struct fence_link *l)
{
    struct fence_owner *o = l->owner;
    if (o == NULL)
        return;
    bool was_head = o->head == l;
    if (l->prev != NULL)
        l->prev->next = l->next;
    else
        o->head = l->next;
    if (l->next != NULL)
        l->next->prev = l->prev;
    else
        o->tail = l->prev;
    l->prev = l->next = NULL;
    l->owner = NULL;
    /* Only the oldest pending write decides whether a query may go. */
    if (o->waits == NULL || !was_head) {
        owner_release(t, o);
        return;
    }
    struct fence_wait *ready = NULL, **pp = &o->waits;
    while (*pp != NULL) {
        struct fence_wait *w = *pp;
        if (wait_ready(o, w)) {
            *pp = w->next;
            w->next = ready;
            ready = w;
            w->owner = NULL;
            t->nwaiting--;
        } else {
            pp = &w->next;
        }
    }
    owner_release(t, o);
    /* Callbacks last: the table is consistent whatever they do. */
    while (ready != NULL) {
        struct fence_wait *w = ready;
        ready = w->next;
        w->next = NULL;
        w->cb(w->ud, false);
    }
}

int fence_wait(struct fence_table *t, struct fence_wait *w, const char *owner, const uint64_t *ids, size_t n,
               fence_ready_fn *cb, void *ud)
{
    uint64_t missing[FENCE_MAX_IDS];
    size_t nmissing = 0;
    for (size_t i = 0; i < n && nmissing < FENCE_MAX_IDS; i++)
        if (ids[i] != 0 && !arrived(t, ids[i]))
            missing[nmissing++] = ids[i];
    uint64_t h = owner_hash(owner);
    struct fence_owner *o = owner_find(t, owner, h);
    /* Every write pending now arrived before the query: with none and every fence in,
     * the archive already holds what the query must see. */
    if (nmissing == 0 && (o == NULL || o->head == NULL))
        return 0;
    if (o == NULL)
        o = owner_get(t, owner, h);
    memset(w, 0, sizeof *w);
    memcpy(w->ids, missing, nmissing * sizeof *missing);
    w->nids = nmissing;
    w->upto_seq = t->seq;
    w->cb = cb;
    w->ud = ud;
    w->owner = o;
    w->next = o->waits;
    o->waits = w;
    t->nwaiting++;
    return 1;
}

void fence_cancel(struct fence_table *t, struct fence_wait *w)
{
    struct fence_owner *o = w->owner;
    if (o == NULL)
        return;
    struct fence_wait **pp = &o->waits;
    while (*pp != NULL && *pp != w)
        pp = &(*pp)->next;
    if (*pp == w)
        *pp = w->next;
    w->next = NULL;
    w->owner = NULL;
    t->nwaiting--;
    owner_release(t, o);
}

struct fence_link *fence_pending(const struct fence_table *t, const char *owner)
{
    struct fence_owner *o = owner_find(t, owner, owner_hash(owner));
    return o != NULL ? o->head : NULL;
}

bool fence_awaited(const struct fence_link *l)
{
    return l->owner != NULL && l->owner->waits != NULL;
}

size_t fence_waiting(const struct fence_table *t)
{
    return t->nwaiting;
}

size_t fence_owners(const struct fence_table *t)
{
    return t->nowners;
}
