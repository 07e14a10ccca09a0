/* tests/unit/loop_until.h - runs a test's libev loop until a condition holds, shared by the unit tests. */
#ifndef MK_TESTS_LOOP_UNTIL_H
#define MK_TESTS_LOOP_UNTIL_H
#include <stdbool.h>
#include <stdint.h>

#include <ev.h>

#include "util.h"

static void loop_until_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)w, (void)revents;
}

/* Runs loop until cond(arg) holds or secs pass (a 5 ms tick keeps it turning when
 * nothing else would wake it); returns whether it holds. */
static inline bool run_until(struct ev_loop *loop, bool (*cond)(void *), void *arg, double secs)
{
    ev_timer tick;
    ev_timer_init(&tick, loop_until_tick, 0.005, 0.005);
    ev_timer_start(loop, &tick);
    int64_t deadline = mk_mono_us() + (int64_t)(secs * 1e6);
    bool ok;
    while (!(ok = cond(arg)) && mk_mono_us() < deadline)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &tick);
    return ok;
}
#endif
