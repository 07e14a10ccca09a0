/* tests/unit/test_mam.c - the mam role's pure offline-storage helpers: XEP-0203 stamping and id generation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../mam/archive.h"
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

/* What the parser finds: the first jabber:client body's text and the origin-id. */
static void parsed(const char *xml, char **body, char **oid)
{
    *body = *oid = NULL;
    struct xml_node *msg = mam_parse_stanza(xml, strlen(xml));
    assert_non_null(msg);
    struct xml_node *b = xml_child(msg, "body", XML_NS_CLIENT);
    if (b != NULL)
        *body = xml_text(b);
    struct xml_node *o = xml_child(msg, "origin-id", "urn:xmpp:sid:0");
    if (o != NULL && xml_attr(o, "id") != NULL)
        *oid = xstrdup(xml_attr(o, "id"));
    xml_free(&msg);
}

static void assert_same_or_null(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

/* The scan finds what the parser finds, or says it cannot (-1): never something else. */
static void test_scan_message(void **state)
{
    static const struct {
        const char *xml;
        int rc;
    } cases[] = {
        { "<message to=\"b@x\" type=\"chat\"><body>hello</body></message>", 0 },
        { "<message><body>a &amp; b &lt;c&gt; &quot;d&quot; &apos;e&apos; &#13; &#x1F600; &#233;</body></message>", 0 },
        { "<message><body xml:lang=\"en\">caf\xc3\xa9 \xf0\x9f\x98\x80</body><body>second</body></message>", 0 },
        { "<message><body/><body>not first</body></message>", 0 },
        { "<message><body></body></message>", 0 },
        { "<message/>", 0 },
        { "<message><thread>t</thread></message>", 0 },
        { "<message><x xmlns=\"urn:other\"><body>nested, not ours</body></x><body>ours</body></message>", 0 },
        { "<message><body xmlns=\"urn:other\">other ns</body></message>", 0 },
        { "<message xmlns=\"jabber:client\"><body>explicit ns</body></message>", 0 },
        { "<message><origin-id xmlns=\"urn:xmpp:sid:0\" id=\"o&amp;1\"/><body>x</body>"
          "<stanza-id xmlns='urn:xmpp:sid:0' by='a@x' id='ABC'/></message>", 0 },
        { "<message><origin-id xmlns=\"urn:xmpp:other\" id=\"no\"/><origin-id id=\"no\"/></message>", 0 },
        { "<message>\n  <body>\n spaced \n</body>\n</message>", 0 },
        { "<message><body>a<b xmlns=\"urn:x\">b</b>c</body></message>", -1 },
        { "<message><body><![CDATA[<raw>]]></body></message>", -1 },
        { "<message><body>&unknown;</body></message>", -1 },
        { "<message><body>&#0;</body></message>", -1 },
        { "<message><body>unterminated</body>", -1 },
        { "<presence/>", -1 },
        { "<message xmlns=\"urn:other\"><body>x</body></message>", -1 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *body = (char *)"unset", *oid = (char *)"unset";
        int rc = mam_scan_message(cases[i].xml, strlen(cases[i].xml), &body, &oid);
        if (rc != cases[i].rc)
            fail_msg("case %zu: rc %d", i, rc);
        if (rc == -1) {
            assert_null(body);
            assert_null(oid);
            continue;
        }
        char *pbody, *poid;
        parsed(cases[i].xml, &pbody, &poid);
        assert_same_or_null(body, pbody);
        assert_same_or_null(oid, poid);
        free(body);
        free(oid);
        free(pbody);
        free(poid);
    }
    char *body, *oid;
    const char *m = "<message><body>a &amp; b</body><origin-id xmlns=\"urn:xmpp:sid:0\" id=\"x1\"/></message>";
    assert_int_equal(mam_scan_message(m, strlen(m), &body, &oid), 0);
    assert_string_equal(body, "a & b");
    assert_string_equal(oid, "x1");
    free(body);
    free(oid);
    /* Every prefix of a message is refused, never read past its end. */
    for (size_t n = 0; n < strlen(m); n++) {
        char *cut = xstrndup(m, n);
        assert_int_equal(mam_scan_message(cut, n, &body, &oid), -1);
        free(cut);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_stamp),
        cmocka_unit_test(test_stamp_xml),
        cmocka_unit_test(test_id_next),
        cmocka_unit_test(test_scan_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
