/* tests/unit/test_authlimit.c - the login limits' table: waits, per-pair isolation, decay, collisions, registrations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../c2s/authlimit.h"
#include "util.h"

#define S 1000000LL

static const struct authlimit_params params = {
    .fail_per_ip = 10, .fail_per_account = 5, .halflife_sec = 300,
    .register_per_ip = 1, .register_interval_sec = 600,
};

static void test_addresses(void **state)
{
    unsigned char a[16], b[16];
    assert_int_equal(authlimit_address("127.0.0.3", a), 4);
    assert_int_equal(authlimit_address("::ffff:127.0.0.3", b), 4);
    assert_memory_equal(a, b, 4);
    /* One /64 is one address. */
    assert_int_equal(authlimit_address("2001:db8:1:2:aaaa::1", a), 16);
    assert_int_equal(authlimit_address("2001:db8:1:2:bbbb::9", b), 16);
    assert_memory_equal(a, b, 16);
    assert_int_equal(authlimit_address("2001:db8:1:3::1", b), 16);
    assert_memory_not_equal(a, b, 16);
    assert_int_equal(authlimit_address("not an address", a), 0);
    assert_int_equal(authlimit_address(NULL, a), 0);
}

/* The first lock-out: alice's failures from one address do not hold her
 * logins from another; from the failing address attempts wait longer and longer. */
static void test_pair_waits_only_where_it_failed(void **state)
{
    struct authlimit *a = authlimit_new(&params);
    int64_t now = mk_mono_us();
    bool counted = true;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(authlimit_gate(a, "127.0.0.3", "alice@localhost", now, &counted), i < 5 ? 0 : S);
        assert_int_equal(counted, i >= 5);
        if (i < 5)
            authlimit_failed(a, "127.0.0.3", "alice@localhost", now);
    }
    /* The 6th attempt counted itself: the next waits twice as long, and so on up to 30 s. */
    assert_int_equal(authlimit_gate(a, "127.0.0.3", "alice@localhost", now, NULL), 2 * S);
    assert_int_equal(authlimit_gate(a, "127.0.0.3", "alice@localhost", now, NULL), 4 * S);
    for (int i = 0; i < 10; i++)
        authlimit_gate(a, "127.0.0.3", "alice@localhost", now, NULL);
    assert_int_equal(authlimit_gate(a, "127.0.0.3", "alice@localhost", now, NULL), AUTHLIMIT_PAIR_WAIT_MAX_US);
    /* Elsewhere, and for another account from there, nothing waits... */
    assert_int_equal(authlimit_gate(a, "127.0.0.2", "alice@localhost", now, &counted), 0);
    assert_false(counted);
    /* ... except that 127.0.0.3 as a whole is now over its own limit (10): a short wait. */
    assert_true(authlimit_addr_count(a, "127.0.0.3", now) >= 10);
    int64_t w = authlimit_gate(a, "127.0.0.3", "bob@localhost", now, &counted);
    assert_true(w > 0 && w <= AUTHLIMIT_ADDR_WAIT_MAX_US);
    assert_false(counted);   /* bob's own count is untouched */
    assert_true(authlimit_pair_count(a, "127.0.0.3", "bob@localhost", now) < 1.0);
    authlimit_free(&a);
    assert_null(a);
    authlimit_free(&a);
}

/* The second lock-out: one address (a NAT) with many failures over many accounts makes
 * its other users wait a little, never more than the address cap. */
static void test_address_wait_is_short(void **state)
{
    struct authlimit *a = authlimit_new(&params);
    int64_t now = mk_mono_us();
    char acct[64];
    for (int i = 0; i < 1000; i++) {
        snprintf(acct, sizeof acct, "u%d@localhost", i);
        authlimit_failed(a, "10.0.0.1", acct, now);
    }
    int64_t w = authlimit_gate(a, "10.0.0.1", "carol@localhost", now, NULL);
    assert_int_equal(w, AUTHLIMIT_ADDR_WAIT_MAX_US);
    assert_int_equal(authlimit_gate(a, "10.0.0.2", "carol@localhost", now, NULL), 0);
    /* Below the limit: nothing. */
    for (int i = 0; i < 9; i++)
        authlimit_failed(a, "10.0.0.3", "x@localhost", now);
    assert_int_equal(authlimit_gate(a, "10.0.0.3", "y@localhost", now, NULL), 0);
    authlimit_failed(a, "10.0.0.3", "z@localhost", now);
    assert_int_equal(authlimit_gate(a, "10.0.0.3", "y@localhost", now, NULL), S);
    authlimit_free(&a);
}

static void test_decay(void **state)
{
    struct authlimit *a = authlimit_new(&params);
    int64_t now = mk_mono_us();
    for (int i = 0; i < 8; i++)
        authlimit_failed(a, "192.0.2.1", "dave@localhost", now);
    double c0 = authlimit_pair_count(a, "192.0.2.1", "dave@localhost", now);
    assert_true(c0 >= 8.0 && c0 < 8.01);
    double c1 = authlimit_pair_count(a, "192.0.2.1", "dave@localhost", now + 300 * S);
    assert_true(c1 > 3.99 && c1 < 4.01);
    assert_int_equal(authlimit_gate(a, "192.0.2.1", "dave@localhost", now + 300 * S, NULL), 0);
    /* Failures spread over some seconds still count as what they are. */
    for (int i = 0; i < 5; i++)
        authlimit_failed(a, "192.0.2.2", "erin@localhost", now + i * 3 * S);
    assert_true(authlimit_pair_count(a, "192.0.2.2", "erin@localhost", now + 12 * S) < 5.0);
    assert_int_equal(authlimit_gate(a, "192.0.2.2", "erin@localhost", now + 12 * S, NULL), S);
    assert_true(authlimit_addr_count(a, "192.0.2.1", now + 600 * S) < 2.01);
    authlimit_free(&a);
}

/* Every key reads at least its own count however many others share its cells, and a
 * key's count never drops when others are added (the old table overwrote a slot
 * whose hash differed: a chosen name cleared another's counter). With 200,000 keys
 * over 4096 cells per row, collisions happen in every row. */
static void test_collisions_only_raise(void **state)
{
    struct authlimit *a = authlimit_new(&params);
    int64_t now = mk_mono_us();
    for (int i = 0; i < 7; i++)
        authlimit_failed(a, "198.51.100.7", "victim@localhost", now);
    double before = authlimit_pair_count(a, "198.51.100.7", "victim@localhost", now);
    char acct[64];
    enum { N = 200000 };
    for (int i = 0; i < N; i++) {
        snprintf(acct, sizeof acct, "k%d@localhost", i);
        authlimit_failed(a, "198.51.100.8", acct, now);
    }
    assert_true(authlimit_pair_count(a, "198.51.100.7", "victim@localhost", now) >= before);
    size_t over = 0;
    for (int i = 0; i < N; i++) {
        snprintf(acct, sizeof acct, "k%d@localhost", i);
        double c = authlimit_pair_count(a, "198.51.100.8", acct, now);
        assert_true(c >= 1.0);
        if (c > 1.5)
            over++;
    }
    assert_true(over > 0);   /* the sketch did collide, and only upwards */
    authlimit_free(&a);
}

/* Two tables (two processes) hash with different keys: their cells differ. */
static void test_keys_differ(void **state)
{
    struct authlimit *a = authlimit_new(&params), *b = authlimit_new(&params);
    int64_t now = mk_mono_us();
    char acct[64];
    for (int i = 0; i < 20000; i++) {
        snprintf(acct, sizeof acct, "k%d@localhost", i);
        authlimit_failed(a, "203.0.113.1", acct, now);
        authlimit_failed(b, "203.0.113.1", acct, now);
    }
    size_t differ = 0;
    for (int i = 0; i < 2000; i++) {
        snprintf(acct, sizeof acct, "k%d@localhost", i);
        if (authlimit_pair_count(a, "203.0.113.1", acct, now) != authlimit_pair_count(b, "203.0.113.1", acct, now))
            differ++;
    }
    assert_true(differ > 0);
    authlimit_free(&a);
    authlimit_free(&b);
}

static void test_registrations(void **state)
{
    struct authlimit *a = authlimit_new(&params);
    int64_t now = mk_mono_us();
    /* One per 600 s: a second request while the first runs is refused too. */
    assert_true(authlimit_register_begin(a, "127.0.0.8", now));
    assert_false(authlimit_register_begin(a, "127.0.0.8", now));
    authlimit_register_end(a, "127.0.0.8", true, now);
    assert_false(authlimit_register_begin(a, "127.0.0.8", now + 599 * S));
    assert_true(authlimit_register_begin(a, "127.0.0.9", now));
    authlimit_register_end(a, "127.0.0.9", false, now);      /* no account made: allowance kept */
    assert_true(authlimit_register_begin(a, "127.0.0.9", now));
    authlimit_register_end(a, "127.0.0.9", true, now);
    assert_true(authlimit_register_begin(a, "127.0.0.8", now + 600 * S));
    authlimit_register_end(a, "127.0.0.8", false, now + 600 * S);
    /* Made elsewhere (another c2s) counts here. */
    authlimit_registered(a, "127.0.0.10", now);
    assert_false(authlimit_register_begin(a, "127.0.0.10", now));
    authlimit_free(&a);

    /* 3 per 60 s: three at once, then one every 20 s. */
    struct authlimit_params p3 = params;
    p3.register_per_ip = 3;
    p3.register_interval_sec = 60;
    a = authlimit_new(&p3);
    for (int i = 0; i < 3; i++)
        assert_true(authlimit_register_begin(a, "127.0.0.11", now));
    assert_false(authlimit_register_begin(a, "127.0.0.11", now));
    for (int i = 0; i < 3; i++)
        authlimit_register_end(a, "127.0.0.11", true, now);
    assert_false(authlimit_register_begin(a, "127.0.0.11", now + 19 * S));
    assert_true(authlimit_register_begin(a, "127.0.0.11", now + 20 * S));
    authlimit_free(&a);

    /* 0 = unlimited. */
    struct authlimit_params p0 = params;
    p0.register_per_ip = 0;
    a = authlimit_new(&p0);
    for (int i = 0; i < 100; i++) {
        assert_true(authlimit_register_begin(a, "127.0.0.1", now));
        authlimit_register_end(a, "127.0.0.1", true, now);
    }
    authlimit_free(&a);
}

/* Unauthenticated connections per address: a cap, freed as connections authenticate or
 * close; an IPv6 /64 is one address; other addresses are not affected; 0 = no cap. */
static void test_preauth_connections(void **state)
{
    (void)state;
    struct authlimit_params p = params;
    p.preauth_per_ip = 3;
    struct authlimit *a = authlimit_new(&p);
    for (int i = 0; i < 3; i++)
        assert_true(authlimit_preauth_begin(a, "192.0.2.7"));
    assert_false(authlimit_preauth_begin(a, "192.0.2.7"));
    assert_false(authlimit_preauth_begin(a, "::ffff:192.0.2.7"));   /* the same address, mapped */
    assert_true(authlimit_preauth_begin(a, "192.0.2.8"));
    authlimit_preauth_end(a, "192.0.2.7");
    assert_true(authlimit_preauth_begin(a, "192.0.2.7"));
    assert_false(authlimit_preauth_begin(a, "192.0.2.7"));
    for (int i = 0; i < 3; i++)
        assert_true(authlimit_preauth_begin(a, i == 0 ? "2001:db8:1:2::1" : i == 1 ? "2001:db8:1:2::ff" : "2001:db8:1:2:a::9"));
    assert_false(authlimit_preauth_begin(a, "2001:db8:1:2:ffff::1"));
    assert_true(authlimit_preauth_begin(a, "2001:db8:1:3::1"));       /* another /64 */
    /* Many other addresses with open connections do not close this one's door. */
    char ip[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(ip, sizeof ip, "10.%d.%d.1", i / 256, i % 256);
        assert_true(authlimit_preauth_begin(a, ip));
    }
    assert_true(authlimit_preauth_begin(a, "198.51.100.1"));
    authlimit_free(&a);

    p.preauth_per_ip = 0;
    a = authlimit_new(&p);
    for (int i = 0; i < 1000; i++)
        assert_true(authlimit_preauth_begin(a, "192.0.2.7"));
    authlimit_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_pair_waits_only_where_it_failed),
        cmocka_unit_test(test_address_wait_is_short),
        cmocka_unit_test(test_decay),
        cmocka_unit_test(test_collisions_only_raise),
        cmocka_unit_test(test_keys_differ),
        cmocka_unit_test(test_registrations),
        cmocka_unit_test(test_preauth_connections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
