/* pusher/coalesce.h - fewer wake-ups of a lightly loaded pusher: libev's I/O collect interval, on while the loop is mostly idle. */
#ifndef MK_PUSHER_COALESCE_H
#define MK_PUSHER_COALESCE_H
#include <stdbool.h>

#include <ev.h>

/* At pipeline 1 every request is answered on its own, and a pusher at a chat's rate
 * (a few thousand to tens of thousands of events per second, a fifth of a core or
 * less) sleeps in epoll_wait after every few answers and is woken for the next few:
 * about 0.2 wake-ups per event, each a context switch of the pusher and, on a machine
 * with few cores, a preemption of a chat process. With libev's I/O collect interval
 * (ev_set_io_collect_interval) the loop polls at most once per COALESCE_INTERVAL_US:
 * the answers and bus frames that arrive meanwhile are handled in one turn. Nobody
 * waits on a push event for that long (the emitters hold events up to 100 ms for their
 * batch), and timers still fire on time (libev never sleeps past the next one).
 * A saturated loop (push_bench: every connection busy, the loop never idle) gains
 * nothing from it and loses throughput (each turn would wait COALESCE_INTERVAL_US for
 * answers that the receiver has already sent): so the interval is on only while the
 * loop was busy less than COALESCE_BUSY_MAX of the last window (COALESCE_WINDOW_MS). */
#define COALESCE_INTERVAL_US 250u
#define COALESCE_WINDOW_MS 50u
#define COALESCE_BUSY_MAX 0.5

struct coalesce {
    struct ev_loop *loop;
    ev_prepare prepare_w;          /* the end of a turn: the loop is about to poll (or collect) */
    ev_check check_w;              /* the start of a turn: the poll returned */
    ev_tstamp turn_start;          /* when the current turn began (ev_time), 0 before the first */
    ev_tstamp window_start;
    double busy;                   /* seconds spent in turns during the current window */
    bool on;                       /* the collect interval is set */
};

/* The decision at the end of a window: whether the collect interval should be on after
 * a window of window_s seconds of which busy_s were spent handling events. Pure. */
bool coalesce_wanted(double busy_s, double window_s);

/* Starts watching loop's turns (a prepare and a check watcher in c, which the caller
 * keeps in place until coalesce_stop). The interval starts off. Borrows loop. */
void coalesce_start(struct coalesce *c, struct ev_loop *loop);
/* Stops the watchers and clears the interval. */
void coalesce_stop(struct coalesce *c);
#endif
