/* tests/unit/test_coalesce.c - the pusher's wake-up coalescing: libev's collect interval on while the loop is mostly idle, off while it is busy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>
#include <unistd.h>

#include <ev.h>

#include "../../pusher/coalesce.h"

static void test_wanted(void **state)
{
    assert_true(coalesce_wanted(0, 0.05));
    assert_true(coalesce_wanted(0.01, 0.05));
    assert_false(coalesce_wanted(0.03, 0.05));
    assert_false(coalesce_wanted(0.05, 0.05));
    assert_false(coalesce_wanted(0, 0));
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
    coalesce_start(&c, loop);
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

/* While on, the loop polls at most once per COALESCE_INTERVAL_US: a descriptor that is
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
    coalesce_start(&c, loop);
    struct phase ph = { .c = &c };
    run_phase(loop, &ph, 0, 2 * COALESCE_WINDOW_MS / 1000.0);
    assert_true(c.on);
    int on = turns_in(loop, p[0], 0.1);
    assert_true(c.on);
    assert_true(on <= (int)(0.1 / (COALESCE_INTERVAL_US / 1e6)) + 40);
    coalesce_stop(&c);
    int off = turns_in(loop, p[0], 0.1);
    assert_true(off > 4 * on);
    ev_loop_destroy(loop);
    close(p[0]);
    close(p[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wanted),
        cmocka_unit_test(test_follows_the_load),
        cmocka_unit_test(test_fewer_turns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
