/* tests/unit/test_buf.c - the growable buffer and the small helpers of util. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "buf.h"
#include "util.h"

static void test_append_consume(void **state)
{
    struct buf b;
    buf_init(&b);
    for (int i = 0; i < 1000; i++)
        buf_append(&b, "ab", 2);
    assert_int_equal(b.len, 2000);
    buf_consume(&b, 1999);
    assert_int_equal(b.len, 1);
    assert_string_equal(buf_cstr(&b), "b");
    buf_printf(&b, "%d-%s", 42, "x");
    assert_string_equal(buf_cstr(&b), "b42-x");
    buf_consume(&b, 100);
    assert_int_equal(b.len, 0);
    buf_release(&b);
    assert_null(b.data);
    buf_release(NULL);
}

static void test_sanitize(void **state)
{
    char out[64];
    mk_sanitize(out, sizeof out, "a\n<\x01\"", 5);
    assert_string_equal(out, "a\\x0a<\\x01\\x22");
    mk_sanitize(out, 8, "abcdefghijk", 11);
    assert_true(strlen(out) < 8);
}

static void test_put_str(void **state)
{
    char block[12], *at = block;
    char *a = mk_put_str(&at, "abcdef", 3), *b = mk_put_str(&at, "xyz", 3), *c = mk_put_str(&at, "", 0);
    assert_string_equal(a, "abc");
    assert_string_equal(b, "xyz");
    assert_string_equal(c, "");
    assert_ptr_equal(b, block + 4);
    assert_ptr_equal(at, block + 9);
}

static void test_strlcpy_hash(void **state)
{
    char d[4];
    assert_int_equal(mk_strlcpy(d, "hello", sizeof d), 5);
    assert_string_equal(d, "hel");
    assert_true(mk_hash64("a", 1, 0) != mk_hash64("b", 1, 0));
    assert_true(mk_hash64("a", 1, 0) != mk_hash64("a", 1, 1));
    assert_true(mk_hash64("abc", 3, 7) == mk_hash64("abc", 3, 7));
    char *s = xasprintf("%s.%u", "c2s", 3u);
    assert_string_equal(s, "c2s.3");
    xfree(&s);
    assert_null(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_consume),
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_strlcpy_hash),
        cmocka_unit_test(test_put_str),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
