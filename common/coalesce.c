/* common/coalesce.c - fewer wake-ups of an event loop: libev's I/O collect interval, on or off by the loop's recent load. */
#include "coalesce.h"

const struct coalesce_policy COALESCE_PUSHER = { .interval_s = 250e-6, .busy_max = 0.5 };
const struct coalesce_policy COALESCE_CHAT = { .interval_s = 300e-6, .busy_max = 1.0, .events_on = 15000,
                                               .events_off = 8000 };

bool coalesce_wanted(const struct coalesce_policy *p, bool on, double busy_s, double events, double window_s)
{
    if (window_s <= 0 || busy_s >= p->busy_max * window_s)
        return false;
    return events >= (on ? p->events_off : p->events_on) * window_s;
}

/* The poll returned: a turn begins. */
static void check_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)revents;
    struct coalesce *c = w->data;
    c->turn_start = ev_time();
    /* What the poll made ready (this watcher is already off the pending list). */
    c->events += ev_pending_count(loop);
}

/* The turn ends: its time counts as busy; at the end of a window, the interval is set
 * or cleared for the next one (libev reads it before each poll). */
static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    struct coalesce *c = w->data;
    ev_tstamp now = ev_time();
    if (c->turn_start > 0 && now > c->turn_start)
        c->busy += now - c->turn_start;
    c->turn_start = 0;
    double window = now - c->window_start;
    if (window < COALESCE_WINDOW_MS / 1000.0)
        return;
    bool want = coalesce_wanted(c->policy, c->on, c->busy, c->events, window);
    if (want != c->on) {
        ev_set_io_collect_interval(loop, want ? c->policy->interval_s : 0.);
        c->on = want;
    }
    c->window_start = now;
    c->busy = 0;
    c->events = 0;
}

void coalesce_start(struct coalesce *c, struct ev_loop *loop, const struct coalesce_policy *p)
{
    c->loop = loop;
    c->policy = p;
    c->events = 0;
    c->turn_start = 0;
    c->window_start = ev_time();
    c->busy = 0;
    c->on = false;
    ev_check_init(&c->check_w, check_cb);
    c->check_w.data = c;
    /* Lowest priority: the last prepare watcher of the turn, so the HTTP client's and the
     * bus's end-of-turn writes count as busy. Highest for check: the first of the turn. */
    ev_prepare_init(&c->prepare_w, prepare_cb);
    ev_set_priority(&c->prepare_w, EV_MINPRI);
    c->prepare_w.data = c;
    ev_set_priority(&c->check_w, EV_MAXPRI);
    ev_check_start(loop, &c->check_w);
    ev_prepare_start(loop, &c->prepare_w);
}

void coalesce_stop(struct coalesce *c)
{
    if (c->loop == NULL)
        return;
    ev_check_stop(c->loop, &c->check_w);
    ev_prepare_stop(c->loop, &c->prepare_w);
    ev_set_io_collect_interval(c->loop, 0.);
    c->on = false;
    c->loop = NULL;
}
