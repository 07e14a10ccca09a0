/* c2s/pep.c - the "pep" module: XEP-0163 Personal Eventing Protocol over the XEP-0060 subset it needs (publish with auto-create and publish-options, items, retract, node delete, notifications filtered by XEP-0115 +notify interest, the last items at login). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "caps.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "util.h"

#define NS_PUBSUB          "http://jabber.org/protocol/pubsub"
#define NS_PUBSUB_OWNER    NS_PUBSUB "#owner"
#define NS_PUBSUB_EVENT    NS_PUBSUB "#event"
#define NS_PUBSUB_ERRORS   NS_PUBSUB "#errors"
#define NS_PUBLISH_OPTIONS NS_PUBSUB "#publish-options"
#define NS_NODE_CONFIG     NS_PUBSUB "#node_config"

#define PEP_NAME_MAX      1024             /* bytes of a node name or an item id */
#define PEP_CAPS_MAX      1024             /* caps vers cached by this process */
#define PEP_CAPS_RETRY_US 30000000         /* a disco#info query unanswered this long is asked again */
#define PEP_CAPS_NOTIFY_MAX 256            /* +notify nodes kept per caps ver */
#define PEP_LAST_MAX_ROWS 1000             /* last items sent to one session at its login */
#define PEP_LAST_MAX_BYTES (1u << 20)      /* and their payload bytes (the output buffer is bounded) */
#define PEP_CAPS_PER_SESSION 8             /* new vers one session may have the server ask about: a
                                            * client cycling vers cannot flush the process's cache */

extern const struct c2s_module pep_module;

enum pep_access {
    PEP_ACCESS_PRESENCE = 0,   /* the owner and contacts with a presence subscription (from) */
    PEP_ACCESS_OPEN,           /* anyone */
    PEP_ACCESS_WHITELIST,      /* the owner only (no affiliations are managed) */
};

static const char *const access_names[] = {"presence", "open", "whitelist"};

struct pep_config {
    enum pep_access access;
    bool persist;
    unsigned max_items;
};

/* Which publish-options a request set. */
#define OPT_ACCESS  0x1u
#define OPT_PERSIST 0x2u
#define OPT_MAX     0x4u

enum pep_op {
    PEP_OP_PUBLISH = 0,
    PEP_OP_ITEMS,
    PEP_OP_RETRACT,
    PEP_OP_DELETE,
    PEP_OP_DISCO_ITEMS,
    PEP_OP_CONFIG_GET,
    PEP_OP_CONFIG_SET,
};

/* One request: the steps run through store callbacks; a session's requests run one at a
 * time in the order sent (feat_serial), so a publish storm is answered in order and the
 * last item published is the last one stored. */
struct pep_job {
    struct feat_ctx *ctx;          /* the session by id, a copy of the request */
    enum pep_op op;
    char *owner;                   /* the account's bare JID */
    char *local, *domain;          /* its parts */
    bool own;                      /* the asker is the owner */
    char *node;
    char *item_id;                 /* publish (given or made), retract */
    char *payload;                 /* publish: the payload serialized */
    struct pep_config opts;        /* publish-options given (opts_set) */
    unsigned opts_set;
    struct pep_config cfg;         /* the node's configuration once known */
    unsigned max_items;            /* items: max_items asked (0: all) */
    bool notify;                   /* retract: notify='true' */
    bool retried;                  /* publish: the node's creation was tried twice */
    struct pep_node_rows *rows;/* disco#items: the node list kept across the roster read */
};

/* The node list of a disco#items while the asker's subscription is read. */
struct pep_node_rows {
    size_t n;
    char **node;
    enum pep_access *access;
};

struct pep_sess {
    struct feat_serial serial;
    char ver[CAPS_VER_MAX];        /* XEP-0115 ver of the session's presence, "" when none */
    bool want_last;                /* available since its first presence: the last items are due */
    unsigned caps_asked;           /* disco#info queries its presence caused */
    char sent_ver[CAPS_VER_MAX];   /* the ver whose nodes' last items went out ("" none yet) */
};

/* --- XEP-0115 caps cache (this process) ----------------------------------------------------- */

enum caps_state {
    CAPS_PENDING = 0,              /* disco#info asked */
    CAPS_OK,                       /* answered, hash verified */
    CAPS_BAD,                      /* wrong hash, ill-formed or an error: no interest known */
};

struct caps_entry {
    char ver[CAPS_VER_MAX];
    enum caps_state state;
    char **notify;                 /* node names with +notify */
    size_t nnotify;
    uint64_t sid;                  /* the session asked */
    char qid[32];                  /* the query's id */
    int64_t asked_us;
    int64_t used_us;
};

static struct {
    struct metric *m_requests;     /* label op: publish, items, retract, delete, configure, disco_items */
    struct metric *m_events;       /* label result: routed (one per recipient bare JID), delivered,
                                    * filtered (no interest), last (last items sent) */
    struct metric *m_caps;         /* label result: asked, verified, refused */
} pm;

static struct caps_entry caps_cache[PEP_CAPS_MAX];
static size_t caps_n;
static uint64_t caps_counter;

static struct caps_entry *caps_find(const char *ver)
{
    for (size_t i = 0; i < caps_n; i++)
        if (strcmp(caps_cache[i].ver, ver) == 0)
            return &caps_cache[i];
    return NULL;
}

static void caps_entry_clear(struct caps_entry *e)
{
    feat_strv_free(&e->notify, &e->nnotify);
    memset(e, 0, sizeof *e);
}

/* A slot for a new ver: a free one, else a refused one, else the least recently used. */
static struct caps_entry *caps_slot(void)
{
    if (caps_n < PEP_CAPS_MAX)
        return &caps_cache[caps_n++];
    struct caps_entry *lru = &caps_cache[0];
    for (size_t i = 1; i < caps_n; i++)
        if ((caps_cache[i].state == CAPS_BAD) > (lru->state == CAPS_BAD) ||
            ((caps_cache[i].state == CAPS_BAD) == (lru->state == CAPS_BAD) && caps_cache[i].used_us < lru->used_us))
            lru = &caps_cache[i];
    caps_entry_clear(lru);
    return lru;
}

static struct pep_sess *state_of(const struct session *sess)
{
    return c2s_session_state(sess, &pep_module);
}

/* True when the session's client asked for notifications of node (XEP-0163 filtered
 * notifications: node+notify in its verified caps). */
static bool wants(const struct session *sess, const char *node)
{
    struct pep_sess *ps = state_of(sess);
    if (!ps || !ps->ver[0])
        return false;
    struct caps_entry *e = caps_find(ps->ver);
    if (!e || e->state != CAPS_OK)
        return false;
    return feat_strv_has(e->notify, e->nnotify, node);
}

static void caps_ask(struct session *sess, struct caps_entry *e, const char *node)
{
    metric_inc(pm.m_caps, "asked");
    e->state = CAPS_PENDING;
    e->sid = sess->id;
    e->asked_us = mk_mono_us();
    snprintf(e->qid, sizeof e->qid, "pepcaps-%" PRIx64, ++caps_counter);
    struct xml_node *iq = xml_node_new("iq", XML_NS_CLIENT);
    xml_set_attr(iq, "type", "get");
    xml_set_attr(iq, "id", e->qid);
    xml_set_attr(iq, "from", sess->jid.domain);
    xml_set_attr(iq, "to", sess->full);
    struct xml_node *q = xml_add_child(iq, "query", NS_DISCO_INFO);
    char *n = xasprintf("%s#%s", node, e->ver);
    xml_set_attr(q, "node", n);
    free(n);
    conn_send(sess->conn, iq);
    xml_free(&iq);
}

/* --- helpers ---------------------------------------------------------------------------------- */

/* Sends an IQ error with an optional pubsub#errors condition (app) and text. Borrows all. */
static void pep_error(struct session *sess, const struct xml_node *iq, const char *type, const char *cond,
                      const char *app, const char *text)
{
    struct xml_node *r = stanza_error_reply(iq, type, cond, text);
    if (!r)
        return;
    if (app) {
        struct xml_node *e = xml_child(r, "error", NULL);
        if (!e)
            e = xml_first_elem(r);
        if (e)
            xml_add_child(e, app, NS_PUBSUB_ERRORS);
    }
    conn_send(sess->conn, r);
    xml_free(&r);
}

static bool parse_bool(const char *v, bool *out)
{
    if (strcmp(v, "1") == 0 || strcmp(v, "true") == 0)
        *out = true;
    else if (strcmp(v, "0") == 0 || strcmp(v, "false") == 0)
        *out = false;
    else
        return false;
    return true;
}

static int access_parse(const char *v)
{
    for (size_t i = 0; i < MK_ARRAY_LEN(access_names); i++)
        if (strcmp(v, access_names[i]) == 0)
            return (int)i;
    return -1;
}

static void json_str(struct buf *b, const char *s)
{
    buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            buf_printf(b, "\\%c", *p);
        else if (*p < 0x20)
            buf_printf(b, "\\u%04x", *p);
        else
            buf_append(b, p, 1);
    }
    buf_append(b, "\"", 1);
}

static void job_free(struct pep_job *job)
{
    if (!job)
        return;
    feat_ctx_free(&job->ctx);
    free(job->owner);
    free(job->local);
    free(job->domain);
    free(job->node);
    free(job->item_id);
    free(job->payload);
    if (job->rows) {
        for (size_t i = 0; i < job->rows->n; i++)
            free(job->rows->node[i]);
        free(job->rows->node);
        free(job->rows->access);
        free(job->rows);
    }
    free(job);
}

static void job_start(struct pep_job *job);

/* The job is over (answered or its session gone): the session's next request starts. */
static void job_finish(struct pep_job *job)
{
    struct session *sess = session_by_id(job->ctx->c2s, job->ctx->sid);
    struct pep_sess *ps = sess ? state_of(sess) : NULL;
    job_free(job);
    if (ps) {
        struct pep_job *next = feat_serial_leave(&ps->serial);
        if (next)
            job_start(next);
    }
}

static void drop_job(void *job)
{
    job_free(job);
}

/* The request's answer; the caller finishes the job. */
static void job_error(struct session *sess, struct pep_job *job, const char *type, const char *cond, const char *app,
                      const char *text)
{
    pep_error(sess, job->ctx->req, type, cond, app, text);
}

/* Routes <message type=headline from=owner><event>inner</event></message> to the owner's
 * bare JID and, unless the node is the owner's alone, to each local contact with a
 * presence subscription to the owner (from): the router gives a headline to a bare JID to
 * every available resource (none: dropped), and each receiving c2s delivers it only to
 * sessions that want the node (pep_stanza_in). Consumes inner. */
static void notify(struct session *sess, enum pep_access access, struct xml_node *inner)
{
    static uint64_t counter;
    struct c2s *s = sess->conn->c2s;
    char id[40];
    snprintf(id, sizeof id, "pep-%" PRIx64 "-%" PRIx64, (uint64_t)mk_now_us(), ++counter);
    struct xml_node *msg = xml_node_new("message", XML_NS_CLIENT);
    xml_set_attr(msg, "type", "headline");
    xml_set_attr(msg, "from", sess->bare);
    xml_set_attr(msg, "id", id);
    xml_append(xml_add_child(msg, "event", NS_PUBSUB_EVENT), inner);
    xml_set_attr(msg, "to", sess->bare);
    session_route(s, msg);
    metric_inc(pm.m_events, "routed");
    if (access != PEP_ACCESS_WHITELIST) {
        for (struct roster_item *it = sess->roster; it; it = it->next) {
            if (!(feat_roster_sub(it) & ROSTER_SUB_FROM) || strcmp(it->jid, sess->bare) == 0)
                continue;
            const char *at = strchr(it->jid, '@');
            if (!at || !cfg_is_local_domain(s->cfg, at + 1))
                continue;
            xml_set_attr(msg, "to", it->jid);
            session_route(s, msg);
            metric_inc(pm.m_events, "routed");
        }
    }
    xml_free(&msg);
}

/* --- publish ---------------------------------------------------------------------------------- */

static void pub_node_cb(void *ud, const struct store_result *res);

static void pub_done(struct session *sess, struct pep_job *job)
{
    struct xml_node *ps = xml_node_new("pubsub", NS_PUBSUB);
    struct xml_node *p = xml_add_child(ps, "publish", NS_PUBSUB);
    xml_set_attr(p, "node", job->node);
    xml_set_attr(xml_add_child(p, "item", NS_PUBSUB), "id", job->item_id);
    feat_reply(sess, job->ctx->req, ps);
    /* The event carries the payload as published (the request's copy). */
    struct xml_node *items = xml_node_new("items", NS_PUBSUB_EVENT);
    xml_set_attr(items, "node", job->node);
    struct xml_node *item = xml_add_child(items, "item", NS_PUBSUB_EVENT);
    xml_set_attr(item, "id", job->item_id);
    struct xml_node *req_item =
        xml_child(xml_child(xml_child(job->ctx->req, "pubsub", NS_PUBSUB), "publish", NS_PUBSUB), "item", NS_PUBSUB);
    struct xml_node *payload = req_item ? xml_first_elem(req_item) : NULL;
    if (payload)
        xml_append(item, xml_clone(payload));
    notify(sess, job->cfg.access, items);
}

static void pub_stored_cb(void *ud, const struct store_result *res)
{
    struct pep_job *job = ud;
    struct session *sess = feat_ctx_answerable(job->ctx, res);
    if (sess)
        pub_done(sess, job);
    job_finish(job);
}

static void pub_put(struct session *sess, struct pep_job *job)
{
    struct c2s *s = sess->conn->c2s;
    if (!job->cfg.persist) {
        pub_done(sess, job);
        job_finish(job);
        return;
    }
    static int64_t last_seq;
    int64_t seq = mk_now_us();
    if (seq <= last_seq)
        seq = last_seq + 1;
    last_seq = seq;
    char seqs[24], keep[16];
    snprintf(seqs, sizeof seqs, "%" PRId64, seq);
    snprintf(keep, sizeof keep, "%u", job->cfg.max_items);
    const char *put[] = {job->local, job->domain, job->node, job->item_id, seqs, job->payload};
    const char *trim[] = {job->local, job->domain, job->node, keep};
    const struct store_op ops[] = {
        {STORE_PEP_ITEM_PUT, put, MK_ARRAY_LEN(put)},
        {STORE_PEP_ITEM_TRIM, trim, MK_ARRAY_LEN(trim)},
    };
    store_txn(s->store, ops, MK_ARRAY_LEN(ops), pub_stored_cb, job);
}

static void pub_created_cb(void *ud, const struct store_result *res)
{
    struct pep_job *job = ud;
    struct session *sess = feat_ctx_answerable(job->ctx, res);
    if (!sess) {
        job_finish(job);
        return;
    }
    if (res->affected > 0) {
        pub_put(sess, job);
        return;
    }
    if (!job->retried) {
        /* Created meanwhile by another session of the account, or the limit: read again. */
        job->retried = true;
        const char *params[] = {job->local, job->domain, job->node};
        store_query(sess->conn->c2s->store, STORE_PEP_NODE_GET, params, 3, pub_node_cb, job);
        return;
    }
    char text[96];
    snprintf(text, sizeof text, "at most %u PEP nodes per account", sess->conn->c2s->cfg->modules.pep_max_nodes);
    metric_inc(sess->conn->c2s->m_limit_refusals, "pep_nodes");
    log_info("pep_node_limit", "jid=%s node=%s", sess->full, job->node);
    job_error(sess, job, "cancel", "policy-violation", NULL, text);
    job_finish(job);
}

static void pub_node_cb(void *ud, const struct store_result *res)
{
    struct pep_job *job = ud;
    struct session *sess = feat_ctx_answerable(job->ctx, res);
    if (!sess) {
        job_finish(job);
        return;
    }
    struct c2s *s = sess->conn->c2s;
    if (res->nrows > 0) {
        int a = access_parse(feat_col(res, 0, 0) ? feat_col(res, 0, 0) : "");
        job->cfg.access = a < 0 ? PEP_ACCESS_WHITELIST : (enum pep_access)a;
        job->cfg.persist = feat_col(res, 0, 1) && strcmp(feat_col(res, 0, 1), "0") != 0;
        job->cfg.max_items = feat_col(res, 0, 2) ? (unsigned)strtoul(feat_col(res, 0, 2), NULL, 10) : 1;
        /* XEP-0060 7.1.5: publish-options are preconditions on an existing node. */
        const char *bad = NULL;
        if ((job->opts_set & OPT_ACCESS) && job->opts.access != job->cfg.access)
            bad = "pubsub#access_model differs from the node's";
        else if ((job->opts_set & OPT_PERSIST) && job->opts.persist != job->cfg.persist)
            bad = "pubsub#persist_items differs from the node's";
        else if ((job->opts_set & OPT_MAX) && job->opts.max_items != job->cfg.max_items)
            bad = "pubsub#max_items differs from the node's";
        if (bad) {
            job_error(sess, job, "cancel", "conflict", "precondition-not-met", bad);
            job_finish(job);
            return;
        }
        pub_put(sess, job);
        return;
    }
    if (job->retried) {
        char text[96];
        snprintf(text, sizeof text, "at most %u PEP nodes per account", s->cfg->modules.pep_max_nodes);
        metric_inc(s->m_limit_refusals, "pep_nodes");
        log_info("pep_node_limit", "jid=%s node=%s", sess->full, job->node);
        job_error(sess, job, "cancel", "policy-violation", NULL, text);
        job_finish(job);
        return;
    }
    /* Auto-create (XEP-0163 4.3.1): the defaults, changed by the publish-options. */
    job->cfg = (struct pep_config){PEP_ACCESS_PRESENCE, true, 1};
    if (job->opts_set & OPT_ACCESS)
        job->cfg.access = job->opts.access;
    if (job->opts_set & OPT_PERSIST)
        job->cfg.persist = job->opts.persist;
    if (job->opts_set & OPT_MAX)
        job->cfg.max_items = job->opts.max_items;
    char persist[2] = {job->cfg.persist ? '1' : '0', 0}, max[16], maxn[16];
    snprintf(max, sizeof max, "%u", job->cfg.max_items);
    snprintf(maxn, sizeof maxn, "%u", s->cfg->modules.pep_max_nodes);
    const char *params[] = {job->local, job->domain, job->node, access_names[job->cfg.access], persist, max, maxn};
    store_query(s->store, STORE_PEP_NODE_CREATE, params, MK_ARRAY_LEN(params), pub_created_cb, job);
}

/* --- items, retract, delete, disco#items ------------------------------------------------------ */

static void items_cb(void *ud, const struct store_result *res)
{
    struct pep_job *job = ud;
    struct session *sess = feat_ctx_answerable(job->ctx, res);
    if (!sess) {
        job_finish(job);
        return;
    }
    const struct xml_node *req_items = xml_child(xml_child(job->ctx->req, "pubsub", NS_PUBSUB), "items", NS_PUBSUB);
    bool by_id = xml_child(req_items, "item", NS_PUBSUB) != NULL;
    struct xml_node *ps = xml_node_new("pubsub", NS_PUBSUB);
    struct xml_node *items = xml_add_child(ps, "items", NS_PUBSUB);
    xml_set_attr(items, "node", job->node);
    /* Oldest first, as XEP-0060 6.5 shows them; the query returned newest first. */
    for (size_t r = res->nrows; r-- > 0;) {
        const char *id = feat_col(res, r, 0), *x = feat_col(res, r, 1);
        if (!id || !x)
            continue;
        if (by_id) {
            bool asked = false;
            for (struct xml_node *it = xml_child(req_items, "item", NS_PUBSUB); it && !asked;
                 it = xml_next(it, "item", NS_PUBSUB))
                asked = xml_attr(it, "id") && strcmp(xml_attr(it, "id"), id) == 0;
            if (!asked)
                continue;
        } else if (job->max_items && res->nrows - r > job->max_items) {
            continue;
        }
        char err[128];
        struct xml_node *payload = xml_parse_document(x, strlen(x), err, sizeof err);
        if (!payload) {
            log_warn("pep_item_unreadable", "owner=%s node=%s error=\"%s\"", job->owner, job->node, err);
            continue;
        }
        struct xml_node *item = xml_add_child(items, "item", NS_PUBSUB);
        xml_set_attr(item, "id", id);
        xml_append(item, payload);
    }
    feat_reply(sess, job->ctx->req, ps);
    job_finish(job);
}

static void items_fetch(struct session *sess, struct pep_job *job)
{
    char limit[16];
    const struct xml_node *req_items = xml_child(xml_child(job->ctx->req, "pubsub", NS_PUBSUB), "items", NS_PUBSUB);
    unsigned cap = sess->conn->c2s->cfg->modules.pep_max_items;
    unsigned want = job->max_items && !xml_child(req_items, "item", NS_PUBSUB) && job->max_items < cap
                        ? job->max_items : cap;
    snprintf(limit, sizeof limit, "%u", want);
    const char *params[] = {job->local, job->domain, job->node, limit};
    store_query(sess->conn->c2s->store, STORE_PEP_ITEMS, params, 4, items_cb, job);
}

static void items_roster_cb(void *ud, const struct store_result *res)
{
    struct pep_job *job = ud;
    struct session *sess = feat_ctx_answerable(job->ctx, res);
    if (!sess) {
        job_finish(job);
        return;
    }
    /* Columns: jid, name, subscription, ... of the owner's item for the asker. */
    enum roster_sub sub = res->nrows > 0 ? feat_roster_sub_parse(feat_col(res, 0, 2)) : ROSTER_SUB_NONE;
    if (!(sub & ROSTER_SUB_FROM)) {
        job_error(sess, job, "auth", "not-authorized", "presence-subscription-required",
                  "the node is for contacts with a presence subscription");
        job_finish(job);
        return;
    }
    items_fetch(sess, job);
}

/* The node's configuration is read; may the asker read it? Then the next step. */
static void with_access(struct session *sess, struct pep_job *job, void (*next)(struct session *, struct pep_job *),
                        store_cb *roster_cb)
{
    if (job->own || job->cfg.access == PEP_ACCESS_OPEN) {
        next(sess, job);
        return;
    }
    if (job->cfg.access == PEP_ACCESS_WHITELIST) {
        job_error(sess, job, "cancel", "not-allowed", "closed-node", "the node is the owner's alone");
        job_finish(job);
        return;
    }
    const char *params[] = {job->local, job->domain, sess->bare};
    store_query(sess->conn->c2s->store, STORE_ROSTER_GET_ITEM, params, 3, roster_cb, job);
}

static void retract_done_cb(void *ud, const struct store_result *res)
{
    struct pep_job *job = ud;
    struct session *sess = feat_ctx_answerable(job->ctx, res);
    if (!sess) {
        job_finish(job);
        return;
    }
    if (res->affected == 0) {
        job_error(sess, job, "cancel", "item-not-found", NULL, "no such item");
        job_finish(job);
        return;
    }
    feat_reply(sess, job->ctx->req, NULL);
    if (job->notify) {
        struct xml_node *items = xml_node_new("items", NS_PUBSUB_EVENT);
        xml_set_attr(items, "node", job->node);
        xml_set_attr(xml_add_child(items, "retract", NS_PUBSUB_EVENT), "id", job->item_id);
        notify(sess, job->cfg.access, items);
    }
    job_finish(job);
}

static void delete_done_cb(void *ud, const struct store_result *res)
{
    struct pep_job *job = ud;
    struct session *sess = feat_ctx_answerable(job->ctx, res);
    if (!sess) {
        job_finish(job);
        return;
    }
    if (res->affected == 0) {
        job_error(sess, job, "cancel", "item-not-found", NULL, "no such node");
        job_finish(job);
        return;
    }
    feat_reply(sess, job->ctx->req, NULL);
    struct xml_node *del = xml_node_new("delete", NS_PUBSUB_EVENT);
    xml_set_attr(del, "node", job->node);
    notify(sess, job->cfg.access, del);
    job_finish(job);
}

static void add_field(struct xml_node *x, const char *var, const char *type, const char *value)
{
    struct xml_node *f = xml_add_child(x, "field", NS_XDATA);
    xml_set_attr(f, "var", var);
    if (type)
        xml_set_attr(f, "type", type);
    xml_add_text(xml_add_child(f, "value", NS_XDATA), value, strlen(value));
}

/* XEP-0060 8.2: the node's configuration form, with the fields this service serves. */
static void config_reply(struct session *sess, struct pep_job *job)
{
    struct xml_node *ps = xml_node_new("pubsub", NS_PUBSUB_OWNER);
    struct xml_node *c = xml_add_child(ps, "configure", NS_PUBSUB_OWNER);
    xml_set_attr(c, "node", job->node);
    struct xml_node *x = xml_add_child(c, "x", NS_XDATA);
    xml_set_attr(x, "type", "form");
    add_field(x, "FORM_TYPE", "hidden", NS_NODE_CONFIG);
    add_field(x, "pubsub#access_model", "list-single", access_names[job->cfg.access]);
    struct xml_node *am = xml_child(x, "field", NS_XDATA);
    while (am && strcmp(xml_attr(am, "var"), "pubsub#access_model") != 0)
        am = xml_next(am, "field", NS_XDATA);
    for (size_t i = 0; am && i < MK_ARRAY_LEN(access_names); i++) {
        struct xml_node *o = xml_add_child(am, "option", NS_XDATA);
        xml_add_text(xml_add_child(o, "value", NS_XDATA), access_names[i], strlen(access_names[i]));
    }
    add_field(x, "pubsub#persist_items", "boolean", job->cfg.persist ? "1" : "0");
    char max[16];
    snprintf(max, sizeof max, "%u", job->cfg.max_items);
    add_field(x, "pubsub#max_items", "text-single", max);
    feat_reply(sess, job->ctx->req, ps);
}

static void config_set_cb(void *ud, const struct store_result *res)
{
    struct pep_job *job = ud;
    struct session *sess = feat_ctx_answerable(job->ctx, res);
    if (sess)
        feat_reply(sess, job->ctx->req, NULL);
    job_finish(job);
}

/* The node's configuration is in: the operation's next step. */
static void node_cb(void *ud, const struct store_result *res)
{
    struct pep_job *job = ud;
    struct session *sess = feat_ctx_answerable(job->ctx, res);
    if (!sess) {
        job_finish(job);
        return;
    }
    if (res->nrows == 0) {
        job_error(sess, job, "cancel", "item-not-found", NULL, "no such node");
        job_finish(job);
        return;
    }
    int a = access_parse(feat_col(res, 0, 0) ? feat_col(res, 0, 0) : "");
    job->cfg.access = a < 0 ? PEP_ACCESS_WHITELIST : (enum pep_access)a;
    job->cfg.persist = feat_col(res, 0, 1) && strcmp(feat_col(res, 0, 1), "0") != 0;
    job->cfg.max_items = feat_col(res, 0, 2) ? (unsigned)strtoul(feat_col(res, 0, 2), NULL, 10) : 1;
    struct c2s *s = sess->conn->c2s;
    switch (job->op) {
    case PEP_OP_CONFIG_GET:
        config_reply(sess, job);
        job_finish(job);
        return;
    case PEP_OP_CONFIG_SET: {
        if (job->opts_set & OPT_ACCESS)
            job->cfg.access = job->opts.access;
        if (job->opts_set & OPT_PERSIST)
            job->cfg.persist = job->opts.persist;
        if (job->opts_set & OPT_MAX)
            job->cfg.max_items = job->opts.max_items;
        char persist[2] = {job->cfg.persist ? '1' : '0', 0}, max[16], keep[16];
        snprintf(max, sizeof max, "%u", job->cfg.max_items);
        snprintf(keep, sizeof keep, "%u", job->cfg.persist ? job->cfg.max_items : 0);
        const char *cfgp[] = {job->local, job->domain, job->node, access_names[job->cfg.access], persist, max};
        const char *trim[] = {job->local, job->domain, job->node, keep};
        const struct store_op ops[] = {
            {STORE_PEP_NODE_CONFIG, cfgp, MK_ARRAY_LEN(cfgp)},
            {STORE_PEP_ITEM_TRIM, trim, MK_ARRAY_LEN(trim)},
        };
        store_txn(s->store, ops, MK_ARRAY_LEN(ops), config_set_cb, job);
        return;
    }
    case PEP_OP_ITEMS:
        with_access(sess, job, items_fetch, items_roster_cb);
        return;
    case PEP_OP_RETRACT: {
        const char *params[] = {job->local, job->domain, job->node, job->item_id};
        store_query(s->store, STORE_PEP_ITEM_DELETE, params, 4, retract_done_cb, job);
        return;
    }
    case PEP_OP_DELETE: {
        const char *params[] = {job->local, job->domain, job->node};
        store_query(s->store, STORE_PEP_NODE_DELETE, params, 3, delete_done_cb, job);
        return;
    }
    default:
        job_finish(job);
        return;
    }
}

static void disco_reply(struct session *sess, struct pep_job *job, bool subscribed)
{
    struct xml_node *q = xml_node_new("query", NS_DISCO_ITEMS);
    for (size_t i = 0; job->rows && i < job->rows->n; i++) {
        enum pep_access a = job->rows->access[i];
        if (!job->own && !(a == PEP_ACCESS_OPEN || (a == PEP_ACCESS_PRESENCE && subscribed)))
            continue;
        struct xml_node *it = xml_add_child(q, "item", NS_DISCO_ITEMS);
        xml_set_attr(it, "jid", job->owner);
        xml_set_attr(it, "node", job->rows->node[i]);
    }
    feat_reply(sess, job->ctx->req, q);
}

static void disco_roster_cb(void *ud, const struct store_result *res)
{
    struct pep_job *job = ud;
    struct session *sess = feat_ctx_answerable(job->ctx, res);
    if (sess) {
        enum roster_sub sub = res->nrows > 0 ? feat_roster_sub_parse(feat_col(res, 0, 2)) : ROSTER_SUB_NONE;
        disco_reply(sess, job, (sub & ROSTER_SUB_FROM) != 0);
    }
    job_finish(job);
}

static void disco_nodes_cb(void *ud, const struct store_result *res)
{
    struct pep_job *job = ud;
    struct session *sess = feat_ctx_answerable(job->ctx, res);
    if (!sess) {
        job_finish(job);
        return;
    }
    struct pep_node_rows *rows = xcalloc(1, sizeof *rows);
    job->rows = rows;
    bool any_presence = false;
    rows->node = xcalloc(res->nrows + 1, sizeof *rows->node);
    rows->access = xcalloc(res->nrows + 1, sizeof *rows->access);
    for (size_t r = 0; r < res->nrows; r++) {
        const char *n = feat_col(res, r, 0), *a = feat_col(res, r, 1);
        if (!n || !a)
            continue;
        int ai = access_parse(a);
        rows->node[rows->n] = xstrdup(n);
        rows->access[rows->n++] = ai < 0 ? PEP_ACCESS_WHITELIST : (enum pep_access)ai;
        any_presence |= ai == PEP_ACCESS_PRESENCE;
    }
    if (job->own || !any_presence) {
        disco_reply(sess, job, false);
        job_finish(job);
        return;
    }
    const char *params[] = {job->local, job->domain, sess->bare};
    store_query(sess->conn->c2s->store, STORE_ROSTER_GET_ITEM, params, 3, disco_roster_cb, job);
}

static void job_start(struct pep_job *job)
{
    struct session *sess = feat_ctx_session(job->ctx);
    if (!sess) {
        job_finish(job);
        return;
    }
    struct c2s *s = sess->conn->c2s;
    if (job->op == PEP_OP_DISCO_ITEMS) {
        const char *params[] = {job->local, job->domain};
        store_query(s->store, STORE_PEP_NODE_LIST, params, 2, disco_nodes_cb, job);
        return;
    }
    const char *params[] = {job->local, job->domain, job->node};
    store_query(s->store, STORE_PEP_NODE_GET, params, 3, job->op == PEP_OP_PUBLISH ? pub_node_cb : node_cb, job);
}

/* Queues job behind the session's running request; consumes job. */
static void job_submit(struct session *sess, struct pep_job *job)
{
    static const char *const op_names[] = {"publish", "items", "retract", "delete", "disco_items", "configure",
                                           "configure"};
    metric_inc(pm.m_requests, op_names[job->op]);
    struct pep_sess *ps = state_of(sess);
    int r = ps ? feat_serial_enter(&ps->serial, job) : -1;
    if (r == 1) {
        job_start(job);
    } else if (r == -1) {
        metric_inc(sess->conn->c2s->m_limit_refusals, "requests_waiting");
        log_info("pep_requests_waiting", "jid=%s", sess->full);
        pep_error(sess, job->ctx->req, "wait", "resource-constraint", NULL, "too many PEP requests waiting");
        job_free(job);
    }
}

static struct pep_job *job_new(struct session *sess, const struct xml_node *iq, enum pep_op op, const char *target)
{
    struct pep_job *job = xcalloc(1, sizeof *job);
    job->ctx = feat_ctx_new(sess, iq);
    job->op = op;
    job->owner = xstrdup(target);
    job->own = strcmp(target, sess->bare) == 0;
    if (feat_split(target, &job->local, &job->domain) == -1 || !job->local) {
        job_free(job);
        return NULL;
    }
    return job;
}

/* --- requests ---------------------------------------------------------------------------------- */

static bool name_ok(const char *s)
{
    return s && *s && strlen(s) <= PEP_NAME_MAX;
}

/* Reads the publish-options form (or, configure, a node configuration form) in po into
 * job; false with the error sent: a value not served is a failed precondition of a
 * publish (XEP-0060 7.1.5), a not-acceptable configuration (8.2.5). */
static bool read_options(struct session *sess, const struct xml_node *iq, const struct xml_node *po, struct pep_job *job,
                         bool configure)
{
    const struct xml_node *x = xml_child(po, "x", NS_XDATA);
    if (!x)
        return true;
    unsigned cap = sess->conn->c2s->cfg->modules.pep_max_items;
    for (struct xml_node *f = xml_child(x, "field", NS_XDATA); f; f = xml_next(f, "field", NS_XDATA)) {
        const char *var = xml_attr(f, "var");
        struct xml_node *vn = xml_child(f, "value", NS_XDATA);
        char *v = vn ? xml_text(vn) : NULL;
        const char *bad = NULL;
        if (!var || !v) {
            /* nothing to check */
        } else if (strcmp(var, "pubsub#access_model") == 0) {
            int a = access_parse(v);
            if (a < 0)
                bad = "pubsub#access_model: presence, open and whitelist are supported";
            job->opts.access = a < 0 ? PEP_ACCESS_PRESENCE : (enum pep_access)a;
            job->opts_set |= OPT_ACCESS;
        } else if (strcmp(var, "pubsub#persist_items") == 0) {
            if (!parse_bool(v, &job->opts.persist))
                bad = "pubsub#persist_items is a boolean";
            job->opts_set |= OPT_PERSIST;
        } else if (strcmp(var, "pubsub#max_items") == 0) {
            char *end;
            unsigned long m = strcmp(v, "max") == 0 ? cap : strtoul(v, &end, 10);
            if (strcmp(v, "max") != 0 && (*v < '0' || *v > '9' || *end != '\0' || m == 0)) {
                bad = "pubsub#max_items is a positive number or max";
            } else if (m > cap) {
                char text[96];
                snprintf(text, sizeof text, "pubsub#max_items is at most %u here", cap);
                metric_inc(sess->conn->c2s->m_limit_refusals, "pep_max_items");
                log_info("pep_max_items_limit", "jid=%s asked=%lu", sess->full, m);
                pep_error(sess, iq, "modify", "not-acceptable", NULL, text);
                free(v);
                return false;
            }
            job->opts.max_items = (unsigned)m;
            job->opts_set |= OPT_MAX;
        }
        free(v);
        if (bad) {
            if (configure)
                pep_error(sess, iq, "modify", "not-acceptable", NULL, bad);
            else
                pep_error(sess, iq, "cancel", "conflict", "precondition-not-met", bad);
            return false;
        }
    }
    return true;
}

static enum disp publish(struct session *sess, const struct xml_node *iq, const struct xml_node *ps,
                         const struct xml_node *pub, const char *target)
{
    struct c2s *s = sess->conn->c2s;
    if (strcmp(target, sess->bare) != 0) {
        pep_error(sess, iq, "auth", "forbidden", NULL, "only the owner publishes to a PEP node");
        return DISP_DONE;
    }
    const char *node = xml_attr(pub, "node");
    if (!node || !*node) {
        pep_error(sess, iq, "modify", "bad-request", "nodeid-required", NULL);
        return DISP_DONE;
    }
    if (!name_ok(node)) {
        pep_error(sess, iq, "modify", "not-acceptable", NULL, "a node name is at most 1024 bytes");
        return DISP_DONE;
    }
    const struct xml_node *item = xml_child(pub, "item", NS_PUBSUB);
    if (!item) {
        pep_error(sess, iq, "modify", "bad-request", "item-required", NULL);
        return DISP_DONE;
    }
    if (xml_next(item, "item", NS_PUBSUB)) {
        pep_error(sess, iq, "modify", "bad-request", "invalid-payload", "one item per publish");
        return DISP_DONE;
    }
    const struct xml_node *payload = xml_first_elem(item);
    if (!payload) {
        pep_error(sess, iq, "modify", "bad-request", "payload-required", NULL);
        return DISP_DONE;
    }
    for (const struct xml_node *c = payload->next; c; c = c->next) {
        if (c->name) {
            pep_error(sess, iq, "modify", "bad-request", "invalid-payload", "one payload element per item");
            return DISP_DONE;
        }
    }
    const char *id = xml_attr(item, "id");
    if (id && !name_ok(id)) {
        pep_error(sess, iq, "modify", "not-acceptable", NULL, "an item id is 1 to 1024 bytes");
        return DISP_DONE;
    }
    struct buf b;
    buf_init(&b);
    xml_serialize(payload, NULL, &b);
    if (b.len > s->cfg->modules.pep_max_item_bytes) {
        char text[96];
        snprintf(text, sizeof text, "an item's payload is at most %zu bytes here", s->cfg->modules.pep_max_item_bytes);
        metric_inc(s->m_limit_refusals, "pep_item_bytes");
        log_info("pep_item_limit", "jid=%s bytes=%zu", sess->full, b.len);
        pep_error(sess, iq, "modify", "not-acceptable", "payload-too-big", text);
        buf_release(&b);
        return DISP_DONE;
    }
    struct pep_job *job = job_new(sess, iq, PEP_OP_PUBLISH, target);
    if (!job) {
        buf_release(&b);
        return DISP_PASS;
    }
    job->node = xstrdup(node);
    job->payload = xstrndup(b.data ? b.data : "", b.len);
    buf_release(&b);
    if (id) {
        job->item_id = xstrdup(id);
    } else {
        static uint64_t counter;
        job->item_id = xasprintf("%" PRIx64 "%04" PRIx64, (uint64_t)mk_now_us(), ++counter & 0xffff);
    }
    const struct xml_node *po = xml_child(ps, "publish-options", NS_PUBSUB);
    if (po && !read_options(sess, iq, po, job, false)) {
        job_free(job);
        return DISP_DONE;
    }
    job_submit(sess, job);
    return DISP_DONE;
}

static enum disp pubsub_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    struct c2s *s = sess->conn->c2s;
    if (!s->cfg->modules.pep_enabled || !target)
        return DISP_PASS;
    const struct xml_node *ps = xml_first_elem(iq);
    bool set = strcmp(xml_attr(iq, "type"), "set") == 0;
    bool own = strcmp(target, sess->bare) == 0;
    const struct xml_node *pub = xml_child(ps, "publish", NS_PUBSUB);
    const struct xml_node *items = xml_child(ps, "items", NS_PUBSUB);
    const struct xml_node *retract = xml_child(ps, "retract", NS_PUBSUB);
    if (set && pub)
        return publish(sess, iq, ps, pub, target);
    if (!set && items) {
        const char *node = xml_attr(items, "node");
        if (!node || !*node) {
            pep_error(sess, iq, "modify", "bad-request", "nodeid-required", NULL);
            return DISP_DONE;
        }
        if (!name_ok(node)) {
            pep_error(sess, iq, "cancel", "item-not-found", NULL, "no such node");
            return DISP_DONE;
        }
        struct pep_job *job = job_new(sess, iq, PEP_OP_ITEMS, target);
        if (!job)
            return DISP_PASS;
        job->node = xstrdup(node);
        const char *mi = xml_attr(items, "max_items");
        if (mi) {
            char *end;
            unsigned long m = strtoul(mi, &end, 10);
            if (*mi < '0' || *mi > '9' || *end != '\0' || m == 0) {
                pep_error(sess, iq, "modify", "bad-request", NULL, "max_items is a positive number");
                job_free(job);
                return DISP_DONE;
            }
            job->max_items = m > UINT32_MAX ? UINT32_MAX : (unsigned)m;
        }
        job_submit(sess, job);
        return DISP_DONE;
    }
    if (set && retract) {
        if (!own) {
            pep_error(sess, iq, "auth", "forbidden", NULL, "only the owner retracts from a PEP node");
            return DISP_DONE;
        }
        const char *node = xml_attr(retract, "node");
        const struct xml_node *item = xml_child(retract, "item", NS_PUBSUB);
        const char *id = item ? xml_attr(item, "id") : NULL;
        if (!node || !*node) {
            pep_error(sess, iq, "modify", "bad-request", "nodeid-required", NULL);
            return DISP_DONE;
        }
        if (!id || !*id) {
            pep_error(sess, iq, "modify", "bad-request", "item-required", NULL);
            return DISP_DONE;
        }
        if (!name_ok(node) || !name_ok(id)) {
            pep_error(sess, iq, "cancel", "item-not-found", NULL, "no such item");
            return DISP_DONE;
        }
        struct pep_job *job = job_new(sess, iq, PEP_OP_RETRACT, target);
        if (!job)
            return DISP_PASS;
        job->node = xstrdup(node);
        job->item_id = xstrdup(id);
        const char *n = xml_attr(retract, "notify");
        job->notify = n && (strcmp(n, "true") == 0 || strcmp(n, "1") == 0);
        job_submit(sess, job);
        return DISP_DONE;
    }
    const struct xml_node *first = xml_first_elem(ps);
    char text[160];
    snprintf(text, sizeof text, "%s is not served by this PEP service", first ? first->name : "an empty request");
    pep_error(sess, iq, "cancel", "feature-not-implemented", NULL, text);
    return DISP_DONE;
}

static enum disp owner_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    struct c2s *s = sess->conn->c2s;
    if (!s->cfg->modules.pep_enabled || !target)
        return DISP_PASS;
    const struct xml_node *ps = xml_first_elem(iq);
    const struct xml_node *del = xml_child(ps, "delete", NS_PUBSUB_OWNER);
    if (strcmp(target, sess->bare) != 0) {
        pep_error(sess, iq, "auth", "forbidden", NULL, "only the owner manages a PEP node");
        return DISP_DONE;
    }
    const struct xml_node *conf = xml_child(ps, "configure", NS_PUBSUB_OWNER);
    if (conf) {
        bool set = strcmp(xml_attr(iq, "type"), "set") == 0;
        const char *node = xml_attr(conf, "node");
        if (!node || !*node) {
            pep_error(sess, iq, "modify", "bad-request", "nodeid-required", NULL);
            return DISP_DONE;
        }
        if (!name_ok(node)) {
            pep_error(sess, iq, "cancel", "item-not-found", NULL, "no such node");
            return DISP_DONE;
        }
        const struct xml_node *x = xml_child(conf, "x", NS_XDATA);
        if (set && (!x || !xml_attr(x, "type") ||
                    (strcmp(xml_attr(x, "type"), "submit") != 0 && strcmp(xml_attr(x, "type"), "cancel") != 0))) {
            pep_error(sess, iq, "modify", "bad-request", NULL, "a configuration is a submitted data form");
            return DISP_DONE;
        }
        if (set && strcmp(xml_attr(x, "type"), "cancel") == 0) {
            feat_reply(sess, iq, NULL);
            return DISP_DONE;
        }
        struct pep_job *job = job_new(sess, iq, set ? PEP_OP_CONFIG_SET : PEP_OP_CONFIG_GET, target);
        if (!job)
            return DISP_PASS;
        job->node = xstrdup(node);
        if (set && !read_options(sess, iq, conf, job, true)) {
            job_free(job);
            return DISP_DONE;
        }
        job_submit(sess, job);
        return DISP_DONE;
    }
    if (strcmp(xml_attr(iq, "type"), "set") == 0 && del) {
        const char *node = xml_attr(del, "node");
        if (!node || !*node) {
            pep_error(sess, iq, "modify", "bad-request", "nodeid-required", NULL);
            return DISP_DONE;
        }
        if (!name_ok(node)) {
            pep_error(sess, iq, "cancel", "item-not-found", NULL, "no such node");
            return DISP_DONE;
        }
        struct pep_job *job = job_new(sess, iq, PEP_OP_DELETE, target);
        if (!job)
            return DISP_PASS;
        job->node = xstrdup(node);
        job_submit(sess, job);
        return DISP_DONE;
    }
    const struct xml_node *first = xml_first_elem(ps);
    char text[160];
    snprintf(text, sizeof text, "%s is not served by this PEP service", first ? first->name : "an empty request");
    pep_error(sess, iq, "cancel", "feature-not-implemented", NULL, text);
    return DISP_DONE;
}

static enum disp pep_disco_items(struct session *sess, const struct xml_node *iq, const char *target)
{
    if (!sess->conn->c2s->cfg->modules.pep_enabled)
        return DISP_PASS;
    struct pep_job *job = job_new(sess, iq, PEP_OP_DISCO_ITEMS, target);
    if (!job)
        return DISP_PASS;
    job_submit(sess, job);
    return DISP_DONE;
}

/* --- the last items at login (XEP-0163 4.3.2 / XEP-0060 last published item) ----------------- */

static void last_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = res->ok == 0 ? feat_ctx_session(ctx) : NULL;
    if (res->ok != 0)
        log_warn("pep_last_items_failed", "error=\"%s\"", res->error ? res->error : "");
    size_t bytes = 0;
    for (size_t r = 0; sess && r < res->nrows; r++) {
        if (bytes > PEP_LAST_MAX_BYTES) {
            log_info("pep_last_items_cut", "jid=%s sent=%zu of=%zu", sess->full, r, res->nrows);
            break;
        }
        const char *u = feat_col(res, r, 0), *d = feat_col(res, r, 1), *node = feat_col(res, r, 2),
                   *access = feat_col(res, r, 3), *id = feat_col(res, r, 4), *x = feat_col(res, r, 5);
        if (!u || !d || !node || !access || !id || !x)
            continue;
        char *owner = xasprintf("%s@%s", u, d);
        bool own = strcmp(owner, sess->bare) == 0;
        int a = access_parse(access);
        char err[128];
        struct xml_node *payload = NULL;
        if ((own || a == PEP_ACCESS_OPEN || a == PEP_ACCESS_PRESENCE) &&
            (payload = xml_parse_document(x, strlen(x), err, sizeof err)) != NULL) {
            struct xml_node *msg = xml_node_new("message", XML_NS_CLIENT);
            xml_set_attr(msg, "type", "headline");
            xml_set_attr(msg, "from", owner);
            xml_set_attr(msg, "to", sess->full);
            char mid[48];
            snprintf(mid, sizeof mid, "pep-last-%" PRIx64 "-%zu", (uint64_t)mk_now_us(), r);
            xml_set_attr(msg, "id", mid);
            struct xml_node *items = xml_add_child(xml_add_child(msg, "event", NS_PUBSUB_EVENT), "items", NS_PUBSUB_EVENT);
            xml_set_attr(items, "node", node);
            struct xml_node *item = xml_add_child(items, "item", NS_PUBSUB_EVENT);
            xml_set_attr(item, "id", id);
            xml_append(item, payload);
            bytes += strlen(x);
            conn_send(sess->conn, msg);
            metric_inc(pm.m_events, "last");
            xml_free(&msg);
        }
        free(owner);
    }
    feat_ctx_free(&ctx);
}

static void json_owner(struct buf *b, const char *bare);
static void query_last(struct session *sess, struct buf *owners, const struct caps_entry *e,
                       const struct caps_entry *before);

/* While available, once its caps are known: the newest item of each node the session
 * wants, of its own account and of each local contact it is subscribed to (to). When its
 * caps change later to a ver that wants more nodes, the items of those nodes only. */
static void send_last(struct session *sess, const struct caps_entry *e)
{
    struct pep_sess *ps = state_of(sess);
    if (!ps || !ps->want_last || strcmp(ps->sent_ver, e->ver) == 0)
        return;
    const struct caps_entry *before = ps->sent_ver[0] ? caps_find(ps->sent_ver) : NULL;
    if (before && before->state != CAPS_OK)
        before = NULL;
    mk_strlcpy(ps->sent_ver, e->ver, sizeof ps->sent_ver);
    size_t nnew = 0;
    for (size_t i = 0; i < e->nnotify; i++)
        nnew += !before || !feat_strv_has(before->notify, before->nnotify, e->notify[i]);
    if (nnew == 0)
        return;
    struct buf owners;
    buf_init(&owners);
    buf_append_str(&owners, "[");
    json_owner(&owners, sess->bare);
    for (struct roster_item *it = sess->roster; it; it = it->next)
        if ((feat_roster_sub(it) & ROSTER_SUB_TO) && strcmp(it->jid, sess->bare) != 0)
            json_owner(&owners, it->jid);
    buf_append_str(&owners, "]");
    query_last(sess, &owners, e, before);
    buf_release(&owners);
}

/* Appends ["local","domain"] (after a comma unless first) for a local account's bare JID. */
static void json_owner(struct buf *b, const char *bare)
{
    const char *at = strchr(bare, '@');
    if (!at)
        return;
    if (b->len > 1)
        buf_append_str(b, ",");
    char *local = xstrndup(bare, (size_t)(at - bare));
    buf_append_str(b, "[");
    json_str(b, local);
    buf_append_str(b, ",");
    json_str(b, at + 1);
    buf_append_str(b, "]");
    free(local);
}

/* Asks the store for the newest item of each node of e (but those of before) of the owners
 * (a JSON array, borrowed) and sends them to sess (last_cb). Only local accounts count. */
static void query_last(struct session *sess, struct buf *owners, const struct caps_entry *e,
                       const struct caps_entry *before)
{
    struct c2s *s = sess->conn->c2s;
    struct buf nodes;
    buf_init(&nodes);
    buf_append_str(&nodes, "[");
    for (size_t i = 0, k = 0; i < e->nnotify; i++) {
        if (before && feat_strv_has(before->notify, before->nnotify, e->notify[i]))
            continue;
        if (k++)
            buf_append_str(&nodes, ",");
        json_str(&nodes, e->notify[i]);
    }
    buf_append_str(&nodes, "]");
    buf_append(owners, "", 1);
    buf_append(&nodes, "", 1);
    char limit[16];
    snprintf(limit, sizeof limit, "%d", PEP_LAST_MAX_ROWS);
    const char *params[] = {owners->data, nodes.data, limit};
    store_query(s->store, STORE_PEP_LAST_ITEMS, params, 3, last_cb, feat_ctx_new(sess, NULL));
    buf_release(&nodes);
}

/* --- hooks ------------------------------------------------------------------------------------- */

/* The client's own broadcast presence: its caps (XEP-0115) say which nodes it wants. */
static enum disp pep_stanza_out(struct session *sess, Mk__StanzaKind kind, struct xml_node *st)
{
    if (kind != MK__STANZA_KIND__STANZA_KIND_PRESENCE || xml_attr(st, "type") || xml_attr(st, "to"))
        return DISP_PASS;
    struct pep_sess *ps = state_of(sess);
    const char *node, *ver;
    if (!ps || !sess->conn->c2s->cfg->modules.pep_enabled)
        return DISP_PASS;
    if (!caps_of_presence(st, &node, &ver)) {
        ps->ver[0] = '\0';
        return DISP_PASS;
    }
    mk_strlcpy(ps->ver, ver, sizeof ps->ver);
    struct caps_entry *e = caps_find(ver);
    if (!e) {
        if (ps->caps_asked >= PEP_CAPS_PER_SESSION) {
            log_info("pep_caps_limit", "jid=%s ver=%s", sess->full, ver);
            return DISP_PASS;
        }
        ps->caps_asked++;
        e = caps_slot();
        mk_strlcpy(e->ver, ver, sizeof e->ver);
        e->used_us = mk_mono_us();
        caps_ask(sess, e, node);
    } else if (e->state == CAPS_PENDING && mk_mono_us() - e->asked_us > PEP_CAPS_RETRY_US) {
        caps_ask(sess, e, node);
    } else if (e->state == CAPS_OK) {
        send_last(sess, e);   /* a change of caps while available: the nodes it wants now */
    }
    e->used_us = mk_mono_us();
    return DISP_PASS;
}

static void pep_presence_changed(struct session *sess, bool initial)
{
    struct pep_sess *ps = state_of(sess);
    if (!ps)
        return;
    if (!sess->available) {
        ps->want_last = false;
        ps->sent_ver[0] = '\0';
        return;
    }
    if (!initial)
        return;
    ps->want_last = true;
    ps->sent_ver[0] = '\0';
    struct caps_entry *e = ps->ver[0] ? caps_find(ps->ver) : NULL;
    if (e && e->state == CAPS_OK)
        send_last(sess, e);
}

/* The answer to a caps query: verified, it tells which nodes the clients with that ver want. */
static bool pep_iq_answer(struct session *sess, const struct xml_node *iq)
{
    const char *id = xml_attr(iq, "id");
    if (!id || strncmp(id, "pepcaps-", 8) != 0)
        return false;
    struct caps_entry *e = NULL;
    for (size_t i = 0; i < caps_n && !e; i++)
        if (caps_cache[i].state == CAPS_PENDING && caps_cache[i].sid == sess->id && strcmp(caps_cache[i].qid, id) == 0)
            e = &caps_cache[i];
    if (!e)
        return true;
    const struct xml_node *q = xml_child(iq, "query", NS_DISCO_INFO);
    if (strcmp(xml_attr(iq, "type"), "result") != 0 || !q || !caps_verify(q, e->ver)) {
        log_info("pep_caps_refused", "jid=%s ver=%s", sess->full, e->ver);
        metric_inc(pm.m_caps, "refused");
        e->state = CAPS_BAD;
        return true;
    }
    e->state = CAPS_OK;
    metric_inc(pm.m_caps, "verified");
    for (struct xml_node *f = xml_child(q, "feature", NS_DISCO_INFO); f && e->nnotify < PEP_CAPS_NOTIFY_MAX;
         f = xml_next(f, "feature", NS_DISCO_INFO)) {
        const char *var = xml_attr(f, "var");
        size_t n = var ? strlen(var) : 0;
        if (n > 7 && n - 7 <= PEP_NAME_MAX && strcmp(var + n - 7, "+notify") == 0) {
            char *node = xstrndup(var, n - 7);
            feat_strv_add(&e->notify, &e->nnotify, node);
            free(node);
        }
    }
    /* Every session of this process with that ver that waits for its last items. */
    struct c2s *s = sess->conn->c2s;
    for (size_t i = 0; i < s->sessions_cap; i++) {
        for (struct session *o = s->sessions[i]; o; o = o->hnext) {
            struct pep_sess *ops = state_of(o);
            if (ops && strcmp(ops->ver, e->ver) == 0 && ops->want_last && o->conn &&
                !o->conn->closed)
                send_last(o, e);
        }
    }
    return true;
}

/* A PEP event (a headline from an account's bare JID with a pubsub#event) reaches only
 * the sessions whose client wants its node. */
static bool pep_stanza_in(struct session *sess, const Mk__Route *r)
{
    static const char ev[] = NS_PUBSUB_EVENT;
    if (r->kind == MK__STANZA_KIND__STANZA_KIND_PRESENCE && r->type && strcmp(r->type, "subscribed") == 0 && r->from) {
        /* A contact approved our subscription: what it publishes to its contacts is ours
         * now (XEP-0163: the last items go to a new subscriber). */
        struct pep_sess *ps = state_of(sess);
        struct caps_entry *e = ps && ps->want_last && ps->ver[0] ? caps_find(ps->ver) : NULL;
        char *bare = feat_bare_of(r->from);
        const char *at = strchr(bare, '@');
        if (e && e->state == CAPS_OK && e->nnotify > 0 && at && strcmp(bare, sess->bare) != 0 &&
            cfg_is_local_domain(sess->conn->c2s->cfg, at + 1)) {
            struct buf owners;
            buf_init(&owners);
            buf_append_str(&owners, "[");
            json_owner(&owners, bare);
            buf_append_str(&owners, "]");
            query_last(sess, &owners, e, NULL);
            buf_release(&owners);
        }
        free(bare);
        return true;
    }
    if (r->kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE || !r->type || strcmp(r->type, "headline") != 0 || !r->from ||
        !strchr(r->from, '@') || strchr(r->from, '/') || !r->xml.data ||
        !memmem(r->xml.data, r->xml.len, ev, sizeof ev - 1))
        return true;
    char err[128];
    struct xml_node *msg = feat_parse_routed(r, err, sizeof err);
    if (!msg)
        return true;
    const struct xml_node *event = xml_child(msg, "event", NS_PUBSUB_EVENT);
    const struct xml_node *what = event ? xml_first_elem(event) : NULL;
    const char *node = what ? xml_attr(what, "node") : NULL;
    bool keep = !event || (node && wants(sess, node));
    xml_free(&msg);
    if (event)
        metric_inc(pm.m_events, keep ? "delivered" : "filtered");
    return keep;
}

static void put_u32(struct buf *b, size_t v)
{
    unsigned char x[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8),
                          (unsigned char)v};
    buf_append(b, x, 4);
}

static bool get_u32(const unsigned char **p, const unsigned char *end, size_t *v)
{
    if (end - *p < 4)
        return false;
    *v = (size_t)(*p)[0] << 24 | (size_t)(*p)[1] << 16 | (size_t)(*p)[2] << 8 | (*p)[3];
    *p += 4;
    return true;
}

/* XEP-0198 resumption on another c2s: the session's verified interest travels with it
 * (1, its ver, flags want_last|sent, then each +notify node as length and bytes), since the
 * client does not send its presence again there. */
static void pep_handover_save(struct session *sess, struct buf *out)
{
    struct pep_sess *ps = state_of(sess);
    struct caps_entry *e = ps && ps->ver[0] ? caps_find(ps->ver) : NULL;
    if (!e || e->state != CAPS_OK)
        return;
    unsigned char flags = (unsigned char)((ps->want_last ? 1 : 0) | (strcmp(ps->sent_ver, e->ver) == 0 ? 2 : 0));
    buf_append(out, "\1", 1);
    buf_append(out, e->ver, CAPS_VER_MAX - 1);
    buf_append(out, &flags, 1);
    for (size_t i = 0; i < e->nnotify; i++) {
        size_t n = strlen(e->notify[i]);
        put_u32(out, n);
        buf_append(out, e->notify[i], n);
    }
}

/* The part another c2s saved (lengths checked; bad input ignored whole). The holder had
 * verified the ver's answer: its interest is taken when this process does not know it. */
static void pep_handover_load(struct session *sess, const void *data, size_t n)
{
    struct pep_sess *ps = state_of(sess);
    const unsigned char *p = data, *end = p + n;
    if (!ps || n < CAPS_VER_MAX + 1 || p[0] != 1 || memchr(p + 1, '\0', CAPS_VER_MAX - 1) != NULL)
        return;
    char ver[CAPS_VER_MAX];
    memcpy(ver, p + 1, CAPS_VER_MAX - 1);
    ver[CAPS_VER_MAX - 1] = '\0';
    unsigned char flags = p[CAPS_VER_MAX];
    p += CAPS_VER_MAX + 1;
    char **nodes = NULL;
    size_t nn = 0, len;
    while (p < end) {
        if (nn >= PEP_CAPS_NOTIFY_MAX || !get_u32(&p, end, &len) || len == 0 || len > PEP_NAME_MAX ||
            len > (size_t)(end - p) || memchr(p, '\0', len) != NULL) {
            feat_strv_free(&nodes, &nn);
            return;
        }
        char *node = xstrndup((const char *)p, len);
        feat_strv_add(&nodes, &nn, node);
        free(node);
        p += len;
    }
    struct caps_entry *e = caps_find(ver);
    if (e && e->state == CAPS_OK) {
        feat_strv_free(&nodes, &nn);
    } else {
        if (!e) {
            e = caps_slot();
            mk_strlcpy(e->ver, ver, sizeof e->ver);
        }
        feat_strv_free(&e->notify, &e->nnotify);
        e->state = CAPS_OK;
        e->notify = nodes;
        e->nnotify = nn;
    }
    e->used_us = mk_mono_us();
    mk_strlcpy(ps->ver, ver, sizeof ps->ver);
    ps->want_last = (flags & 1) != 0;
    if (flags & 2)
        mk_strlcpy(ps->sent_ver, ver, sizeof ps->sent_ver);
}

static void pep_session_close(struct session *sess)
{
    struct pep_sess *ps = state_of(sess);
    if (ps)
        feat_serial_drain(&ps->serial, drop_job);
}

static void pep_init(struct c2s *s)
{
    struct metrics *m = s->node->metrics;
    pm.m_requests = metrics_counter(m, "meerkat_c2s_pep_requests_total", "PEP requests taken, by operation", "op");
    pm.m_events = metrics_counter(m, "meerkat_c2s_pep_events_total",
                                  "PEP events: routed per recipient bare JID, delivered to or filtered out of a "
                                  "session by its +notify interest, last items sent", "result");
    pm.m_caps = metrics_counter(m, "meerkat_c2s_pep_caps_total",
                                "XEP-0115 disco#info queries to clients and their answers", "result");
}

static void pep_fini(struct c2s *s)
{
    (void)s;
    for (size_t i = 0; i < caps_n; i++)
        caps_entry_clear(&caps_cache[i]);
    caps_n = 0;
}

static bool pep_advertised(const struct c2s *s, const char *domain)
{
    (void)domain;
    return s->cfg->modules.pep_enabled;
}

static const struct c2s_iq_handler iqs[] = {
    {NS_PUBSUB, C2S_IQ_CHECK_ACCOUNT, pubsub_iq, NULL},
    {NS_PUBSUB_OWNER, C2S_IQ_CHECK_ACCOUNT, owner_iq, NULL},
    {NULL, 0, NULL, NULL},
};

/* XEP-0060 10 feature names of what is served (account disco#info). */
static const char *const account_features[] = {
    NS_PUBSUB "#publish",
    NS_PUBSUB "#auto-create",
    NS_PUBSUB "#publish-options",
    NS_PUBSUB "#persistent-items",
    NS_PUBSUB "#retrieve-items",
    NS_PUBSUB "#retract-items",
    NS_PUBSUB "#delete-nodes",
    NS_PUBSUB "#config-node",
    NS_PUBSUB "#item-ids",
    NS_PUBSUB "#access-presence",
    NS_PUBSUB "#access-open",
    NS_PUBSUB "#access-whitelist",
    NS_PUBSUB "#presence-notifications",
    NS_PUBSUB "#auto-subscribe",
    NS_PUBSUB "#filtered-notifications",
    NS_PUBSUB "#last-published",
    NULL,
};
static const char *const account_identities[] = {"pubsub/pep", NULL};

const struct c2s_module pep_module = {
    .name = "pep",
    .account_features = account_features,
    .account_identities = account_identities,
    .advertised = pep_advertised,
    .iqs = iqs,
    .session_state = sizeof(struct pep_sess),
    .init = pep_init,
    .fini = pep_fini,
    .session_close = pep_session_close,
    .stanza_out = pep_stanza_out,
    .stanza_in = pep_stanza_in,
    .presence_changed = pep_presence_changed,
    .disco_items = pep_disco_items,
    .iq_answer = pep_iq_answer,
    .handover_save = pep_handover_save,
    .handover_load = pep_handover_load,
};
