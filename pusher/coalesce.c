/* pusher/coalesce.c - fewer wake-ups of a lightly loaded pusher: libev's I/O collect interval, on while the loop is mostly idle. */
#include "coalesce.h"

bool coalesce_wanted(double busy_s, double window_s)
{
    return window_s > 0 && busy_s < COALESCE_BUSY_MAX * window_s;
}

/* The poll returned: a turn begins. */
static void check_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)loop, (void)revents;
    struct coalesce *c = w->data;
    c->turn_start = ev_time();
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
    bool want = coalesce_wanted(c->busy, window);
    if (want != c->on) {
        ev_set_io_collect_interval(loop, want ? COALESCE_INTERVAL_US / 1e6 : 0.);
        c->on = want;
    }
    c->window_start = now;
    c->busy = 0;
}

void coalesce_start(struct coalesce *c, struct ev_loop *loop)
{
    c->loop = loop;
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
