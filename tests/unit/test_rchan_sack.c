/* tests/unit/test_rchan_sack.c - the reliable channel's selective acknowledgement: a receiver holds some messages past its cumulative ack, releases them one by one, and a restarted receiver gets the held ones again; bounds and malformed acks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <errno.h>
#include <stdio.h>
#include <cmocka.h>

#include "bus.h"
#include "env.h"
#include "rchan.h"
#include "util.h"
#include "loop_until.h"

#define ANY_PORT "tcp://127.0.0.1:*"
#define MAX_N 6000

/* The receiver ("r"): applies each Test, holds those with hold_every | n (when its
 * rchan_rx_hold agrees, else marks them done), and remembers what it holds by n. */
struct recv_side {
    struct rchan_rx *rx;
    unsigned hold_every;
    uint8_t applied[MAX_N + 1];
    uint64_t held_seq[MAX_N + 1];   /* n -> seq while held here (0: not held) */
    uint64_t held_epoch;
    char sender[16];
    uint64_t dups, gaps, refused_holds;
    uint64_t order[4 * MAX_N];      /* the n of each application, in order */
    size_t norder;
};

/* The sender ("s"). */
struct send_side {
    struct rchan_tx *tx;
    uint64_t seq_of[MAX_N + 1];     /* n -> seq */
    uint64_t acks, refused_acks;
    bool drop_acks;
};

static void on_r(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    struct recv_side *r = ud;
    Mk__Envelope *e = *envp;
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_TEST || r->rx == NULL)
        return;
    assert_true(e->test->n <= MAX_N);
    switch (rchan_rx_check(r->rx, e)) {
    case RCHAN_NEW:
        r->applied[e->test->n]++;
        if (r->norder < MK_ARRAY_LEN(r->order))
            r->order[r->norder++] = e->test->n;
        snprintf(r->sender, sizeof r->sender, "%s", e->sender);
        r->held_epoch = e->rc_epoch;
        if (rchan_rx_is_held(r->rx, e->sender, e->rc_epoch, e->rc_seq)) {
            r->held_seq[e->test->n] = e->rc_seq;   /* a held copy re-sent to us */
        } else if (r->hold_every != 0 && e->test->n % r->hold_every == 0) {
            if (rchan_rx_hold(r->rx, e->sender, e->rc_epoch, e->rc_seq)) {
                r->held_seq[e->test->n] = e->rc_seq;
            } else {
                r->refused_holds++;
                rchan_rx_done(r->rx, e->sender, e->rc_epoch, e->rc_seq);
            }
        } else {
            rchan_rx_done(r->rx, e->sender, e->rc_epoch, e->rc_seq);
        }
        break;
    case RCHAN_DUP:
        r->dups++;
        break;
    case RCHAN_GAP:
        r->gaps++;
        break;
    }
}

static void on_s(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    struct send_side *s = ud;
    const Mk__Envelope *e = *envp;
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_ACK || s->tx == NULL)
        return;
    s->acks++;
    if (s->drop_acks)
        return;
    const char *why = NULL;
    if (rchan_tx_on_ack(s->tx, e->ack, &why) == -1)
        s->refused_acks++;
}

static void release(struct recv_side *r, uint64_t n)
{
    assert_true(r->held_seq[n] != 0);
    rchan_rx_release(r->rx, r->sender, r->held_epoch, r->held_seq[n]);
    r->held_seq[n] = 0;
}

struct pair {
    struct ev_loop *loop;
    struct bus *s_bus, *r_bus;
    struct send_side s;
    struct recv_side r;
};

static struct pair *pair_open(size_t max_pending, size_t max_held)
{
    char err[256];
    struct pair *p = xcalloc(1, sizeof *p);
    p->loop = ev_loop_new(EVFLAG_AUTO);
    p->s_bus = bus_new(p->loop, "s", ANY_PORT, 0, on_s, &p->s, err, sizeof err);
    p->r_bus = bus_new(p->loop, "r", ANY_PORT, 0, on_r, &p->r, err, sizeof err);
    assert_non_null(p->s_bus);
    assert_non_null(p->r_bus);
    assert_int_equal(bus_add_peer(p->s_bus, "r", bus_endpoint(p->r_bus), err, sizeof err), 0);
    assert_int_equal(bus_add_peer(p->r_bus, "s", bus_endpoint(p->s_bus), err, sizeof err), 0);
    /* The re-send timer is a minute away: only acks, Hellos and holders move things. */
    p->s.tx = rchan_tx_new(p->loop, p->s_bus, "r", max_pending, 60000);
    p->r.rx = rchan_rx_new(p->loop, p->r_bus);
    rchan_rx_set_max_held(p->r.rx, max_held);
    return p;
}

static void pair_close(struct pair *p)
{
    rchan_tx_free(&p->s.tx);
    rchan_rx_free(&p->r.rx);
    bus_free(&p->s_bus);
    bus_free(&p->r_bus);
    ev_loop_destroy(p->loop);
    free(p);
}

static uint64_t send_n(struct pair *p, uint64_t n)
{
    Mk__Test t = MK__TEST__INIT;
    t.n = n;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
    e.test = &t;
    uint64_t seq = rchan_send(p->s.tx, &e);
    if (seq != 0)
        p->s.seq_of[n] = seq;
    return seq;
}

struct want {
    struct rchan_tx *tx;
    size_t pending, held;
};

static bool tx_at(void *arg)
{
    struct want *w = arg;
    return rchan_tx_pending(w->tx) == w->pending && rchan_tx_held(w->tx) == w->held;
}

struct count_at_least {
    const uint64_t *v;
    uint64_t want;
};

static bool reached(void *arg)
{
    struct count_at_least *c = arg;
    return *c->v >= c->want;
}

static void wait_count(struct pair *p, const uint64_t *v, uint64_t want)
{
    struct count_at_least c = {v, want};
    if (!run_until(p->loop, reached, &c, 5))
        fail_msg("count %llu, want %llu", (unsigned long long)*v, (unsigned long long)want);
}

struct applied_arg {
    struct recv_side *r;
    uint64_t n;
    uint8_t times;
};

static bool applied_times(void *arg)
{
    struct applied_arg *a = arg;
    return a->r->applied[a->n] >= a->times;
}

static void wait_tx(struct pair *p, size_t pending, size_t held)
{
    struct want w = {p->s.tx, pending, held};
    if (!run_until(p->loop, tx_at, &w, 5))
        fail_msg("sender: pending %zu held %zu, want %zu/%zu (receiver holds %zu)", rchan_tx_pending(p->s.tx),
                 rchan_tx_held(p->s.tx), pending, held, rchan_rx_held(p->r.rx));
}

static void hello_from_r(struct pair *p)
{
    /* What rchan_set_on_envelope does with the restarted receiver's Hello. */
    rchan_tx_resend(p->s.tx);
}

/* Held messages stay with the sender while the cumulative ack moves past them; released
 * one by one they are dropped; held ones count against max_pending. */
static void test_hold_ack_past_release(void **state)
{
    struct pair *p = pair_open(12, 100);
    p->r.hold_every = 3;
    for (uint64_t n = 1; n <= 10; n++)
        assert_true(send_n(p, n) > 0);
    /* 3, 6, 9 held; the rest done: only the held stay, and the ack went past them. */
    wait_tx(p, 3, 3);
    assert_int_equal(rchan_rx_held(p->r.rx), 3);
    assert_true(rchan_tx_acked(p->s.tx, p->s.seq_of[1]));
    assert_true(rchan_tx_acked(p->s.tx, p->s.seq_of[10]));
    assert_false(rchan_tx_acked(p->s.tx, p->s.seq_of[3]));
    assert_false(rchan_tx_acked(p->s.tx, p->s.seq_of[9]));
    assert_int_equal(rchan_tx_base(p->s.tx), p->s.seq_of[10] + 1);
    /* Held copies count against max_pending (12): 9 more fit, the 10th is refused. */
    p->r.hold_every = 0;
    for (uint64_t n = 11; n <= 19; n++)
        assert_true(send_n(p, n) > 0);
    assert_true(rchan_tx_full(p->s.tx));
    errno = 0;
    assert_int_equal(send_n(p, 20), 0);
    assert_int_equal(errno, EAGAIN);
    wait_tx(p, 3, 3);
    /* Released one by one, out of order: each copy goes, the others stay. */
    release(&p->r, 6);
    wait_tx(p, 2, 2);
    assert_true(rchan_tx_acked(p->s.tx, p->s.seq_of[6]));
    assert_false(rchan_tx_acked(p->s.tx, p->s.seq_of[3]));
    release(&p->r, 3);
    release(&p->r, 9);
    wait_tx(p, 0, 0);
    assert_int_equal(rchan_rx_held(p->r.rx), 0);
    for (uint64_t n = 1; n <= 19; n++)
        assert_int_equal(p->r.applied[n], 1);
    assert_int_equal(p->s.refused_acks, 0);
    /* Releasing what is not held is nothing. */
    rchan_rx_release(p->r.rx, p->r.sender, p->r.held_epoch, p->s.seq_of[3]);
    assert_int_equal(rchan_rx_held(p->r.rx), 0);
    pair_close(p);
}

/* A held message whose ack is lost is listed again in the next one: the sender never
 * takes a cumulative ack past it for done. */
static void test_held_survives_a_lost_ack(void **state)
{
    struct pair *p = pair_open(100, 100);
    p->r.hold_every = 2;
    p->s.drop_acks = true;
    assert_true(send_n(p, 2) > 0);   /* held */
    wait_count(p, &p->s.acks, 1);   /* its ack (upto 1, held 1) lost */
    assert_int_equal(rchan_tx_pending(p->s.tx), 1);
    p->s.drop_acks = false;
    assert_true(send_n(p, 3) > 0);   /* done: the ack covers 1..2, 1 still held */
    wait_tx(p, 1, 1);
    assert_false(rchan_tx_acked(p->s.tx, p->s.seq_of[2]));
    release(&p->r, 2);
    wait_tx(p, 0, 0);
    pair_close(p);
}

/* The receiver restarts: its Hello re-sends the held copies first; the new incarnation
 * applies them once, holds them, and a second re-send is a duplicate. */
static void test_held_resent_to_next_incarnation_on_hello(void **state)
{
    struct pair *p = pair_open(100, 100);
    p->r.hold_every = 4;
    for (uint64_t n = 1; n <= 20; n++)
        assert_true(send_n(p, n) > 0);
    wait_tx(p, 5, 5);
    release(&p->r, 8);
    wait_tx(p, 4, 4);
    /* kill -9 of the receiver: its state is gone. */
    rchan_rx_free(&p->r.rx);
    memset(p->r.held_seq, 0, sizeof p->r.held_seq);
    p->r.rx = rchan_rx_new(p->loop, p->r_bus);
    rchan_rx_set_max_held(p->r.rx, 100);
    hello_from_r(p);
    for (uint64_t n = 21; n <= 22; n++)
        assert_true(send_n(p, n) > 0);
    wait_tx(p, 4, 4);
    /* 4, 12, 16, 20 were applied twice (once per incarnation), 8 and the rest once. */
    for (uint64_t n = 1; n <= 22; n++)
        assert_int_equal(p->r.applied[n], n % 4 == 0 && n != 8 ? 2 : 1);
    assert_int_equal(rchan_rx_held(p->r.rx), 4);
    assert_true(rchan_rx_is_held(p->r.rx, "s", rchan_tx_epoch(p->s.tx), p->s.seq_of[12]));
    /* The same copies again (a second Hello): duplicates, not applied. */
    uint64_t dups = p->r.dups;
    hello_from_r(p);
    wait_count(p, &p->r.dups, dups + 4);
    assert_int_equal(p->r.dups, dups + 4);
    assert_int_equal(p->r.applied[12], 2);
    /* Released by the new incarnation: gone. */
    release(&p->r, 4);
    release(&p->r, 12);
    release(&p->r, 16);
    release(&p->r, 20);
    wait_tx(p, 0, 0);
    pair_close(p);
}

/* No Hello reaches the sender: the first ack of the new incarnation names a newer
 * holder, and the copies the old one held go to it. */
static void test_held_resent_to_a_newer_holder(void **state)
{
    struct pair *p = pair_open(100, 100);
    p->r.hold_every = 5;
    for (uint64_t n = 1; n <= 10; n++)
        assert_true(send_n(p, n) > 0);
    wait_tx(p, 2, 2);
    rchan_rx_free(&p->r.rx);
    memset(p->r.held_seq, 0, sizeof p->r.held_seq);
    p->r.rx = rchan_rx_new(p->loop, p->r_bus);
    rchan_rx_set_max_held(p->r.rx, 100);
    assert_true(send_n(p, 11) > 0);   /* acknowledged by the new incarnation */
    wait_tx(p, 2, 2);
    struct rchan_rx *rx = p->r.rx;
    uint64_t epoch = rchan_tx_epoch(p->s.tx);
    struct applied_arg a10 = {&p->r, 10, 2};
    assert_true(run_until(p->loop, applied_times, &a10, 5));
    assert_int_equal(p->r.applied[5], 2);
    assert_int_equal(p->r.applied[10], 2);
    assert_int_equal(p->r.applied[11], 1);
    assert_true(rchan_rx_is_held(rx, "s", epoch, p->s.seq_of[5]));
    release(&p->r, 5);
    release(&p->r, 10);
    wait_tx(p, 0, 0);
    pair_close(p);
}

/* The receiver restarts and a new message reaches it before the sender heard of the
 * restart: the new incarnation takes nothing before the held copies (rc_held), which go
 * first, in order, as they did the first time. */
static void test_held_copies_go_before_newer_frames(void **state)
{
    struct pair *p = pair_open(100, 100);
    p->r.hold_every = 2;
    for (uint64_t n = 1; n <= 6; n++)
        assert_true(send_n(p, n) > 0);
    wait_tx(p, 3, 3);
    rchan_rx_free(&p->r.rx);
    memset(p->r.held_seq, 0, sizeof p->r.held_seq);
    p->r.norder = 0;
    p->r.rx = rchan_rx_new(p->loop, p->r_bus);
    rchan_rx_set_max_held(p->r.rx, 100);
    p->r.hold_every = 0;
    assert_true(send_n(p, 7) > 0);   /* no Hello: 7 is the first the new incarnation sees */
    struct applied_arg a7 = {&p->r, 7, 1};
    assert_true(run_until(p->loop, applied_times, &a7, 5));
    uint64_t want[] = {2, 4, 6, 7};
    for (size_t i = 0; i < MK_ARRAY_LEN(want); i++)
        assert_int_equal(p->r.order[i], want[i]);
    assert_int_equal(p->r.norder, 4);
    assert_true(p->r.gaps >= 1);   /* 7 waited for them */
    wait_tx(p, 3, 3);
    release(&p->r, 2);
    release(&p->r, 4);
    release(&p->r, 6);
    wait_tx(p, 0, 0);
    /* Nothing held any more: a later restart takes new frames at once. */
    rchan_rx_free(&p->r.rx);
    p->r.rx = rchan_rx_new(p->loop, p->r_bus);
    uint64_t gaps = p->r.gaps;
    assert_true(send_n(p, 8) > 0);
    wait_tx(p, 0, 0);
    assert_int_equal(p->r.gaps, gaps);
    assert_int_equal(p->r.applied[8], 1);
    pair_close(p);
}

/* At most max_held are held: past it rchan_rx_hold refuses (the receiver marks it done
 * and behaves as without holds). More releases than one ack lists go in several. */
static void test_bounds(void **state)
{
    struct pair *p = pair_open(MAX_N, 3);
    p->r.hold_every = 1;
    for (uint64_t n = 1; n <= 5; n++)
        assert_true(send_n(p, n) > 0);
    wait_tx(p, 3, 3);
    assert_int_equal(rchan_rx_held(p->r.rx), 3);
    assert_int_equal(p->r.refused_holds, 2);
    release(&p->r, 1);
    release(&p->r, 2);
    release(&p->r, 3);
    wait_tx(p, 0, 0);
    pair_close(p);

    /* 5,000 held (over one ack's RCHAN_ACK_MAX_LIST), then all released at once. */
    size_t many = RCHAN_ACK_MAX_LIST + 904;
    p = pair_open(MAX_N, MAX_N);
    p->r.hold_every = 1;
    for (uint64_t n = 1; n <= many; n++)
        assert_true(send_n(p, n) > 0);
    wait_tx(p, many, many);
    for (uint64_t n = 1; n <= many; n++)
        release(&p->r, n);
    wait_tx(p, 0, 0);
    assert_int_equal(p->s.refused_acks, 0);
    pair_close(p);
}

/* A sender that restarts (new epoch) takes its copies with it: the receiver forgets what
 * it held for the old one, and a release of the old epoch is nothing. */
static void test_sender_restart_forgets_held(void **state)
{
    struct pair *p = pair_open(100, 100);
    p->r.hold_every = 2;
    for (uint64_t n = 1; n <= 4; n++)
        assert_true(send_n(p, n) > 0);
    wait_tx(p, 2, 2);
    uint64_t old_epoch = rchan_tx_epoch(p->s.tx);
    rchan_tx_free(&p->s.tx);
    p->s.tx = rchan_tx_new(p->loop, p->s_bus, "r", 100, 60000);
    p->r.hold_every = 0;
    assert_true(send_n(p, 5) > 0);
    wait_tx(p, 0, 0);
    assert_int_equal(rchan_rx_held(p->r.rx), 0);
    assert_false(rchan_rx_hold(p->r.rx, "s", old_epoch, 2));
    rchan_rx_release(p->r.rx, "s", old_epoch, 2);
    assert_int_equal(rchan_rx_held(p->r.rx), 0);
    pair_close(p);
}

/* Malformed acks are refused with a reason and change nothing. */
static void test_garbage_acks(void **state)
{
    struct pair *p = pair_open(100, 100);
    p->s.drop_acks = true;
    for (uint64_t n = 1; n <= 5; n++)
        assert_true(send_n(p, n) > 0);
    wait_count(p, &p->s.acks, 1);   /* dropped: everything stays pending */
    assert_int_equal(rchan_tx_pending(p->s.tx), 5);
    uint64_t epoch = rchan_tx_epoch(p->s.tx);
    struct {
        uint64_t upto;
        uint64_t held[3];
        size_t nheld;
        uint64_t released[2];
        size_t nreleased;
        const char *why;
    } cases[] = {
        {5, {3, 2}, 2, {0}, 0, "held seqs not strictly ascending"},
        {5, {2, 2}, 2, {0}, 0, "held seqs not strictly ascending"},
        {5, {2, 6}, 2, {0}, 0, "held seq above upto"},
        {5, {0}, 1, {0}, 0, "held seq 0"},
        {5, {0}, 0, {4, 0}, 2, "released seq 0"},
    };
    for (size_t i = 0; i < MK_ARRAY_LEN(cases); i++) {
        Mk__Ack a = MK__ACK__INIT;
        a.epoch = epoch;
        a.upto = cases[i].upto;
        a.held = cases[i].held;
        a.n_held = cases[i].nheld;
        a.released = cases[i].released;
        a.n_released = cases[i].nreleased;
        const char *why = NULL;
        assert_int_equal(rchan_tx_on_ack(p->s.tx, &a, &why), -1);
        assert_string_equal(why, cases[i].why);
        assert_string_equal(rchan_ack_invalid(&a), cases[i].why);
        assert_int_equal(rchan_tx_pending(p->s.tx), 5);
        assert_int_equal(rchan_tx_held(p->s.tx), 0);
    }
    /* Over the list bound. */
    static uint64_t big[RCHAN_ACK_MAX_LIST + 1];
    for (size_t i = 0; i < MK_ARRAY_LEN(big); i++)
        big[i] = i + 1;
    Mk__Ack a = MK__ACK__INIT;
    a.epoch = epoch;
    a.upto = MK_ARRAY_LEN(big);
    a.held = big;
    a.n_held = MK_ARRAY_LEN(big);
    const char *why = NULL;
    assert_int_equal(rchan_tx_on_ack(p->s.tx, &a, &why), -1);
    assert_string_equal(why, "too many held seqs");
    a.n_held = 0;
    a.released = big;
    a.n_released = MK_ARRAY_LEN(big);
    assert_int_equal(rchan_tx_on_ack(p->s.tx, &a, &why), -1);
    assert_string_equal(why, "too many released seqs");
    assert_int_equal(rchan_tx_pending(p->s.tx), 5);
    /* A well-formed one for another epoch: ignored. One for ours, holding 2 and 4. */
    a.n_released = 0;
    a.upto = 5;
    a.epoch = epoch + 1;
    assert_int_equal(rchan_tx_on_ack(p->s.tx, &a, &why), 0);
    assert_int_equal(rchan_tx_pending(p->s.tx), 5);
    uint64_t held[] = {2, 4};
    a.epoch = epoch;
    a.held = held;
    a.n_held = 2;
    assert_int_equal(rchan_tx_on_ack(p->s.tx, &a, &why), 0);
    assert_int_equal(rchan_tx_pending(p->s.tx), 2);
    assert_int_equal(rchan_tx_held(p->s.tx), 2);
    /* Released seqs never held, or above anything sent: nothing. */
    uint64_t rel[] = {1, 3, 99, 4};
    a.n_held = 0;
    a.released = rel;
    a.n_released = 4;
    assert_int_equal(rchan_tx_on_ack(p->s.tx, &a, &why), 0);
    assert_int_equal(rchan_tx_held(p->s.tx), 1);
    assert_false(rchan_tx_acked(p->s.tx, 2));
    assert_true(rchan_tx_acked(p->s.tx, 4));
    pair_close(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hold_ack_past_release),
        cmocka_unit_test(test_held_survives_a_lost_ack),
        cmocka_unit_test(test_held_resent_to_next_incarnation_on_hello),
        cmocka_unit_test(test_held_resent_to_a_newer_holder),
        cmocka_unit_test(test_held_copies_go_before_newer_frames),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_sender_restart_forgets_held),
        cmocka_unit_test(test_garbage_acks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
