/* common/push_emit.h - the emitting side of the event pusher (c2s, router): which kinds each hosted domain wants, event ids, the reliable channel to the pushers, drops counted. */
#ifndef MK_COMMON_PUSH_EMIT_H
#define MK_COMMON_PUSH_EMIT_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "meerkat.pb-c.h"

struct node;
struct push_emit;

/* Unacknowledged events are re-sent after this (rchan_tx_new's resend_ms). */
#define PUSH_EMIT_RESEND_MS 2000u
/* Events are not handed to the bus one by one: they wait up to PUSH_EMIT_BATCH_MS
 * (nobody waits on a push event) or until PUSH_EMIT_BATCH_MAX wait, then go in one bus
 * frame per pusher. At chat rates an event per message would otherwise cost a frame of
 * its own (ZeroMQ and CurveZMQ work, a wake-up of the pusher) for every message; at
 * 2,000 events/s per emitter the count fills a frame first (128 events every 64 ms);
 * at 125 events/s 100 ms makes about 12 events per frame where 20 ms made 2.5 (0.39
 * frames read by the pusher per message at 250 chat msgs/s). */
#define PUSH_EMIT_BATCH_MS 100u
/* The events XEP-0357 pushes and counts by (stored offline, delivered to a detached
 * session, a resource online or offline) shorten their batch to this: a phone may be
 * waiting, and the count of messages since the user was last online needs a user's
 * presence events (from the c2s) and stored events (from the router) to reach the pusher
 * in about the order they happened, as do a registration removed and made again (a
 * notice from the c2s) and the stored events around it. Webhook-only kinds (sent,
 * delivered, groupchat) keep PUSH_EMIT_BATCH_MS. */
#define PUSH_EMIT_URGENT_MS 20u
#define PUSH_EMIT_BATCH_MAX 128u

/* The emitter of a process, or NULL when no hosted domain wants any event kind (no
 * backend configured, or no pusher process: cfg_push_events): then nothing is ever
 * emitted, no channel exists, and every other call accepts the NULL at no cost.
 * The kinds are computed here, once per hosted domain; a channel (rchan_set over
 * CFG_ROLE_PUSHER, cfg->pusher.max_pending_events per pusher) is opened; metrics
 * meerkat_push_events_emitted_total{kind}, meerkat_push_events_dropped_total{reason} and
 * meerkat_push_events_unacknowledged are registered with n's metrics. Borrows n (it must outlive the emitter). */
struct push_emit *push_emit_new(struct node *n);
/* Frees (NULL-safe). Events still waiting for their batch are handed to the bus first
 * (they leave with its linger); what is unacknowledged is lost. */
void push_emit_free(struct push_emit **pp);

/* The kinds (CFG_PUSH_BIT mask) wanted for the user's domain (len bytes, need not be
 * NUL-terminated): 0 when pe is NULL or the domain is not hosted. A few comparisons of
 * the hosted domains, done by the caller before building an event. */
uint32_t push_emit_kinds(const struct push_emit *pe, const char *domain, size_t len);

/* Sends ev to the pusher of ev->user (rendezvous on the bare JID) on the reliable
 * channel, after giving it its id ("<process id>.<start us>.<n>", kept across re-sends
 * since the channel re-sends the packed copy) and, when 0, its stamp_us. Never waits:
 * when the pusher's window is full (down, or far behind) the event is dropped and
 * counted (reason "backpressure"). The event leaves within PUSH_EMIT_BATCH_MS. The caller has checked push_emit_kinds. Borrows ev
 * (its id field is set to a buffer of pe's, valid until the next call).
 * Returns 0, or -1 when dropped. */
int push_emit_send(struct push_emit *pe, Mk__PushEvent *ev);

/* Envelope hook: an Ack of a pusher for this channel (true: consumed); a pusher's Hello
 * re-sends what it has not acknowledged (false: others see it too). Borrows e. */
bool push_emit_on_envelope(struct push_emit *pe, const Mk__Envelope *e);
/* Events not yet acknowledged (graceful stop, metrics). */
size_t push_emit_pending(const struct push_emit *pe);

/* "sent", "delivered", ... for a kind (metric labels, logs). */
const char *push_emit_kind_name(Mk__PushEventKind kind);
#endif
