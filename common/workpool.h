/* common/workpool.h - a few threads that run pure computation (password hashing) off the event loop. */
#ifndef MK_COMMON_WORKPOOL_H
#define MK_COMMON_WORKPOOL_H
#include <stddef.h>

#include <ev.h>

/* The one exception to "no application threads" (DESIGN.md §8: expensive work
 * such as PBKDF2 runs off the loop). A job's work function runs on a worker
 * thread and may only compute on its own argument: no loop, no log, no metrics,
 * no object the loop also touches. Its done function then runs on the loop, in
 * the order jobs finish, and is where the result is used and the argument freed.
 * The queue is bounded: a full pool refuses new work at once (EAGAIN), which the
 * caller reports as back-pressure (a temporary failure, a 'wait' error). */
struct workpool;

typedef void workpool_work_fn(void *arg);   /* on a worker thread */
typedef void workpool_done_fn(void *arg);   /* on the loop, after work */

/* Starts nthreads workers (1-64) reporting to loop; at most max_jobs jobs wait or
 * run at once (>= 1). Returns NULL with errno when a thread cannot start. */
struct workpool *workpool_new(struct ev_loop *loop, unsigned nthreads, unsigned max_jobs);
/* Finishes the jobs already accepted (their work, then their done on this thread),
 * stops the workers and frees the pool; sets *wp to NULL. NULL-safe. */
void workpool_free(struct workpool **wp);
/* Queues work(arg) and then done(arg). Borrows arg until done has run (the caller
 * keeps what arg points to alive until then). Returns 0, or -1 with errno EAGAIN
 * when max_jobs are already accepted (neither function will run). */
int workpool_submit(struct workpool *wp, workpool_work_fn *work, workpool_done_fn *done, void *arg);
/* Jobs accepted whose done has not run yet. */
unsigned workpool_jobs(const struct workpool *wp);
/* Jobs refused (EAGAIN) since the pool started. */
unsigned long long workpool_refused(const struct workpool *wp);
#endif
