/* tests/unit/test_ws.c - c2s/ws.c: the RFC 6455 frame parser (masking, fragmentation, limits, UTF-8, control frames, any split), the upgrade and host-meta answers, and the RFC 7395 translation both ways. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../c2s/ws.h"
#include "buf.h"

/* A masked client frame. */
static void client_frame(struct buf *out, unsigned b0, const void *p, size_t n)
{
    static const unsigned char key[4] = {0x12, 0x34, 0x56, 0x78};
    unsigned char h[14];
    size_t hl;
    h[0] = (unsigned char)b0;
    if (n < 126) {
        h[1] = (unsigned char)(0x80 | n);
        hl = 2;
    } else if (n <= 0xFFFF) {
        h[1] = 0x80 | 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    memcpy(h + hl, key, 4);
    buf_append(out, h, hl + 4);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = ((const unsigned char *)p)[i] ^ key[i & 3];
        buf_append(out, &c, 1);
    }
}

struct events {
    struct buf log;   /* "op:payload|" per event */
    int stop_after;   /* stop the feed after this many events (0: never) */
    int n;
};

static int on_ev(void *ud, enum ws_opcode op, const char *data, size_t n, unsigned code)
{
    struct events *e = ud;
    buf_printf(&e->log, "%d:", (int)op);
    if (op == WS_OP_CLOSE)
        buf_printf(&e->log, "%u:", code);
    buf_append(&e->log, data, n);
    buf_append_str(&e->log, "|");
    e->n++;
    return e->stop_after != 0 && e->n >= e->stop_after;
}

/* Feeds wire in pieces of step bytes; returns the feed result of the last piece. */
static int feed(struct ws_parser *p, const struct buf *wire, size_t step, struct events *e)
{
    int rc = 0;
    for (size_t i = 0; i < wire->len && rc == 0; i += step) {
        size_t k = wire->len - i < step ? wire->len - i : step;
        rc = ws_parser_feed(p, wire->data + i, k, on_ev, e);
    }
    return rc;
}

static void test_messages_any_split(void **state)
{
    (void)state;
    struct buf wire;
    buf_init(&wire);
    client_frame(&wire, 0x81, "<open/>", 7);
    client_frame(&wire, 0x01, "<a>", 3);            /* fragment 1 */
    client_frame(&wire, 0x89, "hi", 2);             /* a ping between fragments */
    client_frame(&wire, 0x00, "x", 1);              /* fragment 2 */
    client_frame(&wire, 0x80, "</a>", 4);           /* last fragment */
    char big[300];
    memset(big, 'b', sizeof big);
    client_frame(&wire, 0x81, big, sizeof big);     /* 16-bit length */
    client_frame(&wire, 0x81, "", 0);               /* empty text */
    client_frame(&wire, 0x88, "\x03\xe8" "bye", 5);
    for (size_t step = 1; step <= wire.len; step = step < 8 ? step + 1 : step * 3) {
        struct ws_parser p;
        ws_parser_init(&p, 1000);
        struct events e = {.stop_after = 0};
        buf_init(&e.log);
        assert_int_equal(feed(&p, &wire, step, &e), 0);
        struct buf want;
        buf_init(&want);
        buf_append_str(&want, "1:<open/>|9:hi|1:<a>x</a>|1:");
        buf_append(&want, big, sizeof big);
        buf_append_str(&want, "|1:|8:1000:bye|");
        assert_int_equal(e.log.len, want.len);
        assert_memory_equal(e.log.data, want.data, want.len);
        buf_release(&want);
        buf_release(&e.log);
        ws_parser_release(&p);
    }
    buf_release(&wire);
}

static void expect_failure(const struct buf *wire, size_t limit, enum ws_status status, const char *why)
{
    struct ws_parser p;
    ws_parser_init(&p, limit);
    struct events e = {0};
    buf_init(&e.log);
    assert_int_equal(feed(&p, wire, wire->len, &e), -1);
    assert_int_equal(p.status, status);
    assert_string_equal(p.err, why);
    assert_int_equal(ws_parser_feed(&p, "x", 1, on_ev, &e), -1);   /* stays failed */
    buf_release(&e.log);
    ws_parser_release(&p);
}

static void test_hostile_frames(void **state)
{
    (void)state;
    struct buf w;
    buf_init(&w);
    buf_append(&w, "\x81\x03" "abc", 5);   /* unmasked */
    expect_failure(&w, 100, WS_STATUS_PROTOCOL, "client frames must be masked");
    w.len = 0;
    client_frame(&w, 0x81, "0123456789a", 11);
    expect_failure(&w, 10, WS_STATUS_TOO_BIG, "message larger than the stanza size limit");
    w.len = 0;   /* fragments adding up past the limit */
    client_frame(&w, 0x01, "012345", 6);
    client_frame(&w, 0x80, "012345", 6);
    expect_failure(&w, 10, WS_STATUS_TOO_BIG, "message larger than the stanza size limit");
    w.len = 0;   /* a 2^63+ length */
    buf_append(&w, "\x81\xff\x80\x00\x00\x00\x00\x00\x00\x00mask", 14);
    expect_failure(&w, 10, WS_STATUS_PROTOCOL, "frame length has its top bit set");
    w.len = 0;
    client_frame(&w, 0x81, "\xc3\x28", 2);
    expect_failure(&w, 10, WS_STATUS_BAD_DATA, "text message is not UTF-8");
    w.len = 0;   /* a UTF-8 sequence split over fragments is fine; a truncated one at the end is not */
    client_frame(&w, 0x01, "\xe2\x82", 2);
    client_frame(&w, 0x80, "", 0);
    expect_failure(&w, 10, WS_STATUS_BAD_DATA, "text message is not UTF-8");
    w.len = 0;
    client_frame(&w, 0x82, "x", 1);
    expect_failure(&w, 10, WS_STATUS_UNSUPPORTED, "binary frames are not XMPP (RFC 7395 uses text)");
    w.len = 0;
    char big[126] = {0};
    client_frame(&w, 0x89, big, sizeof big);
    expect_failure(&w, 1000, WS_STATUS_PROTOCOL, "control frame longer than 125 bytes");
    w.len = 0;
    client_frame(&w, 0x09, "x", 1);
    expect_failure(&w, 1000, WS_STATUS_PROTOCOL, "fragmented control frame");
    w.len = 0;
    client_frame(&w, 0x80, "x", 1);
    expect_failure(&w, 1000, WS_STATUS_PROTOCOL, "continuation frame without a message");
    w.len = 0;
    client_frame(&w, 0x01, "x", 1);
    client_frame(&w, 0x81, "y", 1);
    expect_failure(&w, 1000, WS_STATUS_PROTOCOL, "new message inside a fragmented one");
    w.len = 0;
    client_frame(&w, 0xC1, "x", 1);
    expect_failure(&w, 1000, WS_STATUS_PROTOCOL, "reserved bits set (no extension was negotiated)");
    w.len = 0;
    client_frame(&w, 0x83, "x", 1);
    expect_failure(&w, 1000, WS_STATUS_PROTOCOL, "unknown opcode");
    w.len = 0;
    client_frame(&w, 0x88, "\x03", 1);
    expect_failure(&w, 1000, WS_STATUS_PROTOCOL, "close frame with a 1-byte payload");
    w.len = 0;
    client_frame(&w, 0x88, "\x03\xed", 2);   /* 1005 may not be sent */
    expect_failure(&w, 1000, WS_STATUS_PROTOCOL, "close frame with an invalid status code");
    buf_release(&w);
}

static void test_stop_from_callback(void **state)
{
    (void)state;
    struct buf w;
    buf_init(&w);
    client_frame(&w, 0x81, "a", 1);
    client_frame(&w, 0x81, "b", 1);
    struct ws_parser p;
    ws_parser_init(&p, 10);
    struct events e = {.stop_after = 1};
    buf_init(&e.log);
    assert_int_equal(ws_parser_feed(&p, w.data, w.len, on_ev, &e), 0);
    assert_string_equal(buf_cstr(&e.log), "1:a|");
    buf_release(&e.log);
    ws_parser_release(&p);
    buf_release(&w);
}

static void test_utf8(void **state)
{
    (void)state;
    assert_true(ws_utf8_valid((const unsigned char *)"h\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10));
    assert_false(ws_utf8_valid((const unsigned char *)"\xc0\xaf", 2));           /* overlong */
    assert_false(ws_utf8_valid((const unsigned char *)"\xe0\x80\xaf", 3));       /* overlong */
    assert_false(ws_utf8_valid((const unsigned char *)"\xed\xa0\x80", 3));       /* surrogate */
    assert_false(ws_utf8_valid((const unsigned char *)"\xf4\x90\x80\x80", 4));   /* > U+10FFFF */
    assert_false(ws_utf8_valid((const unsigned char *)"\xff", 1));
    assert_false(ws_utf8_valid((const unsigned char *)"\xe2\x82", 2));
}

static void test_upgrade(void **state)
{
    (void)state;
    /* RFC 6455 section 1.3's example key. */
    const char *req = "GET /xmpp-websocket HTTP/1.1\r\nHost: example.com\r\nUpgrade: WebSocket\r\n"
                      "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, xmpp\r\n\r\n";
    struct buf r;
    buf_init(&r);
    assert_int_equal(ws_http_answer(req, strlen(req), true, "localhost", NULL, 0, &r), WS_HTTP_UPGRADE);
    assert_string_equal(buf_cstr(&r), "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                      "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                                      "Sec-WebSocket-Protocol: xmpp\r\n\r\n");
    r.len = 0;
    const char *noproto = "GET /xmpp-websocket HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n";
    assert_int_equal(ws_http_answer(noproto, strlen(noproto), true, "localhost", NULL, 0, &r), WS_HTTP_RESPONSE);
    assert_non_null(strstr(buf_cstr(&r), "HTTP/1.1 400 Bad Request\r\n"));
    assert_non_null(strstr(buf_cstr(&r), "the xmpp subprotocol is required"));
    r.len = 0;
    const char *badkey = "GET /xmpp-websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n";
    assert_int_equal(ws_http_answer(badkey, strlen(badkey), true, "localhost", NULL, 0, &r), WS_HTTP_RESPONSE);
    assert_non_null(strstr(buf_cstr(&r), "Sec-WebSocket-Key must be 16 bytes in base64"));
    r.len = 0;
    /* The Origin allow-list: another origin is refused, a listed one (any case) or none passes. */
    static const char *const origins[] = {"https://chat.example.org"};
    const char *foreign = "GET /xmpp-websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                          "Sec-WebSocket-Protocol: xmpp\r\nOrigin: https://evil.example\r\n\r\n";
    assert_int_equal(ws_http_answer(foreign, strlen(foreign), true, "localhost", origins, 1, &r), WS_HTTP_RESPONSE);
    assert_non_null(strstr(buf_cstr(&r), "HTTP/1.1 403 Forbidden\r\n"));
    assert_non_null(strstr(buf_cstr(&r), "this Origin may not open the XMPP WebSocket"));
    r.len = 0;
    const char *listed = "GET /xmpp-websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                         "Sec-WebSocket-Protocol: xmpp\r\nOrigin: https://Chat.Example.org\r\n\r\n";
    assert_int_equal(ws_http_answer(listed, strlen(listed), true, "localhost", origins, 1, &r), WS_HTTP_UPGRADE);
    r.len = 0;
    assert_int_equal(ws_http_answer(req, strlen(req), true, "localhost", origins, 1, &r), WS_HTTP_UPGRADE);
    r.len = 0;
    const char *post = "POST /xmpp-websocket HTTP/1.1\r\n\r\n";
    assert_int_equal(ws_http_answer(post, strlen(post), true, "localhost", NULL, 0, &r), WS_HTTP_RESPONSE);
    assert_non_null(strstr(buf_cstr(&r), "HTTP/1.1 405 "));
    r.len = 0;
    assert_int_equal(ws_http_answer("garbage\r\n\r\n", 11, true, "localhost", NULL, 0, &r), WS_HTTP_RESPONSE);
    assert_non_null(strstr(buf_cstr(&r), "HTTP/1.1 400 "));
    buf_release(&r);
}

static void test_host_meta(void **state)
{
    (void)state;
    struct buf r;
    buf_init(&r);
    const char *req = "GET /.well-known/host-meta.json HTTP/1.1\r\nHost: chat.example.org\r\n\r\n";
    assert_int_equal(ws_http_answer(req, strlen(req), true, "example.org", NULL, 0, &r), WS_HTTP_RESPONSE);
    const char *body = strstr(buf_cstr(&r), "\r\n\r\n");
    assert_non_null(body);
    assert_string_equal(body + 4, "{\"links\":[{\"rel\":\"urn:xmpp:alt-connections:websocket\","
                                  "\"href\":\"wss://chat.example.org/xmpp-websocket\"}]}\n");
    r.len = 0;
    /* A Host header unfit for a URL: the domain instead. */
    req = "GET /.well-known/host-meta HTTP/1.1\r\nHost: a'b<c\r\n\r\n";
    assert_int_equal(ws_http_answer(req, strlen(req), false, "example.org", NULL, 0, &r), WS_HTTP_RESPONSE);
    assert_non_null(strstr(buf_cstr(&r), "<Link rel='urn:xmpp:alt-connections:websocket' href='ws://example.org/xmpp-websocket'/>"));
    assert_null(strstr(buf_cstr(&r), "a'b"));
    buf_release(&r);
}

/* The payloads of the text frames in wire, joined with '|'; the Close frame as "CLOSE". */
static void frames_text(const struct buf *wire, struct buf *out)
{
    size_t i = 0;
    while (i < wire->len) {
        const unsigned char *h = (const unsigned char *)wire->data + i;
        assert_int_equal(h[1] & 0x80, 0);
        size_t n = h[1] & 0x7F, hl = 2;
        if (n == 126) {
            n = ((size_t)h[2] << 8) | h[3];
            hl = 4;
        }
        assert_true(i + hl + n <= wire->len);
        if ((h[0] & 0x0F) == WS_OP_CLOSE)
            buf_append_str(out, "CLOSE");
        else
            buf_append(out, h + hl, n);
        buf_append_str(out, "|");
        i += hl + n;
    }
}

static void test_output_framing(void **state)
{
    (void)state;
    const char *stream =
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
        "id='abc' from='localhost' version='1.0' xml:lang='en'>"
        "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>"
        "</mechanisms></stream:features>"
        "<message to='a@b' id='x&apos;>'><body>1 &lt; 2 /></body><x a=\"/>\"/></message>"
        "<r xmlns='urn:xmpp:sm:3'/>"
        "</stream:stream><message>never</message>";
    const char *want =
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='abc' from='localhost' version='1.0' xml:lang='en'/>|"
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        "<mechanism>PLAIN</mechanism></mechanisms></stream:features>|"
        "<message xmlns='jabber:client' to='a@b' id='x&apos;>'><body>1 &lt; 2 /></body><x a=\"/>\"/></message>|"
        "<r xmlns='urn:xmpp:sm:3'/>|"
        "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>|CLOSE|";
    size_t len = strlen(stream);
    for (size_t step = 1; step <= len; step = step < 16 ? step + 1 : step * 2) {
        struct ws_out o;
        ws_out_init(&o);
        struct buf wire, got;
        buf_init(&wire);
        buf_init(&got);
        for (size_t i = 0; i < len; i += step)
            ws_out_write(&o, stream + i, len - i < step ? len - i : step, &wire);
        frames_text(&wire, &got);
        assert_string_equal(buf_cstr(&got), want);
        assert_true(o.closed);
        buf_release(&wire);
        buf_release(&got);
        ws_out_release(&o);
    }
}

static void test_input_translation(void **state)
{
    (void)state;
    struct buf x;
    buf_init(&x);
    char err[160];
    const char *open = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='local&amp;host' version='1.0' xml:lang='fr'/>";
    assert_int_equal(ws_in_translate(open, strlen(open), &x, err, sizeof err), 0);
    assert_string_equal(buf_cstr(&x), "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
                                      " to='local&amp;host' version='1.0' xml:lang='fr'>");
    x.len = 0;
    const char *close = " <close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";
    assert_int_equal(ws_in_translate(close, strlen(close), &x, err, sizeof err), 0);
    assert_string_equal(buf_cstr(&x), "</stream:stream>");
    x.len = 0;
    assert_int_equal(ws_in_translate("<presence/>", 11, &x, err, sizeof err), 0);
    assert_string_equal(buf_cstr(&x), "<presence/>");
    x.len = 0;
    assert_int_equal(ws_in_translate("<open xmlns='jabber:client'/>", 29, &x, err, sizeof err), -1);
    assert_string_equal(err, "<open/> must be in the urn:ietf:params:xml:ns:xmpp-framing namespace");
    assert_int_equal(ws_in_translate("<open xmlns='x'", 15, &x, err, sizeof err), -1);
    assert_int_equal(x.len, 0);
    buf_release(&x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_messages_any_split),
        cmocka_unit_test(test_hostile_frames),
        cmocka_unit_test(test_stop_from_callback),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_upgrade),
        cmocka_unit_test(test_host_meta),
        cmocka_unit_test(test_output_framing),
        cmocka_unit_test(test_input_translation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
