/* pusher/http_resp.c - a strict, incremental HTTP/1.1 response parser (RFC 9112), for the pusher's own HTTP client. */
#include "http_resp.h"

#include <string.h>
#include <strings.h>

void http_resp_init(struct http_resp *r)
{
    memset(r, 0, sizeof *r);
    buf_init(&r->line);
}

void http_resp_release(struct http_resp *r)
{
    if (r == NULL)
        return;
    buf_release(&r->line);
}

/* Back to "no status line yet", keeping the body target (also after an interim 1xx). */
static void resp_reset_head(struct http_resp *r)
{
    r->state = HTTP_RESP_STATUS;
    r->status = 0;
    r->minor = 1;
    r->close = false;
    r->keep_alive = false;
    r->chunked = false;
    r->has_length = false;
    r->length = 0;
    r->remaining = 0;
    r->head_bytes = 0;
    r->retry_after_len = 0;
    r->has_retry_after = false;
    r->error = NULL;
    buf_reset(&r->line);
}

void http_resp_start(struct http_resp *r, struct buf *body, size_t body_max, bool no_body)
{
    resp_reset_head(r);
    r->body = body;
    r->body_max = body_max;
    r->no_body = no_body;
}

static ssize_t resp_fail(struct http_resp *r, const char *why)
{
    r->state = HTTP_RESP_ERROR;
    r->error = why;
    return -1;
}

/* tchar of RFC 9110 §5.6.2. */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool name_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

/* Calls fn for each element of a comma-separated list (OWS trimmed, empty elements
 * skipped); stops at the first -1. */
static int each_token(const char *v, size_t n, int (*fn)(struct http_resp *, const char *, size_t),
                      struct http_resp *r)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        size_t a = i, b = j;
        while (a < b && (v[a] == ' ' || v[a] == '\t'))
            a++;
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
            b--;
        if (b > a && fn(r, v + a, b - a) == -1)
            return -1;
        i = j + 1;
    }
    return 0;
}

static int connection_token(struct http_resp *r, const char *t, size_t n)
{
    if (name_is(t, n, "close"))
        r->close = true;
    else if (name_is(t, n, "keep-alive"))
        r->keep_alive = true;
    return 0;
}

/* Transfer-Encoding: only "chunked", and only once, last (we send no TE: any other
 * coding is one we cannot read). */
static int coding_token(struct http_resp *r, const char *t, size_t n)
{
    if (!name_is(t, n, "chunked") || r->chunked) {
        resp_fail(r, "unsupported or repeated transfer coding");
        return -1;
    }
    r->chunked = true;
    return 0;
}

/* The status line: HTTP/1.x SP 3DIGIT [SP reason]. */
static int parse_status_line(struct http_resp *r, const char *s, size_t n)
{
    if (n < 12 || memcmp(s, "HTTP/1.", 7) != 0 || s[7] < '0' || s[7] > '9' || s[8] != ' ')
        return (int)resp_fail(r, "malformed status line");
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (s[i] < '0' || s[i] > '9')
            return (int)resp_fail(r, "malformed status code");
        st = st * 10 + (s[i] - '0');
    }
    if (n > 12 && s[12] != ' ')
        return (int)resp_fail(r, "malformed status line");
    for (size_t i = 13; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return (int)resp_fail(r, "control character in the reason phrase");
    }
    if (st < 100 || st > 599)
        return (int)resp_fail(r, "status code out of range");
    if (st == 101)
        return (int)resp_fail(r, "unexpected protocol switch");
    r->status = st;
    r->minor = s[7] - '0';
    r->state = HTTP_RESP_HEADERS;
    return 0;
}

/* One field line "name: value" (trailers: checked, not used). */
static int parse_field(struct http_resp *r, const char *s, size_t n, bool trailer)
{
    if (s[0] == ' ' || s[0] == '\t')
        return (int)resp_fail(r, "obsolete line folding");
    size_t k = 0;
    while (k < n && is_tchar((unsigned char)s[k]))
        k++;
    if (k == 0 || k == n || s[k] != ':')
        return (int)resp_fail(r, "malformed header field");
    const char *v = s + k + 1;
    size_t vn = n - k - 1;
    while (vn > 0 && (*v == ' ' || *v == '\t'))
        v++, vn--;
    while (vn > 0 && (v[vn - 1] == ' ' || v[vn - 1] == '\t'))
        vn--;
    for (size_t i = 0; i < vn; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return (int)resp_fail(r, "control character in a header value");
    }
    if (trailer)
        return 0;
    if (name_is(s, k, "Content-Length")) {
        if (vn == 0 || vn > 18)
            return (int)resp_fail(r, "bad Content-Length");
        uint64_t len = 0;
        for (size_t i = 0; i < vn; i++) {
            if (v[i] < '0' || v[i] > '9')
                return (int)resp_fail(r, "bad Content-Length");
            len = len * 10 + (uint64_t)(v[i] - '0');
        }
        if (r->has_length && r->length != len)
            return (int)resp_fail(r, "conflicting Content-Length");
        r->has_length = true;
        r->length = len;
    } else if (name_is(s, k, "Transfer-Encoding")) {
        if (each_token(v, vn, coding_token, r) == -1)
            return -1;
        if (!r->chunked)
            return (int)resp_fail(r, "empty Transfer-Encoding");
    } else if (name_is(s, k, "Connection")) {
        each_token(v, vn, connection_token, r);
    } else if (name_is(s, k, "Retry-After")) {
        r->has_retry_after = true;
        r->retry_after_len = vn <= sizeof r->retry_after ? vn : 0;
        memcpy(r->retry_after, v, r->retry_after_len);
    }
    return 0;
}

/* The empty line after the header section: how the body is delimited (RFC 9112 §6.3). */
static void end_of_head(struct http_resp *r)
{
    if (r->status < 200) {
        /* an interim response (100 Continue, 103 Early Hints): the real one follows */
        struct buf *body = r->body;
        size_t max = r->body_max;
        bool no_body = r->no_body;
        http_resp_start(r, body, max, no_body);
        return;
    }
    if (r->minor == 0 && !r->keep_alive)
        r->close = true;
    if (r->no_body || r->status == 204 || r->status == 304) {
        r->state = HTTP_RESP_DONE;
    } else if (r->chunked) {
        if (r->has_length)
            r->close = true;   /* both framings: the connection is not to be trusted after it */
        r->state = HTTP_RESP_CHUNK_SIZE;
    } else if (r->has_length) {
        r->remaining = r->length;
        r->state = r->length == 0 ? HTTP_RESP_DONE : HTTP_RESP_BODY_LENGTH;
    } else {
        r->close = true;
        r->state = HTTP_RESP_BODY_CLOSE;
    }
}

/* chunk-size [ BWS ";" chunk-ext ] */
static int parse_chunk_size(struct http_resp *r, const char *s, size_t n)
{
    uint64_t v = 0;
    size_t i = 0;
    for (; i < n; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            break;
        if (i >= 15)
            return (int)resp_fail(r, "chunk size too large");
        v = v << 4 | (uint64_t)d;
    }
    if (i == 0)
        return (int)resp_fail(r, "malformed chunk size");
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    if (i < n && s[i] != ';')
        return (int)resp_fail(r, "malformed chunk size");
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return (int)resp_fail(r, "control character in a chunk extension");
    }
    if (v == 0) {
        r->head_bytes = 0;
        r->state = HTTP_RESP_TRAILERS;
    } else {
        r->remaining = v;
        r->state = HTTP_RESP_CHUNK_DATA;
    }
    return 0;
}

/* One complete line (without its LF; a CR before it is removed here). */
static int on_line(struct http_resp *r, const char *s, size_t n)
{
    if (n > 0 && s[n - 1] == '\r')
        n--;
    if (memchr(s, '\r', n) != NULL)
        return (int)resp_fail(r, "bare CR in a line");
    switch (r->state) {
    case HTTP_RESP_STATUS:
        return parse_status_line(r, s, n);
    case HTTP_RESP_HEADERS:
        if (n == 0) {
            end_of_head(r);
            return 0;
        }
        return parse_field(r, s, n, false);
    case HTTP_RESP_CHUNK_SIZE:
        return parse_chunk_size(r, s, n);
    case HTTP_RESP_CHUNK_END:
        if (n != 0)
            return (int)resp_fail(r, "chunk data longer than its size");
        r->state = HTTP_RESP_CHUNK_SIZE;
        return 0;
    case HTTP_RESP_TRAILERS:
        if (n == 0) {
            r->state = HTTP_RESP_DONE;
            return 0;
        }
        return parse_field(r, s, n, true);
    default:
        return (int)resp_fail(r, "internal: line in a body state");
    }
}

static void keep_body(struct http_resp *r, const char *p, size_t n)
{
    if (r->body == NULL || r->body->len >= r->body_max)
        return;
    size_t room = r->body_max - r->body->len;
    buf_append(r->body, p, n < room ? n : room);
}

ssize_t http_resp_feed(struct http_resp *r, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        switch (r->state) {
        case HTTP_RESP_DONE:
            return (ssize_t)i;
        case HTTP_RESP_ERROR:
            return -1;
        case HTTP_RESP_BODY_LENGTH:
        case HTTP_RESP_CHUNK_DATA: {
            size_t take = n - i;
            if ((uint64_t)take > r->remaining)
                take = (size_t)r->remaining;
            keep_body(r, p + i, take);
            i += take;
            r->remaining -= take;
            if (r->remaining == 0)
                r->state = r->state == HTTP_RESP_BODY_LENGTH ? HTTP_RESP_DONE : HTTP_RESP_CHUNK_END;
            break;
        }
        case HTTP_RESP_BODY_CLOSE:
            keep_body(r, p + i, n - i);
            i = n;
            break;
        default: {
            /* a line: status, field, chunk size, the CRLF after a chunk, a trailer */
            const char *lf = memchr(p + i, '\n', n - i);
            size_t piece = lf != NULL ? (size_t)(lf - (p + i)) : n - i;
            bool head = r->state == HTTP_RESP_STATUS || r->state == HTTP_RESP_HEADERS ||
                        r->state == HTTP_RESP_TRAILERS;
            if (head) {
                r->head_bytes += piece + (lf != NULL);
                if (r->head_bytes > HTTP_RESP_HEAD_MAX)
                    return resp_fail(r, "header section too large");
            }
            if (r->line.len + piece > HTTP_RESP_LINE_MAX)
                return resp_fail(r, "line too long");
            if (lf == NULL) {
                buf_append(&r->line, p + i, piece);
                i = n;
                break;
            }
            int rc;
            if (r->line.len > 0) {
                buf_append(&r->line, p + i, piece);
                rc = on_line(r, r->line.data, r->line.len);
                buf_reset(&r->line);
            } else {
                rc = on_line(r, p + i, piece);
            }
            if (rc == -1)
                return -1;
            i += piece + 1;
        }
        }
    }
    if (r->state == HTTP_RESP_ERROR)
        return -1;
    return (ssize_t)i;
}

int http_resp_eof(struct http_resp *r)
{
    if (r->state == HTTP_RESP_BODY_CLOSE || r->state == HTTP_RESP_DONE) {
        r->state = HTTP_RESP_DONE;
        return 0;
    }
    if (r->state != HTTP_RESP_ERROR)
        resp_fail(r, r->state == HTTP_RESP_STATUS && r->line.len == 0 && r->head_bytes == 0
                         ? "the server closed the connection without a response"
                         : "the connection closed in the middle of the response");
    return -1;
}
