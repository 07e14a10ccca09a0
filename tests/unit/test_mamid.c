/* tests/unit/test_mamid.c - MAM ids: monotonicity, generator bits, text form, and a uint32-halves cross-check for 32-bit targets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mamid.h"

static void test_generators(void **state)
{
    (void)state;
    assert_int_equal(mamid_generator(CFG_ROLE_C2S, 0), 0);
    assert_int_equal(mamid_generator(CFG_ROLE_C2S, 127), 127);
    assert_int_equal(mamid_generator(CFG_ROLE_C2S, 128), -1);
    assert_int_equal(mamid_generator(CFG_ROLE_ROUTER, 0), 128);
    assert_int_equal(mamid_generator(CFG_ROLE_ROUTER, 63), 191);
    assert_int_equal(mamid_generator(CFG_ROLE_ROUTER, 64), -1);
    assert_int_equal(mamid_generator(CFG_ROLE_MAM, 0), 192);
    assert_int_equal(mamid_generator(CFG_ROLE_MAM, 47), 239);
    assert_int_equal(mamid_generator(CFG_ROLE_MAM, 48), -1);
    assert_int_equal(mamid_generator(CFG_ROLE_GD, 15), 255);
    assert_int_equal(mamid_generator(CFG_ROLE_PUSHER, 16), -1);
}

static void test_layout(void **state)
{
    (void)state;
    struct mamid_gen g;
    mamid_gen_init(&g, 0x1a5);   /* masked to 0xa5 */
    uint64_t id = mamid_next_at(&g, 1700000000123456LL);
    assert_true(id == ((UINT64_C(1700000000123456) << 8) | 0xa5u));
    assert_true(mamid_us(id) == UINT64_C(1700000000123456));
    assert_int_equal(mamid_gen_of(id), 0xa5);
    assert_true(mamid_min_at(5) == (UINT64_C(5) << 8));
    assert_true(mamid_max_at(5) == ((UINT64_C(5) << 8) | 0xffu));
}

/* The clock standing still, stepping back, or jumping: strictly increasing, our generator bits kept. */
static void test_monotonic(void **state)
{
    (void)state;
    struct mamid_gen g;
    mamid_gen_init(&g, 7);
    int64_t clock[] = {1000, 1000, 1000, 999, 500, 1001, 1001, 5000, 4999, 0, -3, 5001};
    uint64_t prev = 0;
    for (size_t i = 0; i < sizeof clock / sizeof clock[0]; i++) {
        uint64_t id = mamid_next_at(&g, clock[i]);
        assert_true(id > prev);
        assert_int_equal(mamid_gen_of(id), 7);
        prev = id;
    }
    /* 1000,1001,1002,1003,1004,1005(>1001),1006,5000,5001,5002,5003,5004 */
    assert_true(mamid_us(prev) == 5004);
    /* A million ids in one microsecond stay unique. */
    mamid_gen_init(&g, 255);
    prev = 0;
    for (int i = 0; i < 1000000; i++) {
        uint64_t id = mamid_next_at(&g, 42);
        assert_true(id > prev);
        prev = id;
    }
    assert_int_equal(mamid_gen_of(prev), 255);
    /* The wall clock. */
    uint64_t a = mamid_next(&g), b = mamid_next(&g);
    assert_true(b > a);
}

static void test_text(void **state)
{
    (void)state;
    char t[MAMID_TEXT_LEN + 1];
    assert_string_equal(mamid_format(0, t), "0000000000000");
    assert_string_equal(mamid_format(UINT64_MAX, t), "fvvvvvvvvvvvv");
    assert_string_equal(mamid_format(31, t), "000000000000v");
    assert_string_equal(mamid_format(32, t), "0000000000010");
    uint64_t v;
    assert_int_equal(mamid_parse("fvvvvvvvvvvvv", 13, &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(mamid_parse("0000000000010", 13, &v), 0);
    assert_true(v == 32);
    /* Garbage. */
    assert_int_equal(mamid_parse(NULL, 13, &v), -1);
    assert_int_equal(mamid_parse("", 0, &v), -1);
    assert_int_equal(mamid_parse("000000000001", 12, &v), -1);
    assert_int_equal(mamid_parse("00000000000010", 14, &v), -1);
    assert_int_equal(mamid_parse("g000000000000", 13, &v), -1);   /* overflow */
    assert_int_equal(mamid_parse("000000000000w", 13, &v), -1);
    assert_int_equal(mamid_parse("000000000000V", 13, &v), -1);   /* upper case */
    assert_int_equal(mamid_parse("00000000000-1", 13, &v), -1);
    assert_int_equal(mamid_parse("000000\0000001", 13, &v), -1);
    assert_int_equal(mamid_parse("0000000000001x", 13, &v), 0);   /* n bounds the read */
    assert_true(v == 1);
}

/* Text order equals numeric order; round trips. */
static void test_text_order(void **state)
{
    (void)state;
    uint64_t x = UINT64_C(0x9e3779b97f4a7c15);
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        uint64_t a = x, b = x >> (i % 64);
        char ta[MAMID_TEXT_LEN + 1], tb[MAMID_TEXT_LEN + 1];
        mamid_format(a, ta);
        mamid_format(b, tb);
        int c = strcmp(ta, tb);
        assert_true((a < b && c < 0) || (a > b && c > 0) || (a == b && c == 0));
        uint64_t back;
        assert_int_equal(mamid_parse(ta, strlen(ta), &back), 0);
        assert_true(back == a);
    }
}

/* --- the same arithmetic on uint32 halves, as a 32-bit target without native 64-bit
 * shifts would compute it (the toolchain here has no -m32 multilib, so the
 * 64-bit code is checked against this independent reference instead). */
struct u64h {
    uint32_t hi;
    uint32_t lo;
};

static struct u64h h_make(uint64_t v) { struct u64h r = {(uint32_t)(v >> 32), (uint32_t)v}; return r; }
static uint64_t h_join(struct u64h v) { return ((uint64_t)v.hi << 32) | v.lo; }

static struct u64h h_shl(struct u64h v, unsigned n)   /* 0 < n < 32 */
{
    struct u64h r = {(v.hi << n) | (v.lo >> (32 - n)), v.lo << n};
    return r;
}

static struct u64h h_shr(struct u64h v, unsigned n)   /* 0 < n < 32 */
{
    struct u64h r = {v.hi >> n, (v.lo >> n) | (v.hi << (32 - n))};
    return r;
}

static struct u64h h_inc(struct u64h v)
{
    struct u64h r = {v.hi + (v.lo == UINT32_MAX ? 1u : 0u), v.lo + 1u};
    return r;
}

static int h_cmp(struct u64h a, struct u64h b)
{
    if (a.hi != b.hi)
        return a.hi < b.hi ? -1 : 1;
    if (a.lo != b.lo)
        return a.lo < b.lo ? -1 : 1;
    return 0;
}

/* The reference generator on halves. */
static struct u64h h_next(struct u64h *last, unsigned gen, struct u64h now)
{
    struct u64h last_us = h_shr(*last, 8);
    struct u64h us = now;
    if ((last->hi | last->lo) != 0 && h_cmp(us, last_us) <= 0)
        us = h_inc(last_us);
    struct u64h id = h_shl(us, 8);
    id.lo |= gen & 0xffu;
    *last = id;
    return id;
}

static void h_format(struct u64h v, char *out)
{
    static const char d[] = "0123456789abcdefghijklmnopqrstuv";
    for (int i = 12; i >= 0; i--) {
        out[i] = d[v.lo & 31u];
        v = h_shr(v, 5);
    }
    out[13] = '\0';
}

static void test_halves(void **state)
{
    (void)state;
    /* Clocks around the 32-bit boundaries of both the microseconds and the shifted id. */
    int64_t clocks[] = {
        1, 255, 256, 0xffffff, 0x1000000, 0xffffffffLL, 0x100000000LL, 0x100ffffffLL,
        0xffffffffffffffLL - 1, 1700000000000000LL, 1700000000000000LL, 1699999999999999LL,
        0x7fffffffffLL, 0x8000000000LL, 0xffffffffffLL,
    };
    struct mamid_gen g;
    mamid_gen_init(&g, 0xc3);
    struct u64h hlast = {0, 0};
    for (size_t i = 0; i < sizeof clocks / sizeof clocks[0]; i++) {
        uint64_t id = mamid_next_at(&g, clocks[i]);
        struct u64h hid = h_next(&hlast, 0xc3, h_make((uint64_t)clocks[i]));
        assert_true(h_join(hid) == id);
        char t64[MAMID_TEXT_LEN + 1], t32[14];
        mamid_format(id, t64);
        h_format(hid, t32);
        assert_string_equal(t64, t32);
        uint64_t back;
        assert_int_equal(mamid_parse(t64, MAMID_TEXT_LEN, &back), 0);
        assert_true(back == id);
    }
    /* A stretch crossing the low word's carry: lo = 0xffffff00 | gen, then the next microsecond. */
    mamid_gen_init(&g, 1);
    hlast.hi = hlast.lo = 0;
    for (int i = 0; i < 1000; i++) {
        int64_t now = 0xfffffeLL + (i % 3 == 0 ? 0 : 1);   /* the clock stutters */
        uint64_t id = mamid_next_at(&g, now);
        struct u64h hid = h_next(&hlast, 1, h_make((uint64_t)now));
        assert_true(h_join(hid) == id);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generators),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_monotonic),
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_text_order),
        cmocka_unit_test(test_halves),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
