/* c2s/server.c - the "server" module: IQs the server answers itself (disco, version, ping, time, vCard, private storage). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>

#include "c2s.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "util.h"

static void error(struct session *sess, const struct xml_node *iq, const char *type, const char *cond)
{
    session_send_error(sess, iq, type, cond, NULL);
}

/* --- disco, version, ping, time ------------------------------------------------------ */

static void add_identity(struct xml_node *q, const char *category, const char *type, const char *name)
{
    struct xml_node *id = xml_add_child(q, "identity", NS_DISCO_INFO);
    xml_set_attr(id, "category", category);
    xml_set_attr(id, "type", type);
    if (name)
        xml_set_attr(id, "name", name);
}

/* target: the account asked about (its prepared bare JID), NULL for the server (the
 * domain the IQ is addressed to, or the user's own). */
static void disco_info(struct session *sess, const struct xml_node *iq, const struct xml_node *q, const char *target)
{
    bool server = target == NULL;
    const char *domain = target ? strchr(target, '@') : NULL;
    if (domain != NULL)
        domain++;
    else if (server && xml_attr(iq, "to") && *xml_attr(iq, "to"))
        domain = xml_attr(iq, "to");
    else
        domain = sess->jid.domain;
    if (xml_attr(q, "node")) {
        error(sess, iq, "cancel", "item-not-found");
        return;
    }
    struct xml_node *r = xml_node_new("query", NS_DISCO_INFO);
    if (server)
        add_identity(r, "server", "im", MK_SERVER_NAME);
    else
        add_identity(r, "account", "registered", NULL);
    if (!server)
        c2s_modules_disco_identities(sess->conn->c2s, r, domain);
    /* Only what this server really answers: what the modules declare. */
    c2s_modules_disco_features(sess->conn->c2s, r, server, domain);
    feat_reply(sess, iq, r);
}

static void version(struct session *sess, const struct xml_node *iq)
{
    struct xml_node *r = xml_node_new("query", NS_VERSION);
    xml_add_text(xml_add_child(r, "name", NS_VERSION), MK_SERVER_NAME, strlen(MK_SERVER_NAME));
    xml_add_text(xml_add_child(r, "version", NS_VERSION), MK_SERVER_VERSION, strlen(MK_SERVER_VERSION));
    struct utsname u;
    if (uname(&u) == 0)
        xml_add_text(xml_add_child(r, "os", NS_VERSION), u.sysname, strlen(u.sysname));
    feat_reply(sess, iq, r);
}

static void entity_time(struct session *sess, const struct xml_node *iq)
{
    time_t now = time(NULL);
    struct tm tm;
    char utc[32];
    gmtime_r(&now, &tm);
    strftime(utc, sizeof utc, "%Y-%m-%dT%H:%M:%SZ", &tm);
    struct xml_node *r = xml_node_new("time", NS_TIME);
    xml_add_text(xml_add_child(r, "tzo", NS_TIME), "+00:00", 6);
    xml_add_text(xml_add_child(r, "utc", NS_TIME), utc, strlen(utc));
    feat_reply(sess, iq, r);
}

/* --- vCard (XEP-0054) ------------------------------------------------------------------ */

static void vcard_get_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_answerable(ctx, res);
    if (!sess)
        goto out;
    struct xml_node *v = NULL;
    if (res->nrows > 0 && feat_col(res, 0, 0)) {
        char err[128];
        v = xml_parse_document(feat_col(res, 0, 0), res->lens[0], err, sizeof err);
    }
    feat_reply(sess, ctx->req, v ? v : xml_node_new("vCard", NS_VCARD));
out:
    feat_ctx_free(&ctx);
}

static void simple_result_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_answerable(ctx, res);
    if (sess)
        feat_reply(sess, ctx->req, NULL);
    feat_ctx_free(&ctx);
}

static void vcard(struct session *sess, const struct xml_node *iq, const struct xml_node *q, const char *target,
                  bool get)
{
    struct c2s *s = sess->conn->c2s;
    if (!target) {
        /* The server has no vCard of its own. */
        if (get)
            feat_reply(sess, iq, xml_node_new("vCard", NS_VCARD));
        else
            error(sess, iq, "auth", "forbidden");
        return;
    }
    char *local, *domain;
    if (feat_split(target, &local, &domain) == -1) {
        error(sess, iq, "modify", "jid-malformed");
        return;
    }
    if (get) {
        const char *params[] = {local, domain};
        store_query(s->store, STORE_VCARD_GET, params, 2, vcard_get_cb, feat_ctx_new(sess, iq));
    } else if (strcmp(target, sess->bare) != 0) {
        error(sess, iq, "auth", "forbidden");
    } else {
        struct buf b;
        buf_init(&b);
        xml_serialize(q, XML_NS_CLIENT, &b);
        buf_append(&b, "", 1);
        const char *params[] = {local, domain, b.data};
        store_query(s->store, STORE_VCARD_SET, params, 3, simple_result_cb, feat_ctx_new(sess, iq));
        buf_release(&b);
    }
    free(local);
    free(domain);
}

/* --- private XML storage (XEP-0049) -------------------------------------------------------- */

static bool private_reserved(const char *ns)
{
    return !ns || !*ns || strncmp(ns, "jabber:", 7) == 0;
}

static void private_get_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_answerable(ctx, res);
    if (!sess)
        goto out;
    struct xml_node *q = xml_node_new("query", NS_PRIVATE);
    struct xml_node *stored = NULL;
    if (res->nrows > 0 && feat_col(res, 0, 0)) {
        char err[128];
        stored = xml_parse_document(feat_col(res, 0, 0), res->lens[0], err, sizeof err);
    }
    if (!stored) {
        /* Nothing stored: the empty element as asked. */
        struct xml_node *asked = xml_first_elem(xml_child(ctx->req, "query", NS_PRIVATE));
        stored = xml_node_new(asked->name, asked->ns);
    }
    xml_append(q, stored);
    feat_reply(sess, ctx->req, q);
out:
    feat_ctx_free(&ctx);
}

static void private_storage(struct session *sess, const struct xml_node *iq, const struct xml_node *q,
                            const char *target, bool get)
{
    struct c2s *s = sess->conn->c2s;
    if (!target || strcmp(target, sess->bare) != 0) {
        error(sess, iq, "auth", "forbidden");
        return;
    }
    struct xml_node *first = xml_first_elem(q);
    if (!first || (get && xml_next(first, NULL, NULL))) {
        error(sess, iq, "modify", "not-acceptable");
        return;
    }
    for (struct xml_node *c = first; c; c = xml_next(c, NULL, NULL))
        if (private_reserved(c->ns)) {
            error(sess, iq, "modify", "not-acceptable");
            return;
        }
    if (get) {
        const char *params[] = {sess->jid.local, sess->jid.domain, first->ns};
        store_query(s->store, STORE_PRIVATE_GET, params, 3, private_get_cb, feat_ctx_new(sess, iq));
        return;
    }
    size_t n = 0;
    for (struct xml_node *c = first; c; c = xml_next(c, NULL, NULL))
        n++;
    struct store_op *ops = xcalloc(n, sizeof *ops);
    const char **params = xcalloc(n * 4, sizeof *params);
    struct buf *bufs = xcalloc(n, sizeof *bufs);
    size_t i = 0;
    for (struct xml_node *c = first; c; c = xml_next(c, NULL, NULL), i++) {
        buf_init(&bufs[i]);
        xml_serialize(c, XML_NS_CLIENT, &bufs[i]);
        buf_append(&bufs[i], "", 1);
        params[i * 4] = sess->jid.local;
        params[i * 4 + 1] = sess->jid.domain;
        params[i * 4 + 2] = c->ns;
        params[i * 4 + 3] = bufs[i].data;
        ops[i] = (struct store_op){STORE_PRIVATE_SET, &params[i * 4], 4};
    }
    store_txn(s->store, ops, n, simple_result_cb, feat_ctx_new(sess, iq));
    for (i = 0; i < n; i++)
        buf_release(&bufs[i]);
    free(bufs);
    free(params);
    free(ops);
}

/* --- the module -------------------------------------------------------------------------- */

/* The server's items: its group chat service when modules.muc is on (router/muc.c). */
static void server_items(struct session *sess, const struct xml_node *iq)
{
    const struct cfg *cfg = sess->conn->c2s->cfg;
    struct xml_node *r = xml_node_new("query", NS_DISCO_ITEMS);
    if (cfg->modules.muc_enabled) {
        char *host = cfg_muc_host(cfg, sess->jid.domain);
        struct xml_node *it = xml_add_child(r, "item", NULL);
        xml_set_attr(it, "jid", host);
        xml_set_attr(it, "name", "Chatrooms");
        free(host);
    }
    feat_reply(sess, iq, r);
}

static enum disp disco_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    struct xml_node *q = xml_first_elem(iq);
    if (strcmp(xml_attr(iq, "type"), "get") != 0)
        error(sess, iq, "cancel", "feature-not-implemented");
    else if (strcmp(q->ns, NS_DISCO_INFO) == 0)
        disco_info(sess, iq, q, target);
    else if (xml_attr(q, "node"))
        error(sess, iq, "cancel", "item-not-found");
    else if (target == NULL)
        server_items(sess, iq);
    else if (c2s_modules_disco_items(sess, iq, target) == DISP_PASS)
        feat_reply(sess, iq, xml_node_new("query", NS_DISCO_ITEMS));
    return DISP_DONE;
}

static enum disp ping_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    if (strcmp(xml_attr(iq, "type"), "get") == 0)
        feat_reply(sess, iq, NULL);
    else
        error(sess, iq, "cancel", "feature-not-implemented");
    return DISP_DONE;
}

/* Version and time belong to the server. */
static enum disp version_time_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    const char *ns = xml_first_elem(iq)->ns;
    if (target)
        error(sess, iq, "cancel", "service-unavailable");
    else if (strcmp(xml_attr(iq, "type"), "get") != 0)
        error(sess, iq, "cancel", "feature-not-implemented");
    else if (strcmp(ns, NS_VERSION) == 0)
        version(sess, iq);
    else
        entity_time(sess, iq);
    return DISP_DONE;
}

static enum disp vcard_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    struct xml_node *q = xml_first_elem(iq);
    if (strcmp(q->name, "vCard") != 0)
        return DISP_PASS;
    vcard(sess, iq, q, target, strcmp(xml_attr(iq, "type"), "get") == 0);
    return DISP_DONE;
}

static enum disp private_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    private_storage(sess, iq, xml_first_elem(iq), target, strcmp(xml_attr(iq, "type"), "get") == 0);
    return DISP_DONE;
}

#define ACCOUNT C2S_IQ_CHECK_ACCOUNT
#define SERVER  (C2S_IQ_SERVER_DEFAULT | C2S_IQ_CHECK_ACCOUNT)

static const struct c2s_iq_handler iqs[] = {
    {NS_DISCO_INFO, ACCOUNT, disco_iq, NULL},
    {NS_DISCO_ITEMS, ACCOUNT, disco_iq, NULL},
    {NS_PING, SERVER, ping_iq, NULL},
    {NS_VERSION, SERVER, version_time_iq, NULL},
    {NS_TIME, SERVER, version_time_iq, NULL},
    {NS_VCARD, ACCOUNT, vcard_iq, NULL},
    {NS_PRIVATE, ACCOUNT, private_iq, NULL},
    {NULL, 0, NULL, NULL},
};

static const char *const server_features[] = {
    NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, NS_VERSION, NS_TIME, NS_VCARD, NS_PRIVATE, NULL,
};
static const char *const account_features[] = {NS_DISCO_INFO, NS_DISCO_ITEMS, NULL};

const struct c2s_module server_module = {
    .name = "server",
    .server_features = server_features,
    .account_features = account_features,
    .iqs = iqs,
};
