/* tests/tools/bus_inject.c - plays a configured process (e.g. a fake c2s) on the bus from a script; prints what it receives. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "bus.h"
#include "cfg.h"
#include "env.h"
#include "util.h"

/* Script, one command per line on stdin (fields separated by single spaces; the last
 * field of route takes the rest of the line):
 *   hello PEER
 *   open PEER FULLJID SESSION_ID PRIORITY AVAILABLE(0/1)
 *   close PEER FULLJID SESSION_ID
 *   route PEER KIND(message|presence|iq) FROM TO TYPE(- for none) HAS_BODY(0/1) XML
 *   kick PEER JID REASON
 *   list PEER REPLY_TO JID(- for all)
 *   raw PEER HEXBYTES        (a frame as is, e.g. garbage)
 *   big PEER BYTES           (one frame of BYTES bytes: a batch of one undecodable entry)
 *   wait MS                  (runs the loop, printing what arrives)
 * Received envelopes print as one line: "recv SENDER PAYLOAD key=value ...". A fan-out
 * Deliver (router/fanout.c) prints as the c2s writes it: one line per target session and
 * stanza, "recv SENDER deliver ids=ID fanout=E/N ..." with the stanza made whole for that
 * session (E numbers the fan-out envelopes received, N is its count of sessions). */

static struct ev_loop *loop;

static void print_route(const Mk__Route *r)
{
    if (r == NULL) {
        printf(" route=null");
        return;
    }
    printf(" kind=%d from=%s to=%s type=%s id=%s hops=%u xml=%.*s", (int)r->kind, r->from, r->to,
           r->type[0] ? r->type : "-", r->id[0] ? r->id : "-", r->hops, (int)r->xml.len, (const char *)r->xml.data);
}

static void print_fanout(const Mk__Envelope *e)
{
    static unsigned long fanouts;
    const Mk__Deliver *d = e->deliver;
    fanouts++;
    struct buf xml;
    buf_init(&xml);
    for (size_t i = 0; i < d->n_session_ids; i++)
        for (size_t j = 0; j <= d->n_more; j++) {
            const Mk__Route *t = j == 0 ? d->route : d->more[j - 1];
            Mk__Route w;
            printf("recv %s deliver ids=%llu fanout=%lu/%zu", e->sender, (unsigned long long)d->session_ids[i], fanouts,
                   d->n_session_ids);
            if (i < d->n_session_jids && env_route_fill(t, d->session_jids[i], &xml, &w) == 0)
                print_route(&w);
            else
                printf(" malformed");
            printf("\n");
        }
    buf_release(&xml);
    fflush(stdout);
}

static void on_recv(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    const Mk__Envelope *e = *envp;
    if (e->payload_case == MK__ENVELOPE__PAYLOAD_DELIVER && e->deliver->n_session_jids > 0) {
        print_fanout(e);
        return;
    }
    printf("recv %s %s", e->sender, env_payload_name(e));
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_HELLO:
        printf(" role=%s reply=%d", e->hello->role, e->hello->reply);
        break;
    case MK__ENVELOPE__PAYLOAD_DELIVER:
        printf(" ids=");
        for (size_t i = 0; i < e->deliver->n_session_ids; i++)
            printf("%s%llu", i ? "," : "", (unsigned long long)e->deliver->session_ids[i]);
        print_route(e->deliver->route);
        break;
    case MK__ENVELOPE__PAYLOAD_ROUTE:
        print_route(e->route);
        break;
    case MK__ENVELOPE__PAYLOAD_SESSION_CLOSE:
        printf(" jid=%s c2s=%s session=%llu reason=%s", e->session_close->jid, e->session_close->c2s,
               (unsigned long long)e->session_close->session_id, e->session_close->reason);
        break;
    case MK__ENVELOPE__PAYLOAD_SESSION_LIST:
        printf(" n=%zu done=%d", e->session_list->n_sessions, e->session_list->done);
        for (size_t i = 0; i < e->session_list->n_sessions; i++)
            printf(" %s@%s#%llu", e->session_list->sessions[i]->jid, e->session_list->sessions[i]->c2s,
                   (unsigned long long)e->session_list->sessions[i]->session_id);
        break;
    case MK__ENVELOPE__PAYLOAD_ARCHIVE:
        printf(" owner=%s peer=%s offline=%d xml=%.*s", e->archive->owner, e->archive->peer, e->archive->offline,
               (int)e->archive->xml.len, (const char *)e->archive->xml.data);
        break;
    default:
        break;
    }
    printf("\n");
    fflush(stdout);
}

static void on_timer(struct ev_loop *l, ev_timer *w, int revents)
{
    ev_break(l, EVBREAK_ONE);
}

static Mk__StanzaKind kind_of(const char *s)
{
    if (strcmp(s, "presence") == 0)
        return MK__STANZA_KIND__STANZA_KIND_PRESENCE;
    if (strcmp(s, "iq") == 0)
        return MK__STANZA_KIND__STANZA_KIND_IQ;
    return MK__STANZA_KIND__STANZA_KIND_MESSAGE;
}

static int run_line(struct bus *bus, const char *self, char *line)
{
    char *f[9] = {0};
    size_t n = 0;
    char *p = line;
    while (n < MK_ARRAY_LEN(f) && p != NULL && *p != '\0') {
        f[n++] = p;
        /* route's XML is the rest of the line */
        if (n == 8 && strcmp(f[0], "route") == 0)
            break;
        p = strchr(p, ' ');
        if (p != NULL)
            *p++ = '\0';
    }
    if (n == 0)
        return 0;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    if (strcmp(f[0], "wait") == 0 && n == 2) {
        ev_timer t;
        ev_timer_init(&t, on_timer, atof(f[1]) / 1000.0, 0.);
        ev_timer_start(loop, &t);
        ev_run(loop, 0);
        ev_timer_stop(loop, &t);
        return 0;
    }
    if (n < 2)
        return -1;
    const char *peer = f[1];
    if (strcmp(f[0], "hello") == 0) {
        Mk__Hello h = MK__HELLO__INIT;
        h.role = (char *)"c2s";
        h.started_us = (uint64_t)mk_now_us();
        e.payload_case = MK__ENVELOPE__PAYLOAD_HELLO;
        e.hello = &h;
        return bus_send_env(bus, peer, &e);
    }
    if (strcmp(f[0], "open") == 0 && n == 6) {
        Mk__SessionOpen o = MK__SESSION_OPEN__INIT;
        o.jid = f[2];
        o.c2s = (char *)self;
        o.session_id = strtoull(f[3], NULL, 10);
        o.priority = atoi(f[4]);
        o.available = atoi(f[5]) != 0;
        o.login_us = (uint64_t)mk_now_us();
        e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_OPEN;
        e.session_open = &o;
        return bus_send_env(bus, peer, &e);
    }
    if (strcmp(f[0], "close") == 0 && n == 4) {
        Mk__SessionClose c = MK__SESSION_CLOSE__INIT;
        c.jid = f[2];
        c.c2s = (char *)self;
        c.session_id = strtoull(f[3], NULL, 10);
        e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_CLOSE;
        e.session_close = &c;
        return bus_send_env(bus, peer, &e);
    }
    if (strcmp(f[0], "route") == 0 && n == 8) {
        Mk__Route r = MK__ROUTE__INIT;
        r.kind = kind_of(f[2]);
        r.from = f[3];
        r.to = f[4];
        r.type = strcmp(f[5], "-") == 0 ? (char *)"" : f[5];
        r.id = (char *)"inj1";
        r.has_body = atoi(f[6]) != 0;
        r.xml.data = (uint8_t *)f[7];
        r.xml.len = strlen(f[7]);
        e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
        e.route = &r;
        return bus_send_env(bus, peer, &e);
    }
    if (strcmp(f[0], "kick") == 0 && n == 4) {
        Mk__Kick k = MK__KICK__INIT;
        k.jid = f[2];
        k.reason = f[3];
        e.payload_case = MK__ENVELOPE__PAYLOAD_KICK;
        e.kick = &k;
        return bus_send_env(bus, peer, &e);
    }
    if (strcmp(f[0], "list") == 0 && n == 4) {
        Mk__SessionList l = MK__SESSION_LIST__INIT;
        l.reply_to = f[2];
        l.jid = strcmp(f[3], "-") == 0 ? (char *)"" : f[3];
        e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_LIST;
        e.session_list = &l;
        return bus_send_env(bus, peer, &e);
    }
    if (strcmp(f[0], "big") == 0 && n == 3) {
        size_t len = strtoull(f[2], NULL, 10);
        if (len < 16)
            return -1;
        /* 0x0a, a 5-byte varint of the entry's length, then zeros (tag 0: never decodes). */
        size_t entry = len - 6;
        unsigned char *b = xcalloc(1, len);
        b[0] = 0x0a;
        for (int i = 0; i < 5; i++)
            b[1 + i] = (unsigned char)(((entry >> (7 * i)) & 0x7f) | (i < 4 ? 0x80 : 0));
        int rc = bus_send(bus, peer, b, len);
        free(b);
        return rc;
    }
    if (strcmp(f[0], "raw") == 0 && n == 3) {
        size_t len = strlen(f[2]) / 2;
        unsigned char *b = xmalloc(len + 1);
        for (size_t i = 0; i < len; i++)
            sscanf(f[2] + 2 * i, "%2hhx", &b[i]);
        int rc = bus_send(bus, peer, b, len);
        free(b);
        return rc;
    }
    return -1;
}

int main(int argc, char **argv)
{
    const char *config = NULL, *id = NULL, *inbox = NULL, *keys_dir = NULL, *intruder_dir = NULL;
    bool curve = true;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-curve") == 0)
            curve = false;
        else if (i + 1 == argc)
            break;
        else if (strcmp(argv[i], "-c") == 0)
            config = argv[++i];
        else if (strcmp(argv[i], "--id") == 0)
            id = argv[++i];
        else if (strcmp(argv[i], "--inbox") == 0)
            inbox = argv[++i];
        else if (strcmp(argv[i], "--keys") == 0)
            keys_dir = argv[++i];
        else if (strcmp(argv[i], "--intruder") == 0)
            intruder_dir = argv[++i];
    }
    char err[512];
    struct cfg *cfg = cfg_load(config, err, sizeof err);
    if (cfg == NULL || id == NULL) {
        fprintf(stderr, "usage: bus_inject -c CONFIG --id ID [--inbox ENDPOINT] [--keys DIR | --intruder DIR | --no-curve] < script (%s)\n"
                "  CURVE as the configuration says; how an intruder without the cluster's key would try:\n"
                "  --keys DIR: the key pair in DIR for everything; --intruder DIR: the cluster's public key\n"
                "  as the servers' and the pair in DIR as the client's; --no-curve: plain ZMTP\n", cfg ? "" : err);
        cfg_free(&cfg);
        return 2;
    }
    const struct cfg_proc *self = cfg_find_proc(cfg, id);
    if (inbox == NULL && self == NULL) {
        fprintf(stderr, "bus_inject: %s is not configured; give --inbox\n", id);
        cfg_free(&cfg);
        return 2;
    }
    loop = EV_DEFAULT;
    /* No max_frame: the tool may send what a process would refuse. */
    struct bus_keys keys;
    struct bus_options bo = {0};
    if (curve && (cfg->bus.curve || keys_dir != NULL)) {
        if (bus_keys_load(keys_dir ? keys_dir : cfg->bus.keys_dir, true, &keys, err, sizeof err) == -1) {
            fprintf(stderr, "bus_inject: %s\n", err);
            cfg_free(&cfg);
            return 1;
        }
        bo.curve = &keys;
    }
    struct bus_keys intruder;
    if (bo.curve != NULL && intruder_dir != NULL) {
        if (bus_keys_load(intruder_dir, true, &intruder, err, sizeof err) == -1) {
            fprintf(stderr, "bus_inject: %s\n", err);
            cfg_free(&cfg);
            return 1;
        }
        bo.curve_client = &intruder;
    }
    struct bus *bus = bus_open(loop, id, inbox ? inbox : self->bus, &bo, on_recv, NULL, err, sizeof err);
    bus_keys_wipe(&keys);
    if (bus == NULL) {
        fprintf(stderr, "bus_inject: %s\n", err);
        cfg_free(&cfg);
        return 1;
    }
    /* What a script queued goes out before the tool exits, even while the peer's
     * handshake is slow; an intruder's frames never go out: no need to wait for them. */
    if (keys_dir == NULL && intruder_dir == NULL && curve)
        bus_set_linger(bus, 2000);
    for (size_t i = 0; i < cfg->nprocs; i++)
        if (strcmp(cfg->procs[i].id, id) != 0)
            bus_add_peer(bus, cfg->procs[i].id, cfg->procs[i].bus, err, sizeof err);
    char line[65536];
    int rc = 0;
    while (fgets(line, sizeof line, stdin) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (run_line(bus, id, line) == -1) {
            printf("error %s\n", line);
            rc = 1;
        }
        fflush(stdout);
    }
    bus_free(&bus);
    cfg_free(&cfg);
    return rc;
}
