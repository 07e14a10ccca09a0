/* tests/unit/test_mam_fence.c - read-your-writes for MAM queries: when a query of an owner may be answered. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "../../mam/fence.h"

/* What a query's callback saw. */
struct seen {
    int ready;
    int cancelled;
};

static void on_ready(void *ud, bool cancelled)
{
    struct seen *s = ud;
    if (cancelled)
        s->cancelled++;
    else
        s->ready++;
}

/* A place on channel (writer, epoch). */
static struct fence_pos at(uint64_t writer, uint64_t epoch, uint64_t seq)
{
    return (struct fence_pos){writer, epoch, seq};
}

static void test_nothing_pending_answers_at_once(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    struct fence_wait w;
    struct seen s = {0};
    assert_int_equal(fence_wait(t, &w, "a@x", NULL, 0, on_ready, &s), 0);
    /* A write of another owner pending does not hold a's query. */
    struct fence_link l = {0};
    fence_arrived(t, &l, "b@x", NULL, 0);
    assert_int_equal(fence_wait(t, &w, "a@x", NULL, 0, on_ready, &s), 0);
    fence_done(t, &l);
    assert_int_equal(fence_owners(t), 0);
    assert_int_equal(s.ready + s.cancelled, 0);
    fence_table_free(&t);
    assert_null(t);
}

static void test_waits_for_writes_that_came_before(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    struct fence_link l1 = {0}, l2 = {0}, l3 = {0};
    fence_arrived(t, &l1, "a@x", NULL, 0);
    fence_arrived(t, &l2, "a@x", NULL, 0);
    struct fence_wait w;
    struct seen s = {0};
    assert_int_equal(fence_wait(t, &w, "a@x", NULL, 0, on_ready, &s), 1);
    assert_int_equal(fence_waiting(t), 1);
    /* A write that comes after the query does not hold it. */
    fence_arrived(t, &l3, "a@x", NULL, 0);
    /* Committed out of order: the query goes only when both earlier ones are done. */
    fence_done(t, &l2);
    assert_int_equal(s.ready, 0);
    fence_done(t, &l1);
    assert_int_equal(s.ready, 1);
    assert_int_equal(fence_waiting(t), 0);
    fence_done(t, &l3);
    fence_done(t, &l3);   /* twice: nothing */
    assert_int_equal(s.ready, 1);
    assert_int_equal(fence_owners(t), 0);
    fence_table_free(&t);
}

enum { C2S_B = 11, ROUTER = 22, EPOCH = 1000 };

static void test_waits_for_a_fence_not_arrived(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    /* b's c2s wrote b's copy of b's message to a (seq 7 of its channel); the router
     * has not yet written a's copy (seq 5 of its channel), though it delivered it:
     * one archive id, two channels. a's query must wait for the router's. */
    struct fence_link bcopy = {0};
    struct fence_pos c2s_place = at(C2S_B, EPOCH, 7), router_place = at(ROUTER, EPOCH + 1, 5);
    fence_arrived(t, &bcopy, "b@x", &c2s_place, 1);
    fence_done(t, &bcopy);
    struct fence_wait w;
    struct seen s = {0};
    struct fence_pos fences[] = {c2s_place, router_place, at(0, 0, 0)};
    assert_int_equal(fence_wait(t, &w, "a@x", fences, 3, on_ready, &s), 1);
    assert_int_equal(w.nids, 1);
    /* Another channel's later write, and an earlier write on the router's channel:
     * not it. */
    struct fence_link other = {0}, earlier = {0}, it = {0};
    struct fence_pos later_c2s = at(C2S_B, EPOCH, 8), before = at(ROUTER, EPOCH + 1, 4);
    fence_arrived(t, &other, "b@x", &later_c2s, 1);
    fence_done(t, &other);
    fence_arrived(t, &earlier, "c@x", &before, 1);
    fence_done(t, &earlier);
    assert_int_equal(s.ready, 0);
    /* It arrives: the query now waits for its commit. */
    fence_arrived(t, &it, "a@x", &router_place, 1);
    assert_int_equal(s.ready, 0);
    fence_done(t, &it);
    assert_int_equal(s.ready, 1);
    assert_int_equal(fence_owners(t), 0);
    fence_table_free(&t);
}

static void test_a_later_write_of_the_channel_resolves_a_fence(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    struct fence_pos fence = at(ROUTER, EPOCH, 5);
    struct fence_wait w;
    struct seen s = {0};
    assert_int_equal(fence_wait(t, &w, "a@x", &fence, 1, on_ready, &s), 1);
    /* Seq 6 for another owner came on the same channel: 5 came before it (in order).
     * a has nothing pending, so the query goes at once, from within the arrival. */
    struct fence_link l = {0};
    struct fence_pos next = at(ROUTER, EPOCH, 6);
    fence_arrived(t, &l, "b@x", &next, 1);
    assert_int_equal(s.ready, 1);
    assert_int_equal(fence_waiting(t), 0);
    /* And later queries with it are answered at once; an invalid write counts too. */
    assert_int_equal(fence_wait(t, &w, "a@x", &fence, 1, on_ready, &s), 0);
    struct fence_pos invalid = at(ROUTER, EPOCH, 9), nine = at(ROUTER, EPOCH, 9);
    fence_seen(t, &invalid, 1);
    assert_int_equal(fence_wait(t, &w, "a@x", &nine, 1, on_ready, &s), 0);
    fence_done(t, &l);
    assert_int_equal(fence_owners(t), 0);
    fence_table_free(&t);
}

static void test_a_channel_base_counts_as_arrived(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    /* A shard that restarted learns from the first frame it sees (rc_base 40) that
     * everything below 40 was acknowledged, so is in the archive. */
    struct fence_link l = {0};
    struct fence_pos first = at(ROUTER, EPOCH, 45);
    fence_arrived(t, &l, "b@x", &first, 40);
    fence_done(t, &l);
    struct fence_wait w;
    struct seen s = {0};
    struct fence_pos acked = at(ROUTER, EPOCH, 39), later = at(ROUTER, EPOCH, 46);
    assert_int_equal(fence_wait(t, &w, "a@x", &acked, 1, on_ready, &s), 0);
    assert_int_equal(fence_wait(t, &w, "a@x", &later, 1, on_ready, &s), 1);
    /* A frame that only moves the base (re-sent, its seq 0 ignored) resolves it too. */
    struct fence_pos base_only = at(ROUTER, EPOCH, 0);
    fence_seen(t, &base_only, 47);
    assert_int_equal(s.ready, 1);
    fence_table_free(&t);
}

static void test_another_epoch_is_another_channel(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    struct fence_link l = {0};
    struct fence_pos old = at(ROUTER, EPOCH, 100);
    fence_arrived(t, &l, "b@x", &old, 1);
    fence_done(t, &l);
    /* The router restarted: its new channel is at seq 3, not 100. */
    struct fence_wait w;
    struct seen s = {0};
    struct fence_pos fresh = at(ROUTER, EPOCH + 5, 3), other_writer = at(C2S_B, EPOCH, 3);
    assert_int_equal(fence_wait(t, &w, "a@x", &fresh, 1, on_ready, &s), 1);
    fence_cancel(t, &w);
    fence_cancel(t, &w);   /* twice: nothing */
    assert_int_equal(fence_wait(t, &w, "a@x", &other_writer, 1, on_ready, &s), 1);
    fence_cancel(t, &w);
    assert_int_equal(fence_waiting(t), 0);
    assert_int_equal(fence_channels(t), 1);
    assert_int_equal(fence_owners(t), 0);
    assert_int_equal(s.ready + s.cancelled, 0);
    fence_table_free(&t);
}

static void test_many_channels_are_forgotten_not_confused(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    for (uint64_t i = 1; i <= FENCE_MAX_CHANS; i++) {
        struct fence_pos p = at(i, EPOCH, 10);
        fence_seen(t, &p, 0);
    }
    assert_int_equal(fence_channels(t), FENCE_MAX_CHANS);
    struct fence_wait w;
    struct seen s = {0};
    struct fence_pos known = at(17, EPOCH, 10);
    assert_int_equal(fence_wait(t, &w, "a@x", &known, 1, on_ready, &s), 0);
    /* One more: the table forgets them all (a query with such a fence waits; it is
     * never answered early). */
    struct fence_pos more = at(FENCE_MAX_CHANS + 1, EPOCH, 10);
    fence_seen(t, &more, 0);
    assert_int_equal(fence_channels(t), 1);
    assert_int_equal(fence_wait(t, &w, "a@x", &known, 1, on_ready, &s), 1);
    struct fence_pos again = at(17, EPOCH, 11);
    fence_seen(t, &again, 0);
    assert_int_equal(s.ready, 1);
    fence_table_free(&t);
}

static void test_free_cancels_waiting_queries(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    struct fence_link l = {0};
    fence_arrived(t, &l, "a@x", NULL, 0);
    struct fence_wait w1, w2;
    struct seen s1 = {0}, s2 = {0};
    struct fence_pos f = at(2, EPOCH, 5);
    assert_int_equal(fence_wait(t, &w1, "a@x", NULL, 0, on_ready, &s1), 1);
    assert_int_equal(fence_wait(t, &w2, "c@x", &f, 1, on_ready, &s2), 1);
    fence_table_free(&t);
    assert_int_equal(s1.cancelled, 1);
    assert_int_equal(s2.cancelled, 1);
    assert_int_equal(s1.ready + s2.ready, 0);
}

/* What archive_expedite walks: an owner's pending writes in arrival order, and whether
 * a query of that owner waits for them. */
static void test_pending_list_and_awaited(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    struct fence_link l1 = {0}, l2 = {0}, l3 = {0}, other = {0};
    assert_null(fence_pending(t, "a@x"));
    fence_arrived(t, &l1, "a@x", NULL, 0);
    fence_arrived(t, &other, "b@x", NULL, 0);
    fence_arrived(t, &l2, "a@x", NULL, 0);
    assert_ptr_equal(fence_pending(t, "a@x"), &l1);
    assert_ptr_equal(l1.next, &l2);
    assert_null(l2.next);
    assert_false(fence_awaited(&l1));
    struct fence_wait w;
    struct seen s = {0};
    assert_int_equal(fence_wait(t, &w, "a@x", NULL, 0, on_ready, &s), 1);
    assert_true(fence_awaited(&l1));
    assert_true(fence_awaited(&l2));
    assert_false(fence_awaited(&other));
    /* A write arriving while the query waits is awaited too (the archive makes it urgent). */
    fence_arrived(t, &l3, "a@x", NULL, 0);
    assert_true(fence_awaited(&l3));
    fence_done(t, &l1);
    assert_false(fence_awaited(&l1));
    assert_ptr_equal(fence_pending(t, "a@x"), &l2);
    fence_done(t, &l2);
    assert_int_equal(s.ready, 1);
    /* The query went: l3 is pending but nobody waits for it. */
    assert_false(fence_awaited(&l3));
    fence_done(t, &l3);
    fence_done(t, &other);
    assert_null(fence_pending(t, "a@x"));
    fence_table_free(&t);
}

static void test_many_owners(void **state)
{
    (void)state;
    /* Past the first table size, and back to nothing. */
    enum { N = 5000 };
    static struct fence_link links[N];
    memset(links, 0, sizeof links);
    struct fence_table *t = fence_table_new();
    char name[32];
    for (unsigned i = 0; i < N; i++) {
        snprintf(name, sizeof name, "u%u@x", i);
        fence_arrived(t, &links[i], name, NULL, 0);
    }
    assert_int_equal(fence_owners(t), N);
    struct fence_wait w;
    struct seen s = {0};
    assert_int_equal(fence_wait(t, &w, "u4321@x", NULL, 0, on_ready, &s), 1);
    for (unsigned i = 0; i < N; i++)
        fence_done(t, &links[i]);
    assert_int_equal(s.ready, 1);
    assert_int_equal(fence_owners(t), 0);
    fence_table_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_pending_answers_at_once),
        cmocka_unit_test(test_waits_for_writes_that_came_before),
        cmocka_unit_test(test_waits_for_a_fence_not_arrived),
        cmocka_unit_test(test_a_later_write_of_the_channel_resolves_a_fence),
        cmocka_unit_test(test_a_channel_base_counts_as_arrived),
        cmocka_unit_test(test_another_epoch_is_another_channel),
        cmocka_unit_test(test_many_channels_are_forgotten_not_confused),
        cmocka_unit_test(test_free_cancels_waiting_queries),
        cmocka_unit_test(test_pending_list_and_awaited),
        cmocka_unit_test(test_many_owners),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
