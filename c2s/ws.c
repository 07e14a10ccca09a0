/* c2s/ws.c - WebSocket for XMPP: RFC 6455 frame parser and writer, the HTTP/1.1 upgrade and XEP-0156 host-meta, RFC 7395 <open/>/<close/> translation. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "util.h"
#include "ws.h"
#include "xml.h"

/* Frames ------------------------------------------------------------------------------- */

void ws_parser_init(struct ws_parser *p, size_t max_message)
{
    memset(p, 0, sizeof *p);
    p->max_message = max_message;
    p->hdr_need = 2;
    buf_init(&p->msg);
}

void ws_parser_release(struct ws_parser *p)
{
    if (p == NULL)
        return;
    buf_release(&p->msg);
}

static int ws_fail(struct ws_parser *p, enum ws_status status, const char *why)
{
    p->failed = true;
    p->status = status;
    mk_strlcpy(p->err, why, sizeof p->err);
    return -1;
}

bool ws_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            len = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0;   /* overlong */
            if (c == 0xED)
                hi = 0x9F;   /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90;   /* overlong */
            if (c == 0xF4)
                hi = 0x8F;   /* above U+10FFFF */
        } else
            return false;
        if (n - i < len)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
        i += len;
    }
    return true;
}

/* The header is complete: checks it. Returns 0 or -1. */
static int header_done(struct ws_parser *p)
{
    const unsigned char *h = p->hdr;
    p->fin = (h[0] & 0x80) != 0;
    p->opcode = h[0] & 0x0F;
    unsigned len7 = h[1] & 0x7F;
    size_t at = 2;
    if (len7 == 126) {
        p->len = ((uint64_t)h[2] << 8) | h[3];
        at = 4;
    } else if (len7 == 127) {
        p->len = 0;
        for (int i = 0; i < 8; i++)
            p->len = (p->len << 8) | h[2 + i];
        at = 10;
        if (p->len >> 63)
            return ws_fail(p, WS_STATUS_PROTOCOL, "frame length has its top bit set");
    } else {
        p->len = len7;
    }
    memcpy(p->mask, h + at, 4);
    p->got = 0;
    switch (p->opcode) {
    case WS_OP_CLOSE:
    case WS_OP_PING:
    case WS_OP_PONG:
        if (!p->fin)
            return ws_fail(p, WS_STATUS_PROTOCOL, "fragmented control frame");
        if (p->len > 125)
            return ws_fail(p, WS_STATUS_PROTOCOL, "control frame longer than 125 bytes");
        return 0;
    case WS_OP_BINARY:
        return ws_fail(p, WS_STATUS_UNSUPPORTED, "binary frames are not XMPP (RFC 7395 uses text)");
    case WS_OP_TEXT:
        if (p->in_message)
            return ws_fail(p, WS_STATUS_PROTOCOL, "new message inside a fragmented one");
        break;
    case WS_OP_CONT:
        if (!p->in_message)
            return ws_fail(p, WS_STATUS_PROTOCOL, "continuation frame without a message");
        break;
    default:
        return ws_fail(p, WS_STATUS_PROTOCOL, "unknown opcode");
    }
    if (p->len > p->max_message || p->msg.len + p->len > p->max_message)
        return ws_fail(p, WS_STATUS_TOO_BIG, "message larger than the stanza size limit");
    p->in_message = true;
    return 0;
}

/* The frame's payload is all there: acts on it. Returns cb's result, or -1 on error. */
static int frame_done(struct ws_parser *p, ws_event_fn *cb, void *ud, int *stop)
{
    p->hdr_len = 0;
    p->hdr_need = 2;
    if (p->opcode >= WS_OP_CLOSE) {
        size_t n = (size_t)p->len;
        if (p->opcode != WS_OP_CLOSE) {
            *stop = cb(ud, (enum ws_opcode)p->opcode, (const char *)p->ctrl, n, 0);
            return 0;
        }
        unsigned code = 0;
        if (n == 1)
            return ws_fail(p, WS_STATUS_PROTOCOL, "close frame with a 1-byte payload");
        if (n >= 2) {
            code = ((unsigned)p->ctrl[0] << 8) | p->ctrl[1];
            if (code < 1000 || code == 1004 || code == 1005 || code == 1006 || (code > 1011 && code < 3000) ||
                code > 4999)
                return ws_fail(p, WS_STATUS_PROTOCOL, "close frame with an invalid status code");
            if (!ws_utf8_valid(p->ctrl + 2, n - 2))
                return ws_fail(p, WS_STATUS_BAD_DATA, "close reason is not UTF-8");
        }
        *stop = cb(ud, WS_OP_CLOSE, n >= 2 ? (const char *)p->ctrl + 2 : "", n >= 2 ? n - 2 : 0, code);
        return 0;
    }
    if (!p->fin)
        return 0;
    p->in_message = false;
    if (!ws_utf8_valid((const unsigned char *)p->msg.data, p->msg.len))
        return ws_fail(p, WS_STATUS_BAD_DATA, "text message is not UTF-8");
    *stop = cb(ud, WS_OP_TEXT, p->msg.len ? p->msg.data : "", p->msg.len, 0);
    p->msg.len = 0;
    if (p->msg.cap > 4096)
        buf_release(&p->msg);   /* an idle connection keeps no big buffer after a big message */
    return 0;
}

int ws_parser_feed(struct ws_parser *p, const char *data, size_t n, ws_event_fn *cb, void *ud)
{
    const unsigned char *d = (const unsigned char *)data;
    if (p->failed)
        return -1;
    while (true) {
        if (p->hdr_len < p->hdr_need) {
            if (n == 0)
                return 0;
            p->hdr[p->hdr_len++] = *d++;
            n--;
            if (p->hdr_len == 2) {
                if (p->hdr[0] & 0x70)
                    return ws_fail(p, WS_STATUS_PROTOCOL, "reserved bits set (no extension was negotiated)");
                if (!(p->hdr[1] & 0x80))
                    return ws_fail(p, WS_STATUS_PROTOCOL, "client frames must be masked");
                unsigned len7 = p->hdr[1] & 0x7F;
                p->hdr_need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4;
            }
            if (p->hdr_len < p->hdr_need)
                continue;
            if (header_done(p) == -1)
                return -1;
        } else {
            if (n == 0)
                return 0;
            uint64_t left = p->len - p->got;
            size_t k = left < n ? (size_t)left : n;
            unsigned char *dst;
            if (p->opcode >= WS_OP_CLOSE) {
                dst = p->ctrl + p->got;
            } else {
                size_t at = p->msg.len;
                buf_append(&p->msg, d, k);
                dst = (unsigned char *)p->msg.data + at;
            }
            if (p->opcode >= WS_OP_CLOSE)
                memcpy(dst, d, k);
            for (size_t i = 0; i < k; i++)
                dst[i] ^= p->mask[(p->got + i) & 3];
            p->got += k;
            d += k;
            n -= k;
        }
        if (p->got == p->len) {
            int stop = 0;
            if (frame_done(p, cb, ud, &stop) == -1)
                return -1;
            if (stop)
                return 0;
        }
    }
}

void ws_frame_append(struct buf *out, enum ws_opcode op, const void *p, size_t n)
{
    unsigned char h[10];
    size_t hl;
    h[0] = (unsigned char)(0x80 | op);
    if (n < 126) {
        h[1] = (unsigned char)n;
        hl = 2;
    } else if (n <= 0xFFFF) {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    buf_append(out, h, hl);
    if (n > 0)
        buf_append(out, p, n);
}

void ws_close_append(struct buf *out, unsigned code, const char *reason)
{
    unsigned char pl[125];
    size_t rl = reason != NULL ? strlen(reason) : 0;
    if (rl > sizeof pl - 2)
        rl = sizeof pl - 2;
    pl[0] = (unsigned char)(code >> 8);
    pl[1] = (unsigned char)code;
    if (rl > 0)
        memcpy(pl + 2, reason, rl);
    ws_frame_append(out, WS_OP_CLOSE, pl, 2 + rl);
}

/* HTTP --------------------------------------------------------------------------------- */

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

static void http_reply(struct buf *resp, const char *status, const char *ctype, const char *extra, const char *body)
{
    buf_printf(resp,
               "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n"
               "Cache-Control: no-store\r\n%s\r\n%s",
               status, ctype, strlen(body), extra != NULL ? extra : "", body);
}

static void http_error(struct buf *resp, const char *status, const char *extra, const char *why)
{
    char body[200];
    snprintf(body, sizeof body, "%s\n", why);
    http_reply(resp, status, "text/plain; charset=utf-8", extra, body);
}

/* Whether the comma-separated list v (length n) holds token tok, case-insensitively. */
static bool list_has(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok);
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, tok, tl) == 0)
            return true;
    }
    return false;
}

struct http_head {
    const char *host, *upgrade, *connection, *key, *version, *protocol, *origin;
    size_t host_n, upgrade_n, connection_n, key_n, version_n, protocol_n, origin_n;
};

static void set_hdr(const char **dst, size_t *dn, const char *v, size_t n)
{
    if (*dst == NULL) {
        *dst = v;
        *dn = n;
    }
}

/* A Host header value fit to put into a URL: letters, digits, '.', '-', ':', '[', ']'. */
static bool host_ok(const char *h, size_t n)
{
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)h[i]) && strchr(".-:[]", h[i]) == NULL)
            return false;
    return true;
}

static void host_meta(struct buf *resp, bool json, bool tls, const char *host, size_t host_n)
{
    struct buf body;
    buf_init(&body);
    char url[320];
    snprintf(url, sizeof url, "%s://%.*s%s", tls ? "wss" : "ws", (int)host_n, host, WS_PATH);
    if (json)
        buf_printf(&body, "{\"links\":[{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"%s\"}]}\n", url);
    else
        buf_printf(&body,
                   "<?xml version='1.0' encoding='utf-8'?>\n"
                   "<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n"
                   "  <Link rel='urn:xmpp:alt-connections:websocket' href='%s'/>\n"
                   "</XRD>\n",
                   url);
    http_reply(resp, "200 OK", json ? "application/json" : "application/xrd+xml; charset=utf-8",
               "Access-Control-Allow-Origin: *\r\n", buf_cstr(&body));
    buf_release(&body);
}

enum ws_http_result ws_http_answer(const char *head, size_t n, bool tls, const char *domain,
                                   const char *const *origins, size_t norigins, struct buf *resp)
{
    const char *end = head + n;
    const char *eol = memchr(head, '\n', n);
    if (eol == NULL)
        eol = end;
    /* Request line: METHOD SP target SP HTTP/1.1 */
    const char *sp1 = memchr(head, ' ', (size_t)(eol - head));
    const char *sp2 = sp1 != NULL ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (sp1 == NULL || sp2 == NULL || (size_t)(eol - sp2) < 9 || strncmp(sp2 + 1, "HTTP/1.1", 8) != 0) {
        http_error(resp, "400 Bad Request", NULL, "not an HTTP/1.1 request line");
        return WS_HTTP_RESPONSE;
    }
    size_t mlen = (size_t)(sp1 - head);
    const char *target = sp1 + 1;
    size_t tlen = (size_t)(sp2 - target);
    struct http_head h;
    memset(&h, 0, sizeof h);
    const char *line = eol < end ? eol + 1 : end;
    while (line < end) {
        const char *le = memchr(line, '\n', (size_t)(end - line));
        if (le == NULL)
            le = end;
        const char *ve = le;
        if (ve > line && ve[-1] == '\r')
            ve--;
        const char *colon = memchr(line, ':', (size_t)(ve - line));
        if (colon != NULL) {
            size_t nl = (size_t)(colon - line);
            const char *v = colon + 1;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            const char *vend = ve;
            while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t'))
                vend--;
            size_t vn = (size_t)(vend - v);
#define IS(name) (nl == sizeof name - 1 && strncasecmp(line, name, nl) == 0)
            if (IS("host"))
                set_hdr(&h.host, &h.host_n, v, vn);
            else if (IS("upgrade"))
                set_hdr(&h.upgrade, &h.upgrade_n, v, vn);
            else if (IS("connection"))
                set_hdr(&h.connection, &h.connection_n, v, vn);
            else if (IS("sec-websocket-key"))
                set_hdr(&h.key, &h.key_n, v, vn);
            else if (IS("sec-websocket-version"))
                set_hdr(&h.version, &h.version_n, v, vn);
            else if (IS("origin"))
                set_hdr(&h.origin, &h.origin_n, v, vn);
            else if (IS("sec-websocket-protocol"))
                set_hdr(&h.protocol, &h.protocol_n, v, vn);
#undef IS
        }
        line = le < end ? le + 1 : end;
    }
    if (mlen != 3 || strncmp(head, "GET", 3) != 0) {
        http_error(resp, "405 Method Not Allowed", "Allow: GET\r\n", "only GET is served here");
        return WS_HTTP_RESPONSE;
    }
    /* The target's path, without a query. */
    const char *q = memchr(target, '?', tlen);
    size_t plen = q != NULL ? (size_t)(q - target) : tlen;
#define PATH_IS(s) (plen == sizeof s - 1 && memcmp(target, s, plen) == 0)
    if (PATH_IS("/.well-known/host-meta") || PATH_IS("/.well-known/host-meta.json")) {
        bool json = PATH_IS("/.well-known/host-meta.json");
        if (h.host != NULL && host_ok(h.host, h.host_n))
            host_meta(resp, json, tls, h.host, h.host_n);
        else
            host_meta(resp, json, tls, domain, strlen(domain));
        return WS_HTTP_RESPONSE;
    }
    if (!PATH_IS(WS_PATH)) {
        http_error(resp, "404 Not Found", NULL, "not found: the XMPP WebSocket is at " WS_PATH);
        return WS_HTTP_RESPONSE;
    }
#undef PATH_IS
    if (h.upgrade == NULL || !list_has(h.upgrade, h.upgrade_n, "websocket") || h.connection == NULL ||
        !list_has(h.connection, h.connection_n, "upgrade")) {
        http_error(resp, "426 Upgrade Required", "Upgrade: websocket\r\nConnection: Upgrade\r\n",
                   "this is a WebSocket endpoint: send Upgrade: websocket and Connection: Upgrade");
        return WS_HTTP_RESPONSE;
    }
    if (h.version == NULL || h.version_n != 2 || memcmp(h.version, "13", 2) != 0) {
        http_error(resp, "426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n",
                   "unsupported Sec-WebSocket-Version: 13 is required");
        return WS_HTTP_RESPONSE;
    }
    unsigned char raw[32];
    if (h.key == NULL || h.key_n != 24 || EVP_DecodeBlock(raw, (const unsigned char *)h.key, 24) != 18 ||
        h.key[22] != '=' || h.key[23] != '=') {
        http_error(resp, "400 Bad Request", NULL, "Sec-WebSocket-Key must be 16 bytes in base64");
        return WS_HTTP_RESPONSE;
    }
    if (h.protocol == NULL || !list_has(h.protocol, h.protocol_n, "xmpp")) {
        http_error(resp, "400 Bad Request", NULL, "the xmpp subprotocol is required (Sec-WebSocket-Protocol: xmpp)");
        return WS_HTTP_RESPONSE;
    }
    if (norigins > 0 && h.origin != NULL) {
        bool ok = false;
        for (size_t i = 0; i < norigins && !ok; i++)
            ok = strlen(origins[i]) == h.origin_n && strncasecmp(origins[i], h.origin, h.origin_n) == 0;
        if (!ok) {
            http_error(resp, "403 Forbidden", NULL, "this Origin may not open the XMPP WebSocket");
            return WS_HTTP_RESPONSE;
        }
    }
    unsigned char in[24 + sizeof WS_GUID];
    memcpy(in, h.key, 24);
    memcpy(in + 24, WS_GUID, sizeof WS_GUID - 1);
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1(in, 24 + sizeof WS_GUID - 1, md);
    char accept[40];
    EVP_EncodeBlock((unsigned char *)accept, md, SHA_DIGEST_LENGTH);
    buf_printf(resp,
               "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n",
               accept);
    return WS_HTTP_UPGRADE;
}

/* RFC 7395 output ---------------------------------------------------------------------- */

enum { SC_TEXT = 0, SC_LT, SC_TAG, SC_QUOTE, SC_PI, SC_PI_Q };

void ws_out_init(struct ws_out *o)
{
    memset(o, 0, sizeof *o);
    buf_init(&o->xml);
}

void ws_out_release(struct ws_out *o)
{
    if (o == NULL)
        return;
    buf_release(&o->xml);
}

static bool starts(const char *p, size_t n, const char *s)
{
    size_t l = strlen(s);
    return n >= l && memcmp(p, s, l) == 0;
}

/* Frames one top-level element e (n bytes, starting with '<'). */
static void emit(struct ws_out *o, const char *e, size_t n, struct buf *wire)
{
    if (starts(e, n, "</stream:stream")) {
        static const char close_el[] = "<close xmlns='" WS_NS_FRAMING "'/>";
        ws_frame_append(wire, WS_OP_TEXT, close_el, sizeof close_el - 1);
        ws_close_append(wire, WS_STATUS_NORMAL, NULL);
        o->closed = true;
        return;
    }
    /* The name ends at the first space, '/' or '>'. */
    size_t ne = 1;
    while (ne < n && e[ne] != ' ' && e[ne] != '/' && e[ne] != '>' && e[ne] != '\t' && e[ne] != '\n')
        ne++;
    if (ne == sizeof "<stream:stream" - 1 && starts(e, n, "<stream:stream")) {
        /* Our own header: keep its attributes but the two namespace declarations. */
        struct buf b;
        buf_init(&b);
        buf_append_str(&b, "<open xmlns='" WS_NS_FRAMING "'");
        size_t i = ne;
        size_t stop = n;
        while (stop > i && (e[stop - 1] == '>' || e[stop - 1] == '/'))
            stop--;
        while (i < stop) {
            while (i < stop && e[i] == ' ')
                i++;
            size_t s = i;
            char q = 0;
            while (i < stop && (q != 0 || e[i] != ' ')) {
                if (q == 0 && (e[i] == '\'' || e[i] == '"'))
                    q = e[i];
                else if (q != 0 && e[i] == q)
                    q = 0;
                i++;
            }
            if (i > s && !starts(e + s, i - s, "xmlns=") && !starts(e + s, i - s, "xmlns:stream=")) {
                buf_append_str(&b, " ");
                buf_append(&b, e + s, i - s);
            }
        }
        buf_append_str(&b, "/>");
        ws_frame_append(wire, WS_OP_TEXT, b.data, b.len);
        buf_release(&b);
        return;
    }
    const char *decl = NULL;
    if (ne > 8 && starts(e, n, "<stream:"))
        decl = " xmlns:stream='http://etherx.jabber.org/streams'";
    else {
        /* Does the start tag declare a default namespace? */
        const char *gt = memchr(e, '>', n);
        size_t tl = gt != NULL ? (size_t)(gt - e) : n;
        bool has = false;
        for (size_t i = ne; i + 7 <= tl; i++)
            if ((e[i] == ' ' || e[i] == '\t' || e[i] == '\n') && memcmp(e + i + 1, "xmlns=", 6) == 0) {
                has = true;
                break;
            }
        if (!has)
            decl = " xmlns='jabber:client'";
    }
    size_t dl = decl != NULL ? strlen(decl) : 0;
    size_t total = n + dl;
    /* The frame header, then the element with decl after its name. */
    unsigned char h[10];
    size_t hl;
    h[0] = 0x80 | WS_OP_TEXT;
    if (total < 126) {
        h[1] = (unsigned char)total;
        hl = 2;
    } else if (total <= 0xFFFF) {
        h[1] = 126;
        h[2] = (unsigned char)(total >> 8);
        h[3] = (unsigned char)total;
        hl = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)total >> (56 - 8 * i));
        hl = 10;
    }
    buf_append(wire, h, hl);
    buf_append(wire, e, ne);
    if (dl > 0)
        buf_append(wire, decl, dl);
    buf_append(wire, e + ne, n - ne);
}

void ws_out_write(struct ws_out *o, const void *p, size_t n, struct buf *wire)
{
    if (o->closed || n == 0)
        return;
    buf_append(&o->xml, p, n);
    const char *x = o->xml.data;
    size_t len = o->xml.len;
    size_t i = o->scan;
    for (; i < len && !o->closed; i++) {
        char ch = x[i];
        switch (o->state) {
        case SC_TEXT:
            if (ch == '<') {
                if (o->depth == 0)
                    o->start = i;
                o->state = SC_LT;
            } else if (o->depth == 0) {
                o->start = i + 1;   /* whitespace between top-level elements: dropped */
            }
            break;
        case SC_LT:
            o->slash = false;
            if (ch == '?') {
                o->state = SC_PI;
            } else {
                o->end_tag = ch == '/';
                o->state = SC_TAG;
            }
            break;
        case SC_TAG:
            if (ch == '\'' || ch == '"') {
                o->quote = ch;
                o->state = SC_QUOTE;
            } else if (ch == '>') {
                o->state = SC_TEXT;
                bool whole = false;
                if (o->end_tag) {
                    if (o->depth <= 1) {
                        o->depth = 0;
                        whole = true;
                    } else {
                        o->depth--;
                    }
                } else if (o->slash) {
                    whole = o->depth == 0;
                } else if (o->depth == 0 && i - o->start >= 14 && memcmp(x + o->start, "<stream:stream", 14) == 0) {
                    whole = true;   /* the stream header never closes: it goes out alone */
                } else {
                    o->depth++;
                }
                if (whole) {
                    emit(o, x + o->start, i + 1 - o->start, wire);
                    o->start = i + 1;
                }
            } else if (ch == '/') {
                o->slash = true;
            } else if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') {
                o->slash = false;
            }
            break;
        case SC_QUOTE:
            if (ch == o->quote) {
                o->state = SC_TAG;
                o->slash = false;
            }
            break;
        case SC_PI:
            if (ch == '?')
                o->state = SC_PI_Q;
            break;
        case SC_PI_Q:
            if (ch == '>') {
                o->state = SC_TEXT;
                if (o->depth == 0)
                    o->start = i + 1;   /* the XML declaration: not sent over WebSocket */
            } else if (ch != '?') {
                o->state = SC_PI;
            }
            break;
        }
    }
    if (o->closed) {
        buf_release(&o->xml);
        o->scan = o->start = 0;
        return;
    }
    /* Keep only the unfinished element. */
    size_t keep_from = o->depth == 0 && o->state == SC_TEXT ? len : o->start;
    if (keep_from > len)
        keep_from = len;
    buf_consume(&o->xml, keep_from);
    o->scan = len - keep_from;
    o->start -= keep_from < o->start ? keep_from : o->start;
    if (o->xml.len == 0)
        buf_release(&o->xml);
}

/* RFC 7395 input ----------------------------------------------------------------------- */

static void attr_out(struct buf *xml, const char *name, const char *v)
{
    if (v == NULL)
        return;
    buf_printf(xml, " %s='", name);
    xml_escape(xml, v, strlen(v));
    buf_append_str(xml, "'");
}

int ws_in_translate(const char *msg, size_t n, struct buf *xml, char *err, size_t errlen)
{
    size_t i = 0;
    while (i < n && (msg[i] == ' ' || msg[i] == '\t' || msg[i] == '\r' || msg[i] == '\n'))
        i++;
    bool open = starts(msg + i, n - i, "<open") && n - i > 5 && strchr(" \t\r\n/>", msg[i + 5]) != NULL;
    bool close = starts(msg + i, n - i, "<close") && n - i > 6 && strchr(" \t\r\n/>", msg[i + 6]) != NULL;
    if (!open && !close) {
        buf_append(xml, msg, n);
        return 0;
    }
    struct xml_node *el = xml_parse_document(msg, n, err, errlen);
    if (el == NULL)
        return -1;
    if (el->ns == NULL || strcmp(el->ns, WS_NS_FRAMING) != 0) {
        snprintf(err, errlen, "<%s/> must be in the %s namespace", open ? "open" : "close", WS_NS_FRAMING);
        xml_free(&el);
        return -1;
    }
    if (close) {
        buf_append_str(xml, "</stream:stream>");
    } else {
        buf_append_str(xml, "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'");
        attr_out(xml, "to", xml_attr(el, "to"));
        attr_out(xml, "from", xml_attr(el, "from"));
        attr_out(xml, "version", xml_attr(el, "version"));
        attr_out(xml, "xml:lang", xml_attr_ns(el, "http://www.w3.org/XML/1998/namespace", "lang"));
        buf_append_str(xml, ">");
    }
    xml_free(&el);
    return 0;
}
