/* c2s/push.c - the "push" module: XEP-0357 enable/disable, registrations stored per user, the pushers told of every change. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "util.h"

#define NS_PUSH             "urn:xmpp:push:0"
#define NS_PUBLISH_OPTIONS  "http://jabber.org/protocol/pubsub#publish-options"

/* Bounds on what a client may store (each registration is read for every push to the
 * user, and cached by the pusher). Past them: resource-constraint, nothing stored. */
#define PUSH_MAX_REGISTRATIONS 32      /* per account */
#define PUSH_MAX_NODE_BYTES    1024
#define PUSH_MAX_FIELDS        32      /* publish-options fields besides FORM_TYPE */
#define PUSH_MAX_VAR_BYTES     256
#define PUSH_MAX_VALUE_BYTES   1024
#define PUSH_MAX_FORM_BYTES    8192    /* the stored form, serialized */

/* True when an xep0357 backend serves domain and the cluster has a pusher to run it. */
static bool push_served(const struct cfg *cfg, const char *domain)
{
    const struct cfg_proc *procs[1];
    if (cfg_procs_of_role(cfg, CFG_ROLE_PUSHER, procs, 1) == 0)
        return false;
    for (size_t i = 0; i < cfg->pusher.nbackends; i++) {
        const struct cfg_push_backend *b = &cfg->pusher.backends[i];
        if (b->type != CFG_PUSH_XEP0357)
            continue;
        if (b->ndomains == 0)
            return true;
        for (size_t d = 0; d < b->ndomains; d++)
            if (domain && strcmp(b->domains[d], domain) == 0)
                return true;
    }
    return false;
}

/* True when pubsub_domain can be reached for a user of domain: an external component
 * configured here (its publish IQs are routed to it), or a MongoosePush virtual host of
 * a backend serving domain. Anything else could never be published to. */
static bool push_reachable(const struct cfg *cfg, const char *domain, const char *pubsub_domain)
{
    if (cfg_find_component(cfg, pubsub_domain) != NULL)
        return true;
    for (size_t i = 0; i < cfg->pusher.nbackends; i++) {
        const struct cfg_push_backend *b = &cfg->pusher.backends[i];
        if (b->type != CFG_PUSH_XEP0357)
            continue;
        bool serves = b->ndomains == 0;
        for (size_t d = 0; d < b->ndomains && !serves; d++)
            serves = strcmp(b->domains[d], domain) == 0;
        for (size_t v = 0; serves && v < b->nvirtual_hosts; v++)
            if (strcmp(b->virtual_hosts[v], pubsub_domain) == 0)
                return true;
    }
    return false;
}

static bool push_advertised(const struct c2s *s, const char *domain)
{
    return push_served(s->cfg, domain);
}

static void push_refuse(struct session *sess, const struct xml_node *iq, const char *type, const char *condition,
                        const char *text)
{
    char sample[128];
    log_info("push_refused", "jid=%s condition=%s why=\"%s\"", sess->full, condition,
             mk_sanitize(sample, sizeof sample, text ? text : "", text ? strlen(text) : 0));
    session_send_error(sess, iq, type, condition, text);
}

/* The enable request's publish-options as the form to store: var and first value of each
 * field in the client's order, FORM_TYPE left out; "" for no form or one with only
 * FORM_TYPE. NULL when the form is refused, with the error's condition and text. */
static char *push_form(const struct xml_node *x, const char **condition, const char **text)
{
    *condition = "bad-request";
    if (x == NULL)
        return xstrdup("");
    const char *type = xml_attr(x, "type");
    if (type == NULL || strcmp(type, "submit") != 0) {
        *text = "the publish-options form must be of type submit";
        return NULL;
    }
    struct xml_node *out = xml_node_new("x", NS_XDATA);
    xml_set_attr(out, "type", "submit");
    bool form_type = false;
    size_t nfields = 0;
    for (const struct xml_node *f = xml_first_elem(x); f; f = xml_next(f, NULL, NULL)) {
        if (strcmp(f->name, "field") != 0 || strcmp(f->ns, NS_XDATA) != 0)
            continue;   /* <title/>, <instructions/>: not options */
        const char *var = xml_attr(f, "var");
        if (var == NULL || *var == '\0') {
            *text = "a publish-options field has no var";
            goto refused;
        }
        const struct xml_node *v = xml_child(f, "value", NS_XDATA);
        char *value = v ? xml_text(v) : xstrdup("");
        if (strcmp(var, "FORM_TYPE") == 0) {
            bool ok = strcmp(value, NS_PUBLISH_OPTIONS) == 0;
            free(value);
            if (!ok) {
                *text = "FORM_TYPE is not " NS_PUBLISH_OPTIONS;
                goto refused;
            }
            form_type = true;
            continue;
        }
        size_t vlen = strlen(value);
        if (++nfields > PUSH_MAX_FIELDS || strlen(var) > PUSH_MAX_VAR_BYTES || vlen > PUSH_MAX_VALUE_BYTES) {
            free(value);
            *condition = "resource-constraint";
            *text = "the publish-options form is too large";
            goto refused;
        }
        struct xml_node *of = xml_add_child(out, "field", NS_XDATA);
        xml_set_attr(of, "var", var);
        xml_add_text(xml_add_child(of, "value", NS_XDATA), value, vlen);
        free(value);
    }
    if (!form_type) {
        *text = "the publish-options form has no FORM_TYPE";
        goto refused;
    }
    char *res;
    if (nfields == 0) {
        res = xstrdup("");
    } else {
        struct buf b;
        buf_init(&b);
        xml_serialize(out, NULL, &b);
        if (b.len > PUSH_MAX_FORM_BYTES) {
            buf_release(&b);
            *condition = "resource-constraint";
            *text = "the publish-options form is too large";
            goto refused;
        }
        res = xstrndup(b.data, b.len);
        buf_release(&b);
    }
    xml_free(&out);
    return res;
refused:
    xml_free(&out);
    return NULL;
}

static void push_set_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_answerable(ctx, res);
    if (res->ok == 0 && res->affected > 0)
        feat_push_registrations_changed(ctx->c2s, ctx->arg);
    if (sess && res->affected == 0) {
        char text[96];
        snprintf(text, sizeof text, "too many push registrations (at most %d)", PUSH_MAX_REGISTRATIONS);
        metric_inc(ctx->c2s->m_limit_refusals, "push_registrations");
        push_refuse(sess, ctx->req, "cancel", "resource-constraint", text);
    } else if (sess) {
        feat_reply(sess, ctx->req, NULL);
    }
    feat_ctx_free(&ctx);
}

static void push_delete_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_answerable(ctx, res);
    if (res->ok == 0 && res->affected > 0)
        feat_push_registrations_changed(ctx->c2s, ctx->arg);
    if (sess)
        feat_reply(sess, ctx->req, NULL);
    feat_ctx_free(&ctx);
}

/* <enable jid node><x/>?</enable> and <disable jid node?/>, from the user to the server or
 * to the user's own bare JID. The error mapping is MongooseIM's (bad-request for every
 * malformed request, not-allowed for a get), with the bounds above on top. */
static enum disp push_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    struct c2s *s = sess->conn->c2s;
    if (!push_served(s->cfg, sess->jid.domain))
        return DISP_PASS;   /* service-unavailable: not offered for this domain */
    if (target && strcmp(target, sess->bare) != 0) {
        push_refuse(sess, iq, "auth", "forbidden", "push notifications are set on one's own account");
        return DISP_DONE;
    }
    if (strcmp(xml_attr(iq, "type"), "get") == 0) {
        push_refuse(sess, iq, "cancel", "not-allowed", NULL);
        return DISP_DONE;
    }
    const struct xml_node *q = xml_first_elem(iq);
    bool enable = strcmp(q->name, "enable") == 0;
    if (!enable && strcmp(q->name, "disable") != 0) {
        push_refuse(sess, iq, "modify", "bad-request", "expected enable or disable");
        return DISP_DONE;
    }
    const char *jid = xml_attr(q, "jid");
    const char *node = xml_attr(q, "node");
    struct jid j;
    char err[128];
    if (jid == NULL || *jid == '\0' || jid_parse(jid, &j, err, sizeof err) == -1) {
        push_refuse(sess, iq, "modify", "bad-request", "a valid jid is required");
        return DISP_DONE;
    }
    char *pubsub = jid_to_string(&j, true);
    char *pubsub_domain = xstrdup(j.domain);
    jid_release(&j);
    const struct xml_node *x = NULL;
    const char *text = NULL;
    for (const struct xml_node *c = xml_first_elem(q); c; c = xml_next(c, NULL, NULL)) {
        if (!enable || x != NULL || strcmp(c->name, "x") != 0 || strcmp(c->ns, NS_XDATA) != 0) {
            text = "unexpected element in the request";
            break;
        }
        x = c;
    }
    if (!text && enable && (node == NULL || *node == '\0'))
        text = "enable needs a node";
    else if (!text && !enable && node != NULL && *node == '\0')
        text = "an empty node";
    if (text) {
        push_refuse(sess, iq, "modify", "bad-request", text);
        goto out;
    }
    if (node && strlen(node) > PUSH_MAX_NODE_BYTES) {
        push_refuse(sess, iq, "cancel", "resource-constraint", "the node name is too long");
        goto out;
    }
    struct feat_ctx *ctx;
    if (!enable) {
        ctx = feat_ctx_new(sess, iq);
        ctx->arg = xstrdup(sess->bare);
        const char *params[] = {sess->jid.local, sess->jid.domain, pubsub, node};
        store_query(s->store, node ? STORE_PUSH_REG_DELETE : STORE_PUSH_REG_DELETE_PUBSUB, params, node ? 4 : 3,
                    push_delete_cb, ctx);
        goto out;
    }
    if (!push_reachable(s->cfg, sess->jid.domain, pubsub_domain)) {
        push_refuse(sess, iq, "cancel", "remote-server-not-found", "that push service is not known here");
        goto out;
    }
    const char *condition;
    char *form = push_form(x, &condition, &text);
    if (form == NULL) {
        push_refuse(sess, iq, strcmp(condition, "bad-request") == 0 ? "modify" : "cancel", condition, text);
        goto out;
    }
    char created[24], max[16];
    snprintf(created, sizeof created, "%lld", (long long)mk_now_us());
    snprintf(max, sizeof max, "%d", PUSH_MAX_REGISTRATIONS);
    ctx = feat_ctx_new(sess, iq);
    ctx->arg = xstrdup(sess->bare);
    const char *params[] = {sess->jid.local, sess->jid.domain, pubsub, node, form, created, max};
    store_query(s->store, STORE_PUSH_REG_SET, params, 7, push_set_cb, ctx);
    free(form);
out:
    free(pubsub);
    free(pubsub_domain);
    return DISP_DONE;
}

static const struct c2s_iq_handler iqs[] = {
    {NS_PUSH, 0, push_iq, NULL},
    {NULL, 0, NULL, NULL},
};

static const char *const features[] = {NS_PUSH, NULL};

const struct c2s_module push_module = {
    .name = "push",
    .server_features = features,
    .account_features = features,
    .advertised = push_advertised,
    .iqs = iqs,
};
