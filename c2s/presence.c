/* c2s/presence.c - the "presence" module: presence of the c2s's own sessions (RFC 6121 section 4: broadcast, probes, directed presence, inbound rules) and last activity (XEP-0012), which presence changes record. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "util.h"

extern const struct c2s_module presence_module;

/* Per-session state. */
struct presence_session {
    char **online;                 /* full JIDs of subscribed contacts seen available */
    size_t nonline;
};

static struct presence_session *state_of(const struct session *sess)
{
    return c2s_session_state(sess, &presence_module);
}

static bool is_subscription_type(const char *t)
{
    return strcmp(t, "subscribe") == 0 || strcmp(t, "subscribed") == 0 || strcmp(t, "unsubscribe") == 0 ||
           strcmp(t, "unsubscribed") == 0;
}

/* <priority/>: an integer, clamped to -128..127 (RFC 6121 4.7.2.3); 0 when absent or bad. */
static int parse_priority(const struct xml_node *pres)
{
    struct xml_node *p = xml_child(pres, "priority", NULL);
    if (!p)
        return 0;
    char *t = xml_text(p);
    char *end;
    long v = strtol(t, &end, 10);
    bool ok = end != t && *end == '\0';
    free(t);
    if (!ok)
        return 0;
    return v < -128 ? -128 : v > 127 ? 127 : (int)v;
}

static void route_to(struct c2s *s, struct xml_node *p, const char *to)
{
    xml_set_attr(p, "to", to);
    session_route(s, p);
}

/* Sends p (from already set) to every contact with a 'from' subscription, the user's
 * own resources, and (for unavailable) every directed-presence target. */
static void broadcast(struct session *sess, struct xml_node *p, bool to_directed)
{
    struct c2s *s = sess->conn->c2s;
    for (struct roster_item *it = sess->roster; it; it = it->next)
        if ((feat_roster_sub(it) & ROSTER_SUB_FROM) && !feat_blocked(sess, it->jid))
            route_to(s, p, it->jid);
    route_to(s, p, sess->bare);
    if (to_directed)
        for (size_t i = 0; i < sess->ndirected; i++) {
            char *bare = feat_bare_of(sess->directed[i]);
            /* A subscribed contact already had it through its bare JID. */
            bool sent = (feat_roster_sub(feat_roster_find(sess, bare)) & ROSTER_SUB_FROM) || strcmp(bare, sess->bare) == 0;
            free(bare);
            if (!sent && !feat_blocked(sess, sess->directed[i]))
                route_to(s, p, sess->directed[i]);
        }
    xml_set_attr(p, "to", NULL);
}


/* True when a subscribed contact (bare) has a resource we know is available. */
static bool contact_online(const struct session *sess, const char *bare)
{
    const struct presence_session *f = state_of(sess);
    size_t n = strlen(bare);
    for (size_t i = 0; f && i < f->nonline; i++) {
        const char *o = f->online[i];
        if (strncmp(o, bare, n) == 0 && (o[n] == '/' || o[n] == '\0'))
            return true;
    }
    return false;
}

static void forget_online(struct session *sess, const char *from)
{
    struct presence_session *f = state_of(sess);
    if (strchr(from, '/')) {
        feat_strv_remove(&f->online, &f->nonline, from);
        return;
    }
    size_t n = strlen(from);
    for (size_t i = 0; i < f->nonline;) {
        if (strncmp(f->online[i], from, n) == 0 && f->online[i][n] == '/') {
            char *o = f->online[i];
            feat_strv_remove(&f->online, &f->nonline, o);
        } else {
            i++;
        }
    }
}

/* Requests that waited while the user was offline: stored state, not stanzas. */
static void send_pending_requests(struct session *sess)
{
    for (struct roster_item *it = sess->roster; it; it = it->next) {
        if (!it->ask || (strcmp(it->ask, "in") != 0 && strcmp(it->ask, "both") != 0))
            continue;
        struct xml_node *p = xml_node_new("presence", XML_NS_CLIENT);
        xml_set_attr(p, "type", "subscribe");
        xml_set_attr(p, "from", it->jid);
        xml_set_attr(p, "to", sess->bare);
        conn_send(sess->conn, p);
        xml_free(&p);
    }
}

static void available(struct session *sess, struct xml_node *pres)
{
    bool initial = !sess->available;
    sess->priority = parse_priority(pres);
    sess->available = true;
    struct xml_node *p = xml_clone(pres);
    xml_set_attr(p, "to", NULL);
    xml_set_attr(p, "id", NULL);
    /* kept packed and without from (set again on every use): a session's longest-held tree */
    xml_set_attr(p, "from", NULL);
    xml_packed_free(&sess->presence);
    sess->presence = xml_pack(p);
    xml_set_attr(p, "from", sess->full);
    /* The router must know before the broadcast reaches the user's own resources. */
    session_update_router(sess);
    broadcast(sess, p, false);
    xml_free(&p);
    if (initial) {
        for (struct roster_item *it = sess->roster; it; it = it->next)
            if ((feat_roster_sub(it) & ROSTER_SUB_TO) && !feat_blocked(sess, it->jid))
                feat_send_presence_type(sess, it->jid, "probe");
        feat_send_presence_type(sess, sess->bare, "probe");
        send_pending_requests(sess);
    }
    c2s_modules_presence_changed(sess, initial);
}

static void last_set_cb(void *ud, const struct store_result *res)
{
    char *who = ud;
    if (res->ok != 0)
        log_warn("last_activity_failed", "user=%s error=\"%s\"", who, res->error ? res->error : "");
    free(who);
}

/* The session goes from available to unavailable (its unavailable presence or its
 * end), which is the account's last activity (XEP-0012), kept with the status.
 * A session that never sent presence leaves none, as in MongooseIM, whose mod_last
 * records on unset-presence only. */
static void record_last(struct session *sess, const char *status)
{
    char secs[32];
    snprintf(secs, sizeof secs, "%lld", (long long)(mk_now_us() / 1000000));
    const char *params[] = {sess->jid.local, sess->jid.domain, secs, status ? status : ""};
    store_query(sess->conn->c2s->store, STORE_LAST_SET, params, 4, last_set_cb, xstrdup(sess->bare));
}

static void unavailable(struct session *sess, struct xml_node *pres)
{
    struct presence_session *f = state_of(sess);
    if (!sess->available) {
        /* Never available, yet it sent directed presence (a MUC join before initial
         * presence): those who got it get the unavailable (RFC 6121 4.6.3), or the room
         * keeps a ghost occupant. */
        if (sess->ndirected > 0) {
            struct xml_node *p = xml_node_new("presence", XML_NS_CLIENT);
            xml_set_attr(p, "type", "unavailable");
            xml_set_attr(p, "from", sess->full);
            for (size_t i = 0; i < sess->ndirected; i++)
                if (!feat_blocked(sess, sess->directed[i]))
                    route_to(sess->conn->c2s, p, sess->directed[i]);
            xml_free(&p);
            feat_strv_free(&sess->directed, &sess->ndirected);
        }
        return;
    }
    struct xml_node *st = pres ? xml_child(pres, "status", NULL) : NULL;
    char *status = st ? xml_text(st) : NULL;
    record_last(sess, status);
    free(status);
    struct xml_node *p = pres ? xml_clone(pres) : xml_node_new("presence", XML_NS_CLIENT);
    xml_set_attr(p, "type", "unavailable");
    xml_set_attr(p, "from", sess->full);
    xml_set_attr(p, "id", NULL);
    broadcast(sess, p, true);
    xml_free(&p);
    feat_strv_free(&sess->directed, &sess->ndirected);
    if (f)
        feat_strv_free(&f->online, &f->nonline);
    sess->available = false;
    xml_packed_free(&sess->presence);
    session_update_router(sess);
    c2s_modules_presence_changed(sess, false);
}

static enum disp directed(struct session *sess, struct xml_node *pres, const char *to, const char *type)
{
    char *target = jid_normalize(to, false);
    if (!target) {
        session_send_error(sess, pres, "modify", "jid-malformed", NULL);
        return DISP_DONE;
    }
    if (feat_blocked(sess, target)) {
        free(target);
        return DISP_DONE;   /* XEP-0191: no presence to a blocked entity */
    }
    char *bare = feat_bare_of(target);
    bool subscribed = (feat_roster_sub(feat_roster_find(sess, bare)) & ROSTER_SUB_FROM) != 0;
    if (strcmp(bare, sess->bare) != 0 && !subscribed) {
        if (!type)
            feat_strv_add(&sess->directed, &sess->ndirected, target);
        else
            feat_strv_remove(&sess->directed, &sess->ndirected, target);
    }
    route_to(sess->conn->c2s, pres, target);
    free(bare);
    free(target);
    return DISP_DONE;
}

/* Presence from the client other than subscriptions (the roster module's). */
static enum disp presence_out(struct session *sess, Mk__StanzaKind kind, struct xml_node *pres)
{
    if (kind != MK__STANZA_KIND__STANZA_KIND_PRESENCE)
        return DISP_PASS;
    const char *type = xml_attr(pres, "type");
    const char *to = xml_attr(pres, "to");
    if (to && !*to)
        to = NULL;
    if (type && is_subscription_type(type))
        return DISP_DONE;   /* the roster module's, when it is on */
    if (type && strcmp(type, "probe") == 0)
        return DISP_DONE;   /* probes are the server's business */
    if (type && strcmp(type, "error") == 0)
        return DISP_PASS;
    if (type && strcmp(type, "unavailable") != 0) {
        session_send_error(sess, pres, "modify", "bad-request", "unknown presence type");
        return DISP_DONE;
    }
    if (to)
        return directed(sess, pres, to, type);
    if (!type)
        available(sess, pres);
    else
        unavailable(sess, pres);
    return DISP_DONE;
}

/* Routed presence for sess: probes are answered here, the rest delivered by RFC 6121's rules. */
static bool presence_in(struct session *sess, const Mk__Route *r)
{
    if (r->kind != MK__STANZA_KIND__STANZA_KIND_PRESENCE)
        return true;
    const char *type = r->type ? r->type : "";
    const char *from = r->from ? r->from : "";
    char *bare = feat_bare_of(from);
    bool own = strcmp(bare, sess->bare) == 0;
    struct roster_item *it = own ? NULL : feat_roster_find(sess, bare);
    enum roster_sub sub = feat_roster_sub(it);
    bool deliver;

    if (strcmp(type, "probe") == 0) {
        /* Answer with this resource's presence if the prober may see it; the probe
         * itself is not for the client. */
        if ((own && strcmp(from, sess->full) != 0) || (!own && (sub & ROSTER_SUB_FROM)))
            feat_send_presence(sess, from);
        deliver = false;
    } else if (strcmp(type, "subscribe") == 0) {
        deliver = sess->interested;
    } else if (is_subscription_type(type) || strcmp(type, "error") == 0) {
        deliver = true;
    } else {
        /* Broadcasts come to the bare JID and only from contacts we subscribed to (or
         * whom we sent directed presence); presence sent to this resource's full JID
         * is directed presence and is delivered (RFC 6121 4.6). */
        bool directed_here = r->to && strchr(r->to, '/') != NULL;
        deliver = own || directed_here || (sub & ROSTER_SUB_TO) ||
                  feat_strv_has(sess->directed, sess->ndirected, from) ||
                  feat_strv_has(sess->directed, sess->ndirected, bare);
        struct presence_session *f = state_of(sess);
        if (f && !own && (sub & ROSTER_SUB_TO)) {
            if (*type == '\0' && strchr(from, '/'))
                feat_strv_add(&f->online, &f->nonline, from);
            else if (strcmp(type, "unavailable") == 0)
                forget_online(sess, from);
        }
    }
    free(bare);
    return deliver;
}

/* --- last activity (XEP-0012) ------------------------------------------------------------- */

static void reply_last(struct session *sess, const struct xml_node *iq, long long seconds, const char *status)
{
    char secs[32];
    snprintf(secs, sizeof secs, "%lld", seconds < 0 ? 0 : seconds);
    struct xml_node *q = xml_node_new("query", NS_LAST);
    xml_set_attr(q, "seconds", secs);
    if (status && *status)
        xml_add_text(q, status, strlen(status));
    feat_reply(sess, iq, q);
}

static void last_get_cb(void *ud, const struct store_result *res)
{
    struct feat_ctx *ctx = ud;
    struct session *sess = feat_ctx_answerable(ctx, res);
    if (!sess)
        goto out;
    if (res->nrows == 0 || !feat_col(res, 0, 0)) {
        session_send_error(sess, ctx->req, "cancel", "item-not-found", NULL);
    } else {
        long long then = strtoll(feat_col(res, 0, 0), NULL, 10);
        reply_last(sess, ctx->req, mk_now_us() / 1000000 - then, feat_col(res, 0, 1));
    }
out:
    feat_ctx_free(&ctx);
}

static enum disp last_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    struct c2s *s = sess->conn->c2s;
    if (strcmp(xml_attr(iq, "type"), "get") != 0) {
        session_send_error(sess, iq, "cancel", "feature-not-implemented", NULL);
        return DISP_DONE;
    }
    if (!target) {
        reply_last(sess, iq, (mk_now_us() - (int64_t)s->node->started_us) / 1000000, NULL);
        return DISP_DONE;
    }
    if (strcmp(target, sess->bare) == 0) {
        reply_last(sess, iq, 0, NULL);
        return DISP_DONE;
    }
    /* Only a contact whose presence the user may see (RFC 6121: the contact has a 'from'
     * subscription to the user, i.e. the user's item says 'to' or 'both'). */
    if (!(feat_roster_sub(feat_roster_find(sess, target)) & ROSTER_SUB_TO)) {
        session_send_error(sess, iq, "auth", "forbidden", NULL);
        return DISP_DONE;
    }
    if (contact_online(sess, target)) {
        reply_last(sess, iq, 0, NULL);
        return DISP_DONE;
    }
    char *local, *domain;
    if (feat_split(target, &local, &domain) == -1) {
        session_send_error(sess, iq, "modify", "jid-malformed", NULL);
        return DISP_DONE;
    }
    const char *params[] = {local, domain};
    store_query(s->store, STORE_LAST_GET, params, 2, last_get_cb, feat_ctx_new(sess, iq));
    free(local);
    free(domain);
    return DISP_DONE;
}

/* --- the module ---------------------------------------------------------------------------- */

/* The session is going: unavailable to everyone who had its presence. */
static void presence_close(struct session *sess)
{
    if (!sess->handed_over)
        unavailable(sess, NULL);
    struct presence_session *f = state_of(sess);
    if (f)
        feat_strv_free(&f->online, &f->nonline);
}

static const struct c2s_iq_handler iqs[] = {
    {NS_LAST, C2S_IQ_CHECK_ACCOUNT, last_iq, NULL},
    {NULL, 0, NULL, NULL},
};

static const char *const server_features[] = {NS_LAST, NULL};

const struct c2s_module presence_module = {
    .name = "presence",
    .server_features = server_features,
    .iqs = iqs,
    .session_state = sizeof(struct presence_session),
    .session_close = presence_close,
    .stanza_out = presence_out,
    .stanza_in = presence_in,
};
