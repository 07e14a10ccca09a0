/* router/custody.h - the router's custody table: a copy of each message Deliver sent to a c2s, kept until that c2s reports it done, routed again if the c2s restarts (kill -9) first. */
#ifndef MK_ROUTER_CUSTODY_H
#define MK_ROUTER_CUSTODY_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "meerkat.pb-c.h"

/* Why: a Route is acknowledged to its sender's c2s once routed (router/intake.c), but a
 * Deliver travels to the recipient's c2s with a plain send and waits there in stream
 * management queues and output buffers; a c2s killed with -9 would lose it. The copy
 * here is what the router routes again when it learns of the restart.
 *
 * Ids: the top 16 bits are the router's index + 1 (the c2s sends CustodyDone there), the
 * low 48 a counter that starts at the incarnation's start time in microseconds, so a
 * late CustodyDone meant for the previous incarnation names no copy of this one. Each
 * id is unique in the router, whatever the c2s. A copy is kept for copies target
 * sessions (one Deliver may name several of the user's sessions on that c2s); each
 * reports once. Per c2s the copies are in arrival order: past max_per_c2s the oldest
 * is forgotten (counted). Cost: one hash insert and one delete per message, the copy's
 * packed bytes in one allocation. */
struct router_custody;

/* A table for router of index router_index, keeping at most max_per_c2s copies per c2s
 * (0: none; router_custody_keep then always answers 0). */
struct router_custody *router_custody_new(unsigned router_index, size_t max_per_c2s);
/* Frees the table and every copy (NULL-safe); *cp is NULL on return. */
void router_custody_free(struct router_custody **cp);

/* Keeps a copy of r (borrowed; packed here), delivered to c2s (borrowed name) for
 * copies target sessions, with archive_id as the copy's mam_id when it is not 0 (so that
 * routing it again archives and stores it under the same id: once). Returns its custody
 * id, or 0 when nothing is kept (table off, copies 0). Past the cap the c2s's oldest copy
 * is forgotten first. */
uint64_t router_custody_keep(struct router_custody *c, const char *c2s, const Mk__Route *r, uint64_t archive_id,
                             uint32_t copies);
/* The same for a fan-out Deliver (router/fanout.c) to c2s: the templates stanzas[0, nst)
 * (Route.to_at) and the full JIDs of its target sessions tos[0, copies) are kept as one
 * copy; router_custody_take hands back, per JID in order, each stanza made whole for it
 * (env_route_fill). Borrows everything. Returns its custody id, or 0 as above. */
uint64_t router_custody_keep_fanout(struct router_custody *c, const char *c2s, Mk__Route *const *stanzas, size_t nst,
                                    char *const *tos, uint32_t copies);
/* c2s (borrowed) is done with one target session of each id (borrowed array of n): a
 * copy all of whose sessions are done is forgotten. Ids unknown, or kept for another
 * c2s, are ignored (a late report, a previous incarnation). Returns how many copies were
 * forgotten. */
size_t router_custody_done(struct router_custody *c, const char *c2s, const uint64_t *ids, size_t n);

/* A stream-management session moved from c2s from to c2s to (XEP-0198 resumption on
 * another c2s) with its unacknowledged queue; to (borrowed, like from and ids) reports
 * that the queue's copies of these ids (n) are its own now: each copy kept for from is
 * charged to to as one target session, so that to reports it done, or its restart routes
 * it again. A copy that never moved is taken from whichever c2s holds it (a session
 * handed on again, A -> B -> C, whose C report overtook B's: B's, late, is ignored); one
 * that moved only from from. Ids unknown are ignored. A fan-out copy (group chat) does
 * not move: it counts as done for from. Returns how many moved. */
size_t router_custody_move(struct router_custody *c, const char *from, const char *to, const uint64_t *ids, size_t n);

/* c2s (borrowed) said something about custody at now_us (a CustodyDone, even an empty
 * one: its keep-alive; its Hello). Returns true when it had been given up as silent
 * (router_custody_silent) since it was last heard: it is back, and the router tells it to
 * register its sessions again. */
bool router_custody_heard(struct router_custody *c, const char *c2s, int64_t now_us);
/* A c2s with copies kept and not heard for timeout_us (0: never) at now_us, marked
 * given up (borrowed name, valid until the table is freed), or NULL: one per call. Its
 * copies are the caller's to take (router_custody_take) as on a restart: a c2s scaled
 * down or removed never says hello again. A c2s never heard is counted silent from the
 * first copy ever kept for it. */
const char *router_custody_silent(struct router_custody *c, int64_t now_us, int64_t timeout_us);

/* Called for each copy router_custody_take hands back (a fan-out copy: once per
 * recipient and stanza): r is the kept Route (borrowed, valid during the call), to be routed again from its original sender. fn may keep new
 * copies in the table (for other c2s). */
typedef void router_custody_fn(void *ud, const Mk__Route *r);
/* c2s restarted: every copy kept for it is forgotten and handed to fn, oldest first.
 * Returns how many. */
size_t router_custody_take(struct router_custody *c, const char *c2s, router_custody_fn *fn, void *ud);

/* Copies kept now, all c2s together; copies forgotten past the cap since the start. */
size_t router_custody_kept(const struct router_custody *c);
uint64_t router_custody_dropped(const struct router_custody *c);
#endif
