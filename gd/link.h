/* gd/link.h - the links between the gd processes of data centers: ZeroMQ over TCP with CURVE, the reliable channel, queues bounded per peer. */
#ifndef MK_GD_LINK_H
#define MK_GD_LINK_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "bus_keys.h"
#include "metrics.h"

/* The version of GdFrame this link writes; a frame with a newer one is refused. */
#define GD_LINK_VERSION 1u
/* The key file of a data center's CURVE pair, under its keys directory. */
#define GD_LINK_KEYS_FILE "gd_curve.key"

/* One link end: this data center's gd. It binds one inbox (a CURVE server that
 * accepts only the trusted peers' public keys) and keeps, per peer data center, one
 * outgoing socket (a CURVE client with this data center's pair, which checks the
 * peer's server key) and one reliable channel (common/rchan): every message is
 * numbered, kept until the peer acknowledges it, re-sent when the link comes back,
 * delivered to the peer's callback once and in order.
 * While a peer is unreachable its messages wait in its queue, bounded by count
 * (gd_link_send refuses past it) and by age (older ones are handed back to the
 * expired callback). One gd per data center holds the link: a peer data center is
 * one endpoint at a time.
 * Each end heartbeats a Hello to each peer naming the peer's incarnation as last
 * heard and where its channel to it stands (epoch, oldest unacknowledged seq). A link
 * end takes a peer's frames only after such a Hello for its own incarnation: a
 * restarted receiver never starts a channel from a stale copy of a frame that its
 * previous incarnation already applied (a copy re-sent and buffered before the acks
 * arrived). What a receiver had applied but not yet acknowledged when it was killed
 * is sent again to the next incarnation (at least once; gd_link_defer narrows that
 * to "handed on and acknowledged by the router"). */
struct gd_link;

/* A trusted peer data center. */
struct gd_link_peer_conf {
    const char *dc;          /* its name, as its frames give it */
    const char *public_key;  /* its CURVE public key, 40 characters of Z85 */
    const char *endpoint;    /* "tcp://host:port" of its inbox, or NULL until known */
};

/* Everything the link needs; strings are borrowed (copied by gd_link_new). */
struct gd_link_params {
    const char *dc;                 /* this data center's name */
    struct bus_keys keys;           /* this data center's CURVE pair (gd_link_keys_load) */
    const char *bind;               /* the inbox, "tcp://0.0.0.0:7600" ("tcp://127.0.0.1:*" picks a port) */
    const struct gd_link_peer_conf *peers;
    size_t npeers;
    size_t queue_max;               /* messages kept per peer, unacknowledged (0 = 10000) */
    double queue_max_age;           /* seconds a message may wait for its ack (0 = 30) */
    unsigned resend_ms;             /* re-send what is unacknowledged after this long without
                                     * progress, doubling up to 8x (0 = 1000) */
    double heartbeat;               /* seconds between heartbeats to each peer; a peer not heard
                                     * for 3 heartbeats is down (0 = 1) */
    size_t max_frame;               /* bytes a frame on the link may have (0 = 4 MiB) */
    unsigned ttl;                   /* hops a new message may take (0 = 4) */
};

/* A message as sent and received. */
struct gd_link_msg {
    const char *origin;      /* the data center where it entered GD; on send, NULL for a message
                              * entering GD here, or the received origin for a forward */
    unsigned ttl;            /* hops left; on send with origin NULL, 0 means params.ttl; a forward
                              * passes the received ttl - 1 (0 is refused: EINVAL) */
    uint64_t msg_id;         /* the caller's id */
    const void *payload;     /* opaque bytes */
    size_t len;
};

/* Called once per message from peer dc `from`, in the order it was sent. m and its
 * strings and payload are borrowed for the call. When it returns the message is
 * acknowledged (the sender forgets it), unless the callback called gd_link_defer. */
typedef void gd_link_recv_fn(void *ud, const char *from, const struct gd_link_msg *m);
/* Called for a message the link gives up on: it waited queue_max_age for its ack
 * (the peer unreachable). m is borrowed for the call; the caller stores it offline
 * or answers resource-constraint. If it had been sent before the link broke, the
 * peer may have applied it and only the ack was lost (at most the messages in flight
 * at the cut). */
typedef void gd_link_expired_fn(void *ud, const char *peer, const struct gd_link_msg *m);
/* Called when a peer goes up (heard from) or down (silent for 3 heartbeats). */
typedef void gd_link_state_fn(void *ud, const char *peer, bool up);
/* Called when messages to peer left its queue: acknowledged by the peer, or handed to
 * the expired callback (just before). gd_link_unacked_from tells which. */
typedef void gd_link_acked_fn(void *ud, const char *peer);

struct gd_link_callbacks {
    gd_link_recv_fn *recv;          /* required */
    gd_link_expired_fn *expired;    /* NULL: expired messages are only counted */
    gd_link_acked_fn *acked;        /* may be NULL */
    gd_link_state_fn *state;        /* may be NULL */
    void *ud;
};

/* Reads (with create, makes first, and its directory 0700) the key file at path
 * (borrowed; gd.keys.secret_file, by default <data_dir>/GD_LINK_KEYS_FILE), mode 0600,
 * as bus_keys_load does for the bus. Returns 0, or -1 with one sentence in err. */
int gd_link_keys_load(const char *path, bool create, struct bus_keys *keys, char *err, size_t errlen);

/* Binds the inbox and connects to every peer with an endpoint. Borrows p (copied)
 * and cb (copied). metrics may be NULL; otherwise the link registers its families
 * (meerkat_gd_link_*, label peer = a configured dc name) and keeps them current.
 * Returns NULL with err: bad key, duplicate or self peer, address in use. */
struct gd_link *gd_link_new(struct ev_loop *loop, const struct gd_link_params *p, const struct gd_link_callbacks *cb,
                            struct metrics *metrics, char *err, size_t errlen);
/* Sends the acks due, hands queued frames to ZeroMQ (bounded linger) and frees *lp;
 * NULL-safe; never from inside one of its callbacks. Unacknowledged messages are lost with the process (their senders are
 * told nothing: gd's core decides what a stop means). */
void gd_link_free(struct gd_link **lp);

/* Queues m for peer (borrowed; copied). Returns 0 (it will be delivered once, in
 * order, or handed to the expired callback), or -1 with errno:
 * EHOSTUNREACH - peer is not a trusted data center;
 * EAGAIN       - queue_max messages wait for the peer already (counted): the caller
 *                stores it offline or answers resource-constraint;
 * EMSGSIZE     - larger than max_frame;
 * EINVAL       - a forward (m->origin set) with no hop left (m->ttl 0): a loop, not sent. */
int gd_link_send(struct gd_link *l, const char *peer, const struct gd_link_msg *m);

/* The number on peer's channel of the last message gd_link_send accepted for it (0:
 * none, or an unknown peer). Numbers increase by one per message. */
uint64_t gd_link_last_seq(const struct gd_link *l, const char *peer);
/* The oldest number still waiting for peer's acknowledgement: every message numbered
 * below it is acknowledged by the peer or was handed to the expired callback. */
uint64_t gd_link_unacked_from(const struct gd_link *l, const char *peer);

/* A received message whose acknowledgement waits for gd_link_done. */
struct gd_link_ticket {
    const char *from;        /* the peer (borrowed from the link; lives as long as it) */
    uint64_t epoch;          /* the sender's channel incarnation */
    uint64_t seq;            /* the message's number on it */
};
/* Only inside the recv callback: the message is not done when the callback returns
 * (e.g. gd's core hands it to its router and waits for the router's ack); fills *t.
 * Until gd_link_done, the sender keeps it, and a restart of this process before then
 * gets it again from the sender: nothing is lost between the link and the router. */
void gd_link_defer(struct gd_link *l, struct gd_link_ticket *t);
/* The deferred message is done: acknowledged at the end of the loop iteration.
 * Acknowledgements are cumulative: done for a message also acknowledges every earlier
 * one from the same peer, so call it in the order the messages were received.
 * Borrows t. A ticket of an incarnation the peer has since replaced is ignored. */
void gd_link_done(struct gd_link *l, const struct gd_link_ticket *t);

/* Adds a trusted peer at run time (strings borrowed; endpoint may be NULL). Returns 0,
 * or -1 with err (bad key, name taken, our own name). */
int gd_link_add_peer(struct gd_link *l, const struct gd_link_peer_conf *pc, char *err, size_t errlen);
/* Sets, changes (a new socket; what is unacknowledged is re-sent there) or with
 * endpoint NULL forgets where peer dc listens; its queue and channel stay. Borrows
 * the strings. Returns 0, or -1 with err (unknown peer, bad endpoint). Setting the
 * endpoint it already has does nothing. */
int gd_link_set_endpoint(struct gd_link *l, const char *dc, const char *endpoint, char *err, size_t errlen);

/* The endpoint the inbox is bound at (the port chosen, with "*"). Borrowed. */
const char *gd_link_endpoint(const struct gd_link *l);
/* True while peer has been heard within 3 heartbeats. */
bool gd_link_peer_up(const struct gd_link *l, const char *peer);
/* Messages waiting for peer's ack (queued and in flight); 0 for an unknown peer. */
size_t gd_link_queue_depth(const struct gd_link *l, const char *peer);

/* Counters, for tests and gd's logs (the metrics carry the same). */
struct gd_link_stats {
    uint64_t sent;               /* messages accepted by gd_link_send */
    uint64_t received;           /* messages handed to the recv callback */
    uint64_t duplicates;         /* frames already applied, dropped (re-sends) */
    uint64_t unsynced;           /* frames dropped before the peer's Hello for this incarnation
                                  * said where its channel stands (re-sent after it) */
    uint64_t refused_full;       /* gd_link_send refusals: queue_max reached */
    uint64_t expired;            /* messages given up after queue_max_age */
    uint64_t refused_key;        /* connections refused: a client key not trusted */
    uint64_t refused_handshake;  /* connections whose handshake failed (no CURVE, garbage) */
    uint64_t refused_decode;     /* frames that are not an envelope of ours (or a newer envelope) */
    uint64_t refused_version;    /* GdFrames of a newer version */
    uint64_t refused_origin;     /* frames whose sender is not the data center of their key,
                                  * or claiming to come from this one */
    uint64_t refused_ttl;        /* GdFrames with no hop left */
    uint64_t refused_other;      /* envelopes of a kind the link does not carry */
};
/* Current counters (bus figures read now). */
void gd_link_stats(const struct gd_link *l, struct gd_link_stats *out);

/* Decodes one envelope as the inbox does and says what the link would do with it,
 * without a socket: for the fuzz target and tests. user is the data center the
 * connection's key belongs to (borrowed). Returns the stats field name it counts in
 * ("received" for a GdFrame that would be handed on, "ack", "hello", or "refused_*"). */
const char *gd_link_classify(const char *self_dc, const char *user, const void *data, size_t len);
#endif
