/* tests/unit/test_http_resp.c - the own HTTP client's response parser (pusher/http_resp.c): framings, connection reuse, interim responses, Retry-After, and every malformed input it must refuse; each input also fed one byte at a time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../pusher/http_resp.h"
#include "buf.h"

struct parsed {
    enum http_resp_state state;
    int status;
    bool close;
    ssize_t used;                  /* what the last feed used (whole input: of all of it) */
    struct buf body;
    char retry_after[HTTP_RESP_RETRY_AFTER_MAX + 1];
    bool has_retry_after;
    const char *error;
};

/* Parses text (n bytes) in pieces of step bytes (0: all at once), then the EOF when eof. */
static void parse(const char *text, size_t n, size_t step, bool head, bool eof, size_t body_max, struct parsed *out)
{
    struct http_resp r;
    http_resp_init(&r);
    buf_init(&out->body);
    http_resp_start(&r, &out->body, body_max, head);
    size_t off = 0;
    ssize_t used = 0;
    while (off < n) {
        size_t piece = step == 0 || n - off < step ? n - off : step;
        used = http_resp_feed(&r, text + off, piece);
        if (used == -1 || r.state == HTTP_RESP_DONE) {
            if (used != -1)
                used += (ssize_t)off;
            break;
        }
        off += piece;
        used = (ssize_t)off;
    }
    if (eof && r.state != HTTP_RESP_DONE && r.state != HTTP_RESP_ERROR)
        http_resp_eof(&r);
    out->state = r.state;
    out->status = r.status;
    out->close = r.close;
    out->used = used;
    out->has_retry_after = r.has_retry_after;
    memcpy(out->retry_after, r.retry_after, r.retry_after_len);
    out->retry_after[r.retry_after_len] = '\0';
    out->error = r.error;
    http_resp_release(&r);
}

/* Whole and byte by byte must agree; returns the whole-input result. */
static void parse_both(const char *text, bool head, bool eof, size_t body_max, struct parsed *out)
{
    size_t n = strlen(text);
    struct parsed one;
    parse(text, n, 0, head, eof, body_max, out);
    parse(text, n, 1, head, eof, body_max, &one);
    assert_int_equal(one.state, out->state);
    assert_int_equal(one.status, out->status);
    assert_int_equal(one.close, out->close);
    assert_int_equal(one.body.len, out->body.len);
    if (out->body.len > 0)
        assert_memory_equal(one.body.data, out->body.data, out->body.len);
    if (out->state == HTTP_RESP_DONE)
        assert_int_equal(one.used, out->used);
    buf_release(&one.body);
}

static void expect_ok(const char *text, int status, const char *body, bool close, struct parsed *p)
{
    parse_both(text, false, false, 1 << 20, p);
    assert_int_equal(p->state, HTTP_RESP_DONE);
    assert_int_equal(p->status, status);
    assert_int_equal(p->close, close);
    assert_int_equal(p->body.len, strlen(body));
    assert_memory_equal(buf_cstr(&p->body), body, strlen(body));
}

static void test_content_length(void **state)
{
    (void)state;
    struct parsed p;
    expect_ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello", 200, "hello", false, &p);
    buf_release(&p.body);
    /* What follows the response is not used: the caller sees it. */
    const char *two = "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n";
    expect_ok(two, 202, "ok", false, &p);
    assert_int_equal(p.used, (ssize_t)(strstr(two, "okHTTP") + 2 - two));
    buf_release(&p.body);
    /* No reason phrase, bare LF line ends, equal duplicate lengths, OWS around values. */
    expect_ok("HTTP/1.1 200\nContent-Length:  3 \ncontent-length: 3\n\nabc", 200, "abc", false, &p);
    buf_release(&p.body);
    expect_ok("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "", false, &p);
    buf_release(&p.body);
}

static void test_chunked(void **state)
{
    (void)state;
    struct parsed p;
    expect_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=v\r\nhello\r\n6\r\n world\r\n"
              "0\r\nX-Trailer: yes\r\n\r\n",
              200, "hello world", false, &p);
    buf_release(&p.body);
    expect_ok("HTTP/1.1 500 Oops\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n", 500, "0123456789",
              false, &p);
    buf_release(&p.body);
    /* Both framings: chunked wins and the connection is not reused. */
    expect_ok("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", 200,
              "hi", true, &p);
    buf_release(&p.body);
}

static void test_connection(void **state)
{
    (void)state;
    struct parsed p;
    expect_ok("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\nx", 200, "x", true, &p);
    buf_release(&p.body);
    expect_ok("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", 200, "x", true, &p);
    buf_release(&p.body);
    expect_ok("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nx", 200, "x", false, &p);
    buf_release(&p.body);
    /* No length: the body ends with the connection. */
    parse_both("HTTP/1.1 200 OK\r\n\r\nuntil the end", false, false, 1 << 20, &p);
    assert_int_equal(p.state, HTTP_RESP_BODY_CLOSE);
    buf_release(&p.body);
    parse_both("HTTP/1.1 200 OK\r\n\r\nuntil the end", false, true, 1 << 20, &p);
    assert_int_equal(p.state, HTTP_RESP_DONE);
    assert_true(p.close);
    assert_string_equal(buf_cstr(&p.body), "until the end");
    buf_release(&p.body);
}

static void test_no_body_and_interim(void **state)
{
    (void)state;
    struct parsed p;
    expect_ok("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
              "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nid",
              201, "id", false, &p);
    buf_release(&p.body);
    expect_ok("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", 204, "", false, &p);
    buf_release(&p.body);
    expect_ok("HTTP/1.1 304 Not Modified\r\n\r\n", 304, "", false, &p);
    buf_release(&p.body);
    parse_both("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true, false, 1 << 20, &p);
    assert_int_equal(p.state, HTTP_RESP_DONE);
    assert_int_equal(p.body.len, 0);
    buf_release(&p.body);
}

static void test_retry_after_and_bound(void **state)
{
    (void)state;
    struct parsed p;
    expect_ok("HTTP/1.1 429 Too Many\r\nRetry-After:  120 \r\nContent-Length: 0\r\n\r\n", 429, "", false, &p);
    assert_true(p.has_retry_after);
    assert_string_equal(p.retry_after, "120");
    buf_release(&p.body);
    expect_ok("HTTP/1.1 503 Busy\r\nretry-after: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\n\r\n", 503, "",
              false, &p);
    assert_string_equal(p.retry_after, "Sun, 06 Nov 1994 08:49:37 GMT");
    buf_release(&p.body);
    expect_ok("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "", false, &p);
    assert_false(p.has_retry_after);
    buf_release(&p.body);
    /* At most body_max bytes kept; the rest read (the response still ends right). */
    parse_both("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", false, false, 4, &p);
    assert_int_equal(p.state, HTTP_RESP_DONE);
    assert_string_equal(buf_cstr(&p.body), "0123");
    buf_release(&p.body);
}

static void expect_error(const char *text, bool eof, const char *why)
{
    struct parsed p;
    parse_both(text, false, eof, 1 << 20, &p);
    assert_int_equal(p.state, HTTP_RESP_ERROR);
    assert_non_null(p.error);
    if (why != NULL && strstr(p.error, why) == NULL)
        fail_msg("\"%s\": error \"%s\", want \"%s\"", text, p.error, why);
    buf_release(&p.body);
}

static void test_malformed(void **state)
{
    (void)state;
    expect_error("HTTP/2 200 OK\r\n\r\n", false, "status line");
    expect_error("HTTP/1.1 20 OK\r\n\r\n", false, "status");
    expect_error("HTTP/1.1 2000 OK\r\n\r\n", false, "status line");
    expect_error("HTTP/1.1 099 Low\r\n\r\n", false, "out of range");
    expect_error("HTTP/1.1 600 High\r\n\r\n", false, "out of range");
    expect_error("HTTP/1.1 101 Switching\r\n\r\n", false, "protocol switch");
    expect_error("ICY 200 OK\r\n\r\n", false, "status line");
    expect_error("HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", false, "folding");
    expect_error("HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\nx", false, "header field");
    expect_error("HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", false, "header field");
    expect_error("HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", false, "header field");
    expect_error("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", false, "conflicting");
    expect_error("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false, "Content-Length");
    expect_error("HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\nx", false, "Content-Length");
    expect_error("HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n", false, "Content-Length");
    expect_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, "transfer coding");
    expect_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", false, "transfer coding");
    expect_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, "chunk size");
    expect_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n", false, "too large");
    expect_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", false, "longer");
    expect_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 x\r\n", false, "chunk size");
    expect_error("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", false, "bare CR");
    expect_error("HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n", false, "control");
    expect_error("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", true, "middle of the response");
    expect_error("", true, "without a response");
    expect_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", true, "middle");
    /* Bounds: a line, the header section. */
    struct buf big;
    buf_init(&big);
    buf_append_str(&big, "HTTP/1.1 200 OK\r\nX-Long: ");
    for (int i = 0; i < HTTP_RESP_LINE_MAX; i++)
        buf_append(&big, "a", 1);
    buf_append_str(&big, "\r\n\r\n");
    expect_error(buf_cstr(&big), false, "line too long");
    buf_reset(&big);
    buf_append_str(&big, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < HTTP_RESP_HEAD_MAX / 16; i++)
        buf_append_str(&big, "X-Many: 0123456\r\n");
    buf_append_str(&big, "\r\n");
    expect_error(buf_cstr(&big), false, "header section too large");
    buf_release(&big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_connection),
        cmocka_unit_test(test_no_body_and_interim),
        cmocka_unit_test(test_retry_after_and_bound),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
