/* tests/fuzz/fuzz_http_resp.c - libFuzzer target for the own HTTP client's response parser (pusher/http_resp.c): any bytes, fed whole and in pieces, must give the same verdict, body and bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../pusher/http_resp.h"
#include "buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct outcome {
    enum http_resp_state state;
    int status;
    bool close;
    size_t used;
    struct buf body;
};

/* Byte 0: the piece size (0: whole), byte 1 bit 0: HEAD, bit 1: EOF after the input. */
static void run(const char *p, size_t n, size_t step, bool head, bool eof, struct outcome *o)
{
    struct http_resp r;
    http_resp_init(&r);
    buf_init(&o->body);
    http_resp_start(&r, &o->body, 256, head);
    size_t off = 0;
    o->used = 0;
    while (off < n) {
        size_t piece = step == 0 || n - off < step ? n - off : step;
        ssize_t used = http_resp_feed(&r, p + off, piece);
        if (used == -1)
            break;
        if ((size_t)used > piece)
            abort();
        if (r.state == HTTP_RESP_DONE) {
            o->used = off + (size_t)used;
            break;
        }
        if ((size_t)used != piece)
            abort();   /* short only when the response ended */
        off += piece;
    }
    if (eof && r.state != HTTP_RESP_DONE && r.state != HTTP_RESP_ERROR) {
        int rc = http_resp_eof(&r);
        if ((rc == 0) != (r.state == HTTP_RESP_DONE))
            abort();
    }
    if (r.state == HTTP_RESP_ERROR && r.error == NULL)
        abort();
    if (r.state == HTTP_RESP_DONE && (r.status < 200 || r.status > 599))
        abort();
    if (o->body.len > 256 || r.line.len > HTTP_RESP_LINE_MAX)
        abort();
    o->state = r.state;
    o->status = r.status;
    o->close = r.close;
    http_resp_release(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t step = data[0] % 17;
    bool head = data[1] & 1, eof = data[1] & 2;
    /* a copy, so a read past the end is caught by ASan */
    char *copy = malloc(size - 2 ? size - 2 : 1);
    memcpy(copy, data + 2, size - 2);
    struct outcome whole, pieces;
    run(copy, size - 2, 0, head, eof, &whole);
    run(copy, size - 2, step, head, eof, &pieces);
    if (whole.state != pieces.state || whole.status != pieces.status || whole.close != pieces.close ||
        whole.body.len != pieces.body.len || (whole.body.len > 0 && memcmp(whole.body.data, pieces.body.data, whole.body.len) != 0) ||
        (whole.state == HTTP_RESP_DONE && whole.used != pieces.used))
        abort();
    buf_release(&whole.body);
    buf_release(&pieces.body);
    free(copy);
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif
