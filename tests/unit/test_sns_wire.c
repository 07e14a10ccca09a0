/* tests/unit/test_sns_wire.c - the SNS backend's Publish request (form body, JSON, attributes, SigV4) and its reading of SNS's replies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../pusher/sns_wire.h"
#include "buf.h"
#include "util.h"

static const int64_t t0 = 1767323045;  /* 2026-01-02T03:04:05Z */

static struct cfg_push_backend sns_cfg(void)
{
    struct cfg_push_backend c;
    memset(&c, 0, sizeof c);
    c.type = CFG_PUSH_SNS;
    c.sns_region = (char *)"eu-west-1";
    c.sns_account_id = (char *)"123456789012";
    c.sns_endpoint = (char *)"https://sns.eu-west-1.amazonaws.com/";
    c.sns_signing_region = (char *)"eu-west-1";
    c.sns_presence_topic = (char *)"presence";
    c.sns_pm_topic = (char *)"pm";
    c.sns_muc_topic = (char *)"muc";
    c.aws_access_key_id = (char *)"AKIDEXAMPLE";
    c.aws_secret_access_key = (char *)"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    return c;
}

static Mk__PushEvent event(Mk__PushEventKind kind, const char *id, const char *type, const char *body)
{
    Mk__PushEvent ev = MK__PUSH_EVENT__INIT;
    ev.kind = kind;
    ev.id = (char *)id;
    ev.stamp_us = 1767323045123456ull;
    ev.user = (char *)"alice@localhost";
    ev.from = (char *)"alice@localhost/phone";
    ev.to = (char *)"bob@localhost/laptop";
    ev.type = (char *)type;
    ev.body = (char *)(body ? body : "");
    ev.has_body = body != NULL;
    return ev;
}

static const char *header(const struct sns_request *r, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; r->headers[i] != NULL; i++)
        if (strncmp(r->headers[i], name, n) == 0 && r->headers[i][n] == ':')
            return r->headers[i] + n + 2;
    return NULL;
}

/* The expected bodies were made by Python's urllib.parse.quote(safe='-_.~') over the
 * fields, and the Authorization values by botocore's SigV4Auth (service sns) over the
 * same request at the same time: both independent of the code under test. */
static void test_presence_online(void **state)
{
    (void)state;
    struct cfg_push_backend c = sns_cfg();
    Mk__PushEvent ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_ONLINE, "c2s.0.7.42", "", NULL);
    struct sns_request r;
    char err[200] = "";
    assert_int_equal(sns_build_publish(&c, &ev, t0, &r, err, sizeof err), SNS_BUILD_OK);
    assert_string_equal(r.message, "{\"present\":true,\"user_id\":\"alice@localhost\"}");
    assert_string_equal(r.topic_arn, "arn:aws:sns:eu-west-1:123456789012:presence");
    assert_string_equal(buf_cstr(&r.body), "Action=Publish&Version=2010-03-31&TopicArn=arn%3Aaws%3Asns%3Aeu-west-1%3A123456789012%3Apresence&Message=%7B%22present%22%3Atrue%2C%22user_id%22%3A%22alice%40localhost%22%7D&MessageAttributes.entry.1.Name=event_kind&MessageAttributes.entry.1.Value.DataType=String&MessageAttributes.entry.1.Value.StringValue=online&MessageAttributes.entry.2.Name=event_id&MessageAttributes.entry.2.Value.DataType=String&MessageAttributes.entry.2.Value.StringValue=c2s.0.7.42&MessageAttributes.entry.3.Name=event_time_us&MessageAttributes.entry.3.Value.DataType=Number&MessageAttributes.entry.3.Value.StringValue=1767323045123456&MessageAttributes.entry.4.Name=user_id&MessageAttributes.entry.4.Value.DataType=String&MessageAttributes.entry.4.Value.StringValue=alice%40localhost");
    assert_string_equal(r.url, "https://sns.eu-west-1.amazonaws.com/");
    assert_string_equal(header(&r, "Host"), "sns.eu-west-1.amazonaws.com");
    assert_string_equal(header(&r, "Content-Type"), "application/x-www-form-urlencoded; charset=utf-8");
    assert_string_equal(header(&r, "X-Amz-Date"), "20260102T030405Z");
    assert_null(header(&r, "X-Amz-Security-Token"));
    assert_string_equal(header(&r, "Authorization"),
                        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260102/eu-west-1/sns/aws4_request, "
                        "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, "
                        "Signature=7ebe75f735efa5d7b0eebaae4cb7fdd53ed6c47cd2c8734789ce54e0df938d5a");
    /* No line carries the secret. */
    for (size_t i = 0; r.headers[i] != NULL; i++)
        assert_null(strstr(r.headers[i], "EXAMPLEKEY"));
    sns_request_release(&r);

    ev.kind = MK__PUSH_EVENT_KIND__PUSH_EVENT_OFFLINE;
    assert_int_equal(sns_build_publish(&c, &ev, t0, &r, err, sizeof err), SNS_BUILD_OK);
    assert_string_equal(r.message, "{\"present\":false,\"user_id\":\"alice@localhost\"}");
    assert_non_null(strstr(buf_cstr(&r.body), "&MessageAttributes.entry.1.Value.StringValue=offline&"));
    sns_request_release(&r);
}

/* A chat message with emoji, quotes, a backslash, a newline and form-special characters:
 * raw UTF-8 in the JSON, percent-encoded in the form; a configured endpoint with a port
 * and a path, another signing region, and a session token (sent and signed). */
static void test_chat_message(void **state)
{
    (void)state;
    struct cfg_push_backend c = sns_cfg();
    c.sns_endpoint = (char *)"https://127.0.0.1:8443/sns/";
    c.sns_signing_region = (char *)"us-east-2";
    c.aws_session_token = (char *)"SESSIONTOKEN";
    Mk__PushEvent ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT, "c2s.0.7.43", "chat",
                             "Hi \"Bob\" \xf0\x9f\x98\x80 & % + = \\ \n\xc3\xa9");
    ev.stamp_us = 1767323045123457ull;
    struct sns_request r;
    char err[200] = "";
    assert_int_equal(sns_build_publish(&c, &ev, t0, &r, err, sizeof err), SNS_BUILD_OK);
    assert_string_equal(r.message, "{\"from_user_id\":\"alice@localhost\",\"message\":\"Hi \\\"Bob\\\" "
                                   "\xf0\x9f\x98\x80 & % + = \\\\ \\n\xc3\xa9\",\"to_user_id\":\"bob@localhost\"}");
    assert_string_equal(r.topic_arn, "arn:aws:sns:eu-west-1:123456789012:pm");
    assert_string_equal(buf_cstr(&r.body), "Action=Publish&Version=2010-03-31&TopicArn=arn%3Aaws%3Asns%3Aeu-west-1%3A123456789012%3Apm&Message=%7B%22from_user_id%22%3A%22alice%40localhost%22%2C%22message%22%3A%22Hi%20%5C%22Bob%5C%22%20%F0%9F%98%80%20%26%20%25%20%2B%20%3D%20%5C%5C%20%5Cn%C3%A9%22%2C%22to_user_id%22%3A%22bob%40localhost%22%7D&MessageAttributes.entry.1.Name=event_kind&MessageAttributes.entry.1.Value.DataType=String&MessageAttributes.entry.1.Value.StringValue=chat&MessageAttributes.entry.2.Name=event_id&MessageAttributes.entry.2.Value.DataType=String&MessageAttributes.entry.2.Value.StringValue=c2s.0.7.43&MessageAttributes.entry.3.Name=event_time_us&MessageAttributes.entry.3.Value.DataType=Number&MessageAttributes.entry.3.Value.StringValue=1767323045123457&MessageAttributes.entry.4.Name=user_id&MessageAttributes.entry.4.Value.DataType=String&MessageAttributes.entry.4.Value.StringValue=alice%40localhost");
    assert_string_equal(header(&r, "Host"), "127.0.0.1:8443");
    assert_string_equal(header(&r, "X-Amz-Security-Token"), "SESSIONTOKEN");
    assert_string_equal(header(&r, "Authorization"),
                        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260102/us-east-2/sns/aws4_request, "
                        "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token, "
                        "Signature=3d7b199c675c165f6db555b767795d6e821433490854e8da169e7f614acc5217");
    sns_request_release(&r);
}

static void test_groupchat(void **state)
{
    (void)state;
    struct cfg_push_backend c = sns_cfg();
    Mk__PushEvent ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_GROUPCHAT, "c2s.0.7.44", "groupchat", "Hi, Everyone!");
    ev.to = (char *)"room@muc.localhost/nick";
    struct sns_request r;
    char err[200] = "";
    assert_int_equal(sns_build_publish(&c, &ev, t0, &r, err, sizeof err), SNS_BUILD_OK);
    assert_string_equal(r.message, "{\"from_user_id\":\"alice@localhost\",\"message\":\"Hi, Everyone!\","
                                   "\"to_user_id\":\"room@muc.localhost\"}");
    assert_string_equal(r.topic_arn, "arn:aws:sns:eu-west-1:123456789012:muc");
    assert_non_null(strstr(buf_cstr(&r.body), "&MessageAttributes.entry.1.Value.StringValue=groupchat&"));
    sns_request_release(&r);
}

static void expect_skip(const struct cfg_push_backend *c, const Mk__PushEvent *ev)
{
    struct sns_request r;
    char err[200] = "";
    assert_int_equal(sns_build_publish(c, ev, t0, &r, err, sizeof err), SNS_BUILD_SKIP);
    assert_null(r.url);
    assert_null(r.headers[0]);
    sns_request_release(&r);
}

static void test_skips(void **state)
{
    (void)state;
    struct cfg_push_backend c = sns_cfg();
    Mk__PushEvent ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT, "x", "normal", "hi");
    expect_skip(&c, &ev);                   /* not a chat message */
    ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT, "x", "headline", "hi");
    expect_skip(&c, &ev);
    ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT, "x", "chat", NULL);
    expect_skip(&c, &ev);                   /* no body */
    ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_DELIVERED, "x", "chat", "hi");
    expect_skip(&c, &ev);                   /* SNS publishes what users send */
    ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_STORED, "x", "chat", "hi");
    expect_skip(&c, &ev);
    c.sns_presence_topic = NULL;            /* a topic not configured */
    ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_ONLINE, "x", "", NULL);
    expect_skip(&c, &ev);
    c.sns_pm_topic = NULL;
    ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT, "x", "chat", "hi");
    expect_skip(&c, &ev);
    c.sns_muc_topic = NULL;
    ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_GROUPCHAT, "x", "groupchat", "hi");
    expect_skip(&c, &ev);
}

static void test_build_errors(void **state)
{
    (void)state;
    struct cfg_push_backend c = sns_cfg();
    c.aws_secret_access_key = NULL;
    Mk__PushEvent ev = event(MK__PUSH_EVENT_KIND__PUSH_EVENT_ONLINE, "x", "", NULL);
    struct sns_request r;
    char err[200] = "";
    assert_int_equal(sns_build_publish(&c, &ev, t0, &r, err, sizeof err), SNS_BUILD_ERROR);
    assert_non_null(strstr(err, "secret access key"));
    sns_request_release(&r);
    c = sns_cfg();
    c.sns_endpoint = (char *)"ftp://x/";
    assert_int_equal(sns_build_publish(&c, &ev, t0, &r, err, sizeof err), SNS_BUILD_ERROR);
    sns_request_release(&r);
}

static void test_json_escaping(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    static const char in[] = "a\"b\\c\x01\x1f\t\r\n\b\f\x7f/\xe2\x80\xa8\xff\xc3(\xed\xa0\x80\xf0\x9f\x98";
    sns_json_string(&b, in, sizeof in - 1);
    /* Controls escaped, DEL, '/' and U+2028 as they are; invalid bytes (0xff, a cut
     * sequence, a surrogate, a cut 4-byte sequence) become U+FFFD each. */
    assert_string_equal(buf_cstr(&b), "\"a\\\"b\\\\c\\u0001\\u001f\\t\\r\\n\\b\\f\x7f/\xe2\x80\xa8"
                                      "\xef\xbf\xbd\xef\xbf\xbd(\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                                      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
    buf_release(&b);
}

static void test_reply_parse(void **state)
{
    (void)state;
    struct sns_reply r;
    /* The shape of AWS's documented Publish response. */
    static const char ok[] =
        "<?xml version=\"1.0\"?>\n<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\n"
        "  <PublishResult>\n    <MessageId>567910cd-659e-55d4-8ccb-5aaf14679dc0</MessageId>\n  </PublishResult>\n"
        "  <ResponseMetadata>\n    <RequestId>d74b8436-ae13-5ab4-a9ff-ce54dfea72a0</RequestId>\n"
        "  </ResponseMetadata>\n</PublishResponse>\n";
    assert_int_equal(sns_reply_parse(ok, sizeof ok - 1, &r), 0);
    assert_string_equal(r.message_id, "567910cd-659e-55d4-8ccb-5aaf14679dc0");
    assert_null(r.code);
    sns_reply_release(&r);

    static const char bad[] =
        "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\n  <Error>\n    <Type>Sender</Type>\n"
        "    <Code>SignatureDoesNotMatch</Code>\n    <Message>The request signature we calculated does not match "
        "the signature you provided.</Message>\n  </Error>\n  <RequestId>x</RequestId>\n</ErrorResponse>\n";
    assert_int_equal(sns_reply_parse(bad, sizeof bad - 1, &r), 0);
    assert_null(r.message_id);
    assert_string_equal(r.code, "SignatureDoesNotMatch");
    assert_string_equal(r.message, "The request signature we calculated does not match the signature you provided.");
    assert_int_equal(sns_verdict(403, &r), SNS_VERDICT_FAIL);
    sns_reply_release(&r);

    static const char bare_error[] = "<Error><Code>Throttling</Code><Message>Rate exceeded</Message></Error>";
    assert_int_equal(sns_reply_parse(bare_error, sizeof bare_error - 1, &r), 0);
    assert_string_equal(r.code, "Throttling");
    assert_int_equal(sns_verdict(400, &r), SNS_VERDICT_RETRY);
    sns_reply_release(&r);

    /* A code with control characters and a huge message: printable, bounded. */
    struct buf big;
    buf_init(&big);
    buf_append_str(&big, "<ErrorResponse><Error><Code>A&#10;B</Code><Message>\"q\"");
    for (int i = 0; i < 5000; i++)
        buf_append_str(&big, "x");
    buf_append_str(&big, "</Message></Error></ErrorResponse>");
    assert_int_equal(sns_reply_parse(big.data, big.len, &r), 0);
    assert_string_equal(r.code, "A\\x0aB");
    assert_int_equal(strlen(r.message), 256 + 6);
    assert_memory_equal(r.message, "\\x22q\\x22xxx", 12);   /* a quote would end a quoted log value */
    sns_reply_release(&r);
    buf_release(&big);

    static const char *const not_sns[] = {
        "", "not xml", "<html><body>502 Bad Gateway</body></html>", "<PublishResponse/>",
        "<PublishResponse><PublishResult/></PublishResponse>", "<ErrorResponse><Error/></ErrorResponse>",
        "<!DOCTYPE x [<!ENTITY a 'b'>]><ErrorResponse><Error><Code>&a;</Code></Error></ErrorResponse>",
        "<ErrorResponse><Error><Code>x</Code>",
    };
    for (size_t i = 0; i < MK_ARRAY_LEN(not_sns); i++) {
        if (sns_reply_parse(not_sns[i], strlen(not_sns[i]), &r) != -1)
            fail_msg("took \"%s\" for an SNS reply", not_sns[i]);
        assert_null(r.message_id);
        assert_null(r.code);
        sns_reply_release(&r);
    }
}

static void test_verdict(void **state)
{
    (void)state;
    struct sns_reply code = { NULL, (char *)"InvalidClientTokenId", NULL };
    assert_int_equal(sns_verdict(200, NULL), SNS_VERDICT_OK);
    assert_int_equal(sns_verdict(204, NULL), SNS_VERDICT_OK);
    assert_int_equal(sns_verdict(0, NULL), SNS_VERDICT_RETRY);      /* connection error, timeout */
    assert_int_equal(sns_verdict(500, NULL), SNS_VERDICT_RETRY);
    assert_int_equal(sns_verdict(503, NULL), SNS_VERDICT_RETRY);
    assert_int_equal(sns_verdict(429, NULL), SNS_VERDICT_RETRY);
    assert_int_equal(sns_verdict(403, &code), SNS_VERDICT_FAIL);
    assert_int_equal(sns_verdict(400, NULL), SNS_VERDICT_FAIL);
    assert_int_equal(sns_verdict(404, NULL), SNS_VERDICT_FAIL);
    assert_int_equal(sns_verdict(301, NULL), SNS_VERDICT_FAIL);
    code.code = (char *)"ThrottlingException";
    assert_int_equal(sns_verdict(400, &code), SNS_VERDICT_RETRY);
    code.code = (char *)"InternalError";
    assert_int_equal(sns_verdict(400, &code), SNS_VERDICT_RETRY);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_presence_online),
        cmocka_unit_test(test_chat_message),
        cmocka_unit_test(test_groupchat),
        cmocka_unit_test(test_skips),
        cmocka_unit_test(test_build_errors),
        cmocka_unit_test(test_json_escaping),
        cmocka_unit_test(test_reply_parse),
        cmocka_unit_test(test_verdict),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
