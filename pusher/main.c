/* pusher/main.c - meerkat-pusher: takes push events from c2s and the routers and hands them to the configured backends (webhooks, Amazon SNS, XEP-0357). */
#include <stdlib.h>
#include <string.h>

#include "coalesce.h"
#include "intake.h"
#include "log.h"
#include "node.h"
#include "pusher.h"

/* The backend types built into this binary; each backend's file adds its line. */
static const struct push_backend_ops *const backend_types[] = {
    &push_http_ops,
    &push_sns_ops,
    &push_xep0357_ops,
    NULL,
};

struct pusher {
    struct node *node;
    struct push_intake *intake;
    ev_prepare stop_w;
    struct coalesce coalesce;      /* fewer wake-ups while lightly loaded (common/coalesce.h) */
};

static void on_envelope(struct node *n, Mk__Envelope **envp)
{
    struct pusher *p = n->role_data;
    if (p->intake != NULL && push_intake_on_envelope(p->intake, envp))
        return;
    /* Hello is handled by node (answered; the emitters re-send on it); the rest is not ours. */
}

static void collect(struct node *n)
{
    struct pusher *p = n->role_data;
    if (p->intake != NULL)
        push_intake_collect(p->intake);
}

/* Graceful stop: no new event; the attempts in flight finish (or the grace period ends),
 * then what is done is acknowledged and the process exits. What is not done stays with
 * its emitter, which re-sends it to the next incarnation. */
static void on_stop(struct node *n)
{
    struct pusher *p = n->role_data;
    if (p->intake != NULL)
        push_intake_stop(p->intake);
}

static void on_stop_check(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct pusher *p = w->data;
    if (p->node->stopping && push_intake_in_flight(p->intake) == 0) {
        push_intake_flush(p->intake);
        node_exit(p->node);
    }
}

int main(int argc, char **argv)
{
    struct node n;
    struct pusher p;
    memset(&p, 0, sizeof p);
    p.node = &n;
    if (http_global_init() == -1)
        return 1;
    const struct node_hooks hooks = {
        .on_envelope = on_envelope,
        .on_stop = on_stop,
        .collect = collect,
    };
    if (node_init(&n, argc, argv, CFG_ROLE_PUSHER, &hooks, &p) == -1)
        return 1;
    char err[512] = "";
    p.intake = push_intake_new(&n, backend_types, err, sizeof err);
    if (p.intake == NULL) {
        log_error("pusher_backends_failed", "reason=\"%s\"", err);
        node_fini(&n);
        return 1;
    }
    ev_prepare_init(&p.stop_w, on_stop_check);
    p.stop_w.data = &p;
    ev_prepare_start(n.loop, &p.stop_w);
    coalesce_start(&p.coalesce, n.loop, &COALESCE_PUSHER);
    node_run(&n);
    coalesce_stop(&p.coalesce);
    ev_prepare_stop(n.loop, &p.stop_w);
    push_intake_flush(p.intake);
    push_intake_free(&p.intake);
    node_fini(&n);
    return 0;
}
