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

/* Frames decoded per loop iteration at most, so one busy inbox does not starve the
 * process's other watchers; the rest waits for the next iteration. */
#define BUS_DRAIN_BUDGET 1000
#define BUS_DEFAULT_LINGER_MS 100

struct bus_peer {
    char    *id;
    uint64_t id_hash;
    void    *sock;    /* PUSH */
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

    struct bus_peer *peers;
    size_t          npeers;
    size_t          peers_cap;

    struct buf      packbuf;       /* reused by bus_send_env */
    struct bus_stats stats;
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

static void handle_frame(struct bus *bus, zmq_msg_t *msg)
{
    size_t n = zmq_msg_size(msg);
    Mk__Envelope *e = env_decode(zmq_msg_data(msg), n);
    if (e == NULL) {
        bus->stats.dropped_bad++;
        log_warn("bus_bad_frame", "bytes=%zu", n);
        return;
    }
    bus->stats.received++;
    bus->cb(bus, &e, bus->ud);
    env_free(&e);
}

/* Receives up to BUS_DRAIN_BUDGET frames. Returns true when the inbox is empty
 * (ZMQ_EVENTS without POLLIN), false when frames remain for the next iteration. */
static bool drain(struct bus *bus)
{
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    for (int i = 0; i < BUS_DRAIN_BUDGET; i++) {
        if (zmq_msg_recv(&msg, bus->pull, ZMQ_DONTWAIT) == -1) {
            if (errno == EAGAIN)
                break;
            if (errno != EINTR)
                log_warn("bus_recv_error", "error=\"%s\"", zmq_strerror(errno));
            zmq_msg_close(&msg);
            return false;   /* try again next iteration */
        }
        handle_frame(bus, &msg);
    }
    zmq_msg_close(&msg);
    return !inbox_has_frame(bus);
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
    /* Callbacks of this iteration may have consumed the FD's edge (ZeroMQ processes
     * commands inside many calls): never block while a frame is waiting. */
    recheck_inbox(w->data);
}

struct bus *bus_new(struct ev_loop *loop, const char *self_id, const char *inbox, int hwm,
                    bus_recv_fn *cb, void *ud, char *err, size_t errlen)
{
    if (self_id == NULL || self_id[0] == '\0' || inbox == NULL || cb == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "bus needs an identity, an inbox and a callback");
        errno = EINVAL;
        return NULL;
    }
    struct bus *bus = xcalloc(1, sizeof *bus);
    bus->loop = loop;
    bus->self = xstrdup(self_id);
    bus->hwm = hwm;
    bus->linger_ms = BUS_DEFAULT_LINGER_MS;
    bus->cb = cb;
    bus->ud = ud;
    buf_init(&bus->packbuf);

    bus->ctx = zmq_ctx_new();
    if (bus->ctx == NULL) {
        set_err(err, errlen, "zmq_ctx_new", "");
        goto fail;
    }
    bus->pull = zmq_socket(bus->ctx, ZMQ_PULL);
    if (bus->pull == NULL) {
        set_err(err, errlen, "zmq_socket PULL", inbox);
        goto fail;
    }
    if (sock_set_int(bus->pull, ZMQ_LINGER, bus->linger_ms) == -1
        || (hwm > 0 && sock_set_int(bus->pull, ZMQ_RCVHWM, hwm) == -1)) {
        set_err(err, errlen, "setsockopt", inbox);
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
    ev_prepare_start(loop, &bus->prepare);
    ev_unref(loop);     /* the io watcher keeps the loop alive, not the bookkeeping */
    ev_check_init(&bus->check, on_check);
    bus->check.data = bus;
    ev_check_start(loop, &bus->check);
    ev_unref(loop);
    ev_idle_init(&bus->idle, on_idle);
    bus->idle.data = bus;
    /* Frames may have arrived between bind and now without a new edge. */
    bus->readable = true;
    return bus;

fail:
    if (bus->pull != NULL)
        zmq_close(bus->pull);
    if (bus->ctx != NULL)
        zmq_ctx_term(bus->ctx);
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
        sock_set_int(bus->peers[i].sock, ZMQ_LINGER, linger);
        zmq_close(bus->peers[i].sock);
        free(bus->peers[i].id);
    }
    free(bus->peers);
    sock_set_int(bus->pull, ZMQ_LINGER, linger);
    zmq_close(bus->pull);
    while (zmq_ctx_term(bus->ctx) == -1 && errno == EINTR)
        ;
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

int bus_add_peer(struct bus *bus, const char *peer_id, const char *endpoint, char *err, size_t errlen)
{
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
        || sock_set_int(sock, ZMQ_IMMEDIATE, 0) == -1
        || (bus->hwm > 0 && sock_set_int(sock, ZMQ_SNDHWM, bus->hwm) == -1)) {
        set_err(err, errlen, "setsockopt", endpoint);
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
    return 0;
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

int bus_send(struct bus *bus, const char *peer_id, const void *data, size_t len)
{
    struct bus_peer *p = find_peer(bus, peer_id);
    if (p == NULL) {
        bus->stats.send_unknown++;
        errno = EHOSTUNREACH;
        return -1;
    }
    int rc = push_frame(p->sock, data, len);
    if (rc == -1 && errno == EAGAIN && peer_writable(p->sock)) {
        /* zmq_send looks at the socket's commands (the peer's "I have read up to
         * here") at most about once a millisecond; ZMQ_EVENTS looks now. Without
         * this second try, a sender that only retries on an ack would see a full
         * queue that is in fact empty and stall until its next timer. */
        rc = push_frame(p->sock, data, len);
    }
    int saved = errno;
    /* No look at the inbox here: a send on a PUSH socket processes that socket's
     * commands only, never the inbox's, so it cannot consume the inbox's edge; the
     * prepare watcher looks once per iteration before the loop blocks. */
    if (rc == -1) {
        if (saved == EAGAIN)
            bus->stats.send_blocked++;
        errno = saved;
        return -1;
    }
    bus->stats.sent++;
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

const char *bus_self(const struct bus *bus)
{
    return bus->self;
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
