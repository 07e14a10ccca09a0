/* router/custody.c - the router's custody table of message Delivers not yet done at their c2s (see custody.h). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "custody.h"
#include "env.h"
#include "util.h"

#define CUSTODY_SEQ_BITS 48
#define CUSTODY_SEQ_MASK ((UINT64_C(1) << CUSTODY_SEQ_BITS) - 1)
#define CUSTODY_MIN_BUCKETS 1024u

/* One kept Deliver: its packed Route follows the struct (one allocation). */
struct custody_copy {
    uint64_t id;
    struct custody_copy *hnext;    /* hash chain */
    struct custody_copy *prev;     /* the c2s's copies, oldest first */
    struct custody_copy *next;
    struct custody_c2s *owner;
    uint32_t copies;               /* target sessions that have not reported done */
    bool fanout;                   /* route holds a packed Fanout (templates and recipients) */
    bool moved;                    /* charged to another c2s since kept (router_custody_move) */
    size_t len;
    uint8_t route[];
};

/* The copies of one c2s (few c2s: a list). */
struct custody_c2s {
    char *id;
    struct custody_copy *oldest;
    struct custody_copy *newest;
    size_t n;
    int64_t heard_us;              /* when it last said anything about custody (router_custody_heard) */
    bool gone;                     /* given up as silent (router_custody_silent) since */
    struct custody_c2s *next;
};

struct router_custody {
    uint64_t prefix;               /* (router index + 1) << 48 */
    uint64_t seq;
    size_t max_per_c2s;
    struct custody_copy **buckets; /* power-of-two size */
    size_t nbuckets;
    size_t n;
    uint64_t dropped;
    struct custody_c2s *c2s;
};

struct router_custody *router_custody_new(unsigned router_index, size_t max_per_c2s)
{
    struct router_custody *c = xcalloc(1, sizeof *c);
    c->prefix = ((uint64_t)(router_index + 1) & 0xffff) << CUSTODY_SEQ_BITS;
    c->seq = (uint64_t)mk_now_us() & CUSTODY_SEQ_MASK;
    c->max_per_c2s = max_per_c2s;
    c->nbuckets = CUSTODY_MIN_BUCKETS;
    c->buckets = xcalloc(c->nbuckets, sizeof *c->buckets);
    return c;
}

void router_custody_free(struct router_custody **cp)
{
    struct router_custody *c = cp != NULL ? *cp : NULL;
    if (c == NULL)
        return;
    while (c->c2s != NULL) {
        struct custody_c2s *o = c->c2s;
        c->c2s = o->next;
        for (struct custody_copy *k = o->oldest, *nx; k != NULL; k = nx) {
            nx = k->next;
            free(k);
        }
        free(o->id);
        free(o);
    }
    free(c->buckets);
    free(c);
    *cp = NULL;
}

static struct custody_c2s *owner_of(struct router_custody *c, const char *c2s, bool create)
{
    for (struct custody_c2s *o = c->c2s; o != NULL; o = o->next)
        if (strcmp(o->id, c2s) == 0)
            return o;
    if (!create)
        return NULL;
    struct custody_c2s *o = xcalloc(1, sizeof *o);
    o->id = xstrdup(c2s);
    o->heard_us = mk_now_us();   /* the silence is counted from the first copy kept for it */
    o->next = c->c2s;
    c->c2s = o;
    return o;
}

/* Ids are consecutive: their low bits spread them evenly. */
static struct custody_copy **bucket_of(const struct router_custody *c, uint64_t id)
{
    return &c->buckets[id & (c->nbuckets - 1)];
}

static struct custody_copy *find(const struct router_custody *c, uint64_t id)
{
    struct custody_copy *k = *bucket_of(c, id);
    while (k != NULL && k->id != id)
        k = k->hnext;
    return k;
}

static void grow(struct router_custody *c)
{
    size_t old = c->nbuckets;
    struct custody_copy **ob = c->buckets;
    c->nbuckets = old * 2;
    c->buckets = xcalloc(c->nbuckets, sizeof *c->buckets);
    for (size_t i = 0; i < old; i++)
        for (struct custody_copy *k = ob[i], *nx; k != NULL; k = nx) {
            nx = k->hnext;
            struct custody_copy **b = bucket_of(c, k->id);
            k->hnext = *b;
            *b = k;
        }
    free(ob);
}

/* Takes k out of its c2s's list (its owner's count with it); the hash keeps it. */
static void list_unlink(struct custody_copy *k)
{
    struct custody_c2s *o = k->owner;
    if (k->prev != NULL)
        k->prev->next = k->next;
    else
        o->oldest = k->next;
    if (k->next != NULL)
        k->next->prev = k->prev;
    else
        o->newest = k->prev;
    o->n--;
}

/* Takes k out of the hash and out of its c2s's list (not freed). */
static void unlink_copy(struct router_custody *c, struct custody_copy *k)
{
    struct custody_copy **pp = bucket_of(c, k->id);
    while (*pp != NULL && *pp != k)
        pp = &(*pp)->hnext;
    if (*pp == k)
        *pp = k->hnext;
    list_unlink(k);
    c->n--;
}

/* Appends k (out of every list) as o's newest copy. */
static void link_newest(struct custody_c2s *o, struct custody_copy *k)
{
    k->owner = o;
    k->next = NULL;
    k->prev = o->newest;
    if (o->newest != NULL)
        o->newest->next = k;
    else
        o->oldest = k;
    o->newest = k;
    o->n++;
}

/* A new copy of packed bytes (filled by the caller) for c2s, in the table. */
static struct custody_copy *copy_new(struct router_custody *c, const char *c2s, size_t len, uint32_t copies)
{
    struct custody_c2s *o = owner_of(c, c2s, true);
    while (o->n >= c->max_per_c2s) {
        struct custody_copy *k = o->oldest;
        unlink_copy(c, k);
        free(k);
        c->dropped++;
    }
    struct custody_copy *k = xmalloc(sizeof *k + len);
    c->seq = (c->seq + 1) & CUSTODY_SEQ_MASK;
    if (c->seq == 0)
        c->seq = 1;
    k->id = c->prefix | c->seq;
    k->copies = copies;
    k->fanout = false;
    k->moved = false;
    k->len = len;
    link_newest(o, k);
    if (c->n + 1 > c->nbuckets)
        grow(c);
    struct custody_copy **b = bucket_of(c, k->id);
    k->hnext = *b;
    *b = k;
    c->n++;
    return k;
}

uint64_t router_custody_keep(struct router_custody *c, const char *c2s, const Mk__Route *r, uint64_t archive_id,
                             uint32_t copies)
{
    if (c == NULL || c->max_per_c2s == 0 || copies == 0 || r == NULL || c2s == NULL)
        return 0;
    Mk__Route kept = *r;
    if (archive_id != 0)
        kept.mam_id = archive_id;
    /* Copies to the user's other sessions were made when it was first routed. */
    kept.carbon_eligible = kept.carbon_sent = kept.carbon_sent_only = false;
    struct custody_copy *k = copy_new(c, c2s, mk__route__get_packed_size(&kept), copies);
    mk__route__pack(&kept, k->route);
    return k->id;
}

uint64_t router_custody_keep_fanout(struct router_custody *c, const char *c2s, Mk__Route *const *stanzas, size_t nst,
                                    char *const *tos, uint32_t copies)
{
    if (c == NULL || c->max_per_c2s == 0 || copies == 0 || nst == 0 || stanzas == NULL || tos == NULL ||
        c2s == NULL)
        return 0;
    Mk__Fanout f = MK__FANOUT__INIT;
    f.n_stanzas = nst;
    f.stanzas = (Mk__Route **)stanzas;
    f.n_to = copies;
    f.to = (char **)tos;
    struct custody_copy *k = copy_new(c, c2s, mk__fanout__get_packed_size(&f), copies);
    mk__fanout__pack(&f, k->route);
    k->fanout = true;
    return k->id;
}

/* A fan-out copy handed back: each recipient's each stanza, whole. */
static size_t take_fanout(const struct custody_copy *k, router_custody_fn *fn, void *ud)
{
    Mk__Fanout *f = mk__fanout__unpack(NULL, k->len, k->route);
    if (f == NULL)
        return 0;
    struct buf xml;
    buf_init(&xml);
    for (size_t i = 0; i < f->n_to; i++)
        for (size_t j = 0; j < f->n_stanzas; j++) {
            Mk__Route whole;
            if (env_route_fill(f->stanzas[j], f->to[i], &xml, &whole) == 0)
                fn(ud, &whole);
        }
    buf_release(&xml);
    mk__fanout__free_unpacked(f, NULL);
    return 1;
}

size_t router_custody_done(struct router_custody *c, const char *c2s, const uint64_t *ids, size_t n)
{
    if (c == NULL || c2s == NULL)
        return 0;
    size_t forgotten = 0;
    for (size_t i = 0; i < n; i++) {
        struct custody_copy *k = find(c, ids[i]);
        if (k == NULL || strcmp(k->owner->id, c2s) != 0)
            continue;
        if (--k->copies > 0)
            continue;
        unlink_copy(c, k);
        free(k);
        forgotten++;
    }
    return forgotten;
}

size_t router_custody_move(struct router_custody *c, const char *from, const char *to, const uint64_t *ids, size_t n)
{
    if (c == NULL || from == NULL || to == NULL || strcmp(from, to) == 0)
        return 0;
    struct custody_c2s *dst = NULL;
    size_t moved = 0;
    for (size_t i = 0; i < n; i++) {
        struct custody_copy *k = find(c, ids[i]);
        if (k == NULL || strcmp(k->owner->id, to) == 0)
            continue;
        /* From its holder; or, for a copy that never moved, from a c2s that took the
         * session from the holder's taker (A -> B -> C, C's report overtook B's, which the
         * test below then ignores): the latest taker wins either way. */
        bool from_holder = strcmp(k->owner->id, from) == 0;
        if (!from_holder && (k->moved || k->fanout))
            continue;
        if (k->fanout) {
            /* A room's fan-out to several sessions of from: routed again it would go to
             * them all; the session that moved is done with it there, as before custody
             * followed a moved queue (a group chat message in it is not kept for to). */
            if (--k->copies == 0) {
                unlink_copy(c, k);
                free(k);
            }
            continue;
        }
        if (dst == NULL)
            dst = owner_of(c, to, true);
        /* Out of the old c2s's list only: the hash keeps it under the same id. */
        list_unlink(k);
        /* The session is one target there (its other sessions' reports stay with from:
         * they were done there or come from there). */
        k->copies = 1;
        k->moved = true;
        link_newest(dst, k);
        moved++;
    }
    return moved;
}

bool router_custody_heard(struct router_custody *c, const char *c2s, int64_t now_us)
{
    struct custody_c2s *o = c != NULL && c2s != NULL ? owner_of(c, c2s, false) : NULL;
    if (o == NULL)
        return false;
    o->heard_us = now_us;
    bool was_gone = o->gone;
    o->gone = false;
    return was_gone;
}

const char *router_custody_silent(struct router_custody *c, int64_t now_us, int64_t timeout_us)
{
    if (c == NULL || timeout_us <= 0)
        return NULL;
    for (struct custody_c2s *o = c->c2s; o != NULL; o = o->next)
        if (o->n > 0 && now_us - o->heard_us >= timeout_us) {
            o->gone = true;
            return o->id;
        }
    return NULL;
}

size_t router_custody_take(struct router_custody *c, const char *c2s, router_custody_fn *fn, void *ud)
{
    struct custody_c2s *o = c != NULL && c2s != NULL ? owner_of(c, c2s, false) : NULL;
    if (o == NULL)
        return 0;
    /* Out of the table first: fn routes them, which may keep new copies (other c2s). */
    struct custody_copy *list = o->oldest;
    for (struct custody_copy *k = list; k != NULL; k = k->next) {
        struct custody_copy **pp = bucket_of(c, k->id);
        while (*pp != NULL && *pp != k)
            pp = &(*pp)->hnext;
        if (*pp == k)
            *pp = k->hnext;
    }
    c->n -= o->n;
    o->oldest = o->newest = NULL;
    o->n = 0;
    size_t taken = 0;
    for (struct custody_copy *k = list, *nx; k != NULL; k = nx) {
        nx = k->next;
        if (k->fanout) {
            taken += take_fanout(k, fn, ud);
            free(k);
            continue;
        }
        Mk__Route *r = mk__route__unpack(NULL, k->len, k->route);
        if (r != NULL) {
            fn(ud, r);
            mk__route__free_unpacked(r, NULL);
            taken++;
        }
        free(k);
    }
    return taken;
}

size_t router_custody_kept(const struct router_custody *c)
{
    return c != NULL ? c->n : 0;
}

uint64_t router_custody_dropped(const struct router_custody *c)
{
    return c != NULL ? c->dropped : 0;
}
