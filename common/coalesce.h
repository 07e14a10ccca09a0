/* common/coalesce.h - fewer wake-ups of an event loop: libev's I/O collect interval, on or off by the loop's recent load (a policy per process). */
#ifndef MK_COMMON_COALESCE_H
#define MK_COMMON_COALESCE_H
#include <stdbool.h>

#include <ev.h>

/* With libev's I/O collect interval (ev_set_io_collect_interval) a loop polls at most
 * once per interval: what arrives meanwhile is handled in one turn, one wake-up (and
 * one context switch) for many events; timers still fire on time (libev never sleeps
 * past the next one). It costs a nanosleep per turn that came sooner than the interval
 * after the previous poll, so it pays only where the loop would otherwise wake for
 * every few events. A policy says when that is, judged per window of COALESCE_WINDOW_MS
 * from the share of the window spent in turns (busy) and the watchers that became
 * ready in it (events, what each turn had to handle):
 *
 * - The pusher (COALESCE_PUSHER): at a chat's rate it handles each HTTP answer and bus
 *   frame in a turn of its own, about 0.2 wake-ups per event, each a preemption of a
 *   chat process on a machine with few cores. Nobody waits on a push event for 250 us
 *   (the emitters hold events up to 100 ms for their batch). A saturated pusher (every
 *   connection busy) gains nothing and loses throughput (each turn would wait for answers
 *   the receiver has already sent): on only while busy under half of the window.
 * - The chat tier, c2s and router (COALESCE_CHAT): near its capacity (16,000 msgs/s on two
 *   cores) a c2s woke for each client's stanza and each bus frame; a stall of a few ms
 *   (another process, a burst) left it behind, and catching up a few events per wake-up
 *   took up to half a second: p99 25-100 ms at 16,000 msgs/s, with push on or off
 *   (docs/BENCHMARKS.md, "The chat tier's wake-ups near capacity"). With the interval a
 *   turn takes what came in 300 us, the bus sends of a turn are one batch, and a backlog
 *   drains in a few turns: p99 3-15 ms there. At lower rates the nanosleep is a second
 *   wake-up per event (CPU per message +25-37% at 4,000 msgs/s with the interval always
 *   on) and the interval a delay per hop: on only from events_on ready watchers per
 *   second (a c2s counts about 17,000 at 16,000 msgs/s, 10,000-14,000 at 8,000, 5,000 at
 *   4,000), off again under events_off (the band keeps it from flapping at one rate). A
 *   router there counts 5,500-7,500 and stays off; a busier one turns it on alike. */
#define COALESCE_WINDOW_MS 50u

struct coalesce_policy {
    double interval_s;             /* the collect interval while on */
    double busy_max;               /* on only while busy under this share of the window (1: no bound) */
    double events_on;              /* on from this many ready watchers per second of the window... */
    double events_off;             /* ...and off again under this many (0, 0: no bound) */
};

extern const struct coalesce_policy COALESCE_PUSHER;
extern const struct coalesce_policy COALESCE_CHAT;

struct coalesce {
    struct ev_loop *loop;
    const struct coalesce_policy *policy;
    ev_prepare prepare_w;          /* the end of a turn: the loop is about to poll (or collect) */
    ev_check check_w;              /* the start of a turn: the poll returned */
    ev_tstamp turn_start;          /* when the current turn began (ev_time), 0 before the first */
    ev_tstamp window_start;
    double busy;                   /* seconds spent in turns during the current window */
    double events;                 /* watchers that became ready during the current window */
    bool on;                       /* the collect interval is set */
};

/* The decision at the end of a window of window_s seconds, busy_s of them spent in turns,
 * events watchers ready in it, the interval on or not during it: whether it should be on
 * for the next. Pure. */
bool coalesce_wanted(const struct coalesce_policy *p, bool on, double busy_s, double events, double window_s);

/* Starts watching loop's turns (a prepare and a check watcher in c, which the caller
 * keeps in place until coalesce_stop) under policy p (borrowed; the ones above are
 * static). The interval starts off. Borrows loop. */
void coalesce_start(struct coalesce *c, struct ev_loop *loop, const struct coalesce_policy *p);
/* Stops the watchers and clears the interval. */
void coalesce_stop(struct coalesce *c);
#endif
