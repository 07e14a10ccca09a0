/* c2s/features.c - the feature modules' entry points called by session.c and stream.c, and their shared helpers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "features.h"
#include "log.h"
#include "util.h"

/* --- helpers ------------------------------------------------------------------------- */

struct feat_ctx *feat_ctx_new(struct session *sess, const struct xml_node *req)
{
    struct feat_ctx *ctx = xcalloc(1, sizeof *ctx);
    ctx->c2s = sess->conn->c2s;
    ctx->sid = sess->id;
    ctx->req = req ? xml_clone(req) : NULL;
    return ctx;
}

void feat_ctx_free(struct feat_ctx **cp)
{
    struct feat_ctx *ctx = *cp;
    if (!ctx)
        return;
    xml_free(&ctx->req);
    free(ctx->arg);
    free(ctx);
    *cp = NULL;
}

struct session *feat_ctx_session(const struct feat_ctx *ctx)
{
    struct session *sess = session_by_id(ctx->c2s, ctx->sid);
    if (!sess || !sess->conn || sess->conn->closed || !sess->feat)
        return NULL;
    return sess;
}

int feat_split(const char *bare, char **local, char **domain)
{
    struct jid j;
    char err[128];
    if (!bare || jid_parse(bare, &j, err, sizeof err) == -1)
        return -1;
    *local = j.local ? xstrdup(j.local) : NULL;
    *domain = xstrdup(j.domain);
    jid_release(&j);
    return 0;
}

char *feat_bare_of(const char *jid)
{
    const char *slash = strchr(jid, '/');
    return slash ? xstrndup(jid, (size_t)(slash - jid)) : xstrdup(jid);
}

void feat_reply(struct session *sess, const struct xml_node *req, struct xml_node *payload)
{
    struct xml_node *res = iq_result(req);
    if (payload)
        xml_append(res, payload);
    conn_send(sess->conn, res);
    xml_free(&res);
}

void feat_route_push(struct c2s *s, const char *bare, const struct xml_node *payload)
{
    static uint64_t counter;
    char id[48];
    snprintf(id, sizeof id, "push-%llx", (unsigned long long)++counter);
    struct xml_node *iq = xml_node_new("iq", XML_NS_CLIENT);
    xml_set_attr(iq, "type", "set");
    xml_set_attr(iq, "id", id);
    xml_set_attr(iq, "from", bare);
    xml_set_attr(iq, "to", bare);
    xml_append(iq, xml_clone(payload));
    session_route(s, iq);
    xml_free(&iq);
}

bool feat_blocked(const struct session *sess, const char *jid)
{
    if (!jid || !*jid || sess->nblocked == 0)
        return false;
    char *bare = feat_bare_of(jid);
    const char *at = strchr(bare, '@');
    const char *domain = at ? at + 1 : bare;
    bool hit = false;
    for (size_t i = 0; i < sess->nblocked && !hit; i++) {
        const char *b = sess->blocked[i];
        hit = strcmp(b, jid) == 0 || strcmp(b, bare) == 0 || strcmp(b, domain) == 0;
    }
    free(bare);
    return hit;
}

bool feat_strv_has(char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

void feat_strv_add(char ***v, size_t *n, const char *s)
{
    if (feat_strv_has(*v, *n, s))
        return;
    *v = xrealloc(*v, (*n + 1) * sizeof **v);
    (*v)[(*n)++] = xstrdup(s);
}

bool feat_strv_remove(char ***v, size_t *n, const char *s)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcmp((*v)[i], s) == 0) {
            free((*v)[i]);
            (*v)[i] = (*v)[--*n];
            return true;
        }
    }
    return false;
}

void feat_strv_free(char ***v, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        free((*v)[i]);
    free(*v);
    *v = NULL;
    *n = 0;
}

struct xml_node *feat_parse_routed(const Mk__Route *r, char *err, size_t errlen)
{
    /* The bytes were serialized with jabber:client implied: parse them inside a
     * wrapper declaring it, so the stanza's elements get their namespace back. */
    static const char open[] = "<w xmlns='jabber:client'>", close[] = "</w>";
    struct buf b;
    buf_init(&b);
    buf_append(&b, open, sizeof open - 1);
    buf_append(&b, r->xml.data, r->xml.len);
    buf_append(&b, close, sizeof close - 1);
    struct xml_node *w = xml_parse_document(b.data, b.len, err, errlen);
    buf_release(&b);
    struct xml_node *st = w ? xml_first_elem(w) : NULL;
    if (st)
        xml_remove(st);
    else if (w)
        snprintf(err, errlen, "no stanza");
    xml_free(&w);
    return st;
}

/* --- entry points ---------------------------------------------------------------------- */

void features_session_started(struct session *sess)
{
    if (sess->feat)
        return;
    sess->feat = xcalloc(1, sizeof *sess->feat);
    sess->feat->roster_pending = true;
    sess->feat->block_pending = true;
    roster_load(sess);
    blocking_load(sess);
}

void features_session_ended(struct session *sess)
{
    struct feat_session *f = sess->feat;
    if (!f)
        return;
    presence_session_end(sess);
    for (size_t i = 0; i < f->nheld; i++)
        xml_free(&f->held[i]);
    free(f->held);
    feat_strv_free(&f->online, &f->nonline);
    free(f);
    sess->feat = NULL;
    roster_free_all(sess);
    feat_strv_free(&sess->directed, &sess->ndirected);
    feat_strv_free(&sess->blocked, &sess->nblocked);
    xml_packed_free(&sess->presence);
}

enum disp features_iq(struct session *sess, struct xml_node *iq)
{
    struct c2s *s = sess->conn->c2s;
    const char *to = xml_attr(iq, "to");
    const char *type = xml_attr(iq, "type");
    char *target = NULL;        /* bare JID of an account, NULL for the server itself */
    bool no_to = !to || !*to;

    if (!sess->feat)
        return DISP_PASS;
    if (!no_to) {
        struct jid j;
        char err[128];
        if (jid_parse(to, &j, err, sizeof err) == -1) {
            session_send_error(sess, iq, "modify", "jid-malformed", NULL);
            return DISP_DONE;
        }
        bool local = cfg_is_local_domain(s->cfg, j.domain);
        if (j.resource || !local) {
            jid_release(&j);
            return DISP_PASS;   /* a full JID (or another server): session.c routes it */
        }
        if (j.local)
            target = jid_to_string(&j, true);
        jid_release(&j);
    } else {
        target = xstrdup(sess->bare);  /* RFC 6120 10.3.3: the user's own account */
    }

    if (!type || (strcmp(type, "get") != 0 && strcmp(type, "set") != 0)) {
        /* Results and errors addressed to the server or an account (answers to roster
         * and block pushes among them) end here. */
        free(target);
        return DISP_DONE;
    }
    struct xml_node *q = xml_first_elem(iq);
    if (!q) {
        session_send_error(sess, iq, "modify", "bad-request", NULL);
        free(target);
        return DISP_DONE;
    }
    bool own = target && strcmp(target, sess->bare) == 0;
    if (strcmp(q->ns, NS_ROSTER) == 0) {
        if (target && !own)
            session_send_error(sess, iq, "auth", "forbidden", NULL);
        else
            roster_iq(sess, iq);
        free(target);
        return DISP_DONE;
    }
    if (strcmp(q->ns, NS_REGISTER) == 0) {
        if (target && !own)
            session_send_error(sess, iq, "cancel", "service-unavailable", NULL);
        else
            register_iq(sess, iq);
        free(target);
        return DISP_DONE;
    }
    /* Version and time belong to the server; with no 'to' the client means it. */
    if (no_to && (strcmp(q->ns, NS_VERSION) == 0 || strcmp(q->ns, NS_TIME) == 0 || strcmp(q->ns, NS_PING) == 0))
        xfree(&target);
    enum disp d = iq_server(sess, iq, target);
    free(target);
    return d;
}

enum disp features_presence_out(struct session *sess, struct xml_node *pres)
{
    if (!sess->feat)
        return DISP_PASS;
    return presence_out(sess, pres);
}

enum disp features_message_out(struct session *sess, struct xml_node *msg)
{
    const char *to = xml_attr(msg, "to");
    if (!sess->feat || !to || !feat_blocked(sess, to))
        return DISP_PASS;
    /* XEP-0191 3.4: a message to a blocked JID is refused with <blocked/>. */
    struct xml_node *err = stanza_error_reply(msg, "cancel", "not-acceptable", NULL);
    if (err) {
        struct xml_node *e = xml_child(err, "error", NULL);
        if (e)
            xml_add_child(e, "blocked", NS_BLOCKING_ERR);
        conn_send(sess->conn, err);
        xml_free(&err);
    }
    return DISP_DONE;
}

/* An internal push: an IQ set from the user's bare JID to itself (only the server makes
 * those: a client's from is always its full JID). */
static bool inbound_push(struct session *sess, const Mk__Route *r)
{
    char err[128];
    struct xml_node *iq = feat_parse_routed(r, err, sizeof err);
    if (!iq) {
        log_warn("push_parse_failed", "session=%llu error=\"%s\"", (unsigned long long)sess->id, err);
        return false;
    }
    struct xml_node *q = xml_first_elem(iq);
    if (q && strcmp(q->ns, NS_ROSTER) == 0)
        roster_push_in(sess, iq);
    else if (q && strcmp(q->ns, NS_BLOCKING) == 0)
        blocking_push_in(sess, iq);
    else if (q && strcmp(q->ns, NS_REGISTER) == 0 && xml_child(q, "remove", NULL))
        register_removed_in(sess);
    xml_free(&iq);
    return false;
}

bool features_inbound(struct session *sess, const Mk__Route *r)
{
    if (!sess->feat)
        return true;
    const char *from = r->from ? r->from : "";
    if (r->kind == MK__STANZA_KIND__STANZA_KIND_IQ && strcmp(from, sess->bare) == 0 && r->to &&
        strcmp(r->to, sess->bare) == 0 && r->type && strcmp(r->type, "set") == 0)
        return inbound_push(sess, r);
    if (feat_blocked(sess, from))
        return false;
    if (r->kind == MK__STANZA_KIND__STANZA_KIND_PRESENCE)
        return presence_in(sess, r);
    return true;
}

enum disp features_preauth_iq(struct conn *c, struct xml_node *iq)
{
    return register_preauth(c, iq);
}

void features_stream_features(struct conn *c, struct xml_node *features, bool authenticated)
{
    if (!authenticated) {
        if (c->c2s->cfg->modules.register_enabled)
            xml_add_child(features, "register", NS_REGISTER_F);
        return;
    }
    xml_add_child(features, "ver", NS_ROSTERVER);
    xml_add_child(features, "sub", NS_PREAPPROVAL);
}
