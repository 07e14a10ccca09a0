/* common/bus.h - ZeroMQ on libev: one PULL inbox per process, one PUSH per peer. */
#ifndef MK_COMMON_BUS_H
#define MK_COMMON_BUS_H
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "meerkat.pb-c.h"

struct bus;

/* Called once per decoded envelope received on the inbox. The callback consumes
 * *envp (leave it for the bus to free after the call, or set it to NULL to keep it). */
typedef void bus_recv_fn(struct bus *bus, Mk__Envelope **envp, void *ud);

struct bus_stats {
    uint64_t sent;          /* frames queued to a peer */
    uint64_t received;      /* frames decoded */
    uint64_t dropped_bad;   /* frames that did not decode */
    uint64_t send_blocked;  /* sends refused at the high-water mark (EAGAIN) */
    uint64_t send_unknown;  /* sends to a peer never added */
};

/* Creates the process's bus: a ZeroMQ context, a PULL socket bound at inbox
 * (borrowed string, e.g. "tcp://127.0.0.1:7100"), watched on loop through ZMQ_FD.
 * hwm is the high-water mark for inbox and every PUSH (0 = ZeroMQ's default).
 * Returns NULL with err on failure (bad endpoint, address in use). */
struct bus *bus_new(struct ev_loop *loop, const char *self_id, const char *inbox, int hwm,
                    bus_recv_fn *cb, void *ud, char *err, size_t errlen);
/* Closes sockets (linger bounded to 100 ms unless bus_set_linger) and frees *bp; NULL-safe. */
void bus_free(struct bus **bp);
void bus_set_linger(struct bus *bus, int ms);

/* Adds a peer: a PUSH socket connected to endpoint. Connecting never blocks; frames
 * queue (up to hwm) while the peer is down or restarting. Returns 0, or -1 with err. */
int bus_add_peer(struct bus *bus, const char *peer_id, const char *endpoint, char *err, size_t errlen);
/* Sends one frame (an env_pack'ed envelope) to peer without blocking. Borrows data.
 * Returns 0, or -1 with errno EHOSTUNREACH (unknown peer) or EAGAIN (peer's queue
 * at its high-water mark; counted in send_blocked). */
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
