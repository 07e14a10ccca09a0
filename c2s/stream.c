/* c2s/stream.c - stream negotiation: header, features, STARTTLS, SASL, resource binding. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "authlimit.h"
#include "c2s.h"
#include "log.h"
#include "module.h"
#include "sm.h"
#include "tls.h"
#include "util.h"
#include "workpool.h"

#define SASL_MAX_FAILURES 3     /* wrong credentials per connection, then the stream is closed */
#define SASL_MAX_ATTEMPTS 8     /* failed exchanges of any kind per connection (clients walk the
                                 * mechanism list: a -PLUS binding they cannot do is not a wrong password) */

/* Login limits (c2s/authlimit.h) ------------------------------------------------------------ */

/* A credential lookup held back by the login limits: run when the timer fires, unless
 * its exchange is over by then. The connection keeps reading meanwhile; whatever it
 * sends (an <abort/>, a new <auth/>) ends the exchange and so the lookup. */
struct auth_wait {
    ev_timer timer;
    struct conn *conn;             /* held with conn_ref */
    enum store_stmt stmt;
    char user[1024];
    store_cb *cb;
    void *ud;
    struct auth_wait *prev, *next; /* c2s->auth_waits */
};

static void auth_wait_unlink(struct auth_wait *w)
{
    struct c2s *s = w->conn->c2s;
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        s->auth_waits = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
}

/* Runs the lookup, or (cancelled) answers its callback with a failure, which drops it
 * when its exchange is over. */
static void auth_wait_end(struct auth_wait *w, bool cancelled)
{
    struct conn *c = w->conn;
    ev_timer_stop(c->c2s->loop, &w->timer);
    auth_wait_unlink(w);
    if (cancelled || c->closed) {
        struct store_result res = { .ok = -1, .error = "cancelled" };
        w->cb(w->ud, &res);
    } else {
        const char *params[] = {w->user, c->domain};
        store_query(c->c2s->store, w->stmt, params, 2, w->cb, w->ud);
    }
    free(w);
}

static void on_auth_wait(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    auth_wait_end(t->data, false);
}

void stream_cancel_auth_waits(struct c2s *s)
{
    while (s->auth_waits != NULL)
        auth_wait_end(s->auth_waits, true);
}

/* Looks up user's credentials for the exchange in progress, at once or after the wait
 * the login limits set for (c->ip, user@domain). cb gets the result either way (or a
 * failure when the process stops first); ud as for store_query. */
static void auth_lookup(struct conn *c, const char *user, store_cb *cb, void *ud)
{
    struct c2s *s = c->c2s;
    char account[1100];
    snprintf(account, sizeof account, "%s@%s", user, c->domain);
    bool counted = false;
    int64_t wait = authlimit_gate(s->authlimit, c->ip, account, mk_mono_us(), &counted);
    if (counted)
        c2s_auth_event(s, MK__AUTH_EVENT_KIND__AUTH_EVENT_FAILURE, c->ip, account, true);
    /* An answer, however late, rather than the authentication timeout's stream error. */
    int64_t cap = (int64_t)s->cfg->limits.auth_timeout_sec * 1000000 / 2;
    if (wait > cap)
        wait = cap;
    if (wait <= 0) {
        const char *params[] = {user, c->domain};
        store_query(s->store, STORE_USER_GET, params, 2, cb, ud);
        return;
    }
    log_info("auth_wait", "conn=%llu ip=%s user=%s wait_ms=%lld", (unsigned long long)c->serial, c->ip, account,
             (long long)(wait / 1000));
    metric_inc(s->m_auth_waits, NULL);
    struct auth_wait *w = xcalloc(1, sizeof *w);
    w->conn = c;
    w->stmt = STORE_USER_GET;
    mk_strlcpy(w->user, user, sizeof w->user);
    w->cb = cb;
    w->ud = ud;
    w->next = s->auth_waits;
    if (w->next != NULL)
        w->next->prev = w;
    s->auth_waits = w;
    ev_timer_init(&w->timer, on_auth_wait, (double)wait / 1e6, 0.);
    w->timer.data = w;
    ev_timer_start(s->loop, &w->timer);
}

/* A wrong password for user: counted here and sent to every other c2s. */
static void auth_failed(struct conn *c, const char *user)
{
    char account[1100];
    snprintf(account, sizeof account, "%s@%s", user, c->domain);
    c2s_auth_event(c->c2s, MK__AUTH_EVENT_KIND__AUTH_EVENT_FAILURE, c->ip, account, false);
}

/* Stream header and features ---------------------------------------------------------- */

static void send_header(struct conn *c)
{
    unsigned char rnd[8];
    RAND_bytes(rnd, sizeof rnd);
    snprintf(c->stream_id, sizeof c->stream_id, "%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
             rnd[4], rnd[5], rnd[6], rnd[7]);
    char hdr[600];
    int n = snprintf(hdr, sizeof hdr,
                     "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                     "xmlns:stream='http://etherx.jabber.org/streams' id='%s' from='%s' version='1.0' xml:lang='en'>",
                     c->stream_id, c->domain);
    conn_write(c, hdr, (size_t)n);
}

static bool tls_needed(const struct conn *c)
{
    /* A plain WebSocket listener (tls: false) is the operator's choice: behind a TLS proxy. */
    return !c->tls && c->ws == NULL && c->c2s->cfg->starttls_required;
}

static void add_mech(struct xml_node *mechs, const char *name)
{
    struct xml_node *m = xml_add_child(mechs, "mechanism", NULL);
    xml_add_text(m, name, strlen(name));
}

static void send_features(struct conn *c)
{
    struct xml_node *f = xml_node_new("features", XML_NS_STREAM);
    if (c->user == NULL) {
        if (!c->tls && c->c2s->tls_ctx != NULL && c->ws == NULL) {
            struct xml_node *st = xml_add_child(f, "starttls", NS_TLS);
            if (c->c2s->cfg->starttls_required)
                xml_add_child(st, "required", NULL);
        }
        if (!tls_needed(c)) {
            struct xml_node *mechs = xml_add_child(f, "mechanisms", NS_SASL);
            if (c->tls) {
                add_mech(mechs, "SCRAM-SHA-256-PLUS");
                add_mech(mechs, "SCRAM-SHA-1-PLUS");
            }
            add_mech(mechs, "SCRAM-SHA-256");
            add_mech(mechs, "SCRAM-SHA-1");
            add_mech(mechs, "PLAIN");
            if (c->c2s->cfg->modules.anonymous)
                add_mech(mechs, "ANONYMOUS");
            if (c->tls) {
                /* XEP-0440: which channel bindings this connection supports. */
                struct xml_node *cb = xml_add_child(f, "sasl-channel-binding", "urn:xmpp:sasl-cb:0");
                const char *best = tls_best_binding(c->ssl);
                xml_set_attr(xml_add_child(cb, "channel-binding", NULL), "type", best);
                if (strcmp(best, "tls-server-end-point") != 0)
                    xml_set_attr(xml_add_child(cb, "channel-binding", NULL), "type", "tls-server-end-point");
            }
            c2s_modules_stream_features(c, f, false);
        }
    } else {
        xml_add_child(f, "bind", NS_BIND);
        struct xml_node *sess = xml_add_child(f, "session", NS_SESSION);
        xml_add_child(sess, "optional", NULL);
        c2s_modules_stream_features(c, f, true);
    }
    /* features is in the stream namespace: serialize with the stream prefix. */
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "<stream:features>");
    for (struct xml_node *ch = f->first_child; ch != NULL; ch = ch->next)
        xml_serialize(ch, XML_NS_CLIENT, &b);
    buf_append_str(&b, "</stream:features>");
    conn_write(c, b.data, b.len);
    buf_release(&b);
    xml_free(&f);
}

static void on_stream_open(struct conn *c, struct xml_node *hdr)
{
    if (c->state != CONN_STATE_STREAM && c->state != CONN_STATE_AUTH && c->state != CONN_STATE_BIND) {
        conn_stream_error(c, "bad-format", "unexpected stream header");
        return;
    }
    const char *to = xml_attr(hdr, "to");
    const char *version = xml_attr(hdr, "version");
    char err[128];
    char *domain = to ? jid_nameprep(to, err, sizeof err) : NULL;
    if (c->domain == NULL) {
        /* Until we know which domain, answer as the first hosted one. */
        c->domain = xstrdup(domain && cfg_is_local_domain(c->c2s->cfg, domain) ? domain : c->c2s->cfg->domains[0]);
    }
    send_header(c);
    if (domain == NULL || !cfg_is_local_domain(c->c2s->cfg, domain)) {
        free(domain);
        conn_stream_error(c, "host-unknown", to ? "this server does not serve that domain" : "the stream has no 'to'");
        return;
    }
    if (strcmp(domain, c->domain) != 0) {
        /* A restarted stream must name the same domain. */
        free(domain);
        conn_stream_error(c, "host-unknown", "the domain changed during the stream");
        return;
    }
    free(domain);
    const char *ns = xml_parser_stream_ns(c->parser);
    if (ns == NULL || strcmp(ns, XML_NS_CLIENT) != 0) {
        conn_stream_error(c, "invalid-namespace", "the stream's default namespace must be jabber:client");
        return;
    }
    if (version == NULL || strncmp(version, "1.", 2) != 0) {
        conn_stream_error(c, "unsupported-version", "only XMPP 1.0 streams are served");
        return;
    }
    if (c->state == CONN_STATE_STREAM)
        c->state = c->user != NULL ? CONN_STATE_BIND : CONN_STATE_AUTH;
    send_features(c);
}

/* SASL ----------------------------------------------------------------------------------- */

struct auth_query {
    struct conn *conn;
    unsigned gen;                  /* c->sasl_gen of the exchange that asked */
    char user[1024];
};

/* True when a store answer asked under gen still belongs to c's current exchange.
 * After an <abort/>, a failure or a new <auth/>, an answer to the old lookup must
 * not finish the new exchange: user A's credentials in user B's exchange would let
 * A's password log in as B. */
static bool sasl_answer_current(struct conn *c, unsigned gen, const char *what)
{
    if (c->closed || c->state == CONN_STATE_CLOSING)
        return false;
    if (gen != c->sasl_gen) {
        log_debug("auth_stale_answer", "conn=%llu ip=%s lookup=%s", (unsigned long long)c->serial, c->ip, what);
        return false;
    }
    return true;
}

static void sasl_failure_ex(struct conn *c, const char *condition, const char *text, bool credentials)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "<failure xmlns='%s'><%s/>", NS_SASL, condition);
    if (text != NULL) {
        buf_append_str(&b, "<text xml:lang='en'>");
        xml_escape(&b, text, strlen(text));
        buf_append_str(&b, "</text>");
    }
    buf_append_str(&b, "</failure>");
    conn_write(c, b.data, b.len);
    buf_release(&b);
    metric_inc(c->c2s->m_auth, "failure");
    c->sasl_gen++;
    scram_server_free(&c->scram);
    xfree(&c->sasl_mech);
    if (credentials)
        c->sasl_failures++;
    if (c->sasl_failures >= SASL_MAX_FAILURES || ++c->sasl_attempts >= SASL_MAX_ATTEMPTS)
        conn_stream_error(c, "policy-violation", "too many failed authentication attempts");
}

/* A failure that says nothing about the password (mechanism, encoding, binding). */
static void sasl_failure(struct conn *c, const char *condition, const char *text)
{
    sasl_failure_ex(c, condition, text, false);
}

/* Wrong credentials: counts toward the per-connection limit. */
static void sasl_denied(struct conn *c, const char *text)
{
    sasl_failure_ex(c, "not-authorized", text, true);
}


static void sasl_success(struct conn *c, const char *user, const char *additional)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "<success xmlns='%s'", NS_SASL);
    if (additional != NULL && additional[0] != '\0') {
        char enc[512];
        b64_encode((const unsigned char *)additional, strlen(additional), enc, sizeof enc);
        buf_printf(&b, ">%s</success>", enc);
    } else {
        buf_append_str(&b, "/>");
    }
    conn_write(c, b.data, b.len);
    buf_release(&b);
    metric_inc(c->c2s->m_auth, "success");
    c->sasl_gen++;
    if (c->preauth_counted) {
        c->preauth_counted = false;
        authlimit_preauth_end(c->c2s->authlimit, c->ip);
    }
    c->user = xstrdup(user);
    scram_server_free(&c->scram);
    log_info("auth_ok", "conn=%llu ip=%s user=%s@%s mech=%s", (unsigned long long)c->serial, c->ip, user, c->domain,
             c->sasl_mech);
    xfree(&c->sasl_mech);   /* c->user now refuses a second <auth/> */
    /* RFC 6120 6.4.6: the stream restarts. */
    c->state = CONN_STATE_STREAM;
    xml_parser_reset(c->parser);
    ev_timer_stop(c->c2s->loop, &c->timer);
    ev_timer_set(&c->timer, (double)c->c2s->cfg->limits.idle_timeout_sec, 0.);
    ev_timer_start(c->c2s->loop, &c->timer);
}

/* Reads the 8 credential columns of STORE_USER_GET. */
static void creds_from_row(const struct store_result *res, struct scram_cred *sha1, struct scram_cred *sha256)
{
    const char *const *v = res->vals;
    mk_strlcpy(sha1->salt, v[0] ? v[0] : "", sizeof sha1->salt);
    sha1->iter = v[1] ? (unsigned)strtoul(v[1], NULL, 10) : 0;
    mk_strlcpy(sha1->stored_key, v[2] ? v[2] : "", sizeof sha1->stored_key);
    mk_strlcpy(sha1->server_key, v[3] ? v[3] : "", sizeof sha1->server_key);
    mk_strlcpy(sha256->salt, v[4] ? v[4] : "", sizeof sha256->salt);
    sha256->iter = v[5] ? (unsigned)strtoul(v[5], NULL, 10) : 0;
    mk_strlcpy(sha256->stored_key, v[6] ? v[6] : "", sizeof sha256->stored_key);
    mk_strlcpy(sha256->server_key, v[7] ? v[7] : "", sizeof sha256->server_key);
}

struct plain_query {
    struct conn *conn;
    unsigned gen;                  /* c->sasl_gen of the exchange that asked */
    char user[1024];
    char passwd[1024];
    /* Filled from the store's row, checked on a worker thread (c2s->kdf_pool). */
    struct scram_cred cred;
    enum scram_hash hash;
    bool ok;
};

static void plain_query_free(struct plain_query *q)
{
    OPENSSL_cleanse(q->passwd, sizeof q->passwd);
    conn_unref(q->conn);
    free(q);
}

/* The verdict on a PLAIN login, on the loop, for the exchange that is still current. */
static void plain_verdict(struct conn *c, const char *user, bool ok)
{
    if (ok) {
        sasl_success(c, user, NULL);
    } else {
        auth_failed(c, user);
        log_info("auth_failed", "conn=%llu ip=%s user=%s@%s mech=PLAIN", (unsigned long long)c->serial, c->ip, user,
                 c->domain);
        sasl_denied(c, NULL);
    }
}

/* PBKDF2 over the password: milliseconds of CPU, so on a worker thread. Touches q only. */
static void plain_check_work(void *arg)
{
    struct plain_query *q = arg;
    q->ok = scram_cred_check(q->hash, &q->cred, q->passwd);
}

static void plain_check_done(void *arg)
{
    struct plain_query *q = arg;
    /* The exchange may have been aborted or replaced while the hash ran. */
    if (sasl_answer_current(q->conn, q->gen, "PLAIN"))
        plain_verdict(q->conn, q->user, q->ok);
    plain_query_free(q);
}

static void plain_checked(void *ud, const struct store_result *res)
{
    struct plain_query *q = ud;
    struct conn *c = q->conn;
    if (!sasl_answer_current(c, q->gen, "PLAIN")) {
        plain_query_free(q);
        return;
    }
    if (res->ok != 0) {
        log_warn("auth_store_error", "reason=\"%s\"", res->error ? res->error : "");
        sasl_failure(c, "temporary-auth-failure", NULL);
        plain_query_free(q);
        return;
    }
    if (res->nrows != 1 || res->ncols < 8) {
        plain_verdict(c, q->user, false);   /* no such user */
        plain_query_free(q);
        return;
    }
    struct scram_cred sha1, sha256;
    creds_from_row(res, &sha1, &sha256);
    q->hash = sha256.iter > 0 ? SCRAM_SHA256 : SCRAM_SHA1;
    q->cred = sha256.iter > 0 ? sha256 : sha1;
    if (workpool_submit(c->c2s->kdf_pool, plain_check_work, plain_check_done, q) == -1) {
        /* Every worker busy and the queue full: a flood. Say so rather than stall. */
        metric_inc(c->c2s->m_kdf_refused, NULL);
        sasl_failure(c, "temporary-auth-failure", "the server is busy; try again shortly");
        plain_query_free(q);
    }
}

static void auth_plain(struct conn *c, const unsigned char *msg, size_t len)
{
    struct plain_query *q = xcalloc(1, sizeof *q);
    char authzid[1024], authcid[1024];
    if (sasl_plain_parse((const char *)msg, len, authzid, sizeof authzid, authcid, sizeof authcid, q->passwd,
                         sizeof q->passwd) == -1) {
        free(q);
        sasl_failure(c, "malformed-request", NULL);
        return;
    }
    char err[128];
    char *user = jid_nodeprep(authcid, err, sizeof err);
    if (user == NULL) {
        memset(q->passwd, 0, sizeof q->passwd);
        free(q);
        sasl_failure(c, "not-authorized", NULL);
        return;
    }
    if (authzid[0] != '\0') {
        /* Only one's own identity may be asked for. */
        char *want = xasprintf("%s@%s", user, c->domain);
        char *az = jid_normalize(authzid, true);
        bool same = az != NULL && strcmp(az, want) == 0;
        free(want);
        free(az);
        if (!same) {
            free(user);
            memset(q->passwd, 0, sizeof q->passwd);
            free(q);
            sasl_failure(c, "invalid-authzid", NULL);
            return;
        }
    }
    q->conn = c;
    q->gen = c->sasl_gen;
    mk_strlcpy(q->user, user, sizeof q->user);
    free(user);
    conn_ref(c);
    auth_lookup(c, q->user, plain_checked, q);
}

static void send_challenge(struct conn *c, const char *data, size_t n)
{
    struct buf b;
    buf_init(&b);
    char enc[1024];
    b64_encode((const unsigned char *)data, n, enc, sizeof enc);
    buf_printf(&b, "<challenge xmlns='%s'>%s</challenge>", NS_SASL, enc);
    conn_write(c, b.data, b.len);
    buf_release(&b);
}

static void scram_creds_loaded(void *ud, const struct store_result *res)
{
    struct auth_query *q = ud;
    struct conn *c = q->conn;
    if (sasl_answer_current(c, q->gen, "SCRAM") && c->scram != NULL) {
        if (res->ok != 0) {
            log_warn("auth_store_error", "reason=\"%s\"", res->error ? res->error : "");
            sasl_failure(c, "temporary-auth-failure", NULL);
        } else {
            struct scram_cred sha1, sha256, *cred = NULL;
            if (res->nrows == 1 && res->ncols >= 8) {
                creds_from_row(res, &sha1, &sha256);
                cred = c->scram_hash == SCRAM_SHA256 ? &sha256 : &sha1;
                if (cred->iter == 0)
                    cred = NULL;
            }
            char out[512];
            int n = scram_server_first(c->scram, cred, out, sizeof out);
            if (n < 0)
                sasl_failure(c, "temporary-auth-failure", NULL);
            else
                send_challenge(c, out, (size_t)n);
        }
    }
    conn_unref(c);
    free(q);
}

static void auth_scram(struct conn *c, enum scram_hash h, bool plus, const unsigned char *msg, size_t len)
{
    unsigned char cb[64];
    int cblen = -1;
    const char *cbtype = NULL;
    if (c->tls) {
        /* Bind to the type the client asks for (gs2 header "p=<type>,") when we can
         * compute it, else to the best this connection has. */
        cbtype = tls_best_binding(c->ssl);
        if (len > 2 && msg[0] == 'p' && msg[1] == '=') {
            const char *end = memchr(msg + 2, ',', len - 2);
            size_t tl = end ? (size_t)(end - (const char *)msg - 2) : 0;
            if (tl == strlen("tls-server-end-point") && memcmp(msg + 2, "tls-server-end-point", tl) == 0)
                cbtype = "tls-server-end-point";
            else if (tl == strlen("tls-exporter") && memcmp(msg + 2, "tls-exporter", tl) == 0)
                cbtype = "tls-exporter";
        }
        cblen = tls_channel_binding(c->ssl, cbtype, cb, sizeof cb);
        if (cblen < 0)
            cbtype = NULL;
    }
    if (plus && cbtype == NULL) {
        sasl_failure(c, "invalid-mechanism", NULL);
        return;
    }
    c->scram_hash = h;
    c->scram = scram_server_new(h, plus, cbtype, cblen > 0 ? cb : NULL, cblen > 0 ? (size_t)cblen : 0);
    const char *user = NULL, *cond = NULL;
    if (scram_server_start(c->scram, (const char *)msg, len, &user, &cond) == -1) {
        sasl_failure(c, cond ? cond : "malformed-request", NULL);
        return;
    }
    char err[128];
    char *prepped = jid_nodeprep(user, err, sizeof err);
    if (prepped == NULL) {
        sasl_failure(c, "not-authorized", NULL);
        return;
    }
    struct auth_query *q = xcalloc(1, sizeof *q);
    q->conn = c;
    q->gen = c->sasl_gen;
    mk_strlcpy(q->user, prepped, sizeof q->user);
    free(prepped);
    xfree(&c->user);   /* not authenticated yet: remember the name in sasl state only */
    conn_ref(c);
    /* keep the candidate user name for the final step */
    c->sasl_user = xstrdup(q->user);
    auth_lookup(c, q->user, scram_creds_loaded, q);
}

static void on_sasl_response(struct conn *c, struct xml_node *resp)
{
    if (c->scram == NULL) {
        sasl_failure(c, "malformed-request", "no exchange in progress");
        return;
    }
    char *text = xml_text(resp);
    unsigned char msg[4096];
    long n = strcmp(text, "=") == 0 ? 0 : b64_decode(text, strlen(text), msg, sizeof msg);
    free(text);
    if (n < 0) {
        sasl_failure(c, "incorrect-encoding", NULL);
        return;
    }
    char out[512];
    const char *cond = NULL;
    int m = scram_server_final(c->scram, (const char *)msg, (size_t)n, out, sizeof out, &cond);
    if (m < 0) {
        /* Only a wrong proof is a failed login; a malformed message says nothing of the password. */
        if (c->sasl_user != NULL && (cond == NULL || strcmp(cond, "not-authorized") == 0))
            auth_failed(c, c->sasl_user);
        log_info("auth_failed", "conn=%llu ip=%s user=%s@%s mech=%s reason=%s", (unsigned long long)c->serial, c->ip,
                 c->sasl_user ? c->sasl_user : "", c->domain, c->sasl_mech ? c->sasl_mech : "",
                 cond ? cond : "not-authorized");
        xfree(&c->sasl_user);
        if (cond == NULL || strcmp(cond, "not-authorized") == 0)
            sasl_denied(c, NULL);
        else
            sasl_failure(c, cond, NULL);
        return;
    }
    char *user = c->sasl_user;
    c->sasl_user = NULL;
    sasl_success(c, user, out);
    free(user);
}

static void on_sasl_auth(struct conn *c, struct xml_node *auth)
{
    if (c->user != NULL || c->scram != NULL || c->sasl_mech != NULL) {
        sasl_failure(c, "malformed-request", "an exchange is already in progress");
        return;
    }
    if (tls_needed(c)) {
        conn_stream_error(c, "policy-violation", "STARTTLS is required before authentication");
        return;
    }
    const char *mech = xml_attr(auth, "mechanism");
    if (mech == NULL) {
        sasl_failure(c, "invalid-mechanism", NULL);
        return;
    }
    char *text = xml_text(auth);
    unsigned char msg[4096];
    long n;
    if (text[0] == '\0' || strcmp(text, "=") == 0)
        n = 0;
    else
        n = b64_decode(text, strlen(text), msg, sizeof msg - 1);
    free(text);
    if (n < 0) {
        sasl_failure(c, "incorrect-encoding", NULL);
        return;
    }
    msg[n] = '\0';
    c->sasl_gen++;          /* a new exchange: answers to any earlier lookup are stale */
    c->sasl_mech = xstrdup(mech);
    if (strcmp(mech, "PLAIN") == 0)
        auth_plain(c, msg, (size_t)n);
    else if (strcmp(mech, "SCRAM-SHA-1") == 0)
        auth_scram(c, SCRAM_SHA1, false, msg, (size_t)n);
    else if (strcmp(mech, "SCRAM-SHA-256") == 0)
        auth_scram(c, SCRAM_SHA256, false, msg, (size_t)n);
    else if (strcmp(mech, "SCRAM-SHA-1-PLUS") == 0 && c->tls)
        auth_scram(c, SCRAM_SHA1, true, msg, (size_t)n);
    else if (strcmp(mech, "SCRAM-SHA-256-PLUS") == 0 && c->tls)
        auth_scram(c, SCRAM_SHA256, true, msg, (size_t)n);
    else if (strcmp(mech, "ANONYMOUS") == 0 && c->c2s->cfg->modules.anonymous) {
        unsigned char rnd[8];
        char user[32];
        RAND_bytes(rnd, sizeof rnd);
        snprintf(user, sizeof user, "anon-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4],
                 rnd[5], rnd[6], rnd[7]);
        sasl_success(c, user, NULL);
    } else
        sasl_failure(c, "invalid-mechanism", NULL);
}

/* Binding ---------------------------------------------------------------------------------- */

/* The bind result with the session's full JID; the stream is bound from here on. */
static void bind_result(struct conn *c, const char *id)
{
    struct xml_node *r = xml_node_new("iq", XML_NS_CLIENT);
    xml_set_attr(r, "type", "result");
    if (id != NULL)
        xml_set_attr(r, "id", id);
    struct xml_node *b = xml_add_child(r, "bind", NS_BIND);
    struct xml_node *j = xml_add_child(b, "jid", NULL);
    xml_add_text(j, c->sess->full, strlen(c->sess->full));
    conn_send(c, r);
    xml_free(&r);
    c->state = CONN_STATE_SESSION;
}

static void on_bind_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct conn *c = w->data;
    log_warn("bind_unconfirmed", "conn=%llu jid=%s wait_s=%.0f", (unsigned long long)c->serial,
             c->sess != NULL ? c->sess->full : "", C2S_BIND_CONFIRM_S);
    stream_bind_confirmed(c);
}

static void on_bind(struct conn *c, struct xml_node *iq)
{
    struct xml_node *bind = xml_child(iq, "bind", NS_BIND);
    const char *type = xml_attr(iq, "type");
    if (bind == NULL || type == NULL || strcmp(type, "set") != 0) {
        struct xml_node *e = stanza_error_reply(iq, "cancel", "not-allowed", "bind a resource first");
        if (e != NULL) {
            xml_set_attr(e, "from", NULL);
            xml_set_attr(e, "to", NULL);
            conn_send(c, e);
            xml_free(&e);
        }
        return;
    }
    struct xml_node *res = xml_child(bind, "resource", NULL);
    char *want = res ? xml_text(res) : xstrdup("");
    char *resource = NULL;
    if (want[0] != '\0') {
        char err[128];
        resource = jid_resourceprep(want, err, sizeof err);
        if (resource == NULL) {
            free(want);
            struct xml_node *e = stanza_error_reply(iq, "modify", "bad-request", "invalid resource");
            xml_set_attr(e, "from", NULL);
            xml_set_attr(e, "to", NULL);
            conn_send(c, e);
            xml_free(&e);
            return;
        }
    } else {
        unsigned char rnd[8];
        char gen[40];
        RAND_bytes(rnd, sizeof rnd);
        snprintf(gen, sizeof gen, "mk-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4],
                 rnd[5], rnd[6], rnd[7]);
        resource = xstrdup(gen);
    }
    free(want);
    c->bind_wait = true;   /* the login's SessionOpen asks the router to confirm it */
    struct session *sess = session_new(c->c2s, c, resource, 0);
    free(resource);
    if (sess == NULL || !sess->confirm_asked)
        c->bind_wait = false;   /* no router to answer: nothing to wait for */
    if (sess == NULL) {
        struct xml_node *e = stanza_error_reply(iq, "cancel", "not-allowed", "cannot bind that resource");
        xml_set_attr(e, "from", NULL);
        xml_set_attr(e, "to", NULL);
        conn_send(c, e);
        xml_free(&e);
        return;
    }
    if (!c->bind_wait) {
        bind_result(c, xml_attr(iq, "id"));
        return;
    }
    /* A client told it is bound may be sent stanzas from anywhere at once: the router
     * of its JID must know the session first (c2s/session.c asked it to confirm). */
    c->bind_iq_id = xml_attr(iq, "id") ? xstrdup(xml_attr(iq, "id")) : NULL;
    ev_timer_init(&c->bind_timer, on_bind_timeout, C2S_BIND_CONFIRM_S, 0.);
    c->bind_timer.data = c;
    ev_timer_start(c->c2s->loop, &c->bind_timer);
}

static void on_stanza(struct conn *c, struct xml_node **np);

void stream_bind_release(struct conn *c)
{
    if (c->bind_wait)
        ev_timer_stop(c->c2s->loop, &c->bind_timer);
    c->bind_wait = false;
    for (size_t i = 0; i < c->nbind_held; i++)
        xml_free(&c->bind_held[i]);
    xfree(&c->bind_held);
    c->nbind_held = 0;
    xfree(&c->bind_iq_id);
}

void stream_bind_confirmed(struct conn *c)
{
    if (!c->bind_wait || c->closed || c->sess == NULL)
        return;
    ev_timer_stop(c->c2s->loop, &c->bind_timer);
    c->bind_wait = false;
    bind_result(c, c->bind_iq_id);
    xfree(&c->bind_iq_id);
    struct xml_node **held = c->bind_held;
    size_t n = c->nbind_held;
    c->bind_held = NULL;
    c->nbind_held = 0;
    conn_ref(c);
    for (size_t i = 0; i < n; i++) {
        if (!c->closed && c->state != CONN_STATE_CLOSING && !c->bind_wait)
            on_stanza(c, &held[i]);
        xml_free(&held[i]);
    }
    free(held);
    conn_unref(c);
    conn_resume_input(c);
}

/* Events ------------------------------------------------------------------------------------ */

static void on_stanza(struct conn *c, struct xml_node **np)
{
    struct xml_node *n = *np;
    if (c->bind_wait) {
        /* Sent behind the bind before its result: handled after it, in order. Presence
         * held here counts against limits.max_held_presence as it does while the
         * roster loads (session.c): the same start-up, the same policy. */
        if (strcmp(n->name, "presence") == 0) {
            size_t held = 0;
            for (size_t i = 0; i < c->nbind_held; i++)
                held += strcmp(c->bind_held[i]->name, "presence") == 0;
            if (held >= c->c2s->cfg->limits.max_held_presence) {
                log_warn("held_presence_limit", "jid=%s held=%zu", c->sess != NULL ? c->sess->full : "", held);
                metric_inc(c->c2s->m_limit_refusals, "held_presence");
                conn_stream_error(c, "policy-violation", "too much presence before the roster was loaded");
                return;
            }
        }
        c->bind_held = xrealloc(c->bind_held, (c->nbind_held + 1) * sizeof *c->bind_held);
        c->bind_held[c->nbind_held++] = n;
        *np = NULL;
        return;
    }
    metric_inc(c->c2s->m_stanzas_in, n->name);
    switch (c->state) {
    case CONN_STATE_AUTH:
        if (strcmp(n->ns, NS_TLS) == 0 && strcmp(n->name, "starttls") == 0) {
            if (c->tls || c->c2s->tls_ctx == NULL || c->ws != NULL) {
                conn_write_str(c, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
                conn_close_stream(c);
                return;
            }
            conn_write_str(c, "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
            c->starttls_pending = true;
            xml_parser_reset(c->parser);
            return;
        }
        if (strcmp(n->ns, NS_SASL) == 0) {
            if (strcmp(n->name, "auth") == 0)
                on_sasl_auth(c, n);
            else if (strcmp(n->name, "response") == 0)
                on_sasl_response(c, n);
            else if (strcmp(n->name, "abort") == 0) {
                xfree(&c->sasl_user);
                sasl_failure(c, "aborted", NULL);
            } else
                conn_stream_error(c, "unsupported-stanza-type", NULL);
            return;
        }
        if (strcmp(n->ns, XML_NS_CLIENT) == 0 && strcmp(n->name, "iq") == 0 && !tls_needed(c)) {
            enum disp d = c2s_modules_preauth_iq(c, n);
            if (d == DISP_DONE)
                return;
        }
        if (tls_needed(c))
            conn_stream_error(c, "policy-violation", "STARTTLS is required");
        else
            conn_stream_error(c, "not-authorized", NULL);
        return;
    case CONN_STATE_BIND:
        if (strcmp(n->ns, NS_SM) == 0) {
            sm_on_element(c, n);   /* <resume/> takes the place of binding */
            return;
        }
        if (strcmp(n->ns, XML_NS_CLIENT) == 0 && strcmp(n->name, "iq") == 0) {
            on_bind(c, n);
            return;
        }
        conn_stream_error(c, "not-authorized", "bind a resource first");
        return;
    case CONN_STATE_SESSION:
        if (strcmp(n->ns, NS_SM) == 0) {
            sm_on_element(c, n);
            return;
        }
        if (strcmp(n->ns, XML_NS_CLIENT) != 0) {
            if (c->sess != NULL && c2s_modules_nonza(c->sess, n) == DISP_DONE)
                return;
            conn_stream_error(c, "invalid-namespace", NULL);
            return;
        }
        if (strcmp(n->name, "message") != 0 && strcmp(n->name, "presence") != 0 && strcmp(n->name, "iq") != 0) {
            conn_stream_error(c, "unsupported-stanza-type", NULL);
            return;
        }
        if (c->sess != NULL) {
            sm_handled(c->sess);
            session_on_stanza(c->sess, np);
        }
        return;
    default:
        conn_stream_error(c, "not-authorized", NULL);
        return;
    }
}

void stream_on_event(void *ud, enum xml_event_kind kind, struct xml_node **node)
{
    struct conn *c = ud;
    if (c->closed || c->state == CONN_STATE_CLOSING)
        return;
    switch (kind) {
    case XML_EVENT_STREAM_OPEN:
        on_stream_open(c, *node);
        break;
    case XML_EVENT_STANZA:
        on_stanza(c, node);
        break;
    case XML_EVENT_STREAM_CLOSE:
        conn_close_stream(c);
        break;
    case XML_EVENT_ERROR:
        break;   /* conn_read reports it */
    }
}
