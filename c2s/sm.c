/* c2s/sm.c - the "sm" module: XEP-0198 stream management (acks with counters that wrap at 2^32, the unacknowledged queue, resumption of a detached session, and what becomes of unacknowledged stanzas when a session ends). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "c2s.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "rchan.h"
#include "rchan_set.h"
#include "sm.h"
#include "util.h"

#define SM_SECRET_LEN     16         /* random bytes of a resumption id: unguessable */
#define SM_PREVID_MAX     (16 + 2 * SM_SECRET_LEN + 1 + 64)
#define SM_STALE          1024       /* ended resumable sessions whose h a failed <resume/> still reports */
#define SM_MAM_MAX_PENDING 100000    /* offline writes to a mam shard not acknowledged yet */
#define SM_MAM_RESEND_MS  2000u
#define SM_RING_MIN       16

extern const struct c2s_module sm_module;

/* A stanza sent to the client and not acknowledged yet: its bytes as written. */
struct sm_item {
    int64_t stamp_us;              /* when it was written (the delay stamp if it goes offline) */
    uint32_t len;
    bool owned;                    /* its writer keeps it (sm_after_ack): never stored offline here */
    char data[];
};

/* A writer waiting for the client to acknowledge up to a count (sm_after_ack). */
struct sm_receipt {
    uint32_t upto;
    void (*cb)(void *ud, bool acked);
    void *ud;
    struct sm_receipt *next;
};

/* Per session (the module's session_state, zeroed at open). Counters are the XEP's: they
 * count modulo 2^32, and every difference below is taken modulo 2^32 too, so they wrap
 * as the XEP says. The queue holds exactly sent - acked items, oldest at head. */
struct sm_state {
    bool enabled;
    bool resumable;
    bool r_pending;                /* an <r/> is out and its <a/> has not come */
    bool overflow;                 /* past max_unacked: the stream is ending */
    uint32_t in_h;                 /* stanzas handled from the client */
    uint32_t sent;                 /* stanzas sent to the client */
    uint32_t acked;                /* the client's last h */
    uint32_t max_s;                /* resumption timeout of this session */
    uint32_t cap;                  /* ring size (a power of two), 0: none allocated */
    uint32_t head;
    struct sm_item **ring;
    struct sm_receipt *receipts;   /* in order of upto */
    unsigned char secret[SM_SECRET_LEN];
};

/* A session that ended while resumable: a late <resume/> learns how many of its stanzas
 * the server had handled (<failed h=…/>). */
struct sm_stale {
    uint64_t sid;
    uint32_t h;
    unsigned char secret[SM_SECRET_LEN];
};

static struct {
    struct c2s *s;
    struct rchan_set *mam;         /* offline writes of unacknowledged messages */
    struct metric *m_events;       /* label event */
    struct metric *m_unacked;      /* label result */
    struct sm_stale stale[SM_STALE];
    size_t stale_next;
} sm;

static struct sm_state *state_of(const struct session *sess)
{
    return sess != NULL ? c2s_session_state(sess, &sm_module) : NULL;
}

static uint32_t unacked(const struct sm_state *st)
{
    return st->sent - st->acked;
}

/* A decimal counter of at most 2^32 - 1. */
static int parse_u32(const char *s, uint32_t *out)
{
    if (s == NULL || *s == '\0' || strlen(s) > 10)
        return -1;
    unsigned long long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v > UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* The resumption id: the session id and the secret in hex, then '@' and the owning c2s
 * (so that another c2s knows whom to ask). */
static void previd_of(const struct session *sess, const struct sm_state *st, char *out, size_t outlen)
{
    char hex[2 * SM_SECRET_LEN + 1];
    for (size_t i = 0; i < SM_SECRET_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", st->secret[i]);
    snprintf(out, outlen, "%016llx%s@%s", (unsigned long long)sess->id, hex, sm.s->node->self->id);
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Splits a previd; owner points into previd. */
static int previd_parse(const char *previd, uint64_t *sid, unsigned char *secret, const char **owner)
{
    size_t n = strlen(previd);
    if (n < 16 + 2 * SM_SECRET_LEN + 2 || n >= SM_PREVID_MAX || previd[16 + 2 * SM_SECRET_LEN] != '@')
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < 16; i++) {
        int d = hexval(previd[i]);
        if (d < 0)
            return -1;
        v = v << 4 | (uint64_t)d;
    }
    for (size_t i = 0; i < SM_SECRET_LEN; i++) {
        int hi = hexval(previd[16 + 2 * i]), lo = hexval(previd[17 + 2 * i]);
        if (hi < 0 || lo < 0)
            return -1;
        secret[i] = (unsigned char)(hi << 4 | lo);
    }
    *sid = v;
    *owner = previd + 16 + 2 * SM_SECRET_LEN + 1;
    return 0;
}

/* <failed/> with a stanza error condition, and h when known. */
static void send_failed(struct conn *c, const char *condition, bool has_h, uint32_t h)
{
    char b[256];
    if (has_h)
        snprintf(b, sizeof b, "<failed xmlns='%s' h='%u'><%s xmlns='%s'/></failed>", NS_SM, h, condition, NS_STANZAS);
    else
        snprintf(b, sizeof b, "<failed xmlns='%s'><%s xmlns='%s'/></failed>", NS_SM, condition, NS_STANZAS);
    conn_write_nonza(c, b);
}

static void send_r(struct conn *c)
{
    conn_write_nonza(c, "<r xmlns='" NS_SM "'/>");
}

/* The queue -------------------------------------------------------------------------------- */

static void ring_grow(struct sm_state *st)
{
    uint32_t n = unacked(st);
    uint32_t cap = st->cap ? st->cap * 2 : SM_RING_MIN;
    struct sm_item **r = xcalloc(cap, sizeof *r);
    for (uint32_t i = 0; i < n; i++)
        r[i] = st->ring[(st->head + i) & (st->cap - 1)];
    free(st->ring);
    st->ring = r;
    st->cap = cap;
    st->head = 0;
}

static struct sm_item *ring_at(const struct sm_state *st, uint32_t i)
{
    return st->ring[(st->head + i) & (st->cap - 1)];
}

/* Runs the receipts the client's acks have covered (acked true), or every one (false). */
static void receipts_run(struct sm_state *st, bool all)
{
    while (st->receipts != NULL) {
        struct sm_receipt *r = st->receipts;
        /* upto <= acked, modulo 2^32: upto is no further from sent than acked is. */
        bool covered = (uint32_t)(st->sent - r->upto) >= unacked(st);
        if (!all && !covered)
            break;
        st->receipts = r->next;
        r->cb(r->ud, covered);
        free(r);
    }
}

/* The client has handled everything up to h (already checked against what was sent). */
static void apply_ack(struct sm_state *st, uint32_t h)
{
    uint32_t delta = h - st->acked;
    for (uint32_t i = 0; i < delta; i++) {
        free(st->ring[st->head]);
        st->ring[st->head] = NULL;
        st->head = (st->head + 1) & (st->cap - 1);
    }
    st->acked = h;
    receipts_run(st, false);
    if (unacked(st) == 0 && st->ring != NULL) {
        /* An idle session keeps no queue memory. */
        free(st->ring);
        st->ring = NULL;
        st->cap = st->head = 0;
    }
}

/* <a h/> or <resume h/> over what was sent: the XEP's stream error. */
static void handled_too_high(struct conn *c, uint32_t h, uint32_t sent)
{
    char app[160];
    snprintf(app, sizeof app, "<handled-count-too-high xmlns='%s' h='%u' send-count='%u'/>", NS_SM, h, sent);
    log_info("sm_h_too_high", "conn=%llu h=%u sent=%u", (unsigned long long)c->serial, h, sent);
    metric_inc(sm.m_events, "h_too_high");
    conn_stream_error_app(c, "undefined-condition", "the client acknowledged more stanzas than were sent", app);
}

/* The core's calls (sm.h) ------------------------------------------------------------------- */

bool sm_active(const struct session *sess)
{
    const struct sm_state *st = state_of(sess);
    return st != NULL && st->enabled;
}

void sm_handled(struct session *sess)
{
    struct sm_state *st = state_of(sess);
    if (st != NULL && st->enabled)
        st->in_h++;
}

bool sm_sent(struct session *sess, const void *p, size_t n)
{
    struct sm_state *st = state_of(sess);
    if (st == NULL || !st->enabled)
        return false;
    uint32_t count = unacked(st);
    if (count + 1 > st->cap)
        ring_grow(st);
    struct sm_item *it = xmalloc(sizeof *it + n);
    it->stamp_us = (int64_t)(ev_now(sm.s->loop) * 1e6);
    it->len = (uint32_t)n;
    it->owned = false;
    memcpy(it->data, p, n);
    st->ring[(st->head + count) & (st->cap - 1)] = it;
    st->sent++;
    if (count + 1 > sm.s->cfg->modules.sm_max_unacked && !st->overflow) {
        st->overflow = true;
        metric_inc(sm.m_events, "overflow");
        metric_inc(sm.s->m_limit_refusals, "sm_unacked");
        log_info("sm_unacked_limit", "jid=%s unacked=%u", sess->full, count + 1);
        conn_sm_overflow(sess->conn);
    }
    if (st->r_pending || sess->conn->detached)
        return false;
    st->r_pending = true;
    return true;
}

bool sm_detach(struct session *sess)
{
    struct sm_state *st = state_of(sess);
    if (st == NULL || !st->enabled || !st->resumable || st->max_s == 0 || st->overflow || sm.s->stopping)
        return false;
    st->r_pending = false;
    metric_inc(sm.m_events, "detached");
    log_info("sm_detached", "jid=%s session=%llu unacked=%u timeout=%u", sess->full, (unsigned long long)sess->id,
             unacked(st), st->max_s);
    return true;
}

double sm_resume_timeout(const struct session *sess)
{
    struct sm_state *st = state_of(sess);
    return st != NULL ? (double)st->max_s : 0.;
}

void sm_after_ack(struct session *sess, size_t n, void (*cb)(void *ud, bool acked), void *ud)
{
    struct sm_state *st = state_of(sess);
    uint32_t count = st != NULL && st->enabled ? unacked(st) : 0;
    if (n == 0 || count == 0) {
        cb(ud, true);
        return;
    }
    if (n > count)
        n = count;
    for (uint32_t i = count - (uint32_t)n; i < count; i++)
        ring_at(st, i)->owned = true;
    struct sm_receipt *r = xcalloc(1, sizeof *r);
    r->upto = st->sent;
    r->cb = cb;
    r->ud = ud;
    struct sm_receipt **pp = &st->receipts;
    while (*pp != NULL)
        pp = &(*pp)->next;
    *pp = r;
}

/* The elements --------------------------------------------------------------------------- */

static void on_enable(struct conn *c, const struct xml_node *el)
{
    struct session *sess = c->sess;
    struct sm_state *st = c->state == CONN_STATE_SESSION ? state_of(sess) : NULL;
    if (st == NULL || st->enabled) {
        /* Before binding, or a second time: XEP-0198 3. */
        send_failed(c, "unexpected-request", false, 0);
        return;
    }
    st->enabled = true;
    st->in_h = st->sent = st->acked = 0;
    const char *res = xml_attr(el, "resume");
    bool want = res != NULL && (strcmp(res, "true") == 0 || strcmp(res, "1") == 0);
    unsigned timeout = sm.s->cfg->modules.sm_resume_timeout;
    uint32_t mx = 0;
    if (want && timeout > 0) {
        if (parse_u32(xml_attr(el, "max"), &mx) == 0 && mx > 0 && mx < timeout)
            timeout = mx;   /* the client may ask for less, never more */
        st->resumable = true;
        st->max_s = timeout;
        if (RAND_bytes(st->secret, sizeof st->secret) != 1) {
            log_error("sm_rand_failed", "jid=%s", sess->full);
            st->resumable = false;
        }
    }
    char b[SM_PREVID_MAX + 160];
    if (st->resumable) {
        char id[SM_PREVID_MAX];
        previd_of(sess, st, id, sizeof id);
        snprintf(b, sizeof b, "<enabled xmlns='%s' id='%s' resume='true' max='%u'/>", NS_SM, id, st->max_s);
    } else {
        snprintf(b, sizeof b, "<enabled xmlns='%s'/>", NS_SM);
    }
    conn_write_nonza(c, b);
    metric_inc(sm.m_events, st->resumable ? "enabled_resumable" : "enabled");
    log_debug("sm_enabled", "jid=%s resume=%d max=%u", sess->full, st->resumable, st->max_s);
}

static void on_ack(struct conn *c, const struct xml_node *el)
{
    struct sm_state *st = state_of(c->sess);
    if (st == NULL || !st->enabled)
        return;   /* nothing asked: ignored, as for an <a/> before <enable/> */
    uint32_t h;
    if (parse_u32(xml_attr(el, "h"), &h) == -1) {
        conn_stream_error(c, "bad-format", "<a/> needs h, a counter below 2^32");
        return;
    }
    if (!sm_h_valid(st->acked, st->sent, h)) {
        handled_too_high(c, h, st->sent);
        return;
    }
    st->r_pending = false;
    apply_ack(st, h);
}

static void on_request(struct conn *c)
{
    struct sm_state *st = state_of(c->sess);
    if (st == NULL || !st->enabled)
        return;
    char b[80];
    snprintf(b, sizeof b, "<a xmlns='%s' h='%u'/>", NS_SM, st->in_h);
    conn_write_nonza(c, b);
}

static const struct sm_stale *stale_find(uint64_t sid, const unsigned char *secret)
{
    for (size_t i = 0; i < SM_STALE; i++) {
        const struct sm_stale *e = &sm.stale[i];
        if (e->sid == sid && sid != 0 && CRYPTO_memcmp(e->secret, secret, SM_SECRET_LEN) == 0)
            return e;
    }
    return NULL;
}

static void resume_failed(struct conn *c, uint64_t sid, const unsigned char *secret, const char *why)
{
    const struct sm_stale *e = secret != NULL ? stale_find(sid, secret) : NULL;
    log_info("sm_resume_failed", "conn=%llu user=%s@%s reason=%s", (unsigned long long)c->serial, c->user, c->domain,
             why);
    metric_inc(sm.m_events, "resume_failed");
    send_failed(c, "item-not-found", e != NULL, e != NULL ? e->h : 0);
}

static void on_resume(struct conn *c, const struct xml_node *el)
{
    if (c->state != CONN_STATE_BIND || c->user == NULL) {
        send_failed(c, "unexpected-request", false, 0);
        return;
    }
    const char *previd = xml_attr(el, "previd");
    uint32_t h;
    if (previd == NULL || parse_u32(xml_attr(el, "h"), &h) == -1) {
        send_failed(c, "bad-request", false, 0);
        return;
    }
    uint64_t sid;
    unsigned char secret[SM_SECRET_LEN];
    const char *owner;
    if (previd_parse(previd, &sid, secret, &owner) == -1) {
        resume_failed(c, 0, NULL, "malformed_previd");
        return;
    }
    if (strcmp(owner, sm.s->node->self->id) != 0) {
        resume_failed(c, sid, NULL, "other_c2s");
        return;
    }
    struct session *sess = session_by_id(sm.s, sid);
    struct sm_state *st = state_of(sess);
    /* The secret proves the client had the id; the account must be the one that
     * authenticated on this stream: nobody resumes another user's session. */
    if (st == NULL || !st->resumable || CRYPTO_memcmp(st->secret, secret, SM_SECRET_LEN) != 0 ||
        strcmp(sess->jid.local, c->user) != 0 || strcmp(sess->jid.domain, c->domain) != 0 || sess->conn->closed ||
        st->overflow) {
        resume_failed(c, sid, secret, st == NULL ? "unknown_session" : "refused");
        return;
    }
    if (!sm_h_valid(st->acked, st->sent, h)) {
        handled_too_high(c, h, st->sent);
        return;
    }
    apply_ack(st, h);
    struct conn *old = sess->conn;
    bool was_detached = old->detached;
    /* The session moves to this connection; the old one goes without it (still open:
     * the client left it for this one, so it is told). */
    old->sess = NULL;
    sess->conn = c;
    c->sess = sess;
    c->state = CONN_STATE_SESSION;
    if (was_detached)
        conn_close(old, "resumed");
    else
        conn_stream_error(old, "conflict", "the session was resumed on another connection");
    char id[SM_PREVID_MAX], b[SM_PREVID_MAX + 100];
    previd_of(sess, st, id, sizeof id);
    snprintf(b, sizeof b, "<resumed xmlns='%s' h='%u' previd='%s'/>", NS_SM, st->in_h, id);
    conn_write_nonza(c, b);
    uint32_t n = unacked(st);
    for (uint32_t i = 0; i < n; i++) {
        const struct sm_item *it = ring_at(st, i);
        conn_write_raw(c, it->data, it->len);
    }
    st->r_pending = false;
    if (n > 0) {
        send_r(c);
        st->r_pending = true;
    }
    metric_inc(sm.m_events, "resumed");
    log_info("sm_resumed", "conn=%llu jid=%s session=%llu resent=%u detached=%d", (unsigned long long)c->serial,
             sess->full, (unsigned long long)sess->id, n, was_detached);
}

void sm_on_element(struct conn *c, const struct xml_node *el)
{
    if (!sm.s->cfg->modules.sm_enabled) {
        conn_stream_error(c, "unsupported-stanza-type", "stream management is not enabled on this server");
        return;
    }
    const char *name = el->name;
    if (strcmp(name, "enable") == 0)
        on_enable(c, el);
    else if (strcmp(name, "resume") == 0)
        on_resume(c, el);
    else if (strcmp(name, "a") == 0)
        on_ack(c, el);
    else if (strcmp(name, "r") == 0)
        on_request(c);
    else
        conn_stream_error(c, "unsupported-stanza-type", NULL);
}

/* A session ends: what it was sent and did not acknowledge ----------------------------------- */

static bool has_body(const struct xml_node *msg)
{
    for (struct xml_node *b = xml_child(msg, "body", XML_NS_CLIENT); b != NULL; b = xml_next(b, "body", XML_NS_CLIENT))
        for (struct xml_node *t = b->first_child; t != NULL; t = t->next)
            if (t->name == NULL && t->text_len > 0)
                return true;
    return false;
}

/* A message with a body goes to the user's offline store (XEP-0203 delay stamped with when
 * it was sent to the client), on the reliable channel to the mam shard. */
static int to_offline(struct session *sess, const struct sm_item *it, const char *from)
{
    struct rchan_tx *tx = rchan_set_shard(sm.mam, sess->bare);
    if (tx == NULL)
        return -1;
    const char *slash = strchr(from, '/');
    char *peer = slash ? xstrndup(from, (size_t)(slash - from)) : xstrdup(from);
    Mk__ArchiveWrite aw = MK__ARCHIVE_WRITE__INIT;
    aw.owner = sess->bare;
    aw.peer = peer;
    aw.peer_resource = (char *)(slash ? slash + 1 : "");
    aw.offline = true;
    aw.xml.data = (uint8_t *)it->data;
    aw.xml.len = it->len;
    aw.stamp_us = (uint64_t)it->stamp_us;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ARCHIVE;
    e.archive = &aw;
    uint64_t seq = rchan_send(tx, &e);
    free(peer);
    return seq == 0 ? -1 : 0;
}

/* XEP-0198 5: unacknowledged stanzas are treated as sent to an unavailable resource. */
static void dispose(struct session *sess, const struct sm_item *it)
{
    char err[128];
    struct xml_node *st = xml_parse_stanza(it->data, it->len, err, sizeof err);
    if (st == NULL) {
        metric_inc(sm.m_unacked, "dropped");
        return;
    }
    const char *type = xml_attr(st, "type");
    const char *from = xml_attr(st, "from");
    if (strcmp(st->name, "message") == 0 && from != NULL && *from &&
        (type == NULL || strcmp(type, "chat") == 0 || strcmp(type, "normal") == 0) && has_body(st)) {
        if (to_offline(sess, it, from) == 0) {
            metric_inc(sm.m_unacked, "offline");
        } else {
            /* The mam shard is away or not keeping up: the sender learns it. */
            struct xml_node *r = stanza_error_reply(st, "wait", "resource-constraint", NULL);
            if (r != NULL && xml_attr(r, "to") != NULL)
                session_route(sm.s, r);
            xml_free(&r);
            metric_inc(sm.m_unacked, "bounced");
        }
    } else if (strcmp(st->name, "iq") == 0 && type != NULL && (strcmp(type, "get") == 0 || strcmp(type, "set") == 0)) {
        struct xml_node *r = stanza_error_reply(st, "cancel", "service-unavailable",
                                                "the recipient's session ended before it acknowledged the request");
        if (r != NULL && xml_attr(r, "to") != NULL)
            session_route(sm.s, r);
        xml_free(&r);
        metric_inc(sm.m_unacked, "bounced");
    } else {
        /* Presence, chat states, errors, groupchat and headlines: as for an unavailable
         * resource, nothing is kept. */
        metric_inc(sm.m_unacked, "dropped");
    }
    xml_free(&st);
}

static void sm_session_close(struct session *sess)
{
    struct sm_state *st = state_of(sess);
    if (st == NULL || !st->enabled)
        return;
    if (st->resumable) {
        struct sm_stale *e = &sm.stale[sm.stale_next];
        sm.stale_next = (sm.stale_next + 1) % SM_STALE;
        e->sid = sess->id;
        e->h = st->in_h;
        memcpy(e->secret, st->secret, SM_SECRET_LEN);
    }
    uint32_t n = unacked(st);
    if (n > 0)
        log_info("sm_unacked_at_close", "jid=%s unacked=%u", sess->full, n);
    for (uint32_t i = 0; i < n; i++) {
        struct sm_item *it = ring_at(st, i);
        if (!it->owned)
            dispose(sess, it);
        free(it);
    }
    free(st->ring);
    st->ring = NULL;
    st->cap = 0;
    receipts_run(st, true);
    st->enabled = false;
}

/* The module ----------------------------------------------------------------------------- */

static void sm_stream_features(struct conn *c, struct xml_node *features, bool authenticated)
{
    (void)c;
    if (authenticated && sm.s->cfg->modules.sm_enabled)
        xml_add_child(features, "sm", NS_SM);
}

static void sm_init(struct c2s *s)
{
    memset(&sm, 0, sizeof sm);
    sm.s = s;
    sm.m_events = metrics_counter(s->node->metrics, "meerkat_c2s_sm_events_total",
                                  "Stream management (XEP-0198) events: enabled, enabled_resumable, detached, "
                                  "resumed, resume_failed, overflow, h_too_high",
                                  "event");
    sm.m_unacked = metrics_counter(s->node->metrics, "meerkat_c2s_sm_unacked_total",
                                   "Stanzas a session ended without acknowledging, by what became of them "
                                   "(offline, bounced, dropped)",
                                   "result");
    if (s->cfg->modules.sm_enabled)
        sm.mam = rchan_set_new(s->loop, s->node->bus, s->cfg, CFG_ROLE_MAM, SM_MAM_MAX_PENDING, SM_MAM_RESEND_MS);
}

static void sm_fini(struct c2s *s)
{
    (void)s;
    rchan_set_free(&sm.mam);
}

static size_t sm_pending(const struct c2s *s)
{
    (void)s;
    return rchan_set_pending(sm.mam);
}

static bool sm_envelope(struct c2s *s, const Mk__Envelope *e)
{
    (void)s;
    return rchan_set_on_envelope(sm.mam, e);
}

const struct c2s_module sm_module = {
    .name = "sm",
    .stream_features = sm_stream_features,
    .session_state = sizeof(struct sm_state),
    .init = sm_init,
    .fini = sm_fini,
    .pending = sm_pending,
    .envelope = sm_envelope,
    .session_close = sm_session_close,
};
