/* pusher/webhook.c - the "http" backend: POSTs events to a webhook, MongooseIM's form or JSON signed with HMAC-SHA256. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "buf.h"
#include "log.h"
#include "mamid.h"
#include "pusher.h"
#include "util.h"
#include "webhook.h"

static const char hex_upper[] = "0123456789ABCDEF";
static const char hex_lower[] = "0123456789abcdef";

/* The event kinds by Mk__PushEventKind value, as the config names them. */
static const char *const kind_names[] = { "sent", "delivered", "stored", "groupchat", "online", "offline" };

struct webhook {
    struct buf body;               /* the request being built (http_send copies it) */
    const char *url;
    enum cfg_push_format format;
    /* HMAC-SHA256 keyed once at init: re-initialising it per event costs 0.7 us where the
     * one-shot HMAC() (a provider fetch each call) costs 4 us. */
    EVP_MAC *mac;
    EVP_MAC_CTX *mac_ctx;
};

/* ---- bodies (pure) --------------------------------------------------------------- */

void webhook_form_encode(struct buf *out, const char *s, size_t n)
{
    if (n == 0)
        return;
    /* At most 3 bytes per byte: one reservation, then plain stores. */
    buf_reserve(out, 3 * n);
    char *w = out->data + out->len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
            c == '_') {
            *w++ = (char)c;
        } else if (c == ' ') {
            *w++ = '+';
        } else {
            *w++ = '%';
            *w++ = hex_upper[c >> 4];
            *w++ = hex_upper[c & 15];
        }
    }
    out->len = (size_t)(w - out->data);
}

/* The localpart and domain of a JID as written ("local@domain/resource"): the
 * localpart is empty when there is no '@' before the resource. */
static void jid_split(const char *jid, const char **local, size_t *local_len, const char **domain,
                      size_t *domain_len)
{
    size_t bare = strcspn(jid, "/");
    const char *at = memchr(jid, '@', bare);
    if (at != NULL) {
        *local = jid;
        *local_len = (size_t)(at - jid);
        *domain = at + 1;
        *domain_len = bare - *local_len - 1;
    } else {
        *local = jid;
        *local_len = 0;
        *domain = jid;
        *domain_len = bare;
    }
}

int webhook_form_body(const Mk__PushEvent *ev, struct buf *out)
{
    if (ev->kind != MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT || strcmp(ev->type, "chat") != 0 || ev->body == NULL ||
        ev->body[0] == '\0')
        return -1;
    const char *fl, *fd, *tl, *td;
    size_t fll, fdl, tll, tdl;
    jid_split(ev->from, &fl, &fll, &fd, &fdl);
    jid_split(ev->to, &tl, &tll, &td, &tdl);
    buf_append_str(out, "author=");
    webhook_form_encode(out, fl, fll);
    buf_append_str(out, "&server=");
    webhook_form_encode(out, fd, fdl);
    buf_append_str(out, "&receiver=");
    webhook_form_encode(out, tl, tll);
    buf_append_str(out, "&message=");
    webhook_form_encode(out, ev->body, strlen(ev->body));
    return 0;
}

void webhook_json_string(struct buf *out, const char *s, size_t n)
{
    /* At most 6 bytes per byte (\u00XX) and the quotes: one reservation. */
    buf_reserve(out, 6 * n + 2);
    char *w = out->data + out->len;
    *w++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *w++ = '\\';
            *w++ = (char)c;
        } else if (c >= 0x20) {
            *w++ = (char)c;
        } else {
            *w++ = '\\';
            switch (c) {
            case '\n': *w++ = 'n'; break;
            case '\r': *w++ = 'r'; break;
            case '\t': *w++ = 't'; break;
            case '\b': *w++ = 'b'; break;
            case '\f': *w++ = 'f'; break;
            default:
                memcpy(w, "u00", 3);
                w += 3;
                *w++ = hex_lower[c >> 4];
                *w++ = hex_lower[c & 15];
            }
        }
    }
    *w++ = '"';
    out->len = (size_t)(w - out->data);
}

/* v in decimal at w, at least width digits (zero-padded); returns the end. */
static char *put_digits(char *w, uint64_t v, int width)
{
    char d[20];
    int n = 0;
    do {
        d[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n < width && n < 20)
        d[n++] = '0';
    while (n > 0)
        *w++ = d[--n];
    return w;
}

static void json_field(struct buf *out, const char *name, const char *value)
{
    buf_append_str(out, ",\"");
    buf_append_str(out, name);
    buf_append_str(out, "\":");
    webhook_json_string(out, value != NULL ? value : "", value != NULL ? strlen(value) : 0);
}

void webhook_json_body(const Mk__PushEvent *ev, struct buf *out)
{
    unsigned kind = (unsigned)ev->kind;
    bool message = kind <= MK__PUSH_EVENT_KIND__PUSH_EVENT_GROUPCHAT;
    buf_append_str(out, "{\"kind\":");
    if (kind < MK_ARRAY_LEN(kind_names))
        webhook_json_string(out, kind_names[kind], strlen(kind_names[kind]));
    else
        buf_printf(out, "\"%u\"", kind);
    json_field(out, "id", ev->id);

    time_t secs = (time_t)(ev->stamp_us / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    if (tm.tm_year + 1900 >= 0 && tm.tm_year + 1900 <= 9999) {
        /* The digits written directly: a printf per event was most of this body's cost. */
        char ts[80], *w = ts;
        memcpy(w, ",\"timestamp\":\"", 14);
        w += 14;
        w = put_digits(w, (uint64_t)(tm.tm_year + 1900), 4);
        *w++ = '-';
        w = put_digits(w, (uint64_t)(tm.tm_mon + 1), 2);
        *w++ = '-';
        w = put_digits(w, (uint64_t)tm.tm_mday, 2);
        *w++ = 'T';
        w = put_digits(w, (uint64_t)tm.tm_hour, 2);
        *w++ = ':';
        w = put_digits(w, (uint64_t)tm.tm_min, 2);
        *w++ = ':';
        w = put_digits(w, (uint64_t)tm.tm_sec, 2);
        *w++ = '.';
        w = put_digits(w, ev->stamp_us % 1000000, 6);
        memcpy(w, "Z\",\"stamp_us\":", 14);
        w += 14;
        w = put_digits(w, ev->stamp_us, 1);
        buf_append(out, ts, (size_t)(w - ts));
    } else {
        buf_printf(out, ",\"timestamp\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06uZ\",\"stamp_us\":%llu", tm.tm_year + 1900,
                   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ev->stamp_us % 1000000),
                   (unsigned long long)ev->stamp_us);
    }
    json_field(out, "user", ev->user);
    json_field(out, "from", ev->from);
    json_field(out, "to", ev->to);
    /* A message without a type attribute is a normal one (RFC 6121 §5.2.2). */
    json_field(out, "type", message && (ev->type == NULL || ev->type[0] == '\0') ? "normal" : ev->type);
    if (ev->has_body)
        json_field(out, "body", ev->body);
    else
        buf_append_str(out, ",\"body\":null");
    if (!message)
        buf_append_str(out, ",\"direction\":null");
    else if (kind == MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT || kind == MK__PUSH_EVENT_KIND__PUSH_EVENT_GROUPCHAT)
        buf_append_str(out, ",\"direction\":\"in\"");
    else
        buf_append_str(out, ",\"direction\":\"out\"");
    buf_append_str(out, ev->unavailable ? ",\"unavailable\":true" : ",\"unavailable\":false");
    if (ev->mam_id != 0) {
        char text[MAMID_TEXT_LEN + 1];
        json_field(out, "mam_id", mamid_format(ev->mam_id, text));
    } else {
        buf_append_str(out, ",\"mam_id\":null");
    }
    buf_append_str(out, "}");
}

static void hex_signature(const unsigned char *md, size_t mdlen, char *out)
{
    memcpy(out, "sha256=", 7);
    for (size_t i = 0; i < mdlen && i < 32; i++) {
        out[7 + 2 * i] = hex_lower[md[i] >> 4];
        out[8 + 2 * i] = hex_lower[md[i] & 15];
    }
    out[WEBHOOK_SIGNATURE_LEN] = '\0';
}

void webhook_signature(const char *secret, const void *body, size_t len, char *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), body, len, md, &mdlen);
    hex_signature(md, mdlen, out);
}

/* ---- the backend ------------------------------------------------------------------- */

/* webhook_signature with the backend's keyed context. -1 when OpenSSL fails. */
static int webhook_sign(struct webhook *w, const void *body, size_t len, char *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t mdlen = 0;
    if (EVP_MAC_init(w->mac_ctx, NULL, 0, NULL) != 1 || EVP_MAC_update(w->mac_ctx, body, len) != 1 ||
        EVP_MAC_final(w->mac_ctx, md, &mdlen, sizeof md) != 1 || mdlen != 32)
        return -1;
    hex_signature(md, mdlen, out);
    return 0;
}

/* What one response means for the job: 2xx accepted; 5xx, 429, timeouts and
 * connection errors are temporary; any other status is a refusal retrying cannot fix. */
static void webhook_done(void *ud, const struct http_response *r)
{
    struct push_job *job = ud;
    char why[160];
    if (r->status == 0) {
        snprintf(why, sizeof why, "%s", r->error != NULL ? r->error : "no response");
        push_job_finish(job, PUSH_RETRY, -1, why);
    } else if (r->status >= 200 && r->status < 300) {
        push_job_finish(job, PUSH_OK, -1, NULL);
    } else if (r->status >= 500 || r->status == 429) {
        snprintf(why, sizeof why, "HTTP %ld", r->status);
        push_job_finish(job, PUSH_RETRY, r->retry_after_ms, why);
    } else {
        snprintf(why, sizeof why, "HTTP %ld", r->status);
        push_job_finish(job, PUSH_FAIL, -1, why);
    }
}

static int webhook_init(struct push_backend *b, char *err, size_t errlen)
{
    const struct cfg_push_backend *cfg = b->cfg;
    if (cfg->url == NULL || cfg->url[0] == '\0') {
        mk_errf(err, errlen, "%s: url is required", cfg->name);
        return -1;
    }
    if (cfg->format == CFG_PUSH_JSON && (cfg->secret == NULL || cfg->secret[0] == '\0')) {
        mk_errf(err, errlen, "%s: format json needs a secret (secret_file or secret_env)", cfg->name);
        return -1;
    }
    if (b->http == NULL) {
        mk_errf(err, errlen, "%s: no HTTP pool", cfg->name);
        return -1;
    }
    struct webhook *w = xcalloc(1, sizeof *w);
    buf_init(&w->body);
    w->url = cfg->url;
    w->format = cfg->format;
    if (cfg->format == CFG_PUSH_JSON) {
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
            OSSL_PARAM_construct_end(),
        };
        w->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        w->mac_ctx = w->mac != NULL ? EVP_MAC_CTX_new(w->mac) : NULL;
        if (w->mac_ctx == NULL ||
            EVP_MAC_init(w->mac_ctx, (const unsigned char *)cfg->secret, strlen(cfg->secret), params) != 1) {
            mk_errf(err, errlen, "%s: OpenSSL has no HMAC-SHA256", cfg->name);
            EVP_MAC_CTX_free(w->mac_ctx);
            EVP_MAC_free(w->mac);
            buf_release(&w->body);
            free(w);
            return -1;
        }
    }
    b->state = w;
    return 0;
}

static void webhook_fini(struct push_backend *b)
{
    struct webhook *w = b->state;
    if (w == NULL)
        return;
    buf_release(&w->body);
    EVP_MAC_CTX_free(w->mac_ctx);
    EVP_MAC_free(w->mac);
    free(w);
    b->state = NULL;
}

static void webhook_attempt(struct push_backend *b, struct push_job *job)
{
    struct webhook *w = b->state;
    const Mk__PushEvent *ev = push_job_event(job);
    buf_reset(&w->body);
    char sig[sizeof "X-Meerkat-Signature: " + WEBHOOK_SIGNATURE_LEN];
    const char *headers[3] = { NULL, NULL, NULL };
    if (w->format == CFG_PUSH_FORM) {
        if (webhook_form_body(ev, &w->body) == -1) {
            push_job_finish(job, PUSH_SKIP, -1, NULL);
            return;
        }
        headers[0] = "Content-Type: application/x-www-form-urlencoded";
    } else {
        webhook_json_body(ev, &w->body);
        memcpy(sig, "X-Meerkat-Signature: ", sizeof "X-Meerkat-Signature: " - 1);
        if (webhook_sign(w, w->body.data, w->body.len, sig + sizeof "X-Meerkat-Signature: " - 1) == -1) {
            push_job_finish(job, PUSH_RETRY, -1, "HMAC-SHA256 failed");
            return;
        }
        headers[0] = "Content-Type: application/json";
        headers[1] = sig;
    }
    struct http_request req = {
        .method = "POST",
        .url = w->url,
        .headers = headers,
        .body = w->body.data,
        .body_len = w->body.len,
    };
    if (http_send(b->http, &req, webhook_done, job) == -1)
        push_job_finish(job, PUSH_RETRY, -1, "the HTTP request could not be started");
}

const struct push_backend_ops push_http_ops = {
    .type = "http",
    .init = webhook_init,
    .fini = webhook_fini,
    .attempt = webhook_attempt,
    .envelope = NULL,
};
