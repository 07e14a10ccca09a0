/* pusher/sns_wire.c - Amazon SNS Publish on the wire: the signed query-API request for an event, and SNS's reply. */
#include "sns_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "sigv4.h"
#include "util.h"
#include "xml.h"

#define SNS_API_VERSION "2010-03-31"
#define SNS_CONTENT_TYPE "application/x-www-form-urlencoded; charset=utf-8"
#define SNS_REPLY_MAX_STR 256

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 when it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned min;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, cp = c & 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, cp = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

void sns_json_string(struct buf *out, const char *s, size_t n)
{
    buf_reserve(out, n + 2);
    buf_append(out, "\"", 1);
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        /* Plain bytes go in runs. */
        size_t run = i;
        while (run < n && u[run] >= 0x20 && u[run] < 0x80 && u[run] != '"' && u[run] != '\\')
            run++;
        if (run > i) {
            buf_append(out, s + i, run - i);
            i = run;
            continue;
        }
        unsigned char c = u[i];
        if (c == '"' || c == '\\') {
            char esc[2] = { '\\', (char)c };
            buf_append(out, esc, 2);
            i++;
        } else if (c < 0x20) {
            switch (c) {
            case '\n': buf_append(out, "\\n", 2); break;
            case '\r': buf_append(out, "\\r", 2); break;
            case '\t': buf_append(out, "\\t", 2); break;
            case '\b': buf_append(out, "\\b", 2); break;
            case '\f': buf_append(out, "\\f", 2); break;
            default: buf_printf(out, "\\u%04x", c); break;
            }
            i++;
        } else {
            size_t len = utf8_seq(u + i, n - i);
            if (len == 0) {
                buf_append(out, "\xef\xbf\xbd", 3);
                i++;
            } else {
                buf_append(out, s + i, len);
                i += len;
            }
        }
    }
    buf_append(out, "\"", 1);
}

/* The bare JID of a full one (the part before the first '/': neither a localpart nor a
 * domain can hold one). */
static size_t bare_len(const char *jid)
{
    const char *slash = strchr(jid, '/');
    return slash ? (size_t)(slash - jid) : strlen(jid);
}

/* One form field name=value, '&'-separated, both AWS-encoded. */
static void form_field(struct buf *b, const char *name, const char *value, size_t vlen)
{
    if (b->len > 0)
        buf_append(b, "&", 1);
    sigv4_uri_encode(b, name, strlen(name), false);
    buf_append(b, "=", 1);
    sigv4_uri_encode(b, value, vlen, false);
}

/* Attribute n (1-based, at most 4) as its three form fields. */
static void form_attribute(struct buf *b, unsigned n, const char *name, const char *type, const char *value)
{
    static const char *const keys[4][3] = {
#define SNS_ATTR_KEYS(i) { "MessageAttributes.entry." #i ".Name", "MessageAttributes.entry." #i ".Value.DataType", \
                           "MessageAttributes.entry." #i ".Value.StringValue" }
        SNS_ATTR_KEYS(1), SNS_ATTR_KEYS(2), SNS_ATTR_KEYS(3), SNS_ATTR_KEYS(4),
#undef SNS_ATTR_KEYS
    };
    form_field(b, keys[n - 1][0], name, strlen(name));
    form_field(b, keys[n - 1][1], type, strlen(type));
    form_field(b, keys[n - 1][2], value, strlen(value));
}

/* Splits an http(s) URL (checked by cfg) into the Host header, the path and the query. */
static int endpoint_split(const char *url, char **host, char **path, char **query, char *err, size_t errlen)
{
    const char *rest;
    if (strncasecmp(url, "https://", 8) == 0)
        rest = url + 8;
    else if (strncasecmp(url, "http://", 7) == 0)
        rest = url + 7;
    else {
        mk_errf(err, errlen, "the SNS endpoint is not an http(s) URL.");
        return -1;
    }
    size_t alen = strcspn(rest, "/?#");
    if (alen == 0 || memchr(rest, '@', alen) != NULL) {
        mk_errf(err, errlen, "the SNS endpoint has no host, or credentials in it.");
        return -1;
    }
    *host = xstrndup(rest, alen);
    const char *p = rest + alen;
    size_t plen = strcspn(p, "?#");
    *path = plen > 0 && p[0] == '/' ? xstrndup(p, plen) : xstrdup("/");
    p += plen;
    if (*p == '?') {
        size_t qlen = strcspn(p + 1, "#");
        *query = xstrndup(p + 1, qlen);
    } else {
        *query = NULL;
    }
    return 0;
}

/* "Name: " + value as a new string. */
static char *header_line(const char *name, const char *value)
{
    size_t n = strlen(name), v = strlen(value);
    char *line = xmalloc(n + v + 1);
    memcpy(line, name, n);
    memcpy(line + n, value, v + 1);
    return line;
}

static const char *kind_name(const Mk__PushEvent *ev)
{
    switch (ev->kind) {
    case MK__PUSH_EVENT_KIND__PUSH_EVENT_ONLINE: return "online";
    case MK__PUSH_EVENT_KIND__PUSH_EVENT_OFFLINE: return "offline";
    case MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT: return "chat";
    case MK__PUSH_EVENT_KIND__PUSH_EVENT_GROUPCHAT: return "groupchat";
    default: return NULL;
    }
}

enum sns_build_result sns_build_publish(const struct cfg_push_backend *cfg, const Mk__PushEvent *ev, int64_t now,
                                        struct sns_request *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    buf_init(&out->body);
    const char *topic = NULL;
    struct buf msg;
    buf_init(&msg);
    const char *user = ev->user ? ev->user : "";
    const char *from = ev->from ? ev->from : "";
    const char *to = ev->to ? ev->to : "";
    switch (ev->kind) {
    case MK__PUSH_EVENT_KIND__PUSH_EVENT_ONLINE:
    case MK__PUSH_EVENT_KIND__PUSH_EVENT_OFFLINE:
        topic = cfg->sns_presence_topic;
        buf_printf(&msg, "{\"present\":%s,\"user_id\":",
                   ev->kind == MK__PUSH_EVENT_KIND__PUSH_EVENT_ONLINE ? "true" : "false");
        sns_json_string(&msg, user, bare_len(user));
        buf_append(&msg, "}", 1);
        break;
    case MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT:
    case MK__PUSH_EVENT_KIND__PUSH_EVENT_GROUPCHAT:
        /* MongooseIM publishes a chat message to the pm topic and a groupchat one to the
         * muc topic, each only with a <body>; normal and headline messages are not published. */
        if (ev->kind == MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT)
            topic = ev->type != NULL && strcmp(ev->type, "chat") == 0 ? cfg->sns_pm_topic : NULL;
        else
            topic = cfg->sns_muc_topic;
        if (!ev->has_body)
            topic = NULL;
        buf_append_str(&msg, "{\"from_user_id\":");
        sns_json_string(&msg, from, bare_len(from));
        buf_append_str(&msg, ",\"message\":");
        sns_json_string(&msg, ev->body ? ev->body : "", ev->body ? strlen(ev->body) : 0);
        buf_append_str(&msg, ",\"to_user_id\":");
        sns_json_string(&msg, to, bare_len(to));
        buf_append(&msg, "}", 1);
        break;
    default:
        break;
    }
    if (topic == NULL || *topic == '\0') {
        buf_release(&msg);
        return SNS_BUILD_SKIP;
    }
    out->kind = kind_name(ev);
    out->message = xstrndup(msg.data, msg.len);
    buf_release(&msg);
    out->topic_arn = xasprintf("arn:aws:sns:%s:%s:%s", cfg->sns_region, cfg->sns_account_id, topic);

    char stamp[24];
    snprintf(stamp, sizeof stamp, "%llu", (unsigned long long)ev->stamp_us);
    struct buf *b = &out->body;
    form_field(b, "Action", "Publish", 7);
    form_field(b, "Version", SNS_API_VERSION, strlen(SNS_API_VERSION));
    form_field(b, "TopicArn", out->topic_arn, strlen(out->topic_arn));
    form_field(b, "Message", out->message, strlen(out->message));
    form_attribute(b, 1, "event_kind", "String", out->kind);
    form_attribute(b, 2, "event_id", "String", ev->id ? ev->id : "");
    form_attribute(b, 3, "event_time_us", "Number", stamp);
    form_attribute(b, 4, "user_id", "String", user);

    char *host = NULL, *path = NULL, *query = NULL;
    if (endpoint_split(cfg->sns_endpoint ? cfg->sns_endpoint : "", &host, &path, &query, err, errlen) == -1)
        return SNS_BUILD_ERROR;
    struct sigv4_header ct = { "Content-Type", SNS_CONTENT_TYPE };
    struct sigv4_request req = {
        .method = "POST",
        .host = host,
        .path = path,
        .query = query,
        .headers = &ct,
        .nheaders = 1,
        .body = b->data ? b->data : "",
        .body_len = b->len,
        .region = cfg->sns_signing_region ? cfg->sns_signing_region : cfg->sns_region,
        .service = "sns",
        .now = now,
        .sign_content_sha256 = true,
    };
    struct sigv4_key key = { cfg->aws_access_key_id, cfg->aws_secret_access_key, cfg->aws_session_token };
    struct sigv4_signed sig;
    enum sns_build_result rc = SNS_BUILD_ERROR;
    if (sigv4_sign(&req, &key, &sig, err, errlen) == 0) {
        size_t h = 0;
        out->headers[h++] = header_line("Host: ", host);
        out->headers[h++] = xstrdup("Content-Type: " SNS_CONTENT_TYPE);
        out->headers[h++] = header_line("X-Amz-Date: ", sig.amz_date);
        out->headers[h++] = header_line("X-Amz-Content-Sha256: ", sig.content_sha256);
        if (key.session_token != NULL && *key.session_token != '\0')
            out->headers[h++] = header_line("X-Amz-Security-Token: ", key.session_token);
        out->headers[h++] = header_line("Authorization: ", buf_cstr(&sig.authorization));
        out->headers[h] = NULL;
        out->url = xstrdup(cfg->sns_endpoint);
        rc = SNS_BUILD_OK;
    }
    sigv4_signed_release(&sig);
    free(host);
    free(path);
    free(query);
    return rc;
}

void sns_request_release(struct sns_request *r)
{
    if (r == NULL)
        return;
    free(r->url);
    buf_release(&r->body);
    for (size_t i = 0; i < MK_ARRAY_LEN(r->headers) && r->headers[i] != NULL; i++) {
        /* The Authorization and token lines are products of the secrets: wiped. */
        OPENSSL_cleanse(r->headers[i], strlen(r->headers[i]));
        free(r->headers[i]);
    }
    free(r->topic_arn);
    free(r->message);
    memset(r, 0, sizeof *r);
}

/* The local name's text of the first child element called name (any namespace),
 * printable and bounded; NULL when there is none. */
static char *child_text(const struct xml_node *parent, const char *name)
{
    const struct xml_node *c = xml_child(parent, name, NULL);
    if (c == NULL)
        return NULL;
    char *t = xml_text(c);
    size_t n = strlen(t);
    if (n > SNS_REPLY_MAX_STR)
        n = SNS_REPLY_MAX_STR;
    char *out = xmalloc(4 * n + 1);
    mk_sanitize(out, 4 * n + 1, t, n);
    free(t);
    return out;
}

int sns_reply_parse(const char *body, size_t len, struct sns_reply *out)
{
    memset(out, 0, sizeof *out);
    if (body == NULL || len == 0)
        return -1;
    char err[128];
    struct xml_node *root = xml_parse_document(body, len, err, sizeof err);
    if (root == NULL)
        return -1;
    int rc = -1;
    if (strcmp(root->name, "PublishResponse") == 0) {
        const struct xml_node *result = xml_child(root, "PublishResult", NULL);
        if (result != NULL)
            out->message_id = child_text(result, "MessageId");
        rc = out->message_id != NULL ? 0 : -1;
    } else if (strcmp(root->name, "ErrorResponse") == 0 || strcmp(root->name, "Error") == 0) {
        const struct xml_node *e = strcmp(root->name, "Error") == 0 ? root : xml_child(root, "Error", NULL);
        if (e != NULL) {
            out->code = child_text(e, "Code");
            out->message = child_text(e, "Message");
        }
        rc = out->code != NULL ? 0 : -1;
    }
    xml_free(&root);
    if (rc == -1)
        sns_reply_release(out);
    return rc;
}

void sns_reply_release(struct sns_reply *r)
{
    if (r == NULL)
        return;
    free(r->message_id);
    free(r->code);
    free(r->message);
    memset(r, 0, sizeof *r);
}

enum sns_verdict sns_verdict(long status, const struct sns_reply *reply)
{
    if (status >= 200 && status < 300)
        return SNS_VERDICT_OK;
    if (status == 0 || status == 429 || status >= 500)
        return SNS_VERDICT_RETRY;
    /* AWS's throttling and transient codes come with a 4xx status (Throttling is a 400). */
    static const char *const transient[] = {
        "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
        "TooManyRequestsException", "ServiceUnavailable", "InternalFailure", "InternalError",
        "KMSThrottling", "RequestTimeout", "RequestTimeoutException",
    };
    if (reply != NULL && reply->code != NULL) {
        for (size_t i = 0; i < MK_ARRAY_LEN(transient); i++)
            if (strcmp(reply->code, transient[i]) == 0)
                return SNS_VERDICT_RETRY;
    }
    return SNS_VERDICT_FAIL;
}
