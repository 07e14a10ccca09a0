/* c2s/component.c - external components (XEP-0114) on the component listener: handshake, their stanzas in, routed stanzas out. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/socket.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "c2s.h"
#include "component.h"
#include "log.h"
#include "util.h"

/* A connection on the component listener. Registered with every router shard once its
 * handshake succeeded (see router/component.c): the routers deliver whatever is
 * addressed to its domain here, with id as the session id. */
struct component {
    struct conn *conn;
    const struct cfg_component *cfg;   /* the configured component its stream header named */
    uint64_t id;                       /* session id at the routers (unique in this c2s), 0 before */
    int64_t login_us;
    bool registered;
    struct component *prev, *next;     /* c2s->components, while registered */
};

void component_attach(struct conn *c)
{
    c->comp = xcalloc(1, sizeof *c->comp);
    c->comp->conn = c;
    /* The kernel's keepalive too: a component may be silent for a long time. */
    int one = 1;
    setsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

void component_free(struct conn *c)
{
    free(c->comp);
    c->comp = NULL;
}

static struct component *by_id(struct c2s *s, uint64_t id)
{
    for (struct component *p = s->components; p != NULL; p = p->next)
        if (p->id == id)
            return p;
    return NULL;
}

static size_t count(const struct c2s *s)
{
    size_t n = 0;
    for (const struct component *p = s->components; p != NULL; p = p->next)
        n++;
    return n;
}

/* Router registration --------------------------------------------------------------------- */

/* The routers: a component is registered with every shard, so that a stanza to any JID at
 * its domain, routed to the shard of its bare JID like any other, finds it. */
static size_t routers(const struct c2s *s, const struct cfg_proc **out, size_t max)
{
    return cfg_procs_of_role(s->cfg, CFG_ROLE_ROUTER, out, max);
}

static void send_open(struct component *p, const char *router)
{
    struct c2s *s = p->conn->c2s;
    Mk__SessionOpen o = MK__SESSION_OPEN__INIT;
    o.jid = p->conn->domain;          /* just the domain: the routers' mark of a component */
    o.c2s = (char *)s->node->self->id;
    o.session_id = p->id;
    o.available = true;
    o.login_us = (uint64_t)p->login_us;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_SESSION_OPEN;
    e.session_open = &o;
    node_send(s->node, router, &e);
}

static void register_component(struct component *p)
{
    struct conn *c = p->conn;
    struct c2s *s = c->c2s;
    p->id = ++s->next_session_id;
    p->login_us = mk_now_us();
    p->registered = true;
    p->prev = NULL;
    p->next = s->components;
    if (s->components != NULL)
        s->components->prev = p;
    s->components = p;
    metric_set(s->m_components, NULL, (double)count(s));
    const struct cfg_proc *r[64];
    size_t n = routers(s, r, MK_ARRAY_LEN(r));
    for (size_t i = 0; i < n; i++)
        send_open(p, r[i]->id);
    log_info("component_open", "conn=%llu ip=%s domain=%s session=%llu", (unsigned long long)c->serial, c->ip,
             c->domain, (unsigned long long)p->id);
}

void component_end(struct conn *c, const char *reason)
{
    struct component *p = c->comp;
    if (p == NULL || !p->registered)
        return;
    struct c2s *s = c->c2s;
    p->registered = false;
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        s->components = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
    metric_set(s->m_components, NULL, (double)count(s));
    const struct cfg_proc *r[64];
    size_t n = routers(s, r, MK_ARRAY_LEN(r));
    for (size_t i = 0; i < n; i++)
        session_send_close(s, r[i]->id, c->domain, p->id, reason);
    log_info("component_close", "conn=%llu domain=%s session=%llu reason=%s", (unsigned long long)c->serial,
             c->domain, (unsigned long long)p->id, reason);
}

size_t component_resync_router(struct c2s *s, const char *router)
{
    size_t n = 0;
    for (struct component *p = s->components; p != NULL; p = p->next) {
        send_open(p, router);
        n++;
    }
    return n;
}

int component_on_router_close(struct c2s *s, const Mk__SessionClose *cl)
{
    struct component *p = by_id(s, cl->session_id);
    if (p == NULL)
        return 0;
    const char *reason = cl->reason ? cl->reason : "";
    log_info("component_closed_by_router", "domain=%s reason=%s", p->conn->domain, reason);
    /* Every router shard sends it: the first one ends the stream, the others find it gone. */
    if (strcmp(reason, "conflict") == 0)
        conn_stream_error(p->conn, "conflict", "replaced by a new connection for this component's domain");
    else
        conn_stream_error(p->conn, "policy-violation", "the connection was ended by the server");
    return 1;
}

int component_deliver(struct c2s *s, uint64_t id, const Mk__Route *r)
{
    struct component *p = by_id(s, id);
    if (p == NULL)
        return 0;
    if (r == NULL || r->xml.data == NULL || p->conn->closed)
        return 1;
    conn_write(p->conn, r->xml.data, r->xml.len);
    metric_inc(s->m_stanzas_out, r->kind == MK__STANZA_KIND__STANZA_KIND_MESSAGE    ? "message"
                                 : r->kind == MK__STANZA_KIND__STANZA_KIND_PRESENCE ? "presence"
                                                                                    : "iq");
    return 1;
}

/* Stream header and handshake ------------------------------------------------------------- */

static void on_header(struct conn *c, struct xml_node *hdr)
{
    if (c->state != CONN_STATE_STREAM) {
        conn_stream_error(c, "bad-format", "unexpected stream header");
        return;
    }
    const char *ns = xml_parser_stream_ns(c->parser);
    if (ns == NULL || strcmp(ns, NS_COMPONENT) != 0) {
        conn_stream_error(c, "invalid-namespace", "a component stream's namespace is jabber:component:accept");
        return;
    }
    const char *to = xml_attr(hdr, "to");
    if (to == NULL || *to == '\0') {
        conn_stream_error(c, "improper-addressing", "the stream header names no component domain ('to')");
        return;
    }
    char err[128];
    char *domain = jid_nameprep(to, err, sizeof err);
    const struct cfg_component *cc = domain != NULL ? cfg_find_component(c->c2s->cfg, domain) : NULL;
    if (cc == NULL) {
        char sample[128];
        log_info("component_unknown", "conn=%llu ip=%s to=\"%s\"", (unsigned long long)c->serial, c->ip,
                 mk_sanitize(sample, sizeof sample, to, strlen(to)));
        free(domain);
        conn_stream_error(c, "host-unknown", "no external component is configured for that domain");
        return;
    }
    c->comp->cfg = cc;
    free(c->domain);
    c->domain = domain;
    unsigned char rnd[8];
    RAND_bytes(rnd, sizeof rnd);
    snprintf(c->stream_id, sizeof c->stream_id, "%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
             rnd[4], rnd[5], rnd[6], rnd[7]);
    struct buf b;
    buf_init(&b);
    buf_printf(&b,
               "<?xml version='1.0'?><stream:stream xmlns='" NS_COMPONENT
               "' xmlns:stream='http://etherx.jabber.org/streams' id='%s' from='",
               c->stream_id);
    xml_escape(&b, domain, strlen(domain));
    buf_append_str(&b, "'>");
    conn_write(c, b.data, b.len);
    buf_release(&b);
    c->state = CONN_STATE_AUTH;
}

/* hex(SHA-1(stream id + secret)), lower case, into out[41]. */
static int handshake_digest(const char *stream_id, const char *secret, char out[41])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    int ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha1(), NULL) == 1 &&
             EVP_DigestUpdate(md, stream_id, strlen(stream_id)) == 1 &&
             EVP_DigestUpdate(md, secret, strlen(secret)) == 1 && EVP_DigestFinal_ex(md, d, &dl) == 1 && dl == 20;
    EVP_MD_CTX_free(md);
    if (!ok)
        return -1;
    for (unsigned i = 0; i < 20; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
    OPENSSL_cleanse(d, sizeof d);
    return 0;
}

static void on_handshake(struct conn *c, const struct xml_node *n)
{
    const struct cfg_component *cc = c->comp->cfg;
    char *text = xml_text(n);
    size_t len = strlen(text);
    char want[41];
    char got[41];
    bool ok = false;
    if (cc->secret != NULL && cc->secret[0] != '\0' && len == 40 &&
        handshake_digest(c->stream_id, cc->secret, want) == 0) {
        /* Hex digits in either case; compared in constant time. */
        for (size_t i = 0; i < 40; i++)
            got[i] = (char)tolower((unsigned char)text[i]);
        got[40] = '\0';
        ok = CRYPTO_memcmp(got, want, 40) == 0;
    }
    OPENSSL_cleanse(want, sizeof want);
    free(text);
    if (!ok) {
        metric_inc(c->c2s->m_component_handshakes, "failure");
        log_info("component_auth_failed", "conn=%llu ip=%s domain=%s", (unsigned long long)c->serial, c->ip,
                 c->domain);
        conn_stream_error(c, "not-authorized", "the handshake does not match the component's secret");
        return;
    }
    metric_inc(c->c2s->m_component_handshakes, "success");
    conn_write_str(c, "<handshake/>");
    c->user = xstrdup(c->domain);   /* authenticated: the pre-authentication limits and timer end */
    c->state = CONN_STATE_SESSION;
    ev_timer_stop(c->c2s->loop, &c->timer);
    ev_timer_set(&c->timer, (double)c->c2s->cfg->limits.idle_timeout_sec, 0.);
    ev_timer_start(c->c2s->loop, &c->timer);
    register_component(c->comp);
}

/* Stanzas from the component ----------------------------------------------------------------- */

/* The stanza's elements in the component namespace move to jabber:client: the stanza
 * then travels and is checked exactly like a client's (serialized without xmlns). The
 * parser caps the depth, so the recursion is bounded. */
static void to_client_ns(struct xml_node *n)
{
    if (n->name == NULL)
        return;
    if (n->ns != NULL && strcmp(n->ns, NS_COMPONENT) == 0) {
        free(n->ns);
        n->ns = xstrdup(XML_NS_CLIENT);
    }
    for (struct xml_node *ch = n->first_child; ch != NULL; ch = ch->next)
        to_client_ns(ch);
}

/* A stanza error back to the component (never for an error). Borrows st. */
static void reply_error(struct conn *c, const struct xml_node *st, const char *type, const char *condition,
                        const char *text)
{
    struct xml_node *r = stanza_error_reply(st, type, condition, text);
    if (r == NULL)
        return;
    if (xml_attr(r, "from") == NULL)
        xml_set_attr(r, "from", c->c2s->cfg->domains[0]);
    conn_send(c, r);
    xml_free(&r);
}

static Mk__StanzaKind kind_of(const char *name)
{
    if (strcmp(name, "message") == 0)
        return MK__STANZA_KIND__STANZA_KIND_MESSAGE;
    if (strcmp(name, "presence") == 0)
        return MK__STANZA_KIND__STANZA_KIND_PRESENCE;
    return MK__STANZA_KIND__STANZA_KIND_IQ;
}

/* Sets attribute name of st to the prepared form of its JID; -1 when it is not one. */
static int prepare_jid_attr(struct xml_node *st, const char *name, struct jid *out)
{
    char err[160];
    if (jid_parse(xml_attr(st, name), out, err, sizeof err) == -1)
        return -1;
    char *prepared = jid_to_string(out, false);
    xml_set_attr(st, name, prepared);
    free(prepared);
    return 0;
}

static void on_component_stanza(struct conn *c, struct xml_node *st)
{
    struct c2s *s = c->c2s;
    if (strcmp(st->ns, NS_COMPONENT) != 0 && strcmp(st->ns, XML_NS_CLIENT) != 0) {
        conn_stream_error(c, "invalid-namespace", NULL);
        return;
    }
    if (strcmp(st->name, "message") != 0 && strcmp(st->name, "presence") != 0 && strcmp(st->name, "iq") != 0) {
        conn_stream_error(c, "unsupported-stanza-type", NULL);
        return;
    }
    metric_inc(s->m_stanzas_in, st->name);
    to_client_ns(st);
    /* XEP-0114: a component speaks only for addresses at its own domain. */
    const char *from = xml_attr(st, "from");
    if (from == NULL || *from == '\0') {
        conn_stream_error(c, "improper-addressing", "a component's stanza needs a 'from' at its domain");
        return;
    }
    struct jid fj;
    if (prepare_jid_attr(st, "from", &fj) == -1) {
        conn_stream_error(c, "invalid-from", "the 'from' is not a valid JID");
        return;
    }
    bool own = strcmp(fj.domain, c->domain) == 0;
    jid_release(&fj);
    if (!own) {
        char sample[128];
        from = xml_attr(st, "from");   /* prepared: the attribute was replaced */
        log_info("invalid_from", "component=%s from=\"%s\"", c->domain,
                 mk_sanitize(sample, sizeof sample, from, strlen(from)));
        conn_stream_error(c, "invalid-from", "a component may only send from addresses at its own domain");
        return;
    }
    const char *type = xml_attr(st, "type");
    const char *to = xml_attr(st, "to");
    if (to == NULL || *to == '\0') {
        reply_error(c, st, "modify", "bad-request", "a component's stanza needs a 'to'");
        return;
    }
    struct jid tj;
    if (prepare_jid_attr(st, "to", &tj) == -1) {
        reply_error(c, st, "modify", "jid-malformed", NULL);
        return;
    }
    jid_release(&tj);
    Mk__StanzaKind kind = kind_of(st->name);
    if (kind == MK__STANZA_KIND__STANZA_KIND_IQ) {
        if (type == NULL || (strcmp(type, "get") && strcmp(type, "set") && strcmp(type, "result") &&
                             strcmp(type, "error"))) {
            reply_error(c, st, "modify", "bad-request", "an iq needs a type");
            return;
        }
        if (xml_attr(st, "id") == NULL) {
            reply_error(c, st, "modify", "bad-request", "an iq needs an id");
            return;
        }
    }
    if (session_route(s, st) == -1 && errno == EAGAIN)
        reply_error(c, st, "wait", "resource-constraint", "the server is busy; send it again later");
}

void component_on_event(void *ud, enum xml_event_kind kind, struct xml_node **node)
{
    struct conn *c = ud;
    if (c->closed || c->state == CONN_STATE_CLOSING)
        return;
    switch (kind) {
    case XML_EVENT_STREAM_OPEN:
        on_header(c, *node);
        break;
    case XML_EVENT_STANZA: {
        struct xml_node *n = *node;
        if (c->state == CONN_STATE_AUTH) {
            if (strcmp(n->name, "handshake") == 0 && strcmp(n->ns, NS_COMPONENT) == 0)
                on_handshake(c, n);
            else
                conn_stream_error(c, "not-authorized", "send the handshake first");
        } else if (c->state == CONN_STATE_SESSION) {
            if (strcmp(n->name, "handshake") == 0 && strcmp(n->ns, NS_COMPONENT) == 0)
                conn_stream_error(c, "policy-violation", "the handshake is already done");
            else
                on_component_stanza(c, n);
        } else {
            conn_stream_error(c, "not-authorized", NULL);
        }
        break;
    }
    case XML_EVENT_STREAM_CLOSE:
        conn_close_stream(c);
        break;
    case XML_EVENT_ERROR:
        break;   /* conn_read reports it */
    }
}
