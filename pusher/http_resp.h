/* pusher/http_resp.h - a strict, incremental HTTP/1.1 response parser (RFC 9112): status line, headers, Content-Length, chunked, close-delimited bodies; never touches a socket. */
#ifndef MK_PUSHER_HTTP_RESP_H
#define MK_PUSHER_HTTP_RESP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "buf.h"

/* A line (status line, header field, chunk size) longer than this is refused. */
#define HTTP_RESP_LINE_MAX 8192
/* The whole header section (and a trailer section) longer than this is refused. */
#define HTTP_RESP_HEAD_MAX (64 * 1024)
/* Bytes of a Retry-After value kept (longer ones cannot be a valid value). */
#define HTTP_RESP_RETRY_AFTER_MAX 64

enum http_resp_state {
    HTTP_RESP_STATUS = 0,          /* waiting for the status line */
    HTTP_RESP_HEADERS,
    HTTP_RESP_BODY_LENGTH,         /* Content-Length bytes */
    HTTP_RESP_CHUNK_SIZE,
    HTTP_RESP_CHUNK_DATA,
    HTTP_RESP_CHUNK_END,           /* the CRLF after a chunk's data */
    HTTP_RESP_TRAILERS,
    HTTP_RESP_BODY_CLOSE,          /* until the server closes the connection */
    HTTP_RESP_DONE,                /* one complete response */
    HTTP_RESP_ERROR,               /* malformed: error says why; the connection is unusable */
};

struct http_resp {
    enum http_resp_state state;
    int status;                    /* the final (non-1xx) status, once the status line is read */
    int minor;                     /* HTTP/1.<minor> */
    bool close;                    /* the connection ends after this response (Connection: close, HTTP/1.0
                                    * without keep-alive, a close-delimited body, TE with Content-Length) */
    bool keep_alive;               /* Connection: keep-alive seen (matters for HTTP/1.0) */
    bool no_body;                  /* the request was HEAD: no body whatever the headers say */
    bool chunked;
    bool has_length;
    uint64_t length;               /* Content-Length */
    uint64_t remaining;            /* of the body or of the current chunk */
    size_t head_bytes;             /* of the header (or trailer) section so far */
    struct buf line;               /* a line split across reads */
    struct buf *body;              /* the caller's: at most body_max bytes kept, the rest read and dropped */
    size_t body_max;
    char retry_after[HTTP_RESP_RETRY_AFTER_MAX];
    size_t retry_after_len;
    bool has_retry_after;          /* a Retry-After header (its value may have been too long to keep: then
                                    * retry_after_len is 0) */
    const char *error;             /* static text when state is HTTP_RESP_ERROR */
};

/* Ready for one response, its kept body appended to body (borrowed, must outlive the
 * parse; at most body_max bytes are appended). no_body: the request was HEAD. Keeps
 * r's line buffer storage from an earlier use (init it once with http_resp_init). */
void http_resp_start(struct http_resp *r, struct buf *body, size_t body_max, bool no_body);
/* First use: zeroes r (then http_resp_start). */
void http_resp_init(struct http_resp *r);
/* Frees r's own storage (not body). NULL-safe. */
void http_resp_release(struct http_resp *r);

/* Feeds n bytes of the connection (borrowed). Returns how many were used: all of them
 * unless the response ended within them (state HTTP_RESP_DONE: the rest belongs to no
 * response we asked for), or -1 when the response is malformed (state
 * HTTP_RESP_ERROR, error set). Interim 1xx responses are read and skipped. */
ssize_t http_resp_feed(struct http_resp *r, const char *p, size_t n);

/* The server closed the connection: a close-delimited body is complete (0, state
 * HTTP_RESP_DONE); anywhere else the response is incomplete (-1, HTTP_RESP_ERROR). */
int http_resp_eof(struct http_resp *r);
#endif
