/* router/route.c - the routing decision of RFC 6121 section 8.5 over the session table, and minimal error stanzas. */
#include <stdlib.h>
#include <string.h>

#include "router.h"
#include "util.h"
#include "xml.h"

static bool streq(const char *a, const char *b)
{
    return strcmp(a, b) == 0;
}

static bool is_subscription_type(const char *type)
{
    return streq(type, "subscribe") || streq(type, "subscribed") || streq(type, "unsubscribe") ||
           streq(type, "unsubscribed");
}

static void add_target(struct route_decision *d, const struct router_sess *s)
{
    if (d->ntargets == d->cap) {
        size_t ncap = d->cap * 2;
        const struct router_sess **nt = xmalloc(ncap * sizeof *nt);
        memcpy(nt, d->targets, d->ntargets * sizeof *nt);
        if (d->targets != d->inline_targets)
            free(d->targets);
        d->targets = nt;
        d->cap = ncap;
    }
    d->targets[d->ntargets++] = s;
}

static void decide(struct route_decision *d, enum route_action action, const char *reason)
{
    d->action = action;
    d->reason = reason;
}

static void bounce(struct route_decision *d, const char *error_type, const char *condition)
{
    d->action = ROUTE_ACTION_ERROR;
    d->reason = condition;
    d->error_type = error_type;
    d->condition = condition;
}

/* Every available session with priority >= 0 (headline), or only those tied at the
 * highest such priority (chat, normal). */
static void pick_by_priority(struct route_decision *d, const struct router_user *u, bool all)
{
    int best = -1;
    bool any = false;
    for (const struct router_sess *s = u ? u->sessions : NULL; s != NULL; s = s->next)
        if (s->available && s->priority >= 0 && (!any || s->priority > best)) {
            best = s->priority;
            any = true;
        }
    if (!any)
        return;
    for (const struct router_sess *s = u->sessions; s != NULL; s = s->next)
        if (s->available && s->priority >= 0 && (all || s->priority == best))
            add_target(d, s);
}

static void all_available(struct route_decision *d, const struct router_user *u)
{
    for (const struct router_sess *s = u ? u->sessions : NULL; s != NULL; s = s->next)
        if (s->available)
            add_target(d, s);
}

static void message_to_bare(struct route_decision *d, const Mk__Route *r, const char *type,
                            const struct router_user *u, const struct jid_view *to)
{
    if (streq(type, "groupchat")) {
        bounce(d, "cancel", "service-unavailable");
        return;
    }
    bool headline = streq(type, "headline");
    pick_by_priority(d, u, headline);
    if (d->ntargets > 0) {
        decide(d, ROUTE_ACTION_DELIVER, "bare");
        return;
    }
    if (headline || streq(type, "error"))
        decide(d, ROUTE_ACTION_DROP, headline ? "headline_unavailable" : "error_unavailable");
    else if (!r->has_body)
        decide(d, ROUTE_ACTION_DROP, "bodiless_unavailable");
    else if (r->no_store)
        decide(d, ROUTE_ACTION_DROP, "no_store");
    else if (!to->has_local)
        decide(d, ROUTE_ACTION_DROP, "no_local_part");
    else
        decide(d, ROUTE_ACTION_OFFLINE, "offline");
}

/* To an external component's domain (any JID at it): the c2s holding its connection
 * delivers it. A configured component that is not connected answers requests with
 * wait/service-unavailable: the domain is served here, nobody is there now, and it may
 * come back (type wait, not cancel: an XEP-0357 app server that reconnects must not
 * have its users' registrations disabled meanwhile). */
static void to_component(struct route_decision *d, const Mk__Route *r, const struct router_component *c,
                         const char *type)
{
    if (c->sess.c2s != NULL) {
        add_target(d, &c->sess);
        decide(d, ROUTE_ACTION_COMPONENT, "component");
        return;
    }
    if (streq(type, "error") || streq(type, "result") || r->kind == MK__STANZA_KIND__STANZA_KIND_PRESENCE)
        decide(d, ROUTE_ACTION_DROP, "component_unavailable");
    else
        bounce(d, "wait", "service-unavailable");
}

static void decide_route(const struct sess_table *t, const Mk__Route *r, route_local_fn *is_local, void *ud,
                         struct route_decision *d)
{
    memset(d, 0, sizeof *d);
    d->targets = d->inline_targets;
    d->cap = ROUTE_INLINE_TARGETS;
    decide(d, ROUTE_ACTION_DROP, "malformed");
    if (r == NULL)
        return;
    if (r->hops > ROUTER_MAX_HOPS) {
        decide(d, ROUTE_ACTION_DROP, "loop");
        return;
    }
    const char *type = r->type ? r->type : "";
    bool is_error = streq(type, "error");
    struct jid_view to;
    if (r->kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE && r->kind != MK__STANZA_KIND__STANZA_KIND_PRESENCE &&
        r->kind != MK__STANZA_KIND__STANZA_KIND_IQ) {
        decide(d, ROUTE_ACTION_DROP, "bad_kind");
        return;
    }
    if (router_jid_split(r->to, &to) == -1) {
        if (is_error || r->kind == MK__STANZA_KIND__STANZA_KIND_PRESENCE)
            decide(d, ROUTE_ACTION_DROP, "bad_to");
        else
            bounce(d, "modify", "jid-malformed");
        return;
    }
    if (is_local == NULL || !is_local(ud, r->to + to.domain_off, to.domain_len)) {
        /* Only stanzas to other domains pay for the component lookup. */
        const struct router_component *c = router_component_find(t, r->to + to.domain_off, to.domain_len);
        if (c != NULL)
            to_component(d, r, c, type);
        else if (is_error)
            decide(d, ROUTE_ACTION_DROP, "error_remote");
        else
            bounce(d, "cancel", "remote-server-not-found");
        return;
    }
    const struct router_user *u = sess_table_user(t, r->to, to.bare_len);

    if (to.resource != NULL) {
        const struct router_sess *s = NULL;
        for (s = u ? u->sessions : NULL; s != NULL; s = s->next)
            if (streq(sess_resource(s), to.resource))
                break;
        if (s != NULL) {
            add_target(d, s);
            decide(d, ROUTE_ACTION_DELIVER, "full");
            return;
        }
        switch (r->kind) {
        case MK__STANZA_KIND__STANZA_KIND_MESSAGE:
            if (is_error)
                decide(d, ROUTE_ACTION_DROP, "error_unavailable");
            else if (streq(type, "groupchat"))
                bounce(d, "cancel", "service-unavailable");
            else
                message_to_bare(d, r, type, u, &to);
            return;
        case MK__STANZA_KIND__STANZA_KIND_PRESENCE:
            if (!is_subscription_type(type)) {
                decide(d, ROUTE_ACTION_DROP, "presence_unavailable");
                return;
            }
            break;   /* as if to the bare JID */
        default:
            if (streq(type, "get") || streq(type, "set"))
                bounce(d, "cancel", "service-unavailable");
            else
                decide(d, ROUTE_ACTION_DROP, "iq_reply_unavailable");
            return;
        }
    }

    switch (r->kind) {
    case MK__STANZA_KIND__STANZA_KIND_MESSAGE:
        message_to_bare(d, r, type, u, &to);
        return;
    case MK__STANZA_KIND__STANZA_KIND_PRESENCE:
        /* Every kind of presence goes to the available resources; the owning c2s applies
         * the finer rules (roster interest, subscription state). */
        all_available(d, u);
        if (d->ntargets > 0)
            decide(d, ROUTE_ACTION_DELIVER, "bare");
        else
            decide(d, ROUTE_ACTION_DROP, "presence_unavailable");
        return;
    default:
        /* A push from the account to itself (a roster or block-list push made on one
         * c2s for the account's sessions everywhere): every session gets it, and the
         * owning c2s picks the interested ones. */
        if (streq(type, "set") && r->from != NULL && streq(r->from, r->to) && to.resource == NULL) {
            for (const struct router_sess *s = u ? u->sessions : NULL; s != NULL; s = s->next)
                add_target(d, s);
            decide(d, d->ntargets > 0 ? ROUTE_ACTION_DELIVER : ROUTE_ACTION_DROP, "account_push");
            return;
        }
        /* c2s answers other IQs to bare JIDs itself; one that gets here has nobody to answer it. */
        if (streq(type, "get") || streq(type, "set"))
            bounce(d, "cancel", "service-unavailable");
        else
            decide(d, ROUTE_ACTION_DROP, "iq_reply_bare");
        return;
    }
}

void route_decide(const struct sess_table *t, const Mk__Route *r, route_local_fn *is_local, void *ud,
                  struct route_decision *d)
{
    decide_route(t, r, is_local, ud, d);
    /* A bounce or an offline copy needs a sender; a delivery does not (an error
     * answering a malformed address has no usable from). */
    struct jid_view from;
    if ((d->action == ROUTE_ACTION_ERROR || d->action == ROUTE_ACTION_OFFLINE) &&
        router_jid_split(r->from, &from) == -1) {
        d->action = ROUTE_ACTION_DROP;
        d->reason = "no_sender";
    }
}

void route_decision_release(struct route_decision *d)
{
    if (d->targets != d->inline_targets)
        free(d->targets);
    d->targets = d->inline_targets;
    d->ntargets = 0;
    d->cap = ROUTE_INLINE_TARGETS;
}

const char *route_kind_name(Mk__StanzaKind kind)
{
    switch (kind) {
    case MK__STANZA_KIND__STANZA_KIND_PRESENCE:
        return "presence";
    case MK__STANZA_KIND__STANZA_KIND_IQ:
        return "iq";
    default:
        return "message";
    }
}

static void attr(struct buf *out, const char *name, const char *value)
{
    if (value == NULL || *value == '\0')
        return;
    buf_printf(out, " %s='", name);
    xml_escape(out, value, strlen(value));
    buf_append(out, "'", 1);
}

void route_error_xml(struct buf *out, Mk__StanzaKind kind, const char *from, const char *to, const char *id,
                     const char *error_type, const char *condition)
{
    const char *name = route_kind_name(kind);
    buf_printf(out, "<%s", name);
    attr(out, "from", from);
    attr(out, "to", to);
    buf_append_str(out, " type='error'");
    attr(out, "id", id);
    buf_append_str(out, "><error");
    attr(out, "type", error_type);
    buf_printf(out, "><%s xmlns='" NS_STANZAS "'/></error></%s>", condition, name);
}
