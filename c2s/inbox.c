/* c2s/inbox.c - the "inbox" module: MongooseIM's inbox (erlang-solutions.com:xmpp:inbox:0): per user the conversations with their last message, its time and the unread count, kept in the store by the sender's c2s (asynchronous writes, off the delivery path), reset by a displayed chat marker or a #conversation read, queried with RSM paging by time. Off unless modules.inbox.enabled. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "c2s.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "util.h"

#define NS_INBOX      "erlang-solutions.com:xmpp:inbox:0"
#define NS_INBOX_CONV "erlang-solutions.com:xmpp:inbox:0#conversation"
#define NS_RSM        "http://jabber.org/protocol/rsm"
#define NS_MARKERS    "urn:xmpp:chat-markers:0"
#define NS_FORWARD    "urn:xmpp:forward:0"
#define INBOX_MAX_PAGE 100u   /* RSM max cap (and the page without <max/>) */

static bool inbox_advertised(const struct c2s *s, const char *domain)
{
    return s->cfg->modules.inbox_enabled;
}

static bool enabled(const struct session *sess)
{
    return sess->conn->c2s->cfg->modules.inbox_enabled;
}

/* The inbox writes of this process run one at a time, in the order the messages came:
 * with several store connections (PostgreSQL's pool) two writes of one entry could
 * otherwise pass each other (an older message over a newer one, a count reset before
 * the message it answers). Bounded: past INBOX_MAX_QUEUED waiting writes, new ones are
 * dropped and counted (the store is far behind; chat goes on). */
#define INBOX_MAX_QUEUED 10000u

struct inbox_write {
    struct inbox_write *next;
    enum store_stmt stmt;
    size_t n;
    char *p[5];
};

static struct {
    struct c2s *s;
    struct inbox_write *head, *tail;
    size_t queued;
    bool busy;
    unsigned long long dropped;
} iw;

static void write_next(void);

static void write_done(void *ud, const struct store_result *res)
{
    iw.busy = false;
    if (res->ok != 0)
        log_warn("inbox_write_failed", "error=\"%s\"", res->error ? res->error : "");
    write_next();
}

static void write_next(void)
{
    struct inbox_write *w = iw.head;
    if (w == NULL || iw.busy || iw.s == NULL)
        return;
    iw.head = w->next;
    if (iw.head == NULL)
        iw.tail = NULL;
    iw.queued--;
    iw.busy = true;
    store_query(iw.s->store, w->stmt, (const char *const *)w->p, w->n, write_done, NULL);
    for (size_t i = 0; i < w->n; i++)
        free(w->p[i]);
    free(w);
}

static void store_write(struct c2s *s, enum store_stmt stmt, const char *local, const char *domain, const char *peer,
                        const char *stamp, const char *xml)
{
    if (iw.queued >= INBOX_MAX_QUEUED) {
        if (iw.dropped++ % 1000 == 0)
            log_warn("inbox_writes_dropped", "queued=%zu dropped=%llu", iw.queued, iw.dropped);
        return;
    }
    struct inbox_write *w = xcalloc(1, sizeof *w);
    const char *params[] = {local, domain, peer, stamp, xml};
    w->stmt = stmt;
    w->n = xml != NULL ? 5 : 3;
    for (size_t i = 0; i < w->n; i++)
        w->p[i] = xstrdup(params[i]);
    if (iw.tail != NULL)
        iw.tail->next = w;
    else
        iw.head = w;
    iw.tail = w;
    iw.queued++;
    write_next();
}

static void inbox_init(struct c2s *s)
{
    iw.s = s;
}

static void inbox_fini(struct c2s *s)
{
    while (iw.head != NULL) {
        struct inbox_write *w = iw.head;
        iw.head = w->next;
        for (size_t i = 0; i < w->n; i++)
            free(w->p[i]);
        free(w);
    }
    iw.tail = NULL;
    iw.queued = 0;
    iw.s = NULL;
}

/* A graceful stop waits for the queued writes. */
static size_t inbox_pending(const struct c2s *s)
{
    return iw.queued + (iw.busy ? 1 : 0);
}

/* A 1-1 message the user sends: with a body (chat or normal), the sender's entry for
 * the peer takes it with unread 0 and, for a local peer, the peer's entry for the
 * sender takes it with one more unread; a displayed marker (XEP-0333) marks the
 * sender's entry for the peer read. Store writes are queued (run on the store's
 * thread or connection), nothing waits for them. */
static enum disp inbox_stanza_out(struct session *sess, Mk__StanzaKind kind, struct xml_node *st)
{
    if (kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE || !enabled(sess))
        return DISP_PASS;
    const char *type = xml_attr(st, "type");
    if (type != NULL && strcmp(type, "chat") != 0 && strcmp(type, "normal") != 0)
        return DISP_PASS;
    const char *to = xml_attr(st, "to");
    char *peer = to != NULL ? feat_bare_of(to) : NULL;
    if (peer == NULL || strcmp(peer, sess->bare) == 0) {
        free(peer);
        return DISP_PASS;
    }
    struct c2s *s = sess->conn->c2s;
    if (feat_has_body(st)) {
        char stamp[24];
        snprintf(stamp, sizeof stamp, "%lld", (long long)mk_now_us());
        struct buf b;
        buf_init(&b);
        xml_serialize(st, XML_NS_CLIENT, &b);
        buf_append(&b, "", 1);
        store_write(s, STORE_INBOX_OUT, sess->jid.local, sess->jid.domain, peer, stamp, b.data);
        char *local = NULL, *domain = NULL;
        if (feat_split(peer, &local, &domain) == 0 && local != NULL && cfg_is_local_domain(s->cfg, domain))
            store_write(s, STORE_INBOX_IN, local, domain, sess->bare, stamp, b.data);
        free(local);
        free(domain);
        buf_release(&b);
    } else if (xml_child(st, "displayed", NS_MARKERS) != NULL) {
        store_write(s, STORE_INBOX_READ, sess->jid.local, sess->jid.domain, peer, NULL, NULL);
    }
    free(peer);
    return DISP_PASS;
}

/* --- queries --------------------------------------------------------------------------- */

/* Microseconds since the epoch of an XEP-0082 date-time ("2018-07-10T23:08:25[.123456]Z"),
 * or -1. */
static long long parse_stamp(const char *v)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int consumed = 0;
    if (v == NULL || sscanf(v, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                            &tm.tm_min, &tm.tm_sec, &consumed) != 6)
        return -1;
    const char *p = v + consumed;
    long long us = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, digits++)
            if (digits < 6)
                us = us * 10 + (*p - '0');
        for (; digits < 6; digits++)
            us *= 10;
    }
    if (strcmp(p, "Z") != 0 && strcmp(p, "+00:00") != 0)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    return t == (time_t)-1 ? -1 : (long long)t * 1000000 + us;
}

static void format_stamp(long long us, char out[80])
{
    time_t secs = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, 80, "%04d-%02d-%02dT%02d:%02d:%02d.%06uZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(us % 1000000));
}

/* What a query asks: filters, order and its RSM page. */
struct inbox_query {
    long long start, end;          /* -1: none */
    bool asc;
    bool hidden_read;
    unsigned max;
    const char *after, *before;    /* RSM ids (stamp_us as text), NULL when absent */
    bool before_last;              /* <before/> empty: the last page */
};

static const char *form_value(const struct xml_node *x, const char *var)
{
    for (struct xml_node *f = xml_child(x, "field", NS_XDATA); f != NULL; f = xml_next(f, "field", NS_XDATA)) {
        const char *v = xml_attr(f, "var");
        if (v == NULL || strcmp(v, var) != 0)
            continue;
        struct xml_node *val = xml_child(f, "value", NS_XDATA);
        static char buf[64];
        if (val == NULL) {
            const char *a = xml_attr(f, "value");   /* MongooseIM's form puts some defaults there */
            return a;
        }
        char *t = xml_text(val);
        snprintf(buf, sizeof buf, "%s", t);
        free(t);
        return buf;
    }
    return NULL;
}

/* Reads the query's form and RSM set. Returns 0, or -1 with a reason for bad-request. */
static int parse_query(const struct xml_node *q, struct inbox_query *iq, char **texts, const char **why)
{
    memset(iq, 0, sizeof *iq);
    iq->start = iq->end = -1;
    iq->max = INBOX_MAX_PAGE;
    const struct xml_node *x = xml_child(q, "x", NS_XDATA);
    if (x != NULL) {
        const char *v;
        if ((v = form_value(x, "start")) != NULL && *v && (iq->start = parse_stamp(v)) == -1)
            return *why = "start is not an XEP-0082 date-time", -1;
        if ((v = form_value(x, "end")) != NULL && *v && (iq->end = parse_stamp(v)) == -1)
            return *why = "end is not an XEP-0082 date-time", -1;
        if ((v = form_value(x, "order")) != NULL && *v) {
            if (strcmp(v, "asc") == 0)
                iq->asc = true;
            else if (strcmp(v, "desc") != 0)
                return *why = "order is asc or desc", -1;
        }
        if ((v = form_value(x, "hidden_read")) != NULL && *v) {
            if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
                iq->hidden_read = true;
            else if (strcmp(v, "false") != 0 && strcmp(v, "0") != 0)
                return *why = "hidden_read is true or false", -1;
        }
        if ((v = form_value(x, "box")) != NULL && *v && strcmp(v, "all") != 0 && strcmp(v, "inbox") != 0)
            return *why = "only the boxes all and inbox exist here", -1;
    }
    const struct xml_node *set = xml_child(q, "set", NS_RSM);
    if (set != NULL) {
        const struct xml_node *n;
        if ((n = xml_child(set, "max", NS_RSM)) != NULL) {
            char *t = xml_text(n);
            char *end = NULL;
            long m = strtol(t, &end, 10);
            bool ok = *t && *end == '\0' && m >= 0;
            free(t);
            if (!ok)
                return *why = "max is a non-negative integer", -1;
            iq->max = m > (long)INBOX_MAX_PAGE ? INBOX_MAX_PAGE : (unsigned)m;
        }
        if ((n = xml_child(set, "after", NS_RSM)) != NULL)
            iq->after = texts[0] = xml_text(n);
        if ((n = xml_child(set, "before", NS_RSM)) != NULL) {
            iq->before = texts[1] = xml_text(n);
            if (*iq->before == '\0') {
                iq->before = NULL;
                iq->before_last = true;
            }
        }
    }
    return 0;
}

struct inbox_item {
    const char *peer;
    long long stamp;
    const char *xml;
    size_t xml_len;
    long unread;
};

/* Writes one entry as MongooseIM does: a message to the asking resource with
 * <result unread queryid><forwarded><delay/><message/></forwarded><read/><box/>...</result>. */
static void write_item(struct session *sess, const char *queryid, const struct inbox_item *it, unsigned n)
{
    static const char open_tag[] = "<message";
    struct buf b;
    buf_init(&b);
    char stamp[80];
    format_stamp(it->stamp, stamp);
    buf_append_str(&b, "<message from='");
    xml_escape(&b, sess->bare, strlen(sess->bare));
    buf_append_str(&b, "' to='");
    xml_escape(&b, sess->full, strlen(sess->full));
    buf_printf(&b, "' id='inbox-%u'><result xmlns='" NS_INBOX "' unread='%ld' queryid='", n, it->unread);
    xml_escape(&b, queryid, strlen(queryid));
    buf_printf(&b, "'><forwarded xmlns='" NS_FORWARD "'><delay xmlns='" NS_DELAY "' stamp='%s'/>", stamp);
    size_t ol = sizeof open_tag - 1;
    if (it->xml_len > ol && memcmp(it->xml, open_tag, ol) == 0) {
        buf_append(&b, open_tag, ol);
        buf_append_str(&b, " xmlns='jabber:client'");
        buf_append(&b, it->xml + ol, it->xml_len - ol);
    }
    buf_printf(&b, "</forwarded><read>%s</read><box>inbox</box><archive>false</archive><mute>0</mute></result>"
                   "</message>",
               it->unread > 0 ? "false" : "true");
    conn_write(sess->conn, b.data, b.len);
    buf_release(&b);
}

static void list_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_answerable(ctx, res);
    if (sess == NULL) {
        feat_ctx_free(&ctx);
        return;
    }
    const struct xml_node *q = xml_child(ctx->req, "inbox", NS_INBOX);
    struct inbox_query iq;
    char *texts[2] = {NULL, NULL};
    const char *why = NULL;
    if (q == NULL || parse_query(q, &iq, texts, &why) == -1) {
        session_send_error(sess, ctx->req, "modify", "bad-request", why);
        goto out;
    }
    const char *queryid = xml_attr(q, "queryid") ? xml_attr(q, "queryid") : xml_attr(ctx->req, "id");
    /* The matching entries in the asked order (the store gives newest first). */
    struct inbox_item *v = xcalloc(res->nrows + 1, sizeof *v);
    size_t n = 0;
    for (size_t k = 0; k < res->nrows; k++) {
        size_t i = iq.asc ? res->nrows - 1 - k : k;
        struct inbox_item it = {
            .peer = feat_col(res, i, 0),
            .stamp = feat_col(res, i, 1) ? atoll(feat_col(res, i, 1)) : 0,
            .xml = feat_col(res, i, 2),
            .xml_len = res->lens[i * res->ncols + 2],
            .unread = feat_col(res, i, 3) ? atol(feat_col(res, i, 3)) : 0,
        };
        if (it.peer == NULL || it.xml == NULL || (iq.start >= 0 && it.stamp < iq.start) ||
            (iq.end >= 0 && it.stamp > iq.end) || (iq.hidden_read && it.unread == 0))
            continue;
        v[n++] = it;
    }
    /* RSM: the id of an entry is its time in microseconds; after/before are exclusive
     * bounds in the asked order. */
    size_t from = 0, to = n;
    if (iq.after != NULL) {
        long long a = atoll(iq.after);
        while (from < n && (iq.asc ? v[from].stamp <= a : v[from].stamp >= a))
            from++;
    }
    if (iq.before != NULL) {
        long long bf = atoll(iq.before);
        to = from;
        while (to < n && (iq.asc ? v[to].stamp < bf : v[to].stamp > bf))
            to++;
    }
    size_t first = from, last = to;
    if (iq.before != NULL || iq.before_last) {
        if (last - first > iq.max)
            first = last - iq.max;
    } else if (last - first > iq.max) {
        last = first + iq.max;
    }
    long unread_total = 0;
    size_t active = 0;
    for (size_t i = first; i < last; i++) {
        write_item(sess, queryid, &v[i], (unsigned)i);
        unread_total += v[i].unread;
        active += v[i].unread > 0;
    }
    struct xml_node *fin = xml_node_new("fin", NS_INBOX);
    char num[32];
    snprintf(num, sizeof num, "%zu", last - first);
    xml_add_text(xml_add_child(fin, "count", NS_INBOX), num, strlen(num));
    snprintf(num, sizeof num, "%ld", unread_total);
    xml_add_text(xml_add_child(fin, "unread-messages", NS_INBOX), num, strlen(num));
    snprintf(num, sizeof num, "%zu", active);
    xml_add_text(xml_add_child(fin, "active-conversations", NS_INBOX), num, strlen(num));
    struct xml_node *set = xml_add_child(fin, "set", NS_RSM);
    if (last > first) {
        snprintf(num, sizeof num, "%lld", v[first].stamp);
        struct xml_node *f = xml_add_child(set, "first", NS_RSM);
        char idx[32];
        snprintf(idx, sizeof idx, "%zu", first);
        xml_set_attr(f, "index", idx);
        xml_add_text(f, num, strlen(num));
        snprintf(num, sizeof num, "%lld", v[last - 1].stamp);
        xml_add_text(xml_add_child(set, "last", NS_RSM), num, strlen(num));
    }
    snprintf(num, sizeof num, "%zu", n);
    xml_add_text(xml_add_child(set, "count", NS_RSM), num, strlen(num));
    struct xml_node *r = iq_result(ctx->req);
    xml_set_attr(r, "from", sess->bare);
    xml_append(r, fin);
    conn_send(sess->conn, r);
    xml_free(&r);
    free(v);
out:
    free(texts[0]);
    free(texts[1]);
    feat_ctx_free(&ctx);
}

/* The form MongooseIM answers a get with: what a query may carry. */
static struct xml_node *query_form(void)
{
    struct xml_node *q = xml_node_new("query", NS_INBOX);
    struct xml_node *x = xml_add_child(q, "x", NS_XDATA);
    xml_set_attr(x, "type", "form");
    struct xml_node *f = xml_add_child(x, "field", NS_XDATA);
    xml_set_attr(f, "type", "hidden");
    xml_set_attr(f, "var", "FORM_TYPE");
    xml_add_text(xml_add_child(f, "value", NS_XDATA), NS_INBOX, strlen(NS_INBOX));
    static const char *const texts[] = {"start", "end"};
    for (size_t i = 0; i < 2; i++) {
        f = xml_add_child(x, "field", NS_XDATA);
        xml_set_attr(f, "var", texts[i]);
        xml_set_attr(f, "type", "text-single");
    }
    f = xml_add_child(x, "field", NS_XDATA);
    xml_set_attr(f, "var", "order");
    xml_set_attr(f, "type", "list-single");
    xml_add_text(xml_add_child(f, "value", NS_XDATA), "desc", 4);
    static const char *const orders[][2] = {{"Ascending by timestamp", "asc"}, {"Descending by timestamp", "desc"}};
    for (size_t i = 0; i < 2; i++) {
        struct xml_node *o = xml_add_child(f, "option", NS_XDATA);
        xml_set_attr(o, "label", orders[i][0]);
        xml_add_text(xml_add_child(o, "value", NS_XDATA), orders[i][1], strlen(orders[i][1]));
    }
    f = xml_add_child(x, "field", NS_XDATA);
    xml_set_attr(f, "var", "hidden_read");
    xml_set_attr(f, "type", "text-single");
    xml_set_attr(f, "value", "false");
    f = xml_add_child(x, "field", NS_XDATA);
    xml_set_attr(f, "var", "box");
    xml_set_attr(f, "type", "list-single");
    xml_set_attr(f, "value", "all");
    static const char *const boxes[] = {"all", "inbox"};
    for (size_t i = 0; i < 2; i++) {
        struct xml_node *o = xml_add_child(f, "option", NS_XDATA);
        xml_set_attr(o, "label", boxes[i]);
        xml_add_text(xml_add_child(o, "value", NS_XDATA), boxes[i], strlen(boxes[i]));
    }
    return q;
}

/* True (answered forbidden) when the IQ is for another account's inbox. */
static bool not_own(struct session *sess, const struct xml_node *iq, const char *target)
{
    if (target == NULL || strcmp(target, sess->bare) == 0)
        return false;
    session_send_error(sess, iq, "cancel", "forbidden", "only your own inbox");
    return true;
}

static enum disp inbox_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    if (!enabled(sess))
        return DISP_PASS;
    if (not_own(sess, iq, target))
        return DISP_DONE;
    const struct xml_node *q = xml_first_elem(iq);
    const char *type = xml_attr(iq, "type");
    if (strcmp(type, "get") == 0 && strcmp(q->name, "query") == 0) {
        feat_reply(sess, iq, query_form());
        return DISP_DONE;
    }
    if (strcmp(type, "set") != 0 || strcmp(q->name, "inbox") != 0) {
        session_send_error(sess, iq, "modify", "bad-request", "send an iq set with <inbox/>");
        return DISP_DONE;
    }
    /* Checked now, so that a bad request is answered before the store is asked. */
    struct inbox_query qq;
    char *texts[2] = {NULL, NULL};
    const char *why = NULL;
    int rc = parse_query(q, &qq, texts, &why);
    free(texts[0]);
    free(texts[1]);
    if (rc == -1) {
        session_send_error(sess, iq, "modify", "bad-request", why);
        return DISP_DONE;
    }
    const char *params[] = {sess->jid.local, sess->jid.domain};
    store_query(sess->conn->c2s->store, STORE_INBOX_LIST, params, 2, list_cb, feat_ctx_new(sess, iq));
    return DISP_DONE;
}

/* --- #conversation: one entry's properties, read/unread ------------------------------------- */

static void conv_done_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_answerable(ctx, res);
    if (sess != NULL) {
        struct xml_node *r = iq_result(ctx->req);
        xml_set_attr(r, "from", sess->bare);
        if (ctx->n == 1) {
            /* A get: the entry's properties. */
            struct xml_node *q = xml_add_child(r, "query", NS_INBOX_CONV);
            if (res->nrows == 0) {
                xml_free(&r);
                session_send_error(sess, ctx->req, "cancel", "item-not-found", "no conversation with that JID");
                feat_ctx_free(&ctx);
                return;
            }
            long unread = feat_col(res, 0, 2) ? atol(feat_col(res, 0, 2)) : 0;
            xml_add_text(xml_add_child(q, "box", NS_INBOX_CONV), "inbox", 5);
            xml_add_text(xml_add_child(q, "archive", NS_INBOX_CONV), "false", 5);
            xml_add_text(xml_add_child(q, "mute", NS_INBOX_CONV), "0", 1);
            const char *rd = unread > 0 ? "false" : "true";
            xml_add_text(xml_add_child(q, "read", NS_INBOX_CONV), rd, strlen(rd));
        }
        conn_send(sess->conn, r);
        xml_free(&r);
    }
    feat_ctx_free(&ctx);
}

static enum disp conv_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    if (!enabled(sess))
        return DISP_PASS;
    if (not_own(sess, iq, target))
        return DISP_DONE;
    const struct xml_node *q = xml_first_elem(iq);
    const char *type = xml_attr(iq, "type");
    const char *jid = xml_attr(q, "jid");
    char *peer = jid != NULL && *jid ? jid_normalize(jid, true) : NULL;
    if (peer == NULL) {
        session_send_error(sess, iq, "modify", "bad-request", "a conversation is named by its jid attribute");
        return DISP_DONE;
    }
    struct c2s *s = sess->conn->c2s;
    enum store_stmt stmt;
    int n = 0;
    if (strcmp(type, "get") == 0 && strcmp(q->name, "query") == 0) {
        stmt = STORE_INBOX_GET;
        n = 1;
    } else if (strcmp(type, "set") == 0 && strcmp(q->name, "reset") == 0) {
        stmt = STORE_INBOX_READ;   /* the older reset request */
    } else if (strcmp(type, "set") == 0 && strcmp(q->name, "query") == 0) {
        const struct xml_node *rd = xml_child(q, "read", NS_INBOX_CONV);
        char *v = rd != NULL ? xml_text(rd) : NULL;
        bool ok = v != NULL && (strcmp(v, "true") == 0 || strcmp(v, "false") == 0);
        stmt = v != NULL && strcmp(v, "true") == 0 ? STORE_INBOX_READ : STORE_INBOX_UNREAD;
        free(v);
        if (!ok || xml_next(xml_first_elem(q), NULL, NULL) != NULL) {
            free(peer);
            session_send_error(sess, iq, "modify", "bad-request", "only <read>true|false</read> can be set here");
            return DISP_DONE;
        }
    } else {
        free(peer);
        session_send_error(sess, iq, "modify", "bad-request", NULL);
        return DISP_DONE;
    }
    struct feat_ctx *ctx = feat_ctx_new(sess, iq);
    ctx->n = n;
    const char *params[] = {sess->jid.local, sess->jid.domain, peer};
    store_query(s->store, stmt, params, 3, conv_done_cb, ctx);
    free(peer);
    return DISP_DONE;
}

static const struct c2s_iq_handler iqs[] = {
    {NS_INBOX, 0, inbox_iq, NULL},
    {NS_INBOX_CONV, 0, conv_iq, NULL},
    {NULL, 0, NULL, NULL},
};

static const char *const server_features[] = {NS_INBOX, NULL};

const struct c2s_module inbox_module = {
    .name = "inbox",
    .server_features = server_features,
    .advertised = inbox_advertised,
    .iqs = iqs,
    .init = inbox_init,
    .fini = inbox_fini,
    .pending = inbox_pending,
    .stanza_out = inbox_stanza_out,
};
