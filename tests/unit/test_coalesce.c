/* tests/unit/test_coalesce.c - wake-up coalescing: libev's collect interval on and off by the loop's load, the pusher's policy (on while mostly idle) and the chat tier's (on from a rate of events). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>
#include <unistd.h>

#include <ev.h>

#include "../../common/coalesce.h"

static void test_wanted(void **state)
{
    const struct coalesce_policy *p = &COALESCE_PUSHER;
    assert_true(coalesce_wanted(p, false, 0, 0, 0.05));
    assert_true(coalesce_wanted(p, true, 0.01, 1e6, 0.05));
    assert_false(coalesce_wanted(p, true, 0.03, 0, 0.05));
    assert_false(coalesce_wanted(p, false, 0.05, 0, 0.05));
    assert_false(coalesce_wanted(p, false, 0, 0, 0));
    /* The chat tier's: by events per second, with a band between on and off. */
    const struct coalesce_policy *c = &COALESCE_CHAT;
    double w = 0.05;
    assert_false(coalesce_wanted(c, false, 0.01, 0, w));
    assert_false(coalesce_wanted(c, false, 0.01, (c->events_on - 100) * w, w));
    assert_true(coalesce_wanted(c, false, 0.01, c->events_on * w, w));
    assert_true(coalesce_wanted(c, true, 0.01, c->events_off * w, w));
    assert_false(coalesce_wanted(c, true, 0.01, (c->events_off - 100) * w, w));
    assert_true(coalesce_wanted(c, true, 0.049, 1e6, w));   /* busy: no bound */
    assert_false(coalesce_wanted(c, false, 0, 1e6, 0));
}

struct phase {
    struct coalesce *c;
    ev_timer tick;
    double spin;                   /* seconds of work per tick */
    ev_tstamp until;               /* the phase ends at this time (ev_time) */
    int ticks;
    int polls_while_on;            /* turns begun while the interval was on */
};

/* Each tick "works" for ph->spin seconds (of the clock: a preempted test counts as busy,
 * which is what it is to the loop), then ends the phase when its time is up. */
static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct phase *ph = w->data;
    ev_tstamp t0 = ev_time();
    while (ev_time() - t0 < ph->spin)
        ;
    ph->ticks++;
    if (ev_time() >= ph->until)
        ev_break(loop, EVBREAK_ONE);
}

static void run_phase(struct ev_loop *loop, struct phase *ph, double spin, double seconds)
{
    ph->spin = spin;
    ph->until = ev_time() + seconds;
    ph->ticks = 0;
    ev_timer_init(&ph->tick, tick_cb, 0.001, 0.001);
    ph->tick.data = ph;
    ev_timer_start(loop, &ph->tick);
    ev_run(loop, 0);
    ev_timer_stop(loop, &ph->tick);
}

/* Idle (1 ms timer ticks that do nothing): on after a window. Busy (each 1 ms tick works
 * 3 ms): off. Idle again: on again. Stopped: off. */
static void test_follows_the_load(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct coalesce c = { 0 };
    coalesce_stop(&c);   /* never started: nothing to do */
    coalesce_start(&c, loop, &COALESCE_PUSHER);
    assert_false(c.on);
    struct phase ph = { .c = &c };
    run_phase(loop, &ph, 0, 3 * COALESCE_WINDOW_MS / 1000.0);
    assert_true(c.on);
    run_phase(loop, &ph, 0.003, 3 * COALESCE_WINDOW_MS / 1000.0);
    assert_false(c.on);
    run_phase(loop, &ph, 0, 3 * COALESCE_WINDOW_MS / 1000.0);
    assert_true(c.on);
    coalesce_stop(&c);
    assert_false(c.on);
    ev_loop_destroy(loop);
}

/* While on, the loop polls at most once per interval: a descriptor that is
 * always readable (a pipe never drained) gets one callback per turn, so the count of
 * callbacks over 0.1 s is the count of polls: at most 400 (plus slack), where a loop
 * without the interval turns as fast as it can (tens of thousands). */
struct count {
    ev_io w;
    int n;
    ev_tstamp until;
};

static void count_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct count *k = w->data;
    k->n++;
    if (ev_time() >= k->until)
        ev_break(loop, EVBREAK_ONE);
}

static int turns_in(struct ev_loop *loop, int fd, double seconds)
{
    struct count k = { .until = ev_time() + seconds };
    ev_io_init(&k.w, count_cb, fd, EV_READ);
    k.w.data = &k;
    ev_io_start(loop, &k.w);
    ev_run(loop, 0);
    ev_io_stop(loop, &k.w);
    return k.n;
}

static void test_fewer_turns(void **state)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(write(p[1], "x", 1), 1);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct coalesce c = { 0 };
    coalesce_start(&c, loop, &COALESCE_PUSHER);
    struct phase ph = { .c = &c };
    run_phase(loop, &ph, 0, 2 * COALESCE_WINDOW_MS / 1000.0);
    assert_true(c.on);
    int on = turns_in(loop, p[0], 0.1);
    assert_true(c.on);
    assert_true(on <= (int)(0.1 / COALESCE_PUSHER.interval_s) + 40);
    coalesce_stop(&c);
    int off = turns_in(loop, p[0], 0.1);
    assert_true(off > 4 * on);
    ev_loop_destroy(loop);
    close(p[0]);
    close(p[1]);
}

/* The chat tier's policy: 1,000 timer ticks a second (an idle c2s's rate) leave it off;
 * 32 descriptors always readable (a c2s's many client connections, tens of thousands of
 * ready watchers a second) turn it on, and then the loop polls at most once per interval
 * and it stays on (the count is of ready watchers, 32 a turn); ticks alone turn it off. */
#define CHAT_FDS 32
struct many {
    ev_io w[CHAT_FDS];
    int callbacks;
    int turns;
    ev_check turn_w;
    ev_tstamp until;
};

static void many_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct many *m = w->data;
    m->callbacks++;
    if (ev_time() >= m->until)
        ev_break(loop, EVBREAK_ONE);
}

static void many_turn_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    ((struct many *)w->data)->turns++;
}

static int turns_with_many(struct ev_loop *loop, const int *fds, double seconds)
{
    struct many m = { .until = ev_time() + seconds };
    for (int i = 0; i < CHAT_FDS; i++) {
        ev_io_init(&m.w[i], many_cb, fds[i], EV_READ);
        m.w[i].data = &m;
        ev_io_start(loop, &m.w[i]);
    }
    ev_check_init(&m.turn_w, many_turn_cb);
    m.turn_w.data = &m;
    ev_check_start(loop, &m.turn_w);
    ev_run(loop, 0);
    ev_check_stop(loop, &m.turn_w);
    for (int i = 0; i < CHAT_FDS; i++)
        ev_io_stop(loop, &m.w[i]);
    assert_true(m.callbacks >= m.turns);
    return m.turns;
}

static void test_chat_follows_the_rate(void **state)
{
    int fds[CHAT_FDS], wr[CHAT_FDS];
    for (int i = 0; i < CHAT_FDS; i++) {
        int p[2];
        assert_int_equal(pipe(p), 0);
        assert_int_equal(write(p[1], "x", 1), 1);
        fds[i] = p[0];
        wr[i] = p[1];
    }
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct coalesce c = { 0 };
    coalesce_start(&c, loop, &COALESCE_CHAT);
    struct phase ph = { .c = &c };
    run_phase(loop, &ph, 0, 3 * COALESCE_WINDOW_MS / 1000.0);
    assert_false(c.on);
    turns_with_many(loop, fds, 2 * COALESCE_WINDOW_MS / 1000.0);
    assert_true(c.on);
    int on = turns_with_many(loop, fds, 0.1);
    assert_true(c.on);
    assert_true(on <= (int)(0.1 / COALESCE_CHAT.interval_s) + 40);
    run_phase(loop, &ph, 0, 3 * COALESCE_WINDOW_MS / 1000.0);
    assert_false(c.on);
    coalesce_stop(&c);
    ev_loop_destroy(loop);
    for (int i = 0; i < CHAT_FDS; i++) {
        close(fds[i]);
        close(wr[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wanted),
        cmocka_unit_test(test_follows_the_load),
        cmocka_unit_test(test_fewer_turns),
        cmocka_unit_test(test_chat_follows_the_rate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
