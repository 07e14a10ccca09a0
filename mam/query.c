/* mam/query.c - XEP-0313 queries and prefs IQs: form/RSM parsing, keyset-paged reads, results streamed to the asking c2s. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "archive.h"
#include "env.h"
#include "fence.h"
#include "jid.h"
#include "log.h"
#include "mamid.h"
#include "node.h"
#include "store.h"
#include "util.h"

#define ID_MAX ((uint64_t)INT64_MAX)   /* ids live in signed 64-bit columns */
/* How long a query waits for its owner's writes (mam/fence.h) before it is answered
 * from what is committed: past it something is wrong (a write that will never come, a
 * store far behind), and an answer now beats the c2s's timeout. */
#define QUERY_WAIT_MAX_S 3.0

static const char *const ns_names[] = {NS_MAM_TMP, NS_MAM_0, NS_MAM_1, NS_MAM_2};

int mam_ns_parse(const char *ns)
{
    if (ns == NULL)
        return -1;
    for (size_t i = 0; i < MK_ARRAY_LEN(ns_names); i++) {
        if (strcmp(ns, ns_names[i]) == 0)
            return (int)i;
    }
    return -1;
}

const char *mam_ns_name(enum mam_ns ns)
{
    return (unsigned)ns < MK_ARRAY_LEN(ns_names) ? ns_names[ns] : NS_MAM_2;
}

/* ---- XEP-0082 stamps ------------------------------------------------------------------------ */

static int digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

int mam_parse_stamp(const char *s, uint64_t *us)
{
    if (s == NULL)
        return -1;
    const char *p = s;
    int Y, M, D, h, m, sec;
    if (digits(&p, 4, &Y) || *p++ != '-' || digits(&p, 2, &M) || *p++ != '-' || digits(&p, 2, &D) ||
        *p++ != 'T' || digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &m) || *p++ != ':' || digits(&p, 2, &sec))
        return -1;
    if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return -1;
    uint64_t frac = 0;
    if (*p == '.') {
        p++;
        int nd = 0;
        while (*p >= '0' && *p <= '9') {
            if (nd < 6) {
                frac = frac * 10 + (uint64_t)(*p - '0');
                nd++;
            }
            p++;
        }
        if (nd == 0)
            return -1;
        while (nd++ < 6)
            frac *= 10;
    }
    int64_t off = 0;
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        p++;
        int oh, om;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
            return -1;
        off = sign * (int64_t)(oh * 3600 + om * 60);
    } else {
        return -1;
    }
    if (*p != '\0')
        return -1;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = m;
    tm.tm_sec = sec;
    int64_t t = (int64_t)timegm(&tm) - off;
    if (t < 0)
        return -1;
    *us = (uint64_t)t * 1000000u + frac;
    return 0;
}

void mam_format_stamp(uint64_t us, char *out, size_t outlen)
{
    time_t secs = (time_t)(us / 1000000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%06uZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(us % 1000000u));
}

char *mam_fts5_query(const char *text)
{
    struct buf b;
    buf_init(&b);
    const char *p = text != NULL ? text : "";
    while (*p != '\0') {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (*p == '\0')
            break;
        if (b.len > 0)
            buf_append(&b, " ", 1);
        buf_append(&b, "\"", 1);
        while (*p != '\0' && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            if (*p == '"')
                buf_append(&b, "\"", 1);
            buf_append(&b, p, 1);
            p++;
        }
        buf_append(&b, "\"", 1);
    }
    if (b.len == 0) {
        buf_release(&b);
        return NULL;
    }
    buf_append(&b, "", 1);
    return b.data;
}

/* ---- form and RSM --------------------------------------------------------------------------- */

void mam_query_release(struct mam_query *q)
{
    if (q == NULL)
        return;
    free(q->queryid);
    free(q->with_bare);
    free(q->with_resource);
    free(q->fts);
    free(q->ids);
    memset(q, 0, sizeof *q);
}

static int fail(const char **cond, const char *c, char *text, size_t textlen, const char *msg)
{
    *cond = c;
    snprintf(text, textlen, "%s", msg);
    return -1;
}

static int set_with(struct mam_query *q, const char *v)
{
    struct jid j;
    char err[128];
    if (v == NULL || jid_parse(v, &j, err, sizeof err) == -1)
        return -1;
    free(q->with_bare);
    free(q->with_resource);
    q->with_bare = jid_to_string(&j, true);
    q->with_resource = xstrdup(j.resource);
    jid_release(&j);
    return 0;
}

static void raise_lo(struct mam_query *q, uint64_t lo)
{
    if (lo > q->lo)
        q->lo = lo;
}

static void lower_hi(struct mam_query *q, uint64_t hi)
{
    if (hi < q->hi)
        q->hi = hi;
}

/* An id as clients see it; 0 and ids past the signed column range were never made. */
static int parse_id_text(const char *s, uint64_t *id)
{
    if (s == NULL || mamid_parse(s, strlen(s), id) == -1 || *id == 0 || *id >= ID_MAX)
        return -1;
    return 0;
}

/* Applies one field (form or legacy element); value may be NULL for an empty field. */
static int apply_field(struct mam_query *q, const char *var, const struct xml_node *field, const char *value,
                       const char **cond, char *text, size_t textlen)
{
    uint64_t v;
    if (strcmp(var, "FORM_TYPE") == 0)
        return 0;
    if (strcmp(var, "with") == 0) {
        if (value == NULL || value[0] == '\0')
            return 0;
        if (set_with(q, value) == -1)
            return fail(cond, "bad-request", text, textlen, "The with field is not a valid JID.");
        return 0;
    }
    if (strcmp(var, "start") == 0 || strcmp(var, "end") == 0) {
        if (value == NULL || value[0] == '\0')
            return 0;
        if (mam_parse_stamp(value, &v) == -1 || v > mamid_us(ID_MAX))
            return fail(cond, "bad-request", text, textlen, "start and end must be XEP-0082 date-times.");
        if (var[0] == 's')
            raise_lo(q, v == 0 ? 0 : mamid_min_at(v) - 1);   /* inclusive start */
        else
            lower_hi(q, mamid_max_at(v) + 1);                 /* inclusive end */
        return 0;
    }
    if (strcmp(var, "full-text-search") == 0 || strcmp(var, "{urn:xmpp:fulltext:0}fulltext") == 0) {
        if (value != NULL && value[0] != '\0') {
            free(q->fts);
            q->fts = xstrdup(value);
        }
        return 0;
    }
    if (q->ns == MAM_NS_2 && (strcmp(var, "after-id") == 0 || strcmp(var, "before-id") == 0)) {
        if (value == NULL || value[0] == '\0')
            return 0;
        if (parse_id_text(value, &v) == -1)
            return fail(cond, "item-not-found", text, textlen, "No message with this id.");
        if (var[0] == 'a')
            raise_lo(q, v);
        else
            lower_hi(q, v);
        return 0;
    }
    if (q->ns == MAM_NS_2 && strcmp(var, "ids") == 0 && field != NULL) {
        for (struct xml_node *val = xml_child(field, "value", NULL); val != NULL; val = xml_next(val, "value", NULL)) {
            char *t = xml_text(val);
            int bad = parse_id_text(t, &v);
            free(t);
            if (bad)
                return fail(cond, "item-not-found", text, textlen, "No message with this id.");
            if (q->nids >= MAM_MAX_IDS)
                return fail(cond, "policy-violation", text, textlen, "Too many ids in one query.");
            q->ids = xrealloc(q->ids, (q->nids + 1) * sizeof *q->ids);
            q->ids[q->nids++] = v;
        }
        return 0;
    }
    *cond = "feature-not-implemented";
    snprintf(text, textlen, "Unsupported field: %.64s.", var);
    return -1;
}

static int parse_uint(const char *s, uint64_t *out)
{
    if (s == NULL || *s == '\0')
        return -1;
    uint64_t v = 0;
    for (const char *p = s; *p != '\0'; p++) {
        if (*p < '0' || *p > '9' || v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *out = v;
    return 0;
}

static int parse_rsm(const struct xml_node *set, unsigned max_page, struct mam_query *q, const char **cond,
                     char *text, size_t textlen)
{
    q->max = max_page;
    if (set == NULL)
        return 0;
    struct xml_node *el;
    uint64_t v;
    if ((el = xml_child(set, "max", NS_RSM)) != NULL) {
        char *t = xml_text(el);
        int bad = parse_uint(t, &v);
        free(t);
        if (bad)
            return fail(cond, "bad-request", text, textlen, "RSM max must be a non-negative integer.");
        q->max = v < max_page ? (unsigned)v : max_page;
    }
    if ((el = xml_child(set, "after", NS_RSM)) != NULL) {
        char *t = xml_text(el);
        int bad = parse_id_text(t, &v);
        free(t);
        if (bad)
            return fail(cond, "item-not-found", text, textlen, "No message with the RSM after id.");
        q->has_after = true;
        q->after = v;
    }
    if ((el = xml_child(set, "before", NS_RSM)) != NULL) {
        char *t = xml_text(el);
        q->has_before = true;
        if (t[0] == '\0') {
            q->before_last_page = true;
        } else if (parse_id_text(t, &v) == -1) {
            free(t);
            return fail(cond, "item-not-found", text, textlen, "No message with the RSM before id.");
        } else {
            q->before = v;
        }
        free(t);
    }
    if ((el = xml_child(set, "index", NS_RSM)) != NULL) {
        char *t = xml_text(el);
        int bad = parse_uint(t, &v);
        free(t);
        if (bad)
            return fail(cond, "bad-request", text, textlen, "RSM index must be a non-negative integer.");
        q->has_index = true;
        q->index = v;
    }
    return 0;
}

int mam_query_parse(const struct xml_node *query, enum mam_ns ns, unsigned max_page, struct mam_query *q,
                    const char **cond, char *text, size_t textlen)
{
    memset(q, 0, sizeof *q);
    q->ns = ns;
    q->lo = 0;
    q->hi = ID_MAX;
    q->queryid = xstrdup(xml_attr(query, "queryid"));
    struct xml_node *x = xml_child(query, "x", NS_XDATA);
    if (x != NULL) {
        const char *type = xml_attr(x, "type");
        if (type != NULL && strcmp(type, "submit") != 0 && strcmp(type, "form") != 0)
            goto bad_form;
        for (struct xml_node *f = xml_child(x, "field", NS_XDATA); f != NULL; f = xml_next(f, "field", NS_XDATA)) {
            const char *var = xml_attr(f, "var");
            if (var == NULL)
                goto bad_form;
            struct xml_node *val = xml_child(f, "value", NS_XDATA);
            char *value = val != NULL ? xml_text(val) : NULL;
            if (strcmp(var, "FORM_TYPE") == 0 && (value == NULL || mam_ns_parse(value) != (int)ns)) {
                free(value);
                goto bad_form;
            }
            int r = apply_field(q, var, f, value, cond, text, textlen);
            free(value);
            if (r == -1)
                goto failed;
        }
    }
    /* The pre-form query of MAM 0.2 (:tmp) and early :0 clients: <with/>, <start/>, <end/> children. */
    if (ns == MAM_NS_TMP || ns == MAM_NS_0) {
        static const char *const legacy[] = {"with", "start", "end"};
        for (size_t i = 0; i < MK_ARRAY_LEN(legacy); i++) {
            struct xml_node *el = xml_child(query, legacy[i], query->ns);
            if (el == NULL)
                continue;
            char *value = xml_text(el);
            int r = apply_field(q, legacy[i], NULL, value, cond, text, textlen);
            free(value);
            if (r == -1)
                goto failed;
        }
    }
    if (ns == MAM_NS_2 && xml_child(query, "flip-page", NULL) != NULL)
        q->flip = true;
    if (parse_rsm(xml_child(query, "set", NS_RSM), max_page, q, cond, text, textlen) == -1)
        goto failed;
    return 0;
bad_form:
    *cond = "bad-request";
    snprintf(text, textlen, "Malformed data form.");
failed:
    mam_query_release(q);
    return -1;
}

/* ---- results -------------------------------------------------------------------------------- */

struct xml_node *mam_parse_stanza(const char *xml, size_t len)
{
    char err[128];
    return xml_parse_stanza(xml, len, err, sizeof err);
}

int mam_result_xml(struct buf *out, enum mam_ns ns, const char *queryid, const char *to, const char *owner,
                   const struct mam_row *row, bool hide_real_jids)
{
    struct xml_node *inner = mam_parse_stanza(row->xml, row->xml_len);
    if (inner == NULL)
        return -1;
    if (hide_real_jids) {
        for (struct xml_node *x = xml_child(inner, "x", NS_MUC_USER); x != NULL; x = xml_next(x, "x", NS_MUC_USER))
            for (struct xml_node *it = xml_child(x, "item", NS_MUC_USER); it != NULL;
                 it = xml_next(it, "item", NS_MUC_USER))
                xml_set_attr(it, "jid", NULL);
    }
    char idt[MAMID_TEXT_LEN + 1], stamp[40];
    mamid_format(row->id, idt);
    mam_format_stamp(row->stamp_us, stamp, sizeof stamp);
    struct xml_node *msg = xml_node_new("message", XML_NS_CLIENT);
    xml_set_attr(msg, "to", to);
    xml_set_attr(msg, "from", owner);
    xml_set_attr(msg, "id", idt);
    struct xml_node *res = xml_add_child(msg, "result", mam_ns_name(ns));
    if (queryid != NULL)
        xml_set_attr(res, "queryid", queryid);
    xml_set_attr(res, "id", idt);
    struct xml_node *fwd = xml_add_child(res, "forwarded", NS_FORWARD);
    struct xml_node *delay = xml_add_child(fwd, "delay", NS_MAM_DELAY);
    xml_set_attr(delay, "stamp", stamp);
    xml_append(fwd, inner);
    xml_serialize(msg, XML_NS_CLIENT, out);
    xml_free(&msg);
    return 0;
}

/* ---- answering --------------------------------------------------------------------------- */

/* One query in progress. */
struct mam_job {
    struct archive *a;
    char *c2s;
    uint64_t session_id;
    char *from;                 /* asking full JID */
    char *owner;
    char *user;
    char *domain;
    char *iq_id;
    char *iq_to;                /* the request's to (our reply's from), or NULL */
    bool hide_real_jids;        /* a room's archive, asked by someone who may not see real JIDs */
    struct mam_query q;
    char *fts_param;            /* driver-specific text for the fts parameter */
    bool desc;
    uint64_t lo, hi;
    /* page */
    struct buf *results;        /* serialized result messages, chronological */
    size_t nresults;
    uint64_t *res_ids;
    size_t ids_pos;             /* :2#extended ids: next to fetch */
    bool complete;
    uint64_t first_id, last_id;
    bool have_count;
    uint64_t count, index;
    /* read-your-writes */
    struct fence_pos fences[FENCE_MAX_IDS];
    size_t nfences;
    struct fence_wait wait;
    ev_timer wait_timer;
};

static void job_free(struct mam_job *j)
{
    ev_timer_stop(archive_node(j->a)->loop, &j->wait_timer);
    fence_cancel(archive_fences(j->a), &j->wait);
    free(j->c2s);
    free(j->from);
    free(j->owner);
    free(j->user);
    free(j->domain);
    free(j->iq_id);
    free(j->iq_to);
    free(j->fts_param);
    mam_query_release(&j->q);
    for (size_t i = 0; i < j->nresults; i++)
        buf_release(&j->results[i]);
    free(j->results);
    free(j->res_ids);
    free(j);
}

static void send_xml(struct archive *a, const char *c2s, uint64_t session_id, const struct buf *xml, bool last)
{
    Mk__MamResult r = MK__MAM_RESULT__INIT;
    r.session_id = session_id;
    r.xml.data = (uint8_t *)xml->data;
    r.xml.len = xml->len;
    r.last = last;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_MAM_RESULT;
    e.mam_result = &r;
    node_send(archive_node(a), c2s, &e);
}

static void send_node(struct archive *a, const char *c2s, uint64_t session_id, const struct xml_node *n, bool last)
{
    struct buf b;
    buf_init(&b);
    xml_serialize(n, XML_NS_CLIENT, &b);
    send_xml(a, c2s, session_id, &b, last);
    buf_release(&b);
}

static struct xml_node *iq_reply(const char *type, const char *id, const char *to, const char *from)
{
    struct xml_node *iq = xml_node_new("iq", XML_NS_CLIENT);
    xml_set_attr(iq, "type", type);
    if (id != NULL)
        xml_set_attr(iq, "id", id);
    if (to != NULL)
        xml_set_attr(iq, "to", to);
    if (from != NULL)
        xml_set_attr(iq, "from", from);
    return iq;
}

static void send_error(struct archive *a, const char *c2s, uint64_t session_id, const char *id, const char *to,
                       const char *from, const char *cond, const char *text)
{
    struct xml_node *iq = iq_reply("error", id, to, from);
    struct xml_node *err = xml_add_child(iq, "error", XML_NS_CLIENT);
    bool cancel = strcmp(cond, "item-not-found") == 0 || strcmp(cond, "feature-not-implemented") == 0 ||
                  strcmp(cond, "internal-server-error") == 0 || strcmp(cond, "service-unavailable") == 0;
    xml_set_attr(err, "type", strcmp(cond, "resource-constraint") == 0 ? "wait" : cancel ? "cancel" : "modify");
    xml_add_child(err, cond, NS_MAM_STANZAS);
    if (text != NULL && text[0] != '\0') {
        struct xml_node *t = xml_add_child(err, "text", NS_MAM_STANZAS);
        xml_set_attr_ns(t, XML_NS_XML, "lang", "en");
        xml_add_text(t, text, strlen(text));
    }
    send_node(a, c2s, session_id, iq, true);
    xml_free(&iq);
    archive_count_query(a, "error");
}

static void job_error(struct mam_job *j, const char *cond, const char *text)
{
    send_error(j->a, j->c2s, j->session_id, j->iq_id, j->from, j->iq_to, cond, text);
    job_free(j);
}

static void add_text_child(struct xml_node *parent, const char *name, const char *ns, const char *text)
{
    struct xml_node *c = xml_add_child(parent, name, ns);
    xml_add_text(c, text, strlen(text));
}

static void rsm_set(struct mam_job *j, struct xml_node *parent)
{
    struct xml_node *set = xml_add_child(parent, "set", NS_RSM);
    char buf[32];
    if (j->nresults > 0) {
        char idt[MAMID_TEXT_LEN + 1];
        struct xml_node *first = xml_add_child(set, "first", NS_RSM);
        if (j->have_count) {
            snprintf(buf, sizeof buf, "%" PRIu64, j->index);
            xml_set_attr(first, "index", buf);
        }
        mamid_format(j->first_id, idt);
        xml_add_text(first, idt, strlen(idt));
        add_text_child(set, "last", NS_RSM, mamid_format(j->last_id, idt));
    }
    if (j->have_count) {
        snprintf(buf, sizeof buf, "%" PRIu64, j->count);
        add_text_child(set, "count", NS_RSM, buf);
    }
}

/* Streams the page, then the end marker in the namespace's own shape. */
static void job_finish(struct mam_job *j)
{
    struct archive *a = j->a;
    for (size_t k = 0; k < j->nresults; k++) {
        size_t i = j->q.flip ? j->nresults - 1 - k : k;
        send_xml(a, j->c2s, j->session_id, &j->results[i], false);
    }
    if (j->q.flip && j->nresults > 0) {
        uint64_t t = j->first_id;
        j->first_id = j->last_id;
        j->last_id = t;
    }
    const char *ns = mam_ns_name(j->q.ns);
    struct xml_node *iq = iq_reply("result", j->iq_id, j->from, j->iq_to);
    switch (j->q.ns) {
    case MAM_NS_TMP: {
        /* MAM 0.2: the RSM set comes back inside <query/> in the IQ result. */
        struct xml_node *qe = xml_add_child(iq, "query", ns);
        if (j->q.queryid != NULL)
            xml_set_attr(qe, "queryid", j->q.queryid);
        rsm_set(j, qe);
        break;
    }
    case MAM_NS_0: {
        /* MAM 0.3/0.4: <fin/> travels in a <message/> after the results; the IQ result is empty. */
        struct xml_node *m = xml_node_new("message", XML_NS_CLIENT);
        xml_set_attr(m, "to", j->from);
        xml_set_attr(m, "from", j->owner);
        struct xml_node *fin = xml_add_child(m, "fin", ns);
        if (j->q.queryid != NULL)
            xml_set_attr(fin, "queryid", j->q.queryid);
        xml_set_attr(fin, "complete", j->complete ? "true" : "false");
        rsm_set(j, fin);
        send_node(a, j->c2s, j->session_id, m, false);
        xml_free(&m);
        break;
    }
    default: {
        struct xml_node *fin = xml_add_child(iq, "fin", ns);
        xml_set_attr(fin, "complete", j->complete ? "true" : "false");
        rsm_set(j, fin);
        break;
    }
    }
    send_node(a, j->c2s, j->session_id, iq, true);
    xml_free(&iq);
    archive_count_query(a, "query");
    job_free(j);
}

static void query_page(struct mam_job *j);
static void query_count(struct mam_job *j);

static void on_count(void *ud, const struct store_result *res)
{
    struct mam_job *j = ud;
    if (res->ok != 0 || res->nrows != 1 || res->ncols < 2) {
        job_error(j, "internal-server-error", NULL);
        return;
    }
    uint64_t total = 0, before = 0;
    parse_uint(res->vals[0], &total);
    parse_uint(res->vals[1], &before);
    if (total < MAM_COUNT_CAP) {
        j->have_count = true;
        j->count = total;
        j->index = before;
    }
    if (j->q.max == 0)
        j->complete = total == 0;
    job_finish(j);
}

/* Parameters shared by page and count statements: user, domain, lo, hi, x, y [, peer, res] [, fts]. */
static size_t filter_params(struct mam_job *j, const char **p, char num[4][24], uint64_t x, uint64_t y)
{
    snprintf(num[0], 24, "%" PRIu64, j->lo);
    snprintf(num[1], 24, "%" PRIu64, j->hi);
    snprintf(num[2], 24, "%" PRIu64, x);
    snprintf(num[3], 24, "%" PRIu64, y);
    size_t n = 0;
    p[n++] = j->user;
    p[n++] = j->domain;
    p[n++] = num[0];
    p[n++] = num[1];
    p[n++] = num[2];
    p[n++] = num[3];
    if (j->q.with_bare != NULL) {
        p[n++] = j->q.with_bare;
        p[n++] = j->q.with_resource;
    }
    if (j->fts_param != NULL)
        p[n++] = j->fts_param;
    return n;
}

static void query_count(struct mam_job *j)
{
    /* The count covers the whole filter, not the RSM window. */
    j->lo = j->q.lo;
    j->hi = j->q.hi;
    const char *p[9];
    char num[4][24];
    uint64_t pivot = j->nresults > 0 ? j->first_id : 0;
    size_t n = filter_params(j, p, num, pivot, MAM_COUNT_CAP);
    enum store_stmt st = STORE_MAM_COUNT + (j->q.with_bare != NULL ? 1 : 0) + (j->fts_param != NULL ? 2 : 0);
    store_query_read(archive_store(j->a), st, p, n, on_count, j);
}

static int collect_row(struct mam_job *j, const struct store_result *res, size_t r)
{
    const char *const *v = res->vals + r * res->ncols;
    struct mam_row row;
    memset(&row, 0, sizeof row);
    if (parse_uint(v[0], &row.id) == -1)
        return -1;
    uint64_t st = 0;
    parse_uint(v[4], &st);
    row.peer = v[1];
    row.peer_resource = v[2];
    row.outgoing = v[3] != NULL && v[3][0] == '1';
    row.stamp_us = st;
    row.xml = v[5] != NULL ? v[5] : "";
    row.xml_len = res->lens[r * res->ncols + 5];
    struct buf b;
    buf_init(&b);
    if (mam_result_xml(&b, j->q.ns, j->q.queryid, j->from, j->owner, &row, j->hide_real_jids) == -1) {
        log_warn("mam_row_unreadable", "id=%" PRIu64, row.id);
        buf_release(&b);
        return 0;
    }
    j->results = xrealloc(j->results, (j->nresults + 1) * sizeof *j->results);
    j->res_ids = xrealloc(j->res_ids, (j->nresults + 1) * sizeof *j->res_ids);
    j->results[j->nresults] = b;
    j->res_ids[j->nresults] = row.id;
    j->nresults++;
    return 0;
}

static void on_page(void *ud, const struct store_result *res)
{
    struct mam_job *j = ud;
    if (res->ok != 0 || (res->nrows > 0 && res->ncols < 6)) {
        job_error(j, "internal-server-error", NULL);
        return;
    }
    size_t take = res->nrows > j->q.max ? j->q.max : res->nrows;
    j->complete = res->nrows <= j->q.max;
    /* Descending pages are turned back into chronological order. */
    for (size_t k = 0; k < take; k++) {
        size_t r = j->desc ? take - 1 - k : k;
        collect_row(j, res, r);
    }
    if (j->nresults > 0) {
        j->first_id = j->res_ids[0];
        j->last_id = j->res_ids[j->nresults - 1];
    }
    query_count(j);
}

static void query_page(struct mam_job *j)
{
    if (j->q.max == 0) {
        query_count(j);
        return;
    }
    j->lo = j->q.lo;
    j->hi = j->q.hi;
    uint64_t offset = 0;
    if (j->q.has_after && j->q.after > j->lo)
        j->lo = j->q.after;
    if (j->q.has_before && !j->q.before_last_page && j->q.before < j->hi)
        j->hi = j->q.before;
    j->desc = j->q.has_before && !j->q.has_after;
    if (!j->desc && !j->q.has_after && j->q.has_index)
        offset = j->q.index;
    const char *p[9];
    char num[4][24];
    size_t n = filter_params(j, p, num, (uint64_t)j->q.max + 1, offset);
    enum store_stmt st = STORE_MAM_PAGE_ASC + (j->desc ? 1 : 0) + (j->q.with_bare != NULL ? 2 : 0) +
                         (j->fts_param != NULL ? 4 : 0);
    store_query_read(archive_store(j->a), st, p, n, on_page, j);
}

/* RSM after/before must name a message of this archive (item-not-found otherwise). */
static void on_id_checked(void *ud, const struct store_result *res);

/* step 0 checks RSM after, step 1 RSM before, then the page is read. */
static void check_ids(struct mam_job *j, int step)
{
    for (; step < 2; step++) {
        uint64_t id;
        if (step == 0 && j->q.has_after)
            id = j->q.after;
        else if (step == 1 && j->q.has_before && !j->q.before_last_page)
            id = j->q.before;
        else
            continue;
        j->ids_pos = (size_t)step;
        char num[24];
        snprintf(num, sizeof num, "%" PRIu64, id);
        const char *p[] = {j->user, j->domain, num};
        store_query_read(archive_store(j->a), STORE_MAM_ID_GET, p, 3, on_id_checked, j);
        return;
    }
    query_page(j);
}

static void on_id_checked(void *ud, const struct store_result *res)
{
    struct mam_job *j = ud;
    if (res->ok != 0) {
        job_error(j, "internal-server-error", NULL);
        return;
    }
    if (res->nrows == 0) {
        job_error(j, "item-not-found", "No message with this id in the archive.");
        return;
    }
    check_ids(j, (int)j->ids_pos + 1);
}

/* :2#extended 'ids': each looked up by its id (a one-row keyset page), in the order given. */
static void fetch_next_id(struct mam_job *j);

static void on_id_row(void *ud, const struct store_result *res)
{
    struct mam_job *j = ud;
    if (res->ok != 0) {
        job_error(j, "internal-server-error", NULL);
        return;
    }
    if (res->nrows == 0) {
        job_error(j, "item-not-found", "No message with this id in the archive.");
        return;
    }
    collect_row(j, res, 0);
    j->ids_pos++;
    fetch_next_id(j);
}

static void fetch_next_id(struct mam_job *j)
{
    if (j->ids_pos >= j->q.nids) {
        j->complete = true;
        if (j->nresults > 0) {
            j->first_id = j->res_ids[0];
            j->last_id = j->res_ids[j->nresults - 1];
        }
        j->have_count = true;
        j->count = j->nresults;
        j->index = 0;
        job_finish(j);
        return;
    }
    uint64_t id = j->q.ids[j->ids_pos];
    char lo[24], hi[24];
    snprintf(lo, sizeof lo, "%" PRIu64, id - 1);
    snprintf(hi, sizeof hi, "%" PRIu64, id + 1);
    const char *p[] = {j->user, j->domain, lo, hi, "1", "0"};
    store_query_read(archive_store(j->a), STORE_MAM_PAGE_ASC, p, 6, on_id_row, j);
}

/* Reads the archive for a parsed query. */
static void job_read(struct mam_job *j)
{
    if (j->q.nids > 0) {
        fetch_next_id(j);
        return;
    }
    if (j->q.lo >= j->q.hi) {
        /* An empty time range: nothing to read. */
        j->complete = true;
        j->have_count = true;
        job_finish(j);
        return;
    }
    check_ids(j, 0);
}

static void on_writes_in(void *ud, bool cancelled)
{
    struct mam_job *j = ud;
    if (cancelled) {
        job_free(j);   /* the archive is going away: no store to read */
        return;
    }
    ev_timer_stop(archive_node(j->a)->loop, &j->wait_timer);
    archive_count_wait(j->a, "committed");
    job_read(j);
}

static void on_wait_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct mam_job *j = w->data;
    fence_cancel(archive_fences(j->a), &j->wait);
    archive_count_wait(j->a, "timeout");
    char sample[128];
    log_warn("mam_query_wait_timeout", "owner=\"%s\" fences_missing=%zu",
             mk_sanitize(sample, sizeof sample, j->owner, strlen(j->owner)), j->wait.nids);
    job_read(j);
}

/* Read-your-writes: the query is read once every write of its owner that reached this
 * shard before it is committed and the writes its session has seen (fences) are in,
 * or after QUERY_WAIT_MAX_S at most. */
static void job_wait(struct mam_job *j)
{
    if (fence_wait(archive_fences(j->a), &j->wait, j->owner, j->fences, j->nfences, on_writes_in, j) == 0) {
        job_read(j);
        return;
    }
    ev_timer_set(&j->wait_timer, QUERY_WAIT_MAX_S, 0.);
    ev_timer_start(archive_node(j->a)->loop, &j->wait_timer);
    /* Its owner's rows are committed ahead of the rest of the backlog. */
    archive_expedite(j->a, j->owner);
}

/* ---- IQ dispatch ------------------------------------------------------------------------------ */

static void answer_form(struct archive *a, const Mk__MamQuery *mq, const char *c2s, const char *id,
                        const char *from, const char *to, enum mam_ns ns)
{
    const char *nsn = mam_ns_name(ns);
    struct xml_node *iq = iq_reply("result", id, from, to);
    struct xml_node *q = xml_add_child(iq, "query", nsn);
    struct xml_node *x = xml_add_child(q, "x", NS_XDATA);
    xml_set_attr(x, "type", "form");
    struct xml_node *f = xml_add_child(x, "field", NS_XDATA);
    xml_set_attr(f, "type", "hidden");
    xml_set_attr(f, "var", "FORM_TYPE");
    add_text_child(f, "value", NS_XDATA, nsn);
    static const char *const fields[][2] = {
        {"with", "jid-single"}, {"start", "text-single"}, {"end", "text-single"},
        {"full-text-search", "text-single"}, {"before-id", "text-single"}, {"after-id", "text-single"},
        {"ids", "text-multi"},
    };
    size_t nf = ns == MAM_NS_2 ? MK_ARRAY_LEN(fields) : 4;
    for (size_t i = 0; i < nf; i++) {
        f = xml_add_child(x, "field", NS_XDATA);
        xml_set_attr(f, "type", fields[i][1]);
        xml_set_attr(f, "var", fields[i][0]);
    }
    send_node(a, c2s, mq->session_id, iq, true);
    xml_free(&iq);
    archive_count_query(a, "form");
}

struct prefs_job {
    struct archive *a;
    char *c2s;
    uint64_t session_id;
    char *id, *from, *to, *owner;
    enum mam_ns ns;
    struct mam_prefs set;       /* the prefs being stored (set) */
};

static void prefs_job_free(struct prefs_job *pj)
{
    free(pj->c2s);
    free(pj->id);
    free(pj->from);
    free(pj->to);
    free(pj->owner);
    mam_prefs_release(&pj->set);
    free(pj);
}

static void prefs_reply(struct prefs_job *pj, const struct mam_prefs *p)
{
    struct xml_node *iq = iq_reply("result", pj->id, pj->from, pj->to);
    mam_prefs_to_xml(p, mam_ns_name(pj->ns), iq);
    send_node(pj->a, pj->c2s, pj->session_id, iq, true);
    xml_free(&iq);
    archive_count_query(pj->a, "prefs");
}

static void on_prefs_get(void *ud, const struct mam_prefs *prefs)
{
    struct prefs_job *pj = ud;
    prefs_reply(pj, prefs);
    prefs_job_free(pj);
}

static void on_prefs_set(void *ud, const struct store_result *res)
{
    struct prefs_job *pj = ud;
    if (res->ok != 0) {
        send_error(pj->a, pj->c2s, pj->session_id, pj->id, pj->from, pj->to, "internal-server-error", NULL);
    } else {
        prefs_cache_put(archive_prefs_cache(pj->a), pj->owner, &pj->set);
        prefs_reply(pj, &pj->set);
    }
    prefs_job_free(pj);
}

static void handle_prefs(struct archive *a, const Mk__MamQuery *mq, const char *c2s, const struct xml_node *iq,
                         const struct xml_node *prefs, enum mam_ns ns, bool set)
{
    struct prefs_job *pj = xcalloc(1, sizeof *pj);
    pj->a = a;
    pj->c2s = xstrdup(c2s);
    pj->session_id = mq->session_id;
    pj->id = xstrdup(xml_attr(iq, "id"));
    pj->from = xstrdup(mq->from);
    pj->to = xstrdup(xml_attr(iq, "to"));
    pj->owner = xstrdup(mq->owner);
    pj->ns = ns;
    if (!set) {
        prefs_cache_get(archive_prefs_cache(a), mq->owner, on_prefs_get, pj);
        return;
    }
    char text[160];
    char *user, *domain;
    if (mam_prefs_parse(prefs, &pj->set, text, sizeof text) == -1) {
        send_error(a, c2s, mq->session_id, pj->id, pj->from, pj->to, "bad-request", text);
        prefs_job_free(pj);
        return;
    }
    if (mam_split_owner(mq->owner, &user, &domain) == -1) {
        send_error(a, c2s, mq->session_id, pj->id, pj->from, pj->to, "bad-request", NULL);
        prefs_job_free(pj);
        return;
    }
    char *al = mam_prefs_join(pj->set.always, pj->set.nalways);
    char *nv = mam_prefs_join(pj->set.never, pj->set.nnever);
    const char *p[] = {user, domain, mam_default_name(pj->set.def), al, nv};
    store_query(archive_store(a), STORE_MAM_PREFS_SET, p, 5, on_prefs_set, pj);
    free(al);
    free(nv);
    free(user);
    free(domain);
}

void query_handle(struct archive *a, const Mk__MamQuery *mq, const char *sender)
{
    const char *c2s = mq->c2s != NULL && mq->c2s[0] != '\0' ? mq->c2s : sender;
    if (c2s == NULL || mq->owner == NULL || mq->from == NULL)
        return;
    char err[160];
    struct xml_node *iq = NULL;
    if (mq->xml.len > 0) {
        /* The IQ travels with jabber:client implied, like every stanza on the bus. */
        iq = mam_parse_stanza((const char *)mq->xml.data, mq->xml.len);
    }
    if (iq == NULL || iq->name == NULL || strcmp(iq->name, "iq") != 0) {
        log_warn("mam_query_unparsable", "from=%s", c2s);
        xml_free(&iq);
        return;
    }
    const char *type = xml_attr(iq, "type");
    const char *id = xml_attr(iq, "id");
    const char *to = xml_attr(iq, "to");
    struct xml_node *child = xml_first_elem(iq);
    int nsi = child != NULL ? mam_ns_parse(child->ns) : -1;
    bool is_get = type != NULL && strcmp(type, "get") == 0;
    bool is_set = type != NULL && strcmp(type, "set") == 0;
    if (nsi < 0 || (!is_get && !is_set)) {
        send_error(a, c2s, mq->session_id, id, mq->from, to, "service-unavailable", NULL);
        xml_free(&iq);
        return;
    }
    enum mam_ns ns = (enum mam_ns)nsi;
    if (ns == MAM_NS_TMP)
        log_info("mam_deprecated_ns", "ns=%s c2s=%s", NS_MAM_TMP, c2s);
    if (strcmp(child->name, "prefs") == 0) {
        handle_prefs(a, mq, c2s, iq, child, ns, is_set);
        xml_free(&iq);
        return;
    }
    if (strcmp(child->name, "query") != 0) {
        send_error(a, c2s, mq->session_id, id, mq->from, to, "feature-not-implemented", NULL);
        xml_free(&iq);
        return;
    }
    if (is_get) {
        answer_form(a, mq, c2s, id, mq->from, to, ns);
        xml_free(&iq);
        return;
    }
    struct mam_job *j = xcalloc(1, sizeof *j);
    j->a = a;
    ev_timer_init(&j->wait_timer, on_wait_timeout, 0., 0.);
    j->wait_timer.data = j;
    j->c2s = xstrdup(c2s);
    j->session_id = mq->session_id;
    j->from = xstrdup(mq->from);
    j->owner = xstrdup(mq->owner);
    j->iq_id = xstrdup(id);
    j->iq_to = xstrdup(to);
    j->hide_real_jids = mq->hide_real_jids;
    const char *cond = "bad-request";
    unsigned cap = archive_node(a)->cfg->modules.mam_max_page;
    if (mam_query_parse(child, ns, cap > 0 ? cap : 100, &j->q, &cond, err, sizeof err) == -1) {
        xml_free(&iq);
        job_error(j, cond, err);
        return;
    }
    xml_free(&iq);
    if (mam_split_owner(j->owner, &j->user, &j->domain) == -1) {
        job_error(j, "bad-request", NULL);
        return;
    }
    if (j->q.fts != NULL) {
        if (strcmp(store_driver(archive_store(a)), "sqlite") == 0)
            j->fts_param = mam_fts5_query(j->q.fts);
        else
            j->fts_param = xstrdup(j->q.fts);
    }
    for (size_t i = 0; i < mq->n_fences && j->nfences < FENCE_MAX_IDS; i++) {
        const Mk__MamFence *f = mq->fences[i];
        if (f == NULL || f->seq == 0)
            continue;
        j->fences[j->nfences++] = (struct fence_pos){f->writer, f->epoch, f->seq};
    }
    job_wait(j);
}
