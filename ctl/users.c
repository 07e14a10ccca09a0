/* ctl/users.c - meerkat ctl register|unregister|passwd (the store) and sessions|kick (the routers, over the bus). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "bus.h"
#include "cfg.h"
#include "ctl.h"
#include "env.h"
#include "jid.h"
#include "scram.h"
#include "store.h"
#include "util.h"

struct sync_result {
    bool done;
    int ok;
    uint64_t affected;
    char error[256];
};

static void sync_cb(void *ud, const struct store_result *res)
{
    struct sync_result *r = ud;
    r->done = true;
    r->ok = res->ok;
    r->affected = res->affected;
    if (res->error != NULL)
        mk_strlcpy(r->error, res->error, sizeof r->error);
}

int ctl_parse_account(const struct cfg *c, const char *arg, struct jid *j)
{
    char err[256];
    if (jid_parse(arg, j, err, sizeof err) == -1) {
        fprintf(stderr, "meerkat ctl: %s: %s\n", arg, err);
        return -1;
    }
    if (j->local == NULL || j->resource != NULL) {
        fprintf(stderr, "meerkat ctl: %s: give an account as user@domain\n", arg);
        jid_release(j);
        return -1;
    }
    if (!cfg_is_local_domain(c, j->domain)) {
        fprintf(stderr, "meerkat ctl: %s: domain %s is not served here\n", arg, j->domain);
        jid_release(j);
        return -1;
    }
    return 0;
}

struct store *ctl_account_store(const struct cfg *c, const char *arg, struct jid *j)
{
    if (ctl_parse_account(c, arg, j) == -1)
        return NULL;
    char err[512];
    struct store *st = store_open(EV_DEFAULT, c, err, sizeof err);
    if (st == NULL) {
        fprintf(stderr, "meerkat ctl: %s\n", err);
        jid_release(j);
    }
    return st;
}

/* Fills the 8 credential parameters for password. Returns 0 or -1. */
static int make_creds(const char *password, char params[8][80])
{
    struct scram_cred c1, c256;
    if (scram_cred_make(SCRAM_SHA1, password, SCRAM_DEFAULT_ITER, &c1) == -1 ||
        scram_cred_make(SCRAM_SHA256, password, SCRAM_DEFAULT_ITER, &c256) == -1)
        return -1;
    snprintf(params[0], 80, "%s", c1.salt);
    snprintf(params[1], 80, "%u", c1.iter);
    snprintf(params[2], 80, "%s", c1.stored_key);
    snprintf(params[3], 80, "%s", c1.server_key);
    snprintf(params[4], 80, "%s", c256.salt);
    snprintf(params[5], 80, "%u", c256.iter);
    snprintf(params[6], 80, "%s", c256.stored_key);
    snprintf(params[7], 80, "%s", c256.server_key);
    return 0;
}

static int run_sync(struct store *st, enum store_stmt stmt, const char *const *params, size_t n,
                    struct sync_result *r)
{
    memset(r, 0, sizeof *r);
    store_query(st, stmt, params, n, sync_cb, r);
    store_drain(st);
    if (!r->done || r->ok != 0) {
        fprintf(stderr, "meerkat ctl: storage error: %s\n", r->error[0] ? r->error : "no answer");
        return -1;
    }
    return 0;
}

/* Reads a password from the argument, or from stdin when it is "-" or missing. */
static char *read_password(int argc, char **argv, int i)
{
    if (i < argc && strcmp(argv[i], "-") != 0)
        return xstrdup(argv[i]);
    char line[1024];
    if (fgets(line, sizeof line, stdin) == NULL)
        return NULL;
    line[strcspn(line, "\r\n")] = '\0';
    return xstrdup(line);
}

static int send_kick(const struct cfg *c, const char *jid, const char *reason);
static void send_push_changed(const struct cfg *c, const char *bare);

int ctl_users(const struct cfg *c, const char *cmd, int argc, char **argv)
{
    if (argc < 1) {
        fprintf(stderr, "meerkat ctl: %s needs USER@DOMAIN\n", cmd);
        return 2;
    }
    struct jid j;
    struct store *st = ctl_account_store(c, argv[0], &j);
    if (st == NULL)
        return 1;
    int rc = 1;
    struct sync_result r;
    if (strcmp(cmd, "register") == 0 || strcmp(cmd, "passwd") == 0) {
        char *pw = read_password(argc, argv, 1);
        char cred[8][80];
        if (pw == NULL || pw[0] == '\0' || make_creds(pw, cred) == -1) {
            fprintf(stderr, "meerkat ctl: the password is empty or not valid (SASLprep)\n");
            free(pw);
            goto out;
        }
        memset(pw, 0, strlen(pw));
        free(pw);
        const char *params[10] = {j.local, j.domain};
        for (int i = 0; i < 8; i++)
            params[2 + i] = cred[i];
        bool reg = strcmp(cmd, "register") == 0;
        if (run_sync(st, reg ? STORE_USER_CREATE : STORE_USER_SET_PASSWORD, params, 10, &r) == -1)
            goto out;
        if (r.affected == 0) {
            fprintf(stderr, "meerkat ctl: %s@%s %s\n", j.local, j.domain,
                    reg ? "is already registered" : "is not registered");
            goto out;
        }
        printf("%s %s@%s\n", reg ? "registered" : "password changed for", j.local, j.domain);
        rc = 0;
    } else if (strcmp(cmd, "unregister") == 0) {
        const char *params[2] = {j.local, j.domain};
        if (run_sync(st, STORE_USER_DELETE, params, 2, &r) == -1)
            goto out;
        if (r.affected == 0) {
            fprintf(stderr, "meerkat ctl: %s@%s is not registered\n", j.local, j.domain);
            goto out;
        }
        char *bare = jid_to_string(&j, true);
        send_kick(c, bare, "removed");
        send_push_changed(c, bare);
        free(bare);
        printf("unregistered %s@%s\n", j.local, j.domain);
        rc = 0;
    }
out:
    store_close(&st);
    jid_release(&j);
    return rc;
}

/* The bus as a short-lived client: an inbox on a free loopback port. */
struct ctl_bus {
    struct bus *bus;
    char id[32];
    char inbox[64];
    size_t routers_done;
    size_t routers;
    size_t sessions;
};

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == -1 || getsockname(fd, (struct sockaddr *)&sa, &sl) == -1) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

static void on_list(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    struct ctl_bus *cb = ud;
    Mk__Envelope *e = *envp;
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_SESSION_LIST || e->session_list == NULL)
        return;
    for (size_t i = 0; i < e->session_list->n_sessions; i++) {
        Mk__SessionOpen *s = e->session_list->sessions[i];
        printf("%-48s %-8s %-10s prio=%-4d %s\n", s->jid ? s->jid : "", s->c2s ? s->c2s : "", e->sender,
               s->priority, s->available ? "available" : "unavailable");
        cb->sessions++;
    }
    if (e->session_list->done && ++cb->routers_done >= cb->routers)
        ev_break(EV_DEFAULT, EVBREAK_ALL);
}

static void on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

static void on_idle_check(struct ev_loop *loop, ev_check *w, int revents)
{
    struct ctl_bus *cb = w->data;
    if (cb->routers_done >= cb->routers)
        ev_break(loop, EVBREAK_ALL);
}

static int ctl_bus_open(const struct cfg *c, struct ctl_bus *cb, bus_recv_fn *fn)
{
    memset(cb, 0, sizeof *cb);
    int port = free_port();
    if (port == -1) {
        fprintf(stderr, "meerkat ctl: no free port for the bus\n");
        return -1;
    }
    snprintf(cb->id, sizeof cb->id, "ctl.%d", (int)getpid());
    snprintf(cb->inbox, sizeof cb->inbox, "tcp://127.0.0.1:%d", port);
    char err[512];
    /* The cluster's key: ctl only reads it (the processes make it at their first start). */
    struct bus_keys keys;
    struct bus_options bo = {.max_frame = c->limits.bus_max_frame_bytes};
    if (c->bus.curve) {
        if (bus_keys_load(c->bus.keys_dir, false, &keys, err, sizeof err) == -1) {
            fprintf(stderr, "meerkat ctl: %s\n", err);
            return -1;
        }
        bo.curve = &keys;
    }
    cb->bus = bus_open(EV_DEFAULT, cb->id, cb->inbox, &bo, fn, cb, err, sizeof err);
    bus_keys_wipe(&keys);
    if (cb->bus == NULL) {
        fprintf(stderr, "meerkat ctl: bus: %s\n", err);
        return -1;
    }
    bus_set_linger(cb->bus, 2000);
    for (size_t i = 0; i < c->nprocs; i++)
        if (c->procs[i].role == CFG_ROLE_ROUTER && bus_add_peer(cb->bus, c->procs[i].id, c->procs[i].bus, err,
                                                               sizeof err) == 0)
            cb->routers++;
    return 0;
}

static int send_kick(const struct cfg *c, const char *jid, const char *reason)
{
    char *bare = jid_normalize(jid, true);
    if (bare == NULL) {
        fprintf(stderr, "meerkat ctl: %s is not a valid JID\n", jid);
        return 1;
    }
    const struct cfg_proc *router = cfg_shard(c, CFG_ROLE_ROUTER, bare);
    free(bare);
    struct ctl_bus cb;
    if (router == NULL || ctl_bus_open(c, &cb, on_list) == -1)
        return 1;
    Mk__Kick k = MK__KICK__INIT;
    k.jid = (char *)jid;
    k.reason = (char *)reason;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_KICK;
    e.kick = &k;
    int rc = bus_send_env(cb.bus, router->id, &e) == 0 ? 0 : 1;
    bus_free(&cb.bus);   /* lingers until the frame is out */
    return rc;
}

/* The account's XEP-0357 registrations went with it: every pusher drops what it cached. */
static void send_push_changed(const struct cfg *c, const char *bare)
{
    const struct cfg_proc *procs[64];
    size_t n = cfg_procs_of_role(c, CFG_ROLE_PUSHER, procs, MK_ARRAY_LEN(procs));
    struct ctl_bus cb;
    if (n == 0 || ctl_bus_open(c, &cb, on_list) == -1)
        return;
    Mk__PushRegistrationsChanged prc = MK__PUSH_REGISTRATIONS_CHANGED__INIT;
    prc.user = (char *)bare;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_PUSH_REGISTRATIONS;
    e.push_registrations = &prc;
    char err[256] = "the send was refused";
    for (size_t i = 0; i < n; i++)
        if (bus_add_peer(cb.bus, procs[i]->id, procs[i]->bus, err, sizeof err) == -1 ||
            bus_send_env(cb.bus, procs[i]->id, &e) == -1)
            fprintf(stderr, "meerkat ctl: %s was not told of the removal (%s)\n", procs[i]->id, err);
    bus_free(&cb.bus);   /* lingers until the frames are out */
}

int ctl_sessions(const struct cfg *c, int argc, char **argv)
{
    struct ctl_bus cb;
    if (ctl_bus_open(c, &cb, on_list) == -1)
        return 1;
    Mk__SessionList req = MK__SESSION_LIST__INIT;
    req.reply_to = cb.inbox;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_LIST;
    e.session_list = &req;
    for (size_t i = 0; i < c->nprocs; i++)
        if (c->procs[i].role == CFG_ROLE_ROUTER)
            bus_send_env(cb.bus, c->procs[i].id, &e);
    struct ev_loop *loop = EV_DEFAULT;
    ev_timer t;
    ev_timer_init(&t, on_timeout, 3.0, 0.);
    ev_timer_start(loop, &t);
    ev_check chk;
    ev_check_init(&chk, on_idle_check);
    chk.data = &cb;
    ev_check_start(loop, &chk);
    ev_run(loop, 0);
    ev_timer_stop(loop, &t);
    ev_check_stop(loop, &chk);
    int rc = 0;
    if (cb.routers_done < cb.routers) {
        fprintf(stderr, "meerkat ctl: %zu of %zu routers did not answer\n", cb.routers - cb.routers_done, cb.routers);
        rc = 1;
    }
    printf("%zu sessions\n", cb.sessions);
    bus_free(&cb.bus);
    return rc;
}

int ctl_kick(const struct cfg *c, int argc, char **argv)
{
    if (argc < 1) {
        fprintf(stderr, "meerkat ctl: kick needs a JID (bare: every session; full: that one)\n");
        return 2;
    }
    char *norm = jid_normalize(argv[0], false);
    if (norm == NULL) {
        fprintf(stderr, "meerkat ctl: %s is not a valid JID\n", argv[0]);
        return 1;
    }
    int rc = send_kick(c, norm, "kicked");
    if (rc == 0)
        printf("kick sent for %s\n", norm);
    free(norm);
    return rc;
}
