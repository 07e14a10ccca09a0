/* pusher/intake.h - meerkat-pusher's core: events from the reliable channel, one job per interested backend, retries, cumulative acknowledgements, metrics. */
#ifndef MK_PUSHER_INTAKE_H
#define MK_PUSHER_INTAKE_H
#include <stdbool.h>
#include <stddef.h>

#include "meerkat.pb-c.h"
#include "pusher.h"

struct node;
struct push_intake;

/* Builds the backends of n->cfg->pusher with the ops of their type found in types
 * (NULL-terminated: the types built into this binary), and the channel's receiver.
 * NULL with a reason in err when a backend's type is not built in or its init refuses.
 * Borrows n and types (they outlive the intake). */
struct push_intake *push_intake_new(struct node *n, const struct push_backend_ops *const *types, char *err,
                                    size_t errlen);
/* Finishes the backends (fini; what is in flight is abandoned, unacknowledged: the
 * emitters re-send it to the next incarnation) and frees (NULL-safe). */
void push_intake_free(struct push_intake **ip);

/* Envelope hook. A PushEvent on the channel: a new one is taken (*envp is kept: set to
 * NULL) and one job per backend whose domains and events match is started; the event
 * is acknowledged to its emitter once all its jobs are finished (ok, skipped, or
 * finally failed) and so is every earlier event of that emitter. A duplicate or a gap
 * is dropped (the channel re-acknowledges or re-sends). Other payloads go to each
 * backend's envelope op. Returns true when consumed. */
bool push_intake_on_envelope(struct push_intake *in, Mk__Envelope **envp);

/* Graceful stop: no new event is taken from now on, and no retry is started; attempts in
 * flight may still finish (and their events be acknowledged). */
void push_intake_stop(struct push_intake *in);
/* Attempts in flight (a stop waits for 0). */
size_t push_intake_in_flight(const struct push_intake *in);
/* Events taken and not yet acknowledged. */
size_t push_intake_pending(const struct push_intake *in);
/* Sends the due acknowledgements now (before exit). */
void push_intake_flush(struct push_intake *in);
/* Gauges, before /metrics renders. */
void push_intake_collect(struct push_intake *in);
#endif
