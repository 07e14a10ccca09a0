/* tests/unit/test_mam.c - the mam role's pure offline-storage helpers: XEP-0203 stamping and id generation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../mam/mam.h"
#include "buf.h"
#include "util.h"

static void test_format_stamp(void **state)
{
    char out[40];
    offline_format_stamp(0, out, sizeof out);
    assert_string_equal(out, "1970-01-01T00:00:00.000000Z");
    offline_format_stamp(1700000000123456ull, out, sizeof out);
    assert_string_equal(out, "2023-11-14T22:13:20.123456Z");
}

static void test_stamp_xml(void **state)
{
    struct buf out;
    buf_init(&out);
    char *id = NULL;
    const char *in = "<message from='a@localhost/r' to='b@localhost' type='chat' id='m1'><body>hi &amp; bye</body>"
                     "<x xmlns='urn:example'/></message>";
    assert_int_equal(offline_stamp_xml(in, strlen(in), "localhost", 1700000000123456ull, &out, &id), 0);
    assert_string_equal(id, "m1");
    const char *s = buf_cstr(&out);
    assert_non_null(strstr(s, "<message"));
    assert_null(strstr(s, "jabber:client"));   /* implied, as on the bus */
    assert_non_null(strstr(s, "<body>hi &amp; bye</body>"));
    assert_non_null(strstr(s, "xmlns=\"urn:xmpp:delay\"") ? "ok" : strstr(s, "xmlns='urn:xmpp:delay'"));
    assert_non_null(strstr(s, "2023-11-14T22:13:20.123456Z"));
    assert_non_null(strstr(s, "from=\"localhost\"") ? "ok" : strstr(s, "from='localhost'"));
    free(id);
    id = NULL;
    buf_reset(&out);
    /* Not a message, several elements, garbage, empty: refused. */
    const char *bad[] = {"<iq type='get' id='1'/>", "<message/><message/>", "<message>", "</wrap><message/><wrap>",
                         "hello", "<message xmlns='urn:other'/>"};
    for (size_t i = 0; i < MK_ARRAY_LEN(bad); i++) {
        assert_int_equal(offline_stamp_xml(bad[i], strlen(bad[i]), "localhost", 1, &out, &id), -1);
        assert_null(id);
    }
    assert_int_equal(offline_stamp_xml(NULL, 0, "localhost", 1, &out, &id), -1);
    /* No id attribute. */
    assert_int_equal(offline_stamp_xml("<message/>", 10, "localhost", 1, &out, &id), 0);
    assert_null(id);
    buf_release(&out);
}

static void test_id_next(void **state)
{
    struct mam m;
    memset(&m, 0, sizeof m);
    m.gen = 7;
    uint64_t prev = 0;
    for (int i = 0; i < 10000; i++) {
        uint64_t id = mam_id_next(&m);
        assert_true(id > prev);
        assert_int_equal(id & 0xff, 7);
        prev = id;
    }
    uint64_t now = (uint64_t)mk_now_us();
    assert_true((prev >> 8) >= now - 1000000 && (prev >> 8) <= now + 1000000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_stamp),
        cmocka_unit_test(test_stamp_xml),
        cmocka_unit_test(test_id_next),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
