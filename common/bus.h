/* common/bus.h - ZeroMQ on libev: one PULL inbox per process, one PUSH per peer. */
#ifndef MK_COMMON_BUS_H
#define MK_COMMON_BUS_H
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "meerkat.pb-c.h"

struct bus;

/* Called once per decoded envelope received on the inbox (a frame is a batch of
 * envelopes, or one envelope as sent by tools). The callback consumes
 * *envp (leave it for the bus to free after the call, or set it to NULL to keep it). */
typedef void bus_recv_fn(struct bus *bus, Mk__Envelope **envp, void *ud);

struct bus_stats {
    uint64_t sent;          /* envelopes accepted for a peer */
    uint64_t received;      /* envelopes decoded */
    uint64_t dropped_bad;   /* envelopes that did not decode, plus one per broken batch */
    uint64_t send_blocked;  /* sends refused while the peer's batch is at its cap (EAGAIN) */
    uint64_t send_unknown;  /* sends to a peer never added */
};

/* Creates the process's bus: a ZeroMQ context, a PULL socket bound at inbox
 * (borrowed string, e.g. "tcp://127.0.0.1:7100"), watched on loop through ZMQ_FD.
 * hwm is the high-water mark for inbox and every PUSH (0 = ZeroMQ's default).
 * Returns NULL with err on failure (bad endpoint, address in use). */
struct bus *bus_new(struct ev_loop *loop, const char *self_id, const char *inbox, int hwm,
                    bus_recv_fn *cb, void *ud, char *err, size_t errlen);
/* Hands each peer's unsent batch to ZeroMQ (best effort: a peer at its high-water
 * mark loses it), closes sockets (linger bounded to 100 ms unless bus_set_linger)
 * and frees *bp; NULL-safe. */
void bus_free(struct bus **bp);
void bus_set_linger(struct bus *bus, int ms);

/* Adds a peer: a PUSH socket connected to endpoint. Connecting never blocks; frames
 * queue (up to hwm) while the peer is down or restarting. Returns 0, or -1 with err. */
int bus_add_peer(struct bus *bus, const char *peer_id, const char *endpoint, char *err, size_t errlen);
/* Queues one env_pack'ed envelope for peer without blocking; borrows data (copied).
 * The envelopes queued for a peer during a loop iteration leave as one frame (a
 * batch: per envelope, 0x0a, a varint length, the bytes) when the iteration ends, or
 * at once past 64 KiB. When ZeroMQ refuses the frame (the peer at its high-water
 * mark) the batch is held and retried; while a held batch is at its cap (hwm
 * envelopes, 1000 with hwm 0, or 1 MiB) further sends are refused.
 * Returns 0, or -1 with errno EHOSTUNREACH (unknown peer) or EAGAIN (peer's batch at
 * its cap; counted in send_blocked). */
int bus_send(struct bus *bus, const char *peer_id, const void *data, size_t len);
/* Packs e (sender and version filled in) and sends it; same returns as bus_send. Borrows e. */
int bus_send_env(struct bus *bus, const char *peer_id, Mk__Envelope *e);

const char *bus_self(const struct bus *bus);
/* The endpoint the inbox is bound at, as ZeroMQ reports it: with a wildcard port
 * ("tcp://127.0.0.1:*") this is the port actually chosen. Borrowed, lives with the bus. */
const char *bus_endpoint(const struct bus *bus);
const struct bus_stats *bus_stats(const struct bus *bus);
/* Number of frames waiting in the inbox pipe is not observable in ZeroMQ; this
 * returns how many peers were added. */
size_t bus_peer_count(const struct bus *bus);
#endif
