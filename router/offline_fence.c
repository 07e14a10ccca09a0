/* router/offline_fence.c - OfflineFetch to a c2s once the offline writes made before its session became available are stored. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "node.h"
#include "offline_fence.h"
#include "rchan.h"
#include "rchan_set.h"
#include "router.h"
#include "util.h"

#define FENCE_MAX_WAITING 100000u   /* past it an OfflineFetch goes at once (a fetch too early, not none) */

struct fence_wait {
    char *owner;                   /* bare JID */
    char *c2s;
    uint64_t session_id;
    struct rchan_tx *tx;           /* the owner's mam shard channel (the set's) */
    uint64_t seq;                  /* the last offline write sent on it when the session became available */
    struct fence_wait *next;
};

struct router_offline_fence {
    struct router *rt;
    struct fence_wait *head;
    struct fence_wait **tail;
    size_t n;
};

struct router_offline_fence *router_offline_fence_new(struct router *rt)
{
    struct router_offline_fence *f = xcalloc(1, sizeof *f);
    f->rt = rt;
    f->tail = &f->head;
    return f;
}

static void wait_free(struct fence_wait *w)
{
    free(w->owner);
    free(w->c2s);
    free(w);
}

void router_offline_fence_free(struct router_offline_fence **fp)
{
    if (fp == NULL || *fp == NULL)
        return;
    struct router_offline_fence *f = *fp;
    while (f->head != NULL) {
        struct fence_wait *w = f->head;
        f->head = w->next;
        wait_free(w);
    }
    free(f);
    *fp = NULL;
}

static void send_fetch(struct router_offline_fence *f, const char *owner, const char *c2s, uint64_t session_id)
{
    Mk__OfflineFetch of = MK__OFFLINE_FETCH__INIT;
    of.owner = (char *)owner;
    of.c2s = (char *)c2s;
    of.session_id = session_id;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_OFFLINE_FETCH;
    e.offline_fetch = &of;
    node_send(f->rt->node, c2s, &e);
}

void router_offline_fence_add(struct router_offline_fence *f, const struct router_sess *s)
{
    if (f == NULL || f->rt->offline == NULL || s == NULL || s->c2s == NULL)
        return;
    char *owner = xstrndup(s->full, s->user->bare_len);
    struct rchan_tx *tx = rchan_set_shard(f->rt->offline, owner);
    size_t pending = tx != NULL ? rchan_tx_pending(tx) : 0;
    if (pending == 0 || f->n >= FENCE_MAX_WAITING) {
        send_fetch(f, owner, s->c2s->id, s->session_id);
        free(owner);
        return;
    }
    struct fence_wait *w = xcalloc(1, sizeof *w);
    w->owner = owner;
    w->c2s = xstrdup(s->c2s->id);
    w->session_id = s->session_id;
    w->tx = tx;
    w->seq = rchan_tx_base(tx) + pending - 1;   /* acknowledgements are cumulative */
    *f->tail = w;
    f->tail = &w->next;
    f->n++;
}

void router_offline_fence_progress(struct router_offline_fence *f)
{
    if (f == NULL || f->head == NULL)
        return;
    struct fence_wait **pp = &f->head;
    while (*pp != NULL) {
        struct fence_wait *w = *pp;
        if (!rchan_tx_acked(w->tx, w->seq)) {
            pp = &w->next;
            continue;
        }
        send_fetch(f, w->owner, w->c2s, w->session_id);
        *pp = w->next;
        f->n--;
        wait_free(w);
    }
    f->tail = pp;
}
