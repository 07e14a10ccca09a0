/* tests/unit/test_bus.c - the bus and the reliable channel, two buses on one loop over tcp loopback. */
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
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "bus.h"
#include "env.h"
#include "log.h"
#include "rchan.h"
#include "util.h"
#include "loop_until.h"

#define ANY_PORT "tcp://127.0.0.1:*"

/* What one bus saw, filled by on_recv. */
struct inbox_log {
    uint64_t tests;          /* Test envelopes received */
    uint64_t next_n;         /* the Test.n expected next, for ordering */
    bool     in_order;
    uint64_t acks;
    uint64_t last_ack_epoch;
    uint64_t last_ack_upto;
    /* rchan plumbing, when the test uses it */
    struct rchan_tx *tx;
    struct rchan_rx *rx;
    bool     drop_acks;
    uint64_t acks_dropped;
    uint8_t *applied;        /* applied[n] counts how often Test n was applied */
    size_t   applied_len;
    uint64_t dups;
    uint64_t gaps;
    const char *answer_to;   /* when set, each Test applied is answered with a Test to it */
    size_t   charge;         /* when set, each Test costs this many envelopes (bus_charge) */
};

static void on_recv(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    struct inbox_log *in = ud;
    Mk__Envelope *e = *envp;
    if (e->payload_case == MK__ENVELOPE__PAYLOAD_ACK) {
        in->acks++;
        in->last_ack_epoch = e->ack->epoch;
        in->last_ack_upto = e->ack->upto;
        if (in->tx != NULL) {
            if (in->drop_acks)
                in->acks_dropped++;
            else
                rchan_tx_ack(in->tx, e->ack->epoch, e->ack->upto);
        }
        return;
    }
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_TEST)
        return;
    in->tests++;
    if (in->charge > 0)
        bus_charge(bus, in->charge);
    if (in->rx == NULL) {
        if (e->test->n != in->next_n)
            in->in_order = false;
        in->next_n = e->test->n + 1;
        return;
    }
    switch (rchan_rx_check(in->rx, e)) {
    case RCHAN_NEW:
        assert_true(e->test->n < in->applied_len);
        in->applied[e->test->n]++;
        rchan_rx_done(in->rx, e->sender, e->rc_epoch, e->rc_seq);
        if (in->answer_to != NULL) {
            Mk__Test t = MK__TEST__INIT;
            t.n = e->test->n;
            Mk__Envelope r = MK__ENVELOPE__INIT;
            r.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
            r.test = &t;
            assert_int_equal(bus_send_env(bus, in->answer_to, &r), 0);
        }
        break;
    case RCHAN_DUP:
        in->dups++;
        break;
    case RCHAN_GAP:
        in->gaps++;
        break;
    }
}

static bool never(void *arg)
{
    return false;
}

static struct bus *new_bus(struct ev_loop *loop, const char *id, int hwm, struct inbox_log *in)
{
    char err[256];
    struct bus *b = bus_new(loop, id, ANY_PORT, hwm, on_recv, in, err, sizeof err);
    if (b == NULL)
        fail_msg("bus_new: %s", err);
    assert_true(strncmp(bus_endpoint(b), "tcp://127.0.0.1:", 16) == 0);
    assert_true(strcmp(bus_endpoint(b), ANY_PORT) != 0);
    assert_string_equal(bus_self(b), id);
    return b;
}

static void connect_peer(struct bus *from, const char *id, struct bus *to)
{
    char err[256];
    if (bus_add_peer(from, id, bus_endpoint(to), err, sizeof err) == -1)
        fail_msg("bus_add_peer: %s", err);
}

static int send_test(struct bus *b, const char *peer, uint64_t n)
{
    Mk__Test t = MK__TEST__INIT;
    t.n = n;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
    e.test = &t;
    return bus_send_env(b, peer, &e);
}

/* ---- plain bus ------------------------------------------------------------ */

#define ORDERED_COUNT 10000

struct pump_state {
    struct bus *bus;
    uint64_t    next;     /* next n to send */
    uint64_t    refused;  /* EAGAIN answers seen */
    ev_idle     idle;
};

static void pump_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    struct pump_state *p = w->data;
    while (p->next <= ORDERED_COUNT) {
        if (send_test(p->bus, "b", p->next) == -1) {
            assert_int_equal(errno, EAGAIN);
            p->refused++;
            return;     /* the high-water mark: try again next iteration */
        }
        p->next++;
    }
    ev_idle_stop(loop, w);
}

static bool got_all_ordered(void *arg)
{
    return ((struct inbox_log *)arg)->tests >= ORDERED_COUNT;
}

static void test_ordered_10000(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct inbox_log in_a = {0}, in_b = {.next_n = 1, .in_order = true};
    struct bus *a = new_bus(loop, "a", 10, &in_a);
    struct bus *b = new_bus(loop, "b", 10, &in_b);
    connect_peer(a, "b", b);
    assert_int_equal(bus_peer_count(a), 1);
    assert_int_equal(bus_peer_count(b), 0);

    struct pump_state p = {.bus = a, .next = 1};
    ev_idle_init(&p.idle, pump_cb);
    p.idle.data = &p;
    ev_idle_start(loop, &p.idle);
    assert_true(run_until(loop, got_all_ordered, &in_b, 20));
    ev_idle_stop(loop, &p.idle);

    assert_true(in_b.in_order);
    assert_int_equal(in_b.tests, ORDERED_COUNT);
    assert_int_equal(bus_stats(b)->received, ORDERED_COUNT);
    assert_int_equal(bus_stats(a)->sent, ORDERED_COUNT);
    assert_int_equal(bus_stats(a)->send_blocked, p.refused);
    assert_int_equal(bus_stats(b)->dropped_bad, 0);
    bus_free(&a);
    bus_free(&b);
    assert_null(a);
    bus_free(NULL);
    ev_loop_destroy(loop);
}

/* n Tests from a to b, each in a frame of its own (a's loop runs once after each) or
 * all in one frame (one_frame), then b's loop iterated until it has them all: the most
 * one iteration of b handled. */
static uint64_t most_in_one_iteration(size_t charge, uint64_t n, bool one_frame)
{
    struct ev_loop *la = ev_loop_new(EVFLAG_AUTO), *lb = ev_loop_new(EVFLAG_AUTO);
    struct inbox_log in_a = {0}, in_b = {.next_n = 1, .in_order = true, .charge = charge};
    struct bus *a = new_bus(la, "a", 0, &in_a);
    struct bus *b = new_bus(lb, "b", 0, &in_b);
    connect_peer(a, "b", b);
    for (uint64_t i = 1; i <= n; i++) {
        assert_int_equal(send_test(a, "b", i), 0);
        if (!one_frame)
            ev_run(la, EVRUN_NOWAIT);   /* the prepare watcher flushes: one frame */
    }
    if (one_frame)
        ev_run(la, EVRUN_NOWAIT);
    uint64_t most = 0;
    int64_t end = mk_mono_us() + 10 * 1000000;
    while (in_b.tests < n && mk_mono_us() < end) {
        uint64_t before = in_b.tests;
        ev_run(lb, EVRUN_NOWAIT);
        if (in_b.tests - before > most)
            most = in_b.tests - before;
    }
    assert_int_equal(in_b.tests, n);
    assert_true(in_b.in_order);
    bus_free(&a);
    bus_free(&b);
    ev_loop_destroy(la);
    ev_loop_destroy(lb);
    return most;
}

static uint64_t most_per_iteration(size_t charge, uint64_t n)
{
    return most_in_one_iteration(charge, n, false);
}

/* bus_charge: an envelope that did the work of 1,000 (a group chat fan-out) ends the
 * loop iteration's receiving - one such envelope per iteration, the rest in the next
 * ones, in order; without charges one iteration takes every queued frame (up to 1,000
 * envelopes). */
static void test_charge_ends_the_iteration(void **state)
{
    assert_int_equal(most_per_iteration(1000, 50), 1);
    assert_true(most_per_iteration(999, 50) <= 2);
}

/* The same when the fan-outs came in one frame (a c2s batches what one loop turn sent:
 * many joins of a room at once): the budget ends the iteration inside the frame, the
 * rest of it follows in the next iterations, in order. Without charges a frame is taken
 * whole. */
static void test_charge_ends_the_iteration_inside_a_frame(void **state)
{
    assert_int_equal(most_in_one_iteration(1000, 50, true), 1);
    assert_true(most_in_one_iteration(499, 50, true) <= 3);
    assert_int_equal(most_in_one_iteration(0, 50, true), 50);
}

static void test_unknown_peer(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct inbox_log in = {0};
    struct bus *a = new_bus(loop, "a", 0, &in);
    errno = 0;
    assert_int_equal(bus_send(a, "nobody", "x", 1), -1);
    assert_int_equal(errno, EHOSTUNREACH);
    errno = 0;
    assert_int_equal(send_test(a, "nobody", 1), -1);
    assert_int_equal(errno, EHOSTUNREACH);
    assert_int_equal(bus_stats(a)->send_unknown, 2);
    assert_int_equal(bus_stats(a)->sent, 0);

    char err[256];
    assert_int_equal(bus_add_peer(a, "p", "tcp://127.0.0.1:1", err, sizeof err), 0);
    assert_int_equal(bus_add_peer(a, "p", "tcp://127.0.0.1:2", err, sizeof err), -1);
    assert_int_equal(bus_add_peer(a, "q", "bogus://x", err, sizeof err), -1);
    assert_true(err[0] != '\0');
    assert_int_equal(bus_peer_count(a), 1);

    /* The inbox address is taken: the second bus says so instead of failing later. */
    struct bus *dup = bus_new(loop, "dup", bus_endpoint(a), 0, on_recv, &in, err, sizeof err);
    assert_null(dup);
    assert_true(strstr(err, "bind") != NULL);
    bus_free(&a);
    ev_loop_destroy(loop);
}

/* A loopback port that nothing listens on (bound, read, released). */
static int unused_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd != -1);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void test_hwm_blocks_and_counts(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct inbox_log in = {0};
    struct bus *a = new_bus(loop, "a", 10, &in);
    char ep[64], err[256];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", unused_port());
    assert_int_equal(bus_add_peer(a, "ghost", ep, err, sizeof err), 0);

    uint64_t ok = 0, refused = 0;
    for (int i = 0; i < 1000; i++) {
        if (send_test(a, "ghost", (uint64_t)i + 1) == 0) {
            ok++;
        } else {
            assert_int_equal(errno, EAGAIN);
            refused++;
        }
    }
    /* Batches of at most hwm envelopes queue (IMMEDIATE=0) up to the mark, one batch
     * is held, then the bus refuses and counts: acceptance stays bounded. */
    assert_true(ok >= 10);
    assert_true(ok <= 10 * 40);
    assert_int_equal(refused, 1000 - ok);
    assert_int_equal(bus_stats(a)->send_blocked, refused);
    assert_int_equal(bus_stats(a)->sent, ok);

    /* Iterations and retries do not open the way while the peer stays away. */
    run_until(loop, never, NULL, 0.05);
    errno = 0;
    assert_int_equal(send_test(a, "ghost", 1001), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(bus_stats(a)->send_blocked, refused + 1);
    assert_int_equal(bus_stats(a)->sent, ok);

    /* Closing with frames queued for an absent peer must not hang. */
    int64_t t0 = mk_mono_us();
    bus_set_linger(a, 50);
    bus_free(&a);
    assert_true(mk_mono_us() - t0 < 2000000);
    ev_loop_destroy(loop);
}

struct bad_frame_state {
    struct inbox_log *in;
    struct bus *bus;
    uint64_t want_tests;
    uint64_t want_bad;
};

static bool saw_bad_and_good(void *arg)
{
    struct bad_frame_state *s = arg;
    return s->in->tests >= s->want_tests && bus_stats(s->bus)->dropped_bad >= s->want_bad;
}

static void test_garbage_frame_dropped(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct inbox_log in_a = {0}, in_b = {.next_n = 1, .in_order = true};
    struct bus *a = new_bus(loop, "a", 0, &in_a);
    struct bus *b = new_bus(loop, "b", 0, &in_b);
    connect_peer(a, "b", b);

    void *ctx = zmq_ctx_new();
    void *raw = zmq_socket(ctx, ZMQ_PUSH);
    int linger = 0;
    zmq_setsockopt(raw, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(raw, bus_endpoint(b)), 0);
    assert_int_equal(zmq_send(raw, "\xff\xfe garbage", 10, 0), 10);
    assert_int_equal(zmq_send(raw, "", 0, 0), 0);
    assert_int_equal(send_test(a, "b", 1), 0);

    struct bad_frame_state s = {.in = &in_b, .bus = b, .want_tests = 1, .want_bad = 2};
    assert_true(run_until(loop, saw_bad_and_good, &s, 10));
    assert_int_equal(bus_stats(b)->dropped_bad, 2);
    assert_int_equal(bus_stats(b)->received, 1);

    /* Still working after the bad frames. */
    assert_int_equal(send_test(a, "b", 2), 0);
    s.want_tests = 2;
    assert_true(run_until(loop, saw_bad_and_good, &s, 10));
    assert_true(in_b.in_order);

    zmq_close(raw);
    zmq_ctx_term(ctx);
    bus_free(&a);
    bus_free(&b);
    ev_loop_destroy(loop);
}

/* ---- batching ------------------------------------------------------------- */

/* Appends one batch entry (0x0a, varint length, bytes) to b. */
static void batch_entry(struct buf *b, const void *data, size_t len)
{
    unsigned char hdr[11];
    size_t n = 0;
    hdr[n++] = 0x0a;
    size_t v = len;
    while (v >= 0x80) {
        hdr[n++] = (unsigned char)((v & 0x7f) | 0x80);
        v >>= 7;
    }
    hdr[n++] = (unsigned char)v;
    buf_append(b, hdr, n);
    buf_append(b, data, len);
}

static void pack_test(struct buf *b, uint64_t n)
{
    Mk__Test t = MK__TEST__INIT;
    t.n = n;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
    e.test = &t;
    e.sender = (char *)"raw";
    env_pack(&e, b);
}

/* Walks a batch frame as the bus does; returns the entries, checking Test.n order. */
static size_t walk_batch(const unsigned char *p, size_t n, uint64_t *next_n)
{
    size_t pos = 0, entries = 0;
    while (pos < n) {
        assert_int_equal(p[pos++], 0x0a);
        uint64_t len = 0;
        for (unsigned shift = 0; ; shift += 7) {
            assert_true(pos < n && shift < 64);
            len |= (uint64_t)(p[pos] & 0x7f) << shift;
            if ((p[pos++] & 0x80) == 0)
                break;
        }
        assert_true(len <= n - pos);
        Mk__Envelope *e = env_decode(p + pos, (size_t)len);
        assert_non_null(e);
        assert_int_equal(e->payload_case, MK__ENVELOPE__PAYLOAD_TEST);
        assert_int_equal(e->test->n, *next_n);
        (*next_n)++;
        env_free(&e);
        pos += (size_t)len;
        entries++;
    }
    return entries;
}

/* Many envelopes sent in one iteration leave as few frames, each a batch. */
static void test_batch_few_frames(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct inbox_log in = {0};
    struct bus *a = new_bus(loop, "a", 0, &in);
    void *ctx = zmq_ctx_new();
    void *raw = zmq_socket(ctx, ZMQ_PULL);
    int linger = 0, timeout = 5000;
    zmq_setsockopt(raw, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(raw, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    assert_int_equal(zmq_bind(raw, ANY_PORT), 0);
    char ep[256];
    size_t eplen = sizeof ep;
    assert_int_equal(zmq_getsockopt(raw, ZMQ_LAST_ENDPOINT, ep, &eplen), 0);
    char err[256];
    assert_int_equal(bus_add_peer(a, "raw", ep, err, sizeof err), 0);

    /* 2,500 envelopes in one iteration; with hwm 0 a batch holds up to 1,000. */
    for (uint64_t n = 1; n <= 2500; n++)
        assert_int_equal(send_test(a, "raw", n), 0);
    ev_run(loop, EVRUN_NOWAIT);   /* the prepare watcher flushes */
    uint64_t next_n = 1;
    size_t frames = 0, entries = 0;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    while (entries < 2500) {
        assert_true(zmq_msg_recv(&msg, raw, 0) >= 0);
        frames++;
        const unsigned char *p = zmq_msg_data(&msg);
        assert_true(zmq_msg_size(&msg) > 0);
        assert_int_equal(p[0], 0x0a);
        entries += walk_batch(p, zmq_msg_size(&msg), &next_n);
    }
    assert_int_equal(entries, 2500);
    assert_true(frames <= 3);

    /* Past 64 KiB a batch leaves at once, without waiting for the iteration's end. */
    static uint8_t big[1000];
    Mk__Test t = MK__TEST__INIT;
    t.pad.data = big;
    t.pad.len = sizeof big;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
    e.test = &t;
    for (int i = 0; i < 70; i++) {
        t.n = next_n + (uint64_t)i;
        assert_int_equal(bus_send_env(a, "raw", &e), 0);
    }
    assert_true(zmq_msg_recv(&msg, raw, 0) >= 0);   /* no loop iteration ran */
    assert_true(zmq_msg_size(&msg) >= 64 * 1024);
    entries = walk_batch(zmq_msg_data(&msg), zmq_msg_size(&msg), &next_n);
    assert_true(entries > 60 && entries < 70);
    ev_run(loop, EVRUN_NOWAIT);
    assert_true(zmq_msg_recv(&msg, raw, 0) >= 0);
    entries += walk_batch(zmq_msg_data(&msg), zmq_msg_size(&msg), &next_n);
    assert_int_equal(entries, 70);
    assert_int_equal(bus_stats(a)->sent, 2570);
    zmq_msg_close(&msg);
    zmq_close(raw);
    zmq_ctx_term(ctx);
    bus_free(&a);
    ev_loop_destroy(loop);
}

struct frames_state {
    struct inbox_log *in;
    uint64_t want_tests;
};

/* A batch with a bad entry in the middle, broken batches, and a single envelope. */
static void test_batch_corrupt_and_single(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct inbox_log in_b = {.next_n = 1, .in_order = true};
    struct bus *b = new_bus(loop, "b", 0, &in_b);
    void *ctx = zmq_ctx_new();
    void *raw = zmq_socket(ctx, ZMQ_PUSH);
    int linger = 0;
    zmq_setsockopt(raw, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(raw, bus_endpoint(b)), 0);

    struct buf frame, one;
    buf_init(&frame);
    buf_init(&one);
    /* 1, an entry that is not an envelope, 2: the bad entry alone is dropped. */
    pack_test(&one, 1);
    batch_entry(&frame, one.data, one.len);
    batch_entry(&frame, "\xff\xfe\xfd", 3);
    buf_reset(&one);
    pack_test(&one, 2);
    batch_entry(&frame, one.data, one.len);
    assert_int_equal(zmq_send(raw, frame.data, frame.len, 0), (int)frame.len);
    struct bad_frame_state s = {.in = &in_b, .bus = b, .want_tests = 2, .want_bad = 1};
    assert_true(run_until(loop, saw_bad_and_good, &s, 10));
    assert_int_equal(bus_stats(b)->received, 2);
    assert_int_equal(bus_stats(b)->dropped_bad, 1);

    /* 3, 4, then an entry whose length runs past the end: 3 and 4 are kept, the
     * rest of the frame counts once. */
    buf_reset(&frame);
    for (uint64_t n = 3; n <= 5; n++) {
        buf_reset(&one);
        pack_test(&one, n);
        batch_entry(&frame, one.data, one.len);
    }
    frame.len -= 2;
    assert_int_equal(zmq_send(raw, frame.data, frame.len, 0), (int)frame.len);

    /* 5, then a varint that never ends. */
    buf_reset(&frame);
    buf_reset(&one);
    pack_test(&one, 5);
    batch_entry(&frame, one.data, one.len);
    buf_append(&frame, "\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 12);
    assert_int_equal(zmq_send(raw, frame.data, frame.len, 0), (int)frame.len);

    /* A frame of a single envelope (no batch), as tools send them. */
    buf_reset(&one);
    pack_test(&one, 6);
    assert_int_equal(zmq_send(raw, one.data, one.len, 0), (int)one.len);

    s.want_tests = 6;
    s.want_bad = 3;
    assert_true(run_until(loop, saw_bad_and_good, &s, 10));
    assert_int_equal(bus_stats(b)->received, 6);
    assert_int_equal(bus_stats(b)->dropped_bad, 3);
    assert_true(in_b.in_order);

    buf_release(&frame);
    buf_release(&one);
    zmq_close(raw);
    zmq_ctx_term(ctx);
    bus_free(&b);
    ev_loop_destroy(loop);
}

static bool got_tests(void *arg)
{
    struct frames_state *s = arg;
    return s->in->tests >= s->want_tests;
}

/* Order holds across batches and across a batch held while the peer is away. */
static void test_batch_order_across_held(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct inbox_log in_a = {0}, in_b = {.next_n = 1, .in_order = true};
    struct bus *a = new_bus(loop, "a", 10, &in_a);
    char ep[64], err[256];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", unused_port());
    assert_int_equal(bus_add_peer(a, "b", ep, err, sizeof err), 0);

    uint64_t n = 1;
    while (send_test(a, "b", n) == 0)
        n++;
    assert_int_equal(errno, EAGAIN);
    uint64_t accepted = n - 1;
    assert_true(accepted >= 10);
    run_until(loop, never, NULL, 0.03);               /* retries while the peer is away */

    struct bus *b = bus_new(loop, "b", ep, 10, on_recv, &in_b, err, sizeof err);
    if (b == NULL)
        fail_msg("bus_new: %s", err);
    struct frames_state s = {.in = &in_b, .want_tests = accepted};
    assert_true(run_until(loop, got_tests, &s, 10));
    /* The held batch went out when the peer came: more is accepted, still in order. */
    for (uint64_t i = 0; i < 50; i++)
        assert_int_equal(send_test(a, "b", n++), 0);
    s.want_tests = accepted + 50;
    assert_true(run_until(loop, got_tests, &s, 10));
    assert_true(in_b.in_order);
    assert_int_equal(in_b.tests, accepted + 50);
    assert_int_equal(bus_stats(b)->received, accepted + 50);
    assert_int_equal(bus_stats(a)->sent, accepted + 50);
    assert_int_equal(bus_stats(a)->send_blocked, 1);
    bus_free(&a);
    bus_free(&b);
    ev_loop_destroy(loop);
}

/* ---- reliable channel ------------------------------------------------------ */

#define RCHAN_COUNT 200

struct rchan_pair {
    struct ev_loop  *loop;
    struct inbox_log in_a, in_b;
    struct bus      *a, *b;        /* a sends on the channel, b receives */
    uint8_t          applied[RCHAN_COUNT + 1];
};

static void pair_open_hwm(struct rchan_pair *p, unsigned resend_ms, int hwm)
{
    memset(p, 0, sizeof *p);
    p->loop = ev_loop_new(EVFLAG_AUTO);
    p->a = new_bus(p->loop, "a", hwm, &p->in_a);
    p->b = new_bus(p->loop, "b", hwm, &p->in_b);
    connect_peer(p->a, "b", p->b);
    connect_peer(p->b, "a", p->a);
    p->in_a.tx = rchan_tx_new(p->loop, p->a, "b", 10000, resend_ms);
    p->in_b.rx = rchan_rx_new(p->loop, p->b);
    p->in_b.applied = p->applied;
    p->in_b.applied_len = sizeof p->applied;
}

static void pair_open(struct rchan_pair *p, unsigned resend_ms)
{
    pair_open_hwm(p, resend_ms, 0);
}

static void pair_close(struct rchan_pair *p)
{
    rchan_tx_free(&p->in_a.tx);
    assert_null(p->in_a.tx);
    rchan_rx_free(&p->in_b.rx);
    assert_null(p->in_b.rx);
    rchan_tx_free(NULL);
    rchan_rx_free(NULL);
    bus_free(&p->a);
    bus_free(&p->b);
    ev_loop_destroy(p->loop);
}

static void pair_send(struct rchan_pair *p, uint64_t from, uint64_t to)
{
    for (uint64_t n = from; n <= to; n++) {
        Mk__Test t = MK__TEST__INIT;
        t.n = n;
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
        e.test = &t;
        uint64_t seq = rchan_send(p->in_a.tx, &e);
        assert_true(seq > 0);
        assert_int_equal(e.rc_seq, seq);
    }
}

static bool nothing_pending(void *arg)
{
    return rchan_tx_pending(arg) == 0;
}

static void assert_applied_once(struct rchan_pair *p, uint64_t upto)
{
    for (uint64_t n = 1; n <= upto; n++)
        assert_int_equal(p->applied[n], 1);
}

static void test_rchan_acks_and_resend(void **state)
{
    struct rchan_pair p;
    pair_open(&p, 50);

    /* Acks lost: everything arrives once, stays pending, and is re-sent. */
    p.in_a.drop_acks = true;
    pair_send(&p, 1, RCHAN_COUNT);
    assert_int_equal(rchan_tx_pending(p.in_a.tx), RCHAN_COUNT);
    run_until(p.loop, never, NULL, 0.4);
    assert_applied_once(&p, RCHAN_COUNT);
    assert_int_equal(rchan_tx_pending(p.in_a.tx), RCHAN_COUNT);
    assert_true(p.in_a.acks_dropped > 0);
    assert_true(p.in_b.dups >= RCHAN_COUNT);   /* at least one full re-send round */

    /* Acks flow again: the next re-send's duplicates are acknowledged. */
    p.in_a.drop_acks = false;
    assert_true(run_until(p.loop, nothing_pending, p.in_a.tx, 5));
    assert_applied_once(&p, RCHAN_COUNT);
    assert_int_equal(p.in_a.last_ack_upto, RCHAN_COUNT);

    /* Fresh traffic after the storm is applied once and acknowledged. */
    p.in_b.applied_len = sizeof p.applied;
    memset(p.applied, 0, sizeof p.applied);
    pair_send(&p, 1, 50);
    assert_true(run_until(p.loop, nothing_pending, p.in_a.tx, 5));
    assert_applied_once(&p, 50);
    assert_int_equal(bus_stats(p.b)->dropped_bad, 0);
    pair_close(&p);
}

static bool acked_and_answered(void *arg)
{
    struct rchan_pair *p = arg;
    return rchan_tx_pending(p->in_a.tx) == 0 && p->in_a.tests == 1;
}

/* The receiver answers what it applied (as a router answers a Route with a Deliver to the
 * same c2s): the ack leaves in the answer's frame, not in one of its own after the delay. */
static void test_rchan_ack_rides_in_a_frame_that_leaves_anyway(void **state)
{
    struct rchan_pair p;
    pair_open(&p, 10000);
    p.in_b.answer_to = "a";
    pair_send(&p, 1, 1);
    assert_true(run_until(p.loop, acked_and_answered, &p, 5));
    assert_int_equal(p.in_a.acks, 1);
    assert_int_equal(bus_stats(p.b)->sent, 2);          /* the answer and the ack */
    assert_int_equal(bus_stats(p.b)->frames_sent, 1);   /* in one frame */
    /* Nothing goes back: the ack waits for its delay and then leaves alone. */
    p.in_b.answer_to = NULL;
    pair_send(&p, 2, 2);
    assert_true(run_until(p.loop, nothing_pending, p.in_a.tx, 5));
    assert_int_equal(p.in_a.acks, 2);
    assert_int_equal(bus_stats(p.b)->frames_sent, 2);
    pair_close(&p);
}

/* A held sender keeps what it numbers until rchan_tx_pump: then all of it goes in one
 * frame, in order, and is acknowledged as usual (push events are batched this way). */
static void test_rchan_hold_then_pump(void **state)
{
    struct rchan_pair p;
    pair_open(&p, 10000);
    uint64_t sent0 = bus_stats(p.a)->sent, frames0 = bus_stats(p.a)->frames_sent;
    rchan_tx_hold(p.in_a.tx, true);
    pair_send(&p, 1, 10);
    assert_int_equal(bus_stats(p.a)->sent, sent0);
    assert_int_equal(rchan_tx_unsent(p.in_a.tx), 10);
    assert_int_equal(rchan_tx_pending(p.in_a.tx), 10);
    rchan_tx_pump(p.in_a.tx);
    assert_int_equal(rchan_tx_unsent(p.in_a.tx), 0);
    assert_int_equal(bus_stats(p.a)->sent, sent0 + 10);
    assert_true(run_until(p.loop, nothing_pending, p.in_a.tx, 5));
    assert_applied_once(&p, 10);
    assert_int_equal(bus_stats(p.a)->frames_sent, frames0 + 1);
    /* Released: rchan_send hands each message to the bus at once again. */
    rchan_tx_hold(p.in_a.tx, false);
    pair_send(&p, 11, 11);
    assert_int_equal(rchan_tx_unsent(p.in_a.tx), 0);
    assert_int_equal(bus_stats(p.a)->sent, sent0 + 11);
    assert_true(run_until(p.loop, nothing_pending, p.in_a.tx, 5));
    assert_applied_once(&p, 11);
    pair_close(&p);
}

/* With a tiny high-water mark the sender is refused all the time; acks must keep it
 * going: the re-send timer (10 s) never fires within the 8 s allowed, so only acks
 * can carry the 2,000 messages (about 1 s under ASan, CURVE included; a loaded CI
 * machine once took over 2 s). Each carries 4 KiB, 8 MiB in all: more than both
 * pipes (10 frames of 10 each) and the sockets' buffers hold while the loop does not
 * run, so the bus refuses sends however soon ZeroMQ connects (with 10-byte messages
 * it refused only while the connection was being made, and a CI run that connected
 * first was never refused). */
static void test_rchan_small_hwm_flows(void **state)
{
    static uint8_t applied[2001];
    static uint8_t pad[4096];
    struct rchan_pair p;
    pair_open_hwm(&p, 10000, 10);
    p.in_b.applied = applied;
    p.in_b.applied_len = sizeof applied;
    for (uint64_t n = 1; n <= 2000; n++) {
        Mk__Test t = MK__TEST__INIT;
        t.n = n;
        t.pad.data = pad;
        t.pad.len = sizeof pad;
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
        e.test = &t;
        assert_int_equal(rchan_send(p.in_a.tx, &e), n);
    }
    assert_true(run_until(p.loop, nothing_pending, p.in_a.tx, 8));
    for (size_t n = 1; n <= 2000; n++)
        assert_int_equal(applied[n], 1);
    assert_true(bus_stats(p.a)->send_blocked > 0);
    pair_close(&p);
}

static void test_rchan_back_pressure(void **state)
{
    struct rchan_pair p;
    pair_open(&p, 1000);
    rchan_tx_free(&p.in_a.tx);
    p.in_a.tx = rchan_tx_new(p.loop, p.a, "b", 5, 1000);
    Mk__Test t = MK__TEST__INIT;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
    e.test = &t;
    for (uint64_t i = 1; i <= 5; i++) {
        t.n = i;
        assert_int_equal(rchan_send(p.in_a.tx, &e), i);
        assert_int_equal(e.rc_seq, i);
        assert_true(e.rc_epoch != 0);
    }
    errno = 0;
    assert_int_equal(rchan_send(p.in_a.tx, &e), 0);
    assert_int_equal(errno, EAGAIN);

    uint64_t epoch = e.rc_epoch;
    rchan_tx_ack(p.in_a.tx, epoch + 1, 5);          /* another incarnation's ack */
    assert_int_equal(rchan_tx_pending(p.in_a.tx), 5);
    rchan_tx_ack(p.in_a.tx, epoch, 2);
    assert_int_equal(rchan_tx_pending(p.in_a.tx), 3);
    rchan_tx_ack(p.in_a.tx, epoch, 1);              /* stale */
    assert_int_equal(rchan_tx_pending(p.in_a.tx), 3);
    rchan_tx_ack(p.in_a.tx, epoch, 99);             /* beyond what was sent: clamps */
    assert_int_equal(rchan_tx_pending(p.in_a.tx), 0);
    t.n = 6;
    assert_int_equal(rchan_send(p.in_a.tx, &e), 6);
    assert_true(run_until(p.loop, nothing_pending, p.in_a.tx, 5));
    assert_int_equal(p.applied[1] + p.applied[2] + p.applied[6], 3);
    pair_close(&p);
}

static Mk__Envelope *rc_env(Mk__Envelope *e, Mk__Test *t, const char *sender,
                            uint64_t epoch, uint64_t seq)
{
    mk__test__init(t);
    t->n = seq;
    mk__envelope__init(e);
    e->sender = (char *)sender;
    e->rc_epoch = epoch;
    e->rc_seq = seq;
    e->payload_case = MK__ENVELOPE__PAYLOAD_TEST;
    e->test = t;
    return e;
}

static enum rchan_verdict check(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq)
{
    Mk__Envelope e;
    Mk__Test t;
    return rchan_rx_check(rx, rc_env(&e, &t, sender, epoch, seq));
}

static enum rchan_verdict check_b(struct rchan_rx *rx, const char *sender, uint64_t epoch, uint64_t seq,
                                  uint64_t base)
{
    Mk__Envelope e;
    Mk__Test t;
    rc_env(&e, &t, sender, epoch, seq);
    e.rc_base = base;
    return rchan_rx_check(rx, &e);
}

static bool one_more_ack(void *arg)
{
    struct rchan_pair *p = arg;
    return p->in_a.acks > 0;
}

static void test_rchan_verdicts(void **state)
{
    struct rchan_pair p;
    pair_open(&p, 1000);
    struct rchan_rx *rx = p.in_b.rx;
    const uint64_t e1 = 1000, e2 = 2000;

    /* Unknown sender: accepted wherever it starts (it re-sends only unacknowledged). */
    assert_int_equal(check(rx, "a", e1, 5), RCHAN_NEW);
    assert_int_equal(check(rx, "a", e1, 5), RCHAN_DUP);   /* not done yet: no ack */
    assert_int_equal(check(rx, "a", e1, 7), RCHAN_GAP);
    assert_int_equal(check(rx, "a", e1, 6), RCHAN_NEW);
    assert_int_equal(check(rx, "a", e1, 7), RCHAN_NEW);
    assert_int_equal(check(rx, "a", e1, 0), RCHAN_GAP);   /* not on the channel */
    run_until(p.loop, never, NULL, 0.05);
    assert_int_equal(p.in_a.acks, 0);

    /* Done: one batched ack for several, then one per duplicate of done work. */
    rchan_rx_done(rx, "a", e1, 5);
    rchan_rx_done(rx, "a", e1, 7);
    rchan_rx_done(rx, "a", e1, 6);                        /* out of order: max wins */
    assert_true(run_until(p.loop, one_more_ack, &p, 5));
    run_until(p.loop, never, NULL, 0.05);
    assert_int_equal(p.in_a.acks, 1);
    assert_int_equal(p.in_a.last_ack_epoch, e1);
    assert_int_equal(p.in_a.last_ack_upto, 7);
    p.in_a.acks = 0;
    assert_int_equal(check(rx, "a", e1, 6), RCHAN_DUP);
    assert_true(run_until(p.loop, one_more_ack, &p, 5));
    assert_int_equal(p.in_a.last_ack_upto, 7);

    /* A new epoch resets the window; the old incarnation's stragglers are dropped. */
    assert_int_equal(check(rx, "a", e2, 3), RCHAN_NEW);
    assert_int_equal(check(rx, "a", e2, 4), RCHAN_NEW);
    assert_int_equal(check(rx, "a", e1, 8), RCHAN_DUP);
    assert_int_equal(check(rx, "a", e2, 5), RCHAN_NEW);
    rchan_rx_done(rx, "a", e1, 8);                        /* old epoch: ignored */
    rchan_rx_done(rx, "unknown", e1, 8);                  /* unknown sender: ignored */

    /* Senders are independent. */
    assert_int_equal(check(rx, "c", e1, 1), RCHAN_NEW);
    assert_int_equal(check(rx, "c", e1, 1), RCHAN_DUP);
    assert_int_equal(check(rx, "a", e2, 6), RCHAN_NEW);

    /* Restore after a restart: re-sent applied ones are duplicates. */
    rchan_rx_restore(rx, "d", e1, 10);
    assert_int_equal(check(rx, "d", e1, 9), RCHAN_DUP);
    assert_int_equal(check(rx, "d", e1, 12), RCHAN_GAP);
    assert_int_equal(check(rx, "d", e1, 11), RCHAN_NEW);
    assert_int_equal(check(rx, "d", e2, 40), RCHAN_NEW);  /* it restarted meanwhile */

    /* Many senders (grows the table). */
    char name[32];
    for (int i = 0; i < 500; i++) {
        snprintf(name, sizeof name, "c2s.%d", i);
        assert_int_equal(check(rx, name, e1, 1), RCHAN_NEW);
    }
    for (int i = 0; i < 500; i++) {
        snprintf(name, sizeof name, "c2s.%d", i);
        assert_int_equal(check(rx, name, e1, 1), RCHAN_DUP);
    }
    pair_close(&p);
}

static void test_rchan_strict(void **state)
{
    struct rchan_pair p;
    pair_open(&p, 1000);
    struct rchan_rx *rx = p.in_b.rx;
    rchan_rx_set_strict(rx, true);
    assert_int_equal(check(rx, "a", 100, 5), RCHAN_GAP);  /* queued before a crash */
    assert_int_equal(check(rx, "a", 100, 6), RCHAN_GAP);
    assert_int_equal(check(rx, "a", 100, 1), RCHAN_NEW);  /* the re-send from the oldest */
    assert_int_equal(check(rx, "a", 100, 2), RCHAN_NEW);
    assert_int_equal(check(rx, "a", 200, 3), RCHAN_GAP);  /* a new incarnation starts at 1 */
    assert_int_equal(check(rx, "a", 200, 1), RCHAN_NEW);
    rchan_rx_restore(rx, "b", 100, 50);
    assert_int_equal(check(rx, "b", 100, 51), RCHAN_NEW);
    pair_close(&p);
}

/* rc_base: a receiver without state resumes at the sender's base, not at whatever
 * frame arrives first (a frame queued before the receiver's crash). */
static void test_rchan_base_verdicts(void **state)
{
    struct rchan_pair p;
    pair_open(&p, 1000);
    struct rchan_rx *rx = p.in_b.rx;
    const uint64_t e1 = 1000, e2 = 2000;
    assert_int_equal(check_b(rx, "a", e1, 1000, 800), RCHAN_GAP);  /* queued before the crash */
    assert_int_equal(check_b(rx, "a", e1, 1001, 800), RCHAN_GAP);
    assert_int_equal(check_b(rx, "a", e1, 800, 800), RCHAN_NEW);   /* the re-send from the oldest */
    assert_int_equal(check_b(rx, "a", e1, 801, 800), RCHAN_NEW);
    assert_int_equal(check_b(rx, "a", e1, 800, 800), RCHAN_DUP);
    assert_int_equal(check_b(rx, "a", e1, 803, 800), RCHAN_GAP);
    /* Acks of an earlier incarnation of ours moved the sender's base past what we wait for. */
    assert_int_equal(check_b(rx, "b", e1, 50, 40), RCHAN_GAP);
    assert_int_equal(check_b(rx, "b", e1, 45, 45), RCHAN_NEW);
    assert_int_equal(check_b(rx, "b", e1, 46, 45), RCHAN_NEW);
    assert_int_equal(check_b(rx, "b", e1, 44, 45), RCHAN_GAP);     /* base above seq: malformed */
    /* A new incarnation of the sender resumes at its base too. */
    assert_int_equal(check_b(rx, "a", e2, 3, 2), RCHAN_GAP);
    assert_int_equal(check_b(rx, "a", e2, 2, 2), RCHAN_NEW);
    assert_int_equal(check_b(rx, "a", e1, 802, 800), RCHAN_DUP);   /* the old incarnation */
    /* Strict mode changes nothing when the base is given. */
    rchan_rx_set_strict(rx, true);
    assert_int_equal(check_b(rx, "c", e1, 7, 5), RCHAN_GAP);
    assert_int_equal(check_b(rx, "c", e1, 5, 5), RCHAN_NEW);
    pair_close(&p);
}

static bool applied_range(struct rchan_pair *p, uint64_t from, uint64_t to)
{
    for (uint64_t n = from; n <= to; n++) {
        if (p->applied[n] != 1)
            return false;
    }
    return true;
}

/* End to end: the receiver restarts (its state lost) while the sender holds frames
 * whose packed base is stale; the re-send carries the current base, so the new
 * receiver neither skips anything nor waits for frames the sender no longer has. */
static void test_rchan_receiver_restart(void **state)
{
    struct rchan_pair p;
    pair_open(&p, 50);
    pair_send(&p, 1, 10);
    assert_true(run_until(p.loop, nothing_pending, p.in_a.tx, 5));
    assert_true(applied_range(&p, 1, 10));
    uint64_t epoch = p.in_a.last_ack_epoch;

    /* 11..30 reach the old receiver; its acks are lost, then it dies. */
    p.in_a.drop_acks = true;
    pair_send(&p, 11, 30);
    run_until(p.loop, never, NULL, 0.03);
    assert_true(applied_range(&p, 11, 30));
    rchan_rx_free(&p.in_b.rx);
    p.in_b.rx = rchan_rx_new(p.loop, p.b);
    memset(p.applied, 0, sizeof p.applied);
    /* One late ack of the dead receiver reaches the sender: 11..20 are committed. */
    rchan_tx_ack(p.in_a.tx, epoch, 20);
    assert_int_equal(rchan_tx_pending(p.in_a.tx), 10);
    /* A frame queued before the crash arrives first (packed when the base was 11). */
    assert_int_equal(check_b(p.in_b.rx, "a", epoch, 25, 11), RCHAN_GAP);

    p.in_a.drop_acks = false;
    assert_true(run_until(p.loop, nothing_pending, p.in_a.tx, 5));
    assert_true(applied_range(&p, 21, 30));
    for (uint64_t n = 1; n <= 20; n++)
        assert_int_equal(p.applied[n], 0);
    assert_int_equal(p.in_a.last_ack_upto, 30);
    assert_int_equal(bus_stats(p.b)->dropped_bad, 0);
    pair_close(&p);
}

/* A new sender incarnation (new tx, new epoch) is accepted and acknowledged from 1. */
static void test_rchan_epoch_change(void **state)
{
    struct rchan_pair p;
    pair_open(&p, 100);
    pair_send(&p, 1, 10);
    assert_true(run_until(p.loop, nothing_pending, p.in_a.tx, 5));
    assert_applied_once(&p, 10);
    rchan_tx_free(&p.in_a.tx);
    usleep(2000);   /* epochs are microsecond clocks: make sure they differ */

    memset(p.applied, 0, sizeof p.applied);
    p.in_a.tx = rchan_tx_new(p.loop, p.a, "b", 100, 100);
    pair_send(&p, 1, 10);
    assert_true(run_until(p.loop, nothing_pending, p.in_a.tx, 5));
    assert_applied_once(&p, 10);
    assert_int_equal(p.in_a.last_ack_upto, 10);
    assert_int_equal(p.in_b.gaps, 0);
    pair_close(&p);
}


/* ---- CURVE, frame limit, transient peers ------------------------------------------- */

static struct bus *open_bus(struct ev_loop *loop, const char *id, const struct bus_options *o, struct inbox_log *in)
{
    char err[256];
    struct bus *b = bus_open(loop, id, ANY_PORT, o, on_recv, in, err, sizeof err);
    if (b == NULL)
        fail_msg("bus_open: %s", err);
    return b;
}

static void make_keys(struct bus_keys *k)
{
    assert_int_equal(zmq_curve_keypair(k->public_key, k->secret_key), 0);
}

struct refusal_wait {
    const struct bus *bus;
    const struct inbox_log *in;
    uint64_t tests;
};

static bool key_refused(void *arg)
{
    const struct refusal_wait *w = arg;
    return bus_stats(w->bus)->refused_key >= 1;
}

static bool handshake_refused(void *arg)
{
    const struct refusal_wait *w = arg;
    return bus_stats(w->bus)->refused_handshake >= 1;
}

static bool disconnected(void *arg)
{
    const struct refusal_wait *w = arg;
    return bus_stats(w->bus)->inbox_disconnects >= 1;
}

static bool reached_tests(void *arg)
{
    const struct refusal_wait *w = arg;
    return w->in->tests >= w->tests;
}

/* A bus with the cluster's keys talks to another; a client with another key, or with no
 * CURVE at all, is refused and counted, and nothing it sends arrives. */
static void test_curve_accepts_cluster_refuses_others(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct bus_keys cluster, other;
    make_keys(&cluster);
    make_keys(&other);
    struct inbox_log in_a = {.in_order = true}, in_b = {.in_order = true}, in_x = {.in_order = true};
    struct bus_options with_cluster = {.curve = &cluster};
    struct bus *a = open_bus(loop, "a", &with_cluster, &in_a);
    struct bus *b = open_bus(loop, "b", &with_cluster, &in_b);
    connect_peer(b, "a", a);
    for (uint64_t i = 0; i < 100; i++)
        assert_int_equal(send_test(b, "a", i), 0);
    struct refusal_wait wa = {.bus = a, .in = &in_a, .tests = 100};
    assert_true(run_until(loop, reached_tests, &wa, 10));
    assert_true(in_a.in_order);

    /* An intruder who knows the cluster's public key but not its secret. */
    struct bus_options intruder = {.curve = &cluster, .curve_client = &other};
    struct bus *x = open_bus(loop, "x", &intruder, &in_x);
    connect_peer(x, "a", a);
    assert_int_equal(send_test(x, "a", 1000), 0);
    assert_true(run_until(loop, key_refused, &wa, 10));
    /* Without CURVE: the handshake fails (mechanism mismatch). */
    struct bus *y = open_bus(loop, "y", NULL, &in_x);
    connect_peer(y, "a", a);
    assert_int_equal(send_test(y, "a", 2000), 0);
    assert_true(run_until(loop, handshake_refused, &wa, 10));
    /* The refusals came before anything could be read: a's traffic from b still flows,
     * and what the intruders sent never showed up among it. */
    assert_int_equal(send_test(b, "a", 100), 0);
    wa.tests = 101;
    assert_true(run_until(loop, reached_tests, &wa, 10));
    assert_true(in_a.in_order);
    assert_int_equal(in_a.next_n, 101);
    bus_free(&y);
    bus_free(&x);
    bus_free(&b);
    bus_free(&a);
    ev_loop_destroy(loop);
}

/* A frame limit: an envelope too big for it is refused at the sender (EMSGSIZE); a
 * batch is cut so that no frame exceeds it; the receiver drops a connection that sends
 * a larger frame, counts it, and takes the sender's later frames. */
static void test_max_frame(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct inbox_log in_a = {.in_order = true}, in_b = {.in_order = true};
    struct bus_options limited = {.max_frame = 4096};
    struct bus *a = open_bus(loop, "a", &limited, &in_a);
    struct bus *b = open_bus(loop, "b", &limited, &in_b);
    struct bus *big = open_bus(loop, "big", NULL, &in_b);
    connect_peer(b, "a", a);
    connect_peer(big, "a", a);
    static unsigned char blob[8192];
    memset(blob, 'x', sizeof blob);
    Mk__Test t = MK__TEST__INIT;
    t.n = 0;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
    e.test = &t;
    assert_int_equal(bus_send(b, "a", blob, 5000), -1);
    assert_int_equal(errno, EMSGSIZE);
    assert_int_equal(bus_stats(b)->send_too_big, 1);
    /* 20 envelopes of ~1 KiB in one loop turn: more than one frame's worth. */
    t.pad.data = blob;
    t.pad.len = 1000;
    for (uint64_t i = 0; i < 20; i++) {
        t.n = i;
        assert_int_equal(bus_send_env(b, "a", &e), 0);
    }
    struct refusal_wait wa = {.bus = a, .in = &in_a, .tests = 20};
    assert_true(run_until(loop, reached_tests, &wa, 10));
    assert_true(in_a.in_order);
    assert_int_equal(bus_stats(a)->dropped_bad, 0);
    /* A sender without the limit: its 8 KiB frame is refused by a's ZeroMQ. */
    assert_int_equal(bus_send(big, "a", blob, sizeof blob), 0);
    assert_true(run_until(loop, disconnected, &wa, 10));
    /* The sender learns of the refusal on its own side later than a does: a frame it
     * queues meanwhile goes down with the old connection (the bus alone promises no
     * delivery: the reliable channel re-sends). A few more, until one comes through the
     * new connection. */
    t.pad.len = 10;
    wa.tests = 21;
    bool through = false;
    for (uint64_t i = 0; i < 20 && !through; i++) {
        t.n = 20 + i;
        assert_int_equal(bus_send_env(big, "a", &e), 0);
        through = run_until(loop, reached_tests, &wa, 1);
    }
    assert_true(through);
    assert_int_equal(bus_stats(a)->dropped_bad, 0);
    bus_free(&big);
    bus_free(&b);
    bus_free(&a);
    ev_loop_destroy(loop);
}

/* A peer added for one reply and removed at once still gets what was queued for it. */
static void test_remove_peer_delivers(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct inbox_log in_a = {.in_order = true}, in_b = {.in_order = true};
    struct bus *a = open_bus(loop, "a", NULL, &in_a);
    struct bus *b = open_bus(loop, "b", NULL, &in_b);
    struct refusal_wait wa = {.bus = a, .in = &in_a};
    for (uint64_t round = 0; round < 50; round++) {
        connect_peer(b, "a", a);
        assert_int_equal(bus_peer_count(b), 1);
        assert_int_equal(send_test(b, "a", round), 0);
        assert_int_equal(bus_remove_peer(b, "a", 2000), 0);
        assert_int_equal(bus_peer_count(b), 0);
        wa.tests = round + 1;
        assert_true(run_until(loop, reached_tests, &wa, 10));
    }
    assert_true(in_a.in_order);
    assert_int_equal(bus_remove_peer(b, "a", 0), -1);
    assert_int_equal(errno, EHOSTUNREACH);
    bus_free(&b);
    bus_free(&a);
    ev_loop_destroy(loop);
}

int main(void)
{
    log_init("test_bus", LOG_LEVEL_ERROR, NULL);   /* bad frames are expected here */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ordered_10000),
        cmocka_unit_test(test_unknown_peer),
        cmocka_unit_test(test_charge_ends_the_iteration),
        cmocka_unit_test(test_charge_ends_the_iteration_inside_a_frame),
        cmocka_unit_test(test_hwm_blocks_and_counts),
        cmocka_unit_test(test_garbage_frame_dropped),
        cmocka_unit_test(test_batch_few_frames),
        cmocka_unit_test(test_batch_corrupt_and_single),
        cmocka_unit_test(test_batch_order_across_held),
        cmocka_unit_test(test_rchan_acks_and_resend),
        cmocka_unit_test(test_rchan_ack_rides_in_a_frame_that_leaves_anyway),
        cmocka_unit_test(test_rchan_hold_then_pump),
        cmocka_unit_test(test_rchan_small_hwm_flows),
        cmocka_unit_test(test_rchan_back_pressure),
        cmocka_unit_test(test_rchan_verdicts),
        cmocka_unit_test(test_rchan_strict),
        cmocka_unit_test(test_rchan_base_verdicts),
        cmocka_unit_test(test_rchan_receiver_restart),
        cmocka_unit_test(test_rchan_epoch_change),
        cmocka_unit_test(test_curve_accepts_cluster_refuses_others),
        cmocka_unit_test(test_max_frame),
        cmocka_unit_test(test_remove_peer_delivers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
