/* common/rchan_set.c - one reliable-channel sender per configured process of a role: shard choice, ack routing, re-send on Hello. */
#include "rchan_set.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

struct rchan_set_peer {
    const char *id;             /* borrowed from the config */
    struct rchan_tx *tx;
};

struct rchan_set {
    struct ev_loop *loop;
    struct bus *bus;
    size_t max_pending;
    unsigned resend_ms;
    const struct cfg *cfg;
    enum cfg_role role;
    struct rchan_set_peer *peers;
    size_t npeers;
};

struct rchan_set *rchan_set_new(struct ev_loop *loop, struct bus *bus, const struct cfg *cfg, enum cfg_role role,
                                size_t max_pending, unsigned resend_ms)
{
    const struct cfg_proc *procs[256];
    size_t n = cfg_procs_of_role(cfg, role, procs, MK_ARRAY_LEN(procs));
    if (n == 0)
        return NULL;
    struct rchan_set *set = xcalloc(1, sizeof *set);
    set->loop = loop;
    set->bus = bus;
    set->max_pending = max_pending;
    set->resend_ms = resend_ms;
    set->cfg = cfg;
    set->role = role;
    set->peers = xcalloc(n, sizeof *set->peers);
    for (size_t i = 0; i < n; i++) {
        set->peers[i].id = procs[i]->id;
        set->peers[i].tx = rchan_tx_new(loop, bus, procs[i]->id, max_pending, resend_ms);
    }
    set->npeers = n;
    return set;
}

void rchan_set_free(struct rchan_set **sp)
{
    if (sp == NULL || *sp == NULL)
        return;
    struct rchan_set *set = *sp;
    for (size_t i = 0; i < set->npeers; i++)
        rchan_tx_free(&set->peers[i].tx);
    free(set->peers);
    free(set);
    *sp = NULL;
}

struct rchan_tx *rchan_set_peer(struct rchan_set *set, const char *id)
{
    if (set == NULL || id == NULL)
        return NULL;
    /* Few peers (one per process of a role): a scan beats hashing. */
    for (size_t i = 0; i < set->npeers; i++)
        if (strcmp(set->peers[i].id, id) == 0)
            return set->peers[i].tx;
    return NULL;
}

size_t rchan_set_add_new(struct rchan_set *set, struct rchan_tx **added, size_t max)
{
    if (set == NULL)
        return 0;
    const struct cfg_proc *procs[256];
    size_t n = cfg_procs_of_role(set->cfg, set->role, procs, MK_ARRAY_LEN(procs)), k = 0;
    for (size_t i = 0; i < n; i++) {
        if (rchan_set_peer(set, procs[i]->id) != NULL)
            continue;
        set->peers = xrealloc(set->peers, (set->npeers + 1) * sizeof *set->peers);
        struct rchan_set_peer *p = &set->peers[set->npeers++];
        p->id = procs[i]->id;
        p->tx = rchan_tx_new(set->loop, set->bus, procs[i]->id, set->max_pending, set->resend_ms);
        if (k < max)
            added[k++] = p->tx;
    }
    return k;
}

size_t rchan_set_size(const struct rchan_set *set)
{
    return set != NULL ? set->npeers : 0;
}

struct rchan_tx *rchan_set_at(struct rchan_set *set, size_t i, const char **id)
{
    if (set == NULL || i >= set->npeers)
        return NULL;
    if (id != NULL)
        *id = set->peers[i].id;
    return set->peers[i].tx;
}

struct rchan_tx *rchan_set_shard(struct rchan_set *set, const char *key)
{
    if (set == NULL || key == NULL)
        return NULL;
    const struct cfg_proc *p = cfg_shard(set->cfg, set->role, key);
    return p != NULL ? rchan_set_peer(set, p->id) : NULL;
}

bool rchan_set_on_envelope(struct rchan_set *set, const Mk__Envelope *e)
{
    if (set == NULL)
        return false;
    struct rchan_tx *tx;
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_ACK:
        tx = rchan_set_peer(set, e->sender);
        if (tx == NULL || e->ack == NULL || e->ack->epoch != rchan_tx_epoch(tx))
            return false;
        const char *why;
        if (rchan_tx_on_ack(tx, e->ack, &why) == -1)
            log_warn("rchan_ack_refused", "peer=%s reason=\"%s\" upto=%llu held=%zu released=%zu", e->sender, why,
                     (unsigned long long)e->ack->upto, e->ack->n_held, e->ack->n_released);
        return true;
    case MK__ENVELOPE__PAYLOAD_HELLO:
        tx = rchan_set_peer(set, e->sender);
        if (tx != NULL)
            rchan_tx_resend(tx);
        return false;
    default:
        return false;
    }
}

size_t rchan_set_pending(const struct rchan_set *set)
{
    size_t n = 0;
    for (size_t i = 0; set != NULL && i < set->npeers; i++)
        n += rchan_tx_pending(set->peers[i].tx);
    return n;
}

size_t rchan_set_held(const struct rchan_set *set)
{
    size_t n = 0;
    for (size_t i = 0; set != NULL && i < set->npeers; i++)
        n += rchan_tx_held(set->peers[i].tx);
    return n;
}

bool rchan_set_full(const struct rchan_set *set)
{
    for (size_t i = 0; set != NULL && i < set->npeers; i++)
        if (rchan_tx_full(set->peers[i].tx))
            return true;
    return false;
}
