/* c2s/modules.c - the list of the c2s's feature modules, in dispatch order, and the walks over it. */
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "module.h"
#include "util.h"

/* The modules, in the order their hooks run. Adding a feature: its file defines
 * `const struct c2s_module <name>_module`, and one X(<name>) goes here.
 * Order matters where hooks meet: blocking drops a blocked sender's stanzas before
 * presence sees them; roster takes subscription presence before presence does; mam
 * archives a message only after blocking let it out and carbons refused a forged carbon;
 * pep reads a client's caps from its presence before presence takes it, and filters PEP
 * events by +notify interest after blocking dropped a blocked sender's;
 * pushev (push events) comes late, so a message's sent event is emitted only for what
 * goes to the router; csi is last, so it holds only what every other stanza_in let in. */
#define C2S_MODULES(X) \
    X(server)          \
    X(blocking)        \
    X(roster)          \
    X(pep)             \
    X(presence)        \
    X(offline)         \
    X(register)        \
    X(carbons)         \
    X(sm)              \
    X(inbox)           \
    X(mam)             \
    X(push)            \
    X(pushev)          \
    X(csi)

#define DECLARE(name) extern const struct c2s_module name##_module;
C2S_MODULES(DECLARE)
#undef DECLARE

#define ENTRY(name) &name##_module,
static const struct c2s_module *const modules[] = {C2S_MODULES(ENTRY)};
#undef ENTRY

#define NMODULES MK_ARRAY_LEN(modules)

/* Per-session state: one block per session, each module's part at its offset. */
static size_t state_off[NMODULES];
static size_t state_size;

void c2s_modules_init(struct c2s *s)
{
    state_size = 0;
    for (size_t i = 0; i < NMODULES; i++) {
        state_off[i] = state_size;
        state_size += (modules[i]->session_state + 15) & ~(size_t)15;
        if (modules[i]->init)
            modules[i]->init(s);
    }
}

void c2s_modules_fini(struct c2s *s)
{
    for (size_t i = NMODULES; i-- > 0;)
        if (modules[i]->fini)
            modules[i]->fini(s);
}

size_t c2s_modules_pending(const struct c2s *s)
{
    size_t n = 0;
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->pending)
            n += modules[i]->pending(s);
    return n;
}

bool c2s_modules_envelope(struct c2s *s, const Mk__Envelope *e)
{
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->envelope && modules[i]->envelope(s, e))
            return true;
    return false;
}

enum disp c2s_modules_preauth_iq(struct conn *c, struct xml_node *iq)
{
    for (size_t i = 0; i < NMODULES; i++) {
        if (!modules[i]->preauth_iq)
            continue;
        enum disp d = modules[i]->preauth_iq(c, iq);
        if (d != DISP_PASS)
            return d;
    }
    return DISP_PASS;
}

void c2s_modules_stream_features(struct conn *c, struct xml_node *features, bool authenticated)
{
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->stream_features)
            modules[i]->stream_features(c, features, authenticated);
}

void c2s_modules_disco_features(const struct c2s *s, struct xml_node *query, bool server, const char *domain)
{
    for (size_t i = 0; i < NMODULES; i++) {
        const struct c2s_module *m = modules[i];
        const char *const *vars = server ? m->server_features : m->account_features;
        if (!vars || (m->advertised && !m->advertised(s, domain)))
            continue;
        for (; *vars; vars++)
            xml_set_attr(xml_add_child(query, "feature", query->ns), "var", *vars);
    }
}

void c2s_modules_disco_identities(const struct c2s *s, struct xml_node *query, const char *domain)
{
    for (size_t i = 0; i < NMODULES; i++) {
        const struct c2s_module *m = modules[i];
        if (!m->account_identities || (m->advertised && !m->advertised(s, domain)))
            continue;
        for (const char *const *id = m->account_identities; *id; id++) {
            const char *slash = strchr(*id, '/');
            if (!slash)
                continue;
            struct xml_node *el = xml_add_child(query, "identity", query->ns);
            char *cat = xstrndup(*id, (size_t)(slash - *id));
            xml_set_attr(el, "category", cat);
            xml_set_attr(el, "type", slash + 1);
            free(cat);
        }
    }
}

enum disp c2s_modules_disco_items(struct session *sess, const struct xml_node *iq, const char *target)
{
    for (size_t i = 0; i < NMODULES; i++) {
        if (!modules[i]->disco_items)
            continue;
        enum disp d = modules[i]->disco_items(sess, iq, target);
        if (d != DISP_PASS)
            return d;
    }
    return DISP_PASS;
}

bool c2s_modules_iq_answer(struct session *sess, const struct xml_node *iq)
{
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->iq_answer && modules[i]->iq_answer(sess, iq))
            return true;
    return false;
}

const struct c2s_iq_handler *c2s_modules_iq(const char *ns)
{
    if (!ns)
        return NULL;
    for (size_t i = 0; i < NMODULES; i++)
        for (const struct c2s_iq_handler *h = modules[i]->iqs; h && h->ns; h++)
            if (strcmp(h->ns, ns) == 0)
                return h;
    return NULL;
}

void c2s_modules_session_open(struct session *sess)
{
    if (state_size)
        sess->mod_state = xcalloc(1, state_size);
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->session_open)
            modules[i]->session_open(sess);
}

void c2s_modules_session_close(struct session *sess)
{
    for (size_t i = NMODULES; i-- > 0;)
        if (modules[i]->session_close)
            modules[i]->session_close(sess);
    free(sess->mod_state);
    sess->mod_state = NULL;
}

enum disp c2s_modules_stanza_out(struct session *sess, Mk__StanzaKind kind, struct xml_node *st)
{
    for (size_t i = 0; i < NMODULES; i++) {
        if (!modules[i]->stanza_out)
            continue;
        enum disp d = modules[i]->stanza_out(sess, kind, st);
        if (d != DISP_PASS)
            return d;
    }
    return DISP_PASS;
}

bool c2s_modules_stanza_in(struct session *sess, const Mk__Route *r)
{
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->stanza_in && !modules[i]->stanza_in(sess, r))
            return false;
    return true;
}

void c2s_modules_presence_changed(struct session *sess, bool initial)
{
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->presence_changed)
            modules[i]->presence_changed(sess, initial);
}

enum disp c2s_modules_nonza(struct session *sess, const struct xml_node *el)
{
    for (size_t i = 0; i < NMODULES; i++) {
        if (!modules[i]->nonza)
            continue;
        enum disp d = modules[i]->nonza(sess, el);
        if (d != DISP_PASS)
            return d;
    }
    return DISP_PASS;
}

void c2s_modules_detached_stanza(struct session *sess, const void *p, size_t n)
{
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->detached_stanza)
            modules[i]->detached_stanza(sess, p, n);
}

void c2s_modules_handover_save(struct session *sess, void (*put)(void *ud, const char *module, const struct buf *part),
                               void *ud)
{
    struct buf part;
    buf_init(&part);
    for (size_t i = 0; i < NMODULES; i++) {
        if (!modules[i]->handover_save)
            continue;
        part.len = 0;
        modules[i]->handover_save(sess, &part);
        if (part.len > 0)
            put(ud, modules[i]->name, &part);
    }
    buf_release(&part);
}

void c2s_modules_handover_load(struct session *sess, const char *module, const void *p, size_t n)
{
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->handover_load && strcmp(modules[i]->name, module) == 0)
            modules[i]->handover_load(sess, p, n);
}

void *c2s_session_state(const struct session *sess, const struct c2s_module *m)
{
    if (!sess->mod_state || !m->session_state)
        return NULL;
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i] == m)
            return (char *)sess->mod_state + state_off[i];
    return NULL;
}
