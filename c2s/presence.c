/* c2s/presence.c - presence of the c2s's own sessions (RFC 6121 section 4): broadcast, probes, directed presence, inbound rules. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "features.h"
#include "log.h"
#include "util.h"

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
        if ((roster_sub_of(it) & ROSTER_SUB_FROM) && !feat_blocked(sess, it->jid))
            route_to(s, p, it->jid);
    route_to(s, p, sess->bare);
    if (to_directed)
        for (size_t i = 0; i < sess->ndirected; i++) {
            char *bare = feat_bare_of(sess->directed[i]);
            /* A subscribed contact already had it through its bare JID. */
            bool sent = (roster_sub_of(roster_find(sess, bare)) & ROSTER_SUB_FROM) || strcmp(bare, sess->bare) == 0;
            free(bare);
            if (!sent && !feat_blocked(sess, sess->directed[i]))
                route_to(s, p, sess->directed[i]);
        }
    xml_set_attr(p, "to", NULL);
}

static void probe(struct session *sess, const char *to)
{
    struct xml_node *p = xml_node_new("presence", XML_NS_CLIENT);
    xml_set_attr(p, "type", "probe");
    xml_set_attr(p, "from", sess->full);
    xml_set_attr(p, "to", to);
    session_route(sess->conn->c2s, p);
    xml_free(&p);
}

void presence_send_current(struct session *sess, const char *to)
{
    if (!sess->available || !sess->presence)
        return;
    struct xml_node *p = xml_clone(xml_packed_root(sess->presence));
    xml_set_attr(p, "from", sess->full);
    route_to(sess->conn->c2s, p, to);
    xml_free(&p);
}

void presence_send_unavailable(struct session *sess, const char *to)
{
    if (!sess->available)
        return;
    struct xml_node *p = xml_node_new("presence", XML_NS_CLIENT);
    xml_set_attr(p, "type", "unavailable");
    xml_set_attr(p, "from", sess->full);
    route_to(sess->conn->c2s, p, to);
    xml_free(&p);
}

bool presence_contact_online(const struct session *sess, const char *bare)
{
    size_t n = strlen(bare);
    for (size_t i = 0; i < sess->feat->nonline; i++) {
        const char *o = sess->feat->online[i];
        if (strncmp(o, bare, n) == 0 && (o[n] == '/' || o[n] == '\0'))
            return true;
    }
    return false;
}

static void forget_online(struct session *sess, const char *from)
{
    struct feat_session *f = sess->feat;
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
    if (!initial)
        return;
    for (struct roster_item *it = sess->roster; it; it = it->next)
        if ((roster_sub_of(it) & ROSTER_SUB_TO) && !feat_blocked(sess, it->jid))
            probe(sess, it->jid);
    probe(sess, sess->bare);
    send_pending_requests(sess);
    if (sess->priority >= 0)
        offline_deliver(sess);
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
    struct feat_session *f = sess->feat;
    if (!sess->available)
        return;
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
    feat_strv_free(&f->online, &f->nonline);
    sess->available = false;
    xml_packed_free(&sess->presence);
    session_update_router(sess);
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
    bool subscribed = (roster_sub_of(roster_find(sess, bare)) & ROSTER_SUB_FROM) != 0;
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

enum disp presence_out(struct session *sess, struct xml_node *pres)
{
    struct feat_session *f = sess->feat;
    if (f->roster_pending || f->block_pending) {
        /* Broadcast needs the roster: keep the order, handle it once loaded. */
        f->held = xrealloc(f->held, (f->nheld + 1) * sizeof *f->held);
        f->held[f->nheld++] = xml_clone(pres);
        return DISP_DONE;
    }
    const char *type = xml_attr(pres, "type");
    const char *to = xml_attr(pres, "to");
    if (to && !*to)
        to = NULL;
    xml_set_attr(pres, "from", sess->full);

    if (type && is_subscription_type(type)) {
        char *contact = to ? jid_normalize(to, true) : NULL;
        if (!contact) {
            session_send_error(sess, pres, "modify", to ? "jid-malformed" : "bad-request", NULL);
            return DISP_DONE;
        }
        if (strcmp(contact, sess->bare) != 0)
            roster_subscription_out(sess, contact, type, pres);
        free(contact);
        return DISP_DONE;
    }
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

void presence_roster_ready(struct session *sess)
{
    struct feat_session *f = sess->feat;
    if (f->roster_pending || f->block_pending)
        return;
    struct xml_node **held = f->held;
    size_t n = f->nheld;
    f->held = NULL;
    f->nheld = 0;
    for (size_t i = 0; i < n; i++) {
        if (sess->feat && presence_out(sess, held[i]) == DISP_PASS)
            session_route(sess->conn->c2s, held[i]);
        xml_free(&held[i]);
    }
    free(held);
}

bool presence_in(struct session *sess, const Mk__Route *r)
{
    const char *type = r->type ? r->type : "";
    const char *from = r->from ? r->from : "";
    char *bare = feat_bare_of(from);
    bool own = strcmp(bare, sess->bare) == 0;
    struct roster_item *it = own ? NULL : roster_find(sess, bare);
    enum roster_sub sub = roster_sub_of(it);
    bool deliver;

    if (strcmp(type, "probe") == 0) {
        /* Answer with this resource's presence if the prober may see it; the probe
         * itself is not for the client. */
        if ((own && strcmp(from, sess->full) != 0) || (!own && (sub & ROSTER_SUB_FROM)))
            presence_send_current(sess, from);
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
        if (!own && (sub & ROSTER_SUB_TO)) {
            if (*type == '\0' && strchr(from, '/'))
                feat_strv_add(&sess->feat->online, &sess->feat->nonline, from);
            else if (strcmp(type, "unavailable") == 0)
                forget_online(sess, from);
        }
    }
    free(bare);
    return deliver;
}

void presence_session_end(struct session *sess)
{
    unavailable(sess, NULL);
}
