/* tests/unit/test_mam_query.c - MAM query forms, RSM, stamps, prefs and result shapes as pure functions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../mam/archive.h"
#include "mamid.h"
#include "util.h"
#include "xml.h"

static struct xml_node *doc(const char *s)
{
    char err[128];
    struct xml_node *n = xml_parse_document(s, strlen(s), err, sizeof err);
    if (n == NULL)
        fail_msg("parse: %s: %s", err, s);
    return n;
}

/* Parses <query xmlns=ns>inner</query>; returns mam_query_parse's result. */
static int parse(const char *ns, const char *inner, struct mam_query *q, const char **cond)
{
    char *s = xasprintf("<query xmlns='%s' queryid='q1'>%s</query>", ns, inner);
    struct xml_node *n = doc(s);
    free(s);
    char text[160];
    int r = mam_query_parse(n, (enum mam_ns)mam_ns_parse(ns), 50, q, cond, text, sizeof text);
    xml_free(&n);
    return r;
}

#define FORM(ns, fields) \
    "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>" ns "</value></field>" fields "</x>"

static void test_ns(void **state)
{
    (void)state;
    assert_int_equal(mam_ns_parse(NS_MAM_TMP), MAM_NS_TMP);
    assert_int_equal(mam_ns_parse(NS_MAM_0), MAM_NS_0);
    assert_int_equal(mam_ns_parse(NS_MAM_1), MAM_NS_1);
    assert_int_equal(mam_ns_parse(NS_MAM_2), MAM_NS_2);
    assert_int_equal(mam_ns_parse("urn:xmpp:mam:3"), -1);
    assert_int_equal(mam_ns_parse(NULL), -1);
    assert_string_equal(mam_ns_name(MAM_NS_0), NS_MAM_0);
}

static void test_stamps(void **state)
{
    (void)state;
    uint64_t us;
    assert_int_equal(mam_parse_stamp("1970-01-01T00:00:00Z", &us), 0);
    assert_true(us == 0);
    assert_int_equal(mam_parse_stamp("2010-07-10T23:08:25Z", &us), 0);
    assert_true(us == UINT64_C(1278803305000000));
    assert_int_equal(mam_parse_stamp("2010-07-10T23:08:25.123Z", &us), 0);
    assert_true(us == UINT64_C(1278803305123000));
    assert_int_equal(mam_parse_stamp("2010-07-10T23:08:25.1234567Z", &us), 0);
    assert_true(us == UINT64_C(1278803305123456));
    assert_int_equal(mam_parse_stamp("2010-07-11T01:08:25+02:00", &us), 0);
    assert_true(us == UINT64_C(1278803305000000));
    assert_int_equal(mam_parse_stamp("2010-07-10T23:08:25", &us), -1);
    assert_int_equal(mam_parse_stamp("2010-13-10T23:08:25Z", &us), -1);
    assert_int_equal(mam_parse_stamp("2010-07-10 23:08:25Z", &us), -1);
    assert_int_equal(mam_parse_stamp("2010-07-10T23:08:25.Z", &us), -1);
    assert_int_equal(mam_parse_stamp("2010-07-10T23:08:25Zjunk", &us), -1);
    assert_int_equal(mam_parse_stamp("", &us), -1);
    char out[40];
    mam_format_stamp(UINT64_C(1278803305123456), out, sizeof out);
    assert_string_equal(out, "2010-07-10T23:08:25.123456Z");
}

static void test_form_filters(void **state)
{
    (void)state;
    struct mam_query q;
    const char *cond = NULL;
    assert_int_equal(parse(NS_MAM_2, FORM(NS_MAM_2, "<field var='with'><value>Juliet@Capulet.lit/Balcony</value></field>"
                                                    "<field var='start'><value>2010-07-10T23:08:25Z</value></field>"
                                                    "<field var='end'><value>2010-07-10T23:08:26Z</value></field>"
                                                    "<field var='full-text-search'><value>hi there</value></field>"),
                           &q, &cond), 0);
    assert_string_equal(q.queryid, "q1");
    assert_string_equal(q.with_bare, "juliet@capulet.lit");
    assert_string_equal(q.with_resource, "Balcony");
    assert_true(q.lo == mamid_min_at(UINT64_C(1278803305000000)) - 1);
    assert_true(q.hi == mamid_max_at(UINT64_C(1278803306000000)) + 1);
    assert_string_equal(q.fts, "hi there");
    assert_int_equal(q.max, 50);
    assert_false(q.has_after || q.has_before || q.has_index || q.flip);
    mam_query_release(&q);

    /* A bare with: no resource. */
    assert_int_equal(parse(NS_MAM_1, FORM(NS_MAM_1, "<field var='with'><value>a@b</value></field>"), &q, &cond), 0);
    assert_string_equal(q.with_bare, "a@b");
    assert_null(q.with_resource);
    mam_query_release(&q);

    /* No form at all: everything. */
    assert_int_equal(parse(NS_MAM_2, "", &q, &cond), 0);
    assert_true(q.lo == 0);
    assert_true(q.hi == (uint64_t)INT64_MAX);
    mam_query_release(&q);
}

static void test_extended(void **state)
{
    (void)state;
    struct mam_query q;
    const char *cond = NULL;
    char a[MAMID_TEXT_LEN + 1], b[MAMID_TEXT_LEN + 1];
    mamid_format(1000, a);
    mamid_format(5000, b);
    char *fields = xasprintf(FORM(NS_MAM_2, "<field var='after-id'><value>%s</value></field>"
                                            "<field var='before-id'><value>%s</value></field>"
                                            "<field var='ids'><value>%s</value><value>%s</value></field>")
                             "<flip-page/>", a, b, a, b);
    assert_int_equal(parse(NS_MAM_2, fields, &q, &cond), 0);
    free(fields);
    assert_true(q.lo == 1000);
    assert_true(q.hi == 5000);
    assert_int_equal(q.nids, 2);
    assert_true(q.ids[0] == 1000 && q.ids[1] == 5000);
    assert_true(q.flip);
    mam_query_release(&q);
    /* The extended fields are :2 only. */
    fields = xasprintf(FORM(NS_MAM_1, "<field var='after-id'><value>%s</value></field>"), a);
    assert_int_equal(parse(NS_MAM_1, fields, &q, &cond), -1);
    free(fields);
    assert_string_equal(cond, "feature-not-implemented");
    /* A malformed id is an unknown one. */
    assert_int_equal(parse(NS_MAM_2, FORM(NS_MAM_2, "<field var='after-id'><value>nope</value></field>"), &q, &cond),
                     -1);
    assert_string_equal(cond, "item-not-found");
}

static void test_form_errors(void **state)
{
    (void)state;
    struct mam_query q;
    const char *cond = NULL;
    assert_int_equal(parse(NS_MAM_2, FORM(NS_MAM_2, "<field var='colour'><value>red</value></field>"), &q, &cond), -1);
    assert_string_equal(cond, "feature-not-implemented");
    assert_int_equal(parse(NS_MAM_2, FORM(NS_MAM_2, "<field var='start'><value>yesterday</value></field>"), &q, &cond),
                     -1);
    assert_string_equal(cond, "bad-request");
    assert_int_equal(parse(NS_MAM_2, FORM(NS_MAM_2, "<field var='with'><value>@@</value></field>"), &q, &cond), -1);
    assert_string_equal(cond, "bad-request");
    /* FORM_TYPE of another namespace, a field without var. */
    assert_int_equal(parse(NS_MAM_2, FORM(NS_MAM_1, ""), &q, &cond), -1);
    assert_string_equal(cond, "bad-request");
    assert_int_equal(parse(NS_MAM_2, FORM(NS_MAM_2, "<field><value>x</value></field>"), &q, &cond), -1);
    assert_string_equal(cond, "bad-request");
    assert_int_equal(parse(NS_MAM_2, "<x xmlns='jabber:x:data' type='cancel'/>", &q, &cond), -1);
    assert_string_equal(cond, "bad-request");
}

static void test_rsm(void **state)
{
    (void)state;
    struct mam_query q;
    const char *cond = NULL;
    char a[MAMID_TEXT_LEN + 1];
    mamid_format(77777, a);
    char *s = xasprintf("<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>%s</after></set>", a);
    assert_int_equal(parse(NS_MAM_2, s, &q, &cond), 0);
    free(s);
    assert_int_equal(q.max, 10);
    assert_true(q.has_after && q.after == 77777);
    mam_query_release(&q);
    /* Capped max; empty before = last page; index. */
    assert_int_equal(parse(NS_MAM_2, "<set xmlns='http://jabber.org/protocol/rsm'><max>100000</max><before/>"
                                     "<index>3</index></set>", &q, &cond), 0);
    assert_int_equal(q.max, 50);
    assert_true(q.has_before && q.before_last_page);
    assert_true(q.has_index && q.index == 3);
    mam_query_release(&q);
    assert_int_equal(parse(NS_MAM_2, "<set xmlns='http://jabber.org/protocol/rsm'><max>0</max></set>", &q, &cond), 0);
    assert_int_equal(q.max, 0);
    mam_query_release(&q);
    assert_int_equal(parse(NS_MAM_2, "<set xmlns='http://jabber.org/protocol/rsm'><max>-1</max></set>", &q, &cond), -1);
    assert_string_equal(cond, "bad-request");
    assert_int_equal(parse(NS_MAM_2, "<set xmlns='http://jabber.org/protocol/rsm'><after>zzz</after></set>", &q, &cond),
                     -1);
    assert_string_equal(cond, "item-not-found");
    assert_int_equal(parse(NS_MAM_2, "<set xmlns='http://jabber.org/protocol/rsm'><before>0000000000000</before></set>",
                           &q, &cond), -1);
    assert_string_equal(cond, "item-not-found");
}

static void test_legacy(void **state)
{
    (void)state;
    struct mam_query q;
    const char *cond = NULL;
    assert_int_equal(parse(NS_MAM_TMP, "<with>romeo@montague.lit</with><start>2010-07-10T23:08:25Z</start>", &q, &cond),
                     0);
    assert_string_equal(q.with_bare, "romeo@montague.lit");
    assert_true(q.lo == mamid_min_at(UINT64_C(1278803305000000)) - 1);
    mam_query_release(&q);
    /* :1 and :2 ignore (and do not accept as fields) legacy children: they are just not filters. */
    assert_int_equal(parse(NS_MAM_2, "<with>romeo@montague.lit</with>", &q, &cond), 0);
    assert_null(q.with_bare);
    mam_query_release(&q);
}

static void test_fts5(void **state)
{
    (void)state;
    char *s = mam_fts5_query("  hello  wor\"ld ");
    assert_string_equal(s, "\"hello\" \"wor\"\"ld\"");
    free(s);
    assert_null(mam_fts5_query("   "));
    assert_null(mam_fts5_query(NULL));
    s = mam_fts5_query("OR NEAR( * ^x");
    assert_string_equal(s, "\"OR\" \"NEAR(\" \"*\" \"^x\"");
    free(s);
}

static void test_prefs(void **state)
{
    (void)state;
    struct xml_node *n = doc("<prefs xmlns='urn:xmpp:mam:2' default='roster'><always><jid>Romeo@Montague.lit</jid>"
                             "</always><never><jid>montague@montague.lit/Desk</jid><jid>nurse@capulet.lit</jid>"
                             "</never></prefs>");
    struct mam_prefs p;
    char text[128];
    assert_int_equal(mam_prefs_parse(n, &p, text, sizeof text), 0);
    xml_free(&n);
    assert_int_equal(p.def, MAM_DEFAULT_ROSTER);
    assert_int_equal(p.nalways, 1);
    assert_string_equal(p.always[0], "romeo@montague.lit");
    assert_int_equal(p.nnever, 2);
    assert_int_equal(mam_prefs_decide(&p, "romeo@montague.lit", "x"), MAM_VERDICT_STORE);
    assert_int_equal(mam_prefs_decide(&p, "nurse@capulet.lit", ""), MAM_VERDICT_SKIP);
    assert_int_equal(mam_prefs_decide(&p, "montague@montague.lit", "Desk"), MAM_VERDICT_SKIP);
    assert_int_equal(mam_prefs_decide(&p, "montague@montague.lit", "Phone"), MAM_VERDICT_ROSTER);
    assert_int_equal(mam_prefs_decide(&p, "other@x", ""), MAM_VERDICT_ROSTER);
    assert_int_equal(mam_prefs_decide(NULL, "other@x", ""), MAM_VERDICT_STORE);
    /* Round trip through the store's text form. */
    char *joined = mam_prefs_join(p.never, p.nnever);
    assert_string_equal(joined, "montague@montague.lit/Desk\nnurse@capulet.lit");
    char **l;
    size_t nl;
    mam_prefs_split(joined, &l, &nl);
    assert_int_equal(nl, 2);
    assert_string_equal(l[1], "nurse@capulet.lit");
    for (size_t i = 0; i < nl; i++)
        free(l[i]);
    free(l);
    free(joined);
    /* Serialized back. */
    struct xml_node *iq = xml_node_new("iq", XML_NS_CLIENT);
    mam_prefs_to_xml(&p, NS_MAM_2, iq);
    struct buf b;
    buf_init(&b);
    xml_serialize(iq, XML_NS_CLIENT, &b);
    buf_append(&b, "", 1);
    if (strstr(b.data, "<prefs xmlns=\"urn:xmpp:mam:2\" default=\"roster\"><always><jid>romeo@montague.lit") == NULL)
        fail_msg("%s", b.data);
    buf_release(&b);
    xml_free(&iq);
    mam_prefs_release(&p);
    n = doc("<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>");
    assert_int_equal(mam_prefs_parse(n, &p, text, sizeof text), -1);
    xml_free(&n);
    n = doc("<prefs xmlns='urn:xmpp:mam:2' default='never'><always><jid>@bad</jid></always></prefs>");
    assert_int_equal(mam_prefs_parse(n, &p, text, sizeof text), -1);
    xml_free(&n);
}

static void test_result_shape(void **state)
{
    (void)state;
    const char *stored = "<message from='a@x/r' to='b@x' type='chat' id='m1'><body>hi \xf0\x9f\x98\x80 &amp; &lt;</body>"
                         "<stanza-id xmlns='urn:xmpp:sid:0' by='b@x' id='00000000001f0'/></message>";
    struct mam_row row = {.id = 0x1f0, .peer = "a@x", .peer_resource = "r", .outgoing = false,
                          .stamp_us = UINT64_C(1278803305123456), .xml = stored, .xml_len = strlen(stored)};
    struct buf b;
    buf_init(&b);
    assert_int_equal(mam_result_xml(&b, MAM_NS_2, "q1", "b@x/phone", "b@x", &row, false), 0);
    struct xml_node *m = mam_parse_stanza(b.data, b.len);
    assert_non_null(m);
    assert_string_equal(m->name, "message");
    assert_string_equal(m->ns, XML_NS_CLIENT);
    assert_string_equal(xml_attr(m, "to"), "b@x/phone");
    struct xml_node *r = xml_child(m, "result", NS_MAM_2);
    assert_non_null(r);
    assert_string_equal(xml_attr(r, "queryid"), "q1");
    char idt[MAMID_TEXT_LEN + 1];
    assert_string_equal(xml_attr(r, "id"), mamid_format(0x1f0, idt));
    struct xml_node *f = xml_child(r, "forwarded", NS_FORWARD);
    assert_non_null(f);
    assert_string_equal(xml_attr(xml_child(f, "delay", "urn:xmpp:delay"), "stamp"), "2010-07-10T23:08:25.123456Z");
    struct xml_node *inner = xml_child(f, "message", XML_NS_CLIENT);
    assert_non_null(inner);
    char *body = xml_text(xml_child(inner, "body", XML_NS_CLIENT));
    assert_string_equal(body, "hi \xf0\x9f\x98\x80 & <");
    free(body);
    xml_free(&m);
    buf_release(&b);
    /* Unreadable stored bytes: nothing appended. */
    row.xml = "<message";
    row.xml_len = 8;
    buf_init(&b);
    assert_int_equal(mam_result_xml(&b, MAM_NS_2, NULL, "b@x/phone", "b@x", &row, false), -1);
    assert_int_equal(b.len, 0);
    buf_release(&b);
}

/* A room's archive: the real JID of the muc#user <item/> stays for an asker who may see
 * it and goes for one who may not; the rest of the message (and any other x) is kept. */
static void test_result_hides_real_jids(void **state)
{
    (void)state;
    const char *stored = "<message from='r@muc.x/Al' type='groupchat'><body>hi</body>"
                         "<x xmlns='jabber:x:conference' jid='r@muc.x'/>"
                         "<x xmlns='http://jabber.org/protocol/muc#user'><item jid='a@x' role='participant'/></x></message>";
    struct mam_row row = {.id = 0x2f0, .peer = "r@muc.x", .peer_resource = "Al", .stamp_us = 1000000,
                          .xml = stored, .xml_len = strlen(stored)};
    for (int hide = 0; hide <= 1; hide++) {
        struct buf b;
        buf_init(&b);
        assert_int_equal(mam_result_xml(&b, MAM_NS_2, NULL, "b@x/phone", "r@muc.x", &row, hide), 0);
        struct xml_node *m = mam_parse_stanza(b.data, b.len);
        assert_non_null(m);
        assert_string_equal(xml_attr(m, "from"), "r@muc.x");
        struct xml_node *inner = xml_child(xml_child(xml_child(m, "result", NS_MAM_2), "forwarded", NS_FORWARD),
                                           "message", XML_NS_CLIENT);
        assert_non_null(inner);
        assert_string_equal(xml_attr(inner, "from"), "r@muc.x/Al");
        struct xml_node *item = xml_child(xml_child(inner, "x", NS_MUC_USER), "item", NS_MUC_USER);
        assert_non_null(item);
        assert_string_equal(xml_attr(item, "role"), "participant");
        if (hide)
            assert_null(xml_attr(item, "jid"));
        else
            assert_string_equal(xml_attr(item, "jid"), "a@x");
        assert_string_equal(xml_attr(xml_child(inner, "x", "jabber:x:conference"), "jid"), "r@muc.x");
        xml_free(&m);
        buf_release(&b);
    }
}

static void test_owner_split(void **state)
{
    (void)state;
    char *u, *d;
    assert_int_equal(mam_split_owner("alice@example.com", &u, &d), 0);
    assert_string_equal(u, "alice");
    assert_string_equal(d, "example.com");
    free(u);
    free(d);
    assert_int_equal(mam_split_owner("example.com", &u, &d), -1);
    assert_int_equal(mam_split_owner("@example.com", &u, &d), -1);
    assert_int_equal(mam_split_owner("a@", &u, &d), -1);
    assert_int_equal(mam_split_owner("a@b/c", &u, &d), -1);
    assert_int_equal(mam_split_owner(NULL, &u, &d), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ns),          cmocka_unit_test(test_stamps),      cmocka_unit_test(test_form_filters),
        cmocka_unit_test(test_extended),    cmocka_unit_test(test_form_errors), cmocka_unit_test(test_rsm),
        cmocka_unit_test(test_legacy),      cmocka_unit_test(test_fts5),        cmocka_unit_test(test_prefs),
        cmocka_unit_test(test_result_shape),
        cmocka_unit_test(test_result_hides_real_jids), cmocka_unit_test(test_owner_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
