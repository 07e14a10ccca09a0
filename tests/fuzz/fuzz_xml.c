/* tests/fuzz/fuzz_xml.c - libFuzzer target for the XML stream parser, documents and the serializer. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "buf.h"
#include "util.h"
#include "xml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct run {
    struct xml_parser *parser;
    struct buf trace;        /* every non-error event, as text */
    struct buf steps;        /* after each feed: its result, pending bytes, error and its text */
    bool error;
    int events;
    int reset_at;            /* reset from the callback at this event (-1: never) */
    bool did_reset;
};

/* parse -> serialize -> parse -> serialize must be stable. */
static void check_round_trip(const struct xml_node *n)
{
    struct buf a, b;
    buf_init(&a);
    buf_init(&b);
    xml_serialize(n, NULL, &a);
    char err[160];
    struct xml_node *again = xml_parse_document(a.data, a.len, err, sizeof err);
    if (again == NULL) {
        fprintf(stderr, "serialized tree does not parse (%s): %s\n", err, buf_cstr(&a));
        abort();
    }
    xml_serialize(again, NULL, &b);
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) {
        fprintf(stderr, "round trip differs:\n%s\n%s\n", buf_cstr(&a), buf_cstr(&b));
        abort();
    }
    xml_free(&again);
    buf_release(&a);
    buf_release(&b);
}

static void on_event(void *ud, enum xml_event_kind kind, struct xml_node **node)
{
    struct run *r = ud;
    switch (kind) {
    case XML_EVENT_STREAM_OPEN:
        buf_append_str(&r->trace, "O:");
        xml_serialize(*node, NULL, &r->trace);
        break;
    case XML_EVENT_STANZA:
        buf_append_str(&r->trace, "S:");
        xml_serialize(*node, xml_parser_stream_ns(r->parser), &r->trace);
        check_round_trip(*node);
        break;
    case XML_EVENT_STREAM_CLOSE:
        buf_append_str(&r->trace, "C");
        break;
    case XML_EVENT_ERROR:
        if (node != NULL || xml_parser_error(r->parser) == XML_ERROR_NONE)
            abort();
        r->error = true;
        return;
    }
    buf_append_str(&r->trace, "\n");
    if (r->events++ == r->reset_at) {
        buf_append_str(&r->trace, "R\n");
        xml_parser_reset(r->parser);
        r->did_reset = true;
    }
}

/* Feeds data whole (seed 0) or in pieces of 1..max_piece bytes from a PRNG;
 * with idle, calls xml_parser_idle after every feed. */
static void run_stream(struct run *r, const struct xml_limits *limits, const uint8_t *data,
                       size_t size, uint32_t seed, size_t max_piece, int reset_at, bool idle)
{
    buf_init(&r->trace);
    buf_init(&r->steps);
    r->error = false;
    r->events = 0;
    r->reset_at = reset_at;
    r->did_reset = false;
    bool restarted = false;
    r->parser = xml_parser_new(limits, on_event, r);
    uint32_t x = seed | 1;
    size_t off = 0;
    while (off < size) {
        size_t len = size - off;
        if (seed != 0) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            size_t piece = 1 + x % max_piece;
            if (piece < len)
                len = piece;
        }
        int rc = xml_parser_feed(r->parser, (const char *)data + off, len);
        if (rc == -1 && !r->error)
            abort();
        if (xml_parser_pending(r->parser) > limits->max_stanza_bytes + 8192)
            abort();
        if (idle && xml_parser_idle(r->parser) &&
            (xml_parser_pending(r->parser) != 0 || xml_parser_idle(r->parser)))
            abort();
        enum xml_error_kind e = xml_parser_error(r->parser);
        buf_printf(&r->steps, "%d %zu %d %s\n", rc, xml_parser_pending(r->parser), (int)e,
                   e != XML_ERROR_NONE ? xml_parser_error_text(r->parser) : "");
        off += len;
        /* The rest of a feed is discarded by a reset; whatever the split,
         * the new stream then starts again from the first byte. */
        if (r->did_reset && !restarted) {
            restarted = true;
            off = 0;
        }
    }
    /* The input ends: what the parser kept back (a long token's tail) is parsed. */
    if (xml_parser_flush(r->parser) == -1 && !r->error)
        abort();
    if (xml_parser_deferred(r->parser) != 0)
        abort();
    xml_parser_free(&r->parser);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    /* Byte 0: limits; bytes 1-2: the split. The rest is the stream. */
    struct xml_limits limits = {
        .max_stanza_bytes = (data[0] & 1) ? 65536 : 256 + (size_t)(data[0] >> 1) * 16,
        .max_depth = 2 + (data[0] & 7),
        .max_attrs = 1 + (data[0] >> 4),
    };
    uint32_t seed = (uint32_t)data[1] | (uint32_t)data[2] << 8;
    size_t max_piece = 1 + (data[2] & 63);
    int reset_at = (data[1] & 0x80) ? (data[1] & 3) : -1;
    data += 3;
    size -= 3;

    struct run whole, split, idle;
    run_stream(&whole, &limits, data, size, 0, 1, reset_at, false);
    run_stream(&split, &limits, data, size, seed ? seed : 1, max_piece, reset_at, false);
    run_stream(&idle, &limits, data, size, seed ? seed : 1, max_piece, reset_at, true);
    /* How input is split must not change what comes out: the same events up to
     * an error, and an error in both or in neither. */
    if (whole.error != split.error || whole.trace.len != split.trace.len ||
        (whole.trace.len > 0 && memcmp(whole.trace.data, split.trace.data, whole.trace.len) != 0)) {
        fprintf(stderr, "split changed the events:\n--- whole (error %d)\n%s\n--- split (error %d)\n%s\n",
                whole.error, buf_cstr(&whole.trace), split.error, buf_cstr(&split.trace));
        abort();
    }
    /* Hibernating between feeds changes nothing at all, error texts included. */
    if (idle.trace.len != split.trace.len || idle.steps.len != split.steps.len ||
        (split.trace.len > 0 && memcmp(idle.trace.data, split.trace.data, split.trace.len) != 0) ||
        (split.steps.len > 0 && memcmp(idle.steps.data, split.steps.data, split.steps.len) != 0)) {
        fprintf(stderr, "hibernation changed the events:\n--- split\n%s%s\n--- hibernated\n%s%s\n",
                buf_cstr(&split.trace), buf_cstr(&split.steps), buf_cstr(&idle.trace),
                buf_cstr(&idle.steps));
        abort();
    }
    buf_release(&whole.trace);
    buf_release(&split.trace);
    buf_release(&idle.trace);
    buf_release(&whole.steps);
    buf_release(&split.steps);
    buf_release(&idle.steps);

    char err[160];
    struct xml_node *doc = xml_parse_document((const char *)data, size, err, sizeof err);
    if (doc != NULL) {
        check_round_trip(doc);
        struct xml_node *copy = xml_clone(doc);
        xml_free(&doc);
        xml_free(&copy);
    }
    return 0;
}

#ifdef FUZZ_REPLAY_MAIN
#include "replay_main.h"
#endif
