/* tests/unit/test_mam_fence.c - read-your-writes for MAM queries: when a query of an owner may be answered. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "../../mam/fence.h"
#include "mamid.h"

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

/* An id of generator gen at microsecond us. */
static uint64_t id_of(unsigned gen, uint64_t us)
{
    return (us << MAMID_GEN_BITS) | gen;
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
    fence_arrived(t, &l, "b@x", id_of(1, 10));
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
    fence_arrived(t, &l1, "a@x", id_of(1, 10));
    fence_arrived(t, &l2, "a@x", id_of(130, 11));
    struct fence_wait w;
    struct seen s = {0};
    assert_int_equal(fence_wait(t, &w, "a@x", NULL, 0, on_ready, &s), 1);
    assert_int_equal(fence_waiting(t), 1);
    /* A write that comes after the query does not hold it. */
    fence_arrived(t, &l3, "a@x", id_of(1, 12));
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

static void test_waits_for_a_fence_not_arrived(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    struct fence_link seen_before = {0};
    uint64_t router_id = id_of(128, 100), c2s_id = id_of(3, 90);
    /* The c2s's write (generator 3) came and was committed before the query; the
     * router's (128) has not come yet. */
    fence_arrived(t, &seen_before, "a@x", c2s_id);
    fence_done(t, &seen_before);
    struct fence_wait w;
    struct seen s = {0};
    uint64_t fences[] = {c2s_id, router_id, 0};
    assert_int_equal(fence_wait(t, &w, "a@x", fences, 3, on_ready, &s), 1);
    assert_int_equal(w.nids, 1);
    /* Another owner's write, and an earlier id of the same generator: not it. */
    struct fence_link other = {0}, earlier = {0}, it = {0};
    fence_arrived(t, &other, "b@x", router_id + (1u << MAMID_GEN_BITS));
    fence_done(t, &other);
    fence_arrived(t, &earlier, "a@x", router_id - (1u << MAMID_GEN_BITS));
    fence_done(t, &earlier);
    assert_int_equal(s.ready, 0);
    /* It arrives: the query now waits for its commit. */
    fence_arrived(t, &it, "a@x", router_id);
    assert_int_equal(s.ready, 0);
    fence_done(t, &it);
    assert_int_equal(s.ready, 1);
    assert_int_equal(fence_owners(t), 0);
    fence_table_free(&t);
}

static void test_arrived_fences_are_known_by_generator(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    struct fence_link l = {0};
    /* A later id of generator 7 arrived (any owner, even an invalid write): every
     * earlier id of 7 has arrived too, so it holds nothing. */
    fence_seen(t, id_of(7, 50));
    fence_arrived(t, &l, "b@x", id_of(9, 60));
    struct fence_wait w;
    struct seen s = {0};
    uint64_t fences[] = {id_of(7, 40), id_of(7, 50), id_of(9, 60)};
    assert_int_equal(fence_wait(t, &w, "a@x", fences, 3, on_ready, &s), 0);
    uint64_t later[] = {id_of(7, 51)};
    assert_int_equal(fence_wait(t, &w, "a@x", later, 1, on_ready, &s), 1);
    fence_cancel(t, &w);
    fence_cancel(t, &w);   /* twice: nothing */
    assert_int_equal(fence_waiting(t), 0);
    fence_done(t, &l);
    assert_int_equal(fence_owners(t), 0);
    assert_int_equal(s.ready + s.cancelled, 0);
    fence_table_free(&t);
}

static void test_free_cancels_waiting_queries(void **state)
{
    (void)state;
    struct fence_table *t = fence_table_new();
    struct fence_link l = {0};
    fence_arrived(t, &l, "a@x", id_of(1, 10));
    struct fence_wait w1, w2;
    struct seen s1 = {0}, s2 = {0};
    uint64_t f[] = {id_of(2, 5)};
    assert_int_equal(fence_wait(t, &w1, "a@x", NULL, 0, on_ready, &s1), 1);
    assert_int_equal(fence_wait(t, &w2, "c@x", f, 1, on_ready, &s2), 1);
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
    fence_arrived(t, &l1, "a@x", id_of(1, 10));
    fence_arrived(t, &other, "b@x", id_of(1, 11));
    fence_arrived(t, &l2, "a@x", id_of(1, 12));
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
    fence_arrived(t, &l3, "a@x", id_of(1, 13));
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
        fence_arrived(t, &links[i], name, id_of(1, 1000 + i));
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
        cmocka_unit_test(test_arrived_fences_are_known_by_generator),
        cmocka_unit_test(test_free_cancels_waiting_queries),
        cmocka_unit_test(test_pending_list_and_awaited),
        cmocka_unit_test(test_many_owners),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
