/* common/bus.c - ZeroMQ on libev: one PULL inbox per process, one PUSH per peer. */
#include "bus.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "buf.h"
#include "env.h"
#include "log.h"
#include "util.h"

/* Envelopes decoded per loop iteration at most (checked between frames, so a batch
 * is never split), so one busy inbox does not starve the process's other watchers;
 * the rest waits for the next iteration. */
#define BUS_DRAIN_BUDGET 1000
#define BUS_DEFAULT_LINGER_MS 100

/* Batching: the envelopes bus_send accepts for a peer during one loop iteration go
 * out as ONE frame from the prepare watcher, because every zmq_send costs an I/O
 * thread wake-up. The frame is the protobuf encoding of `repeated bytes envelopes = 1`:
 * per envelope, the tag byte 0x0a, a varint length, the packed envelope. A packed
 * Envelope starts with its field 1 (version, a varint: tag 0x08), never with 0x0a,
 * so a receiver tells a batch from a single envelope by the first byte.
 * (ZeroMQ multipart was no option: it counts parts against the high-water mark and
 * rolls back a whole message when a later part hits it, losing accepted envelopes.) */
#define BUS_BATCH_TAG 0x0a
#define BUS_BATCH_FLUSH_BYTES (64u * 1024)    /* sent at once past this size */
#define BUS_BATCH_CAP_BYTES (1024u * 1024)    /* a held batch refuses more past this */
#define BUS_BATCH_CAP_DEFAULT 1000            /* envelopes, when hwm is ZeroMQ's default */
#define BUS_RETRY_SECS 0.010                  /* a held batch is retried this often */
#define BUS_VARINT_MAX 10
/* What CURVE adds to a frame on the wire (command name, nonce, MAC, flags), which
 * ZMQ_MAXMSGSIZE counts; a frame this bus sends stays this far under max_frame. */
#define BUS_FRAME_MARGIN 256

/* ZeroMQ asks the ZAP handler bound here, in the socket's own context, about every
 * CURVE client that connects to the inbox (RFC 27). */
#define BUS_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define BUS_ZAP_DOMAIN "meerkat"
#define BUS_MONITOR_ENDPOINT "inproc://meerkat.bus.monitor"
#define BUS_ZAP_PARTS 7     /* version, request id, domain, address, identity, mechanism, key */

struct bus_peer {
    char      *id;
    uint64_t   id_hash;
    void      *sock;       /* PUSH */
    struct buf batch;      /* envelopes accepted and not yet handed to ZeroMQ */
    size_t     batch_count;
    bool       held;       /* the last flush was refused (peer at its high-water mark) */
};

struct bus {
    struct ev_loop *loop;
    void           *ctx;
    void           *pull;
    char           *self;
    char           *endpoint;      /* as bound (ZMQ_LAST_ENDPOINT) */
    int             hwm;
    int             linger_ms;
    bus_recv_fn    *cb;
    void           *ud;

    /* ZMQ_FD is edge-triggered: io wakes the loop, check drains, prepare re-checks
     * ZMQ_EVENTS before the loop blocks and, if a frame is waiting, starts idle so
     * the loop does not block and the next check drains it. */
    ev_io           io;
    ev_prepare      prepare;
    ev_check        check;
    ev_idle         idle;
    bool            readable;      /* ZMQ_EVENTS said POLLIN, or the FD fired */
    /* Wakes the loop while a batch is held, so a blocked peer is retried (by the
     * prepare watcher) without spinning. */
    ev_timer        retry;
    size_t          nheld;         /* peers whose batch is held */
    size_t          batch_cap;     /* envelopes a batch may hold before refusing */

    struct bus_peer *peers;
    size_t          npeers;
    size_t          peers_cap;

    struct buf      packbuf;       /* reused by bus_send_env */
    struct bus_stats stats;

    size_t          max_frame;     /* 0 = no limit */
    bool            curve;
    struct bus_keys keys;          /* when curve */
    struct bus_keys client_keys;   /* what PUSH sockets present: keys, unless a test said otherwise */
    uint8_t         cluster_key[32];   /* the one client key the inbox accepts, binary */
    bus_key_check_fn *key_check;   /* or this decides, per key */
    void           *key_check_ud;
    zmq_msg_t      *cur_frame;     /* the frame being delivered (bus_frame_user) */
    /* The frame being delivered, kept across loop iterations when the receive budget ran
     * out inside it (a batch of envelopes that each did much work): the next iteration
     * goes on at frame_pos before it takes another frame. */
    zmq_msg_t       frame;
    bool            in_frame;
    size_t          frame_pos;
    size_t          frame_entries; /* entries of it delivered so far */
    size_t          charged;       /* bus_charge: extra work of the frame being delivered */
    /* The ZAP handler (REP) and the inbox's monitor (PAIR): low-rate sockets drained to
     * empty by on_check when their FD fired; nothing else touches them, so a drain
     * ending on ZMQ_EVENTS without POLLIN re-arms their edge. */
    void           *zap;
    void           *monitor;
    ev_io           zap_io;
    ev_io           monitor_io;
    bool            zap_readable;
    bool            monitor_readable;
};

static void set_err(char *err, size_t errlen, const char *what, const char *arg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s %s: %s", what, arg, zmq_strerror(zmq_errno()));
}

static int sock_set_int(void *sock, int opt, int val)
{
    return zmq_setsockopt(sock, opt, &val, sizeof val);
}

/* True when the inbox holds a frame. Reading ZMQ_EVENTS also processes the socket's
 * pending commands, which is what re-arms the edge-triggered ZMQ_FD. */
static bool inbox_has_frame(struct bus *bus)
{
    int events = 0;
    size_t sz = sizeof events;
    if (zmq_getsockopt(bus->pull, ZMQ_EVENTS, &events, &sz) == -1)
        return false;
    return (events & ZMQ_POLLIN) != 0;
}

static void recheck_inbox(struct bus *bus)
{
    if (inbox_has_frame(bus)) {
        bus->readable = true;
        if (!ev_is_active(&bus->idle))
            ev_idle_start(bus->loop, &bus->idle);
    }
}

static int push_frame(void *sock, const void *data, size_t len)
{
    int rc;
    do {
        rc = zmq_send(sock, data, len, ZMQ_DONTWAIT);
    } while (rc == -1 && errno == EINTR);
    return rc;
}

static bool peer_writable(void *sock)
{
    int events = 0;
    size_t sz = sizeof events;
    if (zmq_getsockopt(sock, ZMQ_EVENTS, &events, &sz) == -1)
        return false;
    return (events & ZMQ_POLLOUT) != 0;
}

static void set_held(struct bus *bus, struct bus_peer *p, bool held)
{
    if (p->held == held)
        return;
    p->held = held;
    if (held) {
        bus->nheld++;
        if (!ev_is_active(&bus->retry))
            ev_timer_again(bus->loop, &bus->retry);
    } else {
        bus->nheld--;
    }
}

/* Hands p's batch to ZeroMQ as one frame. Returns 0 (sent, or nothing to send), or -1
 * when ZeroMQ refused: the batch is kept, marked held, and retried later. */
static int peer_flush(struct bus *bus, struct bus_peer *p)
{
    if (p->batch_count == 0)
        return 0;
    /* zmq_send copies the frame before it looks at the mark: while the peer is known
     * to be full, ask ZMQ_EVENTS first instead of copying a large batch for nothing. */
    if (p->held && !peer_writable(p->sock))
        return -1;
    int rc = push_frame(p->sock, p->batch.data, p->batch.len);
    if (rc == -1 && errno == EAGAIN && peer_writable(p->sock)) {
        /* zmq_send looks at the socket's commands (the peer's "I have read up to
         * here") at most about once a millisecond; ZMQ_EVENTS looks now. Without
         * this second try, a batch would wait for the retry timer while the peer's
         * queue is in fact empty. */
        rc = push_frame(p->sock, p->batch.data, p->batch.len);
    }
    if (rc == -1) {
        if (errno != EAGAIN && !p->held)
            log_warn("bus_send_error", "peer=%s error=\"%s\"", p->id, zmq_strerror(errno));
        set_held(bus, p, true);
        return -1;
    }
    set_held(bus, p, false);
    bus->stats.frames_sent++;
    p->batch_count = 0;
    /* A batch that grew large while held does not keep its storage. */
    if (p->batch.cap > 4 * BUS_BATCH_FLUSH_BYTES)
        buf_release(&p->batch);
    else
        buf_reset(&p->batch);
    return 0;
}

static void flush_all(struct bus *bus)
{
    for (size_t i = 0; i < bus->npeers; i++)
        peer_flush(bus, &bus->peers[i]);
}

static void deliver(struct bus *bus, const void *data, size_t n)
{
    Mk__Envelope *e = env_decode(data, n);
    if (e == NULL) {
        bus->stats.dropped_bad++;
        log_warn("bus_bad_frame", "bytes=%zu", n);
        return;
    }
    bus->stats.received++;
    bus->stats.received_by_payload[(size_t)e->payload_case < BUS_PAYLOAD_SLOTS ? (size_t)e->payload_case
                                                                              : BUS_PAYLOAD_SLOTS - 1]++;
    bus->cb(bus, &e, bus->ud);
    env_free(&e);
}

/* Reads a protobuf varint at *pos (advanced past it). Returns -1 when it runs past
 * end or is longer than 64 bits allow. */
static int read_varint(const unsigned char *p, size_t end, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*pos >= end)
            return -1;
        unsigned char c = p[(*pos)++];
        v |= (uint64_t)(c & 0x7f) << shift;
        if ((c & 0x80) == 0) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Decodes one frame, a batch or a single envelope, and hands each envelope to the
 * callback. Returns the number of entries it held. A broken batch structure counts
 * one dropped_bad for the rest of the frame and keeps what came before it. */
/* Delivers bus->frame's entries from frame_pos on until *done (entries handled, plus
 * their bus_charge) reaches BUS_DRAIN_BUDGET. Returns true when the frame is finished
 * (every entry delivered, or the rest of a corrupt batch dropped). */
static bool handle_frame(struct bus *bus, size_t *done)
{
    size_t n = zmq_msg_size(&bus->frame);
    const unsigned char *p = zmq_msg_data(&bus->frame);
    bus->cur_frame = &bus->frame;
    if (n == 0 || p[0] != BUS_BATCH_TAG) {
        deliver(bus, p, n);
        *done += 1 + bus->charged;
        bus->charged = 0;
        bus->cur_frame = NULL;
        return true;
    }
    size_t pos = bus->frame_pos;
    bool finished = true;
    while (pos < n) {
        if (*done >= BUS_DRAIN_BUDGET) {
            finished = false;   /* the rest next iteration: the loop's timers and writes first */
            break;
        }
        uint64_t len;
        if (p[pos] != BUS_BATCH_TAG)
            goto bad;
        pos++;
        if (read_varint(p, n, &pos, &len) == -1 || len > n - pos)
            goto bad;
        deliver(bus, p + pos, (size_t)len);
        pos += (size_t)len;
        bus->frame_entries++;
        *done += 1 + bus->charged;
        bus->charged = 0;
    }
    bus->frame_pos = pos;
    bus->cur_frame = NULL;
    return finished;
bad:
    bus->stats.dropped_bad++;
    log_warn("bus_bad_batch", "bytes=%zu offset=%zu entries_before=%zu", n, pos, bus->frame_entries);
    *done += 1;
    bus->cur_frame = NULL;
    return true;
}

/* Receives frames (and goes on with one left unfinished) until BUS_DRAIN_BUDGET
 * envelopes were handled. Returns true when the inbox is empty (ZMQ_EVENTS without
 * POLLIN) and no frame is left unfinished, false when work remains for the next
 * iteration. */
static bool drain(struct bus *bus)
{
    bus->charged = 0;   /* a charge from outside a receive callback counts for nothing */
    size_t done = 0;
    while (done < BUS_DRAIN_BUDGET) {
        if (!bus->in_frame) {
            if (zmq_msg_recv(&bus->frame, bus->pull, ZMQ_DONTWAIT) == -1) {
                if (errno == EAGAIN)
                    break;
                if (errno != EINTR)
                    log_warn("bus_recv_error", "error=\"%s\"", zmq_strerror(errno));
                return false;   /* try again next iteration */
            }
            bus->stats.frames_received++;
            bus->in_frame = true;
            bus->frame_pos = 0;
            bus->frame_entries = 0;
        }
        if (!handle_frame(bus, &done))
            return false;
        /* Done with it: its bytes go now, not at the next receive. */
        bus->in_frame = false;
        zmq_msg_close(&bus->frame);
        zmq_msg_init(&bus->frame);
    }
    return !inbox_has_frame(bus);
}

static int recv_parts(void *sock, zmq_msg_t *parts, int max)
{
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t tmp, *m = n < max ? &parts[n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, ZMQ_DONTWAIT) == -1) {
            zmq_msg_close(m);
            for (int i = 0; i < n && i < max; i++)
                zmq_msg_close(&parts[i]);
            return n == 0 && errno == EAGAIN ? 0 : -1;
        }
        more = zmq_msg_more(m);
        if (m == &tmp)
            zmq_msg_close(m);
        n++;
    }
    return n < max ? n : max;
}

static bool part_is(zmq_msg_t *m, const char *s)
{
    size_t n = strlen(s);
    return zmq_msg_size(m) == n && memcmp(zmq_msg_data(m), s, n) == 0;
}

static void zap_send(void *sock, const void *data, size_t n, bool more)
{
    zmq_send(sock, data, n, ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0));
}

/* Answers one ZAP request (RFC 27): 200 for a CURVE client holding the cluster's key,
 * 400 for anything else. */
static void zap_answer(struct bus *bus, zmq_msg_t *parts, int n)
{
    bool ok = n == BUS_ZAP_PARTS && part_is(&parts[0], "1.0") && part_is(&parts[2], BUS_ZAP_DOMAIN)
              && part_is(&parts[5], "CURVE") && zmq_msg_size(&parts[6]) == sizeof bus->cluster_key;
    const char *user = "cluster";
    if (ok && bus->key_check != NULL) {
        user = bus->key_check(bus->key_check_ud, zmq_msg_data(&parts[6]));
        ok = user != NULL;
    } else if (ok) {
        ok = memcmp(zmq_msg_data(&parts[6]), bus->cluster_key, sizeof bus->cluster_key) == 0;
    }
    zap_send(bus->zap, "1.0", 3, true);
    if (n >= 2)
        zap_send(bus->zap, zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), true);
    else
        zap_send(bus->zap, "", 0, true);
    zap_send(bus->zap, ok ? "200" : "400", 3, true);
    zap_send(bus->zap, ok ? "OK" : "unknown key", ok ? 2 : 11, true);
    zap_send(bus->zap, ok ? user : "", ok ? strlen(user) : 0, true);
    zap_send(bus->zap, "", 0, false);
    if (!ok) {
        bus->stats.refused_key++;
        /* A refused client retries every ~100 ms: log the 1st, 2nd, 4th, 8th... refusal. */
        uint64_t k = bus->stats.refused_key;
        if ((k & (k - 1)) == 0) {
            char addr[64] = "?";
            if (n > 3)
                snprintf(addr, sizeof addr, "%.*s", (int)zmq_msg_size(&parts[3]), (const char *)zmq_msg_data(&parts[3]));
            log_warn("bus_refused", "reason=unknown_key address=%s refused_total=%llu", addr, (unsigned long long)k);
        }
    }
}

static bool aux_has_msg(void *sock)
{
    int events = 0;
    size_t sz = sizeof events;
    return zmq_getsockopt(sock, ZMQ_EVENTS, &events, &sz) == 0 && (events & ZMQ_POLLIN) != 0;
}

static void zap_serve(struct bus *bus)
{
    zmq_msg_t parts[BUS_ZAP_PARTS];
    do {
        int n = recv_parts(bus->zap, parts, BUS_ZAP_PARTS);
        if (n <= 0)
            continue;
        zap_answer(bus, parts, n);
        for (int i = 0; i < n; i++)
            zmq_msg_close(&parts[i]);
    } while (aux_has_msg(bus->zap));
}

static void monitor_drain(struct bus *bus)
{
    zmq_msg_t parts[2];
    do {
        int n = recv_parts(bus->monitor, parts, 2);
        if (n <= 0)
            continue;
        if (zmq_msg_size(&parts[0]) >= 6) {
            uint16_t ev;
            memcpy(&ev, zmq_msg_data(&parts[0]), sizeof ev);
            if (ev == ZMQ_EVENT_DISCONNECTED) {
                bus->stats.inbox_disconnects++;
            } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL || ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
                uint64_t k = ++bus->stats.refused_handshake;
                if ((k & (k - 1)) == 0)
                    log_warn("bus_refused", "reason=handshake refused_total=%llu", (unsigned long long)k);
            }
        }
        for (int i = 0; i < n; i++)
            zmq_msg_close(&parts[i]);
    } while (aux_has_msg(bus->monitor));
}

void bus_charge(struct bus *bus, size_t n)
{
    bus->charged += n;
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct bus *bus = w->data;
    bus->readable = true;   /* drained by on_check, later in this same iteration */
}

static void on_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
    /* Exists only to keep the loop from blocking while frames wait; on_check drains. */
}

static void on_check(struct ev_loop *loop, ev_check *w, int revents)
{
    struct bus *bus = w->data;
    if (bus->zap_readable) {
        bus->zap_readable = false;
        zap_serve(bus);
    }
    if (bus->monitor_readable) {
        bus->monitor_readable = false;
        monitor_drain(bus);
    }
    if (!bus->readable)
        return;
    if (drain(bus)) {
        bus->readable = false;
        ev_idle_stop(loop, &bus->idle);
    } else if (!ev_is_active(&bus->idle)) {
        ev_idle_start(loop, &bus->idle);
    }
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct bus *bus = w->data;
    /* Runs at EV_MINPRI, after the other prepare watchers (which may still send): the
     * envelopes of this whole iteration leave as one frame per peer. */
    flush_all(bus);
    /* Callbacks of this iteration may have consumed the FD's edge (ZeroMQ processes
     * commands inside many calls): never block while a frame is waiting. A send on a
     * PUSH socket processes that socket's commands only, never the inbox's. */
    recheck_inbox(bus);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct bus *bus = w->data;
    /* Only a wake-up: the prepare watcher, before the loop blocks again, retries. */
    if (bus->nheld == 0)
        ev_timer_stop(loop, w);
}

static void close_aux(struct bus *bus)
{
    if (bus->zap != NULL) {
        if (ev_is_active(&bus->zap_io)) {
            ev_ref(bus->loop);
            ev_io_stop(bus->loop, &bus->zap_io);
        }
        zmq_close(bus->zap);
        bus->zap = NULL;
    }
    if (bus->monitor != NULL) {
        if (ev_is_active(&bus->monitor_io)) {
            ev_ref(bus->loop);
            ev_io_stop(bus->loop, &bus->monitor_io);
        }
        if (bus->pull != NULL)
            zmq_socket_monitor(bus->pull, NULL, 0);
        zmq_close(bus->monitor);
        bus->monitor = NULL;
    }
}

static void on_aux_io(struct ev_loop *loop, ev_io *w, int revents)
{
    *(bool *)w->data = true;   /* drained by on_check, later in this same iteration */
}

/* Watches a socket's ZMQ_FD with w, which sets *flag when it fires. */
static int watch_aux(struct bus *bus, void *sock, ev_io *w, bool *flag)
{
    int fd;
    size_t fdlen = sizeof fd;
    if (zmq_getsockopt(sock, ZMQ_FD, &fd, &fdlen) == -1)
        return -1;
    ev_io_init(w, on_aux_io, fd, EV_READ);
    w->data = flag;
    ev_io_start(bus->loop, w);
    ev_unref(bus->loop);   /* bookkeeping: the inbox keeps the loop alive, not these */
    *flag = true;          /* something may be waiting already */
    return 0;
}

struct bus *bus_new(struct ev_loop *loop, const char *self_id, const char *inbox, int hwm,
                    bus_recv_fn *cb, void *ud, char *err, size_t errlen)
{
    const struct bus_options opts = {.hwm = hwm};
    return bus_open(loop, self_id, inbox, &opts, cb, ud, err, errlen);
}

struct bus *bus_open(struct ev_loop *loop, const char *self_id, const char *inbox, const struct bus_options *opts,
                     bus_recv_fn *cb, void *ud, char *err, size_t errlen)
{
    const struct bus_options none = {0};
    if (opts == NULL)
        opts = &none;
    int hwm = opts->hwm;
    if (self_id == NULL || self_id[0] == '\0' || inbox == NULL || cb == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "bus needs an identity, an inbox and a callback");
        errno = EINVAL;
        return NULL;
    }
    struct bus *bus = xcalloc(1, sizeof *bus);
    zmq_msg_init(&bus->frame);
    bus->loop = loop;
    bus->self = xstrdup(self_id);
    bus->hwm = hwm;
    bus->linger_ms = BUS_DEFAULT_LINGER_MS;
    bus->cb = cb;
    bus->ud = ud;
    bus->batch_cap = hwm > 0 ? (size_t)hwm : BUS_BATCH_CAP_DEFAULT;
    bus->max_frame = opts->max_frame;
    if (bus->max_frame != 0 && bus->max_frame < 2 * BUS_FRAME_MARGIN)
        bus->max_frame = 2 * BUS_FRAME_MARGIN;
    buf_init(&bus->packbuf);

    bus->ctx = zmq_ctx_new();
    if (bus->ctx == NULL) {
        set_err(err, errlen, "zmq_ctx_new", "");
        goto fail;
    }
    if (opts->curve != NULL) {
        bus->curve = true;
        bus->keys = *opts->curve;
        bus->client_keys = opts->curve_client != NULL ? *opts->curve_client : *opts->curve;
        bus->key_check = opts->key_check;
        bus->key_check_ud = opts->key_check_ud;
        if (zmq_z85_decode(bus->cluster_key, bus->keys.public_key) == NULL) {
            if (err != NULL && errlen > 0)
                snprintf(err, errlen, "the bus's CURVE public key is not Z85");
            goto fail;
        }
        /* The handler exists before the inbox accepts anyone: ZeroMQ lets every CURVE
         * client in when no handler is bound. */
        bus->zap = zmq_socket(bus->ctx, ZMQ_REP);
        if (bus->zap == NULL || sock_set_int(bus->zap, ZMQ_LINGER, 0) == -1
            || zmq_bind(bus->zap, BUS_ZAP_ENDPOINT) == -1
            || watch_aux(bus, bus->zap, &bus->zap_io, &bus->zap_readable) == -1) {
            set_err(err, errlen, "ZAP handler", BUS_ZAP_ENDPOINT);
            goto fail;
        }
    }
    bus->pull = zmq_socket(bus->ctx, ZMQ_PULL);
    if (bus->pull == NULL) {
        set_err(err, errlen, "zmq_socket PULL", inbox);
        goto fail;
    }
    int64_t maxmsg = bus->max_frame != 0 ? (int64_t)bus->max_frame : -1;
    if (sock_set_int(bus->pull, ZMQ_LINGER, bus->linger_ms) == -1
        || (hwm > 0 && sock_set_int(bus->pull, ZMQ_RCVHWM, hwm) == -1)
        || zmq_setsockopt(bus->pull, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) == -1) {
        set_err(err, errlen, "setsockopt", inbox);
        goto fail;
    }
    if (bus->curve
        && (sock_set_int(bus->pull, ZMQ_CURVE_SERVER, 1) == -1
            || zmq_setsockopt(bus->pull, ZMQ_CURVE_SECRETKEY, bus->keys.secret_key, 40) == -1
            || zmq_setsockopt(bus->pull, ZMQ_ZAP_DOMAIN, BUS_ZAP_DOMAIN, strlen(BUS_ZAP_DOMAIN)) == -1)) {
        set_err(err, errlen, "CURVE server", inbox);
        goto fail;
    }
    /* Refused handshakes and dropped connections are only visible as monitor events. */
    if (zmq_socket_monitor(bus->pull, BUS_MONITOR_ENDPOINT,
                           ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
                               | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) == -1
        || (bus->monitor = zmq_socket(bus->ctx, ZMQ_PAIR)) == NULL
        || sock_set_int(bus->monitor, ZMQ_LINGER, 0) == -1
        || zmq_connect(bus->monitor, BUS_MONITOR_ENDPOINT) == -1
        || watch_aux(bus, bus->monitor, &bus->monitor_io, &bus->monitor_readable) == -1) {
        set_err(err, errlen, "monitor", inbox);
        goto fail;
    }
    if (zmq_bind(bus->pull, inbox) == -1) {
        set_err(err, errlen, "bind", inbox);
        goto fail;
    }
    char last[256];
    size_t lastlen = sizeof last;
    if (zmq_getsockopt(bus->pull, ZMQ_LAST_ENDPOINT, last, &lastlen) == -1 || lastlen == 0)
        bus->endpoint = xstrdup(inbox);
    else
        bus->endpoint = xstrndup(last, strnlen(last, lastlen));

    int fd;
    size_t fdlen = sizeof fd;
    if (zmq_getsockopt(bus->pull, ZMQ_FD, &fd, &fdlen) == -1) {
        set_err(err, errlen, "ZMQ_FD", inbox);
        goto fail;
    }
    ev_io_init(&bus->io, on_io, fd, EV_READ);
    bus->io.data = bus;
    ev_io_start(loop, &bus->io);
    ev_prepare_init(&bus->prepare, on_prepare);
    bus->prepare.data = bus;
    ev_set_priority(&bus->prepare, EV_MINPRI);
    ev_prepare_start(loop, &bus->prepare);
    ev_unref(loop);     /* the io watcher keeps the loop alive, not the bookkeeping */
    ev_check_init(&bus->check, on_check);
    bus->check.data = bus;
    ev_check_start(loop, &bus->check);
    ev_unref(loop);
    ev_idle_init(&bus->idle, on_idle);
    bus->idle.data = bus;
    ev_init(&bus->retry, on_retry);
    bus->retry.repeat = BUS_RETRY_SECS;
    bus->retry.data = bus;
    /* Frames may have arrived between bind and now without a new edge. */
    bus->readable = true;
    return bus;

fail:
    close_aux(bus);
    if (bus->pull != NULL)
        zmq_close(bus->pull);
    if (bus->ctx != NULL)
        zmq_ctx_term(bus->ctx);
    bus_keys_wipe(&bus->keys);
    bus_keys_wipe(&bus->client_keys);
    buf_release(&bus->packbuf);
    free(bus->endpoint);
    free(bus->self);
    free(bus);
    return NULL;
}

void bus_set_linger(struct bus *bus, int ms)
{
    bus->linger_ms = ms;
    sock_set_int(bus->pull, ZMQ_LINGER, ms);
    for (size_t i = 0; i < bus->npeers; i++)
        sock_set_int(bus->peers[i].sock, ZMQ_LINGER, ms);
}

void bus_free(struct bus **bp)
{
    if (bp == NULL || *bp == NULL)
        return;
    struct bus *bus = *bp;
    /* A negative linger would make zmq_ctx_term wait forever for an absent peer. */
    int linger = bus->linger_ms >= 0 ? bus->linger_ms : BUS_DEFAULT_LINGER_MS;
    ev_io_stop(bus->loop, &bus->io);
    ev_ref(bus->loop);
    ev_prepare_stop(bus->loop, &bus->prepare);
    ev_ref(bus->loop);
    ev_check_stop(bus->loop, &bus->check);
    ev_idle_stop(bus->loop, &bus->idle);
    for (size_t i = 0; i < bus->npeers; i++) {
        struct bus_peer *p = &bus->peers[i];
        /* Best effort: what is accepted goes out within the linger, if the peer takes it. */
        p->held = false;
        if (peer_flush(bus, p) == -1)
            log_warn("bus_unsent_at_close", "peer=%s envelopes=%zu", p->id, p->batch_count);
    }
    ev_timer_stop(bus->loop, &bus->retry);   /* after the flushes, which may start it */
    for (size_t i = 0; i < bus->npeers; i++) {
        struct bus_peer *p = &bus->peers[i];
        sock_set_int(p->sock, ZMQ_LINGER, linger);
        zmq_close(p->sock);
        buf_release(&p->batch);
        free(p->id);
    }
    free(bus->peers);
    close_aux(bus);
    zmq_msg_close(&bus->frame);
    sock_set_int(bus->pull, ZMQ_LINGER, linger);
    zmq_close(bus->pull);
    while (zmq_ctx_term(bus->ctx) == -1 && errno == EINTR)
        ;
    bus_keys_wipe(&bus->keys);
    bus_keys_wipe(&bus->client_keys);
    buf_release(&bus->packbuf);
    free(bus->endpoint);
    free(bus->self);
    free(bus);
    *bp = NULL;
}

static struct bus_peer *find_peer(const struct bus *bus, const char *peer_id)
{
    uint64_t h = mk_hash64(peer_id, strlen(peer_id), 0);
    for (size_t i = 0; i < bus->npeers; i++) {
        if (bus->peers[i].id_hash == h && strcmp(bus->peers[i].id, peer_id) == 0)
            return &bus->peers[i];
    }
    return NULL;
}

bool bus_batch_waiting(const struct bus *bus, const char *peer_id)
{
    const struct bus_peer *p = find_peer(bus, peer_id);
    return p != NULL && p->batch_count > 0;
}

/* ZeroMQ's mark counts frames, and a frame is a batch of envelopes (up to 64 KiB):
 * the configured mark (envelopes) divided by a typical batch bounds a down peer's queue
 * in memory as the envelope mark did before batching. */
static int frame_hwm(int envelopes)
{
    int frames = envelopes / 64;
    return frames < 16 ? 16 : frames;
}

int bus_add_peer(struct bus *bus, const char *peer_id, const char *endpoint, char *err, size_t errlen)
{
    return bus_add_peer_with(bus, peer_id, endpoint, NULL, err, errlen);
}

int bus_add_peer_with(struct bus *bus, const char *peer_id, const char *endpoint, const struct bus_peer_options *po,
                      char *err, size_t errlen)
{
    const struct bus_peer_options defaults = {0};
    if (po == NULL)
        po = &defaults;
    if (peer_id == NULL || peer_id[0] == '\0' || endpoint == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "peer needs an identity and an endpoint");
        errno = EINVAL;
        return -1;
    }
    if (find_peer(bus, peer_id) != NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "peer %s already added", peer_id);
        errno = EEXIST;
        return -1;
    }
    void *sock = zmq_socket(bus->ctx, ZMQ_PUSH);
    if (sock == NULL) {
        set_err(err, errlen, "zmq_socket PUSH", endpoint);
        return -1;
    }
    /* IMMEDIATE=0: frames queue in the pipe while the peer is down or restarting. */
    if (sock_set_int(sock, ZMQ_LINGER, bus->linger_ms) == -1
        || sock_set_int(sock, ZMQ_IMMEDIATE, po->immediate ? 1 : 0) == -1
        || (bus->hwm > 0 && sock_set_int(sock, ZMQ_SNDHWM, frame_hwm(bus->hwm)) == -1)) {
        set_err(err, errlen, "setsockopt", endpoint);
        zmq_close(sock);
        return -1;
    }
    /* Every inbox of the cluster is a CURVE server with the cluster's key pair, and
     * this process is its client with the same pair. */
    if (bus->curve
        && (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, po->server_key != NULL ? po->server_key : bus->keys.public_key,
                           40) == -1
            || zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, bus->client_keys.public_key, 40) == -1
            || zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, bus->client_keys.secret_key, 40) == -1)) {
        set_err(err, errlen, "CURVE client", endpoint);
        zmq_close(sock);
        return -1;
    }
    if (zmq_connect(sock, endpoint) == -1) {
        set_err(err, errlen, "connect", endpoint);
        zmq_close(sock);
        return -1;
    }
    if (bus->npeers == bus->peers_cap) {
        bus->peers_cap = bus->peers_cap ? bus->peers_cap * 2 : 8;
        bus->peers = xrealloc(bus->peers, bus->peers_cap * sizeof *bus->peers);
    }
    struct bus_peer *p = &bus->peers[bus->npeers++];
    p->id = xstrdup(peer_id);
    p->id_hash = mk_hash64(peer_id, strlen(peer_id), 0);
    p->sock = sock;
    buf_init(&p->batch);
    p->batch_count = 0;
    p->held = false;
    return 0;
}

static void append_varint(struct buf *b, uint64_t v)
{
    unsigned char tmp[BUS_VARINT_MAX];
    size_t n = 0;
    while (v >= 0x80) {
        tmp[n++] = (unsigned char)((v & 0x7f) | 0x80);
        v >>= 7;
    }
    tmp[n++] = (unsigned char)v;
    buf_append(b, tmp, n);
}

/* Bytes a frame this bus sends may have. */
static size_t frame_limit(const struct bus *bus)
{
    return bus->max_frame != 0 ? bus->max_frame - BUS_FRAME_MARGIN : SIZE_MAX;
}

static bool batch_full(const struct bus *bus, const struct bus_peer *p, size_t len)
{
    size_t grown = p->batch.len + len + 1 + BUS_VARINT_MAX;
    return p->batch_count > 0
           && (p->batch_count >= bus->batch_cap || grown > BUS_BATCH_CAP_BYTES || grown > frame_limit(bus));
}

int bus_send(struct bus *bus, const char *peer_id, const void *data, size_t len)
{
    struct bus_peer *p = find_peer(bus, peer_id);
    if (p == NULL) {
        bus->stats.send_unknown++;
        errno = EHOSTUNREACH;
        return -1;
    }
    if (len > frame_limit(bus) - 1 - BUS_VARINT_MAX) {
        bus->stats.send_too_big++;
        log_warn("bus_send_too_big", "peer=%s bytes=%zu max_frame=%zu", peer_id, len, bus->max_frame);
        errno = EMSGSIZE;
        return -1;
    }
    /* At the cap: hand the batch over now if ZeroMQ takes it, else refuse, so that
     * back-pressure reaches the caller synchronously (rchan keeps the frame pending). */
    if (batch_full(bus, p, len) && (peer_flush(bus, p) == -1 || batch_full(bus, p, len))) {
        bus->stats.send_blocked++;
        errno = EAGAIN;
        return -1;
    }
    buf_reserve(&p->batch, len + 1 + BUS_VARINT_MAX);
    unsigned char tag = BUS_BATCH_TAG;
    buf_append(&p->batch, &tag, 1);
    append_varint(&p->batch, len);
    buf_append(&p->batch, data, len);
    p->batch_count++;
    bus->stats.sent++;
    /* A large batch goes now; a held one waits for the prepare watcher or the timer. */
    if (!p->held && p->batch.len >= BUS_BATCH_FLUSH_BYTES)
        peer_flush(bus, p);
    return 0;
}

int bus_send_env(struct bus *bus, const char *peer_id, Mk__Envelope *e)
{
    /* The caller's struct is borrowed: put its sender back once packed. */
    char *sender = e->sender;
    e->sender = bus->self;
    buf_reset(&bus->packbuf);
    env_pack(e, &bus->packbuf);
    e->sender = sender;
    return bus_send(bus, peer_id, bus->packbuf.data, bus->packbuf.len);
}

int bus_remove_peer(struct bus *bus, const char *peer_id, int linger_ms)
{
    struct bus_peer *p = find_peer(bus, peer_id);
    if (p == NULL) {
        errno = EHOSTUNREACH;
        return -1;
    }
    int rc = 0;
    set_held(bus, p, false);
    if (peer_flush(bus, p) == -1) {
        log_warn("bus_unsent_at_close", "peer=%s envelopes=%zu", p->id, p->batch_count);
        set_held(bus, p, false);
        rc = -1;
        errno = EAGAIN;
    }
    /* ZeroMQ keeps a closed socket (in its reaper) until what was queued is out or
     * the linger is over, then its connection goes too. */
    sock_set_int(p->sock, ZMQ_LINGER, linger_ms);
    zmq_close(p->sock);
    buf_release(&p->batch);
    free(p->id);
    *p = bus->peers[--bus->npeers];
    return rc;
}

const char *bus_self(const struct bus *bus)
{
    return bus->self;
}

const char *bus_frame_user(const struct bus *bus)
{
    if (bus->cur_frame == NULL)
        return NULL;
    return zmq_msg_gets(bus->cur_frame, "User-Id");
}

const char *bus_endpoint(const struct bus *bus)
{
    return bus->endpoint;
}

const struct bus_stats *bus_stats(const struct bus *bus)
{
    return &bus->stats;
}

size_t bus_peer_count(const struct bus *bus)
{
    return bus->npeers;
}
