/* common/rchan_set.h - one reliable-channel sender per configured process of a role: shard choice, ack routing, re-send on Hello. */
#ifndef MK_COMMON_RCHAN_SET_H
#define MK_COMMON_RCHAN_SET_H
#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "bus.h"
#include "cfg.h"
#include "meerkat.pb-c.h"
#include "rchan.h"

/* What c2s (archive writes, routes), the router (archive and offline writes) and later
 * the pusher and gd keep once per receiving role: an rchan_tx to each configured process
 * of that role. A process may hold several sets towards the same role (the router's
 * archive and offline writes to the mam shards): each tx has an epoch of its own, and
 * an Ack is taken by the set whose tx it names. The receiving process keeps one rchan_rx
 * per channel (it tells them apart by payload): one rx fed by two senders of one
 * process would take the older epoch for a dead incarnation. */
struct rchan_set;

/* One rchan_tx (max_pending, resend_ms: see rchan_tx_new) per process of role in cfg.
 * Borrows loop, bus and cfg (they must outlive the set). Returns NULL when cfg has no
 * process of that role (every other call accepts NULL: no peer, nothing pending). */
struct rchan_set *rchan_set_new(struct ev_loop *loop, struct bus *bus, const struct cfg *cfg, enum cfg_role role,
                                size_t max_pending, unsigned resend_ms);
/* Frees the set and its senders; what is unacknowledged is lost (NULL-safe). */
void rchan_set_free(struct rchan_set **sp);

/* The sender to the process id, or NULL when it is not one of the set. Borrowed. */
struct rchan_tx *rchan_set_peer(struct rchan_set *set, const char *id);
/* The sender to the shard of key (cfg_shard over the role: a bare JID), or NULL. Borrowed. */
struct rchan_tx *rchan_set_shard(struct rchan_set *set, const char *key);

/* After a reload (cfg_adopt_procs on the cfg the set borrows): a sender to each process
 * of the role that the set has none for yet. Fills added with the new senders (at most
 * max; borrowed) and returns how many. */
size_t rchan_set_add_new(struct rchan_set *set, struct rchan_tx **added, size_t max);
/* The set's senders by position (0 <= i < rchan_set_size), id set to the peer's. */
size_t rchan_set_size(const struct rchan_set *set);
struct rchan_tx *rchan_set_at(struct rchan_set *set, size_t i, const char **id);

/* Envelope hook. An Ack from a peer of the set whose epoch is that of the set's sender
 * to it is applied and true is returned (consumed). A Hello from a peer of the set
 * re-sends what that peer has not acknowledged (it restarted) and returns false, so
 * other hooks see the Hello too. Anything else: false. Borrows e. */
bool rchan_set_on_envelope(struct rchan_set *set, const Mk__Envelope *e);

/* True when some peer's sender is at its max_pending (rchan_send would refuse): a
 * cheap check before work that must not be done for a message that cannot be sent. */
bool rchan_set_full(const struct rchan_set *set);
/* Unacknowledged messages over all peers (metrics, graceful stop), held ones included. */
size_t rchan_set_pending(const struct rchan_set *set);
/* Of those, the ones a receiver holds (rchan_rx_hold): applied there, kept here. */
size_t rchan_set_held(const struct rchan_set *set);
#endif
