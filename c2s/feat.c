/* c2s/feat.c - the helpers the c2s feature modules share (a leaf: it includes no module). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "feat.h"
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
    if (!sess || !sess->conn || sess->conn->closed)
        return NULL;
    return sess;
}

struct session *feat_ctx_answerable(struct feat_ctx *ctx, const struct store_result *res)
{
    struct session *sess = feat_ctx_session(ctx);
    if (sess != NULL && res->ok != 0) {
        session_send_error(sess, ctx->req, "wait", "internal-server-error", NULL);
        return NULL;
    }
    return sess;
}

const char *feat_col(const struct store_result *res, size_t row, size_t c)
{
    return c < res->ncols ? res->vals[row * res->ncols + c] : NULL;
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

void feat_push_registrations_changed(struct c2s *s, const char *bare)
{
    Mk__PushRegistrationsChanged prc = MK__PUSH_REGISTRATIONS_CHANGED__INIT;
    prc.user = (char *)bare;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_PUSH_REGISTRATIONS;
    e.push_registrations = &prc;
    const struct cfg_proc *procs[64];
    size_t n = cfg_procs_of_role(s->cfg, CFG_ROLE_PUSHER, procs, MK_ARRAY_LEN(procs));
    for (size_t i = 0; i < n; i++)
        node_send(s->node, procs[i]->id, &e);
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

bool feat_no_store(const struct xml_node *msg)
{
    return xml_child(msg, "no-store", NS_HINTS) != NULL || xml_child(msg, "no-permanent-store", NS_HINTS) != NULL;
}

bool feat_has_body(const struct xml_node *msg)
{
    for (struct xml_node *b = xml_child(msg, "body", XML_NS_CLIENT); b != NULL; b = xml_next(b, "body", XML_NS_CLIENT))
        for (struct xml_node *t = b->first_child; t != NULL; t = t->next)
            if (t->name == NULL && t->text_len > 0)
                return true;
    return false;
}

/* --- session data several modules read ------------------------------------------------------- */

struct roster_item *feat_roster_find(const struct session *sess, const char *bare)
{
    for (struct roster_item *it = sess->roster; it; it = it->next)
        if (strcmp(it->jid, bare) == 0)
            return it;
    return NULL;
}

enum roster_sub feat_roster_sub_parse(const char *s)
{
    if (!s)
        return ROSTER_SUB_NONE;
    if (strcmp(s, "to") == 0)
        return ROSTER_SUB_TO;
    if (strcmp(s, "from") == 0)
        return ROSTER_SUB_FROM;
    if (strcmp(s, "both") == 0)
        return ROSTER_SUB_BOTH;
    return ROSTER_SUB_NONE;
}

enum roster_sub feat_roster_sub(const struct roster_item *it)
{
    return it ? feat_roster_sub_parse(it->subscription) : ROSTER_SUB_NONE;
}

void feat_send_presence(struct session *sess, const char *to)
{
    if (!sess->available || !sess->presence)
        return;
    struct xml_node *p = xml_clone(xml_packed_root(sess->presence));
    xml_set_attr(p, "from", sess->full);
    xml_set_attr(p, "to", to);
    session_route(sess->conn->c2s, p);
    xml_free(&p);
}

void feat_send_presence_type(struct session *sess, const char *to, const char *type)
{
    struct xml_node *p = xml_node_new("presence", XML_NS_CLIENT);
    xml_set_attr(p, "type", type);
    xml_set_attr(p, "from", sess->full);
    xml_set_attr(p, "to", to);
    session_route(sess->conn->c2s, p);
    xml_free(&p);
}

void feat_send_unavailable(struct session *sess, const char *to)
{
    if (sess->available)
        feat_send_presence_type(sess, to, "unavailable");
}

int feat_serial_enter(struct feat_serial *fs, void *job)
{
    if (!fs->busy) {
        fs->busy = true;
        return 1;
    }
    if (fs->n >= FEAT_SERIAL_MAX)
        return -1;
    fs->queue = xrealloc(fs->queue, (fs->n + 1) * sizeof *fs->queue);
    fs->queue[fs->n++] = job;
    return 0;
}

void *feat_serial_leave(struct feat_serial *fs)
{
    if (fs->n == 0) {
        fs->busy = false;
        return NULL;
    }
    void *next = fs->queue[0];
    memmove(fs->queue, fs->queue + 1, --fs->n * sizeof *fs->queue);
    return next;
}

void feat_serial_drain(struct feat_serial *fs, void (*drop)(void *job))
{
    for (size_t i = 0; i < fs->n; i++)
        drop(fs->queue[i]);
    free(fs->queue);
    *fs = (struct feat_serial){0};
}
