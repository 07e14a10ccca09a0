/* c2s/pushev.c - the c2s's push events: a message sent by a local user (sent, groupchat), a resource going online and offline. */
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "c2s.h"
#include "cfg.h"
#include "module.h"
#include "node.h"
#include "push_emit.h"
#include "util.h"
#include "xml.h"

/* One c2s per process: the module's state (c2s.h does not change for it). NULL emitter:
 * nothing configured, and every hook returns at its first test. */
static struct {
    struct push_emit *pe;
    struct buf body;               /* the body of the event being built (no allocation per message) */
} pv;

/* Per session: the kinds its user's domain wants, computed once at open. */
struct pushev_session {
    uint32_t kinds;
};

extern const struct c2s_module pushev_module;

static void pushev_init(struct c2s *s)
{
    pv.pe = push_emit_new(s->node);
    buf_init(&pv.body);
}

/* No pending hook: a graceful stop does not wait for the pusher's acknowledgements. When
 * the whole cluster stops, the pusher refuses new events at once, so waiting would only
 * spend the grace period; push events are at-least-once across a pusher's crash, not an
 * emitter's. */
static void pushev_fini(struct c2s *s)
{
    push_emit_free(&pv.pe);
    buf_release(&pv.body);
}

static bool pushev_envelope(struct c2s *s, const Mk__Envelope *e)
{
    return push_emit_on_envelope(pv.pe, e);
}

static void pushev_session_open(struct session *sess)
{
    struct pushev_session *ps = c2s_session_state(sess, &pushev_module);
    if (ps != NULL && pv.pe != NULL)
        ps->kinds = push_emit_kinds(pv.pe, sess->jid.domain, strlen(sess->jid.domain));
}

static uint32_t kinds_of(const struct session *sess)
{
    if (pv.pe == NULL)
        return 0;
    const struct pushev_session *ps = c2s_session_state(sess, &pushev_module);
    return ps != NULL ? ps->kinds : 0;
}

/* The text of the first <body/> with text, in pv.body (valid until the next call), or
 * NULL. */
static char *body_of(const struct xml_node *msg)
{
    for (struct xml_node *b = xml_child(msg, "body", XML_NS_CLIENT); b != NULL; b = xml_next(b, "body", XML_NS_CLIENT)) {
        buf_reset(&pv.body);
        for (struct xml_node *t = b->first_child; t != NULL; t = t->next)
            if (t->name == NULL && t->text_len > 0)
                buf_append(&pv.body, t->text, t->text_len);
        if (pv.body.len > 0)
            return (char *)buf_cstr(&pv.body);
    }
    return NULL;
}

/* Runs last of the modules: the message is going to the router (the others let it out,
 * and its shard takes it: session.c checked that before the modules). */
static enum disp pushev_stanza_out(struct session *sess, Mk__StanzaKind kind, struct xml_node *st)
{
    uint32_t kinds = kinds_of(sess);
    if (kinds == 0 || kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE)
        return DISP_PASS;
    const char *type = xml_attr(st, "type");
    Mk__PushEventKind k;
    if (type == NULL || strcmp(type, "chat") == 0 || strcmp(type, "normal") == 0 || strcmp(type, "headline") == 0)
        k = MK__PUSH_EVENT_KIND__PUSH_EVENT_SENT;
    else if (strcmp(type, "groupchat") == 0)
        k = MK__PUSH_EVENT_KIND__PUSH_EVENT_GROUPCHAT;
    else
        return DISP_PASS;   /* error */
    if (!(kinds & CFG_PUSH_BIT(k)))
        return DISP_PASS;
    char *body = body_of(st);
    if (body == NULL)
        return DISP_PASS;   /* chat states, receipts, markers: not a message someone wrote */
    Mk__PushEvent ev = MK__PUSH_EVENT__INIT;
    ev.kind = k;
    ev.user = sess->bare;
    ev.from = sess->full;
    ev.to = (char *)(xml_attr(st, "to") ? xml_attr(st, "to") : "");
    ev.type = (char *)(type ? type : "");
    ev.body = body;
    ev.has_body = true;
    push_emit_send(pv.pe, &ev);
    return DISP_PASS;
}

/* A message with a body that reached a detached session, when the user's domain wants
 * delivered events: a DELIVERED event with unavailable and sm_detached set (only xep0357
 * backends take it: as MongooseIM pushes for a suspended session). Parses the bytes only
 * when such events are wanted. */
static void pushev_detached_stanza(struct session *sess, const void *p, size_t n)
{
    uint32_t kinds = kinds_of(sess);
    if (!(kinds & CFG_PUSH_BIT(MK__PUSH_EVENT_KIND__PUSH_EVENT_DELIVERED)) || n < 9 || memcmp(p, "<message", 8) != 0)
        return;
    char err[128];
    struct xml_node *msg = xml_parse_stanza(p, n, err, sizeof err);
    if (msg == NULL)
        return;
    const char *type = xml_attr(msg, "type");
    char *body = type == NULL || strcmp(type, "error") != 0 ? body_of(msg) : NULL;
    if (body != NULL) {
        Mk__PushEvent ev = MK__PUSH_EVENT__INIT;
        ev.kind = MK__PUSH_EVENT_KIND__PUSH_EVENT_DELIVERED;
        ev.user = sess->bare;
        ev.from = (char *)(xml_attr(msg, "from") ? xml_attr(msg, "from") : "");
        ev.to = (char *)(xml_attr(msg, "to") ? xml_attr(msg, "to") : sess->full);
        ev.type = (char *)(type ? type : "");
        ev.body = body;
        ev.has_body = true;
        ev.unavailable = true;
        ev.sm_detached = true;
        push_emit_send(pv.pe, &ev);
        }
    xml_free(&msg);
}

static void pushev_presence_changed(struct session *sess, bool initial)
{
    uint32_t kinds = kinds_of(sess);
    if (kinds == 0)
        return;
    Mk__PushEventKind k;
    if (sess->available && initial)
        k = MK__PUSH_EVENT_KIND__PUSH_EVENT_ONLINE;
    else if (!sess->available)
        k = MK__PUSH_EVENT_KIND__PUSH_EVENT_OFFLINE;
    else
        return;   /* a change of an available resource's presence */
    if (!(kinds & CFG_PUSH_BIT(k)))
        return;
    Mk__PushEvent ev = MK__PUSH_EVENT__INIT;
    ev.kind = k;
    ev.user = sess->bare;
    ev.from = sess->full;
    ev.to = (char *)"";
    ev.type = (char *)(sess->available ? "" : "unavailable");
    ev.body = (char *)"";
    push_emit_send(pv.pe, &ev);
}

const struct c2s_module pushev_module = {
    .name = "pushev",
    .session_state = sizeof(struct pushev_session),
    .init = pushev_init,
    .fini = pushev_fini,
    .envelope = pushev_envelope,
    .session_open = pushev_session_open,
    .stanza_out = pushev_stanza_out,
    .presence_changed = pushev_presence_changed,
    .detached_stanza = pushev_detached_stanza,
};
