/* tests/unit/http_srv.h - a small HTTP/1.1 server on a test's libev loop (keep-alive, Content-Length bodies), shared by the pusher's unit tests. */
#ifndef MK_TESTS_HTTP_SRV_H
#define MK_TESTS_HTTP_SRV_H
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "buf.h"
#include "util.h"

enum srv_mode {
    SRV_ECHO = 0,        /* 200, the request body as the response body */
    SRV_STATUS,          /* status + extra_headers, empty body */
    SRV_HANG,            /* reads, never answers */
    SRV_CLOSE,           /* reads a request, closes the connection without an answer */
    SRV_BIG,             /* 200 with a body of big_len bytes */
    SRV_ECHO_CLOSE,      /* as SRV_ECHO with Connection: close, then closes: the requests read after the
                          * first on a connection are never answered */
    SRV_ECHO_FIRST,      /* as SRV_ECHO, keep-alive, but answers only the first request of each read and
                          * discards the rest of its buffer (a receiver that drops pipelined requests) */
};

struct srv_conn {
    ev_io io;
    struct srv *srv;
    struct buf in;
    struct srv_conn *next;
};

struct srv {
    struct ev_loop *loop;
    int fd;
    int port;
    ev_io accept_io;
    enum srv_mode mode;
    int status;
    const char *extra_headers;     /* "Name: value\r\n"... */
    size_t big_len;
    int accepted;
    int requests;
    int answered;
    int max_batch;                 /* most complete requests found in one read (pipelining) */
    int dropped;                   /* reads whose bytes after the first request SRV_ECHO_FIRST discarded */
    struct buf seen;               /* every answered request's body, each followed by "\n", in arrival order */
    struct buf last_head;          /* the last request's head */
    struct buf last_body;
    struct srv_conn *conns;
};

static void srv_close_conn(struct srv_conn *c)
{
    ev_io_stop(c->srv->loop, &c->io);
    close(c->io.fd);
    buf_release(&c->in);
    c->io.fd = -1;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w == -1 && errno == EAGAIN) {
            fd_set set;
            FD_ZERO(&set);
            FD_SET(fd, &set);
            select(fd + 1, NULL, &set, NULL, NULL);
            continue;
        }
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void srv_answer(struct srv *s, int fd, const char *body, size_t body_len)
{
    struct buf out;
    buf_init(&out);
    int status = s->mode == SRV_STATUS ? s->status : 200;
    bool echo = s->mode == SRV_ECHO || s->mode == SRV_ECHO_CLOSE || s->mode == SRV_ECHO_FIRST;
    buf_append(&s->seen, body, body_len);
    buf_append(&s->seen, "\n", 1);
    buf_printf(&out, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n%s%s\r\n", status,
               s->mode == SRV_BIG ? s->big_len : echo ? body_len : 0,
               s->mode == SRV_ECHO_CLOSE ? "Connection: close\r\n" : "", s->extra_headers ? s->extra_headers : "");
    s->answered++;
    if (echo)
        buf_append(&out, body, body_len);
    if (s->mode == SRV_BIG) {
        buf_reserve(&out, s->big_len);
        memset(out.data + out.len, 'x', s->big_len);
        out.len += s->big_len;
    }
    write_all(fd, out.data, out.len);
    buf_release(&out);
}

static void srv_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop, (void)revents;
    struct srv_conn *c = w->data;
    struct srv *s = c->srv;
    char tmp[4096];
    ssize_t n = read(w->fd, tmp, sizeof tmp);
    if (n == 0 || (n == -1 && errno != EAGAIN)) {
        srv_close_conn(c);
        return;
    }
    if (n == -1)
        return;
    buf_append(&c->in, tmp, (size_t)n);
    for (int batch = 1;; batch++) {
        const char *head_end = memmem(c->in.data, c->in.len, "\r\n\r\n", 4);
        if (head_end == NULL)
            return;
        size_t head_len = (size_t)(head_end - c->in.data) + 4;
        size_t clen = 0;
        for (const char *p = c->in.data; p < head_end; p++)
            if ((p == c->in.data || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0)
                clen = strtoul(p + 15, NULL, 10);
        if (c->in.len < head_len + clen)
            return;
        s->requests++;
        if (batch > s->max_batch)
            s->max_batch = batch;
        buf_reset(&s->last_head);
        buf_append(&s->last_head, c->in.data, head_len);
        buf_reset(&s->last_body);
        buf_append(&s->last_body, c->in.data + head_len, clen);
        if (s->mode == SRV_CLOSE) {
            srv_close_conn(c);
            return;
        }
        if (s->mode != SRV_HANG)
            srv_answer(s, w->fd, c->in.data + head_len, clen);
        if (s->mode == SRV_ECHO_CLOSE) {
            srv_close_conn(c);
            return;
        }
        if (s->mode == SRV_ECHO_FIRST) {
            s->dropped += c->in.len > head_len + clen;
            buf_reset(&c->in);
            return;
        }
        buf_consume(&c->in, head_len + clen);
    }
}

static void srv_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct srv *s = w->data;
    int fd = accept(s->fd, NULL, NULL);
    if (fd == -1)
        return;
    mk_set_nonblock(fd);
    s->accepted++;
    struct srv_conn *c = xcalloc(1, sizeof *c);
    c->srv = s;
    buf_init(&c->in);
    ev_io_init(&c->io, srv_read_cb, fd, EV_READ);
    c->io.data = c;
    ev_io_start(loop, &c->io);
    c->next = s->conns;
    s->conns = c;
}

static void srv_start(struct srv *s, struct ev_loop *loop)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    buf_init(&s->last_head);
    buf_init(&s->last_body);
    buf_init(&s->seen);
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (s->fd == -1) abort();
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(s->fd, (struct sockaddr *)&a, sizeof a) == -1 || listen(s->fd, 64) == -1)
        abort();
    socklen_t len = sizeof a;
    getsockname(s->fd, (struct sockaddr *)&a, &len);
    s->port = ntohs(a.sin_port);
    mk_set_nonblock(s->fd);
    ev_io_init(&s->accept_io, srv_accept_cb, s->fd, EV_READ);
    s->accept_io.data = s;
    ev_io_start(loop, &s->accept_io);
}

static void srv_stop(struct srv *s)
{
    ev_io_stop(s->loop, &s->accept_io);
    close(s->fd);
    while (s->conns != NULL) {
        struct srv_conn *c = s->conns;
        s->conns = c->next;
        if (c->io.fd != -1)
            srv_close_conn(c);
        free(c);
    }
    buf_release(&s->last_head);
    buf_release(&s->last_body);
    buf_release(&s->seen);
}

#endif
