/* tests/fuzz/fuzz_ws.c - libFuzzer target for c2s/ws.c: the frame parser (same result for any split; limits and failures stated), the HTTP request answer, the RFC 7395 input translation and the output framer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../c2s/ws.h"
#include "buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct run {
    struct buf log;
    size_t limit;
};

static int on_ev(void *ud, enum ws_opcode op, const char *p, size_t n, unsigned code)
{
    struct run *r = ud;
    if (op == WS_OP_TEXT && n > r->limit)
        abort();   /* a message over the limit was delivered */
    if ((op == WS_OP_PING || op == WS_OP_PONG || op == WS_OP_CLOSE) && n > 125)
        abort();
    if (op == WS_OP_TEXT && !ws_utf8_valid((const unsigned char *)p, n))
        abort();
    buf_printf(&r->log, "%d:%u:%zu:", (int)op, code, n);
    buf_append(&r->log, p, n);
    if (op == WS_OP_TEXT) {
        struct buf x;
        buf_init(&x);
        char err[160];
        err[0] = '\0';
        if (ws_in_translate(p, n, &x, err, sizeof err) == -1 && err[0] == '\0')
            abort();   /* every refusal says why */
        buf_release(&x);
    }
    return 0;
}

/* Parses all of data in pieces of step bytes; the log of events and the outcome. */
static void parse(const uint8_t *data, size_t size, size_t step, size_t limit, struct buf *log)
{
    struct ws_parser p;
    ws_parser_init(&p, limit);
    struct run r = {.limit = limit};
    buf_init(&r.log);
    int rc = 0;
    for (size_t i = 0; i < size && rc == 0; i += step)
        rc = ws_parser_feed(&p, (const char *)data + i, size - i < step ? size - i : step, on_ev, &r);
    if (rc == -1 && (p.err[0] == '\0' || p.status < 1000))
        abort();
    buf_printf(&r.log, "|rc=%d status=%d", rc, rc == -1 ? (int)p.status : 0);
    buf_append(log, r.log.data, r.log.len);
    buf_release(&r.log);
    ws_parser_release(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t step = (size_t)data[0] % 17 + 1;
    size_t limit = (size_t)data[1] * 8;
    data += 2;
    size -= 2;
    /* The same events whatever the split. */
    struct buf a, b;
    buf_init(&a);
    buf_init(&b);
    parse(data, size, size > 0 ? size : 1, limit, &a);
    parse(data, size, step, limit, &b);
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) {
        fprintf(stderr, "split %zu changed the events\n", step);
        abort();
    }
    buf_release(&a);
    buf_release(&b);

    /* The HTTP answer: always a complete response. */
    static const char *const origins[] = {"https://a.example"};
    struct buf resp;
    buf_init(&resp);
    enum ws_http_result hr = ws_http_answer((const char *)data, size, step & 1, "localhost", origins, step & 2 ? 1 : 0, &resp);
    if (resp.len < 12 || memcmp(resp.data, "HTTP/1.1 ", 9) != 0)
        abort();
    if (hr == WS_HTTP_UPGRADE && memcmp(resp.data, "HTTP/1.1 101", 12) != 0)
        abort();
    buf_release(&resp);

    /* The output framer over arbitrary bytes: every frame well-formed and unmasked. */
    struct ws_out o;
    ws_out_init(&o);
    struct buf wire;
    buf_init(&wire);
    for (size_t i = 0; i < size; i += step)
        ws_out_write(&o, data + i, size - i < step ? size - i : step, &wire);
    size_t i = 0;
    while (i < wire.len) {
        const unsigned char *h = (const unsigned char *)wire.data + i;
        if (wire.len - i < 2 || (h[1] & 0x80))
            abort();
        size_t n = h[1] & 0x7F, hl = 2;
        if (n == 126) {
            if (wire.len - i < 4)
                abort();
            n = ((size_t)h[2] << 8) | h[3];
            hl = 4;
        } else if (n == 127) {
            if (wire.len - i < 10)
                abort();
            n = 0;
            for (int k = 0; k < 8; k++)
                n = (n << 8) | h[2 + k];
            hl = 10;
        }
        if (n > wire.len - i - hl)
            abort();
        i += hl + n;
    }
    buf_release(&wire);
    ws_out_release(&o);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif
