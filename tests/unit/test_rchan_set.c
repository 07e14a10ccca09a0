/* tests/unit/test_rchan_set.c - a reliable-channel sender per process of a role: shards, acks told apart by epoch, re-send on Hello. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <cmocka.h>

#include "bus.h"
#include "cfg.h"
#include "env.h"
#include "rchan.h"
#include "rchan_set.h"
#include "util.h"
#include "loop_until.h"

#define ANY_PORT "tcp://127.0.0.1:*"

static const char yaml[] =
    "processes:\n"
    "  - {id: c2s.0, bus: \"tcp://127.0.0.1:7\", metrics: \"127.0.0.1:8\"}\n"
    "  - {id: router.0, bus: \"tcp://127.0.0.1:1\", metrics: \"127.0.0.1:2\"}\n"
    "  - {id: mam.0, bus: \"tcp://127.0.0.1:3\", metrics: \"127.0.0.1:4\"}\n"
    "  - {id: mam.1, bus: \"tcp://127.0.0.1:5\", metrics: \"127.0.0.1:6\"}\n";

/* A mam: applies every Test once and acknowledges it. Set a sends odd numbers, set b
 * even ones: a receiver keeps one rchan_rx per channel (as the mam does for archive
 * and offline writes from one router). */
struct receiver {
    struct rchan_rx *rx;      /* set a's channel */
    struct rchan_rx *rx_b;
    uint64_t applied;
    uint64_t dups;
};

/* The router: two sets to the mam shards, each counting the acks it took. */
struct sender {
    struct rchan_set *a;
    struct rchan_set *b;
    uint64_t acks_a, acks_b, acks_other;
    bool drop_acks;
};

static void on_receiver(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    struct receiver *r = ud;
    Mk__Envelope *e = *envp;
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_TEST)
        return;
    struct rchan_rx *rx = e->test->n % 2 ? r->rx : r->rx_b;
    switch (rchan_rx_check(rx, e)) {
    case RCHAN_NEW:
        r->applied++;
        rchan_rx_done(rx, e->sender, e->rc_epoch, e->rc_seq);
        break;
    case RCHAN_DUP:
        r->dups++;
        break;
    case RCHAN_GAP:
        break;
    }
}

static void on_sender(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    struct sender *s = ud;
    const Mk__Envelope *e = *envp;
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_ACK || s->drop_acks)
        return;
    if (rchan_set_on_envelope(s->a, e))
        s->acks_a++;
    else if (rchan_set_on_envelope(s->b, e))
        s->acks_b++;
    else
        s->acks_other++;
}

struct done_arg {
    struct rchan_set *a, *b;
};

static bool all_acked(void *arg)
{
    struct done_arg *d = arg;
    return rchan_set_pending(d->a) == 0 && rchan_set_pending(d->b) == 0;
}

static bool never(void *arg)
{
    return false;
}

static struct bus *new_bus(struct ev_loop *loop, const char *id, bus_recv_fn *cb, void *ud)
{
    char err[256];
    struct bus *b = bus_new(loop, id, ANY_PORT, 0, cb, ud, err, sizeof err);
    if (b == NULL)
        fail_msg("bus_new: %s", err);
    return b;
}

static void connect_peer(struct bus *from, const char *id, struct bus *to)
{
    char err[256];
    if (bus_add_peer(from, id, bus_endpoint(to), err, sizeof err) == -1)
        fail_msg("bus_add_peer: %s", err);
}

static uint64_t send_test(struct rchan_tx *tx, uint64_t n)
{
    Mk__Test t = MK__TEST__INIT;
    t.n = n;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
    e.test = &t;
    return rchan_send(tx, &e);
}

static void test_sets(void **state)
{
    char err[256];
    struct cfg *cfg = cfg_load_string(yaml, strlen(yaml), "t.yaml", err, sizeof err);
    if (cfg == NULL)
        fail_msg("cfg: %s", err);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct sender snd = {0};
    struct receiver r0 = {0}, r1 = {0};
    struct bus *router = new_bus(loop, "router.0", on_sender, &snd);
    struct bus *mam0 = new_bus(loop, "mam.0", on_receiver, &r0);
    struct bus *mam1 = new_bus(loop, "mam.1", on_receiver, &r1);
    connect_peer(router, "mam.0", mam0);
    connect_peer(router, "mam.1", mam1);
    connect_peer(mam0, "router.0", router);
    connect_peer(mam1, "router.0", router);
    r0.rx = rchan_rx_new(loop, mam0);
    r1.rx = rchan_rx_new(loop, mam1);
    r0.rx_b = rchan_rx_new(loop, mam0);
    r1.rx_b = rchan_rx_new(loop, mam1);

    /* No process of the role: no set, and every call takes NULL. */
    assert_null(rchan_set_new(loop, router, cfg, CFG_ROLE_PUSHER, 10, 1000));
    assert_null(rchan_set_shard(NULL, "a@b"));
    assert_int_equal(rchan_set_pending(NULL), 0);

    snd.a = rchan_set_new(loop, router, cfg, CFG_ROLE_MAM, 100, 60000);
    snd.b = rchan_set_new(loop, router, cfg, CFG_ROLE_MAM, 100, 60000);
    assert_non_null(snd.a);
    assert_non_null(snd.b);
    assert_null(rchan_set_peer(snd.a, "router.0"));
    assert_null(rchan_set_peer(snd.a, "mam.2"));
    struct rchan_tx *a0 = rchan_set_peer(snd.a, "mam.0"), *b0 = rchan_set_peer(snd.b, "mam.0");
    assert_non_null(a0);
    assert_true(rchan_tx_epoch(a0) != rchan_tx_epoch(b0));
    /* The shard of a key is the configured one. */
    const char *keys[] = {"alice@localhost", "bob@localhost", "carol@localhost", "dave@localhost"};
    for (size_t i = 0; i < MK_ARRAY_LEN(keys); i++) {
        const struct cfg_proc *p = cfg_shard(cfg, CFG_ROLE_MAM, keys[i]);
        assert_ptr_equal(rchan_set_shard(snd.a, keys[i]), rchan_set_peer(snd.a, p->id));
    }

    /* Both sets write to both shards; each ack goes to the set whose sender it names. */
    uint64_t seq = 0;
    for (uint64_t n = 0; n < 20; n++) {
        seq = send_test(rchan_set_peer(n % 2 ? snd.a : snd.b, n % 4 < 2 ? "mam.0" : "mam.1"), n);
        assert_true(seq > 0);
    }
    assert_int_equal(rchan_set_pending(snd.a) + rchan_set_pending(snd.b), 20);
    assert_false(rchan_tx_acked(rchan_set_peer(snd.b, "mam.1"), seq));
    struct done_arg d = {snd.a, snd.b};
    bool ok = run_until(loop, all_acked, &d, 5);
    if (!ok)
        fail_msg("applied %llu+%llu acks %llu/%llu/%llu pending %zu/%zu", (unsigned long long)r0.applied,
                 (unsigned long long)r1.applied, (unsigned long long)snd.acks_a, (unsigned long long)snd.acks_b,
                 (unsigned long long)snd.acks_other, rchan_set_pending(snd.a), rchan_set_pending(snd.b));
    assert_true(rchan_tx_acked(rchan_set_peer(snd.b, "mam.1"), seq));
    assert_int_equal(r0.applied + r1.applied, 20);
    assert_true(snd.acks_a > 0 && snd.acks_b > 0);
    assert_int_equal(snd.acks_other, 0);

    /* A Hello from a shard re-sends what it has not acknowledged (and is not consumed). */
    r0.rx == NULL ? (void)0 : rchan_rx_free(&r0.rx);
    r0.rx = rchan_rx_new(loop, mam0);   /* a restarted mam.0 */
    assert_true(send_test(a0, 99) > 0);
    assert_true(run_until(loop, all_acked, &d, 5));
    uint64_t applied = r0.applied;
    Mk__Hello h = MK__HELLO__INIT;
    Mk__Envelope hello = MK__ENVELOPE__INIT;
    hello.sender = (char *)"mam.0";
    hello.payload_case = MK__ENVELOPE__PAYLOAD_HELLO;
    hello.hello = &h;
    assert_false(rchan_set_on_envelope(snd.a, &hello));   /* nothing pending: nothing re-sent */
    assert_int_equal(r0.dups, 0);
    /* Unacknowledged (its acks lost): re-sent on Hello - the re-send timer is a minute
     * away - and applied once. */
    snd.drop_acks = true;
    assert_true(send_test(a0, 101) > 0);
    run_until(loop, never, NULL, 0.2);
    assert_int_equal(r0.applied, applied + 1);
    assert_int_equal(rchan_set_pending(snd.a), 1);
    snd.drop_acks = false;
    assert_false(rchan_set_on_envelope(snd.a, &hello));
    assert_true(run_until(loop, all_acked, &d, 5));
    assert_int_equal(r0.dups, 1);
    assert_int_equal(r0.applied, applied + 1);

    /* Acks lost for a while: timer re-sends back off (50, 100, 200, 400 ms, ...) instead
     * of repeating every 50 ms; the receiver's Hello re-sends at once. */
    struct rchan_set *fast = rchan_set_new(loop, router, cfg, CFG_ROLE_MAM, 100, 50);
    struct rchan_set *keep_b = snd.b;
    snd.b = fast;   /* its acks are counted as b's and dropped below */
    snd.drop_acks = true;
    uint64_t dups0 = r1.dups;
    assert_true(send_test(rchan_set_peer(fast, "mam.1"), 1001) > 0);   /* odd: r1.rx */
    run_until(loop, never, NULL, 1.0);
    uint64_t rounds = r1.dups - dups0;
    assert_true(rounds >= 3 && rounds <= 5);   /* at 50, 150, 350, 750 ms; 20 without backoff */
    assert_false(rchan_set_on_envelope(fast, &(Mk__Envelope){.sender = (char *)"mam.1",
                                                             .payload_case = MK__ENVELOPE__PAYLOAD_HELLO,
                                                             .hello = &h}));
    run_until(loop, never, NULL, 0.03);
    assert_int_equal(r1.dups - dups0, rounds + 1);
    snd.drop_acks = false;
    struct done_arg df = {fast, fast};
    assert_true(run_until(loop, all_acked, &df, 5));
    snd.b = keep_b;
    rchan_set_free(&fast);

    /* Back-pressure: at max_pending a peer's sender refuses, and the set says so. */
    assert_false(rchan_set_full(snd.a));
    struct rchan_set *small = rchan_set_new(loop, router, cfg, CFG_ROLE_MAM, 2, 60000);
    struct rchan_tx *s1 = rchan_set_peer(small, "mam.1");
    assert_true(send_test(s1, 1) > 0);
    assert_false(rchan_set_full(small));
    assert_true(send_test(s1, 3) > 0);
    assert_true(rchan_set_full(small));
    assert_true(rchan_tx_full(s1));
    assert_false(rchan_tx_full(rchan_set_peer(small, "mam.0")));
    assert_int_equal(send_test(s1, 5), 0);
    assert_int_equal(rchan_set_pending(small), 2);
    assert_false(rchan_set_full(NULL));
    rchan_set_free(&small);

    rchan_set_free(&snd.a);
    rchan_set_free(&snd.b);
    assert_null(snd.a);
    rchan_rx_free(&r0.rx);
    rchan_rx_free(&r1.rx);
    rchan_rx_free(&r0.rx_b);
    rchan_rx_free(&r1.rx_b);
    bus_free(&router);
    bus_free(&mam0);
    bus_free(&mam1);
    ev_loop_destroy(loop);
    cfg_free(&cfg);
}

/* A reload adds a shard (c2s/handover.c): the set gets a sender to it, which sends
 * nothing while paused - not on a Hello, not on the re-send timer - and everything, in
 * order, once unpaused. */
static void test_added_and_paused(void **state)
{
    static const char one[] = "processes:\n"
                              "  - {id: c2s.0, bus: \"tcp://127.0.0.1:7\", metrics: \"127.0.0.1:8\"}\n"
                              "  - {id: router.0, bus: \"tcp://127.0.0.1:1\", metrics: \"127.0.0.1:2\"}\n"
                              "  - {id: mam.0, bus: \"tcp://127.0.0.1:3\", metrics: \"127.0.0.1:4\"}\n";
    char err[256];
    struct cfg *cfg = cfg_load_string(one, strlen(one), "t.yaml", err, sizeof err);
    struct cfg *two = cfg_load_string(yaml, strlen(yaml), "t.yaml", err, sizeof err);
    if (cfg == NULL || two == NULL)
        fail_msg("cfg: %s", err);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct sender snd = {0};
    struct receiver r0 = {0}, r1 = {0};
    struct bus *router = new_bus(loop, "router.0", on_sender, &snd);
    struct bus *mam0 = new_bus(loop, "mam.0", on_receiver, &r0);
    struct bus *mam1 = new_bus(loop, "mam.1", on_receiver, &r1);
    connect_peer(router, "mam.0", mam0);
    connect_peer(mam0, "router.0", router);
    connect_peer(mam1, "router.0", router);
    r0.rx = rchan_rx_new(loop, mam0);
    r1.rx = rchan_rx_new(loop, mam1);
    snd.a = rchan_set_new(loop, router, cfg, CFG_ROLE_MAM, 100, 50);
    snd.b = NULL;
    assert_int_equal(rchan_set_size(snd.a), 1);
    struct rchan_tx *added[4];
    assert_int_equal(rchan_set_add_new(snd.a, added, 4), 0);   /* nothing new */

    const struct cfg_proc *procs[4];
    assert_int_equal(cfg_adopt_procs(cfg, two, procs, 4), 1);    /* mam.1 */
    connect_peer(router, "mam.1", mam1);
    assert_int_equal(rchan_set_add_new(snd.a, added, 4), 1);
    assert_int_equal(rchan_set_size(snd.a), 2);
    const char *id = NULL;
    assert_ptr_equal(rchan_set_at(snd.a, 1, &id), added[0]);
    assert_string_equal(id, "mam.1");
    assert_ptr_equal(rchan_set_peer(snd.a, "mam.1"), added[0]);
    assert_int_equal(rchan_set_add_new(snd.a, added, 4), 0);   /* once */

    rchan_tx_pause(added[0], true);
    assert_true(rchan_tx_paused(added[0]));
    assert_int_equal(rchan_tx_last(added[0]), 0);
    for (uint64_t n = 1; n <= 9; n += 2)
        assert_true(send_test(added[0], n) > 0);
    assert_int_equal(rchan_tx_last(added[0]), 5);
    Mk__Hello h = MK__HELLO__INIT;
    assert_false(rchan_set_on_envelope(snd.a, &(Mk__Envelope){.sender = (char *)"mam.1",
                                                              .payload_case = MK__ENVELOPE__PAYLOAD_HELLO,
                                                              .hello = &h}));
    run_until(loop, never, NULL, 0.3);                          /* six re-send periods */
    assert_int_equal(r1.applied, 0);
    assert_int_equal(rchan_tx_unsent(added[0]), 5);
    rchan_tx_pause(added[0], false);
    struct done_arg d = {snd.a, snd.a};
    assert_true(run_until(loop, all_acked, &d, 5));
    assert_int_equal(r1.applied, 5);   /* (a re-send may beat the ack: applied once anyway) */

    rchan_set_free(&snd.a);
    rchan_rx_free(&r0.rx);
    rchan_rx_free(&r1.rx);
    bus_free(&router);
    bus_free(&mam0);
    bus_free(&mam1);
    ev_loop_destroy(loop);
    cfg_free(&two);
    cfg_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sets),
        cmocka_unit_test(test_added_and_paused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
