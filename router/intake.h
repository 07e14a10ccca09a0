/* router/intake.h - Route envelopes from c2s on the reliable channel: held until every c2s has its sessions back, applied in order, acknowledged once their archive and offline writes are. */
#ifndef MK_ROUTER_INTAKE_H
#define MK_ROUTER_INTAKE_H
#include <stdbool.h>
#include <stddef.h>

#include "meerkat.pb-c.h"

struct router;
struct router_intake;

#define ROUTER_SYNC_TIMEOUT_MS 3000u  /* after a start, route held Routes anyway once this passed */
#define ROUTER_HOLD_MAX 200000u       /* Routes held while syncing; past it, channel ones wait for the re-send */

/* What a c2s accepted from a client is acknowledged by this router only once it is
 * done: delivered (handed to the owning c2s), bounced or dropped by RFC 6121, and its
 * archive and offline writes acknowledged by their mam shards. A kill -9 before that
 * makes the c2s re-send it to the next incarnation, which applies it again: the archive
 * and offline rows carry the c2s's id (stored once), a delivery may be repeated (with
 * the same <stanza-id/>).
 *
 * After a start the router holds every Route until each configured c2s has said its
 * sessions are all re-registered (Resync{done}, or a hello of its own: it restarted
 * and has none), or ROUTER_SYNC_TIMEOUT_MS passed; then applies them in arrival order.
 * Borrows rt (its table, archive, offline set and node). */
struct router_intake *router_intake_new(struct router *rt);
void router_intake_free(struct router_intake **ip);

/* Envelope hook for Route envelopes: on the channel (rc_seq) or not (bounces from other
 * routers and mam shards), applied now or held; and for Fanout envelopes (a room's copies
 * from another router shard: router_fanout), held the same way. Returns true when e is
 * a Route or a Fanout (then consumed; a held one is taken: *envp set to NULL). */
bool router_intake_on_envelope(struct router_intake *in, Mk__Envelope **envp);
/* The c2s has re-registered all its sessions here (Resync{done}), or said hello first
 * (it restarted: none to re-register). Borrows c2s. */
void router_intake_c2s_synced(struct router_intake *in, const char *c2s);
/* A mam shard acknowledged writes: acknowledges the Routes now done. */
void router_intake_progress(struct router_intake *in);
/* Graceful stop: no Route is applied from now on (the c2s re-send them to the next
 * incarnation). */
void router_intake_stop(struct router_intake *in);
/* Routes applied and waiting for their writes' acknowledgements. */
size_t router_intake_waiting(const struct router_intake *in);
/* Sends the due acknowledgements now (before exit). */
void router_intake_flush(struct router_intake *in);
/* Selective acknowledgement of a Route handed to gd (router_gd_hold): it stays with its
 * c2s (re-sent to this router's next incarnation) until released. At most
 * ROUTER_GD_MAX_KEPT are held; router_intake_hold returns false past it. */
bool router_intake_hold(struct router_intake *in, const char *c2s, uint64_t epoch, uint64_t seq);
void router_intake_release(struct router_intake *in, const char *c2s, uint64_t epoch, uint64_t seq);
#endif
