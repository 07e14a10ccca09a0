/* tests/unit/test_push_window.c - the pusher's completion windows (cumulative acks over out-of-order completions) and its retry backoff. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "../../pusher/backoff.h"
#include "../../pusher/window.h"

static void test_in_order(void **state)
{
    struct push_window *w = push_window_new();
    uint64_t upto = 0;
    for (uint64_t s = 1; s <= 3; s++)
        push_window_add(w, "c2s.0", 100, s);
    assert_int_equal(push_window_pending(w), 3);
    assert_true(push_window_done(w, "c2s.0", 100, 1, &upto));
    assert_int_equal(upto, 1);
    assert_true(push_window_done(w, "c2s.0", 100, 2, &upto));
    assert_int_equal(upto, 2);
    assert_int_equal(push_window_pending(w), 1);
    push_window_free(&w);
    assert_null(w);
    push_window_free(&w);   /* NULL-safe */
}

/* 3 and 2 finish before 1: nothing is acknowledged until 1 does, then all three. */
static void test_out_of_order(void **state)
{
    struct push_window *w = push_window_new();
    uint64_t upto = 0;
    for (uint64_t s = 1; s <= 4; s++)
        push_window_add(w, "router.0", 7, s);
    assert_false(push_window_done(w, "router.0", 7, 3, &upto));
    assert_false(push_window_done(w, "router.0", 7, 2, &upto));
    assert_int_equal(push_window_pending(w), 4);
    assert_true(push_window_done(w, "router.0", 7, 1, &upto));
    assert_int_equal(upto, 3);
    assert_int_equal(push_window_pending(w), 1);
    /* Done twice, or never taken: no effect. */
    assert_false(push_window_done(w, "router.0", 7, 2, &upto));
    assert_false(push_window_done(w, "router.0", 7, 99, &upto));
    assert_true(push_window_done(w, "router.0", 7, 4, &upto));
    assert_int_equal(upto, 4);
    assert_int_equal(push_window_pending(w), 0);
    push_window_free(&w);
}

/* Senders are independent; a sender's new epoch drops the old entries, and a done of the
 * old epoch changes nothing. A gap in the numbers (the channel resumed at its base) is fine. */
static void test_senders_and_epochs(void **state)
{
    struct push_window *w = push_window_new();
    uint64_t upto = 0;
    push_window_add(w, "c2s.0", 1, 10);
    push_window_add(w, "c2s.1", 1, 10);
    push_window_add(w, "c2s.0", 1, 11);
    assert_false(push_window_done(w, "c2s.0", 1, 11, &upto));
    assert_true(push_window_done(w, "c2s.1", 1, 10, &upto));
    assert_int_equal(upto, 10);
    push_window_add(w, "c2s.0", 2, 1);   /* c2s.0 restarted */
    assert_int_equal(push_window_pending(w), 1);
    assert_false(push_window_done(w, "c2s.0", 1, 10, &upto));
    push_window_add(w, "c2s.0", 2, 5);
    assert_false(push_window_done(w, "c2s.0", 2, 5, &upto));
    assert_true(push_window_done(w, "c2s.0", 2, 1, &upto));
    assert_int_equal(upto, 5);
    assert_false(push_window_done(w, "nobody", 1, 1, &upto));
    push_window_free(&w);
}

/* Many entries (the ring grows while wrapped), finished in reverse: one ack at the end. */
static void test_grow_reverse(void **state)
{
    struct push_window *w = push_window_new();
    uint64_t upto = 0, next = 1;
    /* Wrap the ring first: take and finish 40, so the head is not at 0 when it grows. */
    for (; next <= 40; next++)
        push_window_add(w, "c2s.0", 3, next);
    for (uint64_t s = 1; s <= 40; s++)
        assert_true(push_window_done(w, "c2s.0", 3, s, &upto));
    uint64_t first = next;
    for (; next < first + 1000; next++)
        push_window_add(w, "c2s.0", 3, next);
    assert_int_equal(push_window_pending(w), 1000);
    for (uint64_t s = next - 1; s > first; s--)
        assert_false(push_window_done(w, "c2s.0", 3, s, &upto));
    assert_true(push_window_done(w, "c2s.0", 3, first, &upto));
    assert_int_equal(upto, next - 1);
    assert_int_equal(push_window_pending(w), 0);
    push_window_free(&w);
}

static void test_backoff(void **state)
{
    /* The cap doubles per retry up to max: the largest draw shows it. */
    assert_int_equal(push_backoff_ms(100, 30000, 0, -1, UINT64_MAX - 0), UINT64_MAX % 101);
    assert_int_equal(push_backoff_ms(100, 30000, 0, -1, 100), 100);
    assert_int_equal(push_backoff_ms(100, 30000, 0, -1, 101), 0);
    assert_int_equal(push_backoff_ms(100, 30000, 3, -1, 800), 800);
    assert_int_equal(push_backoff_ms(100, 30000, 3, -1, 801), 0);
    assert_int_equal(push_backoff_ms(100, 30000, 20, -1, 30000), 30000);
    assert_int_equal(push_backoff_ms(100, 30000, 200, -1, 30001), 0);   /* no overflow for a large n */
    /* Retry-After is a floor, even above max. */
    assert_int_equal(push_backoff_ms(100, 1000, 0, 5000, 3), 5000);
    assert_int_equal(push_backoff_ms(100, 1000, 2, 10, 300), 300);
    assert_int_equal(push_backoff_ms(100, 1000, 2, 0, 0), 0);

    /* Full jitter: draws spread over [0, cap], mean near cap / 2. */
    uint64_t st = 42, sum = 0, lo = UINT64_MAX, hi = 0;
    for (int i = 0; i < 10000; i++) {
        uint64_t v = push_backoff_ms(100, 30000, 2, -1, push_backoff_rand(&st));
        assert_true(v <= 400);
        sum += v;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    assert_true(lo < 10 && hi > 390);
    assert_true(sum / 10000 > 180 && sum / 10000 < 220);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_in_order),
        cmocka_unit_test(test_out_of_order),
        cmocka_unit_test(test_senders_and_epochs),
        cmocka_unit_test(test_grow_reverse),
        cmocka_unit_test(test_backoff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
