/* gd/link.c - the links between the gd processes of data centers: ZeroMQ over TCP with CURVE, the reliable channel, queues bounded per peer. */
#include "link.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "buf.h"
#include "bus.h"
#include "env.h"
#include "log.h"
#include "rchan.h"
#include "util.h"

#define GD_LINK_HELLO_ROLE "gd-link"
#define GD_LINK_DC_MAX 64                 /* bytes of a data center's name */
#define GD_LINK_DOWN_BEATS 3.0            /* heartbeats of silence before a peer is down */
/* Room for the envelope around a payload (names, numbers, tags); the bus's frame
 * limit is max_frame plus this, so a payload of max_frame always fits. */
#define GD_LINK_FRAME_OVERHEAD 1024

struct gd_peer {
    struct gd_link  *link;
    char            *dc;
    unsigned char    key[32];
    char             key_z85[41];
    char            *endpoint;      /* NULL while unknown */
    struct rchan_tx *tx;
    bool             up;
    ev_tstamp        last_heard;
    uint64_t         peer_started;  /* the started_us of its last Hello (0: none yet) */
    /* Its frames are taken only once a Hello of its for this incarnation of ours said
     * where its channel stands (rc_epoch, rc_base): before that, a copy re-sent before
     * our restart and held in a buffer since, with the rc_base of its day, would make
     * us start the channel below what our previous incarnation already applied. */
    bool             synced;
};

/* What the inbox does with one envelope. */
enum gd_verdict {
    GD_VERDICT_FRAME = 0,   /* a GdFrame to pass through the reliable channel */
    GD_VERDICT_ACK,
    GD_VERDICT_HELLO,
    GD_VERDICT_DECODE,      /* not ours: undecodable, or a GdFrame off the channel */
    GD_VERDICT_VERSION,
    GD_VERDICT_ORIGIN,
    GD_VERDICT_TTL,
    GD_VERDICT_OTHER,
};

struct gd_link {
    struct ev_loop  *loop;
    char            *dc;
    struct bus      *bus;
    struct rchan_rx *rx;
    struct gd_peer **peers;
    size_t           npeers;
    size_t           peers_cap;
    struct gd_link_callbacks cb;
    size_t           queue_max;
    double           max_age;
    unsigned         resend_ms;
    double           heartbeat;
    size_t           max_frame;
    unsigned         ttl;
    uint64_t         started_us;
    struct gd_link_ticket current;   /* the message in the recv callback */
    bool             in_recv;
    bool             deferred;       /* the callback called gd_link_defer */
    ev_timer         tick;           /* heartbeats, down peers, expiry, gauges */
    struct gd_link_stats stats;

    struct metrics  *metrics;
    struct metric   *m_sent;         /* {peer} */
    struct metric   *m_received;     /* {peer} */
    struct metric   *m_queued;       /* {peer} gauge */
    struct metric   *m_oldest;       /* {peer} gauge, seconds */
    struct metric   *m_up;           /* {peer} gauge */
    struct metric   *m_over_budget;  /* {peer,reason}: full, expired */
    struct metric   *m_refused;      /* {reason} */
    struct metric   *m_duplicates;
};

/* ---- frame classification (pure: the inbox and the fuzz target) ------------- */

static enum gd_verdict classify(const char *self_dc, const char *user, const Mk__Envelope *e)
{
    /* The sender names the data center its key was trusted for, and no other. */
    if (user == NULL || strcmp(e->sender, user) != 0)
        return GD_VERDICT_ORIGIN;
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_ACK:
        return GD_VERDICT_ACK;
    case MK__ENVELOPE__PAYLOAD_HELLO:
        if (e->hello->role == NULL || strcmp(e->hello->role, GD_LINK_HELLO_ROLE) != 0)
            return GD_VERDICT_OTHER;
        return GD_VERDICT_HELLO;
    case MK__ENVELOPE__PAYLOAD_GD_FRAME: {
        const Mk__GdFrame *f = e->gd_frame;
        if (e->rc_seq == 0 || e->rc_epoch == 0)
            return GD_VERDICT_DECODE;    /* off the channel: nothing to order it by */
        if (f->version > GD_LINK_VERSION)
            return GD_VERDICT_VERSION;
        /* A frame that claims to have entered GD here came back round a loop, or lies. */
        if (f->origin == NULL || f->origin[0] == '\0' || strlen(f->origin) > GD_LINK_DC_MAX
            || strcmp(f->origin, self_dc) == 0)
            return GD_VERDICT_ORIGIN;
        if (f->ttl == 0)
            return GD_VERDICT_TTL;
        return GD_VERDICT_FRAME;
    }
    default:
        return GD_VERDICT_OTHER;
    }
}

static const char *verdict_name(enum gd_verdict v)
{
    switch (v) {
    case GD_VERDICT_FRAME:   return "received";
    case GD_VERDICT_ACK:     return "ack";
    case GD_VERDICT_HELLO:   return "hello";
    case GD_VERDICT_DECODE:  return "refused_decode";
    case GD_VERDICT_VERSION: return "refused_version";
    case GD_VERDICT_ORIGIN:  return "refused_origin";
    case GD_VERDICT_TTL:     return "refused_ttl";
    case GD_VERDICT_OTHER:   return "refused_other";
    }
    return "refused_other";
}

const char *gd_link_classify(const char *self_dc, const char *user, const void *data, size_t len)
{
    Mk__Envelope *e = env_decode(data, len);
    if (e == NULL)
        return verdict_name(GD_VERDICT_DECODE);
    enum gd_verdict v = classify(self_dc, user, e);
    env_free(&e);
    return verdict_name(v);
}

/* ---- peers ------------------------------------------------------------------- */

static struct gd_peer *find_peer(const struct gd_link *l, const char *dc)
{
    for (size_t i = 0; i < l->npeers; i++) {
        if (strcmp(l->peers[i]->dc, dc) == 0)
            return l->peers[i];
    }
    return NULL;
}

/* ZAP: a client key is accepted when it is a trusted peer's; the connection is then
 * known by that peer's name, which every frame on it must carry as its sender. */
static const char *key_check(void *ud, const unsigned char key[32])
{
    struct gd_link *l = ud;
    for (size_t i = 0; i < l->npeers; i++) {
        if (memcmp(l->peers[i]->key, key, 32) == 0)
            return l->peers[i]->dc;
    }
    return NULL;
}

static void send_hello(struct gd_link *l, struct gd_peer *p)
{
    if (p->endpoint == NULL)
        return;
    Mk__Hello hello = MK__HELLO__INIT;
    hello.role = GD_LINK_HELLO_ROLE;
    hello.started_us = l->started_us;
    hello.peer_started = p->peer_started;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_HELLO;
    e.hello = &hello;
    e.rc_epoch = rchan_tx_epoch(p->tx);
    e.rc_base = rchan_tx_base(p->tx);
    /* A heartbeat that does not fit now is not worth holding: the next one follows. */
    bus_send_env(l->bus, p->dc, &e);
}

static int connect_peer(struct gd_link *l, struct gd_peer *p, const char *endpoint, char *err, size_t errlen)
{
    /* IMMEDIATE: while the peer is unreachable nothing piles up inside ZeroMQ; the
     * messages wait in the reliable channel, where they are counted and bounded. */
    const struct bus_peer_options po = {.server_key = p->key_z85, .immediate = true};
    if (bus_add_peer_with(l->bus, p->dc, endpoint, &po, err, errlen) == -1)
        return -1;
    p->endpoint = xstrdup(endpoint);
    send_hello(l, p);
    rchan_tx_resend(p->tx);
    return 0;
}

/* Closes the peer's socket, dropping what the bus and ZeroMQ still hold for it, and
 * opens a new one to the same endpoint; the channel re-sends what is pending. */
static void reconnect_peer(struct gd_link *l, struct gd_peer *p)
{
    if (p->endpoint == NULL)
        return;
    char *endpoint = p->endpoint;
    p->endpoint = NULL;
    bus_remove_peer(l->bus, p->dc, 0);
    char err[256];
    if (connect_peer(l, p, endpoint, err, sizeof err) == -1)
        log_warn("gd_link_reconnect_failed", "peer=%s endpoint=%s error=\"%s\"", p->dc, endpoint, err);
    free(endpoint);
}

static void set_up(struct gd_link *l, struct gd_peer *p, bool up)
{
    if (p->up == up)
        return;
    p->up = up;
    if (l->m_up != NULL)
        metric_set(l->m_up, p->dc, up ? 1 : 0);
    log_info(up ? "gd_link_up" : "gd_link_down", "peer=%s queued=%zu", p->dc, rchan_tx_pending(p->tx));
    if (up) {
        rchan_tx_resend(p->tx);   /* what waited for the link goes now, in order */
    } else {
        /* A silent peer may sit behind a TCP connection that still looks alive (a
         * link that went dark sends no reset): ZeroMQ would take every re-send round
         * into its pipe for it, up to the mark. A new socket has no connection until
         * the peer answers again, so meanwhile the messages wait, once, in the
         * channel. */
        reconnect_peer(l, p);
    }
    if (l->cb.state != NULL)
        l->cb.state(l->cb.ud, p->dc, up);
}

static int add_peer(struct gd_link *l, const struct gd_link_peer_conf *pc, char *err, size_t errlen)
{
    if (pc->dc == NULL || pc->dc[0] == '\0' || strlen(pc->dc) > GD_LINK_DC_MAX) {
        mk_errf(err, errlen, "a peer data center needs a name of 1 to %d bytes", GD_LINK_DC_MAX);
        return -1;
    }
    if (strcmp(pc->dc, l->dc) == 0) {
        mk_errf(err, errlen, "peer %s is this data center", pc->dc);
        return -1;
    }
    if (find_peer(l, pc->dc) != NULL) {
        mk_errf(err, errlen, "peer %s is given twice", pc->dc);
        return -1;
    }
    unsigned char key[32];
    if (pc->public_key == NULL || strlen(pc->public_key) != 40 || zmq_z85_decode(key, pc->public_key) == NULL) {
        mk_errf(err, errlen, "peer %s: the public key is not 40 characters of Z85", pc->dc);
        return -1;
    }
    for (size_t i = 0; i < l->npeers; i++) {
        if (memcmp(l->peers[i]->key, key, 32) == 0) {
            mk_errf(err, errlen, "peers %s and %s have the same public key", l->peers[i]->dc, pc->dc);
            return -1;
        }
    }
    struct gd_peer *p = xcalloc(1, sizeof *p);
    p->link = l;
    p->dc = xstrdup(pc->dc);
    memcpy(p->key, key, 32);
    memcpy(p->key_z85, pc->public_key, 41);
    p->tx = rchan_tx_new(l->loop, l->bus, p->dc, l->queue_max, l->resend_ms);
    if (l->npeers == l->peers_cap) {
        l->peers_cap = l->peers_cap ? l->peers_cap * 2 : 4;
        l->peers = xrealloc(l->peers, l->peers_cap * sizeof *l->peers);
    }
    l->peers[l->npeers++] = p;
    if (l->m_up != NULL) {
        metric_set(l->m_up, p->dc, 0);
        metric_set(l->m_queued, p->dc, 0);
        metric_set(l->m_oldest, p->dc, 0);
    }
    if (pc->endpoint != NULL && connect_peer(l, p, pc->endpoint, err, errlen) == -1)
        return -1;   /* kept: gd_link_new fails anyway, gd_link_add_peer may set it later */
    return 0;
}

static void free_peer(struct gd_peer *p)
{
    rchan_tx_free(&p->tx);
    free(p->endpoint);
    free(p->dc);
    free(p);
}

/* ---- receiving ----------------------------------------------------------------- */

static void count_refused(struct gd_link *l, enum gd_verdict v, const Mk__Envelope *e, const char *user)
{
    const char *reason = NULL;
    uint64_t n = 0;
    switch (v) {
    case GD_VERDICT_DECODE:  n = ++l->stats.refused_decode; reason = "decode"; break;
    case GD_VERDICT_VERSION: n = ++l->stats.refused_version; reason = "version"; break;
    case GD_VERDICT_ORIGIN:  n = ++l->stats.refused_origin; reason = "origin"; break;
    case GD_VERDICT_TTL:     n = ++l->stats.refused_ttl; reason = "ttl"; break;
    default:                 n = ++l->stats.refused_other; reason = "other"; break;
    }
    if (l->m_refused != NULL)
        metric_inc(l->m_refused, reason);
    /* A hostile peer repeats itself: log the 1st, 2nd, 4th, 8th... of each reason. */
    if ((n & (n - 1)) == 0)
        log_warn("gd_link_refused", "reason=%s key_of=%s sender=%.64s payload=%s total=%llu", reason,
                 user != NULL ? user : "-", e->sender, env_payload_name(e), (unsigned long long)n);
}

static void on_frame(struct gd_link *l, struct gd_peer *p, const Mk__Envelope *e)
{
    if (!p->synced) {
        l->stats.unsynced++;   /* re-sent after the peer's next Hello */
        return;
    }
    switch (rchan_rx_check(l->rx, e)) {
    case RCHAN_NEW: {
        const Mk__GdFrame *f = e->gd_frame;
        const struct gd_link_msg m = {
            .origin = f->origin,
            .ttl = f->ttl,
            .msg_id = f->msg_id,
            .payload = f->payload.data,
            .len = f->payload.len,
        };
        l->stats.received++;
        if (l->m_received != NULL)
            metric_inc(l->m_received, p->dc);
        l->current = (struct gd_link_ticket){.from = p->dc, .epoch = e->rc_epoch, .seq = e->rc_seq};
        l->in_recv = true;
        l->deferred = false;
        l->cb.recv(l->cb.ud, p->dc, &m);
        l->in_recv = false;
        if (!l->deferred)
            rchan_rx_done(l->rx, p->dc, e->rc_epoch, e->rc_seq);
        break;
    }
    case RCHAN_DUP:
        l->stats.duplicates++;
        if (l->m_duplicates != NULL)
            metric_inc(l->m_duplicates, NULL);
        break;
    case RCHAN_GAP:
        break;   /* the sender re-sends from its oldest, in order */
    }
}

/* A frame refused for its content but numbered in order on the channel: its number
 * is used up (acknowledged, never delivered), or the sender would re-send it forever
 * and every frame behind it would wait. */
static void skip_frame(struct gd_link *l, const struct gd_peer *p, const Mk__Envelope *e)
{
    if (p->synced && rchan_rx_check(l->rx, e) == RCHAN_NEW)
        rchan_rx_done(l->rx, e->sender, e->rc_epoch, e->rc_seq);
}

/* The handshake that starts each direction of a link: a Hello names the incarnation
 * of its receiver it is for (peer_started) and where the sender's channel to it
 * stands (rc_epoch, rc_base: everything below was acknowledged). */
static void on_hello(struct gd_link *l, struct gd_peer *p, const Mk__Envelope *e)
{
    const Mk__Hello *h = e->hello;
    if (h->started_us != p->peer_started || h->peer_started != l->started_us) {
        /* A peer first heard, or restarted (it has none of what was in flight to its
         * previous incarnation), or one that does not know this incarnation of ours
         * yet (it drops our frames until our Hello): our Hello goes first, then
         * everything pending, in order. */
        p->peer_started = h->started_us;
        send_hello(l, p);
        rchan_tx_resend(p->tx);
    }
    if (!p->synced && h->peer_started == l->started_us && e->rc_epoch != 0 && e->rc_base != 0) {
        rchan_rx_restore(l->rx, p->dc, e->rc_epoch, e->rc_base - 1);
        p->synced = true;
    }
}

static void on_envelope(struct bus *bus, Mk__Envelope **envp, void *ud)
{
    struct gd_link *l = ud;
    const Mk__Envelope *e = *envp;
    const char *user = bus_frame_user(bus);
    /* Only a frame whose sender is the data center of its connection's key counts as
     * that peer's (for its channel and its liveness). */
    struct gd_peer *p = user != NULL && strcmp(e->sender, user) == 0 ? find_peer(l, user) : NULL;
    if (p == NULL) {
        count_refused(l, GD_VERDICT_ORIGIN, e, user);
        return;
    }
    enum gd_verdict v = classify(l->dc, user, e);
    p->last_heard = ev_now(l->loop);
    set_up(l, p, true);
    switch (v) {
    case GD_VERDICT_FRAME:
        on_frame(l, p, e);
        break;
    case GD_VERDICT_ACK: {
        uint64_t base = rchan_tx_base(p->tx);
        rchan_tx_ack(p->tx, e->ack->epoch, e->ack->upto);
        if (rchan_tx_base(p->tx) != base && l->cb.acked != NULL)
            l->cb.acked(l->cb.ud, p->dc);
        break;
    }
    case GD_VERDICT_HELLO:
        on_hello(l, p, e);
        break;
    default:
        if (e->payload_case == MK__ENVELOPE__PAYLOAD_GD_FRAME)
            skip_frame(l, p, e);
        count_refused(l, v, e, user);
        break;
    }
}

/* ---- timer: heartbeats, silence, expiry, gauges -------------------------------- */

/* Hands back the oldest messages of p that waited max_age, and drops them from the
 * channel (the peer moves past them on the next frame's rc_base). */
static void expire_peer(struct gd_link *l, struct gd_peer *p, ev_tstamp now)
{
    uint64_t seq;
    const void *data;
    size_t len;
    ev_tstamp queued_at;
    bool any = false;
    while (rchan_tx_oldest(p->tx, &seq, &data, &len, &queued_at) && now - queued_at >= l->max_age) {
        any = true;
        Mk__Envelope *e = env_decode(data, len);
        l->stats.expired++;
        if (l->m_over_budget != NULL) {
            char lv[GD_LINK_DC_MAX + 16];
            snprintf(lv, sizeof lv, "%s,expired", p->dc);
            metric_inc(l->m_over_budget, lv);
        }
        if (e != NULL && e->payload_case == MK__ENVELOPE__PAYLOAD_GD_FRAME) {
            const Mk__GdFrame *f = e->gd_frame;
            const struct gd_link_msg m = {
                .origin = f->origin,
                .ttl = f->ttl,
                .msg_id = f->msg_id,
                .payload = f->payload.data,
                .len = f->payload.len,
            };
            log_debug("gd_link_expired", "peer=%s msg_id=%llu waited=%.3f", p->dc, (unsigned long long)f->msg_id,
                      now - queued_at);
            if (l->cb.expired != NULL)
                l->cb.expired(l->cb.ud, p->dc, &m);
        }
        env_free(&e);
        rchan_tx_ack(p->tx, rchan_tx_epoch(p->tx), seq);
    }
    /* Copies of what was given up may still wait in the bus's batch or in ZeroMQ for
     * the unreachable peer; delivered later, they would arrive after the caller stored
     * them elsewhere. A new socket leaves them behind. */
    if (any) {
        reconnect_peer(l, p);
        if (l->cb.acked != NULL)
            l->cb.acked(l->cb.ud, p->dc);
    }
}

static void update_gauges(struct gd_link *l, struct gd_peer *p, ev_tstamp now)
{
    if (l->m_queued == NULL)
        return;
    uint64_t seq;
    const void *data;
    size_t len;
    ev_tstamp queued_at;
    metric_set(l->m_queued, p->dc, (double)rchan_tx_pending(p->tx));
    metric_set(l->m_oldest, p->dc, rchan_tx_oldest(p->tx, &seq, &data, &len, &queued_at) ? now - queued_at : 0);
}

static void update_bus_counters(struct gd_link *l)
{
    if (l->m_refused == NULL)
        return;
    const struct bus_stats *bs = bus_stats(l->bus);
    metric_set(l->m_refused, "unknown_key", (double)bs->refused_key);
    metric_set(l->m_refused, "handshake", (double)bs->refused_handshake);
    metric_set(l->m_refused, "undecodable", (double)bs->dropped_bad);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gd_link *l = w->data;
    ev_tstamp now = ev_now(loop);
    for (size_t i = 0; i < l->npeers; i++) {
        struct gd_peer *p = l->peers[i];
        send_hello(l, p);
        if (p->up && now - p->last_heard > GD_LINK_DOWN_BEATS * l->heartbeat)
            set_up(l, p, false);
        expire_peer(l, p, now);
        update_gauges(l, p, now);
    }
    update_bus_counters(l);
}

/* ---- life cycle -------------------------------------------------------------- */

int gd_link_keys_load(const char *path, bool create, struct bus_keys *keys, char *err, size_t errlen)
{
    const char *slash = strrchr(path, '/');
    if (slash != NULL && slash[1] == '\0') {
        mk_errf(err, errlen, "%s names a directory, not a key file", path);
        return -1;
    }
    char *dir = slash == NULL ? xstrdup(".") : slash == path ? xstrdup("/") : xstrndup(path, (size_t)(slash - path));
    int rc = bus_keys_load_file(dir, slash != NULL ? slash + 1 : path, create, keys, err, errlen);
    free(dir);
    return rc;
}

static void register_metrics(struct gd_link *l, struct metrics *m)
{
    l->metrics = m;
    l->m_sent = metrics_counter(m, "meerkat_gd_link_sent_total", "Messages accepted for a peer data center.", "peer");
    l->m_received = metrics_counter(m, "meerkat_gd_link_received_total",
                                    "Messages received from a peer data center and handed on, once each.", "peer");
    l->m_queued = metrics_gauge(m, "meerkat_gd_link_queued",
                                "Messages waiting for a peer data center's acknowledgement.", "peer");
    l->m_oldest = metrics_gauge(m, "meerkat_gd_link_queue_oldest_seconds",
                                "Age of the oldest message waiting for a peer data center.", "peer");
    l->m_up = metrics_gauge(m, "meerkat_gd_link_up", "1 while the peer data center is heard from.", "peer");
    l->m_over_budget = metrics_counter(m, "meerkat_gd_link_over_budget_total",
                                       "Messages past the queue budget: refused (full) or given up (expired).",
                                       "peer,reason");
    l->m_refused = metrics_counter(m, "meerkat_gd_link_refused_total",
                                   "Connections and frames refused on the inter-DC port, by reason.", "reason");
    l->m_duplicates = metrics_counter(m, "meerkat_gd_link_duplicates_total",
                                      "Re-sent frames already applied, dropped.", NULL);
}

struct gd_link *gd_link_new(struct ev_loop *loop, const struct gd_link_params *p, const struct gd_link_callbacks *cb,
                            struct metrics *metrics, char *err, size_t errlen)
{
    if (p->dc == NULL || p->dc[0] == '\0' || strlen(p->dc) > GD_LINK_DC_MAX) {
        mk_errf(err, errlen, "the data center needs a name of 1 to %d bytes", GD_LINK_DC_MAX);
        return NULL;
    }
    if (p->bind == NULL || cb == NULL || cb->recv == NULL) {
        mk_errf(err, errlen, "the inter-DC link needs a bind endpoint and a receive callback");
        return NULL;
    }
    unsigned char raw[32];
    if (strlen(p->keys.public_key) != 40 || zmq_z85_decode(raw, p->keys.public_key) == NULL
        || strlen(p->keys.secret_key) != 40 || zmq_z85_decode(raw, p->keys.secret_key) == NULL) {
        mk_errf(err, errlen, "the data center's CURVE key pair is not Z85");
        return NULL;
    }
    explicit_bzero(raw, sizeof raw);
    struct gd_link *l = xcalloc(1, sizeof *l);
    l->loop = loop;
    l->dc = xstrdup(p->dc);
    l->cb = *cb;
    l->queue_max = p->queue_max ? p->queue_max : 10000;
    l->max_age = p->queue_max_age > 0 ? p->queue_max_age : 30;
    l->resend_ms = p->resend_ms ? p->resend_ms : 1000;
    l->heartbeat = p->heartbeat > 0 ? p->heartbeat : 1;
    l->max_frame = p->max_frame ? p->max_frame : 4u * 1024 * 1024;
    l->ttl = p->ttl ? p->ttl : 4;
    /* Unique in the process too (tests run several ends), like rchan's epochs. */
    static uint64_t last_started;
    l->started_us = (uint64_t)mk_now_us();
    if (l->started_us <= last_started)
        l->started_us = last_started + 1;
    last_started = l->started_us;
    if (metrics != NULL)
        register_metrics(l, metrics);

    /* The bus's queue mark is in envelopes: a peer's whole budget may be in flight. */
    size_t hwm = l->queue_max < 1000 ? 1000 : l->queue_max;
    const struct bus_options bo = {
        .hwm = hwm > 1000000 ? 1000000 : (int)hwm,
        .max_frame = l->max_frame + GD_LINK_FRAME_OVERHEAD + 512,
        .curve = &p->keys,
        .key_check = key_check,
        .key_check_ud = l,
    };
    l->bus = bus_open(loop, l->dc, p->bind, &bo, on_envelope, l, err, errlen);
    if (l->bus == NULL)
        goto fail;
    l->rx = rchan_rx_new(loop, l->bus);
    for (size_t i = 0; i < p->npeers; i++) {
        if (add_peer(l, &p->peers[i], err, errlen) == -1)
            goto fail;
    }
    ev_timer_init(&l->tick, on_tick, l->heartbeat, l->heartbeat);
    l->tick.data = l;
    ev_timer_start(loop, &l->tick);
    update_bus_counters(l);
    return l;

fail:
    gd_link_free(&l);
    return NULL;
}

void gd_link_free(struct gd_link **lp)
{
    if (lp == NULL || *lp == NULL)
        return;
    struct gd_link *l = *lp;
    ev_timer_stop(l->loop, &l->tick);
    /* What was applied is acknowledged before the sockets go: a graceful restart
     * re-applies nothing. */
    rchan_rx_flush(l->rx);
    rchan_rx_free(&l->rx);
    for (size_t i = 0; i < l->npeers; i++)
        free_peer(l->peers[i]);
    free(l->peers);
    bus_free(&l->bus);
    free(l->dc);
    free(l);
    *lp = NULL;
}

/* ---- API ------------------------------------------------------------------------ */

int gd_link_send(struct gd_link *l, const char *peer, const struct gd_link_msg *m)
{
    struct gd_peer *p = find_peer(l, peer);
    if (p == NULL) {
        errno = EHOSTUNREACH;
        return -1;
    }
    if (m->len > l->max_frame || (m->origin != NULL && strlen(m->origin) > GD_LINK_DC_MAX)) {
        errno = EMSGSIZE;
        return -1;
    }
    if (m->origin != NULL && m->ttl == 0) {
        errno = EINVAL;
        return -1;
    }
    if (rchan_tx_full(p->tx)) {
        l->stats.refused_full++;
        if (l->m_over_budget != NULL) {
            char lv[GD_LINK_DC_MAX + 16];
            snprintf(lv, sizeof lv, "%s,full", p->dc);
            metric_inc(l->m_over_budget, lv);
        }
        errno = EAGAIN;
        return -1;
    }
    Mk__GdFrame f = MK__GD_FRAME__INIT;
    f.version = GD_LINK_VERSION;
    f.origin = (char *)(m->origin != NULL ? m->origin : l->dc);
    f.ttl = m->origin != NULL || m->ttl != 0 ? m->ttl : l->ttl;
    f.msg_id = m->msg_id;
    f.payload.data = (uint8_t *)m->payload;
    f.payload.len = m->len;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_GD_FRAME;
    e.gd_frame = &f;
    if (rchan_send(p->tx, &e) == 0)
        return -1;   /* checked full above: not reached */
    l->stats.sent++;
    if (l->m_sent != NULL)
        metric_inc(l->m_sent, p->dc);
    return 0;
}

uint64_t gd_link_last_seq(const struct gd_link *l, const char *peer)
{
    const struct gd_peer *p = find_peer(l, peer);
    return p != NULL ? rchan_tx_base(p->tx) + rchan_tx_pending(p->tx) - 1 : 0;
}

uint64_t gd_link_unacked_from(const struct gd_link *l, const char *peer)
{
    const struct gd_peer *p = find_peer(l, peer);
    return p != NULL ? rchan_tx_base(p->tx) : 0;
}

void gd_link_defer(struct gd_link *l, struct gd_link_ticket *t)
{
    if (!l->in_recv) {
        log_error("gd_link_defer_misuse", "reason=outside_recv_callback");
        abort();
    }
    l->deferred = true;
    *t = l->current;
}

void gd_link_done(struct gd_link *l, const struct gd_link_ticket *t)
{
    rchan_rx_done(l->rx, t->from, t->epoch, t->seq);
}

int gd_link_add_peer(struct gd_link *l, const struct gd_link_peer_conf *pc, char *err, size_t errlen)
{
    return add_peer(l, pc, err, errlen);
}

int gd_link_set_endpoint(struct gd_link *l, const char *dc, const char *endpoint, char *err, size_t errlen)
{
    struct gd_peer *p = find_peer(l, dc);
    if (p == NULL) {
        mk_errf(err, errlen, "%s is not a trusted data center", dc);
        errno = EHOSTUNREACH;
        return -1;
    }
    if (endpoint != NULL && p->endpoint != NULL && strcmp(endpoint, p->endpoint) == 0)
        return 0;
    if (p->endpoint != NULL) {
        /* Unacknowledged frames stay in the channel; what ZeroMQ still held for the old
         * endpoint goes within 0 ms or not at all and is re-sent to the new one. */
        bus_remove_peer(l->bus, p->dc, 0);
        free(p->endpoint);
        p->endpoint = NULL;
        log_info("gd_link_endpoint", "peer=%s endpoint=%s", p->dc, endpoint != NULL ? endpoint : "-");
    }
    if (endpoint == NULL)
        return 0;
    return connect_peer(l, p, endpoint, err, errlen);
}

const char *gd_link_endpoint(const struct gd_link *l)
{
    return bus_endpoint(l->bus);
}

bool gd_link_peer_up(const struct gd_link *l, const char *peer)
{
    const struct gd_peer *p = find_peer(l, peer);
    return p != NULL && p->up;
}

size_t gd_link_queue_depth(const struct gd_link *l, const char *peer)
{
    const struct gd_peer *p = find_peer(l, peer);
    return p != NULL ? rchan_tx_pending(p->tx) : 0;
}

void gd_link_stats(const struct gd_link *l, struct gd_link_stats *out)
{
    *out = l->stats;
    const struct bus_stats *bs = bus_stats(l->bus);
    out->refused_key = bs->refused_key;
    out->refused_handshake = bs->refused_handshake;
    out->refused_decode += bs->dropped_bad;
}
