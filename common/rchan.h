/* common/rchan.h - the reliable channel over the bus: numbered, acknowledged, re-sent, idempotent. */
#ifndef MK_COMMON_RCHAN_H
#define MK_COMMON_RCHAN_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "bus.h"
#include "meerkat.pb-c.h"

/* Sender side. One rchan_tx per (this process, receiver). Each message gets
 * rc_epoch (this incarnation, microseconds at start) and rc_seq 1,2,3...; it is kept
 * until the receiver acknowledges it and re-sent, from the oldest, when no ack has
 * advanced for resend_ms (the receiver restarted, or the bus dropped it at the HWM);
 * each further round without progress waits twice as long, up to 8 x resend_ms (a
 * receiver that is down or waiting on its own downstream is not flooded), and
 * rchan_tx_resend (the receiver's Hello) re-sends at once.
 * Every frame also carries rc_base, the oldest seq still kept when it was (re)sent:
 * a receiver that lost its state learns from it where to resume. */
struct rchan_tx;

/* max_pending bounds the unacknowledged messages; past it rchan_send refuses (EAGAIN):
 * back-pressure the caller must report. Borrows bus and peer (must outlive the tx). */
struct rchan_tx *rchan_tx_new(struct ev_loop *loop, struct bus *bus, const char *peer,
                              size_t max_pending, unsigned resend_ms);
void rchan_tx_free(struct rchan_tx **tp);
/* Numbers e (sets rc_epoch, rc_seq), packs and keeps a copy, sends it. Borrows e.
 * Returns the sequence number (>0), or 0 with errno EAGAIN when max_pending are unacknowledged. */
uint64_t rchan_send(struct rchan_tx *tx, Mk__Envelope *e);
/* While held, rchan_send numbers and keeps a message but does not hand it to the bus:
 * rchan_tx_pump (or the re-send timer's tick, an ack, a Hello) sends what waits. For a
 * sender that batches messages nobody waits for (push events) into fewer frames. */
void rchan_tx_hold(struct rchan_tx *tx, bool hold);
/* While paused, nothing of tx goes to the bus, not even a re-send (the timer, an ack,
 * a Hello): messages are numbered and kept, and leave in order once it is unpaused.
 * A c2s pauses its Routes to a router shard added at a reload until the shards that
 * owned those JIDs before are done with what it sent them (c2s/handover.c). */
void rchan_tx_pause(struct rchan_tx *tx, bool paused);
bool rchan_tx_paused(const struct rchan_tx *tx);
/* The seq of the last message rchan_send numbered (0: none yet). */
uint64_t rchan_tx_last(const struct rchan_tx *tx);
/* Hands the bus every kept message not yet sent this round, in order, until the bus
 * refuses (high-water mark: the rest go on the next tick or ack). */
void rchan_tx_pump(struct rchan_tx *tx);
/* Kept messages not yet handed to the bus (held, or refused at the high-water mark). */
size_t rchan_tx_unsent(const struct rchan_tx *tx);
/* A cumulative ack (no held seqs): drops every kept message <= upto. An Ack from the
 * wire goes to rchan_tx_on_ack (below). */
void rchan_tx_ack(struct rchan_tx *tx, uint64_t epoch, uint64_t upto);
size_t rchan_tx_pending(const struct rchan_tx *tx);
/* True when max_pending are unacknowledged: rchan_send would refuse now. */
bool rchan_tx_full(const struct rchan_tx *tx);
/* This sender's incarnation: unique within the process (two senders to the same peer
 * never share one), so an Ack names the sender it is for. */
uint64_t rchan_tx_epoch(const struct rchan_tx *tx);
/* True when the message numbered seq (a return of rchan_send) is acknowledged: the
 * receiver is done with it. */
bool rchan_tx_acked(const struct rchan_tx *tx, uint64_t seq);
/* True when the receiver has applied every message up to seq, though it may still hold
 * some of them (selective ack: their copies stay here until it releases them). */
bool rchan_tx_passed(const struct rchan_tx *tx, uint64_t seq);
/* The oldest seq not acknowledged (the next to be numbered when nothing is pending):
 * what a receiver that lost its state may take as the start of this channel. */
uint64_t rchan_tx_base(const struct rchan_tx *tx);
/* The oldest unacknowledged message: its seq, its packed envelope as sent (borrowed,
 * valid until the next call on tx) and when rchan_send took it (loop time). Returns
 * false when nothing is pending. A sender that gives up on it (too old to be useful)
 * drops it with rchan_tx_ack(tx, rchan_tx_epoch(tx), seq): later frames then carry the
 * new rc_base, and the receiver moves past it. */
bool rchan_tx_oldest(struct rchan_tx *tx, uint64_t *seq, const void **data, size_t *len, ev_tstamp *queued_at);
/* Re-sends everything pending now (e.g. on a Hello from a restarted receiver), the
 * copies the receiver held first. */
void rchan_tx_resend(struct rchan_tx *tx);

/* Selective acknowledgement. A receiver may hold a message it applied (rchan_rx_hold):
 * its acks move past it but name it as held, and the sender keeps that copy - counted
 * in rchan_tx_pending and against max_pending, not rchan_tx_acked - until the receiver
 * releases it. A held copy is not re-sent by the timer (the receiver has it); it goes
 * again, before anything else, to the receiver's next incarnation: on its Hello
 * (rchan_tx_resend) or when an ack names a newer holder. Such a copy carries an rc_base
 * above its rc_seq, which tells the receiver it is one of these. An Ack lists at most
 * RCHAN_ACK_MAX_LIST held and as many released seqs. */
#define RCHAN_ACK_MAX_LIST 4096
/* NULL when an Ack from the wire is well-formed (held strictly ascending, none 0 nor
 * above upto, lists within RCHAN_ACK_MAX_LIST, no released seq 0), else why not. */
const char *rchan_ack_invalid(const Mk__Ack *ack);
/* Applies an Ack: frees what it acknowledges, keeps what it holds, frees what it
 * releases, re-sends what an older holder held when it names a newer one. An Ack for
 * another epoch is ignored (0). Returns -1 with *why (static text) for a malformed one,
 * of which nothing is applied. */
int rchan_tx_on_ack(struct rchan_tx *tx, const Mk__Ack *ack, const char **why);
/* Copies the receiver holds (part of rchan_tx_pending). */
size_t rchan_tx_held(const struct rchan_tx *tx);
/* A sender name ("<role>.<index>", the Envelope's sender) as 64 bits: with a channel's
 * epoch and a seq it names one message of one channel (proto MamFence). Borrows name. */
uint64_t rchan_sender_key(const char *name);

/* Receiver side. Tracks, per sender, the epoch and the highest sequence applied.
 * The application tells it what is done; one cumulative ack per sender goes back
 * RCHAN_ACK_DELAY_MS after the first message it covers was done, or at the end of the
 * loop iteration once RCHAN_ACK_BATCH are done, and at once for a duplicate - or
 * sooner, at the end of any loop iteration in which anything else leaves for that
 * sender (it rides in that frame). The delay costs the sender only memory (its copies
 * live that much longer; resends wait for far longer), and saves a frame and a
 * wake-up of the sender per loop iteration. */
#define RCHAN_ACK_DELAY_MS 50
#define RCHAN_ACK_BATCH 256
struct rchan_rx;

struct rchan_rx *rchan_rx_new(struct ev_loop *loop, struct bus *bus);
void rchan_rx_free(struct rchan_rx **rp);
/* Classifies an incoming envelope that carries rc_seq. A sender or incarnation not
 * seen before resumes at the frame's rc_base (everything below it was acknowledged),
 * so frames that were queued before a restart of this receiver and arrive ahead of
 * the re-sent oldest one are gaps, not a new starting point:
 *   RCHAN_NEW   - the next in order: apply it, then call rchan_rx_done()
 *   RCHAN_DUP   - already applied: drop it (an ack is re-sent)
 *   RCHAN_GAP   - a later one arrived before a missing one: drop it; the sender re-sends in order. */
enum rchan_verdict {
    RCHAN_NEW = 0,
    RCHAN_DUP,
    RCHAN_GAP,
};
enum rchan_verdict rchan_rx_check(struct rchan_rx *rx, const Mk__Envelope *e);
/* Marks (sender, epoch, seq) as applied (committed, delivered); the ack follows. */
void rchan_rx_done(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq);
/* A receiver whose senders wait on nothing but memory for its acks (the pusher: an
 * event's copy stays with its emitter until then) acknowledges less often: delay_ms
 * instead of RCHAN_ACK_DELAY_MS, and batch instead of RCHAN_ACK_BATCH (both >= 1). Each
 * ack is a bus frame and a wake-up of its sender. Keep delay_ms well under the senders'
 * resend_ms, and batch under their max_pending. */
void rchan_rx_set_ack_delay(struct rchan_rx *rx, unsigned delay_ms, unsigned batch);
/* Sends the acks that are due now instead of at the end of the loop iteration (a
 * process about to exit). */
void rchan_rx_flush(struct rchan_rx *rx);
/* Strict mode, off by default; it matters only for frames without rc_base (senders
 * that do not give one). A sender never seen (and not restored) or a new epoch
 * is accepted only from seq 1; anything else is a GAP until the re-send from the
 * oldest arrives. For a receiver whose durable state covers every sender since its
 * first start (an empty state means nothing was ever applied): after a restart, frames
 * queued before the crash may arrive ahead of the re-sent oldest one, and accepting
 * them would skip the lost ones. A receiver without durable state must leave it off,
 * or a sender whose first messages were acknowledged would never be accepted. */
void rchan_rx_set_strict(struct rchan_rx *rx, bool strict);
/* Restores a sender's applied position after a restart (from durable storage), so a
 * re-sent message is recognised as a duplicate. */
void rchan_rx_restore(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq);

/* Selective acknowledgement (see the sender's side above). At most max messages are held
 * at once over all senders (0, the default: none; rchan_rx_hold refuses). */
void rchan_rx_set_max_held(struct rchan_rx *rx, size_t max);
/* Marks (sender, epoch, seq) as applied but held: acknowledged like done, except that the
 * sender keeps its copy and re-sends it to this receiver's next incarnation, until
 * rchan_rx_release (or rchan_rx_done of that seq). Call it where rchan_rx_done would
 * go (in order). Returns false - nothing marked, call rchan_rx_done or refuse - when
 * max messages are held, or for an incarnation of the sender we have moved past.
 * A held copy re-sent to a new incarnation of this receiver comes as RCHAN_NEW from
 * rchan_rx_check, already held (past max if need be: the senders' max_pending bound
 * it); a second copy is RCHAN_DUP. */
bool rchan_rx_hold(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq);
/* (A held copy re-sent finds room up to twice max over all senders; past that, or with
 * max 0, it is a GAP, logged.) */
/* The held message is done: the sender drops its copy (in the next ack). Nothing when it
 * is not held (released already, or the sender restarted since). */
void rchan_rx_release(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq);
/* True when (sender, epoch, seq) is held here. */
bool rchan_rx_is_held(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq);
/* Messages held over all senders. */
size_t rchan_rx_held(const struct rchan_rx *rx);
#endif
