/* pusher/xep0357_wire.c - the publish IQ, the MongoosePush request and the reading of their answers. */
#include "xep0357_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "xml.h"

#define NS_PUBSUB          "http://jabber.org/protocol/pubsub"
#define NS_PUSH            "urn:xmpp:push:0"
#define NS_XDATA           "jabber:x:data"
#define NS_STANZAS         "urn:ietf:params:xml:ns:xmpp-stanzas"
#define NS_PUSH_SUMMARY    "urn:xmpp:push:summary"
#define NS_PUBLISH_OPTIONS "http://jabber.org/protocol/pubsub#publish-options"

int xep_reg_init(struct xep_reg *r, const char *pubsub, const char *node, const char *form)
{
    memset(r, 0, sizeof *r);
    struct xml_node *x = NULL;
    if (form != NULL && *form != '\0') {
        char err[128];
        x = xml_parse_document(form, strlen(form), err, sizeof err);
        if (x == NULL)
            return -1;
    }
    size_t n = 0;
    for (struct xml_node *f = x ? xml_child(x, "field", NS_XDATA) : NULL; f; f = xml_next(f, "field", NS_XDATA))
        if (xml_attr(f, "var") != NULL)
            n++;
    r->pubsub = xstrdup(pubsub ? pubsub : "");
    r->node = xstrdup(node ? node : "");
    r->vars = xcalloc(n + 1, sizeof *r->vars);
    r->values = xcalloc(n + 1, sizeof *r->values);
    for (struct xml_node *f = x ? xml_child(x, "field", NS_XDATA) : NULL; f; f = xml_next(f, "field", NS_XDATA)) {
        if (xml_attr(f, "var") == NULL)
            continue;
        struct xml_node *v = xml_child(f, "value", NS_XDATA);
        r->vars[r->nfields] = xstrdup(xml_attr(f, "var"));
        r->values[r->nfields++] = v ? xml_text(v) : xstrdup("");
    }
    xml_free(&x);
    return 0;
}

void xep_reg_release(struct xep_reg *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nfields; i++) {
        free(r->vars[i]);
        free(r->values[i]);
    }
    free(r->vars);
    free(r->values);
    free(r->pubsub);
    free(r->node);
    memset(r, 0, sizeof *r);
}

const char *xep_reg_option(const struct xep_reg *r, const char *var)
{
    for (size_t i = 0; i < r->nfields; i++)
        if (strcmp(r->vars[i], var) == 0)
            return r->values[i];
    return NULL;
}

static void add_field(struct xml_node *x, const char *var, const char *value)
{
    struct xml_node *f = xml_add_child(x, "field", NS_XDATA);
    xml_set_attr(f, "var", var);
    xml_add_text(xml_add_child(f, "value", NS_XDATA), value, strlen(value));
}

void xep_publish_iq(struct buf *out, const char *domain, const char *id, const struct xep_reg *reg,
                    const struct xep_summary *sum)
{
    struct xml_node *iq = xml_node_new("iq", XML_NS_CLIENT);
    xml_set_attr(iq, "type", "set");
    xml_set_attr(iq, "id", id);
    xml_set_attr(iq, "from", domain);
    xml_set_attr(iq, "to", reg->pubsub);
    struct xml_node *ps = xml_add_child(iq, "pubsub", NS_PUBSUB);
    struct xml_node *pub = xml_add_child(ps, "publish", NS_PUBSUB);
    xml_set_attr(pub, "node", reg->node);
    struct xml_node *n = xml_add_child(xml_add_child(pub, "item", NS_PUBSUB), "notification", NS_PUSH);
    struct xml_node *x = xml_add_child(n, "x", NS_XDATA);
    xml_set_attr(x, "type", "submit");
    char count[16];
    snprintf(count, sizeof count, "%u", sum->message_count);
    add_field(x, "FORM_TYPE", NS_PUSH_SUMMARY);
    add_field(x, "message-count", count);
    add_field(x, "last-message-sender", sum->sender ? sum->sender : "");
    add_field(x, "last-message-body", sum->body ? sum->body : "");
    if (reg->nfields > 0) {
        struct xml_node *o = xml_add_child(xml_add_child(ps, "publish-options", NS_PUBSUB), "x", NS_XDATA);
        xml_set_attr(o, "type", "submit");
        add_field(o, "FORM_TYPE", NS_PUBLISH_OPTIONS);
        for (size_t i = 0; i < reg->nfields; i++)
            add_field(o, reg->vars[i], reg->values[i]);
    }
    xml_serialize(iq, XML_NS_CLIENT, out);
    xml_free(&iq);
}

/* A JSON string: quotes, backslashes and control characters escaped; UTF-8 as is (the
 * values came out of an XML parser, so they are valid UTF-8). */
static void json_string(struct buf *out, const char *s)
{
    buf_append(out, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            buf_append(out, esc, 2);
        } else if (*p < 0x20) {
            buf_printf(out, "\\u%04x", *p);
        } else {
            buf_append(out, (const char *)p, 1);
        }
    }
    buf_append(out, "\"", 1);
}

static void json_member(struct buf *out, bool *first, const char *name)
{
    if (!*first)
        buf_append(out, ",", 1);
    *first = false;
    json_string(out, name);
    buf_append(out, ":", 1);
}

static void json_opt_string(struct buf *out, bool *first, const char *name, const char *value)
{
    if (value == NULL)
        return;
    json_member(out, first, name);
    json_string(out, value);
}

/* True when s is a decimal number that fits comfortably (time_to_live is a number). */
static bool is_count(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 9)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

int xep_mpush_request(struct buf *url, struct buf *json, const char *base, const char *api,
                      const struct xep_reg *reg, const struct xep_summary *sum, char *err, size_t errlen)
{
    const char *device = xep_reg_option(reg, "device_id");
    const char *service = xep_reg_option(reg, "service");
    if (device == NULL || *device == '\0' || service == NULL || *service == '\0') {
        snprintf(err, errlen, "the registration's publish options lack %s",
                 device == NULL || *device == '\0' ? "device_id" : "service");
        return -1;
    }
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    buf_append(url, base, blen);
    buf_printf(url, "/%s/notification/", api && *api ? api : "v3");
    for (const unsigned char *p = (const unsigned char *)device; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' ||
            *p == '.' || *p == '_' || *p == '~')
            buf_append(url, (const char *)p, 1);
        else
            buf_printf(url, "%%%02X", *p);
    }
    buf_append(url, "", 1);   /* NUL-terminated for the HTTP client */
    url->len--;

    bool first = true;
    buf_append(json, "{", 1);
    json_opt_string(json, &first, "service", service);
    const char *mode = xep_reg_option(reg, "mode");
    json_opt_string(json, &first, "mode", mode && *mode ? mode : "prod");
    json_opt_string(json, &first, "priority", xep_reg_option(reg, "priority"));
    const char *ttl = xep_reg_option(reg, "time_to_live");
    if (ttl != NULL && is_count(ttl)) {
        json_member(json, &first, "time_to_live");
        buf_printf(json, "%ld", strtol(ttl, NULL, 10));
    }
    json_opt_string(json, &first, "topic", xep_reg_option(reg, "topic"));
    const char *silent = xep_reg_option(reg, "silent");
    const char *sender = sum->sender ? sum->sender : "";
    const char *body = sum->body ? sum->body : "";
    bool inner = true;
    if (silent != NULL && strcmp(silent, "true") == 0) {
        json_member(json, &first, "data");
        buf_append(json, "{", 1);
        json_member(json, &inner, "message-count");
        buf_printf(json, "%u", sum->message_count);
        json_opt_string(json, &inner, "last-message-sender", sender);
        json_opt_string(json, &inner, "last-message-body", body);
    } else {
        json_member(json, &first, "alert");
        buf_append(json, "{", 1);
        json_opt_string(json, &inner, "title", sender);
        json_opt_string(json, &inner, "body", body);
        json_member(json, &inner, "badge");
        buf_printf(json, "%u", sum->message_count);
        json_opt_string(json, &inner, "tag", sender);
        json_opt_string(json, &inner, "click_action", xep_reg_option(reg, "click_action"));
    }
    buf_append(json, "}}", 2);
    return 0;
}

enum xep_verdict xep_mpush_verdict(long status)
{
    if (status >= 200 && status < 300)
        return XEP_VERDICT_OK;
    if (status == 410)
        return XEP_VERDICT_DISABLE;
    if (status == 429 || status >= 500 || status == 0)
        return XEP_VERDICT_RETRY;
    return XEP_VERDICT_FAIL;
}

static const char *const conditions[] = {
    "bad-request", "conflict", "feature-not-implemented", "forbidden", "gone", "internal-server-error",
    "item-not-found", "jid-malformed", "not-acceptable", "not-allowed", "not-authorized", "policy-violation",
    "recipient-unavailable", "redirect", "registration-required", "remote-server-not-found",
    "remote-server-timeout", "resource-constraint", "service-unavailable", "subscription-required",
    "undefined-condition", "unexpected-request",
};

enum xep_verdict xep_iq_verdict(const char *type, const char *xml, size_t len, const char **condition)
{
    *condition = "";
    if (type != NULL && strcmp(type, "result") == 0)
        return XEP_VERDICT_OK;
    char err[128];
    struct xml_node *st = xml && len ? xml_parse_stanza(xml, len, err, sizeof err) : NULL;
    struct xml_node *e = st ? xml_child(st, "error", NULL) : NULL;
    const char *etype = e ? xml_attr(e, "type") : NULL;
    for (struct xml_node *c = e ? xml_first_elem(e) : NULL; c; c = xml_next(c, NULL, NULL)) {
        if (strcmp(c->ns, NS_STANZAS) != 0 || strcmp(c->name, "text") == 0)
            continue;
        *condition = "other";
        for (size_t i = 0; i < MK_ARRAY_LEN(conditions); i++)
            if (strcmp(c->name, conditions[i]) == 0)
                *condition = conditions[i];
        break;
    }
    enum xep_verdict v;
    if (etype == NULL || strcmp(etype, "wait") == 0)
        v = XEP_VERDICT_RETRY;     /* unreadable errors too: nothing says the registration is dead */
    else if (strcmp(etype, "cancel") == 0)
        v = XEP_VERDICT_DISABLE;
    else
        v = XEP_VERDICT_FAIL;
    if (v == XEP_VERDICT_DISABLE &&
        (strcmp(*condition, "remote-server-not-found") == 0 || strcmp(*condition, "remote-server-timeout") == 0 ||
         strcmp(*condition, "service-unavailable") == 0 || strcmp(*condition, "recipient-unavailable") == 0))
        v = XEP_VERDICT_RETRY;
    xml_free(&st);
    return v;
}
