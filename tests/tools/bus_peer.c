/* tests/tools/bus_peer.c - one end of the bus integration test: sends or applies Test envelopes over the reliable channel. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ev.h>

#include "bus.h"
#include "env.h"
#include "log.h"
#include "rchan.h"
#include "util.h"

struct peer_opts {
    const char *mode;
    const char *self;
    const char *inbox;
    char        peer_id[128];
    const char *peer_endpoint;
    const char *state_path;
    uint64_t    count;
    double      timeout_s;
    int         hwm;
    unsigned    resend_ms;
    const char *curve_dir;      /* --curve DIR: the cluster key there (made when missing) */
    double      rate;           /* --rate N: envelopes per second, handed over each millisecond; 0 = at once */
};

struct peer_app {
    struct peer_opts *opts;
    struct ev_loop   *loop;
    struct bus       *bus;
    /* send mode */
    struct rchan_tx  *tx;
    uint64_t          next_n;      /* the next Test.n to hand to the channel */
    ev_timer          pace;        /* with --rate */
    double            allowed;     /* envelopes the rate allows so far */
    int               exit_code;
    /* recv mode */
    struct rchan_rx  *rx;
    int               state_fd;
    uint64_t          applied;
    uint64_t          dups;
    uint64_t          gaps;
};

static void usage(void)
{
    fprintf(stderr,
            "usage: bus_peer send --self ID --inbox EP --peer ID=EP --count N [--timeout S]\n"
            "       bus_peer recv --self ID --inbox EP --peer ID=EP --state FILE\n"
            "options: --hwm N (0 = ZeroMQ default), --resend-ms N, --log-level LEVEL,\n"
            "         --rate N (send N envelopes/s, each millisecond's share at once),\n"
            "         --curve DIR (CURVE with the key pair in DIR/" BUS_KEYS_FILE ", made when missing)\n");
    exit(2);
}

static void send_hello(struct peer_app *app, bool reply)
{
    Mk__Hello hello = MK__HELLO__INIT;
    hello.role = (char *)"bus_peer";
    hello.started_us = (uint64_t)mk_now_us();
    hello.reply = reply;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_HELLO;
    e.hello = &hello;
    if (bus_send_env(app->bus, app->opts->peer_id, &e) == -1)
        log_warn("hello_unsent", "peer=%s errno=%d", app->opts->peer_id, errno);
}

/* ---- send ------------------------------------------------------------------- */

/* Hands Test{n} to the channel until count or its max_pending. */
static void sender_fill(struct peer_app *app)
{
    while (app->next_n <= app->opts->count && (app->opts->rate <= 0 || (double)app->next_n <= app->allowed)) {
        Mk__Test test = MK__TEST__INIT;
        test.n = app->next_n;
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_TEST;
        e.test = &test;
        if (rchan_send(app->tx, &e) == 0)
            return;     /* back-pressure: refilled on the next ack */
        app->next_n++;
    }
}

static void sender_check_done(struct peer_app *app)
{
    if (app->next_n > app->opts->count && rchan_tx_pending(app->tx) == 0) {
        uint64_t n = app->next_n - 1;
        printf("sent=%" PRIu64 " acked=%" PRIu64 "\n", n, n);
        fflush(stdout);
        app->exit_code = 0;
        ev_break(app->loop, EVBREAK_ALL);
    }
}

static void sender_recv(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    struct peer_app *app = ud;
    Mk__Envelope *e = *envp;
    if (strcmp(e->sender, app->opts->peer_id) != 0)
        return;
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_ACK:
        rchan_tx_ack(app->tx, e->ack->epoch, e->ack->upto);
        sender_fill(app);
        sender_check_done(app);
        break;
    case MK__ENVELOPE__PAYLOAD_HELLO:
        if (!e->hello->reply) {
            log_info("peer_hello", "peer=%s pending=%zu", e->sender, rchan_tx_pending(app->tx));
            rchan_tx_resend(app->tx);
            send_hello(app, true);
        }
        break;
    default:
        break;
    }
}

static void on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct peer_app *app = w->data;
    const struct bus_stats *st = bus_stats(app->bus);
    fprintf(stderr, "timeout: handed=%" PRIu64 " pending=%zu sent_frames=%" PRIu64
            " blocked=%" PRIu64 "\n", app->next_n - 1, rchan_tx_pending(app->tx),
            st->sent, st->send_blocked);
    app->exit_code = 1;
    ev_break(loop, EVBREAK_ALL);
}

static void on_pace(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct peer_app *app = w->data;
    app->allowed += app->opts->rate / 1000.0;
    sender_fill(app);
}

static int run_send(struct peer_app *app)
{
    app->tx = rchan_tx_new(app->loop, app->bus, app->opts->peer_id, 200000, app->opts->resend_ms);
    app->next_n = 1;
    app->exit_code = 1;
    ev_timer timeout;
    ev_timer_init(&timeout, on_timeout, app->opts->timeout_s, 0);
    timeout.data = app;
    ev_timer_start(app->loop, &timeout);
    send_hello(app, false);
    if (app->opts->rate > 0) {
        ev_timer_init(&app->pace, on_pace, 0.001, 0.001);
        app->pace.data = app;
        ev_timer_start(app->loop, &app->pace);
    }
    sender_fill(app);
    sender_check_done(app);
    if (app->exit_code != 0)
        ev_run(app->loop, 0);
    ev_timer_stop(app->loop, &timeout);
    ev_timer_stop(app->loop, &app->pace);
    const struct bus_stats *st = bus_stats(app->bus);
    log_info("send_done", "envelopes=%" PRIu64 " frames=%" PRIu64 " blocked=%" PRIu64 " received=%" PRIu64,
             st->sent, st->frames_sent, st->send_blocked, st->received);
    rchan_tx_free(&app->tx);
    return app->exit_code;
}

/* ---- recv ------------------------------------------------------------------- */

/* Reads the applied lines "epoch seq n", cuts a last line a kill left unfinished,
 * and restores the channel to the newest epoch's highest applied seq. */
static int receiver_restore(struct peer_app *app)
{
    struct stat sb;
    if (fstat(app->state_fd, &sb) == -1)
        return -1;
    size_t size = (size_t)sb.st_size;
    char *text = xmalloc(size + 1);
    size_t got = 0;
    while (got < size) {
        ssize_t r = pread(app->state_fd, text + got, size - got, (off_t)got);
        if (r == -1 && errno == EINTR)
            continue;
        if (r == -1) {
            free(text);
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    text[got] = '\0';
    size_t complete = 0;
    uint64_t epoch = 0, seq = 0, lines = 0;
    for (char *line = text; line < text + got;) {
        char *nl = memchr(line, '\n', (size_t)(text + got - line));
        if (nl == NULL)
            break;
        *nl = '\0';
        unsigned long long le, ls, ln;
        if (sscanf(line, "%llu %llu %llu", &le, &ls, &ln) == 3) {
            lines++;
            if (le != epoch) {
                epoch = le;
                seq = 0;
            }
            if (ls > seq)
                seq = ls;
        }
        line = nl + 1;
        complete = (size_t)(line - text);
    }
    free(text);
    if (complete < got && ftruncate(app->state_fd, (off_t)complete) == -1)
        return -1;
    app->applied = lines;
    if (epoch != 0)
        rchan_rx_restore(app->rx, app->opts->peer_id, epoch, seq);
    log_info("recv_restored", "lines=%" PRIu64 " epoch=%" PRIu64 " seq=%" PRIu64 " cut=%zu",
             lines, epoch, seq, got - complete);
    return 0;
}

static void receiver_apply(struct peer_app *app, const Mk__Envelope *e)
{
    char line[96];
    int len = snprintf(line, sizeof line, "%" PRIu64 " %" PRIu64 " %" PRIu64 "\n",
                       e->rc_epoch, e->rc_seq, e->test->n);
    for (int off = 0; off < len;) {
        ssize_t w = write(app->state_fd, line + off, (size_t)(len - off));
        if (w == -1 && errno == EINTR)
            continue;
        if (w == -1) {
            log_error("state_write", "error=\"%s\"", strerror(errno));
            exit(1);
        }
        off += (int)w;
    }
    app->applied++;
    rchan_rx_done(app->rx, e->sender, e->rc_epoch, e->rc_seq);
}

static void receiver_recv(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    struct peer_app *app = ud;
    Mk__Envelope *e = *envp;
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_TEST)
        return;
    switch (rchan_rx_check(app->rx, e)) {
    case RCHAN_NEW:
        receiver_apply(app, e);
        break;
    case RCHAN_DUP:
        app->dups++;
        break;
    case RCHAN_GAP:
        app->gaps++;
        break;
    }
}

static void on_stop_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

static int run_recv(struct peer_app *app)
{
    app->state_fd = open(app->opts->state_path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (app->state_fd == -1) {
        fprintf(stderr, "open %s: %s\n", app->opts->state_path, strerror(errno));
        return 1;
    }
    app->rx = rchan_rx_new(app->loop, app->bus);
    /* The state file holds everything ever applied: with it empty, nothing was, and a
     * sender must start from seq 1 (frames queued before a crash may arrive first). */
    rchan_rx_set_strict(app->rx, true);
    if (receiver_restore(app) == -1) {
        fprintf(stderr, "read %s: %s\n", app->opts->state_path, strerror(errno));
        rchan_rx_free(&app->rx);
        close(app->state_fd);
        return 1;
    }
    ev_signal sigterm, sigint;
    ev_signal_init(&sigterm, on_stop_signal, SIGTERM);
    ev_signal_init(&sigint, on_stop_signal, SIGINT);
    ev_signal_start(app->loop, &sigterm);
    ev_signal_start(app->loop, &sigint);
    send_hello(app, false);
    ev_run(app->loop, 0);
    ev_signal_stop(app->loop, &sigterm);
    ev_signal_stop(app->loop, &sigint);
    const struct bus_stats *st = bus_stats(app->bus);
    log_info("recv_done", "applied=%" PRIu64 " dups=%" PRIu64 " gaps=%" PRIu64 " envelopes=%" PRIu64
             " frames=%" PRIu64, app->applied, app->dups, app->gaps, st->received, st->frames_received);
    rchan_rx_free(&app->rx);
    close(app->state_fd);
    return 0;
}

/* ---- main ------------------------------------------------------------------- */

static void parse_args(int argc, char **argv, struct peer_opts *o)
{
    if (argc < 2)
        usage();
    o->mode = argv[1];
    o->timeout_s = 60;
    o->resend_ms = 500;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (strcmp(a, "--self") == 0) {
            o->self = v;
        } else if (strcmp(a, "--inbox") == 0) {
            o->inbox = v;
        } else if (strcmp(a, "--peer") == 0) {
            const char *eq = strchr(v, '=');
            if (eq == NULL || eq == v || (size_t)(eq - v) >= sizeof o->peer_id)
                usage();
            memcpy(o->peer_id, v, (size_t)(eq - v));
            o->peer_id[eq - v] = '\0';
            o->peer_endpoint = eq + 1;
        } else if (strcmp(a, "--count") == 0) {
            o->count = strtoull(v, NULL, 10);
        } else if (strcmp(a, "--timeout") == 0) {
            o->timeout_s = strtod(v, NULL);
        } else if (strcmp(a, "--state") == 0) {
            o->state_path = v;
        } else if (strcmp(a, "--hwm") == 0) {
            o->hwm = atoi(v);
        } else if (strcmp(a, "--rate") == 0) {
            o->rate = strtod(v, NULL);
        } else if (strcmp(a, "--curve") == 0) {
            o->curve_dir = v;
        } else if (strcmp(a, "--resend-ms") == 0) {
            o->resend_ms = (unsigned)strtoul(v, NULL, 10);
        } else if (strcmp(a, "--log-level") == 0) {
            enum log_level level;
            if (log_level_parse(v, &level) == -1)
                usage();
            log_set_level(level);
        } else {
            usage();
        }
    }
    bool send = strcmp(o->mode, "send") == 0, recv = strcmp(o->mode, "recv") == 0;
    if ((!send && !recv) || o->self == NULL || o->inbox == NULL || o->peer_endpoint == NULL
        || (send && o->count == 0) || (recv && o->state_path == NULL) || o->timeout_s <= 0)
        usage();
}

int main(int argc, char **argv)
{
    struct peer_opts opts = {0};
    parse_args(argc, argv, &opts);
    enum log_level level = log_get_level();
    log_init(opts.self, level, NULL);

    struct peer_app app = {0};
    app.opts = &opts;
    app.state_fd = -1;
    app.loop = ev_default_loop(0);
    bool send = strcmp(opts.mode, "send") == 0;
    char err[512];
    struct bus_keys keys;
    struct bus_options bo = {.hwm = opts.hwm};
    if (opts.curve_dir != NULL) {
        if (bus_keys_load(opts.curve_dir, true, &keys, err, sizeof err) == -1) {
            fprintf(stderr, "bus keys: %s\n", err);
            return 1;
        }
        bo.curve = &keys;
    }
    app.bus = bus_open(app.loop, opts.self, opts.inbox, &bo, send ? sender_recv : receiver_recv, &app, err,
                       sizeof err);
    if (app.bus == NULL) {
        fprintf(stderr, "bus: %s\n", err);
        return 1;
    }
    if (bus_add_peer(app.bus, opts.peer_id, opts.peer_endpoint, err, sizeof err) == -1) {
        fprintf(stderr, "peer: %s\n", err);
        bus_free(&app.bus);
        return 1;
    }
    int rc = send ? run_send(&app) : run_recv(&app);
    bus_free(&app.bus);
    ev_loop_destroy(app.loop);
    return rc;
}
