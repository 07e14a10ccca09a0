/* c2s/carbons.c - the "carbons" module: XEP-0280 enable/disable, which messages a user sends are eligible for carbon copies, forged carbons refused. The copies themselves are made by the router shard that knows the user's sessions (router/carbons.c). */
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "feat.h"
#include "log.h"
#include "module.h"
#include "util.h"

#define NS_CARBONS  "urn:xmpp:carbons:2"
#define NS_MUC_USER "http://jabber.org/protocol/muc#user"

extern const struct c2s_module carbons_module;

/* Per session: what the user's router shard last said (CarbonsHint). */
struct carbons_session {
    bool hinted;                   /* said at least once */
    bool others;                   /* other carbons-enabled sessions of the user exist */
};

/* The enable/disable answer goes to the client through the router shard of the user's
 * bare JID, after the SessionOpen update that tells it the new state (both travel to it
 * in order): once the client has the result, every message the router routes from then
 * on is copied by the new rule. Written directly only when the route is refused. */
static void answer_via_router(struct session *sess, const struct xml_node *iq)
{
    struct xml_node *res = iq_result(iq);
    xml_set_attr(res, "from", sess->bare);
    xml_set_attr(res, "to", sess->full);
    if (session_route(sess->conn->c2s, res) == -1)
        conn_send(sess->conn, res);
    xml_free(&res);
}

static enum disp carbons_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    const struct xml_node *q = xml_first_elem(iq);
    const char *type = xml_attr(iq, "type");
    if (target != NULL && strcmp(target, sess->bare) != 0) {
        /* XEP-0280 4.1/5.1: only for the user's own account (or the server). */
        session_send_error(sess, iq, "cancel", "not-allowed", NULL);
        return DISP_DONE;
    }
    bool enable = strcmp(q->name, "enable") == 0;
    if (strcmp(type, "set") != 0 || (!enable && strcmp(q->name, "disable") != 0)) {
        session_send_error(sess, iq, "modify", "bad-request", "send an iq set with <enable/> or <disable/>");
        return DISP_DONE;
    }
    if (sess->carbons != enable) {
        sess->carbons = enable;
        session_update_router(sess);
        log_debug("carbons", "jid=%s enabled=%d", sess->full, (int)enable);
    }
    answer_via_router(sess, iq);
    return DISP_DONE;
}

/* A message the client sends: a carbon copy it made itself (<sent/> or <received/>) is
 * refused, since a recipient's client would take it for one its own server made (the
 * security section of XEP-0280 relies on the server); <private/> is removed (it is for
 * the servers only) and makes the message ineligible; so does XEP-0334 <no-copy/>, a
 * MUC private message, a type other than chat or normal, and a normal message without a
 * body (XEP-0280 section 6). */
static enum disp carbons_stanza_out(struct session *sess, Mk__StanzaKind kind, struct xml_node *st)
{
    if (kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE)
        return DISP_PASS;
    if (xml_child(st, "sent", NS_CARBONS) != NULL || xml_child(st, "received", NS_CARBONS) != NULL) {
        log_info("carbons_forged", "jid=%s", sess->full);
        session_send_error(sess, st, "modify", "not-acceptable", "only the server makes carbon copies");
        return DISP_DONE;
    }
    bool eligible = true;
    struct xml_node *priv;
    while ((priv = xml_child(st, "private", NS_CARBONS)) != NULL) {
        xml_remove(priv);
        xml_free(&priv);
        eligible = false;
    }
    const char *type = xml_attr(st, "type");
    if (type == NULL || strcmp(type, "normal") == 0)
        eligible = eligible && feat_has_body(st);
    else if (strcmp(type, "chat") != 0)
        eligible = false;
    if (eligible && (xml_child(st, "no-copy", NS_HINTS) != NULL || xml_child(st, "x", NS_MUC_USER) != NULL))
        eligible = false;
    sess->conn->c2s->out_carbon = eligible;
    /* The sent copy needs the sender's shard (a second hop when the recipient's shard is
     * another one): asked for only when the router said other carbons-enabled sessions
     * of the user exist, or has not said yet. */
    const struct carbons_session *cs = c2s_session_state(sess, &carbons_module);
    sess->conn->c2s->out_carbon_sent = eligible && (cs == NULL || !cs->hinted || cs->others);
    return DISP_PASS;
}

/* CarbonsHint from the user's router shard. */
static bool carbons_envelope(struct c2s *s, const Mk__Envelope *e)
{
    if (e->payload_case != MK__ENVELOPE__PAYLOAD_CARBONS_HINT)
        return false;
    if (e->carbons_hint != NULL) {
        struct session *sess = session_by_id(s, e->carbons_hint->session_id);
        struct carbons_session *cs = sess != NULL ? c2s_session_state(sess, &carbons_module) : NULL;
        if (cs != NULL) {
            cs->hinted = true;
            cs->others = e->carbons_hint->others;
        }
    }
    return true;
}

static const struct c2s_iq_handler iqs[] = {
    {NS_CARBONS, 0, carbons_iq, NULL},
    {NULL, 0, NULL, NULL},
};

static const char *const server_features[] = {NS_CARBONS, NULL};

const struct c2s_module carbons_module = {
    .name = "carbons",
    .server_features = server_features,
    .iqs = iqs,
    .stanza_out = carbons_stanza_out,
    .envelope = carbons_envelope,
    .session_state = sizeof(struct carbons_session),
};
