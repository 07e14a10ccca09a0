/* c2s/ws.h - WebSocket for XMPP (RFC 6455 framing, RFC 7395 subprotocol, XEP-0156 host-meta): pure parsers and writers, no sockets. */
#ifndef MK_C2S_WS_H
#define MK_C2S_WS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define WS_PATH            "/xmpp-websocket"
#define WS_MAX_REQUEST     8192    /* an HTTP request head longer than this is refused */
#define WS_NS_FRAMING      "urn:ietf:params:xml:ns:xmpp-framing"

enum ws_opcode {
    WS_OP_CONT = 0,
    WS_OP_TEXT = 1,
    WS_OP_BINARY = 2,
    WS_OP_CLOSE = 8,
    WS_OP_PING = 9,
    WS_OP_PONG = 10,
};

/* Close status codes (RFC 6455 section 7.4.1) the parser reports. */
enum ws_status {
    WS_STATUS_NORMAL = 1000,
    WS_STATUS_PROTOCOL = 1002,
    WS_STATUS_UNSUPPORTED = 1003,
    WS_STATUS_BAD_DATA = 1007,     /* text that is not UTF-8 */
    WS_STATUS_POLICY = 1008,
    WS_STATUS_TOO_BIG = 1009,
};

/* A complete message (text only: binary is refused) or a control frame. data is
 * borrowed for the call. For WS_OP_CLOSE, code is the peer's status (0 when none). */
typedef int ws_event_fn(void *ud, enum ws_opcode op, const char *data, size_t n, unsigned code);

struct ws_parser {
    size_t max_message;            /* a message (all its fragments) longer than this: 1009 */
    unsigned char hdr[14];
    size_t hdr_len;
    size_t hdr_need;               /* 2 until the length bytes are known */
    bool fin;
    unsigned opcode;
    uint64_t len;                  /* this frame's payload length */
    uint64_t got;                  /* payload bytes of this frame seen */
    unsigned char mask[4];
    bool in_message;               /* a fragmented text message is being assembled */
    struct buf msg;                /* the text message being assembled (unmasked) */
    unsigned char ctrl[125];       /* the control frame being assembled */
    bool failed;
    enum ws_status status;         /* why it failed */
    char err[96];                  /* one sentence: why it failed */
};

/* Prepares p for a client's frames (they must be masked). */
void ws_parser_init(struct ws_parser *p, size_t max_message);
void ws_parser_release(struct ws_parser *p);     /* NULL-safe */
/* Parses n bytes (any split). cb fires for each complete text message and each
 * control frame; a non-zero return from cb stops the feed (returns 0). Borrows data.
 * Returns 0, or -1 once the input broke RFC 6455 (p->status and p->err say how; later
 * feeds return -1 at once). */
int ws_parser_feed(struct ws_parser *p, const char *data, size_t n, ws_event_fn *cb, void *ud);

/* Whether the n bytes are well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
bool ws_utf8_valid(const unsigned char *s, size_t n);

/* Appends one unmasked frame (server to client, FIN set) with payload p to out. */
void ws_frame_append(struct buf *out, enum ws_opcode op, const void *p, size_t n);
/* Appends a Close frame with status code and reason (reason cut to fit 125 bytes). */
void ws_close_append(struct buf *out, unsigned code, const char *reason);

/* What a request head asked for. */
enum ws_http_result {
    WS_HTTP_UPGRADE = 0,   /* the 101 response is in resp: frames follow */
    WS_HTTP_RESPONSE,      /* a complete response (host-meta or an error) is in resp: close after it */
};

/* Answers one HTTP/1.1 request head (without the blank line's bytes counted or with,
 * either way; n is the head's length). Borrows everything; appends the response to
 * resp. tls: whether the listener is wss (for the host-meta URL). domain: the XMPP
 * domain served. origins: when norigins > 0, an upgrade whose Origin header is not
 * one of them is refused (403); a request without Origin (not a browser) is not.
 * Errors (400, 403, 404, 405, 426) come back as WS_HTTP_RESPONSE with a
 * one-line text body saying what was wrong. */
enum ws_http_result ws_http_answer(const char *head, size_t n, bool tls, const char *domain,
                                   const char *const *origins, size_t norigins, struct buf *resp);

/* RFC 7395 output: the server's XMPP byte stream (stream header, top-level elements,
 * closing tag, in any split) into one text frame per top-level element. */
struct ws_out {
    struct buf xml;        /* bytes not yet framed (part of an element) */
    size_t scan;           /* bytes of xml already scanned */
    int depth;             /* element depth at scan */
    int state;             /* scanner state at scan */
    char quote;            /* the quote an attribute value in the scanned tag opened */
    bool end_tag;          /* the tag being scanned is </...> */
    bool slash;            /* the last non-space char in the tag was '/' */
    size_t start;          /* where the current top-level element (or token) begins */
    bool closed;           /* </stream:stream> went out as <close/> and a Close frame */
};

void ws_out_init(struct ws_out *o);
void ws_out_release(struct ws_out *o);          /* NULL-safe */
/* Takes n more bytes of server XML (borrowed) and appends to wire a text frame for
 * each top-level element they complete: the stream header becomes <open/>, the
 * closing tag <close/> followed by a Close frame (1000); stream-prefixed elements get
 * the stream namespace declared, stanzas without xmlns get jabber:client. Nothing is
 * appended once closed. */
void ws_out_write(struct ws_out *o, const void *p, size_t n, struct buf *wire);

/* RFC 7395 input: turns one client message into what the stream parser reads: an
 * <open/> (framing namespace) into a stream header carrying its to, version and
 * xml:lang; a <close/> into the closing tag; anything else is appended unchanged.
 * Returns 0, or -1 when an <open/> or <close/> is malformed (err says why). */
int ws_in_translate(const char *msg, size_t n, struct buf *xml, char *err, size_t errlen);

/* A WebSocket client connection's state (struct conn's ws, NULL on TCP). */
struct ws_link {
    bool upgraded;         /* the 101 went out: frames follow */
    bool tls;              /* wss */
    struct buf head;       /* the HTTP request head so far */
    struct ws_parser in;
    struct ws_out out;
    struct buf xml;        /* one message translated for the stream parser */
};
#endif
