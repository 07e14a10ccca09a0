/* tests/unit/test_jid.c - JID parsing, stringprep preparation, formatting and comparison. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <stringprep.h>
#include <stdio.h>
#include <stdlib.h>

#include "jid.h"
#include "util.h"

/* Parses in, expects success, and checks the full prepared form. */
static void expect_full(const char *in, const char *want)
{
    struct jid j;
    char err[256] = "";
    if (jid_parse(in, &j, err, sizeof err) != 0)
        fail_msg("jid_parse(\"%s\") failed: %s", in, err);
    char *got = jid_to_string(&j, false);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
    jid_release(&j);
}

/* Parses in, expects failure, and checks err names the problem. */
static void expect_invalid(const char *in, const char *err_part)
{
    struct jid j = { (char *)"sentinel", NULL, NULL };
    char err[256] = "";
    if (jid_parse(in, &j, err, sizeof err) == 0)
        fail_msg("jid_parse(\"%s\") accepted it as %s@%s/%s", in, j.local ? j.local : "-",
                 j.domain, j.resource ? j.resource : "-");
    /* *out is untouched on failure. */
    assert_string_equal(j.local, "sentinel");
    assert_null(j.domain);
    if (strstr(err, err_part) == NULL)
        fail_msg("jid_parse(\"%s\") said \"%s\", wanted \"%s\"", in, err, err_part);
    /* One sentence: it ends with a full stop. */
    assert_true(strlen(err) > 0 && err[strlen(err) - 1] == '.');
}

/* A string of n bytes of c, with '.' at every period-th position when period > 0. */
static char *filled(size_t n, char c, size_t period)
{
    char *s = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = (period > 0 && i % period == period - 1) ? '.' : c;
    s[n] = '\0';
    return s;
}

/* n copies of the UTF-8 sequence u. */
static char *repeated(const char *u, size_t n)
{
    size_t ul = strlen(u);
    char *s = xmalloc(ul * n + 1);
    for (size_t i = 0; i < n; i++)
        memcpy(s + i * ul, u, ul);
    s[ul * n] = '\0';
    return s;
}

/* RFC 7622 section 3.5, examples of valid JIDs, as libidn prepares them. */
static void test_rfc7622_valid(void **state)
{
    expect_full("juliet@example.com", "juliet@example.com");
    expect_full("juliet@example.com/foo", "juliet@example.com/foo");
    expect_full("juliet@example.com/foo bar", "juliet@example.com/foo bar");
    expect_full("juliet@example.com/foo@bar", "juliet@example.com/foo@bar");
    expect_full("foo\\20bar@example.com", "foo\\20bar@example.com");
    expect_full("fussball@example.com", "fussball@example.com");
    /* Nodeprep's case folding (stringprep B.2) maps sharp s to "ss". */
    expect_full("fu\xc3\x9f" "ball@example.com", "fussball@example.com");
    expect_full("\xcf\x80@example.com", "\xcf\x80@example.com");                 /* pi */
    expect_full("\xce\xa3@example.com/foo", "\xcf\x83@example.com/foo");         /* Sigma -> sigma */
    expect_full("\xcf\x83@example.com/foo", "\xcf\x83@example.com/foo");         /* sigma */
    expect_full("\xcf\x82@example.com/foo", "\xcf\x83@example.com/foo");         /* final sigma -> sigma */
    expect_full("king@example.com/\xe2\x99\x9a", "king@example.com/\xe2\x99\x9a"); /* black king */
    expect_full("example.com", "example.com");
    expect_full("example.com/foobar", "example.com/foobar");
    expect_full("a.example.com/b@example.net", "a.example.com/b@example.net");
}

/* RFC 7622 section 3.5, examples of invalid JIDs, and the ones that differ
 * under the stringprep profiles (RFC 6122) that libidn implements. */
static void test_rfc7622_invalid(void **state)
{
    expect_invalid("\"juliet\"@example.com", "localpart contains a character that Nodeprep forbids");
    expect_invalid("foo bar@example.com", "localpart contains a character that Nodeprep forbids");
    expect_invalid("juliet@", "empty domainpart");
    expect_invalid("/foobar", "empty domainpart");
    expect_invalid("@example.com", "empty localpart");
    expect_invalid("", "empty");
    expect_invalid("example.com/", "empty resourcepart");
    expect_invalid("juliet@example.com/", "empty resourcepart");
    expect_invalid("@", "empty localpart");
    expect_invalid("/", "empty domainpart");
    for (const char *p = "&'/:<>@"; *p; p++) {
        char in[32];
        snprintf(in, sizeof in, "a%cb@example.com", *p);
        if (*p == '/')
            expect_full(in, in);  /* domain "a", resource "b@example.com" */
        else if (*p == '@')
            expect_invalid(in, "forbidden character '@'");  /* domain "b@example.com" */
        else
            expect_invalid(in, "Nodeprep forbids");
    }
    /* PRECIS (RFC 7622) refuses these, but Nodeprep maps U+2163 ROMAN NUMERAL
     * FOUR to "iv" by case folding and NFKC, and allows symbols. */
    expect_full("henry\xe2\x85\xa3@example.com", "henryiv@example.com");
    expect_full("\xe2\x99\x9a@example.com", "\xe2\x99\x9a@example.com");
}

static void test_case_folding(void **state)
{
    expect_full("Juliet@Example.COM/Foo", "juliet@example.com/Foo");
    expect_full("JULIET@EXAMPLE.COM", "juliet@example.com");
    /* Fullwidth letters and digits become ASCII under NFKC. */
    expect_full("x@\xef\xbc\xa5\xef\xbc\xb8.com", "x@ex.com");
    expect_full("x@\xef\xbc\x91.\xef\xbc\x92.\xef\xbc\x93.\xef\xbc\x94", "x@1.2.3.4");
    /* Soft hyphen is mapped to nothing. */
    expect_full("a\xc2\xad" "b@example.com", "ab@example.com");
}

static void test_domain_forms(void **state)
{
    expect_full("example.com.", "example.com");
    expect_full("juliet@example.com./r", "juliet@example.com/r");
    expect_full("x@a\xe3\x80\x82" "b", "x@a.b");  /* U+3002 ideographic full stop */
    expect_invalid("example.com..", "empty label");
    expect_invalid(".", "domainpart is empty");
    expect_invalid("a..b", "empty label");
    expect_invalid(".example.com", "empty label");
    expect_invalid("a b.com", "forbidden character \\x20");
    expect_invalid("x@a,b", "forbidden character ','");
    expect_invalid("a@b@c", "forbidden character '@'");
    expect_full("1.2.3.4", "1.2.3.4");
    expect_full("u@192.0.2.1/r", "u@192.0.2.1/r");
    expect_invalid("1.2.3.256", "not an IPv4 address");
    expect_invalid("123", "not an IPv4 address");
    expect_full("[::1]", "[::1]");
    expect_full("u@[2001:DB8:0:0::1]/r", "u@[2001:db8::1]/r");
    expect_full("[::ffff:192.0.2.1]", "[::ffff:192.0.2.1]");
    expect_invalid("[::zz]", "not a valid IPv6 address literal");
    expect_invalid("[::1", "bracketed IPv6");
    expect_invalid("[]", "bracketed IPv6");
    expect_invalid("[::1].", "bracketed IPv6");
    expect_invalid("[fe80::1%eth0]", "not a valid IPv6 address literal");
    expect_invalid("[1.2.3.4]", "not a valid IPv6 address literal");

    char *label = filled(63, 'a', 0);
    char *in = xasprintf("%s.com", label);
    expect_full(in, in);
    free(in);
    free(label);
    label = filled(64, 'a', 0);
    in = xasprintf("%s.com", label);
    expect_invalid(in, "label longer than 63 bytes");
    free(in);
    free(label);
}

static void test_part_lengths(void **state)
{
    char *ok = filled(JID_PART_MAX, 'a', 0), *big = filled(JID_PART_MAX + 1, 'a', 0);
    char *in;

    in = xasprintf("%s@example.com", ok);
    expect_full(in, in);
    free(in);
    in = xasprintf("%s@example.com", big);
    expect_invalid(in, "localpart is longer than 1023 bytes");
    free(in);

    in = xasprintf("example.com/%s", ok);
    expect_full(in, in);
    free(in);
    in = xasprintf("example.com/%s", big);
    expect_invalid(in, "resourcepart is longer than 1023 bytes");
    free(in);

    char *dom_ok = filled(JID_PART_MAX, 'd', 50), *dom_big = filled(JID_PART_MAX + 1, 'd', 50);
    expect_full(dom_ok, dom_ok);
    expect_invalid(dom_big, "domainpart is longer than 1023 bytes");
    /* A trailing dot does not count. */
    in = xasprintf("%s.", dom_ok);
    expect_full(in, dom_ok);
    free(in);
    free(dom_ok);
    free(dom_big);

    /* Multi-byte characters count in bytes: 341 snowmen are 1023 bytes. */
    char *snow = repeated("\xe2\x98\x83", 341);
    in = xasprintf("x@y/%s", snow);
    expect_full(in, in);
    free(in);
    free(snow);
    snow = repeated("\xe2\x98\x83", 342);
    in = xasprintf("x@y/%s", snow);
    expect_invalid(in, "resourcepart is longer than 1023 bytes");
    free(in);
    free(snow);

    /* Preparation can lengthen a part: 511 sharp s (1022 bytes) become 1022
     * bytes of "ss", 512 (1024 bytes) become 1024 and are refused. */
    char *sharp = repeated("\xc3\x9f", 511);
    char *want = filled(1022, 's', 0);
    in = xasprintf("%s@x", sharp);
    char *want_full = xasprintf("%s@x", want);
    expect_full(in, want_full);
    free(in);
    free(want_full);
    free(want);
    free(sharp);
    sharp = repeated("\xc3\x9f", 512);
    in = xasprintf("%s@x", sharp);
    expect_invalid(in, "localpart is longer than 1023 bytes after Nodeprep");
    free(in);
    free(sharp);

    /* And a short part can grow far: U+FDFA is 3 bytes and 18 characters under NFKC. */
    char *lig = repeated("\xef\xb7\xba", 20);
    char *res = jid_resourceprep(lig, NULL, 0);
    assert_non_null(res);
    assert_true(strlen(res) > 20 * 18);
    free(res);
    free(lig);

    /* Mapped-to-nothing padding is accepted only up to a raw bound. */
    char *pad = repeated("\xc2\xad", 4 * JID_PART_MAX);
    in = xasprintf("%sa@x", pad);
    expect_invalid(in, "localpart is longer than 1023 bytes");
    free(in);
    free(pad);

    free(ok);
    free(big);
}

static void test_unicode(void **state)
{
    /* A 4-byte emoji (unassigned in Unicode 3.2, allowed in queries and here). */
    expect_full("juliet@example.com/\xf0\x9f\x98\x80", "juliet@example.com/\xf0\x9f\x98\x80");
    expect_full("\xf0\x9f\x98\x80@example.com", "\xf0\x9f\x98\x80@example.com");
    /* Invalid UTF-8 in each part: stray byte, overlong '/', surrogate,
     * truncated sequence, beyond U+10FFFF. */
    expect_invalid("x@y/\xff", "resourcepart is not valid UTF-8");
    expect_invalid("a\xc0\xaf" "b@y", "localpart is not valid UTF-8");
    expect_invalid("x@\xed\xa0\x80.com", "domainpart is not valid UTF-8");
    expect_invalid("x@y/\xe2\x82", "resourcepart is not valid UTF-8");
    expect_invalid("x@y/\xf4\x90\x80\x80", "resourcepart is not valid UTF-8");
    /* Prohibited: private use (C.3) in a resource, mixed-direction text. */
    expect_invalid("x@y/a\xee\x80\x80", "resourcepart contains a character that Resourceprep forbids");
    expect_invalid("x@y/a\xd7\xa9", "right-to-left");
    expect_full("\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d@example.com", "\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d@example.com");
    /* Parts that prepare to nothing. */
    expect_invalid("\xc2\xad@example.com", "localpart is empty after Nodeprep");
    expect_invalid("x@y/\xe2\x80\x8b", "resourcepart is empty after Resourceprep");
    expect_invalid("\xc2\xad", "domainpart is empty");
}

static void test_format(void **state)
{
    struct jid j;
    char out[64];
    assert_int_equal(jid_parse("Juliet@Example.com/Balcony", &j, NULL, 0), 0);
    assert_int_equal(jid_len(&j, false), strlen("juliet@example.com/Balcony"));
    assert_int_equal(jid_len(&j, true), strlen("juliet@example.com"));
    assert_int_equal(jid_format(&j, false, out, sizeof out), 26);
    assert_string_equal(out, "juliet@example.com/Balcony");
    assert_int_equal(jid_format(&j, true, out, sizeof out), 18);
    assert_string_equal(out, "juliet@example.com");
    assert_int_equal(jid_format(&j, true, out, 19), 18);
    assert_int_equal(jid_format(&j, true, out, 18), -1);
    assert_int_equal(jid_format(&j, false, out, 26), -1);
    char *bare = jid_to_string(&j, true);
    assert_string_equal(bare, "juliet@example.com");
    free(bare);

    struct jid c;
    jid_copy(&c, &j);
    assert_true(jid_equal(&c, &j));
    assert_ptr_not_equal(c.local, j.local);
    jid_release(&j);
    assert_null(j.local);
    assert_null(j.domain);
    assert_null(j.resource);
    jid_release(&j);
    jid_release(NULL);

    c.resource[0] = 'X';
    char *full = jid_to_string(&c, false);
    assert_string_equal(full, "juliet@example.com/Xalcony");
    free(full);
    jid_release(&c);

    assert_int_equal(jid_parse("example.com", &j, NULL, 0), 0);
    assert_null(j.local);
    assert_null(j.resource);
    assert_int_equal(jid_format(&j, false, out, sizeof out), 11);
    assert_string_equal(out, "example.com");
    jid_copy(&c, &j);
    assert_null(c.local);
    assert_true(jid_equal(&c, &j));
    jid_release(&c);
    jid_release(&j);
}

/* Parses both, asserting success, and returns the two comparisons as bits. */
static int compare(const char *a, const char *b)
{
    struct jid ja, jb;
    assert_int_equal(jid_parse(a, &ja, NULL, 0), 0);
    assert_int_equal(jid_parse(b, &jb, NULL, 0), 0);
    int r = (jid_equal(&ja, &jb) ? 1 : 0) | (jid_bare_equal(&ja, &jb) ? 2 : 0);
    assert_true(jid_equal(&ja, &jb) == jid_equal(&jb, &ja));
    assert_true(jid_bare_equal(&ja, &jb) == jid_bare_equal(&jb, &ja));
    jid_release(&ja);
    jid_release(&jb);
    return r;
}

static void test_compare(void **state)
{
    assert_int_equal(compare("Juliet@Example.com/Foo", "juliet@example.com./Foo"), 3);
    assert_int_equal(compare("juliet@example.com/foo", "juliet@example.com/Foo"), 2);
    assert_int_equal(compare("juliet@example.com", "juliet@example.com/foo"), 2);
    assert_int_equal(compare("juliet@example.com", "romeo@example.com"), 0);
    assert_int_equal(compare("example.com", "juliet@example.com"), 0);
    assert_int_equal(compare("example.com/x", "example.com/x"), 3);
    assert_int_equal(compare("fu\xc3\x9f" "ball@example.com", "FUSSBALL@example.com"), 3);
    assert_int_equal(compare("\xcf\x82@x", "\xce\xa3@x"), 3);
    assert_int_equal(compare("u@[::1]", "u@[0:0:0:0:0:0:0:1]"), 3);
    assert_int_equal(compare("u@example.com", "u@example.org"), 0);
}

static void test_single_parts(void **state)
{
    char err[256];
    char *s = jid_nodeprep("Juliet", err, sizeof err);
    assert_string_equal(s, "juliet");
    free(s);
    assert_null(jid_nodeprep("a@b", err, sizeof err));
    assert_non_null(strstr(err, "Nodeprep forbids"));
    assert_null(jid_nodeprep("", err, sizeof err));
    assert_non_null(strstr(err, "localpart is empty"));
    assert_null(jid_nodeprep(NULL, NULL, 0));

    s = jid_resourceprep("Balcony/Two @ Verona", err, sizeof err);
    assert_string_equal(s, "Balcony/Two @ Verona");
    free(s);
    assert_null(jid_resourceprep("", err, sizeof err));
    assert_non_null(strstr(err, "resourcepart is empty"));

    s = jid_nameprep("EXAMPLE.com.", err, sizeof err);
    assert_string_equal(s, "example.com");
    free(s);
    s = jid_nameprep("[0::1]", err, sizeof err);
    assert_string_equal(s, "[::1]");
    free(s);
    assert_null(jid_nameprep("example.com/x", err, sizeof err));
    assert_non_null(strstr(err, "forbidden character '/'"));

    s = jid_normalize("Juliet@Example.COM/Foo", false);
    assert_string_equal(s, "juliet@example.com/Foo");
    free(s);
    s = jid_normalize("Juliet@Example.COM/Foo", true);
    assert_string_equal(s, "juliet@example.com");
    free(s);
    assert_null(jid_normalize("@example.com", false));
    assert_null(jid_normalize(NULL, false));
}

/* err may be NULL or tiny: the message is truncated, never overflowed. */
static void test_err_buffer(void **state)
{
    struct jid j;
    char err[8];
    memset(err, 'Z', sizeof err);
    assert_int_equal(jid_parse("@x", &j, err, sizeof err), -1);
    assert_int_equal(strlen(err), sizeof err - 1);
    assert_int_equal(jid_parse("@x", &j, NULL, 0), -1);
    assert_int_equal(jid_parse("@x", &j, err, 0), -1);
}


/* The ASCII fast path must give exactly what libidn's profiles give. */
static void ascii_matches_libidn(const char *in, int (*prep)(char *, size_t), char *(*ours)(const char *, char *, size_t))
{
    char ref[256], err[128];
    snprintf(ref, sizeof ref, "%s", in);
    int rc = prep(ref, sizeof ref);
    char *got = ours(in, err, sizeof err);
    if (rc == STRINGPREP_OK && ref[0] != '\0') {
        assert_non_null(got);
        assert_string_equal(got, ref);
    } else {
        assert_null(got);
    }
    free(got);
}

static int nodeprep_ref(char *s, size_t n) { return stringprep_xmpp_nodeprep(s, n); }
static int resourceprep_ref(char *s, size_t n) { return stringprep_xmpp_resourceprep(s, n); }

static void test_ascii_fast_path_equals_stringprep(void **state)
{
    unsigned seed = 12345;
    char in[24];
    for (int round = 0; round < 20000; round++) {
        size_t n = 1 + (seed = seed * 1103515245u + 12345u) % (sizeof in - 1);
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            in[i] = (char)(0x20 + (seed >> 16) % 0x5f);   /* printable ASCII and space */
        }
        in[n] = '\0';
        ascii_matches_libidn(in, nodeprep_ref, jid_nodeprep);
        ascii_matches_libidn(in, resourceprep_ref, jid_resourceprep);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ascii_fast_path_equals_stringprep),
        cmocka_unit_test(test_rfc7622_valid),
        cmocka_unit_test(test_rfc7622_invalid),
        cmocka_unit_test(test_case_folding),
        cmocka_unit_test(test_domain_forms),
        cmocka_unit_test(test_part_lengths),
        cmocka_unit_test(test_unicode),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_compare),
        cmocka_unit_test(test_single_parts),
        cmocka_unit_test(test_err_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
