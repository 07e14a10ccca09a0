/* common/workpool.c - a few threads that run pure computation (password hashing) off the event loop. */
#include "workpool.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util.h"

struct workpool_job {
    workpool_work_fn *work;
    workpool_done_fn *done;
    void *arg;
    struct workpool_job *next;
};

/* Two FIFO lists under one mutex: todo (for the workers) and finished (for the
 * loop, which an ev_async wakes). Jobs are few and each costs milliseconds of
 * hashing: one lock is plenty. */
struct workpool {
    struct ev_loop *loop;
    ev_async wake;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct workpool_job *todo, *todo_tail;
    struct workpool_job *finished, *finished_tail;
    unsigned jobs;                 /* accepted, done not yet run (loop thread only) */
    unsigned max_jobs;
    unsigned long long refused;
    bool stopping;
    unsigned nthreads;
    pthread_t *threads;
};

static void push(struct workpool_job **head, struct workpool_job **tail, struct workpool_job *j)
{
    j->next = NULL;
    if (*tail != NULL)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

/* Workers run at a lower priority than the loop: a flood that keeps every worker
 * busy must not take the CPU the loop needs on a machine with few cores. */
#define WORKPOOL_NICE 10

static void *worker(void *ud)
{
    struct workpool *wp = ud;
    /* Linux: a nice value is per thread. Best effort: a failure leaves it as it was. */
    id_t tid = (id_t)syscall(SYS_gettid);
    errno = 0;
    int nice_now = getpriority(PRIO_PROCESS, tid);
    if (errno == 0)
        (void)setpriority(PRIO_PROCESS, tid, nice_now + WORKPOOL_NICE > 19 ? 19 : nice_now + WORKPOOL_NICE);
    pthread_mutex_lock(&wp->mu);
    for (;;) {
        while (wp->todo == NULL && !wp->stopping)
            pthread_cond_wait(&wp->cv, &wp->mu);
        struct workpool_job *j = wp->todo;
        if (j == NULL)
            break;   /* stopping, and nothing left to do */
        wp->todo = j->next;
        if (wp->todo == NULL)
            wp->todo_tail = NULL;
        pthread_mutex_unlock(&wp->mu);
        j->work(j->arg);
        pthread_mutex_lock(&wp->mu);
        push(&wp->finished, &wp->finished_tail, j);
        ev_async_send(wp->loop, &wp->wake);
    }
    pthread_mutex_unlock(&wp->mu);
    return NULL;
}

/* Runs the done functions of the finished jobs, on the loop. */
static void drain_finished(struct workpool *wp)
{
    pthread_mutex_lock(&wp->mu);
    struct workpool_job *j = wp->finished;
    wp->finished = wp->finished_tail = NULL;
    pthread_mutex_unlock(&wp->mu);
    while (j != NULL) {
        struct workpool_job *next = j->next;
        wp->jobs--;
        j->done(j->arg);
        free(j);
        j = next;
    }
}

static void wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    drain_finished(w->data);
}

struct workpool *workpool_new(struct ev_loop *loop, unsigned nthreads, unsigned max_jobs)
{
    if (nthreads < 1 || nthreads > 64 || max_jobs < 1) {
        errno = EINVAL;
        return NULL;
    }
    struct workpool *wp = xcalloc(1, sizeof *wp);
    wp->loop = loop;
    wp->max_jobs = max_jobs;
    pthread_mutex_init(&wp->mu, NULL);
    pthread_cond_init(&wp->cv, NULL);
    ev_async_init(&wp->wake, wake_cb);
    wp->wake.data = wp;
    ev_async_start(loop, &wp->wake);
    ev_unref(loop);   /* the pool alone does not keep the loop running */
    wp->threads = xcalloc(nthreads, sizeof *wp->threads);
    for (unsigned i = 0; i < nthreads; i++) {
        int rc = pthread_create(&wp->threads[i], NULL, worker, wp);
        if (rc != 0) {
            workpool_free(&wp);
            errno = rc;
            return NULL;
        }
        wp->nthreads++;
    }
    return wp;
}

void workpool_free(struct workpool **wpp)
{
    if (wpp == NULL || *wpp == NULL)
        return;
    struct workpool *wp = *wpp;
    *wpp = NULL;
    pthread_mutex_lock(&wp->mu);
    wp->stopping = true;
    pthread_cond_broadcast(&wp->cv);
    pthread_mutex_unlock(&wp->mu);
    for (unsigned i = 0; i < wp->nthreads; i++)
        pthread_join(wp->threads[i], NULL);
    drain_finished(wp);   /* the workers ran every accepted job before they stopped */
    ev_ref(wp->loop);
    ev_async_stop(wp->loop, &wp->wake);
    pthread_cond_destroy(&wp->cv);
    pthread_mutex_destroy(&wp->mu);
    free(wp->threads);
    free(wp);
}

int workpool_submit(struct workpool *wp, workpool_work_fn *work, workpool_done_fn *done, void *arg)
{
    if (wp->jobs >= wp->max_jobs) {
        wp->refused++;
        errno = EAGAIN;
        return -1;
    }
    struct workpool_job *j = xmalloc(sizeof *j);
    j->work = work;
    j->done = done;
    j->arg = arg;
    wp->jobs++;
    pthread_mutex_lock(&wp->mu);
    push(&wp->todo, &wp->todo_tail, j);
    pthread_cond_signal(&wp->cv);
    pthread_mutex_unlock(&wp->mu);
    return 0;
}

unsigned workpool_jobs(const struct workpool *wp)
{
    return wp->jobs;
}

unsigned long long workpool_refused(const struct workpool *wp)
{
    return wp->refused;
}
