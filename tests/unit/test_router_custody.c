/* tests/unit/test_router_custody.c - the router's custody table: keep, done per target session, the cap, take on a c2s restart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../router/custody.h"
#include "util.h"

static Mk__Route route_of(const char *id)
{
    Mk__Route r = MK__ROUTE__INIT;
    r.kind = MK__STANZA_KIND__STANZA_KIND_MESSAGE;
    r.from = (char *)"alice@x/a";
    r.to = (char *)"bob@x";
    r.type = (char *)"chat";
    r.id = (char *)id;
    r.xml.data = (uint8_t *)"<message/>";
    r.xml.len = 10;
    r.carbon_eligible = true;
    r.hops = 1;
    return r;
}

struct taken {
    char ids[16][16];
    char to[16][16];
    char xml[16][40];
    uint64_t mam[16];
    bool carbons[16];
    size_t n;
};

static void take_fn(void *ud, const Mk__Route *r)
{
    struct taken *t = ud;
    snprintf(t->ids[t->n], sizeof t->ids[t->n], "%s", r->id);
    snprintf(t->to[t->n], sizeof t->to[t->n], "%s", r->to);
    snprintf(t->xml[t->n], sizeof t->xml[t->n], "%.*s", (int)r->xml.len, (const char *)r->xml.data);
    t->mam[t->n] = r->mam_id;
    t->carbons[t->n] = r->carbon_eligible;
    t->n++;
}

static void test_keep_done_take(void **state)
{
    (void)state;
    struct router_custody *c = router_custody_new(2, 100);
    Mk__Route r1 = route_of("m1"), r2 = route_of("m2"), r3 = route_of("m3");
    uint64_t a = router_custody_keep(c, "c2s.0", &r1, 77, 1);
    uint64_t b = router_custody_keep(c, "c2s.0", &r2, 0, 2);   /* two sessions of bob on c2s.0 */
    uint64_t d = router_custody_keep(c, "c2s.1", &r3, 0, 1);
    assert_true(a != 0 && b != 0 && d != 0 && a != b && b != d);
    assert_int_equal(a >> 48, 3);   /* router index 2, + 1 */
    assert_int_equal(router_custody_kept(c), 3);
    /* Another c2s cannot clear c2s.0's copy; an unknown id is ignored. */
    assert_int_equal(router_custody_done(c, "c2s.1", &a, 1), 0);
    uint64_t unknown = a + 1000;
    assert_int_equal(router_custody_done(c, "c2s.0", &unknown, 1), 0);
    /* b is forgotten once both of its sessions reported it. */
    assert_int_equal(router_custody_done(c, "c2s.0", &b, 1), 0);
    assert_int_equal(router_custody_kept(c), 3);
    assert_int_equal(router_custody_done(c, "c2s.0", &b, 1), 1);
    assert_int_equal(router_custody_kept(c), 2);
    assert_int_equal(router_custody_done(c, "c2s.0", &b, 1), 0);   /* a late repeat */
    struct taken t = {0};
    assert_int_equal(router_custody_take(c, "c2s.0", take_fn, &t), 1);
    assert_int_equal(t.n, 1);
    assert_string_equal(t.ids[0], "m1");
    assert_int_equal(t.mam[0], 77);       /* the recipient's archive id: stored once */
    assert_false(t.carbons[0]);           /* carbon copies were made the first time */
    assert_int_equal(router_custody_kept(c), 1);
    assert_int_equal(router_custody_take(c, "c2s.0", take_fn, &t), 0);
    assert_int_equal(router_custody_done(c, "c2s.0", &a, 1), 0);   /* taken: gone */
    assert_int_equal(router_custody_done(c, "c2s.1", &d, 1), 1);
    assert_int_equal(router_custody_kept(c), 0);
    assert_int_equal(router_custody_dropped(c), 0);
    router_custody_free(&c);
    assert_null(c);
}

static void test_cap_forgets_oldest(void **state)
{
    (void)state;
    struct router_custody *c = router_custody_new(0, 3);
    char names[5][8];
    Mk__Route r[5];
    uint64_t ids[5];
    for (int i = 0; i < 5; i++) {
        snprintf(names[i], sizeof names[i], "m%d", i);
        r[i] = route_of(names[i]);
        ids[i] = router_custody_keep(c, "c2s.0", &r[i], 0, 1);
    }
    assert_int_equal(router_custody_kept(c), 3);
    assert_int_equal(router_custody_dropped(c), 2);
    assert_int_equal(router_custody_done(c, "c2s.0", &ids[0], 1), 0);   /* forgotten already */
    struct taken t = {0};
    assert_int_equal(router_custody_take(c, "c2s.0", take_fn, &t), 3);
    assert_string_equal(t.ids[0], "m2");   /* oldest first */
    assert_string_equal(t.ids[2], "m4");
    router_custody_free(&c);
    /* Cap 0: nothing is kept. */
    c = router_custody_new(0, 0);
    assert_int_equal(router_custody_keep(c, "c2s.0", &r[0], 0, 1), 0);
    router_custody_free(&c);
}

static void test_many_grow(void **state)
{
    (void)state;
    struct router_custody *c = router_custody_new(0, 100000);
    Mk__Route r = route_of("m");
    enum { N = 5000 };
    uint64_t *ids = calloc(N, sizeof *ids);
    for (int i = 0; i < N; i++)
        ids[i] = router_custody_keep(c, i % 2 ? "c2s.1" : "c2s.0", &r, 0, 1);
    assert_int_equal(router_custody_kept(c), N);
    /* c2s.0 reports its half in one batch (ids of c2s.1 in it are ignored). */
    assert_int_equal(router_custody_done(c, "c2s.0", ids, N), N / 2);
    assert_int_equal(router_custody_kept(c), N / 2);
    assert_int_equal(router_custody_done(c, "c2s.1", ids, N), N / 2);
    assert_int_equal(router_custody_kept(c), 0);
    free(ids);
    router_custody_free(&c);
}

/* A fan-out Deliver's copy: done once per target session; taken back as each recipient's
 * each stanza made whole, recipient by recipient. */
static void test_fanout_copy(void **state)
{
    (void)state;
    struct router_custody *c = router_custody_new(0, 100);
    static const char x1[] = "<message to='' id='h1'/>";
    static const char x2[] = "<message to='' id='s'/>";
    Mk__Route t1 = route_of("h1"), t2 = route_of("s");
    t1.to = t2.to = (char *)"";
    t1.xml.data = (uint8_t *)x1;
    t1.xml.len = sizeof x1 - 1;
    t1.to_at = 13;
    t2.xml.data = (uint8_t *)x2;
    t2.xml.len = sizeof x2 - 1;
    t2.to_at = 13;
    Mk__Route *stanzas[2] = {&t1, &t2};
    char *tos[3] = {(char *)"a@x/1", (char *)"b@x/2", (char *)"c@x/3"};
    uint64_t id = router_custody_keep_fanout(c, "c2s.0", stanzas, 2, tos, 3);
    assert_true(id != 0);
    assert_int_equal(router_custody_kept(c), 1);
    assert_int_equal(router_custody_done(c, "c2s.0", &id, 1), 0);
    assert_int_equal(router_custody_done(c, "c2s.0", &id, 1), 0);
    assert_int_equal(router_custody_done(c, "c2s.0", &id, 1), 1);   /* the third session */
    assert_int_equal(router_custody_kept(c), 0);
    id = router_custody_keep_fanout(c, "c2s.0", stanzas, 2, tos, 2);
    struct taken t = {0};
    assert_int_equal(router_custody_take(c, "c2s.0", take_fn, &t), 1);
    assert_int_equal(t.n, 4);
    assert_string_equal(t.ids[0], "h1");
    assert_string_equal(t.ids[1], "s");
    assert_string_equal(t.ids[2], "h1");
    assert_string_equal(t.ids[3], "s");
    assert_string_equal(t.to[0], "a@x/1");
    assert_string_equal(t.to[3], "b@x/2");
    assert_string_equal(t.xml[0], "<message to='a@x/1' id='h1'/>");
    assert_string_equal(t.xml[3], "<message to='b@x/2' id='s'/>");
    assert_int_equal(router_custody_kept(c), 0);
    assert_int_equal(router_custody_keep_fanout(c, "c2s.0", stanzas, 2, tos, 0), 0);   /* no session */
    /* A fan-out copy in a queue that moved to another c2s stays with c2s.0, done there for
     * the session that moved (routed again, it would go to every recipient). */
    id = router_custody_keep_fanout(c, "c2s.0", stanzas, 2, tos, 2);
    assert_int_equal(router_custody_move(c, "c2s.0", "c2s.1", &id, 1), 0);
    assert_int_equal(router_custody_kept(c), 1);
    assert_int_equal(router_custody_done(c, "c2s.1", &id, 1), 0);
    assert_int_equal(router_custody_done(c, "c2s.0", &id, 1), 1);
    assert_int_equal(router_custody_kept(c), 0);
    router_custody_free(&c);
}

/* A session resumed on another c2s: the copies its queue holds are charged to that c2s. */
static void test_move_to_the_c2s_that_took_the_session(void **state)
{
    (void)state;
    struct router_custody *c = router_custody_new(0, 100);
    Mk__Route r1 = route_of("m1"), r2 = route_of("m2"), r3 = route_of("m3");
    uint64_t a = router_custody_keep(c, "c2s.0", &r1, 0, 1);
    uint64_t b = router_custody_keep(c, "c2s.0", &r2, 0, 2);   /* also for a session staying on c2s.0 */
    uint64_t d = router_custody_keep(c, "c2s.2", &r3, 0, 1);
    uint64_t ids[] = {a, b, a + 1000};
    /* The unknown id is ignored; moved once, the copies stay put on a repeat. */
    assert_int_equal(router_custody_move(c, "c2s.0", "c2s.1", ids, 3), 2);
    assert_int_equal(router_custody_move(c, "c2s.0", "c2s.1", ids, 3), 0);
    assert_int_equal(router_custody_move(c, "c2s.0", "c2s.3", ids, 3), 0);   /* moved: only from c2s.1 */
    assert_int_equal(router_custody_kept(c), 3);
    /* d's session went c2s.2 -> c2s.0 -> c2s.3, and c2s.3's report came first: c2s.3 holds
     * it, and c2s.0's late report (from c2s.2) changes nothing. */
    assert_int_equal(router_custody_move(c, "c2s.0", "c2s.3", &d, 1), 1);
    assert_int_equal(router_custody_move(c, "c2s.2", "c2s.0", &d, 1), 0);
    assert_int_equal(router_custody_done(c, "c2s.0", &d, 1), 0);
    assert_int_equal(router_custody_done(c, "c2s.3", &d, 1), 1);
    /* c2s.0 has no say on them any more; c2s.1 reports each once (one session there). */
    assert_int_equal(router_custody_done(c, "c2s.0", ids, 2), 0);
    assert_int_equal(router_custody_done(c, "c2s.1", &a, 1), 1);
    /* c2s.1 dies before reporting b: b is routed again on its restart, not on c2s.0's. */
    struct taken t = {0};
    assert_int_equal(router_custody_take(c, "c2s.0", take_fn, &t), 0);
    assert_int_equal(router_custody_take(c, "c2s.1", take_fn, &t), 1);
    assert_string_equal(t.ids[0], "m2");
    assert_int_equal(router_custody_kept(c), 0);
    router_custody_free(&c);
}

/* A c2s not heard for the timeout, with copies kept, is given up once; heard again, it is back. */
static void test_silent_c2s_given_up(void **state)
{
    (void)state;
    int64_t t0 = mk_now_us(), s = 1000000;
    struct router_custody *c = router_custody_new(0, 100);
    assert_null(router_custody_silent(c, t0 + 100 * s, 10 * s));   /* nobody has copies */
    Mk__Route r1 = route_of("m1"), r2 = route_of("m2");
    router_custody_keep(c, "c2s.0", &r1, 0, 1);
    router_custody_keep(c, "c2s.1", &r2, 0, 1);
    assert_null(router_custody_silent(c, t0, 10 * s));
    assert_null(router_custody_silent(c, t0 + 100 * s, 0));        /* 0: never */
    /* c2s.1 keeps saying it is alive; c2s.0 says nothing. */
    assert_false(router_custody_heard(c, "c2s.1", t0 + 8 * s));
    assert_false(router_custody_heard(c, "c2s.9", t0 + 8 * s));      /* no copies: nothing tracked */
    const char *gone = router_custody_silent(c, t0 + 12 * s, 10 * s);
    assert_non_null(gone);
    assert_string_equal(gone, "c2s.0");
    struct taken t = {0};
    assert_int_equal(router_custody_take(c, gone, take_fn, &t), 1);
    assert_string_equal(t.ids[0], "m1");
    /* Nothing left for c2s.0; c2s.1 was heard 4 s ago. */
    assert_null(router_custody_silent(c, t0 + 12 * s, 10 * s));
    /* c2s.0 speaks again: it is back (told to register its sessions), once. */
    assert_true(router_custody_heard(c, "c2s.0", t0 + 13 * s));
    assert_false(router_custody_heard(c, "c2s.0", t0 + 14 * s));
    /* c2s.1 silent since t0 + 8 s. */
    gone = router_custody_silent(c, t0 + 18 * s, 10 * s);
    assert_non_null(gone);
    assert_string_equal(gone, "c2s.1");
    router_custody_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keep_done_take),
        cmocka_unit_test(test_cap_forgets_oldest),
        cmocka_unit_test(test_many_grow),
        cmocka_unit_test(test_fanout_copy),
        cmocka_unit_test(test_move_to_the_c2s_that_took_the_session),
        cmocka_unit_test(test_silent_c2s_given_up),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
