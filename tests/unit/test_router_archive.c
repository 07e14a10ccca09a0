/* tests/unit/test_router_archive.c - the router's <stanza-id/> rewrite: splice, stripping a forged one, no-store hints. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../router/archive.h"
#include "buf.h"

static char *rewrite(const char *in, bool *no_store, int *rc)
{
    struct buf b;
    buf_init(&b);
    *rc = router_archive_rewrite(in, strlen(in), "bob@x", "0000000000abc", &b, no_store);
    buf_append(&b, "", 1);
    return b.data;
}

static void test_splice(void **state)
{
    (void)state;
    bool ns;
    int rc;
    char *out = rewrite("<message to=\"bob@x\" from=\"a@x/r\"><body>hi</body></message>", &ns, &rc);
    assert_int_equal(rc, 0);
    assert_false(ns);
    assert_string_equal(out, "<message to=\"bob@x\" from=\"a@x/r\"><body>hi</body>"
                             "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@x' id='0000000000abc'/></message>");
    free(out);
    out = rewrite("<message to=\"bob@x\"/>", &ns, &rc);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "<message to=\"bob@x\"><stanza-id xmlns='urn:xmpp:sid:0' by='bob@x' id='0000000000abc'/>"
                             "</message>");
    free(out);
    out = rewrite("<presence/>", &ns, &rc);
    assert_int_equal(rc, -1);
    free(out);
}

static void test_forged(void **state)
{
    (void)state;
    bool ns;
    int rc;
    char *out = rewrite("<message to=\"bob@x\"><body>hi</body>"
                        "<stanza-id xmlns=\"urn:xmpp:sid:0\" by=\"bob@x\" id=\"forged\"/>"
                        "<stanza-id xmlns=\"urn:xmpp:sid:0\" by=\"room@muc.x\" id=\"keep\"/>"
                        "<origin-id xmlns=\"urn:xmpp:sid:0\" id=\"o1\"/></message>", &ns, &rc);
    assert_int_equal(rc, 0);
    assert_false(ns);
    assert_null(strstr(out, "forged"));
    assert_non_null(strstr(out, "keep"));
    assert_non_null(strstr(out, "origin-id"));
    assert_non_null(strstr(out, "0000000000abc"));
    free(out);
}

/* Messages that are not archived lose a forged stanza-id all the same. */
static void test_strip(void **state)
{
    (void)state;
    const char *in = "<message to=\"bob@x\"><active xmlns=\"http://jabber.org/protocol/chatstates\"/>"
                     "<stanza-id xmlns=\"urn:xmpp:sid:0\" by=\"bob@x\" id=\"forged\"/>"
                     "<stanza-id xmlns=\"urn:xmpp:sid:0\" by=\"room@muc.x\" id=\"keep\"/></message>";
    struct buf b;
    buf_init(&b);
    assert_int_equal(router_archive_strip(in, strlen(in), "bob@x", &b), 1);
    buf_append(&b, "", 1);
    assert_null(strstr(b.data, "forged"));
    assert_non_null(strstr(b.data, "keep"));
    assert_non_null(strstr(b.data, "chatstates"));
    buf_release(&b);
    /* Nothing to strip (none claims bob@x, none at all, not a message): out untouched. */
    buf_init(&b);
    const char *other = "<message to=\"bob@x\"><stanza-id xmlns=\"urn:xmpp:sid:0\" by=\"room@muc.x\" id=\"k\"/></message>";
    assert_int_equal(router_archive_strip(other, strlen(other), "bob@x", &b), 0);
    const char *plain = "<message to=\"bob@x\"><body>hi</body></message>";
    assert_int_equal(router_archive_strip(plain, strlen(plain), "bob@x", &b), 0);
    const char *pres = "<presence><stanza-id xmlns=\"urn:xmpp:sid:0\" by=\"bob@x\" id=\"f\"/></presence>";
    assert_int_equal(router_archive_strip(pres, strlen(pres), "bob@x", &b), 0);
    assert_int_equal(router_archive_strip("<message", 8, "bob@x", &b), 0);
    assert_int_equal(b.len, 0);
    buf_release(&b);
}

static void test_hints(void **state)
{
    (void)state;
    bool ns;
    int rc;
    char *out = rewrite("<message to=\"bob@x\"><body>hi</body><no-store xmlns=\"urn:xmpp:hints\"/></message>", &ns, &rc);
    assert_int_equal(rc, 0);
    assert_true(ns);
    free(out);
    out = rewrite("<message to=\"bob@x\"><body>hi</body><no-permanent-store xmlns=\"urn:xmpp:hints\"/></message>", &ns,
                  &rc);
    assert_true(ns);
    free(out);
    out = rewrite("<message to=\"bob@x\"><body>hi</body><store xmlns=\"urn:xmpp:hints\"/></message>", &ns, &rc);
    assert_int_equal(rc, 0);
    assert_false(ns);
    assert_non_null(strstr(out, "0000000000abc"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_splice),
        cmocka_unit_test(test_forged),
        cmocka_unit_test(test_hints),
        cmocka_unit_test(test_strip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
