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
#define SM_TAKEOVER_WAIT_S 5.0       /* a <resume/> waits this long for another c2s's answer */

extern const struct c2s_module sm_module;

/* A stanza sent to the client and not acknowledged yet: its bytes as written. */
struct sm_item {
    int64_t stamp_us;              /* when it was written (the delay stamp if it goes offline) */
    uint32_t len;
    bool owned;                    /* its writer keeps it (sm_after_ack): never stored offline here */
    uint64_t custody;              /* the router's custody id of its Deliver (0: none), done when it goes */
    uint64_t mam_id;               /* the id of its offline row if it goes there (0: the mam shard makes one) */
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
    bool handed_over;              /* another c2s took the session over: nothing disposed here */
    bool moved_in;                 /* taken over from another c2s (counted in sm.moved_in) */
    uint32_t in_h;                 /* stanzas handled from the client */
    uint32_t sent;                 /* stanzas sent to the client */
    uint32_t acked;                /* the client's last h */
    uint32_t max_s;                /* resumption timeout of this session */
    uint32_t cap;                  /* ring size (a power of two), 0: none allocated */
    uint32_t head;
    struct sm_item **ring;
    struct sm_receipt *receipts;   /* in order of upto */
    uint64_t orig_sid;             /* the session id in the previd (the session's first) */
    const struct cfg_proc *home;   /* the c2s in the previd; where it went when handed over */
    unsigned char secret[SM_SECRET_LEN];
};

/* A session that ended while resumable: a late <resume/> learns how many of its stanzas
 * the server had handled (<failed h=…/>). */
struct sm_stale {
    uint64_t sid;
    uint32_t h;
    const struct cfg_proc *moved_to;   /* handed over to that c2s (a later <resume/> is sent there) */
    unsigned char secret[SM_SECRET_LEN];
};

/* An unacknowledged message of a session that ended, on its way to offline storage: its
 * custody id is reported done once the mam shard acknowledges the write (a kill -9 before
 * that leaves the router's copy, routed again under the same row id: stored once). */
struct sm_offline_wait {
    struct rchan_tx *tx;           /* sm.mam's channel to the owner's shard */
    uint64_t seq;
    uint64_t custody;
};

/* A <resume/> waiting for the c2s that holds the session (SmTakeover). */
struct sm_request {
    struct conn *conn;             /* held with conn_ref */
    uint64_t serial;
    uint32_t h;
    unsigned char secret[SM_SECRET_LEN];
    uint64_t new_sid;              /* the id the session gets here (SmTakeover.new_session_id) */
    /* Delivers for new_sid that came before the holder's answer (it moved the route
     * first): packed Mk__Deliver, each for new_sid alone, written after the resumed ones. */
    struct buf *parked;
    size_t nparked;
    ev_timer timer;
    struct sm_request *next;
};

static struct {
    struct c2s *s;
    struct rchan_set *mam;         /* offline writes of unacknowledged messages */
    struct metric *m_events;       /* label event */
    struct metric *m_unacked;      /* label result */
    struct sm_stale stale[SM_STALE];
    size_t stale_next;
    size_t moved_in;               /* sessions here whose previd names another session id */
    struct sm_request *requests;
    struct sm_offline_wait *offline_waits;   /* in the order written */
    size_t noffline_waits, offline_waits_cap;
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
    snprintf(out, outlen, "%016llx%s@%s", (unsigned long long)st->orig_sid, hex, st->home->id);
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
        session_custody_done(sm.s, st->ring[st->head]->custody);
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
    it->custody = sm.s->deliver_custody;   /* the Deliver being written, if any: done when acknowledged */
    it->mam_id = it->custody != 0 ? sm.s->deliver_mam_id : 0;
    sm.s->deliver_custody = 0;
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
    if (sess->conn->detached) {
        /* Nobody reads it now: the user's app servers are told (XEP-0357). */
        c2s_modules_detached_stanza(sess, p, n);
        return false;
    }
    if (st->r_pending)
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
    /* What the client may not have seen is pushed too, as MongooseIM does on suspending
     * a session (its unacknowledged messages), and then each arrival (sm_sent). */
    for (uint32_t i = 0, n = unacked(st); i < n; i++)
        c2s_modules_detached_stanza(sess, ring_at(st, i)->data, ring_at(st, i)->len);
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
        st->orig_sid = sess->id;
        st->home = sm.s->node->self;
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

uint32_t sm_unacked(const struct session *sess)
{
    const struct sm_state *st = state_of(sess);
    return st != NULL && st->enabled ? unacked(st) : 0;
}

void sm_request_ack(struct session *sess)
{
    struct sm_state *st = state_of(sess);
    if (st == NULL || !st->enabled || sess->conn->detached)
        return;
    st->r_pending = true;
    send_r(sess->conn);
}

void sm_tell_handled(struct session *sess)
{
    if (sess->conn->detached)
        return;
    on_request(sess->conn);
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

/* The live resumable session whose previd has sid and secret, or NULL. A session taken
 * over from another c2s has a new id here: those few are looked for one by one. */
static struct session *find_resumable(uint64_t sid, const unsigned char *secret)
{
    struct session *sess = session_by_id(sm.s, sid);
    struct sm_state *st = state_of(sess);
    if (st != NULL && st->resumable && st->orig_sid == sid && CRYPTO_memcmp(st->secret, secret, SM_SECRET_LEN) == 0)
        return sess;
    if (sm.moved_in == 0)
        return NULL;
    for (size_t i = 0; i < sm.s->sessions_cap; i++)
        for (struct session *n = sm.s->sessions[i]; n != NULL; n = n->hnext) {
            st = state_of(n);
            if (st != NULL && st->moved_in && st->orig_sid == sid &&
                CRYPTO_memcmp(st->secret, secret, SM_SECRET_LEN) == 0)
                return n;
        }
    return NULL;
}

static void resume_failed(struct conn *c, const struct sm_stale *e, const char *why)
{
    log_info("sm_resume_failed", "conn=%llu user=%s@%s reason=%s", (unsigned long long)c->serial, c->user, c->domain,
             why);
    metric_inc(sm.m_events, "resume_failed");
    send_failed(c, "item-not-found", e != NULL, e != NULL ? e->h : 0);
}

/* Whether sess may be resumed by the client authenticated on c. */
static bool resumable_by(const struct session *sess, const struct sm_state *st, const char *user, const char *domain)
{
    return strcmp(sess->jid.local, user) == 0 && strcmp(sess->jid.domain, domain) == 0 && !sess->conn->closed &&
           !st->overflow && !st->handed_over;
}

/* The session is on c now: <resumed/>, then everything not acknowledged, again. */
static void resumed(struct conn *c, struct session *sess, struct sm_state *st, const char *how)
{
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
    log_info("sm_resumed", "conn=%llu jid=%s session=%llu resent=%u how=%s", (unsigned long long)c->serial, sess->full,
             (unsigned long long)sess->id, n, how);
}

/* The previous connection of a session that moved (to c here, or to another c2s): told
 * if it is still open, closed if it was detached. */
static void let_go(struct conn *old, const char *where)
{
    if (old->detached)
        conn_close(old, where);
    else
        conn_stream_error(old, "conflict", "the session was resumed on another connection");
}

static void request_free(struct sm_request *r)
{
    struct sm_request **pp = &sm.requests;
    while (*pp != NULL && *pp != r)
        pp = &(*pp)->next;
    if (*pp == r)
        *pp = r->next;
    ev_timer_stop(sm.s->loop, &r->timer);
    conn_unref(r->conn);
    /* Parked Delivers nobody takes here: routed again (the router has the route's close
     * by then), carbon copies dropped as for a session gone. */
    for (size_t i = 0; i < r->nparked; i++) {
        Mk__Deliver *d = mk__deliver__unpack(NULL, r->parked[i].len, (const uint8_t *)r->parked[i].data);
        bool sent = true;
        if (d != NULL && d->route != NULL && d->carbon == MK__CARBON_COPY__CARBON_COPY_NONE)
            sent = session_reroute_deliver(sm.s, d, 0) == 0;
        if (d != NULL) {
            if (sent)   /* else the router's copy stays (routed again if this c2s restarts) */
                session_custody_done(sm.s, d->custody_id);
            mk__deliver__free_unpacked(d, NULL);
        }
        buf_release(&r->parked[i]);
    }
    free(r->parked);
    free(r);
}

bool sm_park_deliver(struct c2s *s, uint64_t sid, const Mk__Deliver *d)
{
    (void)s;
    struct sm_request *r = sm.requests;
    while (r != NULL && r->new_sid != sid)
        r = r->next;
    if (r == NULL || sid == 0 || r->nparked >= sm.s->cfg->modules.sm_max_unacked)
        return false;
    Mk__Deliver one = *d;
    uint64_t id = sid;
    one.n_session_ids = 1;
    one.session_ids = &id;
    if (d->n_session_jids > 0) {
        /* A fan-out: the JID of that target goes with it. */
        size_t k = 0;
        while (k < d->n_session_ids && d->session_ids[k] != sid)
            k++;
        if (k >= d->n_session_jids)
            return false;
        one.n_session_jids = 1;
        one.session_jids = &d->session_jids[k];
    }
    r->parked = xrealloc(r->parked, (r->nparked + 1) * sizeof *r->parked);
    struct buf *b = &r->parked[r->nparked++];
    buf_init(b);
    buf_reserve(b, mk__deliver__get_packed_size(&one));
    b->len = mk__deliver__pack(&one, (uint8_t *)b->data);
    metric_inc(sm.m_events, "deliver_parked");
    return true;
}

/* The parked Delivers of r, now that its session is here (after the resumed stanzas). */
static void replay_parked(struct sm_request *r)
{
    for (size_t i = 0; i < r->nparked; i++) {
        Mk__Deliver *d = mk__deliver__unpack(NULL, r->parked[i].len, (const uint8_t *)r->parked[i].data);
        if (d != NULL) {
            session_on_deliver(sm.s, d);
            mk__deliver__free_unpacked(d, NULL);
        }
        buf_release(&r->parked[i]);
    }
    free(r->parked);
    r->parked = NULL;
    r->nparked = 0;
}

static bool request_usable(const struct sm_request *r)
{
    const struct conn *c = r->conn;
    return !c->closed && !c->detached && c->state == CONN_STATE_BIND && c->sess == NULL && c->user != NULL;
}

static void request_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sm_request *r = w->data;
    if (request_usable(r))
        resume_failed(r->conn, NULL, "holder_silent");
    request_free(r);
}

/* Asks the c2s holder (or that held) the session for it, on behalf of c. */
static void request_takeover(struct conn *c, const struct cfg_proc *holder, uint64_t sid, const unsigned char *secret,
                             uint32_t h)
{
    struct sm_request *r = xcalloc(1, sizeof *r);
    r->conn = c;
    r->serial = c->serial;
    r->h = h;
    r->new_sid = session_id_reserve(sm.s);
    memcpy(r->secret, secret, SM_SECRET_LEN);
    conn_ref(c);
    ev_timer_init(&r->timer, request_timeout, SM_TAKEOVER_WAIT_S, 0.);
    r->timer.data = r;
    ev_timer_start(sm.s->loop, &r->timer);
    r->next = sm.requests;
    sm.requests = r;
    char user[1100];
    snprintf(user, sizeof user, "%s@%s", c->user, c->domain);
    Mk__SmTakeover t = MK__SM_TAKEOVER__INIT;
    t.session_id = sid;
    t.secret.data = r->secret;
    t.secret.len = SM_SECRET_LEN;
    t.user = user;
    t.h = h;
    t.request = c->serial;
    t.reply_to = (char *)sm.s->node->self->id;
    t.new_session_id = r->new_sid;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_SM_TAKEOVER;
    e.sm_takeover = &t;
    log_info("sm_takeover_asked", "conn=%llu user=%s holder=%s", (unsigned long long)c->serial, user, holder->id);
    node_send(sm.s->node, holder->id, &e);
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
    const struct cfg_proc *home = NULL;
    if (previd_parse(previd, &sid, secret, &owner) == -1 || (home = cfg_find_proc(sm.s->cfg, owner)) == NULL ||
        home->role != CFG_ROLE_C2S) {
        resume_failed(c, NULL, "malformed_previd");
        return;
    }
    for (const struct sm_request *r = sm.requests; r != NULL; r = r->next)
        if (r->conn == c) {
            send_failed(c, "unexpected-request", false, 0);   /* one at a time */
            return;
        }
    struct session *sess = find_resumable(sid, secret);
    struct sm_state *st = state_of(sess);
    if (st == NULL) {
        /* Not here: held by the c2s the previd names, or by the one it moved to. */
        const struct sm_stale *e = stale_find(sid, secret);
        const struct cfg_proc *holder = home != sm.s->node->self ? home : e != NULL ? e->moved_to : NULL;
        if (holder != NULL && holder != sm.s->node->self)
            request_takeover(c, holder, sid, secret, h);
        else
            resume_failed(c, e, "unknown_session");
        return;
    }
    /* The secret proves the client had the id; the account must be the one that
     * authenticated on this stream: nobody resumes another user's session. */
    if (!resumable_by(sess, st, c->user, c->domain)) {
        resume_failed(c, NULL, "refused");
        return;
    }
    if (!sm_h_valid(st->acked, st->sent, h)) {
        handled_too_high(c, h, st->sent);
        return;
    }
    apply_ack(st, h);
    struct conn *old = sess->conn;
    bool was_detached = old->detached;
    /* The session moves to this connection; the old one goes without it. */
    old->sess = NULL;
    sess->conn = c;
    c->sess = sess;
    c->state = CONN_STATE_SESSION;
    let_go(old, "resumed");
    resumed(c, sess, st, was_detached ? "detached" : "replaced");
}

/* The modules' parts of a session handed over, collected for the answer. */
struct parts {
    Mk__SmModulePart *v;
    Mk__SmModulePart **ptrs;
    size_t n;
};

static void put_part(void *ud, const char *module, const struct buf *part)
{
    struct parts *ps = ud;
    ps->v = xrealloc(ps->v, (ps->n + 1) * sizeof *ps->v);
    Mk__SmModulePart *m = &ps->v[ps->n++];
    mk__sm_module_part__init(m);
    m->module = (char *)module;
    m->part.data = xmalloc(part->len);
    m->part.len = part->len;
    memcpy(m->part.data, part->data, part->len);
}

/* Across c2s processes -------------------------------------------------------------------- */

static void send_reply(const char *to, Mk__SmTakeoverReply *r)
{
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_SM_TAKEOVER_REPLY;
    e.sm_takeover_reply = r;
    node_send(sm.s->node, to, &e);
}

/* Another c2s asks for a session of this one (its client resumed there). */
static void on_takeover(const Mk__SmTakeover *t)
{
    const struct cfg_proc *asker = t->reply_to ? cfg_find_proc(sm.s->cfg, t->reply_to) : NULL;
    if (asker == NULL || asker->role != CFG_ROLE_C2S || t->secret.len != SM_SECRET_LEN || t->user == NULL)
        return;
    Mk__SmTakeoverReply r = MK__SM_TAKEOVER_REPLY__INIT;
    r.request = t->request;
    r.new_session_id = t->new_session_id;
    const unsigned char *secret = t->secret.data;
    struct session *sess = find_resumable(t->session_id, secret);
    struct sm_state *st = state_of(sess);
    if (st == NULL || strcmp(sess->bare, t->user) != 0 || sess->conn->closed || st->overflow || st->handed_over) {
        const struct sm_stale *e = st == NULL ? stale_find(t->session_id, secret) : NULL;
        if (e != NULL && e->moved_to != NULL && e->moved_to != asker && e->moved_to != sm.s->node->self &&
            t->forwards == 0) {
            /* It moved on from here: the c2s it went to answers. */
            Mk__SmTakeover fw = *t;
            fw.forwards = 1;
            Mk__Envelope env = MK__ENVELOPE__INIT;
            env.payload_case = MK__ENVELOPE__PAYLOAD_SM_TAKEOVER;
            env.sm_takeover = &fw;
            node_send(sm.s->node, e->moved_to->id, &env);
            return;
        }
        r.result = MK__SM_TAKEOVER_RESULT__SM_TAKEOVER_NOT_FOUND;
        r.has_h = e != NULL;
        r.h = e != NULL ? e->h : 0;
        send_reply(asker->id, &r);
        return;
    }
    if (!sm_h_valid(st->acked, st->sent, t->h)) {
        r.result = MK__SM_TAKEOVER_RESULT__SM_TAKEOVER_TOO_HIGH;
        r.sent = st->sent;
        send_reply(asker->id, &r);
        return;
    }
    apply_ack(st, t->h);
    uint32_t n = unacked(st);
    ProtobufCBinaryData *items = xcalloc(n ? n : 1, sizeof *items);
    uint64_t *stamps = xcalloc(n ? n : 1, sizeof *stamps);
    uint64_t *custody = xcalloc(n ? n : 1, sizeof *custody);
    uint64_t *mam_ids = xcalloc(n ? n : 1, sizeof *mam_ids);
    for (uint32_t i = 0; i < n; i++) {
        struct sm_item *it = ring_at(st, i);
        items[i].data = (uint8_t *)it->data;
        items[i].len = it->len;
        stamps[i] = (uint64_t)it->stamp_us;
        custody[i] = it->custody;
        mam_ids[i] = it->mam_id;
    }
    struct buf pres;
    buf_init(&pres);
    if (sess->presence != NULL)
        xml_serialize(xml_packed_root(sess->presence), XML_NS_CLIENT, &pres);
    r.result = MK__SM_TAKEOVER_RESULT__SM_TAKEOVER_OK;
    r.has_h = true;
    r.h = st->in_h;
    r.sent = st->sent;
    r.full_jid = sess->full;
    r.max_s = st->max_s;
    r.n_items = n;
    r.items = items;
    r.n_stamps = n;
    r.stamps = stamps;
    r.n_custody_ids = n;
    r.custody_ids = custody;
    r.n_mam_ids = n;
    r.mam_ids = mam_ids;
    r.priority = sess->priority;
    r.available = sess->available;
    r.presence.data = (uint8_t *)pres.data;
    r.presence.len = pres.len;
    r.interested = sess->interested;
    r.carbons = sess->carbons;
    r.orig_session_id = st->orig_sid;
    r.orig_c2s = (char *)st->home->id;
    r.n_directed = sess->ndirected;
    r.directed = sess->directed;
    r.blocklist_requested = sess->blocklist_requested;
    Mk__MamFence mam_sent, mam_delivered;
    r.mam_sent = c2s_mam_fence_to(&sess->mam_sent, &mam_sent);
    r.mam_delivered = c2s_mam_fence_to(&sess->mam_delivered, &mam_delivered);
    struct parts ps = {0};
    c2s_modules_handover_save(sess, put_part, &ps);
    ps.ptrs = xcalloc(ps.n ? ps.n : 1, sizeof *ps.ptrs);
    for (size_t i = 0; i < ps.n; i++)
        ps.ptrs[i] = &ps.v[i];
    r.n_modules = ps.n;
    r.modules = ps.ptrs;
    /* The route moves first: what the router handles from now on goes to the asker (which
     * keeps it until this reply is in), so nothing finds the full JID without a route. */
    if (t->new_session_id != 0)
        session_open_elsewhere(sess, asker->id, t->new_session_id);
    send_reply(asker->id, &r);
    free(items);
    free(stamps);
    free(custody);
    free(mam_ids);
    buf_release(&pres);
    for (size_t i = 0; i < ps.n; i++)
        free(ps.v[i].part.data);
    free(ps.v);
    free(ps.ptrs);
    /* Let go: what was queued travelled with the reply; the session ends here quietly
     * (no unavailable presence: it goes on there). */
    st->handed_over = true;
    st->home = asker;   /* remembered in the stale table as where it went */
    sess->handed_over = true;
    metric_inc(sm.m_events, "handed_over");
    log_info("sm_handed_over", "jid=%s session=%llu to=%s unacked=%u", sess->full, (unsigned long long)sess->id,
             asker->id, n);
    struct conn *old = sess->conn;
    let_go(old, "resumed_elsewhere");
}

/* Stanzas of a session nobody can take any more: as for a session that ended. */
static void dispose_items(const char *bare, const Mk__SmTakeoverReply *r);

/* The custody id and offline row id of item i of r (0 when the holder gave none). */
static uint64_t reply_custody(const Mk__SmTakeoverReply *r, size_t i)
{
    return r->n_custody_ids == r->n_items ? r->custody_ids[i] : 0;
}

static uint64_t reply_mam_id(const Mk__SmTakeoverReply *r, size_t i)
{
    return r->n_mam_ids == r->n_items ? r->mam_ids[i] : 0;
}

static void on_takeover_reply(const char *holder, const Mk__SmTakeoverReply *r)
{
    struct sm_request *req = sm.requests;
    while (req != NULL && req->serial != r->request)
        req = req->next;
    bool usable = req != NULL && request_usable(req);
    struct conn *c = req != NULL ? req->conn : NULL;
    const char *full = r->full_jid ? r->full_jid : "";
    const char *slash = strchr(full, '/');
    if (r->result != MK__SM_TAKEOVER_RESULT__SM_TAKEOVER_OK) {
        if (usable && r->result == MK__SM_TAKEOVER_RESULT__SM_TAKEOVER_TOO_HIGH)
            handled_too_high(c, req->h, r->sent);
        else if (usable) {
            struct sm_stale e = {.h = r->h};
            resume_failed(c, r->has_h ? &e : NULL, "unknown_session");
        }
        if (req != NULL)
            request_free(req);
        return;
    }
    /* The queue's copies are this c2s's from now on, whatever becomes of the queue here
     * (resent and acknowledged, stored offline, routed again by the router if this c2s
     * dies first): the holder reports none of them. */
    if (r->n_custody_ids == r->n_items && holder != NULL)
        session_custody_take_over(sm.s, holder, r->custody_ids, r->n_custody_ids);
    char *bare = slash != NULL ? xstrndup(full, (size_t)(slash - full)) : NULL;
    char *want = usable ? xasprintf("%s@%s", c->user, c->domain) : NULL;
    struct session *sess = NULL;
    if (bare != NULL && want != NULL && strcmp(bare, want) == 0 && r->n_items == r->n_stamps)
        sess = session_new(sm.s, c, slash + 1, r->new_session_id == req->new_sid ? req->new_sid : 0);
    if (sess == NULL) {
        /* The connection went meanwhile (or the answer is unusable): nothing is lost. The
         * route the holder moved here goes (what it brought meanwhile is routed again). */
        if (r->new_session_id != 0)
            session_close_id(sm.s, full, r->new_session_id, "takeover_unusable");
        if (bare != NULL)
            dispose_items(bare, r);
        if (usable)
            resume_failed(c, NULL, "takeover_unusable");
        free(bare);
        free(want);
        if (req != NULL)
            request_free(req);
        return;
    }
    free(bare);
    free(want);
    sess->priority = r->priority;
    sess->available = r->available;
    sess->interested = r->interested;
    sess->carbons = r->carbons;
    if (r->presence.len > 0) {
        char err[128];
        struct xml_node *p = xml_parse_stanza((const char *)r->presence.data, r->presence.len, err, sizeof err);
        if (p != NULL)
            sess->presence = xml_pack(p);
        xml_free(&p);
    }
    if (sess->available || sess->interested || sess->carbons)
        session_update_router(sess);
    for (size_t i = 0; i < r->n_directed; i++)
        if (r->directed[i] != NULL && *r->directed[i] != '\0')
            feat_strv_add(&sess->directed, &sess->ndirected, r->directed[i]);
    sess->blocklist_requested = r->blocklist_requested;
    c2s_mam_fence_from(&sess->mam_sent, r->mam_sent);
    c2s_mam_fence_from(&sess->mam_delivered, r->mam_delivered);
    for (size_t i = 0; i < r->n_modules; i++)
        if (r->modules[i]->module != NULL)
            c2s_modules_handover_load(sess, r->modules[i]->module, r->modules[i]->part.data, r->modules[i]->part.len);
    struct sm_state *st = state_of(sess);
    st->enabled = st->resumable = st->moved_in = true;
    sm.moved_in++;
    st->in_h = r->h;
    st->sent = r->sent;
    st->acked = r->sent - (uint32_t)r->n_items;
    st->max_s = r->max_s;
    st->orig_sid = r->orig_session_id;
    st->home = r->orig_c2s ? cfg_find_proc(sm.s->cfg, r->orig_c2s) : NULL;
    if (st->home == NULL)
        st->home = sm.s->node->self;
    memcpy(st->secret, req->secret, SM_SECRET_LEN);
    if (r->n_items > 0) {
        uint32_t cap = SM_RING_MIN;
        while (cap < r->n_items)
            cap *= 2;
        st->ring = xcalloc(cap, sizeof *st->ring);
        st->cap = cap;
        st->head = 0;
    }
    for (size_t i = 0; i < r->n_items; i++) {
        struct sm_item *it = xmalloc(sizeof *it + r->items[i].len);
        it->stamp_us = (int64_t)r->stamps[i];
        it->len = (uint32_t)r->items[i].len;
        it->owned = false;
        it->custody = reply_custody(r, i);   /* taken over above */
        it->mam_id = reply_mam_id(r, i);
        memcpy(it->data, r->items[i].data, r->items[i].len);
        st->ring[(st->head + i) & (st->cap - 1)] = it;
    }
    c->state = CONN_STATE_SESSION;
    resumed(c, sess, st, "other_c2s");
    replay_parked(req);
    request_free(req);
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

/* Reports done the custody ids whose offline writes the mam shards acknowledged. */
static void offline_waits_release(void)
{
    size_t k = 0;
    for (size_t i = 0; i < sm.noffline_waits; i++) {
        struct sm_offline_wait *w = &sm.offline_waits[i];
        if (rchan_tx_acked(w->tx, w->seq))
            session_custody_done(sm.s, w->custody);
        else
            sm.offline_waits[k++] = *w;
    }
    sm.noffline_waits = k;
    if (k == 0 && sm.offline_waits_cap > 1024) {
        free(sm.offline_waits);
        sm.offline_waits = NULL;
        sm.offline_waits_cap = 0;
    }
}

static void offline_wait_add(struct rchan_tx *tx, uint64_t seq, uint64_t custody)
{
    if (sm.noffline_waits == sm.offline_waits_cap) {
        sm.offline_waits_cap = sm.offline_waits_cap ? sm.offline_waits_cap * 2 : 64;
        sm.offline_waits = xrealloc(sm.offline_waits, sm.offline_waits_cap * sizeof *sm.offline_waits);
    }
    sm.offline_waits[sm.noffline_waits++] = (struct sm_offline_wait){.tx = tx, .seq = seq, .custody = custody};
}

/* A message with a body goes to the user's offline store (XEP-0203 delay stamped with when
 * it was sent to the client), on the reliable channel to the mam shard, as row mam_id (0:
 * the shard makes one); its custody id (0: none) is done once the shard acknowledges it. */
static int to_offline(const char *bare, const void *data, size_t len, int64_t stamp_us, const char *from,
                      uint64_t custody, uint64_t mam_id)
{
    struct rchan_tx *tx = rchan_set_shard(sm.mam, bare);
    if (tx == NULL)
        return -1;
    const char *slash = strchr(from, '/');
    char *peer = slash ? xstrndup(from, (size_t)(slash - from)) : xstrdup(from);
    Mk__ArchiveWrite aw = MK__ARCHIVE_WRITE__INIT;
    aw.owner = (char *)bare;
    aw.peer = peer;
    aw.peer_resource = (char *)(slash ? slash + 1 : "");
    aw.offline = true;
    aw.xml.data = (uint8_t *)data;
    aw.xml.len = len;
    aw.stamp_us = (uint64_t)stamp_us;
    /* The router's row id for this message: if this c2s dies before the ack, the router's
     * copy is stored under it too (once, whichever write comes first). */
    aw.mam_id = mam_id;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ARCHIVE;
    e.archive = &aw;
    uint64_t seq = rchan_send(tx, &e);
    free(peer);
    if (seq == 0)
        return -1;
    if (custody != 0)
        offline_wait_add(tx, seq, custody);
    return 0;
}

/* XEP-0198 5: unacknowledged stanzas are treated as sent to an unavailable resource.
 * custody (the router's id of its Deliver, 0: none) is done once that is settled: at once
 * for a bounce or a drop, once stored for a message that goes offline (as row mam_id). */
static void dispose(const char *bare, const void *data, size_t len, int64_t stamp_us, uint64_t custody,
                    uint64_t mam_id)
{
    char err[128];
    struct xml_node *st = xml_parse_stanza(data, len, err, sizeof err);
    if (st == NULL) {
        metric_inc(sm.m_unacked, "dropped");
        session_custody_done(sm.s, custody);
        return;
    }
    const char *type = xml_attr(st, "type");
    const char *from = xml_attr(st, "from");
    if (strcmp(st->name, "message") == 0 && from != NULL && *from &&
        (type == NULL || strcmp(type, "chat") == 0 || strcmp(type, "normal") == 0) && feat_has_body(st)) {
        if (to_offline(bare, data, len, stamp_us, from, custody, mam_id) == 0) {
            metric_inc(sm.m_unacked, "offline");
            custody = 0;   /* done when stored */
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
    session_custody_done(sm.s, custody);
}

static void dispose_items(const char *bare, const Mk__SmTakeoverReply *r)
{
    for (size_t i = 0; i < r->n_items && i < r->n_stamps; i++)
        dispose(bare, r->items[i].data, r->items[i].len, (int64_t)r->stamps[i], reply_custody(r, i),
                reply_mam_id(r, i));
}

static void sm_session_close(struct session *sess)
{
    struct sm_state *st = state_of(sess);
    if (st == NULL || !st->enabled)
        return;
    if (st->resumable) {
        struct sm_stale *e = &sm.stale[sm.stale_next];
        sm.stale_next = (sm.stale_next + 1) % SM_STALE;
        e->sid = st->orig_sid;
        e->h = st->in_h;
        e->moved_to = st->handed_over ? st->home : NULL;
        memcpy(e->secret, st->secret, SM_SECRET_LEN);
    }
    if (st->moved_in)
        sm.moved_in--;
    uint32_t n = unacked(st);
    if (n > 0 && !st->handed_over)
        log_info("sm_unacked_at_close", "jid=%s unacked=%u", sess->full, n);
    for (uint32_t i = 0; i < n; i++) {
        struct sm_item *it = ring_at(st, i);
        /* Handed to another c2s: it took the custody ids over (CustodyDone taken_from). */
        if (it->owned)
            session_custody_done(sm.s, it->custody);
        else if (!st->handed_over)
            dispose(sess->bare, it->data, it->len, it->stamp_us, it->custody, it->mam_id);
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
    while (sm.requests != NULL)
        request_free(sm.requests);
    free(sm.offline_waits);   /* a stop waits for the writes (sm_pending): none is left but after a forced exit */
    sm.offline_waits = NULL;
    sm.noffline_waits = sm.offline_waits_cap = 0;
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
    if (e->payload_case == MK__ENVELOPE__PAYLOAD_SM_TAKEOVER) {
        if (e->sm_takeover != NULL && s->cfg->modules.sm_enabled)
            on_takeover(e->sm_takeover);
        return true;
    }
    if (e->payload_case == MK__ENVELOPE__PAYLOAD_SM_TAKEOVER_REPLY) {
        if (e->sm_takeover_reply != NULL)
            on_takeover_reply(e->sender, e->sm_takeover_reply);
        return true;
    }
    if (!rchan_set_on_envelope(sm.mam, e))
        return false;
    if (sm.noffline_waits > 0 && e->payload_case == MK__ENVELOPE__PAYLOAD_ACK)
        offline_waits_release();
    return true;
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
