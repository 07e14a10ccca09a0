/* tests/unit/test_sm.c - XEP-0198 counters: an h is checked against what was sent modulo 2^32 (c2s/sm.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../c2s/sm.h"

static void test_h_in_order(void **state)
{
    (void)state;
    assert_true(sm_h_valid(0, 0, 0));
    assert_false(sm_h_valid(0, 0, 1));          /* nothing sent, one acknowledged */
    assert_true(sm_h_valid(3, 10, 3));           /* no progress */
    assert_true(sm_h_valid(3, 10, 10));          /* all */
    assert_false(sm_h_valid(3, 10, 11));         /* one more than sent */
    assert_false(sm_h_valid(3, 10, 2));          /* going back is going round: too high */
}

static void test_h_wraps_at_2_32(void **state)
{
    (void)state;
    uint32_t acked = UINT32_MAX - 5, sent = 10;  /* 16 sent since, the counter wrapped */
    assert_true(sm_h_valid(acked, sent, UINT32_MAX));
    assert_true(sm_h_valid(acked, sent, 0));
    assert_true(sm_h_valid(acked, sent, 10));
    assert_false(sm_h_valid(acked, sent, 11));
    assert_false(sm_h_valid(acked, sent, UINT32_MAX - 6));
    /* Exactly at the edge: 2^32 - 1 sent, then one more is 0. */
    assert_true(sm_h_valid(UINT32_MAX, 0, 0));
    assert_false(sm_h_valid(UINT32_MAX, 0, 1));
    /* The largest window: everything but one value. */
    assert_true(sm_h_valid(0, UINT32_MAX, UINT32_MAX - 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_h_in_order),
        cmocka_unit_test(test_h_wraps_at_2_32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
