/* ctl/admin.c - meerkat ctl: admin commands against a running cluster and its store. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "cfg.h"
#include "ctl.h"
#include "util.h"

/* Waits for fd to be ready for events until deadline (monotonic us). Returns 0 or -1 on timeout. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - mk_mono_us();
        if (left <= 0)
            return -1;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)(left / 1000) + 1);
        if (r == -1 && errno == EINTR)
            continue;
        return r > 0 ? 0 : -1;
    }
}

int ctl_http_fetch(const char *host, int port, const char *path, int timeout_ms, size_t max, struct buf *body)
{
    int64_t deadline = mk_mono_us() + (int64_t)timeout_ms * 1000;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    const char *h = (host == NULL || strcmp(host, "0.0.0.0") == 0) ? "127.0.0.1" : host;
    if (inet_pton(AF_INET, h, &sa.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -1;
    int status = -1;
    struct buf resp;
    buf_init(&resp);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == -1 && errno != EINPROGRESS)
        goto done;
    if (wait_fd(fd, POLLOUT, deadline) == -1)
        goto done;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == -1 || soerr != 0)
        goto done;
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, h);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
        goto done;
    while (resp.len < max) {
        if (wait_fd(fd, POLLIN, deadline) == -1)
            break;
        char chunk[16384];
        size_t want = max - resp.len < sizeof chunk ? max - resp.len : sizeof chunk;
        ssize_t r = recv(fd, chunk, want, 0);
        if (r == -1 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r <= 0)
            break;
        buf_append(&resp, chunk, (size_t)r);
    }
    const char *text = buf_cstr(&resp);
    int code;
    if (sscanf(text, "HTTP/1.%*d %d", &code) == 1)
        status = code;
    if (body != NULL) {
        const char *b = strstr(text, "\r\n\r\n");
        if (b != NULL)
            buf_append(body, b + 4, resp.len - (size_t)(b + 4 - text));
    }
done:
    buf_release(&resp);
    close(fd);
    return status;
}

int ctl_http_get(const char *host, int port, const char *path, int timeout_ms, char *out, size_t outlen)
{
    struct buf body;
    buf_init(&body);
    int status = ctl_http_fetch(host, port, path, timeout_ms, 8192, out != NULL ? &body : NULL);
    if (out != NULL && outlen > 0)
        mk_strlcpy(out, buf_cstr(&body), outlen);
    buf_release(&body);
    return status;
}

static int cmd_health(const struct cfg *c)
{
    int down = 0;
    printf("%-12s %-7s %-22s %-7s %s\n", "PROCESS", "ROLE", "METRICS", "HEALTH", "READY");
    for (size_t i = 0; i < c->nprocs; i++) {
        const struct cfg_proc *p = &c->procs[i];
        char addr[64], body[256];
        if (p->metrics_port <= 0) {
            printf("%-12s %-7s %-22s %-7s %s\n", p->id, cfg_role_name(p->role), "-", "unknown", "no metrics port");
            continue;
        }
        snprintf(addr, sizeof addr, "%s:%d", p->metrics_host, p->metrics_port);
        int hs = ctl_http_get(p->metrics_host, p->metrics_port, "/healthz", 1000, NULL, 0);
        int rs = hs == 200 ? ctl_http_get(p->metrics_host, p->metrics_port, "/readyz", 1000, body, sizeof body) : -1;
        if (rs != -1)
            body[strcspn(body, "\n")] = '\0';
        if (hs != 200)
            down++;
        printf("%-12s %-7s %-22s %-7s %s\n", p->id, cfg_role_name(p->role), addr, hs == 200 ? "up" : "down",
               hs != 200 ? "-" : body);
    }
    if (down > 0)
        printf("%d of %zu processes down\n", down, c->nprocs);
    else
        printf("all %zu processes up\n", c->nprocs);
    return down > 0 ? 1 : 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: meerkat ctl [-c FILE] COMMAND\n"
                    "  health                               each process and whether it answers\n"
                    "  register USER@DOMAIN [PASSWORD|-]    create an account (password from stdin when - or absent)\n"
                    "  passwd USER@DOMAIN [PASSWORD|-]      change its password\n"
                    "  unregister USER@DOMAIN               remove it, its data, and close its sessions\n"
                    "  sessions                             list the sessions of every router shard\n"
                    "  kick JID                             close a session (full JID), all of an account's (bare)\n"
                    "                                       or an external component's connection (its domain)\n"
                    "  push registrations USER@DOMAIN       its XEP-0357 registrations: service, node, publish options\n"
                    "  top [--once] [--interval SEC]        live per-process view: sessions, msgs/s, queues, CPU, RSS,\n"
                    "                                       loop lag (from each /metrics); --once prints one frame\n"
                    "  reload                               the running cluster reads FILE again: new c2s and router\n"
                    "                                       processes start, every process connects to them, the\n"
                    "                                       router shards hand their new share over (anything else:\n"
                    "                                       refused; removing a process needs a restart)\n");
}

int ctl_admin(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': config = optarg; break;
        case 'h': usage(); return 0;
        default: usage(); return 2;
        }
    }
    if (optind >= argc) {
        usage();
        return 2;
    }
    char err[512];
    struct cfg *c = cfg_load(config, err, sizeof err);
    if (c == NULL) {
        fprintf(stderr, "meerkat: %s\n", err);
        return 1;
    }
    const char *cmd = argv[optind];
    int rc;
    if (strcmp(cmd, "health") == 0) {
        rc = cmd_health(c);
    } else if (strcmp(cmd, "register") == 0 || strcmp(cmd, "unregister") == 0 || strcmp(cmd, "passwd") == 0) {
        rc = ctl_users(c, cmd, argc - optind - 1, argv + optind + 1);
    } else if (strcmp(cmd, "sessions") == 0) {
        rc = ctl_sessions(c, argc - optind - 1, argv + optind + 1);
    } else if (strcmp(cmd, "kick") == 0) {
        rc = ctl_kick(c, argc - optind - 1, argv + optind + 1);
    } else if (strcmp(cmd, "push") == 0) {
        rc = ctl_push(c, argc - optind - 1, argv + optind + 1);
    } else if (strcmp(cmd, "reload") == 0) {
        rc = ctl_reload(c, argc - optind - 1, argv + optind + 1);
    } else if (strcmp(cmd, "top") == 0) {
        rc = ctl_top(c, argc - optind - 1, argv + optind + 1);
    } else {
        fprintf(stderr, "meerkat ctl: unknown command %s\n", cmd);
        usage();
        rc = 2;
    }
    cfg_free(&c);
    return rc;
}
