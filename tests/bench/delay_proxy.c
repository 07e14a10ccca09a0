/* tests/bench/delay_proxy.c - the GD benchmark's delaying TCP proxy: adds a fixed delay to every chunk in both directions of each connection, on one libev loop. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

/* Usage: delay_proxy LISTEN_HOST TARGET_HOST TARGET_PORT DELAY_MS
 *
 * Listens on LISTEN_HOST (a free port) and forwards each connection to TARGET_HOST:TARGET_PORT;
 * every chunk read on one side leaves on the other DELAY_MS after it was read (one way, so
 * the round trip grows by twice that), in order. Prints "listening PORT" when ready. On
 * SIGUSR1 prints one line with how late the chunks left past their due time since the last
 * such line ("late_us p50=.. p99=.. p999=.. max=.. chunks=N bytes=B"); on SIGUSR2 switches
 * between DELAY_MS and no delay (the same proxy, the same CPU per chunk: what the delay alone
 * adds is the difference) and prints "delay_ms D"; a chunk never overtakes one queued before
 * it. On SIGTERM or SIGINT the report line, then it exits. It exists because
 * this kernel has no netem and a proxy in Python adds its own scheduling lag (its threads
 * take turns on the GIL) to the delay it is meant to add; here a chunk waits only for the
 * loop, which does nothing else. */

#define PROXY_READ (64 * 1024)
#define PROXY_LATE_MAX (4u << 20)       /* lateness samples kept (the rest are not counted) */

struct chunk {
    struct chunk *next;
    ev_tstamp due;
    size_t len, off;
    char data[];
};

struct pair;

/* One direction: reads from src, queues, writes to dst when due. */
struct way {
    struct pair *pair;
    int src, dst;
    ev_io rd, wr;
    ev_timer due;
    struct chunk *head, *tail;
    int eof;                            /* src ended: shut dst's write side once the queue is empty */
};

struct pair {
    struct way w[2];
    int fds[2];
    int ended;                          /* directions finished */
};

static ev_tstamp delay, delay_arg;       /* the delay in force; the one given */
static const char *target_host;
static int target_port;
static unsigned *late_us;
static size_t nlate;
static unsigned long long bytes, chunks;

static void way_write(struct ev_loop *loop, struct way *w);

static void pair_free(struct ev_loop *loop, struct pair *p)
{
    for (int i = 0; i < 2; i++) {
        struct way *w = &p->w[i];
        ev_io_stop(loop, &w->rd);
        ev_io_stop(loop, &w->wr);
        ev_timer_stop(loop, &w->due);
        while (w->head) {
            struct chunk *c = w->head;
            w->head = c->next;
            free(c);
        }
    }
    close(p->fds[0]);
    close(p->fds[1]);
    free(p);
}

/* A direction is over: the whole pair goes once both are (or at once on an error). */
static void way_end(struct ev_loop *loop, struct way *w, int error)
{
    struct pair *p = w->pair;
    if (error || ++p->ended == 2) {
        pair_free(loop, p);
        return;
    }
    ev_io_stop(loop, &w->rd);
    ev_io_stop(loop, &w->wr);
    ev_timer_stop(loop, &w->due);
    shutdown(w->dst, SHUT_WR);
}

static void on_due(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    way_write(loop, t->data);
}

static void on_writable(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    ev_io_stop(loop, io);
    way_write(loop, io->data);
}

/* Writes every chunk that is due; then waits for the next one's time, or for dst to drain. */
static void way_write(struct ev_loop *loop, struct way *w)
{
    ev_tstamp now = ev_time();
    while (w->head && w->head->due <= now) {
        struct chunk *c = w->head;
        ssize_t n = send(w->dst, c->data + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                ev_io_start(loop, &w->wr);
                return;
            }
            way_end(loop, w, 1);
            return;
        }
        if (c->off == 0 && nlate < PROXY_LATE_MAX)
            late_us[nlate++] = (unsigned)((now - c->due) * 1e6);
        c->off += (size_t)n;
        if (c->off < c->len) {
            ev_io_start(loop, &w->wr);
            return;
        }
        w->head = c->next;
        if (!w->head)
            w->tail = NULL;
        free(c);
    }
    if (w->head) {
        ev_timer_set(&w->due, w->head->due - now, 0.);
        ev_timer_start(loop, &w->due);
    } else if (w->eof) {
        way_end(loop, w, 0);
    }
}

static void on_readable(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    struct way *w = io->data;
    struct chunk *c = malloc(sizeof *c + PROXY_READ);
    if (!c) {
        way_end(loop, w, 1);
        return;
    }
    ssize_t n = recv(w->src, c->data, PROXY_READ, 0);
    if (n <= 0) {
        free(c);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n < 0) {
            way_end(loop, w, 1);
            return;
        }
        ev_io_stop(loop, io);
        w->eof = 1;
        if (!w->head)
            way_end(loop, w, 0);
        return;
    }
    struct chunk *small = realloc(c, sizeof *c + (size_t)n);
    if (small)
        c = small;
    c->next = NULL;
    c->due = ev_time() + delay;
    c->len = (size_t)n;
    c->off = 0;
    bytes += (unsigned long long)n;
    chunks++;
    int idle = w->head == NULL;
    if (w->tail)
        w->tail->next = c;
    else
        w->head = c;
    w->tail = c;
    if (idle && !ev_is_active(&w->wr)) {
        ev_timer_set(&w->due, delay, 0.);
        ev_timer_start(loop, &w->due);
    }
}

static int nonblock_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int dial(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)target_port)};
    if (inet_pton(AF_INET, target_host, &sa.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    /* A blocking connect: the target is on the next veth, and the benchmark's gd dials once. */
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    int a = accept(io->fd, NULL, NULL);
    if (a < 0)
        return;
    int b = dial();
    struct pair *p = b >= 0 ? calloc(1, sizeof *p) : NULL;
    if (!p) {
        close(a);
        if (b >= 0)
            close(b);
        return;
    }
    nonblock_nodelay(a);
    nonblock_nodelay(b);
    p->fds[0] = a;
    p->fds[1] = b;
    for (int i = 0; i < 2; i++) {
        struct way *w = &p->w[i];
        w->pair = p;
        w->src = p->fds[i];
        w->dst = p->fds[1 - i];
        ev_io_init(&w->rd, on_readable, w->src, EV_READ);
        ev_io_init(&w->wr, on_writable, w->dst, EV_WRITE);
        ev_init(&w->due, on_due);
        w->rd.data = w->wr.data = w->due.data = w;
        ev_io_start(loop, &w->rd);
    }
}

static int cmp_unsigned(const void *x, const void *y)
{
    unsigned a = *(const unsigned *)x, b = *(const unsigned *)y;
    return a < b ? -1 : a > b;
}

/* One line of lateness figures since the last one; the samples start again. */
static void report(void)
{
    qsort(late_us, nlate, sizeof *late_us, cmp_unsigned);
#define Q(q) (nlate ? late_us[(size_t)((double)(nlate - 1) * (q))] : 0u)
    printf("late_us p50=%u p99=%u p999=%u max=%u chunks=%llu bytes=%llu\n", Q(0.5), Q(0.99), Q(0.999), Q(1.0),
           chunks, bytes);
#undef Q
    fflush(stdout);
    nlate = 0;
    chunks = bytes = 0;
}

static void on_report(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)loop;
    (void)s;
    (void)revents;
    report();
}

static void on_toggle(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)loop;
    (void)s;
    (void)revents;
    delay = delay > 0 ? 0. : delay_arg;
    printf("delay_ms %g\n", delay * 1000.0);
    fflush(stdout);
}

static void on_stop(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)s;
    (void)revents;
    report();
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: delay_proxy LISTEN_HOST TARGET_HOST TARGET_PORT DELAY_MS\n");
        return 2;
    }
    target_host = argv[2];
    target_port = atoi(argv[3]);
    delay = delay_arg = atof(argv[4]) / 1000.0;
    late_us = malloc(PROXY_LATE_MAX * sizeof *late_us);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    if (!late_us || target_port <= 0 || target_port > 65535 || delay < 0 ||
        inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "delay_proxy: bad arguments\n");
        return 2;
    }
    int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
    socklen_t len = sizeof sa;
    if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(l, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(l, 64) != 0 ||
        getsockname(l, (struct sockaddr *)&sa, &len) != 0) {
        perror("delay_proxy: listen");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    /* select, not epoll: epoll_wait takes its timeout in whole milliseconds, which libev
     * rounds up, so every chunk left 0-1 ms late (p50 0.44 ms, p99 1.0 ms over the
     * delay); select's timeout is in microseconds, and the proxy watches a handful of
     * descriptors. */
    struct ev_loop *loop = ev_default_loop(EVBACKEND_SELECT);
    if (loop == NULL) {
        fprintf(stderr, "delay_proxy: no select backend in libev\n");
        return 1;
    }
    ev_io acc;
    ev_io_init(&acc, on_accept, l, EV_READ);
    ev_io_start(loop, &acc);
    ev_signal term, intr, usr1, usr2;
    ev_signal_init(&term, on_stop, SIGTERM);
    ev_signal_init(&intr, on_stop, SIGINT);
    ev_signal_init(&usr1, on_report, SIGUSR1);
    ev_signal_init(&usr2, on_toggle, SIGUSR2);
    ev_signal_start(loop, &term);
    ev_signal_start(loop, &intr);
    ev_signal_start(loop, &usr1);
    ev_signal_start(loop, &usr2);
    printf("listening %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    ev_run(loop, 0);
    return 0;
}
