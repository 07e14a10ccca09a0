/* c2s/drain.c - graceful stop of the client streams: the routers forget this c2s's sessions, what they sent before is written, clients acknowledge it, and each stream ends with <see-other-host/> or <system-shutdown/>. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "c2s.h"
#include "drain.h"
#include "log.h"
#include "sm.h"
#include "util.h"

#define DRAIN_MAX_ROUTERS 64

static struct {
    bool started;
    bool barrier_done;
    bool other_up;                 /* another c2s process said hello since this one started */
    ev_tstamp deadline;            /* end of the drain budget */
    size_t routers;                /* barrier requests sent */
    const struct cfg_proc *replied[DRAIN_MAX_ROUTERS];
    size_t nreplied;
    size_t finished;               /* streams ended by the drain */
    size_t see_other;              /* of which with <see-other-host/> */
    ev_check check_w;              /* each loop iteration while draining: what can end now */
    ev_timer budget_w;             /* wakes the loop at the deadline */
} dr;

/* The address a client of c is sent to, into out; false for none (<system-shutdown/>). */
static bool other_host(const struct c2s *s, const struct conn *c, char *out, size_t outlen)
{
    const struct cfg *cfg = s->cfg;
    if (c->ws != NULL || c->comp != NULL || cfg->see_other_host == CFG_SOH_OFF)
        return false;   /* RFC 7395 would say it with <close see-other-uri/>: not done */
    if (cfg->see_other_host == CFG_SOH_FIXED) {
        snprintf(out, outlen, "%s", cfg->see_other_host_addr);
        return true;
    }
    if (!dr.other_up)
        return false;
    const struct cfg_listener *l = c->direct_tls ? &cfg->c2s_tls : &cfg->c2s;
    if (l->port == 0)
        return false;
    /* Every c2s process of the cluster listens on this address (SO_REUSEPORT): once this
     * one stopped listening, the kernel gives a new connection to another. A wildcard
     * listener is named by the address this client reached. */
    char host[INET6_ADDRSTRLEN] = "";
    bool v6 = false;
    if (strcmp(l->host, "0.0.0.0") != 0 && strcmp(l->host, "::") != 0 && *l->host != '\0') {
        snprintf(host, sizeof host, "%s", l->host);
        v6 = strchr(host, ':') != NULL;
    } else {
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        if (c->fd == -1 || getsockname(c->fd, (struct sockaddr *)&sa, &sl) == -1)
            return false;
        if (sa.ss_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&sa)->sin_addr, host, sizeof host);
        } else if (sa.ss_family == AF_INET6) {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&sa)->sin6_addr, host, sizeof host);
            v6 = true;
        } else {
            return false;
        }
    }
    snprintf(out, outlen, v6 ? "[%s]:%d" : "%s:%d", host, l->port);
    return true;
}

/* Ends the stream of c: its client learns which of its stanzas were handled (stream
 * management), then where to go. */
static void finish(struct c2s *s, struct conn *c)
{
    if (c->sess != NULL)
        sm_tell_handled(c->sess);
    char addr[320];
    dr.finished++;
    if (other_host(s, c, addr, sizeof addr)) {
        dr.see_other++;
        conn_see_other_host(c, addr);
    } else {
        conn_stream_error(c, "system-shutdown", NULL);
    }
}

static bool open_stream(const struct conn *c)
{
    return !c->closed && c->state != CONN_STATE_CLOSING;
}

/* What can end now: after the barrier, every stream whose client acknowledged all it
 * was sent (or has no stream management, or is detached), and all once the budget is spent. */
static void drain_poll(struct c2s *s)
{
    if (!dr.started)
        return;
    ev_tstamp now = ev_now(s->loop);
    bool over = now >= dr.deadline;
    if (!dr.barrier_done) {
        if (dr.nreplied < dr.routers && !over)
            return;
        dr.barrier_done = true;
        log_info("drain_barrier", "routers=%zu answered=%zu", dr.routers, dr.nreplied);
        for (struct conn *c = s->conns; c != NULL; c = c->next)
            if (open_stream(c) && c->sess != NULL && !c->detached && sm_unacked(c->sess) > 0)
                sm_request_ack(c->sess);
    }
    for (struct conn *c = s->conns; c != NULL; c = c->next) {
        if (!open_stream(c))
            continue;
        if (!over && c->sess != NULL && !c->detached && sm_unacked(c->sess) > 0)
            continue;   /* its <a/> is on the way */
        finish(s, c);
    }
}

static void on_check(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)loop;
    (void)revents;
    drain_poll(w->data);
}

static void on_budget(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct c2s *s = w->data;
    drain_poll(s);
    log_info("drain_budget_spent", "streams_ended=%zu", dr.finished);
}

/* True when two bus endpoints are on one host: both ipc://, or tcp:// with the same host
 * part. The c2s processes of one host share the client listener (SO_REUSEPORT); on
 * another host the listener's address is not theirs. */
static bool same_host(const char *a, const char *b)
{
    bool ipc_a = strncmp(a, "ipc://", 6) == 0, ipc_b = strncmp(b, "ipc://", 6) == 0;
    if (ipc_a || ipc_b)
        return ipc_a && ipc_b;
    if (strncmp(a, "tcp://", 6) != 0 || strncmp(b, "tcp://", 6) != 0)
        return false;
    a += 6;
    b += 6;
    const char *ca = strrchr(a, ':'), *cb = strrchr(b, ':');
    return ca != NULL && cb != NULL && ca - a == cb - b && strncmp(a, b, (size_t)(ca - a)) == 0;
}

void drain_start(struct c2s *s)
{
    if (dr.started)
        return;
    memset(&dr, 0, sizeof dr);
    dr.started = true;
    const struct cfg_proc *procs[DRAIN_MAX_ROUTERS];
    size_t n = cfg_procs_of_role(s->cfg, CFG_ROLE_C2S, procs, MK_ARRAY_LEN(procs));
    for (size_t i = 0; i < n; i++)
        if (procs[i] != s->node->self && node_peer_seen(s->node, procs[i]->id) &&
            same_host(procs[i]->bus, s->node->self->bus))
            dr.other_up = true;
    dr.deadline = ev_now(s->loop) + (double)s->cfg->grace_sec / 2.0;
    /* Streams without a session end now: nobody binds while the routers are told. */
    size_t sessions = 0;
    for (struct conn *c = s->conns; c != NULL; c = c->next) {
        if (!open_stream(c))
            continue;
        if (c->sess == NULL) {
            finish(s, c);
            continue;
        }
        session_close_id(s, c->sess->full, c->sess->id, "shutdown");
        sessions++;
    }
    /* The barrier: one request per router shard, on the same bus path as the closes. */
    char jid[300];
    snprintf(jid, sizeof jid, "drain@%s/%s", s->cfg->domains[0], s->node->self->id);
    n = cfg_procs_of_role(s->cfg, CFG_ROLE_ROUTER, procs, MK_ARRAY_LEN(procs));
    for (size_t i = 0; i < n && sessions > 0; i++) {
        Mk__SessionList sl = MK__SESSION_LIST__INIT;
        sl.jid = jid;
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_LIST;
        e.session_list = &sl;
        if (node_send(s->node, procs[i]->id, &e) == 0)
            dr.routers++;
    }
    log_info("drain_start", "sessions=%zu routers=%zu other_c2s_up=%d see_other_host=%s", sessions, dr.routers,
             dr.other_up,
             s->cfg->see_other_host == CFG_SOH_OFF     ? "off"
             : s->cfg->see_other_host == CFG_SOH_FIXED ? s->cfg->see_other_host_addr
                                                       : "auto");
    ev_check_init(&dr.check_w, on_check);
    dr.check_w.data = s;
    ev_check_start(s->loop, &dr.check_w);
    ev_timer_init(&dr.budget_w, on_budget, (double)s->cfg->grace_sec / 2.0, 0.);
    dr.budget_w.data = s;
    ev_timer_start(s->loop, &dr.budget_w);
    drain_poll(s);
}

bool drain_on_envelope(struct c2s *s, const Mk__Envelope *e)
{
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_SESSION_LIST)
        return false;
    if (!dr.started || dr.barrier_done || e->session_list == NULL || !e->session_list->done || e->sender == NULL)
        return true;
    const struct cfg_proc *p = cfg_find_proc(s->cfg, e->sender);
    if (p == NULL || p->role != CFG_ROLE_ROUTER)
        return true;
    for (size_t i = 0; i < dr.nreplied; i++)
        if (dr.replied[i] == p)
            return true;
    if (dr.nreplied < MK_ARRAY_LEN(dr.replied))
        dr.replied[dr.nreplied++] = p;
    return true;
}

bool drain_pending(const struct c2s *s)
{
    (void)s;
    return dr.started && !dr.barrier_done;
}

void drain_fini(struct c2s *s)
{
    if (!dr.started)
        return;
    ev_check_stop(s->loop, &dr.check_w);
    ev_timer_stop(s->loop, &dr.budget_w);
    log_info("drain_done", "streams_ended=%zu see_other_host=%zu", dr.finished, dr.see_other);
}
