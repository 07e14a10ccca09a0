/* tests/unit/test_xep0357_wire.c - the XEP-0357 backend's publish IQ, MongoosePush request and answer verdicts, byte for byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../pusher/xep0357_wire.h"
#include "buf.h"

#define FORM "<x xmlns='jabber:x:data' type='submit'><field var='service'><value>apns</value></field>" \
             "<field var='device_id'><value>tok/1+2 &amp;\xc3\xa9</value></field>"                 \
             "<field var='topic'><value>com.app</value></field></x>"

static char *str(struct buf *b)
{
    char *s = malloc(b->len + 1);
    memcpy(s, b->data, b->len);
    s[b->len] = '\0';
    return s;
}

static void test_reg_form(void **state)
{
    (void)state;
    struct xep_reg r;
    assert_int_equal(xep_reg_init(&r, "pubsub.app", "node1", FORM), 0);
    assert_int_equal(r.nfields, 3);
    assert_string_equal(r.vars[1], "device_id");
    assert_string_equal(xep_reg_option(&r, "device_id"), "tok/1+2 &\xc3\xa9");
    assert_null(xep_reg_option(&r, "mode"));
    xep_reg_release(&r);
    assert_int_equal(xep_reg_init(&r, "p", "n", ""), 0);
    assert_int_equal(r.nfields, 0);
    xep_reg_release(&r);
    assert_int_equal(xep_reg_init(&r, "p", "n", "<x"), -1);
    xep_reg_release(&r);
}

static void test_publish_iq(void **state)
{
    (void)state;
    struct xep_reg r;
    assert_int_equal(xep_reg_init(&r, "pubsub.app", "n<1>", FORM), 0);
    struct xep_summary sum = {3, "alice@localhost", "hi & <bye> \xf0\x9f\x98\x80"};
    struct buf b;
    buf_init(&b);
    xep_publish_iq(&b, "localhost", "mkpush-pusher.0-7", &r, &sum);
    char *s = str(&b);
    assert_string_equal(
        s, "<iq type=\"set\" id=\"mkpush-pusher.0-7\" from=\"localhost\" to=\"pubsub.app\">"
           "<pubsub xmlns=\"http://jabber.org/protocol/pubsub\"><publish node=\"n&lt;1&gt;\"><item>"
           "<notification xmlns=\"urn:xmpp:push:0\"><x xmlns=\"jabber:x:data\" type=\"submit\">"
           "<field var=\"FORM_TYPE\"><value>urn:xmpp:push:summary</value></field>"
           "<field var=\"message-count\"><value>3</value></field>"
           "<field var=\"last-message-sender\"><value>alice@localhost</value></field>"
           "<field var=\"last-message-body\"><value>hi &amp; &lt;bye&gt; \xf0\x9f\x98\x80</value></field>"
           "</x></notification></item></publish><publish-options><x xmlns=\"jabber:x:data\" type=\"submit\">"
           "<field var=\"FORM_TYPE\"><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
           "<field var=\"service\"><value>apns</value></field>"
           "<field var=\"device_id\"><value>tok/1+2 &amp;\xc3\xa9</value></field>"
           "<field var=\"topic\"><value>com.app</value></field></x></publish-options></pubsub></iq>");
    free(s);
    xep_reg_release(&r);
    /* No options: no publish-options. */
    assert_int_equal(xep_reg_init(&r, "pubsub.app", "n", ""), 0);
    buf_release(&b);
    buf_init(&b);
    xep_publish_iq(&b, "localhost", "i", &r, &sum);
    s = str(&b);
    assert_null(strstr(s, "publish-options"));
    assert_non_null(strstr(s, "</publish></pubsub></iq>"));
    free(s);
    xep_reg_release(&r);
    buf_release(&b);
}

static void test_mpush_alert(void **state)
{
    (void)state;
    struct xep_reg r;
    assert_int_equal(xep_reg_init(&r, "mpush", "n",
                                  "<x xmlns='jabber:x:data'><field var='service'><value>fcm</value></field>"
                                  "<field var='device_id'><value>a b/c%</value></field>"
                                  "<field var='priority'><value>high</value></field>"
                                  "<field var='time_to_live'><value>3600</value></field>"
                                  "<field var='click_action'><value>open</value></field></x>"),
                     0);
    struct xep_summary sum = {2, "alice@localhost", "say \"hi\"\\\n\xf0\x9f\x98\x80"};
    struct buf url, json;
    buf_init(&url);
    buf_init(&json);
    char err[128];
    assert_int_equal(xep_mpush_request(&url, &json, "http://127.0.0.1:8443/", "v3", &r, &sum, err, sizeof err), 0);
    char *u = str(&url), *j = str(&json);
    assert_string_equal(u, "http://127.0.0.1:8443/v3/notification/a%20b%2Fc%25");
    assert_string_equal(j, "{\"service\":\"fcm\",\"mode\":\"prod\",\"priority\":\"high\",\"time_to_live\":3600,"
                           "\"alert\":{\"title\":\"alice@localhost\",\"body\":\"say \\\"hi\\\"\\\\\\u000a"
                           "\xf0\x9f\x98\x80\",\"badge\":2,\"tag\":\"alice@localhost\",\"click_action\":\"open\"}}");
    free(u);
    free(j);
    xep_reg_release(&r);
    buf_release(&url);
    buf_release(&json);
}

static void test_mpush_silent_v2(void **state)
{
    (void)state;
    struct xep_reg r;
    assert_int_equal(xep_reg_init(&r, "mpush", "n",
                                  "<x xmlns='jabber:x:data'><field var='device_id'><value>tok</value></field>"
                                  "<field var='service'><value>apns</value></field>"
                                  "<field var='mode'><value>dev</value></field>"
                                  "<field var='time_to_live'><value>soon</value></field>"
                                  "<field var='topic'><value>com.x</value></field>"
                                  "<field var='silent'><value>true</value></field></x>"),
                     0);
    struct xep_summary sum = {1, "bob@localhost", "yo"};
    struct buf url, json;
    buf_init(&url);
    buf_init(&json);
    char err[128];
    assert_int_equal(xep_mpush_request(&url, &json, "https://mp", "v2", &r, &sum, err, sizeof err), 0);
    char *u = str(&url), *j = str(&json);
    assert_string_equal(u, "https://mp/v2/notification/tok");
    assert_string_equal(j, "{\"service\":\"apns\",\"mode\":\"dev\",\"topic\":\"com.x\",\"data\":{\"message-count\":1,"
                           "\"last-message-sender\":\"bob@localhost\",\"last-message-body\":\"yo\"}}");
    free(u);
    free(j);
    xep_reg_release(&r);
    buf_release(&url);
    buf_release(&json);
    /* No device_id: refused with a reason. */
    assert_int_equal(xep_reg_init(&r, "mpush", "n", "<x xmlns='jabber:x:data'><field var='service'><value>fcm</value></field></x>"), 0);
    buf_init(&url);
    buf_init(&json);
    assert_int_equal(xep_mpush_request(&url, &json, "https://mp", "v3", &r, &sum, err, sizeof err), -1);
    assert_non_null(strstr(err, "device_id"));
    xep_reg_release(&r);
    buf_release(&url);
    buf_release(&json);
}

static void test_verdicts(void **state)
{
    (void)state;
    assert_int_equal(xep_mpush_verdict(200), XEP_VERDICT_OK);
    assert_int_equal(xep_mpush_verdict(204), XEP_VERDICT_OK);
    assert_int_equal(xep_mpush_verdict(410), XEP_VERDICT_DISABLE);
    assert_int_equal(xep_mpush_verdict(429), XEP_VERDICT_RETRY);
    assert_int_equal(xep_mpush_verdict(503), XEP_VERDICT_RETRY);
    assert_int_equal(xep_mpush_verdict(500), XEP_VERDICT_RETRY);
    assert_int_equal(xep_mpush_verdict(0), XEP_VERDICT_RETRY);
    assert_int_equal(xep_mpush_verdict(400), XEP_VERDICT_FAIL);
    assert_int_equal(xep_mpush_verdict(422), XEP_VERDICT_FAIL);
    const char *cond;
    assert_int_equal(xep_iq_verdict("result", NULL, 0, &cond), XEP_VERDICT_OK);
#define ERR(t, c) "<iq type='error' id='x'><error type='" t "'><" c " xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" \
                  "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>t</text></error></iq>"
    static const char e1[] = ERR("cancel", "not-acceptable");
    assert_int_equal(xep_iq_verdict("error", e1, sizeof e1 - 1, &cond), XEP_VERDICT_DISABLE);
    assert_string_equal(cond, "not-acceptable");
    static const char e2[] = ERR("cancel", "item-not-found");
    assert_int_equal(xep_iq_verdict("error", e2, sizeof e2 - 1, &cond), XEP_VERDICT_DISABLE);
    static const char e3[] = ERR("wait", "resource-constraint");
    assert_int_equal(xep_iq_verdict("error", e3, sizeof e3 - 1, &cond), XEP_VERDICT_RETRY);
    static const char e4[] = ERR("cancel", "remote-server-not-found");
    assert_int_equal(xep_iq_verdict("error", e4, sizeof e4 - 1, &cond), XEP_VERDICT_RETRY);
    static const char e5[] = ERR("modify", "bad-request");
    assert_int_equal(xep_iq_verdict("error", e5, sizeof e5 - 1, &cond), XEP_VERDICT_FAIL);
    assert_string_equal(cond, "bad-request");
    static const char e6[] = ERR("cancel", "made-up");
    assert_int_equal(xep_iq_verdict("error", e6, sizeof e6 - 1, &cond), XEP_VERDICT_DISABLE);
    assert_string_equal(cond, "other");
    static const char junk[] = "<iq type='error'><error";
    assert_int_equal(xep_iq_verdict("error", junk, sizeof junk - 1, &cond), XEP_VERDICT_RETRY);
    assert_int_equal(xep_iq_verdict("error", NULL, 0, &cond), XEP_VERDICT_RETRY);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reg_form),
        cmocka_unit_test(test_publish_iq),
        cmocka_unit_test(test_mpush_alert),
        cmocka_unit_test(test_mpush_silent_v2),
        cmocka_unit_test(test_verdicts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
