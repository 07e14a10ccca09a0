/* tests/bench/gd_link_bench.c - messages/s and CPU per message through one inter-DC link (gd/link.c): two link ends in one process on one loop, over tcp loopback with CURVE. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <ev.h>
#include <zmq.h>

#include "../../gd/link.h"
#include "log.h"
#include "util.h"

struct sink {
    uint64_t received;
    uint64_t next_id;
    bool in_order;
};

static void on_recv(void *ud, const char *from, const struct gd_link_msg *m)
{
    struct sink *s = ud;
    if (m->msg_id != s->next_id)
        s->in_order = false;
    s->next_id = m->msg_id + 1;
    s->received++;
}

static double cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec
           + (double)ru.ru_stime.tv_usec / 1e6;
}

static struct gd_link *open_end(struct ev_loop *loop, const char *dc, const struct bus_keys *keys, const char *peer,
                                const struct bus_keys *peer_keys, const char *peer_ep, struct sink *s)
{
    struct gd_link_peer_conf pc = {.dc = peer, .public_key = peer_keys->public_key, .endpoint = peer_ep};
    struct gd_link_params p = {
        .dc = dc, .keys = *keys, .bind = "tcp://127.0.0.1:*", .peers = &pc, .npeers = 1, .queue_max = 100000,
    };
    struct gd_link_callbacks cb = {.recv = on_recv, .ud = s};
    char err[256];
    struct gd_link *l = gd_link_new(loop, &p, &cb, NULL, err, sizeof err);
    if (l == NULL) {
        fprintf(stderr, "gd_link_new: %s\n", err);
        exit(1);
    }
    return l;
}

/* Sends n messages of size bytes from a to b, keeping at most window unacknowledged
 * (the sender's queue), and prints the rate and the CPU per message (both ends and
 * ZeroMQ's I/O threads: the whole process). */
static void run(size_t size, uint64_t n, size_t window)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct bus_keys ka, kb;
    zmq_curve_keypair(ka.public_key, ka.secret_key);
    zmq_curve_keypair(kb.public_key, kb.secret_key);
    struct sink sa = {.in_order = true}, sb = {.in_order = true};
    struct gd_link *b = open_end(loop, "dc-b", &kb, "dc-a", &ka, NULL, &sb);
    struct gd_link *a = open_end(loop, "dc-a", &ka, "dc-b", &kb, gd_link_endpoint(b), &sa);
    char err[256];
    gd_link_set_endpoint(b, "dc-a", gd_link_endpoint(a), err, sizeof err);
    while (!gd_link_peer_up(a, "dc-b"))
        ev_run(loop, EVRUN_ONCE);
    char *payload = xmalloc(size);
    memset(payload, 'x', size);
    uint64_t sent = 0;
    int64_t t0 = mk_mono_us();
    double c0 = cpu_now();
    while (sb.received < n || gd_link_queue_depth(a, "dc-b") > 0) {
        while (sent < n && gd_link_queue_depth(a, "dc-b") < window) {
            const struct gd_link_msg m = {.msg_id = sent, .payload = payload, .len = size};
            if (gd_link_send(a, "dc-b", &m) == -1)
                break;
            sent++;
        }
        ev_run(loop, EVRUN_ONCE);
    }
    double secs = (double)(mk_mono_us() - t0) / 1e6;
    double cpu = cpu_now() - c0;
    printf("gd_link  payload=%5zu B  window=%6zu  %8llu msgs in %6.3f s  %9.0f msgs/s  %6.1f MB/s  cpu %5.2f us/msg%s\n",
           size, window, (unsigned long long)n, secs, (double)n / secs, (double)n * (double)size / secs / 1e6,
           cpu / (double)n * 1e6, sb.in_order ? "" : "  OUT OF ORDER");
    free(payload);
    gd_link_free(&a);
    gd_link_free(&b);
    ev_loop_destroy(loop);
}

int main(int argc, char **argv)
{
    log_set_level(LOG_LEVEL_WARN);
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 200000;
    run(100, n, 10000);
    run(1000, n, 10000);
    run(1000, n, 100);
    run(10000, n / 10, 1000);
    return 0;
}
