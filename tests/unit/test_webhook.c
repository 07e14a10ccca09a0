/* tests/unit/test_webhook.c - the webhook backend: form encoding, JSON escaping, the HMAC, and each response's outcome against a real HTTP server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <curl/curl.h>

#include "../../pusher/pusher.h"
#include "../../pusher/webhook.h"
#include "buf.h"
#include "http_srv.h"
#include "loop_until.h"
#include "util.h"

/* ---- the core's job interface, played by the test ------------------------------------ */

struct push_job {
    Mk__PushEvent ev;
    int finished;
    enum push_outcome outcome;
    long retry_after_ms;
    char why[200];
};

const Mk__PushEvent *push_job_event(const struct push_job *job)
{
    return &job->ev;
}

unsigned push_job_attempt(const struct push_job *job)
{
    (void)job;
    return 0;
}

void push_job_finish(struct push_job *job, enum push_outcome o, long retry_after_ms, const char *why)
{
    job->finished++;
    job->outcome = o;
    job->retry_after_ms = retry_after_ms;
    snprintf(job->why, sizeof job->why, "%s", why != NULL ? why : "");
}

static void chat_event(Mk__PushEvent *ev, const char *body)
{
    mk__push_event__init(ev);
    ev->kind = MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT;
    ev->id = "c2s.0.7.42";
    ev->stamp_us = 1764718241123456ull;   /* 2025-12-02T23:30:41.123456Z */
    ev->user = "alice@localhost";
    ev->from = "alice@localhost/phone";
    ev->to = "bob@localhost";
    ev->type = "chat";
    ev->body = (char *)body;
    ev->has_body = body[0] != '\0';
}

/* ---- pure parts ------------------------------------------------------------------- */

static char *form(const char *s)
{
    struct buf b;
    buf_init(&b);
    webhook_form_encode(&b, s, strlen(s));
    buf_append(&b, "", 1);
    return b.data;
}

static void test_form_encode(void **state)
{
    (void)state;
    char *s = form("Hi, Bob!");
    assert_string_equal(s, "Hi%2C+Bob%21");
    free(s);
    /* cow_qs keeps only A-Z a-z 0-9 - . _ (not ~ nor *), space is +, UTF-8 byte by byte. */
    s = form("AZaz09-._ ~*%&+=/?\xF0\x9F\x98\x80\xC3\xA9\n");
    assert_string_equal(s, "AZaz09-._+%7E%2A%25%26%2B%3D%2F%3F%F0%9F%98%80%C3%A9%0A");
    free(s);
    s = form("");
    assert_string_equal(s, "");
    free(s);
}

static void test_form_body(void **state)
{
    (void)state;
    Mk__PushEvent ev;
    chat_event(&ev, "Hi \xF0\x9F\x98\x80 % & + =");
    struct buf b;
    buf_init(&b);
    assert_int_equal(webhook_form_body(&ev, &b), 0);
    assert_string_equal(buf_cstr(&b), "author=alice&server=localhost&receiver=bob&message=Hi+%F0%9F%98%80+%25+%26+%2B+%3D");
    /* receiver is the recipient's localpart, whatever its resource or domain */
    buf_reset(&b);
    ev.to = "carol@other.example/desk";
    ev.from = "alice@localhost";
    assert_int_equal(webhook_form_body(&ev, &b), 0);
    assert_string_equal(buf_cstr(&b), "author=alice&server=localhost&receiver=carol&message=Hi+%F0%9F%98%80+%25+%26+%2B+%3D");
    /* Only SENT chat messages with a body. */
    buf_reset(&b);
    ev.type = "groupchat";
    assert_int_equal(webhook_form_body(&ev, &b), -1);
    ev.type = "";
    assert_int_equal(webhook_form_body(&ev, &b), -1);
    ev.type = "chat";
    ev.kind = MK__PUSH_EVENT_KIND__PUSH_EVENT_DELIVERED;
    assert_int_equal(webhook_form_body(&ev, &b), -1);
    ev.kind = MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT;
    ev.body = "";
    ev.has_body = false;
    assert_int_equal(webhook_form_body(&ev, &b), -1);
    assert_int_equal(b.len, 0);
    buf_release(&b);
}

static void test_json_string(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    const char in[] = "a\"b\\c/\n\r\t\b\f\x01\x1f\x7f \xC3\xA9\xF0\x9F\x98\x80";
    webhook_json_string(&b, in, sizeof in - 1);
    assert_string_equal(buf_cstr(&b),
                        "\"a\\\"b\\\\c/\\n\\r\\t\\b\\f\\u0001\\u001f\x7f \xC3\xA9\xF0\x9F\x98\x80\"");
    /* A NUL inside the value is escaped, not a terminator. */
    buf_reset(&b);
    webhook_json_string(&b, "x\0y", 3);
    assert_int_equal(b.len, 10);
    assert_memory_equal(b.data, "\"x\\u0000y\"", 10);
    buf_release(&b);
}

static void test_json_body(void **state)
{
    (void)state;
    Mk__PushEvent ev;
    chat_event(&ev, "say \"hi\"\n");
    struct buf b;
    buf_init(&b);
    webhook_json_body(&ev, &b);
    assert_string_equal(buf_cstr(&b),
                        "{\"kind\":\"sent\",\"id\":\"c2s.0.7.42\",\"timestamp\":\"2025-12-02T23:30:41.123456Z\","
                        "\"stamp_us\":1764718241123456,\"user\":\"alice@localhost\",\"from\":\"alice@localhost/phone\","
                        "\"to\":\"bob@localhost\",\"type\":\"chat\",\"body\":\"say \\\"hi\\\"\\n\",\"direction\":\"in\","
                        "\"unavailable\":false,\"mam_id\":null}");
    buf_reset(&b);
    ev.kind = MK__PUSH_EVENT_KIND__PUSH_EVENT_STORED;
    ev.type = "";
    ev.unavailable = true;
    ev.mam_id = 1;
    ev.user = "bob@localhost";
    webhook_json_body(&ev, &b);
    assert_non_null(strstr(buf_cstr(&b), "\"kind\":\"stored\""));
    assert_non_null(strstr(buf_cstr(&b), "\"type\":\"normal\""));
    assert_non_null(strstr(buf_cstr(&b), "\"direction\":\"out\",\"unavailable\":true,\"mam_id\":\"0000000000001\"}"));
    buf_reset(&b);
    ev.kind = MK__PUSH_EVENT_KIND__PUSH_EVENT_ONLINE;
    ev.body = "";
    ev.has_body = false;
    ev.mam_id = 0;
    webhook_json_body(&ev, &b);
    assert_non_null(strstr(buf_cstr(&b), "\"kind\":\"online\""));
    assert_non_null(strstr(buf_cstr(&b), "\"type\":\"\",\"body\":null,\"direction\":null"));
    /* Every field of the timestamp zero-padded: 2001-02-03T04:05:06.000007Z. */
    buf_reset(&b);
    ev.stamp_us = 981173106000007ull;
    webhook_json_body(&ev, &b);
    assert_non_null(strstr(buf_cstr(&b), ",\"timestamp\":\"2001-02-03T04:05:06.000007Z\",\"stamp_us\":981173106000007,"));
    buf_reset(&b);
    ev.stamp_us = 0;
    webhook_json_body(&ev, &b);
    assert_non_null(strstr(buf_cstr(&b), ",\"timestamp\":\"1970-01-01T00:00:00.000000Z\",\"stamp_us\":0,"));
    buf_release(&b);
}

static void test_signature(void **state)
{
    (void)state;
    char sig[WEBHOOK_SIGNATURE_LEN + 1];
    /* RFC 4231 test case 2 */
    const char data[] = "what do ya want for nothing?";
    webhook_signature("Jefe", data, sizeof data - 1, sig);
    assert_string_equal(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    assert_int_equal(strlen(sig), WEBHOOK_SIGNATURE_LEN);
}

/* ---- the backend against a server ---------------------------------------------------- */

struct rig {
    struct ev_loop *loop;
    struct srv srv;
    struct cfg_push_backend cfg;
    struct push_backend b;
    char *url;
};

static void rig_start(struct rig *r, enum cfg_push_format format, const char *secret)
{
    memset(r, 0, sizeof *r);
    r->loop = ev_loop_new(EVFLAG_AUTO);
    srv_start(&r->srv, r->loop);
    r->url = xasprintf("http://127.0.0.1:%d/notify/here?k=v", r->srv.port);
    r->cfg.name = "hook";
    r->cfg.type = CFG_PUSH_HTTP;
    r->cfg.connect_timeout_ms = 2000;
    r->cfg.timeout_ms = 400;
    r->cfg.max_connections = 2;
    r->cfg.tls_verify = true;
    r->cfg.url = r->url;
    r->cfg.format = format;
    r->cfg.secret = (char *)secret;
    char err[200];
    r->b.ops = &push_http_ops;
    r->b.cfg = &r->cfg;
    r->b.loop = r->loop;
    r->b.http = http_pool_new(r->loop, &r->cfg, "hook", err, sizeof err);
    assert_non_null(r->b.http);
    assert_int_equal(push_http_ops.init(&r->b, err, sizeof err), 0);
}

static void rig_stop(struct rig *r)
{
    push_http_ops.fini(&r->b);
    http_pool_free(&r->b.http);
    srv_stop(&r->srv);
    ev_loop_destroy(r->loop);
    free(r->url);
}

static bool job_finished(void *arg)
{
    return ((struct push_job *)arg)->finished > 0;
}

static void run_job(struct rig *r, struct push_job *job)
{
    job->finished = 0;
    push_http_ops.attempt(&r->b, job);
    assert_true(run_until(r->loop, job_finished, job, 10));
    assert_int_equal(job->finished, 1);
}

static void test_backend_form(void **state)
{
    (void)state;
    struct rig r;
    rig_start(&r, CFG_PUSH_FORM, NULL);
    struct push_job job = { 0 };
    chat_event(&job.ev, "Hi \xF0\x9F\x98\x80 % & + =");
    run_job(&r, &job);
    assert_int_equal(job.outcome, PUSH_OK);
    const char *head = buf_cstr(&r.srv.last_head);
    assert_non_null(strstr(head, "POST /notify/here?k=v HTTP/1.1\r\n"));
    assert_non_null(strstr(head, "\r\nContent-Type: application/x-www-form-urlencoded\r\n"));
    assert_null(strstr(head, "X-Meerkat-Signature"));
    assert_string_equal(buf_cstr(&r.srv.last_body),
                        "author=alice&server=localhost&receiver=bob&message=Hi+%F0%9F%98%80+%25+%26+%2B+%3D");
    /* Not a chat message: skipped, nothing sent. */
    int before = r.srv.requests;
    job.ev.type = "headline";
    job.finished = 0;
    push_http_ops.attempt(&r.b, &job);
    assert_int_equal(job.finished, 1);
    assert_int_equal(job.outcome, PUSH_SKIP);
    assert_int_equal(r.srv.requests, before);
    rig_stop(&r);
}

static void test_backend_json(void **state)
{
    (void)state;
    struct rig r;
    rig_start(&r, CFG_PUSH_JSON, "s3cret");
    struct push_job job = { 0 };
    chat_event(&job.ev, "x");
    job.ev.kind = MK__PUSH_EVENT_KIND__PUSH_EVENT_OFFLINE;
    run_job(&r, &job);
    assert_int_equal(job.outcome, PUSH_OK);
    struct buf want;
    buf_init(&want);
    webhook_json_body(&job.ev, &want);
    assert_string_equal(buf_cstr(&r.srv.last_body), buf_cstr(&want));
    char sig[WEBHOOK_SIGNATURE_LEN + 1];
    webhook_signature("s3cret", want.data, want.len, sig);
    char line[128];
    snprintf(line, sizeof line, "\r\nX-Meerkat-Signature: %s\r\n", sig);
    const char *head = buf_cstr(&r.srv.last_head);
    assert_non_null(strstr(head, line));
    assert_non_null(strstr(head, "\r\nContent-Type: application/json\r\n"));
    /* The next events reuse the keyed HMAC context: each signature is still its body's. */
    for (int i = 0; i < 3; i++) {
        job.ev.kind = MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT;
        job.ev.body = i == 0 ? "second" : i == 1 ? "third \xF0\x9F\x98\x80" : "";
        job.ev.has_body = i < 2;
        run_job(&r, &job);
        assert_int_equal(job.outcome, PUSH_OK);
        buf_reset(&want);
        webhook_json_body(&job.ev, &want);
        assert_string_equal(buf_cstr(&r.srv.last_body), buf_cstr(&want));
        webhook_signature("s3cret", want.data, want.len, sig);
        snprintf(line, sizeof line, "\r\nX-Meerkat-Signature: %s\r\n", sig);
        assert_non_null(strstr(buf_cstr(&r.srv.last_head), line));
    }
    buf_release(&want);
    rig_stop(&r);
}

static void test_backend_outcomes(void **state)
{
    (void)state;
    struct rig r;
    rig_start(&r, CFG_PUSH_FORM, NULL);
    struct push_job job = { 0 };
    chat_event(&job.ev, "hello");
    r.srv.mode = SRV_STATUS;

    r.srv.status = 204;
    run_job(&r, &job);
    assert_int_equal(job.outcome, PUSH_OK);

    r.srv.status = 500;
    run_job(&r, &job);
    assert_int_equal(job.outcome, PUSH_RETRY);
    assert_int_equal(job.retry_after_ms, -1);
    assert_string_equal(job.why, "HTTP 500");

    r.srv.status = 429;
    r.srv.extra_headers = "Retry-After: 3\r\n";
    run_job(&r, &job);
    assert_int_equal(job.outcome, PUSH_RETRY);
    assert_int_equal(job.retry_after_ms, 3000);

    r.srv.status = 503;
    run_job(&r, &job);
    assert_int_equal(job.outcome, PUSH_RETRY);
    assert_int_equal(job.retry_after_ms, 3000);
    r.srv.extra_headers = NULL;

    r.srv.status = 404;
    run_job(&r, &job);
    assert_int_equal(job.outcome, PUSH_FAIL);
    assert_string_equal(job.why, "HTTP 404");

    r.srv.status = 400;
    run_job(&r, &job);
    assert_int_equal(job.outcome, PUSH_FAIL);

    /* A receiver that hangs: the timeout is temporary. */
    r.srv.mode = SRV_HANG;
    run_job(&r, &job);
    assert_int_equal(job.outcome, PUSH_RETRY);
    assert_true(job.why[0] != '\0');

    /* Nobody listening: temporary too. */
    srv_stop(&r.srv);
    srv_start(&r.srv, r.loop);
    int port = r.srv.port;
    srv_stop(&r.srv);
    char *url = xasprintf("http://127.0.0.1:%d/", port);
    r.cfg.url = url;
    push_http_ops.fini(&r.b);
    char err[200];
    assert_int_equal(push_http_ops.init(&r.b, err, sizeof err), 0);
    run_job(&r, &job);
    assert_int_equal(job.outcome, PUSH_RETRY);
    srv_start(&r.srv, r.loop);   /* for rig_stop */
    rig_stop(&r);
    free(url);
}

static void test_backend_init_refusals(void **state)
{
    (void)state;
    struct cfg_push_backend cfg = { .name = "hook", .format = CFG_PUSH_JSON, .url = "http://127.0.0.1:1/" };
    struct push_backend b = { .ops = &push_http_ops, .cfg = &cfg };
    char err[200] = "";
    assert_int_equal(push_http_ops.init(&b, err, sizeof err), -1);
    assert_string_equal(err, "hook: format json needs a secret (secret_file or secret_env)");
    cfg.url = NULL;
    assert_int_equal(push_http_ops.init(&b, err, sizeof err), -1);
    assert_string_equal(err, "hook: url is required");
    assert_null(b.state);
}

int main(void)
{
    assert_int_equal(http_global_init(), 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_form_encode),
        cmocka_unit_test(test_form_body),
        cmocka_unit_test(test_json_string),
        cmocka_unit_test(test_json_body),
        cmocka_unit_test(test_signature),
        cmocka_unit_test(test_backend_form),
        cmocka_unit_test(test_backend_json),
        cmocka_unit_test(test_backend_outcomes),
        cmocka_unit_test(test_backend_init_refusals),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
