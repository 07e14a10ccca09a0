/* tests/unit/test_gd_link.c - the inter-DC link (gd/link.c): link ends on one loop over tcp loopback, a cutting TCP proxy, hostile peers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <string.h>
#include <stdlib.h>
#include <stdio.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "../../gd/link.h"
#include "buf.h"
#include "bus.h"
#include "env.h"
#include "log.h"
#include "util.h"
#include "loop_until.h"

#define ANY_PORT "tcp://127.0.0.1:*"
#define MAX_MSGS 40000

/* What one link end saw, filled by its callbacks. */
struct end {
    const char *name;
    struct gd_link *link;
    uint64_t received;
    uint64_t next_id;        /* the msg_id expected next (ids are sent 0, 1, 2 ...) */
    bool     in_order;
    bool     payload_ok;
    uint8_t *applied;        /* applied[id]: how often message id was handed on */
    uint64_t expired;
    uint64_t next_expired;   /* expired ids must come oldest first too */
    bool     expired_in_order;
    uint64_t ups, downs;
    char     last_from[64];
    char     last_origin[64];
    unsigned last_ttl;
    bool     defer;          /* the recv callback defers every message */
    struct gd_link_ticket tickets[256];
    size_t   ntickets;
    uint64_t acked_calls;    /* the acked callback: the peer acknowledged (or expiry) */
    uint64_t acked_from;     /* gd_link_unacked_from in its last call */
};

static void end_init(struct end *e, const char *name)
{
    memset(e, 0, sizeof *e);
    e->name = name;
    e->in_order = true;
    e->payload_ok = true;
    e->expired_in_order = true;
    e->applied = xcalloc(MAX_MSGS, 1);
}

static void end_release(struct end *e)
{
    gd_link_free(&e->link);
    free(e->applied);
    e->applied = NULL;
}

/* Every payload is "msg <id>" so the receiver checks the exact bytes. */
static size_t payload_of(uint64_t id, char *out, size_t cap)
{
    return (size_t)snprintf(out, cap, "msg %llu", (unsigned long long)id);
}

static void on_recv(void *ud, const char *from, const struct gd_link_msg *m)
{
    struct end *e = ud;
    char want[64];
    size_t n = payload_of(m->msg_id, want, sizeof want);
    if (m->len != n || memcmp(m->payload, want, n) != 0)
        e->payload_ok = false;
    if (m->msg_id != e->next_id)
        e->in_order = false;
    e->next_id = m->msg_id + 1;
    if (m->msg_id < MAX_MSGS)
        e->applied[m->msg_id]++;
    e->received++;
    snprintf(e->last_from, sizeof e->last_from, "%s", from);
    snprintf(e->last_origin, sizeof e->last_origin, "%s", m->origin);
    e->last_ttl = m->ttl;
    if (e->defer && e->ntickets < 256)
        gd_link_defer(e->link, &e->tickets[e->ntickets++]);
}

static void on_expired(void *ud, const char *peer, const struct gd_link_msg *m)
{
    struct end *e = ud;
    char want[64];
    size_t n = payload_of(m->msg_id, want, sizeof want);
    if (m->len != n || memcmp(m->payload, want, n) != 0)
        e->payload_ok = false;
    if (m->msg_id != e->next_expired)
        e->expired_in_order = false;
    e->next_expired = m->msg_id + 1;
    e->expired++;
}

static void on_acked(void *ud, const char *peer)
{
    struct end *e = ud;
    e->acked_calls++;
    e->acked_from = gd_link_unacked_from(e->link, peer);
}

static void on_state(void *ud, const char *peer, bool up)
{
    struct end *e = ud;
    if (up)
        e->ups++;
    else
        e->downs++;
}

static void make_keys(struct bus_keys *k)
{
    assert_int_equal(zmq_curve_keypair(k->public_key, k->secret_key), 0);
}

struct dc {
    const char *name;
    struct bus_keys keys;
};

/* When set, the next open_end registers its metrics there. */
static struct metrics *next_metrics;

/* Opens self's link end bound at bind, trusting peer (whose endpoint may be NULL). */
static struct gd_link *open_end(struct ev_loop *loop, struct end *e, const struct dc *self, const struct dc *peer,
                                const char *peer_endpoint, const char *bind, const struct gd_link_params *tmpl)
{
    struct gd_link_peer_conf pc = {.dc = peer->name, .public_key = peer->keys.public_key, .endpoint = peer_endpoint};
    struct gd_link_params p = {0};
    if (tmpl != NULL)
        p = *tmpl;
    p.dc = self->name;
    p.keys = self->keys;
    p.bind = bind;
    p.peers = &pc;
    p.npeers = 1;
    if (p.resend_ms == 0)
        p.resend_ms = 200;
    if (p.heartbeat == 0)
        p.heartbeat = 0.05;
    struct gd_link_callbacks cb = {.recv = on_recv, .expired = on_expired, .acked = on_acked, .state = on_state,
                                     .ud = e};
    char err[256] = "";
    struct gd_link *l = gd_link_new(loop, &p, &cb, next_metrics, err, sizeof err);
    next_metrics = NULL;
    if (l == NULL)
        fail_msg("gd_link_new: %s", err);
    e->link = l;
    return l;
}

static bool rendered_has(struct metrics *m, const char *needle)
{
    struct buf out;
    buf_init(&out);
    metrics_render(m, &out);
    buf_append(&out, "", 1);
    bool found = strstr(out.data, needle) != NULL;
    if (!found && getenv("GD_LINK_TEST_VERBOSE") != NULL)
        fprintf(stderr, "%s", out.data);
    buf_release(&out);
    return found;
}

struct render_wait {
    struct metrics *m;
    const char *needle;
};

static bool render_shows(void *arg)
{
    const struct render_wait *w = arg;
    return rendered_has(w->m, w->needle);
}

static int send_msg(struct gd_link *l, const char *peer, uint64_t id)
{
    char buf[64];
    size_t n = payload_of(id, buf, sizeof buf);
    const struct gd_link_msg m = {.msg_id = id, .payload = buf, .len = n};
    return gd_link_send(l, peer, &m);
}

struct wait_n {
    struct end *e;
    uint64_t n;
    struct gd_link *l;
    const char *peer;
};

static bool received_n(void *arg)
{
    const struct wait_n *w = arg;
    return w->e->received >= w->n;
}

static bool queue_empty(void *arg)
{
    const struct wait_n *w = arg;
    return gd_link_queue_depth(w->l, w->peer) == 0;
}

static bool queue_at(void *arg)
{
    const struct wait_n *w = arg;
    return gd_link_queue_depth(w->l, w->peer) == w->n;
}

static bool expired_n(void *arg)
{
    const struct wait_n *w = arg;
    return w->e->expired >= w->n;
}

static bool peer_up(void *arg)
{
    const struct wait_n *w = arg;
    return gd_link_peer_up(w->l, w->peer);
}

static bool peer_down(void *arg)
{
    const struct wait_n *w = arg;
    return !gd_link_peer_up(w->l, w->peer);
}

static void assert_each_once(const struct end *e, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        if (e->applied[i] != 1)
            fail_msg("message %llu applied %u times", (unsigned long long)i, e->applied[i]);
    }
}

/* Two data centers: every message arrives once, in order, with its exact bytes and
 * its origin; the sender's queue empties (acknowledged) and both see each other up.
 * Prints the rate through one link on loopback. */
static void test_delivery_in_order(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct dc a = {.name = "dc-a"}, b = {.name = "dc-b"};
    make_keys(&a.keys);
    make_keys(&b.keys);
    struct end ea, eb;
    end_init(&ea, "a");
    end_init(&eb, "b");
    struct gd_link_params tmpl = {.queue_max = MAX_MSGS};
    open_end(loop, &eb, &b, &a, NULL, ANY_PORT, &tmpl);
    open_end(loop, &ea, &a, &b, gd_link_endpoint(eb.link), ANY_PORT, &tmpl);
    char err[256];
    assert_int_equal(gd_link_set_endpoint(eb.link, "dc-a", gd_link_endpoint(ea.link), err, sizeof err), 0);
    struct wait_n up = {.l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, peer_up, &up, 10));

    const uint64_t n = MAX_MSGS;
    int64_t t0 = mk_mono_us();
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(send_msg(ea.link, "dc-b", i), 0);
    struct wait_n w = {.e = &eb, .n = n, .l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, received_n, &w, 60));
    int64_t t1 = mk_mono_us();
    assert_true(run_until(loop, queue_empty, &w, 10));
    assert_true(eb.in_order);
    assert_true(eb.payload_ok);
    assert_int_equal(eb.received, n);
    assert_each_once(&eb, n);
    assert_string_equal(eb.last_from, "dc-a");
    assert_string_equal(eb.last_origin, "dc-a");
    assert_true(gd_link_peer_up(eb.link, "dc-a"));
    struct gd_link_stats st;
    gd_link_stats(ea.link, &st);
    assert_int_equal(st.sent, n);
    gd_link_stats(eb.link, &st);
    assert_int_equal(st.received, n);
    assert_int_equal(st.refused_key + st.refused_origin + st.refused_decode, 0);
    printf("gd_link: %llu messages through one link on loopback in %.3f s: %.0f msgs/s\n", (unsigned long long)n,
           (double)(t1 - t0) / 1e6, (double)n * 1e6 / (double)(t1 - t0));

    /* Unknown peers and bad sends are refused up front. */
    assert_int_equal(send_msg(ea.link, "dc-x", 0), -1);
    assert_int_equal(errno, EHOSTUNREACH);
    end_release(&ea);
    end_release(&eb);
    ev_loop_destroy(loop);
}

/* A data center with the wrong key pair (it claims dc-a's name) is refused by the
 * inbox's ZAP handler and counted; nothing it sends arrives, and dc-b stays unaware
 * of it (never up). A client that expects another server key than dc-b's fails the
 * handshake: nothing is delivered either. */
static void test_wrong_key_refused(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct dc a = {.name = "dc-a"}, b = {.name = "dc-b"}, impostor = {.name = "dc-a"};
    make_keys(&a.keys);
    make_keys(&b.keys);
    make_keys(&impostor.keys);
    struct end eb, ex;
    end_init(&eb, "b");
    end_init(&ex, "x");
    open_end(loop, &eb, &b, &a, NULL, ANY_PORT, NULL);
    open_end(loop, &ex, &impostor, &b, gd_link_endpoint(eb.link), ANY_PORT, NULL);
    for (uint64_t i = 0; i < 10; i++)
        assert_int_equal(send_msg(ex.link, "dc-b", i), 0);
    struct gd_link_stats st;
    int64_t deadline = mk_mono_us() + 10 * 1000000;
    do {
        ev_run(loop, EVRUN_ONCE);
        gd_link_stats(eb.link, &st);
    } while (st.refused_key < 1 && mk_mono_us() < deadline);
    assert_true(st.refused_key >= 1);
    assert_int_equal(eb.received, 0);
    assert_int_equal(st.received, 0);
    assert_false(gd_link_peer_up(eb.link, "dc-a"));
    assert_int_equal(eb.ups, 0);
    assert_int_equal(gd_link_queue_depth(ex.link, "dc-b"), 10);   /* nothing was acknowledged */
    end_release(&ex);

    /* dc-a with its real pair but a wrong idea of dc-b's key (a server that is not
     * dc-b, as far as it knows): the handshake fails, nothing is delivered. */
    struct dc not_b = {.name = "dc-b"};
    make_keys(&not_b.keys);
    struct end ea;
    end_init(&ea, "a");
    open_end(loop, &ea, &a, &not_b, gd_link_endpoint(eb.link), ANY_PORT, NULL);
    for (uint64_t i = 0; i < 10; i++)
        assert_int_equal(send_msg(ea.link, "dc-b", i), 0);
    uint64_t before = st.refused_handshake;
    deadline = mk_mono_us() + 10 * 1000000;
    do {
        ev_run(loop, EVRUN_ONCE);
        gd_link_stats(eb.link, &st);
    } while (st.refused_handshake <= before && mk_mono_us() < deadline);
    assert_true(st.refused_handshake > before);
    assert_int_equal(eb.received, 0);
    assert_false(gd_link_peer_up(eb.link, "dc-a"));
    assert_int_equal(gd_link_queue_depth(ea.link, "dc-b"), 10);
    end_release(&ea);
    end_release(&eb);
    ev_loop_destroy(loop);
}

/* ---- a TCP proxy on the test's loop, which the test can cut and restore ----------- */

#define PROXY_MAX_CONNS 8

struct proxy_pair {
    int     fd[2];           /* 0: accepted (from the client), 1: to the target */
    ev_io   w[2];
    struct proxy *px;
};

struct proxy {
    struct ev_loop *loop;
    int      listen_fd;
    ev_io    accept_w;
    int      port;
    int      target_port;
    struct proxy_pair pairs[PROXY_MAX_CONNS];
    uint64_t bytes;
    bool     dark;           /* read and drop everything, answer nothing (a link gone dark) */
    uint64_t client_closed;  /* connections the client side closed while dark */
};

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 16), 0);
    return fd;
}

static void pair_close(struct proxy_pair *pp)
{
    for (int i = 0; i < 2; i++) {
        if (pp->fd[i] >= 0) {
            ev_io_stop(pp->px->loop, &pp->w[i]);
            close(pp->fd[i]);
            pp->fd[i] = -1;
        }
    }
}

static void on_pair_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct proxy_pair *pp = w->data;
    int from = w == &pp->w[0] ? 0 : 1;
    char buf[65536];
    ssize_t r = read(pp->fd[from], buf, sizeof buf);
    if (r <= 0) {
        if (r == -1 && errno == EAGAIN)
            return;
        if (pp->px->dark && from == 0)
            pp->px->client_closed++;
        pair_close(pp);
        return;
    }
    if (pp->px->dark)
        return;
    /* Blocking writes on loopback: a test's volume fits the socket buffers. */
    size_t off = 0;
    while (off < (size_t)r) {
        ssize_t n = write(pp->fd[1 - from], buf + off, (size_t)r - off);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0) {
            pair_close(pp);
            return;
        }
        off += (size_t)n;
    }
    pp->px->bytes += (uint64_t)r;
}

static void on_proxy_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    struct proxy *px = w->data;
    int c = accept4(px->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (c == -1)
        return;
    int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)px->target_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (t == -1 || connect(t, (struct sockaddr *)&sa, sizeof sa) == -1) {
        close(c);
        if (t != -1)
            close(t);
        return;
    }
    for (int i = 0; i < PROXY_MAX_CONNS; i++) {
        struct proxy_pair *pp = &px->pairs[i];
        if (pp->fd[0] >= 0)
            continue;
        pp->fd[0] = c;
        pp->fd[1] = t;
        pp->px = px;
        for (int k = 0; k < 2; k++) {
            ev_io_init(&pp->w[k], on_pair_io, pp->fd[k], EV_READ);
            pp->w[k].data = pp;
            ev_io_start(loop, &pp->w[k]);
        }
        return;
    }
    close(c);
    close(t);
}

static void proxy_open(struct proxy *px)
{
    px->listen_fd = listen_on(px->port);
    if (px->port == 0) {
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;
        assert_int_equal(getsockname(px->listen_fd, (struct sockaddr *)&sa, &len), 0);
        px->port = ntohs(sa.sin_port);
    }
    ev_io_init(&px->accept_w, on_proxy_accept, px->listen_fd, EV_READ);
    px->accept_w.data = px;
    ev_io_start(px->loop, &px->accept_w);
}

static void proxy_init(struct proxy *px, struct ev_loop *loop, int target_port)
{
    memset(px, 0, sizeof *px);
    px->loop = loop;
    px->target_port = target_port;
    for (int i = 0; i < PROXY_MAX_CONNS; i++)
        px->pairs[i].fd[0] = px->pairs[i].fd[1] = -1;
    proxy_open(px);
}

/* The cut: every connection closed and nobody listening. */
static void proxy_cut(struct proxy *px)
{
    for (int i = 0; i < PROXY_MAX_CONNS; i++)
        pair_close(&px->pairs[i]);
    ev_io_stop(px->loop, &px->accept_w);
    close(px->listen_fd);
    px->listen_fd = -1;
}

static int endpoint_port(const char *ep)
{
    const char *colon = strrchr(ep, ':');
    assert_non_null(colon);
    return atoi(colon + 1);
}

/* dc-a reaches dc-b only through the proxy. The proxy is cut mid-stream: dc-b sees
 * dc-a go down, dc-a's messages queue (counted), and when the proxy is back every
 * message arrives, once and in order. */
static void test_cut_mid_stream(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct dc a = {.name = "dc-a"}, b = {.name = "dc-b"};
    make_keys(&a.keys);
    make_keys(&b.keys);
    struct end ea, eb;
    end_init(&ea, "a");
    end_init(&eb, "b");
    open_end(loop, &eb, &b, &a, NULL, ANY_PORT, NULL);
    struct proxy px;
    proxy_init(&px, loop, endpoint_port(gd_link_endpoint(eb.link)));
    char via[64];
    snprintf(via, sizeof via, "tcp://127.0.0.1:%d", px.port);
    open_end(loop, &ea, &a, &b, via, ANY_PORT, NULL);
    char err[256];
    assert_int_equal(gd_link_set_endpoint(eb.link, "dc-a", gd_link_endpoint(ea.link), err, sizeof err), 0);

    /* 3000 messages: 1000, then (once 300 arrived) 500 more sent and cut in flight,
     * then 1500 while the link is cut. */
    const uint64_t n = 3000;
    uint64_t sent = 0;
    while (sent < 1000)
        assert_int_equal(send_msg(ea.link, "dc-b", sent++), 0);
    struct wait_n some = {.e = &eb, .n = 300};
    assert_true(run_until(loop, received_n, &some, 10));
    while (sent < 1500)
        assert_int_equal(send_msg(ea.link, "dc-b", sent++), 0);
    ev_run(loop, EVRUN_NOWAIT);   /* the batch leaves for the proxy */
    proxy_cut(&px);
    uint64_t at_cut = eb.received;
    while (sent < n)
        assert_int_equal(send_msg(ea.link, "dc-b", sent++), 0);
    struct wait_n down = {.l = eb.link, .peer = "dc-a"};
    assert_true(run_until(loop, peer_down, &down, 10));
    assert_true(eb.downs >= 1);
    /* While cut, nothing more arrives and dc-a holds the rest. */
    assert_true(gd_link_queue_depth(ea.link, "dc-b") >= n - eb.received);
    assert_true(eb.received < n);
    printf("gd_link cut: %llu delivered before the cut, %zu queued at dc-a\n", (unsigned long long)at_cut,
           gd_link_queue_depth(ea.link, "dc-b"));

    proxy_open(&px);
    struct wait_n w = {.e = &eb, .n = n, .l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, received_n, &w, 30));
    assert_true(run_until(loop, queue_empty, &w, 10));
    assert_true(run_until(loop, peer_up, &down, 10));
    assert_true(eb.in_order);
    assert_true(eb.payload_ok);
    assert_int_equal(eb.received, n);
    assert_each_once(&eb, n);
    proxy_cut(&px);
    end_release(&ea);
    end_release(&eb);
    ev_loop_destroy(loop);
}

static bool client_closed(void *arg)
{
    return ((struct proxy *)arg)->client_closed >= 1;
}

/* Both directions go through proxies that then go dark: no reset, nothing through.
 * Each side sees the other go down and drops its connection (ZeroMQ would otherwise
 * keep queueing re-sends into it); when the proxies carry traffic again, everything
 * sent before and during the dark period arrives once, in order. */
static void test_dark_link(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct dc a = {.name = "dc-a"}, b = {.name = "dc-b"};
    make_keys(&a.keys);
    make_keys(&b.keys);
    struct end ea, eb;
    end_init(&ea, "a");
    end_init(&eb, "b");
    open_end(loop, &eb, &b, &a, NULL, ANY_PORT, NULL);
    open_end(loop, &ea, &a, &b, NULL, ANY_PORT, NULL);
    struct proxy to_b, to_a;
    proxy_init(&to_b, loop, endpoint_port(gd_link_endpoint(eb.link)));
    proxy_init(&to_a, loop, endpoint_port(gd_link_endpoint(ea.link)));
    char ep[64], err[256];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", to_b.port);
    assert_int_equal(gd_link_set_endpoint(ea.link, "dc-b", ep, err, sizeof err), 0);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", to_a.port);
    assert_int_equal(gd_link_set_endpoint(eb.link, "dc-a", ep, err, sizeof err), 0);

    uint64_t sent = 0;
    while (sent < 500)
        assert_int_equal(send_msg(ea.link, "dc-b", sent++), 0);
    struct wait_n w = {.e = &eb, .n = 500, .l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, received_n, &w, 10));
    to_b.dark = to_a.dark = true;
    while (sent < 1500)
        assert_int_equal(send_msg(ea.link, "dc-b", sent++), 0);
    struct wait_n down = {.l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, peer_down, &down, 10));
    assert_true(run_until(loop, client_closed, &to_b, 10));
    assert_true(eb.received < 1500);

    /* Light again: fresh connections (those opened in the dark never finished their
     * handshake). */
    for (int i = 0; i < PROXY_MAX_CONNS; i++) {
        pair_close(&to_b.pairs[i]);
        pair_close(&to_a.pairs[i]);
    }
    to_b.dark = to_a.dark = false;
    w.n = 1500;
    assert_true(run_until(loop, received_n, &w, 30));
    assert_true(run_until(loop, queue_empty, &w, 10));
    assert_true(eb.in_order);
    assert_int_equal(eb.received, 1500);
    assert_each_once(&eb, 1500);
    assert_true(ea.downs >= 1);
    proxy_cut(&to_b);
    proxy_cut(&to_a);
    end_release(&ea);
    end_release(&eb);
    ev_loop_destroy(loop);
}

/* The budget: past queue_max messages a send is refused (EAGAIN, counted); a message
 * older than queue_max_age is handed back to the expired callback, oldest first, with
 * its bytes, and leaves the queue. When the peer comes, it gets the later messages and
 * none of the expired ones. */
static void test_budget(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct dc a = {.name = "dc-a"}, b = {.name = "dc-b"};
    make_keys(&a.keys);
    make_keys(&b.keys);
    struct end ea, eb;
    end_init(&ea, "a");
    end_init(&eb, "b");
    /* dc-b's port is reserved but nobody speaks ZMTP on it yet. */
    int hold = listen_on(0);
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(hold, (struct sockaddr *)&sa, &len), 0);
    char b_ep[64];
    snprintf(b_ep, sizeof b_ep, "tcp://127.0.0.1:%d", ntohs(sa.sin_port));
    close(hold);
    /* The age bound is long enough for the ones sent once the link is up to be acknowledged. */
    struct gd_link_params tmpl = {.queue_max = 10, .queue_max_age = 1.5};
    struct metrics *m = metrics_new("gd", "gd.0");
    next_metrics = m;
    open_end(loop, &ea, &a, &b, b_ep, ANY_PORT, &tmpl);
    for (uint64_t i = 0; i < 10; i++)
        assert_int_equal(send_msg(ea.link, "dc-b", i), 0);
    assert_int_equal(send_msg(ea.link, "dc-b", 10), -1);
    assert_int_equal(errno, EAGAIN);
    struct gd_link_stats st;
    gd_link_stats(ea.link, &st);
    assert_int_equal(st.refused_full, 1);
    assert_int_equal(gd_link_queue_depth(ea.link, "dc-b"), 10);
    /* The counters at once, the gauges on the next heartbeat. */
    assert_true(rendered_has(m, "meerkat_gd_link_over_budget_total{role=\"gd\",id=\"gd.0\",peer=\"dc-b\",reason=\"full\"} 1\n"));
    assert_true(rendered_has(m, "meerkat_gd_link_sent_total{role=\"gd\",id=\"gd.0\",peer=\"dc-b\"} 10\n"));
    struct render_wait rw = {.m = m, .needle = "meerkat_gd_link_queued{role=\"gd\",id=\"gd.0\",peer=\"dc-b\"} 10\n"};
    assert_true(run_until(loop, render_shows, &rw, 5));
    assert_true(rendered_has(m, "meerkat_gd_link_up{role=\"gd\",id=\"gd.0\",peer=\"dc-b\"} 0\n"));

    struct wait_n w = {.e = &ea, .n = 10, .l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, expired_n, &w, 10));
    assert_int_equal(ea.expired, 10);
    assert_true(ea.expired_in_order);
    assert_true(ea.payload_ok);
    assert_int_equal(gd_link_queue_depth(ea.link, "dc-b"), 0);
    gd_link_stats(ea.link, &st);
    assert_int_equal(st.expired, 10);
    assert_true(rendered_has(m, "meerkat_gd_link_over_budget_total{role=\"gd\",id=\"gd.0\",peer=\"dc-b\",reason=\"expired\"} 10\n"));

    /* Room again: dc-b comes up, the next ones go, and it gets exactly those (sent once
     * the link is up: on a loaded machine dc-b's start alone can outlast the age bound). */
    open_end(loop, &eb, &b, &a, gd_link_endpoint(ea.link), b_ep, NULL);
    eb.next_id = 20;
    struct wait_n r = {.e = &eb, .n = 5, .l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, peer_up, &r, 10));
    for (uint64_t i = 20; i < 25; i++)
        assert_int_equal(send_msg(ea.link, "dc-b", i), 0);
    assert_true(run_until(loop, received_n, &r, 10));
    assert_true(run_until(loop, queue_empty, &r, 10));
    assert_int_equal(eb.received, 5);
    assert_true(eb.in_order);
    for (uint64_t i = 0; i < 10; i++)
        assert_int_equal(eb.applied[i], 0);
    assert_int_equal(ea.expired, 10);
    end_release(&ea);
    end_release(&eb);
    metrics_free(&m);
    ev_loop_destroy(loop);
}

/* dc-b restarts mid-stream (its link end freed and made again on the same port):
 * every message arrives, and none is handed on twice across the two incarnations. */
static void test_receiver_restart(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct dc a = {.name = "dc-a"}, b = {.name = "dc-b"};
    make_keys(&a.keys);
    make_keys(&b.keys);
    struct end ea, eb;
    end_init(&ea, "a");
    end_init(&eb, "b");
    open_end(loop, &eb, &b, &a, NULL, ANY_PORT, NULL);
    char b_ep[64];
    snprintf(b_ep, sizeof b_ep, "%s", gd_link_endpoint(eb.link));
    open_end(loop, &ea, &a, &b, b_ep, ANY_PORT, NULL);
    char err[256];
    assert_int_equal(gd_link_set_endpoint(eb.link, "dc-a", gd_link_endpoint(ea.link), err, sizeof err), 0);

    const uint64_t n = 4000;
    uint64_t sent = 0;
    while (sent < n && eb.received < 1000) {
        for (int k = 0; k < 100 && sent < n; k++)
            assert_int_equal(send_msg(ea.link, "dc-b", sent++), 0);
        ev_run(loop, EVRUN_ONCE);
    }
    /* The first incarnation goes; what it handed on, it acknowledged on the way out. */
    uint64_t first = eb.received;
    gd_link_free(&eb.link);
    struct wait_n acked = {.n = sent - first, .l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, queue_at, &acked, 10));
    while (sent < n)
        assert_int_equal(send_msg(ea.link, "dc-b", sent++), 0);
    open_end(loop, &eb, &b, &a, gd_link_endpoint(ea.link), b_ep, NULL);
    struct wait_n w = {.e = &eb, .n = n, .l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, received_n, &w, 30));
    assert_true(run_until(loop, queue_empty, &w, 10));
    assert_true(eb.in_order);
    assert_int_equal(eb.received, n);
    assert_each_once(&eb, n);
    printf("gd_link restart: %llu handed on before, %llu after\n", (unsigned long long)first,
           (unsigned long long)(n - first));
    end_release(&ea);
    end_release(&eb);
    ev_loop_destroy(loop);
}

/* ---- garbage on the inter-DC port ------------------------------------------------ */

struct stat_wait {
    struct gd_link *l;
    size_t field;            /* offsetof(struct gd_link_stats, x) */
    uint64_t at_least;
};

static bool stat_reached(void *arg)
{
    const struct stat_wait *w = arg;
    struct gd_link_stats st;
    gd_link_stats(w->l, &st);
    uint64_t v;
    memcpy(&v, (const char *)&st + w->field, sizeof v);
    return v >= w->at_least;
}

static int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

/* True once the server closed the connection (read gives 0 or an error). */
static bool tcp_closed(void *arg)
{
    int fd = *(int *)arg;
    char buf[512];
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r == 0 || (r == -1 && errno != EAGAIN && errno != EINTR))
            return true;
        if (r == -1)
            return false;
    }
}

/* What the hostile peer hears from dc-b: its hellos. */
struct raw_peer {
    uint64_t b_started;
};

static void on_raw_recv(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    struct raw_peer *rp = ud;
    if ((*envp)->payload_case == MK__ENVELOPE__PAYLOAD_HELLO)
        rp->b_started = (*envp)->hello->started_us;
}

static bool heard_hello(void *arg)
{
    return ((struct raw_peer *)arg)->b_started != 0;
}

static const char *accept_any(void *ud, const unsigned char key[32])
{
    return "dc-b";
}

/* Sends one hand-made envelope (any version) over a raw bus to peer "dc-b". */
static void raw_send(struct bus *x, Mk__Envelope *e, uint32_t version)
{
    e->version = version;
    unsigned char buf[1024];
    size_t n = mk__envelope__get_packed_size(e);
    assert_true(n <= sizeof buf);
    n = mk__envelope__pack(e, buf);
    assert_int_equal(bus_send(x, "dc-b", buf, n), 0);
}

/* The real listening port of dc-b gets: random bytes; a valid ZMTP greeting without
 * CURVE; then, over a connection with dc-a's key, bytes that are no envelope, a newer
 * envelope, a sender that is not dc-a, GdFrames of a newer version, from dc-b itself,
 * with no hop left, off the channel, and a payload the link does not carry. Each is
 * refused and counted under its reason; the refused frames that were numbered on the
 * channel do not stall it (the next one is delivered), and the real dc-a then delivers
 * everything in order. */
static void test_garbage_on_port(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct dc a = {.name = "dc-a"}, b = {.name = "dc-b"};
    make_keys(&a.keys);
    make_keys(&b.keys);
    struct end ea, eb;
    end_init(&ea, "a");
    end_init(&eb, "b");
    open_end(loop, &eb, &b, &a, NULL, ANY_PORT, NULL);
    int port = endpoint_port(gd_link_endpoint(eb.link));

    /* Random bytes instead of a greeting. */
    int fd = tcp_connect(port);
    unsigned char junk[4096];
    srand(13);
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)rand();
    junk[0] = 0xff;   /* looks like ZMTP 3 for a moment */
    assert_int_equal(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    struct stat_wait sw = {.l = eb.link, .field = offsetof(struct gd_link_stats, refused_handshake), .at_least = 1};
    assert_true(run_until(loop, stat_reached, &sw, 10));
    assert_true(run_until(loop, tcp_closed, &fd, 10));
    close(fd);
    struct gd_link_stats st;
    gd_link_stats(eb.link, &st);
    uint64_t handshakes = st.refused_handshake;

    /* A well-formed ZMTP 3.0 greeting for the NULL mechanism: refused (no CURVE). */
    unsigned char greeting[64] = {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0, 'N', 'U', 'L', 'L'};
    fd = tcp_connect(port);
    assert_int_equal(write(fd, greeting, sizeof greeting), (ssize_t)sizeof greeting);
    sw.at_least = handshakes + 1;
    assert_true(run_until(loop, stat_reached, &sw, 10));
    assert_true(run_until(loop, tcp_closed, &fd, 10));
    close(fd);

    /* A peer with dc-a's key pair that sends whatever it likes. */
    struct raw_peer rp = {0};
    struct bus_options xo = {.curve = &a.keys, .key_check = accept_any};
    char err[256];
    struct bus *x = bus_open(loop, "x", ANY_PORT, &xo, on_raw_recv, &rp, err, sizeof err);
    assert_non_null(x);
    struct bus_peer_options po = {.server_key = b.keys.public_key};
    assert_int_equal(bus_add_peer_with(x, "dc-b", gd_link_endpoint(eb.link), &po, err, sizeof err), 0);
    assert_int_equal(gd_link_set_endpoint(eb.link, "dc-a", bus_endpoint(x), err, sizeof err), 0);
    assert_true(run_until(loop, heard_hello, &rp, 10));
    assert_int_equal(bus_send(x, "dc-b", "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x12", 13), 0);
    /* The handshake: this hello is for dc-b's incarnation and starts the channel at 1. */
    Mk__Hello h = MK__HELLO__INIT;
    h.role = "gd-link";
    h.started_us = 1;
    h.peer_started = rp.b_started;
    Mk__Envelope he = MK__ENVELOPE__INIT;
    he.sender = "dc-a";
    he.rc_epoch = 5;
    he.rc_base = 1;
    he.payload_case = MK__ENVELOPE__PAYLOAD_HELLO;
    he.hello = &h;
    raw_send(x, &he, ENV_VERSION);

    char payload[16];
    Mk__GdFrame g = MK__GD_FRAME__INIT;
    g.version = 1;
    g.origin = "dc-a";
    g.ttl = 4;
    g.payload.data = (uint8_t *)payload;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.sender = "dc-a";
    e.rc_epoch = 5;
    e.rc_base = 1;
    e.payload_case = MK__ENVELOPE__PAYLOAD_GD_FRAME;
    e.gd_frame = &g;
    e.rc_seq = 1;
    raw_send(x, &e, ENV_VERSION + 1);          /* newer envelope: does not decode */
    e.sender = "dc-c";
    raw_send(x, &e, ENV_VERSION);              /* not the data center of its key */
    e.sender = "dc-a";
    g.version = GD_LINK_VERSION + 1;
    raw_send(x, &e, ENV_VERSION);              /* seq 1: newer GdFrame */
    g.version = GD_LINK_VERSION;
    g.origin = "dc-b";
    e.rc_seq = 2;
    raw_send(x, &e, ENV_VERSION);              /* seq 2: claims to come from dc-b itself */
    g.origin = "dc-a";
    g.ttl = 0;
    e.rc_seq = 3;
    raw_send(x, &e, ENV_VERSION);              /* seq 3: no hop left */
    g.ttl = 4;
    e.rc_seq = 0;
    raw_send(x, &e, ENV_VERSION);              /* off the channel */
    Mk__Route r = MK__ROUTE__INIT;
    Mk__Envelope re = MK__ENVELOPE__INIT;
    re.sender = "dc-a";
    re.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
    re.route = &r;
    raw_send(x, &re, ENV_VERSION);             /* a kind the link does not carry */
    e.rc_seq = 4;
    g.msg_id = 0;
    g.payload.len = payload_of(0, payload, sizeof payload);
    raw_send(x, &e, ENV_VERSION);              /* seq 4: a good one, behind three refused */
    struct wait_n one = {.e = &eb, .n = 1};
    assert_true(run_until(loop, received_n, &one, 10));
    assert_int_equal(eb.received, 1);
    assert_true(eb.payload_ok);
    gd_link_stats(eb.link, &st);
    assert_int_equal(st.refused_decode, 3);    /* the bytes, the newer envelope, the frame off the channel */
    assert_int_equal(st.refused_origin, 2);
    assert_int_equal(st.refused_version, 1);
    assert_int_equal(st.refused_ttl, 1);
    assert_int_equal(st.refused_other, 1);
    assert_int_equal(st.received, 1);
    bus_free(&x);
    assert_int_equal(gd_link_set_endpoint(eb.link, "dc-a", NULL, err, sizeof err), 0);

    /* The real dc-a: everything arrives, in order. */
    open_end(loop, &ea, &a, &b, gd_link_endpoint(eb.link), ANY_PORT, NULL);
    assert_int_equal(gd_link_set_endpoint(eb.link, "dc-a", gd_link_endpoint(ea.link), err, sizeof err), 0);
    for (uint64_t i = 1; i <= 100; i++)
        assert_int_equal(send_msg(ea.link, "dc-b", i), 0);
    struct wait_n w = {.e = &eb, .n = 101};
    assert_true(run_until(loop, received_n, &w, 10));
    assert_true(eb.in_order);
    assert_true(eb.payload_ok);
    assert_each_once(&eb, 101);
    end_release(&ea);
    end_release(&eb);
    ev_loop_destroy(loop);
}

static bool duplicates_seen(void *arg)
{
    const struct wait_n *w = arg;
    struct gd_link_stats st;
    gd_link_stats(w->e->link, &st);
    return st.duplicates >= 1;
}

/* Deferred acknowledgement: a message the receiver defers stays with the sender (it
 * re-sends it, the receiver drops the copy) until gd_link_done; done acknowledges up
 * to that message; a receiver restarted before done gets the rest again. */
static void test_deferred_done(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct dc a = {.name = "dc-a"}, b = {.name = "dc-b"};
    make_keys(&a.keys);
    make_keys(&b.keys);
    struct end ea, eb;
    end_init(&ea, "a");
    end_init(&eb, "b");
    eb.defer = true;
    open_end(loop, &eb, &b, &a, NULL, ANY_PORT, NULL);
    char b_ep[64];
    snprintf(b_ep, sizeof b_ep, "%s", gd_link_endpoint(eb.link));
    open_end(loop, &ea, &a, &b, b_ep, ANY_PORT, NULL);
    char err[256];
    assert_int_equal(gd_link_set_endpoint(eb.link, "dc-a", gd_link_endpoint(ea.link), err, sizeof err), 0);
    uint64_t first = gd_link_unacked_from(ea.link, "dc-b");
    for (uint64_t i = 0; i < 100; i++) {
        assert_int_equal(send_msg(ea.link, "dc-b", i), 0);
        assert_int_equal(gd_link_last_seq(ea.link, "dc-b"), first + i);
    }
    struct wait_n w = {.e = &eb, .n = 100, .l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, received_n, &w, 10));
    /* Not acknowledged: dc-a re-sends (dc-b drops the copies) and still holds all. */
    assert_true(run_until(loop, duplicates_seen, &w, 10));
    assert_int_equal(eb.received, 100);
    assert_int_equal(gd_link_queue_depth(ea.link, "dc-b"), 100);
    assert_int_equal(eb.ntickets, 100);
    assert_string_equal(eb.tickets[49].from, "dc-a");
    gd_link_done(eb.link, &eb.tickets[49]);
    struct wait_n half = {.n = 50, .l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, queue_at, &half, 10));
    /* The sender is told, and learns which: 0..49 acknowledged, 50.. not. */
    assert_true(ea.acked_calls >= 1);
    assert_int_equal(ea.acked_from, first + 50);
    assert_int_equal(gd_link_unacked_from(ea.link, "dc-b"), first + 50);

    /* dc-b restarts with 50..99 never done: they come again. */
    gd_link_free(&eb.link);
    eb.ntickets = 0;
    eb.next_id = 50;
    open_end(loop, &eb, &b, &a, gd_link_endpoint(ea.link), b_ep, NULL);
    w.n = 150;
    assert_true(run_until(loop, received_n, &w, 10));
    assert_true(eb.in_order);
    assert_int_equal(eb.ntickets, 50);
    gd_link_done(eb.link, &eb.tickets[49]);
    assert_true(run_until(loop, queue_empty, &w, 10));
    for (uint64_t i = 0; i < 100; i++)
        assert_int_equal(eb.applied[i], i < 50 ? 1 : 2);
    end_release(&ea);
    end_release(&eb);
    ev_loop_destroy(loop);
}

/* Where a peer listens changes at run time (gd learns it from Redis): dc-b moves to
 * another port; what dc-a sent before and after the move arrives once, in order. A
 * forward keeps its origin and hop count; one with no hop left is refused. */
static void test_endpoint_change(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct dc a = {.name = "dc-a"}, b = {.name = "dc-b"};
    make_keys(&a.keys);
    make_keys(&b.keys);
    struct end ea, eb;
    end_init(&ea, "a");
    end_init(&eb, "b");
    open_end(loop, &eb, &b, &a, NULL, ANY_PORT, NULL);
    open_end(loop, &ea, &a, &b, NULL, ANY_PORT, NULL);   /* endpoint not known yet */
    char err[256];
    assert_int_equal(gd_link_set_endpoint(eb.link, "dc-a", gd_link_endpoint(ea.link), err, sizeof err), 0);
    for (uint64_t i = 0; i < 50; i++)
        assert_int_equal(send_msg(ea.link, "dc-b", i), 0);
    assert_int_equal(gd_link_set_endpoint(ea.link, "dc-b", gd_link_endpoint(eb.link), err, sizeof err), 0);
    /* Setting the same endpoint again changes nothing. */
    assert_int_equal(gd_link_set_endpoint(ea.link, "dc-b", gd_link_endpoint(eb.link), err, sizeof err), 0);
    struct wait_n w = {.e = &eb, .n = 50, .l = ea.link, .peer = "dc-b"};
    assert_true(run_until(loop, received_n, &w, 10));
    assert_true(run_until(loop, queue_empty, &w, 10));

    /* dc-b moves: a new incarnation on another port. */
    gd_link_free(&eb.link);
    for (uint64_t i = 50; i < 100; i++)
        assert_int_equal(send_msg(ea.link, "dc-b", i), 0);
    open_end(loop, &eb, &b, &a, gd_link_endpoint(ea.link), ANY_PORT, NULL);
    assert_int_equal(gd_link_set_endpoint(ea.link, "dc-b", gd_link_endpoint(eb.link), err, sizeof err), 0);
    for (uint64_t i = 100; i < 150; i++)
        assert_int_equal(send_msg(ea.link, "dc-b", i), 0);
    w.n = 150;
    assert_true(run_until(loop, received_n, &w, 10));
    assert_true(run_until(loop, queue_empty, &w, 10));
    assert_true(eb.in_order);
    assert_each_once(&eb, 150);

    /* A forward: origin and hops as given; none left is a loop. */
    char buf[32];
    struct gd_link_msg fwd = {.origin = "dc-c", .ttl = 2, .msg_id = 150, .payload = buf};
    fwd.len = payload_of(150, buf, sizeof buf);
    assert_int_equal(gd_link_send(ea.link, "dc-b", &fwd), 0);
    w.n = 151;
    assert_true(run_until(loop, received_n, &w, 10));
    assert_string_equal(eb.last_origin, "dc-c");
    assert_int_equal(eb.last_ttl, 2);
    assert_true(run_until(loop, queue_empty, &w, 10));
    fwd.ttl = 0;
    assert_int_equal(gd_link_send(ea.link, "dc-b", &fwd), -1);
    assert_int_equal(errno, EINVAL);
    /* Forgetting the endpoint: messages wait, nothing breaks. */
    assert_int_equal(gd_link_set_endpoint(ea.link, "dc-b", NULL, err, sizeof err), 0);
    assert_int_equal(send_msg(ea.link, "dc-b", 151), 0);
    assert_int_equal(gd_link_queue_depth(ea.link, "dc-b"), 1);
    assert_int_equal(gd_link_set_endpoint(ea.link, "dc-x", NULL, err, sizeof err), -1);
    end_release(&ea);
    end_release(&eb);
    ev_loop_destroy(loop);
}

/* ---- kill -9 of the receiving process --------------------------------------------- */

struct child_ctx {
    int fd;                  /* write end: every id handed on, 8 bytes */
};

static void child_recv(void *ud, const char *from, const struct gd_link_msg *m)
{
    struct child_ctx *c = ud;
    uint64_t id = m->msg_id;
    if (write(c->fd, &id, sizeof id) != (ssize_t)sizeof id)
        _exit(3);
}

/* The receiving data center in a process of its own, until killed. */
static pid_t spawn_receiver(const struct dc *self, const struct dc *peer, const char *peer_ep, const char *bind,
                            int *rfd)
{
    int fds[2];
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        struct child_ctx c = {.fd = fds[1]};
        struct gd_link_peer_conf pc = {.dc = peer->name, .public_key = peer->keys.public_key, .endpoint = peer_ep};
        struct gd_link_params p = {.dc = self->name, .keys = self->keys, .bind = bind, .peers = &pc, .npeers = 1,
                                   .resend_ms = 200, .heartbeat = 0.05};
        struct gd_link_callbacks cb = {.recv = child_recv, .ud = &c};
        char err[256];
        struct gd_link *l = gd_link_new(loop, &p, &cb, NULL, err, sizeof err);
        if (l == NULL)
            _exit(2);
        ev_run(loop, 0);
        _exit(0);
    }
    close(fds[1]);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    *rfd = fds[0];
    return pid;
}

struct kill_log {
    uint64_t ids[2][MAX_MSGS];
    size_t n[2];
    int gen;
    int fd;
};

static bool drain_pipe(void *arg)
{
    struct kill_log *k = arg;
    uint64_t id;
    while (read(k->fd, &id, sizeof id) == (ssize_t)sizeof id) {
        if (k->n[k->gen] < MAX_MSGS)
            k->ids[k->gen][k->n[k->gen]++] = id;
    }
    return false;
}

struct kill_wait {
    struct kill_log *k;
    size_t n;
};

static bool gen_has(void *arg)
{
    struct kill_wait *w = arg;
    drain_pipe(w->k);
    return w->k->n[w->k->gen] >= w->n;
}

/* dc-b's process is killed with SIGKILL mid-stream (no acknowledgement flushed) and
 * started again on the same port: every message arrives, each incarnation in order,
 * and the only ones handed on twice are the last few the killed one had handed on
 * but not acknowledged (at least once: the window is one loop iteration). */
static void test_receiver_killed(void **state)
{
    static struct kill_log k;
    memset(&k, 0, sizeof k);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct dc a = {.name = "dc-a"}, b = {.name = "dc-b"};
    make_keys(&a.keys);
    make_keys(&b.keys);
    struct end ea;
    end_init(&ea, "a");
    /* dc-b's port, chosen here and bound by each of its incarnations. */
    int hold = listen_on(0);
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(hold, (struct sockaddr *)&sa, &len), 0);
    char b_ep[64];
    snprintf(b_ep, sizeof b_ep, "tcp://127.0.0.1:%d", ntohs(sa.sin_port));
    close(hold);
    open_end(loop, &ea, &a, &b, b_ep, ANY_PORT, NULL);
    pid_t pid = spawn_receiver(&b, &a, gd_link_endpoint(ea.link), b_ep, &k.fd);

    const uint64_t n = 6000;
    uint64_t sent = 0;
    while (sent < 3000)
        assert_int_equal(send_msg(ea.link, "dc-b", sent++), 0);
    struct kill_wait w = {.k = &k, .n = 1000};
    assert_true(run_until(loop, gen_has, &w, 20));
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    drain_pipe(&k);
    close(k.fd);
    while (sent < n)
        assert_int_equal(send_msg(ea.link, "dc-b", sent++), 0);
    k.gen = 1;
    pid = spawn_receiver(&b, &a, gd_link_endpoint(ea.link), b_ep, &k.fd);
    struct wait_n acked = {.l = ea.link, .peer = "dc-b"};
    int64_t deadline = mk_mono_us() + 30 * 1000000;
    while (!(queue_empty(&acked) && drain_pipe(&k) == false && k.n[0] + k.n[1] >= n) && mk_mono_us() < deadline)
        ev_run(loop, EVRUN_ONCE);
    assert_true(queue_empty(&acked));
    drain_pipe(&k);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    close(k.fd);

    /* Each incarnation in order, from 0 and up to n - 1, the second starting at or
     * before where the first stopped. */
    assert_true(k.n[0] >= 1000);
    for (size_t i = 0; i < k.n[0]; i++)
        assert_int_equal(k.ids[0][i], i);
    assert_true(k.n[1] >= 1);
    uint64_t start = k.ids[1][0];
    assert_true(start <= k.n[0]);
    for (size_t i = 0; i < k.n[1]; i++)
        assert_int_equal(k.ids[1][i], start + i);
    assert_int_equal(start + k.n[1], n);
    printf("gd_link kill -9: %zu handed on before, %zu after, %llu twice\n", k.n[0], k.n[1],
           (unsigned long long)(k.n[0] - start));
    end_release(&ea);
    ev_loop_destroy(loop);
}

int main(void)
{
    log_set_level(LOG_LEVEL_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delivery_in_order),
        cmocka_unit_test(test_wrong_key_refused),
        cmocka_unit_test(test_cut_mid_stream),
        cmocka_unit_test(test_dark_link),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_receiver_restart),
        cmocka_unit_test(test_garbage_on_port),
        cmocka_unit_test(test_deferred_done),
        cmocka_unit_test(test_endpoint_change),
        cmocka_unit_test(test_receiver_killed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
