/* tests/bench/http_sink.c - the pusher benchmark's webhook receiver: HTTP/1.1 keep-alive on one libev loop, answers every request 200 at once, counts them. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "util.h"

/* Usage: http_sink PORT. Prints "listening PORT" when ready, and
 * "requests=N connections=M bytes=B" on SIGTERM or SIGINT, then exits. */

#define SINK_BUF (256 * 1024)

static const char reply[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

struct sink_conn {
    ev_io io;
    size_t len;                    /* bytes in in[] */
    char in[SINK_BUF];
};

static unsigned long long requests, connections, bytes_in;
static char out[SINK_BUF / 16 * sizeof reply];

static void conn_close(struct ev_loop *loop, struct sink_conn *c)
{
    ev_io_stop(loop, &c->io);
    close(c->io.fd);
    free(c);
}

static size_t content_length(const char *head, size_t len)
{
    for (size_t i = 0; i + 15 < len; i++)
        if ((head[i] == 'C' || head[i] == 'c') && (i == 0 || head[i - 1] == '\n') &&
            strncasecmp(head + i, "content-length:", 15) == 0)
            return strtoul(head + i + 15, NULL, 10);
    return 0;
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct sink_conn *c = w->data;
    ssize_t n = read(w->fd, c->in + c->len, sizeof c->in - c->len);
    if (n == 0 || (n == -1 && errno != EAGAIN && errno != EINTR)) {
        conn_close(loop, c);
        return;
    }
    if (n == -1)
        return;
    bytes_in += (unsigned long long)n;
    c->len += (size_t)n;
    size_t pos = 0, outlen = 0;
    for (;;) {
        const char *end = memmem(c->in + pos, c->len - pos, "\r\n\r\n", 4);
        if (end == NULL)
            break;
        size_t head = (size_t)(end - (c->in + pos)) + 4;
        size_t total = head + content_length(c->in + pos, head);
        if (c->len - pos < total)
            break;
        pos += total;
        requests++;
        if (outlen + sizeof reply - 1 > sizeof out) {
            if (write(w->fd, out, outlen) != (ssize_t)outlen) {
                conn_close(loop, c);
                return;
            }
            outlen = 0;
        }
        memcpy(out + outlen, reply, sizeof reply - 1);
        outlen += sizeof reply - 1;
    }
    if (outlen > 0 && write(w->fd, out, outlen) != (ssize_t)outlen) {
        /* A short write to a client that pipelines nothing cannot happen on loopback with
         * these sizes; treat it as a broken connection. */
        conn_close(loop, c);
        return;
    }
    memmove(c->in, c->in + pos, c->len - pos);
    c->len -= pos;
    if (c->len == sizeof c->in) {
        fprintf(stderr, "http_sink: a request larger than %d bytes\n", SINK_BUF);
        conn_close(loop, c);
    }
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    for (;;) {
        int fd = accept(w->fd, NULL, NULL);
        if (fd == -1)
            return;
        mk_set_nonblock(fd);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct sink_conn *c = xmalloc(sizeof *c);
        c->len = 0;
        ev_io_init(&c->io, on_read, fd, EV_READ);
        c->io.data = c;
        ev_io_start(loop, &c->io);
        connections++;
    }
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)w, (void)revents;
    printf("requests=%llu connections=%llu bytes=%llu\n", requests, connections, bytes_in);
    fflush(stdout);
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (fd == -1 || bind(fd, (struct sockaddr *)&a, sizeof a) == -1 || listen(fd, 512) == -1) {
        perror("http_sink");
        return 1;
    }
    mk_set_nonblock(fd);
    struct ev_loop *loop = ev_default_loop(0);
    ev_io acc;
    ev_io_init(&acc, on_accept, fd, EV_READ);
    ev_io_start(loop, &acc);
    ev_signal term, intr;
    ev_signal_init(&term, on_signal, SIGTERM);
    ev_signal_init(&intr, on_signal, SIGINT);
    ev_signal_start(loop, &term);
    ev_signal_start(loop, &intr);
    signal(SIGPIPE, SIG_IGN);
    printf("listening %s\n", argv[1]);
    fflush(stdout);
    ev_run(loop, 0);
    return 0;
}
