/* tests/bench/bus_curve_frames.c - CPU per ZeroMQ frame with and without CURVE: a PUSH and a PULL in one process over tcp loopback, back to back. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <zmq.h>

/* CPU seconds of the whole process (this thread and ZeroMQ's I/O threads). */
static double cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec
           + (double)ru.ru_stime.tv_usec / 1e6;
}

static int set_key(void *s, int opt, const char *z85)
{
    return zmq_setsockopt(s, opt, z85, 40);
}

/* Sends n frames of size bytes from a PUSH to a PULL and reads them all; returns the
 * CPU seconds it took, or -1. Without a ZAP handler CURVE accepts any client key: the
 * handshake is done once per connection anyway; what is measured is the per-frame
 * encryption and decryption. */
static double run(bool curve, size_t size, long n)
{
    void *ctx = zmq_ctx_new();
    void *pull = zmq_socket(ctx, ZMQ_PULL), *push = zmq_socket(ctx, ZMQ_PUSH);
    char pub[41], sec[41];
    zmq_curve_keypair(pub, sec);
    int one = 1, hwm = 10000;
    zmq_setsockopt(pull, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(push, ZMQ_SNDHWM, &hwm, sizeof hwm);
    if (curve) {
        zmq_setsockopt(pull, ZMQ_CURVE_SERVER, &one, sizeof one);
        set_key(pull, ZMQ_CURVE_SECRETKEY, sec);
        set_key(push, ZMQ_CURVE_SERVERKEY, pub);
        set_key(push, ZMQ_CURVE_PUBLICKEY, pub);
        set_key(push, ZMQ_CURVE_SECRETKEY, sec);
    }
    char ep[64];
    size_t eplen = sizeof ep;
    if (zmq_bind(pull, "tcp://127.0.0.1:*") == -1 || zmq_getsockopt(pull, ZMQ_LAST_ENDPOINT, ep, &eplen) == -1
        || zmq_connect(push, ep) == -1) {
        fprintf(stderr, "bind/connect: %s\n", zmq_strerror(zmq_errno()));
        return -1;
    }
    char *buf = calloc(1, size);
    /* One frame through first: the connection and handshake are not measured. */
    zmq_send(push, buf, size, 0);
    zmq_msg_t m;
    zmq_msg_init(&m);
    zmq_msg_recv(&m, pull, 0);
    double t0 = cpu_now();
    long got = 0;
    for (long sent = 0; sent < n;) {
        while (sent < n && zmq_send(push, buf, size, ZMQ_DONTWAIT) != -1)
            sent++;
        while (zmq_msg_recv(&m, pull, got < sent ? 0 : ZMQ_DONTWAIT) != -1)
            if (++got == sent)
                break;
    }
    while (got < n && zmq_msg_recv(&m, pull, 0) != -1)
        got++;
    double cpu = cpu_now() - t0;
    zmq_msg_close(&m);
    free(buf);
    int zero = 0;
    zmq_setsockopt(push, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(push);
    zmq_close(pull);
    zmq_ctx_term(ctx);
    return cpu;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    if (!zmq_has("curve")) {
        fprintf(stderr, "libzmq without CURVE\n");
        return 1;
    }
    static const size_t sizes[] = {200, 2048, 65536};
    printf("| frame bytes | frames | plain CPU us/frame | CURVE CPU us/frame | CURVE adds us/frame |\n");
    printf("|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        long n = sizes[i] >= 65536 ? 20000 : 200000;
        double plain = 0, curve = 0;
        /* Alternated, so that other work on the machine weighs on both alike. */
        for (int r = 0; r < rounds; r++) {
            bool first = r % 2 == 0;
            double a = run(first ? false : true, sizes[i], n), b = run(first ? true : false, sizes[i], n);
            if (a < 0 || b < 0)
                return 1;
            plain += first ? a : b;
            curve += first ? b : a;
        }
        double per = 1e6 / ((double)n * rounds);
        printf("| %zu | %ld | %.2f | %.2f | %.2f |\n", sizes[i], n * rounds, plain * per, curve * per,
               (curve - plain) * per);
    }
    return 0;
}
