/* mam/fence.c - read-your-writes for MAM queries: each owner's archive writes not yet committed, and the queries waiting for them. */
#include <stdlib.h>
#include <string.h>

#include "fence.h"
#include "util.h"

#define FENCE_MIN_BUCKETS 1024u
#define FENCE_MIN_CHAN_SLOTS 64u

/* An owner with pending writes or waiting queries; freed when it has neither. */
struct fence_owner {
    struct fence_owner *hnext;
    uint64_t hash;
    struct fence_link *head;       /* oldest pending write */
    struct fence_link *tail;
    struct fence_wait *waits;
    char name[];                   /* the owner's bare JID */
};

/* A reliable channel to this shard: how far it has arrived. */
struct fence_chan {
    uint64_t writer;
    uint64_t epoch;                /* 0: a free slot */
    uint64_t last;                 /* every seq <= this has arrived */
};

struct fence_table {
    struct fence_owner **buckets;
    size_t nbuckets;               /* a power of two */
    size_t nowners;
    size_t nwaiting;
    uint64_t seq;                  /* writes arrived so far */
    struct fence_chan *chans;      /* open addressing, linear probing */
    size_t nchan_slots;            /* a power of two, at least twice nchans */
    size_t nchans;
    struct fence_wait *missing;    /* queries with fences not arrived yet */
};

struct fence_table *fence_table_new(void)
{
    struct fence_table *t = xcalloc(1, sizeof *t);
    t->nbuckets = FENCE_MIN_BUCKETS;
    t->buckets = xcalloc(t->nbuckets, sizeof *t->buckets);
    t->nchan_slots = FENCE_MIN_CHAN_SLOTS;
    t->chans = xcalloc(t->nchan_slots, sizeof *t->chans);
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
    free(t->chans);
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

static size_t chan_slot(const struct fence_table *t, uint64_t writer, uint64_t epoch)
{
    size_t mask = t->nchan_slots - 1;
    size_t i = (size_t)(writer ^ (epoch * 0x9e3779b97f4a7c15ull)) & mask;
    while (t->chans[i].epoch != 0 && (t->chans[i].writer != writer || t->chans[i].epoch != epoch))
        i = (i + 1) & mask;
    return i;
}

static bool arrived(const struct fence_table *t, const struct fence_pos *f)
{
    if (f->epoch == 0)
        return true;   /* no channel named: nothing to wait for */
    const struct fence_chan *c = &t->chans[chan_slot(t, f->writer, f->epoch)];
    return c->epoch != 0 && c->last >= f->seq;
}

static void chans_resize(struct fence_table *t, size_t nslots)
{
    struct fence_chan *old = t->chans;
    size_t nold = t->nchan_slots;
    t->chans = xcalloc(nslots, sizeof *t->chans);
    t->nchan_slots = nslots;
    for (size_t i = 0; i < nold; i++)
        if (old[i].epoch != 0)
            t->chans[chan_slot(t, old[i].writer, old[i].epoch)] = old[i];
    free(old);
}

/* Records that at (and, with base, everything below base) arrived on its channel. */
static void chan_advance(struct fence_table *t, const struct fence_pos *at, uint64_t base)
{
    size_t i = chan_slot(t, at->writer, at->epoch);
    if (t->chans[i].epoch == 0) {
        if (t->nchans >= FENCE_MAX_CHANS) {
            /* Forgetting every channel only makes their fences wait (bounded). */
            memset(t->chans, 0, t->nchan_slots * sizeof *t->chans);
            t->nchans = 0;
        } else if (2 * (t->nchans + 1) > t->nchan_slots) {
            chans_resize(t, t->nchan_slots * 2);
        }
        i = chan_slot(t, at->writer, at->epoch);
        t->chans[i].writer = at->writer;
        t->chans[i].epoch = at->epoch;
        t->nchans++;
    }
    struct fence_chan *c = &t->chans[i];
    if (at->seq > c->last)
        c->last = at->seq;
    if (base > 0 && base - 1 > c->last)
        c->last = base - 1;
}

static bool wait_ready(const struct fence_owner *o, const struct fence_wait *w)
{
    return w->nids == 0 && (o->head == NULL || o->head->seq > w->upto_seq);
}

/* After a channel moved: queries whose last missing fence arrived now wait for the
 * writes arrived so far; those with nothing left are unlinked onto *ready. */
static void resolve_missing(struct fence_table *t, struct fence_wait **ready)
{
    struct fence_wait **pp = &t->missing;
    while (*pp != NULL) {
        struct fence_wait *w = *pp;
        for (size_t i = 0; i < w->nids;) {
            if (arrived(t, &w->ids[i]))
                w->ids[i] = w->ids[--w->nids];
            else
                i++;
        }
        if (w->nids > 0) {
            pp = &w->mnext;
            continue;
        }
        *pp = w->mnext;
        w->mnext = NULL;
        w->upto_seq = t->seq;
        struct fence_owner *o = w->owner;
        if (!wait_ready(o, w))
            continue;
        struct fence_wait **op = &o->waits;
        while (*op != w)
            op = &(*op)->next;
        *op = w->next;
        w->owner = NULL;
        w->next = *ready;
        *ready = w;
        t->nwaiting--;
        owner_release(t, o);
    }
}

static void run_ready(struct fence_wait *ready)
{
    while (ready != NULL) {
        struct fence_wait *w = ready;
        ready = w->next;
        w->next = NULL;
        w->cb(w->ud, false);
    }
}

/* Records a channel position and answers the queries it completes. */
static void advance(struct fence_table *t, const struct fence_pos *at, uint64_t base)
{
    if (at == NULL || at->epoch == 0 || (at->seq == 0 && base == 0))
        return;
    chan_advance(t, at, base);
    if (t->missing == NULL)
        return;
    struct fence_wait *ready = NULL;
    resolve_missing(t, &ready);
    /* Callbacks last: the table is consistent whatever they do. */
    run_ready(ready);
}

void fence_seen(struct fence_table *t, const struct fence_pos *at, uint64_t base)
{
    advance(t, at, base);
}

void fence_arrived(struct fence_table *t, struct fence_link *l, const char *owner, const struct fence_pos *at,
                   uint64_t base)
{
    l->seq = ++t->seq;
    struct fence_owner *o = owner_get(t, owner, owner_hash(owner));
    l->owner = o;
    l->next = NULL;
    l->prev = o->tail;
    if (o->tail != NULL)
        o->tail->next = l;
    else
        o->head = l;
    o->tail = l;
    advance(t, at, base);
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

int fence_wait(struct fence_table *t, struct fence_wait *w, const char *owner, const struct fence_pos *f, size_t n,
               fence_ready_fn *cb, void *ud)
{
    struct fence_pos missing[FENCE_MAX_IDS];
    size_t nmissing = 0;
    for (size_t i = 0; i < n && nmissing < FENCE_MAX_IDS; i++)
        if (f[i].seq != 0 && !arrived(t, &f[i]))
            missing[nmissing++] = f[i];
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
    if (nmissing > 0) {
        w->mnext = t->missing;
        t->missing = w;
    }
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
    if (w->nids > 0) {
        struct fence_wait **mp = &t->missing;
        while (*mp != NULL && *mp != w)
            mp = &(*mp)->mnext;
        if (*mp == w)
            *mp = w->mnext;
    }
    w->next = NULL;
    w->mnext = NULL;
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

size_t fence_channels(const struct fence_table *t)
{
    return t->nchans;
}
