/* pusher/window.c - per-sender completion windows: a ring of (seq, done) per sender, the front acknowledged once done. */
#include "window.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

struct window_entry {
    uint64_t seq;
    bool done;
};

struct window_sender {
    char *id;
    uint64_t epoch;
    struct window_entry *ring;     /* power-of-two capacity */
    size_t cap;
    size_t head;                   /* index of the oldest entry */
    size_t len;
    struct window_sender *next;
};

/* Few senders (the c2s and router processes): a list is enough. */
struct push_window {
    struct window_sender *senders;
    size_t pending;
};

struct push_window *push_window_new(void)
{
    return xcalloc(1, sizeof(struct push_window));
}

void push_window_free(struct push_window **wp)
{
    if (wp == NULL || *wp == NULL)
        return;
    struct window_sender *s = (*wp)->senders;
    while (s != NULL) {
        struct window_sender *next = s->next;
        free(s->id);
        free(s->ring);
        free(s);
        s = next;
    }
    free(*wp);
    *wp = NULL;
}

static struct window_sender *sender_find(const struct push_window *w, const char *id)
{
    for (struct window_sender *s = w->senders; s != NULL; s = s->next)
        if (strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

static struct window_entry *entry_at(const struct window_sender *s, size_t i)
{
    return &s->ring[(s->head + i) & (s->cap - 1)];
}

static uint64_t entry_seq(const void *sender, size_t i)
{
    return entry_at(sender, i)->seq;
}

static void ring_grow(struct window_sender *s)
{
    size_t cap = s->cap ? s->cap * 2 : 64;
    struct window_entry *ring = xmalloc(cap * sizeof *ring);
    for (size_t i = 0; i < s->len; i++)
        ring[i] = *entry_at(s, i);
    free(s->ring);
    s->ring = ring;
    s->cap = cap;
    s->head = 0;
}

void push_window_add(struct push_window *w, const char *sender, uint64_t epoch, uint64_t seq)
{
    struct window_sender *s = sender_find(w, sender);
    if (s == NULL) {
        s = xcalloc(1, sizeof *s);
        s->id = xstrdup(sender);
        s->epoch = epoch;
        s->next = w->senders;
        w->senders = s;
    }
    if (epoch != s->epoch) {
        w->pending -= s->len;
        s->len = 0;
        s->head = 0;
        s->epoch = epoch;
    }
    if (s->len == s->cap)
        ring_grow(s);
    struct window_entry *e = entry_at(s, s->len++);
    e->seq = seq;
    e->done = false;
    w->pending++;
}

bool push_window_done(struct push_window *w, const char *sender, uint64_t epoch, uint64_t seq, uint64_t *upto)
{
    struct window_sender *s = sender_find(w, sender);
    if (s == NULL || s->epoch != epoch || s->len == 0)
        return false;
    /* The entries are in increasing seq order. */
    size_t lo = mk_lower_bound(s->len, seq, entry_seq, s);
    if (lo == s->len || entry_at(s, lo)->seq != seq)
        return false;
    entry_at(s, lo)->done = true;
    if (lo != 0)
        return false;
    uint64_t last = 0;
    while (s->len > 0 && entry_at(s, 0)->done) {
        last = entry_at(s, 0)->seq;
        s->head = (s->head + 1) & (s->cap - 1);
        s->len--;
        w->pending--;
    }
    *upto = last;
    return true;
}

size_t push_window_pending(const struct push_window *w)
{
    return w != NULL ? w->pending : 0;
}
