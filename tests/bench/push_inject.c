/* tests/bench/push_inject.c - the pusher benchmark's emitter: plays a configured c2s, sends push events through common/push_emit as fast as the channel's window takes them, prints events/s once all are acknowledged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "node.h"
#include "push_emit.h"
#include "util.h"

/* Usage: push_inject -c CONFIG --id c2s.N, with the environment:
 *   PUSH_INJECT_EVENTS  events to send (default 200000)
 *   PUSH_INJECT_WINDOW  events in flight at most (default 20000; below max_pending_events)
 *   PUSH_INJECT_USERS   distinct senders (default 1000)
 * Waits for a pusher's hello, sends SENT chat events (alice<k>@<first domain> -> bob),
 * and when the last one is acknowledged prints one line:
 *   events=N seconds=S events_per_s=R dropped=D
 * then exits (1 when the pushers did not acknowledge everything within 300 s). */

struct inject {
    struct node *node;
    struct push_emit *pe;
    ev_idle idle;
    ev_timer give_up;
    unsigned long total, window, users;
    unsigned long sent, dropped;
    bool started, done;
    int64_t t0_us;
    char from[128], user[128], to[128], body[64];
};

static void finish(struct inject *in, bool ok)
{
    double secs = (double)(mk_mono_us() - in->t0_us) / 1e6;
    printf("events=%lu seconds=%.3f events_per_s=%.0f dropped=%lu%s\n", in->sent, secs,
           secs > 0 ? (double)in->sent / secs : 0.0, in->dropped, ok ? "" : " incomplete=1");
    fflush(stdout);
    in->done = true;
    ev_break(in->node->loop, EVBREAK_ALL);
}

/* Each loop turn with room in the window: top it up. The watcher stops when the
 * window is full or everything is sent (an ack starts it again), so the injector
 * sleeps instead of spinning while it waits. */
static void on_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)revents;
    struct inject *in = w->data;
    if (!in->started || in->done) {
        ev_idle_stop(loop, w);
        return;
    }
    size_t pending = push_emit_pending(in->pe);
    if (in->sent >= in->total) {
        ev_idle_stop(loop, w);
        if (pending == 0)
            finish(in, true);
        return;
    }
    const char *dom = in->node->cfg->domains[0];
    unsigned budget = 4096;   /* per turn, so acks are read in between */
    while (in->sent < in->total && pending < in->window && budget-- > 0) {
        unsigned long k = in->sent % in->users;
        snprintf(in->from, sizeof in->from, "alice%lu@%s/bench", k, dom);
        snprintf(in->user, sizeof in->user, "alice%lu@%s", k, dom);
        snprintf(in->to, sizeof in->to, "bob%lu@%s", k, dom);
        snprintf(in->body, sizeof in->body, "bench message %lu", in->sent);
        Mk__PushEvent ev;
        mk__push_event__init(&ev);
        ev.kind = MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT;
        ev.user = in->user;
        ev.from = in->from;
        ev.to = in->to;
        ev.type = "chat";
        ev.body = in->body;
        ev.has_body = true;
        if (push_emit_send(in->pe, &ev) == -1)
            in->dropped++;
        in->sent++;
        pending++;
    }
    if (in->sent >= in->total || pending >= in->window)
        ev_idle_stop(loop, w);
}

static void on_give_up(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct inject *in = w->data;
    fprintf(stderr, "push_inject: %zu events still unacknowledged\n", push_emit_pending(in->pe));
    finish(in, false);
}

static void on_envelope(struct node *n, Mk__Envelope **envp)
{
    struct inject *in = n->role_data;
    if (push_emit_on_envelope(in->pe, *envp) && in->started && !in->done)
        ev_idle_start(n->loop, &in->idle);
}

static void on_peer_hello(struct node *n, const char *peer, const char *role, bool is_reply)
{
    (void)peer, (void)is_reply;
    struct inject *in = n->role_data;
    if (strcmp(role, "pusher") == 0 && !in->started) {
        in->started = true;
        in->t0_us = mk_mono_us();
        ev_idle_start(n->loop, &in->idle);
    }
}

static unsigned long env_ulong(const char *name, unsigned long dflt)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0' ? strtoul(v, NULL, 10) : dflt;
}

int main(int argc, char **argv)
{
    struct node n;
    struct inject in;
    memset(&in, 0, sizeof in);
    in.node = &n;
    in.total = env_ulong("PUSH_INJECT_EVENTS", 200000);
    in.window = env_ulong("PUSH_INJECT_WINDOW", 20000);
    in.users = env_ulong("PUSH_INJECT_USERS", 1000);
    if (in.users == 0)
        in.users = 1;
    const struct node_hooks hooks = { .on_envelope = on_envelope, .on_peer_hello = on_peer_hello };
    if (node_init(&n, argc, argv, CFG_ROLE_C2S, &hooks, &in) == -1)
        return 1;
    in.pe = push_emit_new(&n);
    if (in.pe == NULL) {
        fprintf(stderr, "push_inject: no backend wants events of %s\n", n.cfg->domains[0]);
        node_fini(&n);
        return 1;
    }
    ev_idle_init(&in.idle, on_idle);
    in.idle.data = &in;
    ev_timer_init(&in.give_up, on_give_up, 300., 0.);
    in.give_up.data = &in;
    ev_timer_start(n.loop, &in.give_up);
    node_run(&n);
    ev_idle_stop(n.loop, &in.idle);
    ev_timer_stop(n.loop, &in.give_up);
    bool ok = in.done && push_emit_pending(in.pe) == 0;
    push_emit_free(&in.pe);
    node_fini(&n);
    return ok ? 0 : 1;
}
