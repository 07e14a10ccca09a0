/* tests/unit/test_router_muc.c - the pure helpers of router/muc.c: which history a joiner's <history/> asks for, XEP-0082 stamps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "../../router/muc.h"
#include "xml.h"

/* The <x xmlns=muc/> of a join with the given <history/> attributes ("" for none). */
static struct xml_node *join_x(const char *history_attrs)
{
    char doc[512];
    if (history_attrs == NULL)
        snprintf(doc, sizeof doc, "<x xmlns='" NS_MUC "'/>");
    else
        snprintf(doc, sizeof doc, "<x xmlns='" NS_MUC "'><history %s/></x>", history_attrs);
    char err[128];
    struct xml_node *x = xml_parse_document(doc, strlen(doc), err, sizeof err);
    assert_non_null(x);
    return x;
}

static size_t count(const char *attrs, const int64_t *stamps, size_t kept, int64_t now)
{
    struct xml_node *x = join_x(attrs);
    size_t n = muc_history_count(x, stamps, kept, now);
    xml_free(&x);
    return n;
}

static void test_history_count(void **state)
{
    (void)state;
    const int64_t s = 1000000;   /* one second in µs */
    const int64_t stamps[5] = {100 * s, 200 * s, 300 * s, 400 * s, 500 * s};
    const int64_t now = 500 * s;
    assert_int_equal(muc_history_count(NULL, stamps, 5, now), 5);        /* no <x/>: all kept */
    assert_int_equal(count(NULL, stamps, 5, now), 5);                    /* no <history/> */
    assert_int_equal(count("", stamps, 5, now), 5);
    assert_int_equal(count("maxstanzas='2'", stamps, 5, now), 2);
    assert_int_equal(count("maxstanzas='0'", stamps, 5, now), 0);
    assert_int_equal(count("maxstanzas='99'", stamps, 5, now), 5);
    assert_int_equal(count("maxchars='0'", stamps, 5, now), 0);          /* XEP-0045 7.2.14: none */
    assert_int_equal(count("maxchars='500'", stamps, 5, now), 5);        /* not counted in characters */
    assert_int_equal(count("seconds='150'", stamps, 5, now), 2);         /* 400 and 500 are 150 s old or less */
    assert_int_equal(count("seconds='0'", stamps, 5, now), 1);           /* only what is this instant's */
    assert_int_equal(count("seconds='99999999999'", stamps, 5, now), 5); /* before the epoch: all */
    assert_int_equal(count("seconds='150' maxstanzas='1'", stamps, 5, now), 1);
    /* unparsable values are ignored */
    assert_int_equal(count("maxstanzas='-1'", stamps, 5, now), 5);
    assert_int_equal(count("maxstanzas='2x'", stamps, 5, now), 5);
    assert_int_equal(count("maxstanzas=''", stamps, 5, now), 5);
    assert_int_equal(count("maxstanzas='99999999999999999999999'", stamps, 5, now), 5);
    assert_int_equal(count("seconds='zz'", stamps, 5, now), 5);
    assert_int_equal(count("maxstanzas='3'", stamps, 0, now), 0);         /* nothing kept */
}

static void test_history_wrong_namespace(void **state)
{
    (void)state;
    const int64_t stamps[2] = {1, 2};
    const char doc[] = "<x xmlns='" NS_MUC "'><history xmlns='other' maxstanzas='0'/></x>";
    char err[128];
    struct xml_node *x = xml_parse_document(doc, sizeof doc - 1, err, sizeof err);
    assert_non_null(x);
    assert_int_equal(muc_history_count(x, stamps, 2, 3), 2);
    xml_free(&x);
}

static void test_stamp(void **state)
{
    (void)state;
    char out[40];
    muc_stamp(out, sizeof out, 0);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    muc_stamp(out, sizeof out, 1796284558123456LL);   /* 2026-12-03T07:55:58.123456Z */
    assert_string_equal(out, "2026-12-03T07:55:58.123Z");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_history_count),
        cmocka_unit_test(test_history_wrong_namespace),
        cmocka_unit_test(test_stamp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
