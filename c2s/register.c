/* c2s/register.c - the "register" module: in-band registration (XEP-0077): account creation before authentication, password change and cancellation after. */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "authlimit.h"
#include "c2s.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "util.h"
#include "workpool.h"

#define REGISTER_INSTRUCTIONS "Choose a username and password to register with this server."

/* The 8 credential columns of STORE_USER_CREATE / _SET_PASSWORD, as text. */
struct reg_creds {
    struct scram_cred sha1, sha256;
    char iter1[16], iter256[16];
};

/* Derives both SCRAM credentials; -1 when the password is empty or not SASLprep input. */
static int creds_make(const char *password, struct reg_creds *rc)
{
    if (!password || !*password)
        return -1;
    if (scram_cred_make(SCRAM_SHA1, password, SCRAM_DEFAULT_ITER, &rc->sha1) == -1 ||
        scram_cred_make(SCRAM_SHA256, password, SCRAM_DEFAULT_ITER, &rc->sha256) == -1)
        return -1;
    snprintf(rc->iter1, sizeof rc->iter1, "%u", rc->sha1.iter);
    snprintf(rc->iter256, sizeof rc->iter256, "%u", rc->sha256.iter);
    return 0;
}

/* Deriving credentials is two PBKDF2 runs (milliseconds): done on c2s->kdf_pool,
 * then the step that needs them runs on the loop (next). */
struct creds_job {
    char *password;             /* cleansed and freed with the job */
    struct reg_creds rc;
    int made;                   /* creds_make's result */
    void (*next)(struct creds_job *job);
    struct create_ctx *cc;      /* before authentication */
    struct feat_ctx *ctx;       /* after it */
};

static void creds_work(void *arg)
{
    struct creds_job *job = arg;
    job->made = creds_make(job->password, &job->rc);
}

static void creds_job_free(struct creds_job *job)
{
    OPENSSL_cleanse(job->password, strlen(job->password));
    free(job->password);
    OPENSSL_cleanse(&job->rc, sizeof job->rc);
    free(job);
}

static void creds_done(void *arg)
{
    struct creds_job *job = arg;
    job->next(job);
    creds_job_free(job);
}

/* Queues the derivation of password's credentials, then next(job) on the loop.
 * Borrows password (copied). Returns 0, or -1 when the pool is full (the caller
 * answers 'wait'; nothing was kept). */
static int creds_make_async(struct c2s *s, const char *password, void (*next)(struct creds_job *),
                            struct create_ctx *cc, struct feat_ctx *ctx)
{
    struct creds_job *job = xcalloc(1, sizeof *job);
    job->password = xstrdup(password);
    job->next = next;
    job->cc = cc;
    job->ctx = ctx;
    if (workpool_submit(s->kdf_pool, creds_work, creds_done, job) == -1) {
        metric_inc(s->m_kdf_refused, NULL);
        job->cc = NULL;
        job->ctx = NULL;
        creds_job_free(job);
        return -1;
    }
    return 0;
}

static void creds_params(const struct reg_creds *rc, const char **p)
{
    p[0] = rc->sha1.salt;
    p[1] = rc->iter1;
    p[2] = rc->sha1.stored_key;
    p[3] = rc->sha1.server_key;
    p[4] = rc->sha256.salt;
    p[5] = rc->iter256;
    p[6] = rc->sha256.stored_key;
    p[7] = rc->sha256.server_key;
}

static char *child_text(const struct xml_node *q, const char *name)
{
    struct xml_node *c = xml_child(q, name, NS_REGISTER);
    return c ? xml_text(c) : NULL;
}

/* --- before authentication ---------------------------------------------------------------- */

static void preauth_error(struct conn *c, const struct xml_node *iq, const char *type, const char *cond,
                          const char *text)
{
    struct xml_node *e = stanza_error_reply(iq, type, cond, text);
    if (e) {
        conn_send(c, e);
        xml_free(&e);
    }
}

struct create_ctx {
    struct conn *conn;          /* held with conn_ref while the store works */
    struct xml_node *req;
    char *user;
};

static void create_ctx_free(struct create_ctx *cc)
{
    conn_unref(cc->conn);
    xml_free(&cc->req);
    free(cc->user);
    free(cc);
}

static void create_cb(void *ud, const struct store_result *res)
{
    struct create_ctx *cc = ud;
    struct conn *c = cc->conn;
    bool created = res->ok == 0 && res->affected > 0;
    authlimit_register_end(c->c2s->authlimit, c->ip, created, mk_mono_us());
    if (created)
        c2s_auth_event(c->c2s, MK__AUTH_EVENT_KIND__AUTH_EVENT_REGISTERED, c->ip, NULL, true);
    if (!c->closed) {
        if (res->ok != 0) {
            log_warn("register_failed", "user=%s error=\"%s\"", cc->user, res->error ? res->error : "");
            /* A refusal (the store's queue is full) is back-pressure: say so. */
            preauth_error(c, cc->req, "wait", res->refused ? "resource-constraint" : "internal-server-error", NULL);
        } else if (res->affected == 0) {
            preauth_error(c, cc->req, "cancel", "conflict", "username taken");
        } else {
            log_info("user_registered", "user=%s domain=%s", cc->user, c->domain);
            struct xml_node *r = iq_result(cc->req);
            conn_send(c, r);
            xml_free(&r);
        }
    }
    create_ctx_free(cc);
}

/* The credentials of a new account are ready: store it. */
static void create_with_creds(struct creds_job *job)
{
    struct create_ctx *cc = job->cc;
    struct conn *c = cc->conn;
    if (c->closed || job->made == -1) {
        authlimit_register_end(c->c2s->authlimit, c->ip, false, mk_mono_us());
        if (!c->closed)
            preauth_error(c, cc->req, "modify", "not-acceptable", "invalid password");
        create_ctx_free(cc);
        return;
    }
    const char *params[10] = {cc->user, c->domain};
    creds_params(&job->rc, params + 2);
    store_query(c->c2s->store, STORE_USER_CREATE, params, 10, create_cb, cc);
}

static void form(struct xml_node *q)
{
    struct xml_node *ins = xml_add_child(q, "instructions", NS_REGISTER);
    xml_add_text(ins, REGISTER_INSTRUCTIONS, strlen(REGISTER_INSTRUCTIONS));
    xml_add_child(q, "username", NS_REGISTER);
    xml_add_child(q, "password", NS_REGISTER);
}

/* An IQ before authentication: account creation (jabber:iq:register) only. */
static enum disp register_preauth(struct conn *c, struct xml_node *iq)
{
    struct xml_node *q = xml_child(iq, "query", NS_REGISTER);
    const char *type = xml_attr(iq, "type");
    if (!q || !type)
        return DISP_PASS;
    if (strcmp(type, "get") != 0 && strcmp(type, "set") != 0)
        return DISP_DONE;
    if (!c->c2s->cfg->modules.register_enabled) {
        preauth_error(c, iq, "cancel", "service-unavailable", NULL);
        return DISP_DONE;
    }
    if (strcmp(type, "get") == 0) {
        struct xml_node *r = iq_result(iq);
        form(xml_append(r, xml_node_new("query", NS_REGISTER)));
        conn_send(c, r);
        xml_free(&r);
        return DISP_DONE;
    }
    if (xml_child(q, "remove", NS_REGISTER)) {
        preauth_error(c, iq, "auth", "not-authorized", NULL);
        return DISP_DONE;
    }
    char *username = child_text(q, "username");
    char *password = child_text(q, "password");
    char err[128];
    char *user = NULL;
    if (!username || !*username || !password || !*password) {
        preauth_error(c, iq, "modify", "not-acceptable", "username and password are required");
    } else if (!(user = jid_nodeprep(username, err, sizeof err)) || !*user) {
        preauth_error(c, iq, "modify", "bad-request", "invalid username");
    } else if (!c->domain) {
        preauth_error(c, iq, "cancel", "service-unavailable", NULL);
    } else if (!authlimit_register_begin(c->c2s->authlimit, c->ip, mk_mono_us())) {
        /* As ejabberd answers its registration_timeout (limits.register_per_ip). */
        preauth_error(c, iq, "wait", "resource-constraint", "too many accounts registered from your address; "
                      "try again later");
    } else {
        struct create_ctx *cc = xcalloc(1, sizeof *cc);
        cc->conn = c;
        cc->req = xml_clone(iq);
        cc->user = user;
        user = NULL;
        conn_ref(c);
        if (creds_make_async(c->c2s, password, create_with_creds, cc, NULL) == -1) {
            authlimit_register_end(c->c2s->authlimit, c->ip, false, mk_mono_us());
            preauth_error(c, iq, "wait", "resource-constraint", "the server is busy; try again shortly");
            create_ctx_free(cc);
        }
    }
    if (password)
        memset(password, 0, strlen(password));
    free(username);
    free(password);
    free(user);
    return DISP_DONE;
}

/* --- after authentication ----------------------------------------------------------------- */

static void passwd_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_session(ctx);
    if (sess) {
        if (res->ok != 0)
            session_send_error(sess, ctx->req, "wait", res->refused ? "resource-constraint" : "internal-server-error",
                               NULL);
        else
            feat_reply(sess, ctx->req, NULL);
    }
    feat_ctx_free(&ctx);
}

static void remove_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_session(ctx);
    if (res->ok != 0) {
        if (sess)
            session_send_error(sess, ctx->req, "wait", "internal-server-error", NULL);
        feat_ctx_free(&ctx);
        return;
    }
    log_info("user_removed", "user=%s", ctx->arg);
    feat_push_registrations_changed(ctx->c2s, ctx->arg);   /* its XEP-0357 registrations went with it */
    /* Every other session of the account is closed through the push. */
    struct xml_node *q = xml_node_new("query", NS_REGISTER);
    xml_add_child(q, "remove", NS_REGISTER);
    feat_route_push(ctx->c2s, ctx->arg, q);
    xml_free(&q);
    if (sess) {
        feat_reply(sess, ctx->req, NULL);
        conn_close_stream(sess->conn);
    }
    feat_ctx_free(&ctx);
}

/* The new password's credentials are ready: store them. */
static void passwd_with_creds(struct creds_job *job)
{
    struct feat_ctx *ctx = job->ctx;
    struct session *sess = feat_ctx_session(ctx);
    if (sess == NULL) {
        feat_ctx_free(&ctx);
        return;
    }
    if (job->made == -1) {
        session_send_error(sess, ctx->req, "modify", "not-acceptable", "invalid password");
        feat_ctx_free(&ctx);
        return;
    }
    const char *params[10] = {sess->jid.local, sess->jid.domain};
    creds_params(&job->rc, params + 2);
    store_query(ctx->c2s->store, STORE_USER_SET_PASSWORD, params, 10, passwd_cb, ctx);
}

/* The user's own account: registration details, password change, cancellation. */
static void register_account(struct session *sess, const struct xml_node *iq)
{
    struct c2s *s = sess->conn->c2s;
    struct xml_node *q = xml_child(iq, "query", NS_REGISTER);
    if (!q) {
        session_send_error(sess, iq, "modify", "bad-request", NULL);
        return;
    }
    if (!s->cfg->modules.register_enabled) {
        session_send_error(sess, iq, "cancel", "service-unavailable", NULL);
        return;
    }
    if (strcmp(xml_attr(iq, "type"), "get") == 0) {
        struct xml_node *r = xml_node_new("query", NS_REGISTER);
        xml_add_child(r, "registered", NS_REGISTER);
        xml_add_text(xml_add_child(r, "username", NS_REGISTER), sess->jid.local, strlen(sess->jid.local));
        xml_add_child(r, "password", NS_REGISTER);
        feat_reply(sess, iq, r);
        return;
    }
    if (xml_child(q, "remove", NS_REGISTER)) {
        struct feat_ctx *ctx = feat_ctx_new(sess, iq);
        ctx->arg = xstrdup(sess->bare);
        const char *params[] = {sess->jid.local, sess->jid.domain};
        store_query(s->store, STORE_USER_DELETE, params, 2, remove_cb, ctx);
        return;
    }
    char *username = child_text(q, "username");
    char *password = child_text(q, "password");
    char err[128];
    char *user = username ? jid_nodeprep(username, err, sizeof err) : NULL;
    if (!password || !*password) {
        session_send_error(sess, iq, "modify", "not-acceptable", "password is required");
    } else if (username && (!user || strcmp(user, sess->jid.local) != 0)) {
        session_send_error(sess, iq, "modify", "bad-request", "username is not yours");
    } else {
        struct feat_ctx *ctx = feat_ctx_new(sess, iq);
        if (creds_make_async(s, password, passwd_with_creds, NULL, ctx) == -1) {
            session_send_error(sess, iq, "wait", "resource-constraint", "the server is busy; try again shortly");
            feat_ctx_free(&ctx);
        }
    }
    if (password)
        memset(password, 0, strlen(password));
    free(username);
    free(password);
    free(user);
}

static enum disp register_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    if (target && strcmp(target, sess->bare) != 0)
        session_send_error(sess, iq, "cancel", "service-unavailable", NULL);
    else
        register_account(sess, iq);
    return DISP_DONE;
}

/* The account was cancelled from another session: close this one. */
static void register_removed_in(struct session *sess, struct xml_node *iq)
{
    struct xml_node *q = xml_first_elem(iq);
    if (xml_child(q, "remove", NULL))
        conn_stream_error(sess->conn, "not-authorized", "account removed");
}

/* --- the module ---------------------------------------------------------------------------- */

static bool register_advertised(const struct c2s *s, const char *domain)
{
    (void)domain;
    return s->cfg->modules.register_enabled;
}

static void register_stream_features(struct conn *c, struct xml_node *features, bool authenticated)
{
    if (!authenticated && c->c2s->cfg->modules.register_enabled)
        xml_add_child(features, "register", NS_REGISTER_F);
}

static const struct c2s_iq_handler iqs[] = {
    {NS_REGISTER, 0, register_iq, register_removed_in},
    {NULL, 0, NULL, NULL},
};

static const char *const server_features[] = {NS_REGISTER, NULL};

const struct c2s_module register_module = {
    .name = "register",
    .server_features = server_features,
    .advertised = register_advertised,
    .stream_features = register_stream_features,
    .iqs = iqs,
    .preauth_iq = register_preauth,
};
