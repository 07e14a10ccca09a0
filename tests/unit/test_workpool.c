/* tests/unit/test_workpool.c - the worker pool: work off the loop, done on it, a bounded queue, a clean stop. */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>
#include <ev.h>

#include "workpool.h"

static pthread_t loop_thread;

struct job {
    unsigned long long in, out;
    bool worked_off_loop;
    bool done_on_loop;
    int *ndone;
    sem_t *gate;                  /* work waits on it when set */
};

static void work(void *arg)
{
    struct job *j = arg;
    if (j->gate != NULL)
        sem_wait(j->gate);
    j->worked_off_loop = !pthread_equal(pthread_self(), loop_thread);
    unsigned long long x = j->in;
    for (int i = 0; i < 100000; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    j->out = x;
}

static void done(void *arg)
{
    struct job *j = arg;
    j->done_on_loop = pthread_equal(pthread_self(), loop_thread);
    (*j->ndone)++;
}

static unsigned long long expect(unsigned long long x)
{
    for (int i = 0; i < 100000; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x;
}

static void on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

/* Runs the loop until *ndone reaches want (or 10 s pass). */
static void run_until(struct ev_loop *loop, int *ndone, int want)
{
    ev_timer t;
    ev_timer_init(&t, on_timeout, 10., 0.);
    ev_timer_start(loop, &t);
    while (*ndone < want && ev_is_active(&t))
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &t);
}

static void test_jobs_run_off_the_loop(void **state)
{
    struct ev_loop *loop = ev_loop_new(0);
    loop_thread = pthread_self();
    struct workpool *wp = workpool_new(loop, 3, 200);
    assert_non_null(wp);
    struct job jobs[200];
    int ndone = 0;
    for (int i = 0; i < 200; i++) {
        jobs[i] = (struct job){.in = (unsigned long long)i, .ndone = &ndone};
        assert_int_equal(workpool_submit(wp, work, done, &jobs[i]), 0);
    }
    assert_int_equal(workpool_jobs(wp), 200);
    run_until(loop, &ndone, 200);
    assert_int_equal(ndone, 200);
    assert_int_equal(workpool_jobs(wp), 0);
    for (int i = 0; i < 200; i++) {
        assert_true(jobs[i].worked_off_loop);
        assert_true(jobs[i].done_on_loop);
        assert_true(jobs[i].out == expect((unsigned long long)i));
    }
    workpool_free(&wp);
    assert_null(wp);
    ev_loop_destroy(loop);
}

static void test_full_pool_refuses(void **state)
{
    struct ev_loop *loop = ev_loop_new(0);
    loop_thread = pthread_self();
    struct workpool *wp = workpool_new(loop, 1, 2);
    sem_t gate;
    sem_init(&gate, 0, 0);
    int ndone = 0;
    struct job a = {.in = 1, .ndone = &ndone, .gate = &gate};
    struct job b = {.in = 2, .ndone = &ndone, .gate = &gate};
    struct job c = {.in = 3, .ndone = &ndone};
    assert_int_equal(workpool_submit(wp, work, done, &a), 0);
    assert_int_equal(workpool_submit(wp, work, done, &b), 0);
    errno = 0;
    assert_int_equal(workpool_submit(wp, work, done, &c), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(workpool_refused(wp), 1);
    sem_post(&gate);
    run_until(loop, &ndone, 1);
    assert_int_equal(ndone, 1);
    /* One slot is free again. */
    assert_int_equal(workpool_submit(wp, work, done, &c), 0);
    sem_post(&gate);
    run_until(loop, &ndone, 3);
    assert_int_equal(ndone, 3);
    assert_true(c.out == expect(3));
    workpool_free(&wp);
    sem_destroy(&gate);
    ev_loop_destroy(loop);
}

static void test_free_finishes_accepted_jobs(void **state)
{
    struct ev_loop *loop = ev_loop_new(0);
    loop_thread = pthread_self();
    struct workpool *wp = workpool_new(loop, 2, 16);
    struct job jobs[16];
    int ndone = 0;
    for (int i = 0; i < 16; i++) {
        jobs[i] = (struct job){.in = (unsigned long long)i + 7, .ndone = &ndone};
        assert_int_equal(workpool_submit(wp, work, done, &jobs[i]), 0);
    }
    workpool_free(&wp);
    assert_int_equal(ndone, 16);
    for (int i = 0; i < 16; i++)
        assert_true(jobs[i].done_on_loop && jobs[i].out == expect((unsigned long long)i + 7));
    workpool_free(&wp);   /* NULL-safe */
    assert_null(workpool_new(loop, 0, 1));
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jobs_run_off_the_loop),
        cmocka_unit_test(test_full_pool_refuses),
        cmocka_unit_test(test_free_finishes_accepted_jobs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
