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

/* A new loop with c started on it under policy p, then idle (1 ms timer ticks) for
 * windows windows. */
static struct ev_loop *idle_loop(struct coalesce *c, const struct coalesce_policy *p, struct phase *ph, int windows)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    coalesce_start(c, loop, p);
    ph->c = c;
    run_phase(loop, ph, 0, windows * COALESCE_WINDOW_MS / 1000.0);
    return loop;
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

/* While on, the loop polls at most once per interval: descriptors that are always
 * readable (pipes never drained) get one callback each per turn, so the count of turns
 * over 0.1 s is the count of polls: at most 400 (plus slack), where a loop without the
 * interval turns as fast as it can (tens of thousands). */
#define MAX_FDS 32
struct many {
    ev_io w[MAX_FDS];
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

/* Turns of loop over seconds with the first n of fds watched for reading. */
static int turns_in(struct ev_loop *loop, const int *fds, int n, double seconds)
{
    struct many m = { .until = ev_time() + seconds };
    for (int i = 0; i < n; i++) {
        ev_io_init(&m.w[i], many_cb, fds[i], EV_READ);
        m.w[i].data = &m;
        ev_io_start(loop, &m.w[i]);
    }
    ev_check_init(&m.turn_w, many_turn_cb);
    m.turn_w.data = &m;
    ev_check_start(loop, &m.turn_w);
    ev_run(loop, 0);
    ev_check_stop(loop, &m.turn_w);
    for (int i = 0; i < n; i++)
        ev_io_stop(loop, &m.w[i]);
    assert_true(m.callbacks >= m.turns);
    return m.turns;
}

/* n pipes with a byte in each, never drained: their read ends always readable. */
static void readable_pipes(int *rd, int *wr, int n)
{
    for (int i = 0; i < n; i++) {
        int p[2];
        assert_int_equal(pipe(p), 0);
        assert_int_equal(write(p[1], "x", 1), 1);
        rd[i] = p[0];
        wr[i] = p[1];
    }
}

static void close_pipes(const int *rd, const int *wr, int n)
{
    for (int i = 0; i < n; i++) {
        close(rd[i]);
        close(wr[i]);
    }
}

static void test_fewer_turns(void **state)
{
    int rd, wr;
    readable_pipes(&rd, &wr, 1);
    struct coalesce c = { 0 };
    struct phase ph = { 0 };
    struct ev_loop *loop = idle_loop(&c, &COALESCE_PUSHER, &ph, 2);
    assert_true(c.on);
    int on = turns_in(loop, &rd, 1, 0.1);
    assert_true(c.on);
    assert_true(on <= (int)(0.1 / COALESCE_PUSHER.interval_s) + 40);
    coalesce_stop(&c);
    int off = turns_in(loop, &rd, 1, 0.1);
    assert_true(off > 4 * on);
    ev_loop_destroy(loop);
    close_pipes(&rd, &wr, 1);
}

/* The chat tier's policy: 1,000 timer ticks a second (an idle c2s's rate) leave it off;
 * 32 descriptors always readable (a c2s's many client connections, tens of thousands of
 * ready watchers a second) turn it on, and then the loop polls at most once per interval
 * and it stays on (the count is of ready watchers, 32 a turn); ticks alone turn it off. */
static void test_chat_follows_the_rate(void **state)
{
    int fds[MAX_FDS], wr[MAX_FDS];
    readable_pipes(fds, wr, MAX_FDS);
    struct coalesce c = { 0 };
    struct phase ph = { 0 };
    struct ev_loop *loop = idle_loop(&c, &COALESCE_CHAT, &ph, 3);
    assert_false(c.on);
    turns_in(loop, fds, MAX_FDS, 2 * COALESCE_WINDOW_MS / 1000.0);
    assert_true(c.on);
    int on = turns_in(loop, fds, MAX_FDS, 0.1);
    assert_true(c.on);
    assert_true(on <= (int)(0.1 / COALESCE_CHAT.interval_s) + 40);
    run_phase(loop, &ph, 0, 3 * COALESCE_WINDOW_MS / 1000.0);
    assert_false(c.on);
    coalesce_stop(&c);
    ev_loop_destroy(loop);
    close_pipes(fds, wr, MAX_FDS);
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
