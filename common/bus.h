/* common/bus.h - ZeroMQ on libev: one PULL inbox per process, one PUSH per peer. */
#ifndef MK_COMMON_BUS_H
#define MK_COMMON_BUS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "bus_keys.h"
#include "meerkat.pb-c.h"

struct bus;

/* Called once per decoded envelope received on the inbox (a frame is a batch of
 * envelopes, or one envelope as sent by tools). The callback consumes
 * *envp (leave it for the bus to free after the call, or set it to NULL to keep it). */
typedef void bus_recv_fn(struct bus *bus, Mk__Envelope **envp, void *ud);

#define BUS_PAYLOAD_SLOTS 128    /* received_by_payload: one per Envelope payload field number */

struct bus_stats {
    uint64_t sent;          /* envelopes accepted for a peer */
    uint64_t frames_sent;   /* frames (batches) handed to ZeroMQ */
    uint64_t frames_received; /* frames read from the inbox */
    uint64_t received;      /* envelopes decoded */
    uint64_t dropped_bad;   /* envelopes that did not decode, plus one per broken batch */
    uint64_t send_blocked;  /* sends refused while the peer's batch is at its cap (EAGAIN) */
    uint64_t send_unknown;  /* sends to a peer never added */
    uint64_t send_too_big;  /* envelopes refused: larger than a frame may be (EMSGSIZE) */
    uint64_t refused_key;   /* inbound connections refused: a CURVE client key not the cluster's */
    uint64_t refused_handshake; /* inbound connections whose handshake failed (no CURVE, garbage) */
    uint64_t inbox_disconnects; /* inbound connections dropped: a peer gone, or a frame ZeroMQ
                                 * refused (over max_frame, broken framing) */
    /* Envelopes decoded, by payload field number (the last slot: any number past it). */
    uint64_t received_by_payload[BUS_PAYLOAD_SLOTS];
};

/* Decides whether a CURVE client may connect to the inbox: key is its 32-byte public
 * key (borrowed). Returns the name the connection is known by (borrowed, must live as
 * long as the bus; bus_frame_user gives it back for each frame from it), or NULL to
 * refuse (counted in refused_key). */
typedef const char *bus_key_check_fn(void *ud, const unsigned char key[32]);

/* How the bus is set up. */
struct bus_options {
    int hwm;                        /* high-water mark for inbox and every PUSH (0 = ZeroMQ's default) */
    size_t max_frame;               /* bytes: the inbox refuses a larger frame (ZMQ_MAXMSGSIZE: ZeroMQ
                                     * drops the connection, counted in inbox_disconnects) and this bus
                                     * never sends one (0 = no limit) */
    const struct bus_keys *curve;   /* the cluster's key pair (borrowed, copied), or NULL for no CURVE.
                                     * With it the inbox is a CURVE server that accepts only clients with
                                     * the cluster's public key (a ZAP handler on the loop; refusals
                                     * counted in refused_key), and every PUSH is a CURVE client. */
    const struct bus_keys *curve_client; /* tests only: the pair every PUSH presents instead of curve's
                                     * (the servers' key stays curve's public key); NULL = curve */
    bus_key_check_fn *key_check;    /* with curve: which client keys the inbox accepts, instead of the
                                     * cluster's one key (the links between data centers trust several) */
    void *key_check_ud;
};

/* How one peer's PUSH socket is set up (bus_add_peer_with). */
struct bus_peer_options {
    const char *server_key;         /* Z85 public key of the peer's inbox (borrowed); NULL = the bus's own */
    bool immediate;                 /* ZMQ_IMMEDIATE: refuse (EAGAIN, batch held) while no connection is up,
                                     * instead of queueing in ZeroMQ for a peer that may never come */
};

/* Creates the process's bus: a ZeroMQ context, a PULL socket bound at inbox
 * (borrowed string, e.g. "tcp://127.0.0.1:7100"), watched on loop through ZMQ_FD.
 * hwm is the high-water mark for inbox and every PUSH (0 = ZeroMQ's default).
 * Returns NULL with err on failure (bad endpoint, address in use). */
struct bus *bus_new(struct ev_loop *loop, const char *self_id, const char *inbox, int hwm,
                    bus_recv_fn *cb, void *ud, char *err, size_t errlen);
/* bus_new with every option (opts borrowed; NULL = all defaults: no CURVE, no frame limit). */
struct bus *bus_open(struct ev_loop *loop, const char *self_id, const char *inbox, const struct bus_options *opts,
                     bus_recv_fn *cb, void *ud, char *err, size_t errlen);
/* Hands each peer's unsent batch to ZeroMQ (best effort: a peer at its high-water
 * mark loses it), closes sockets (linger bounded to 100 ms unless bus_set_linger)
 * and frees *bp; NULL-safe. */
void bus_free(struct bus **bp);
void bus_set_linger(struct bus *bus, int ms);

/* Adds a peer: a PUSH socket connected to endpoint. Connecting never blocks; frames
 * queue (up to hwm) while the peer is down or restarting. Returns 0, or -1 with err. */
int bus_add_peer(struct bus *bus, const char *peer_id, const char *endpoint, char *err, size_t errlen);
/* bus_add_peer with per-peer options (po borrowed; NULL = bus_add_peer's defaults). */
int bus_add_peer_with(struct bus *bus, const char *peer_id, const char *endpoint, const struct bus_peer_options *po,
                      char *err, size_t errlen);
/* Removes a peer added for a while (an admin tool's reply inbox): its batch is handed
 * to ZeroMQ now and its socket closed with linger_ms, within which ZeroMQ still
 * delivers what was queued; then nothing of the peer remains. Returns 0, or -1 with
 * errno EHOSTUNREACH (unknown peer) or EAGAIN (its batch could not be handed over and
 * is lost, logged). */
int bus_remove_peer(struct bus *bus, const char *peer_id, int linger_ms);
/* Queues one env_pack'ed envelope for peer without blocking; borrows data (copied).
 * The envelopes queued for a peer during a loop iteration leave as one frame (a
 * batch: per envelope, 0x0a, a varint length, the bytes) when the iteration ends, or
 * at once past 64 KiB. When ZeroMQ refuses the frame (the peer at its high-water
 * mark) the batch is held and retried; while a held batch is at its cap (hwm
 * envelopes, 1000 with hwm 0, or 1 MiB) further sends are refused.
 * A batch never grows past the bus's max_frame; an envelope that alone would is refused.
 * Returns 0, or -1 with errno EHOSTUNREACH (unknown peer), EAGAIN (peer's batch at
 * its cap; counted in send_blocked) or EMSGSIZE (larger than a frame may be;
 * counted in send_too_big). */
int bus_send(struct bus *bus, const char *peer_id, const void *data, size_t len);
/* Packs e (sender and version filled in) and sends it; same returns as bus_send. Borrows e. */
int bus_send_env(struct bus *bus, const char *peer_id, Mk__Envelope *e);

const char *bus_self(const struct bus *bus);
/* Inside the receive callback: the envelope being handled did the work of n more
 * envelopes (a group chat fan-out sends one copy per occupant). Counted against this
 * loop iteration's receive budget, so that a run of fan-outs ends the iteration sooner
 * and the loop's timers and writes get their turn. Borrows bus. */
void bus_charge(struct bus *bus, size_t n);
/* True when envelopes for peer_id (borrowed) wait to leave in this loop iteration's
 * frame: one more sent now rides in it at no cost of its own. */
bool bus_batch_waiting(const struct bus *bus, const char *peer_id);
/* Inside the receive callback: the name key_check gave the connection the frame came
 * in on (borrowed, valid during the callback), or NULL (no key_check, no CURVE). */
const char *bus_frame_user(const struct bus *bus);
/* The endpoint the inbox is bound at, as ZeroMQ reports it: with a wildcard port
 * ("tcp://127.0.0.1:*") this is the port actually chosen. Borrowed, lives with the bus. */
const char *bus_endpoint(const struct bus *bus);
const struct bus_stats *bus_stats(const struct bus *bus);
/* Number of frames waiting in the inbox pipe is not observable in ZeroMQ; this
 * returns how many peers were added. */
size_t bus_peer_count(const struct bus *bus);
#endif
