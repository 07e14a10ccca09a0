/* c2s/module.h - the interface of a c2s feature module (one static table per feature) and the dispatch through c2s/modules.c's list. */
#ifndef MK_C2S_MODULE_H
#define MK_C2S_MODULE_H
#include <stdbool.h>
#include <stddef.h>

#include "c2s.h"
#include "meerkat.pb-c.h"
#include "xml.h"

/* Flags of an IQ namespace a module answers. */
#define C2S_IQ_SERVER_DEFAULT 0x1u  /* an IQ with no 'to' is for the server (version, time, ping); by default
                                     * it is for the user's own account (RFC 6120 10.3.3) */
#define C2S_IQ_CHECK_ACCOUNT  0x2u  /* addressed to another local account: answered only when that account
                                     * exists (service-unavailable otherwise, RFC 6121 8.5.1) */

/* One IQ namespace a module answers: the first child of the IQ is in ns. */
struct c2s_iq_handler {
    const char *ns;
    unsigned flags;                /* C2S_IQ_* */
    /* A get or set from the client of sess, to the server (target NULL) or a local account
     * (target its prepared bare JID, the user's own included). Returns DISP_DONE when
     * answered (now or later); DISP_PASS makes the caller answer service-unavailable.
     * Borrows everything. NULL: the namespace has only pushes. */
    enum disp (*handle)(struct session *sess, const struct xml_node *iq, const char *target);
    /* A server push in ns reached sess: an IQ set from the user's bare JID to itself,
     * routed to every session of the account (feat_route_push). Borrows iq. NULL: none. */
    void (*push)(struct session *sess, struct xml_node *iq);
};

/* A feature of the c2s. Every member but name may be NULL/0. Hooks run in the order of
 * the list in c2s/modules.c. A module calls no other module: what two modules share is
 * session data (c2s.h) with its helpers in c2s/feat.h, or an event of this interface. */
struct c2s_module {
    const char *name;
    /* What disco#info lists (NULL-terminated arrays): for the server's domain, and for
     * an account (the user's own or another local one). */
    const char *const *server_features;
    const char *const *account_features;
    /* The disco#info identities it adds for an account ("category/type" strings,
     * NULL-terminated), advertised like account_features. */
    const char *const *account_identities;
    /* False when the module is configured off for domain (the hosted domain whose disco
     * is asked: the server's, or the account's): nothing of it is advertised there (its
     * hooks still run and refuse what they do not serve). NULL: always on. */
    bool (*advertised)(const struct c2s *s, const char *domain);
    /* Adds its elements to <stream:features> before or after authentication. */
    void (*stream_features)(struct conn *c, struct xml_node *features, bool authenticated);
    /* The IQ namespaces it answers, ending with an entry whose ns is NULL. */
    const struct c2s_iq_handler *iqs;
    /* Bytes of per-session state, zeroed when the session opens (c2s_session_state);
     * session_close frees what it points to, the core frees the bytes. */
    size_t session_state;

    /* Process start (after node_init) and end. */
    void (*init)(struct c2s *s);
    void (*fini)(struct c2s *s);
    /* Work a graceful stop waits for (0 when none). */
    size_t (*pending)(const struct c2s *s);
    /* A bus envelope: true when the module consumed it. Borrows e. */
    bool (*envelope)(struct c2s *s, const Mk__Envelope *e);

    /* An IQ before authentication: DISP_DONE when answered, DISP_PASS when not its
     * business (the stream then ends with not-authorized). Borrows everything. */
    enum disp (*preauth_iq)(struct conn *c, struct xml_node *iq);
    /* Right after bind. A module that loads state the session's presence needs calls
     * session_hold now and session_release when the load is in. */
    void (*session_open)(struct session *sess);
    /* Before the session goes (its connection is closing); sess is still whole. */
    void (*session_close)(struct session *sess);
    /* A message or presence from the client (from stamped, to prepared; presence only
     * once the session's start-up loads are in). DISP_DONE stops it (the module
     * answered, stored or dropped it); DISP_PASS lets the next module and then the
     * router have it. Borrows sess; st stays the caller's. */
    enum disp (*stanza_out)(struct session *sess, Mk__StanzaKind kind, struct xml_node *st);
    /* A stanza the router delivers to sess (not a server push): false drops it (the
     * modules after it are not asked). May act first. Borrows everything. */
    bool (*stanza_in)(struct session *sess, const Mk__Route *r);
    /* The session's own presence changed (sess->available, sess->priority are the new
     * state); initial is true for the first available presence after none. */
    void (*presence_changed)(struct session *sess, bool initial);
    /* disco#items of an account (target its bare JID, the user's own included) without a
     * node, asked by the client of sess: DISP_DONE when the module answered it (now or
     * later); the first module answering wins, else the list is empty. Borrows everything. */
    enum disp (*disco_items)(struct session *sess, const struct xml_node *iq, const char *target);
    /* A result or error IQ from the client of sess addressed to the server (an answer to
     * a query the server sent it): true when the module took it. Borrows everything. */
    bool (*iq_answer)(struct session *sess, const struct xml_node *iq);
    /* A top-level element after bind that is not a stanza (namespace other than
     * jabber:client: XEP-0352's <active/>, ...). DISP_DONE when handled; when no module
     * handles it the stream ends with <unsupported-stanza-type/>. Borrows everything. */
    enum disp (*nonza)(struct session *sess, const struct xml_node *el);
    /* A stanza (its serialized bytes p/n) was queued for sess while its connection is
     * detached (XEP-0198, waiting for resumption), or was unacknowledged when it
     * detached. Told by the stream management module. Borrows everything. */
    void (*detached_stanza)(struct session *sess, const void *p, size_t n);
    /* XEP-0198 resumption on another c2s: the module's part of the session travels in the
     * holder's answer. handover_save appends it to out (appending nothing: no part); on
     * the c2s that takes the session over, handover_load gets those bytes (from another
     * process: lengths checked, bad input ignored) after the session opened there and
     * before anything is delivered to it. Borrows everything. */
    void (*handover_save)(struct session *sess, struct buf *out);
    void (*handover_load)(struct session *sess, const void *p, size_t n);
};

/* --- modules.c: the list, and the dispatch every caller goes through ---------------------- */
/* Runs every module's init; computes the per-session state layout. Borrows s. */
void c2s_modules_init(struct c2s *s);
void c2s_modules_fini(struct c2s *s);
/* Sum of the modules' pending work. */
size_t c2s_modules_pending(const struct c2s *s);
/* True when a module consumed e. Borrows e. */
bool c2s_modules_envelope(struct c2s *s, const Mk__Envelope *e);
/* Pre-authentication IQ: the first module answering it wins. */
enum disp c2s_modules_preauth_iq(struct conn *c, struct xml_node *iq);
void c2s_modules_stream_features(struct conn *c, struct xml_node *features, bool authenticated);
/* Adds <feature var=…/> (namespace of query) for what the modules advertised for domain
 * (hosted; borrowed) list for the server (server true) or an account. */
void c2s_modules_disco_features(const struct c2s *s, struct xml_node *query, bool server, const char *domain);
/* Adds <identity category type/> for what the modules advertised for an account of domain. */
void c2s_modules_disco_identities(const struct c2s *s, struct xml_node *query, const char *domain);
/* disco#items of an account: the first module answering it (DISP_DONE), else DISP_PASS. */
enum disp c2s_modules_disco_items(struct session *sess, const struct xml_node *iq, const char *target);
/* An IQ answer from the client to the server: true when a module took it. */
bool c2s_modules_iq_answer(struct session *sess, const struct xml_node *iq);
/* The handler of an IQ namespace, or NULL. Compares strings: IQs only. */
const struct c2s_iq_handler *c2s_modules_iq(const char *ns);
/* Allocates the session's module state and runs session_open hooks. */
void c2s_modules_session_open(struct session *sess);
/* Runs session_close hooks (in reverse order) and frees the module state. */
void c2s_modules_session_close(struct session *sess);
enum disp c2s_modules_stanza_out(struct session *sess, Mk__StanzaKind kind, struct xml_node *st);
bool c2s_modules_stanza_in(struct session *sess, const Mk__Route *r);
/* Tells every module that the session's own presence changed (called by the module
 * that handles the client's presence). */
void c2s_modules_presence_changed(struct session *sess, bool initial);
/* A nonza after bind: the first module answering it wins. */
enum disp c2s_modules_nonza(struct session *sess, const struct xml_node *el);
/* Tells every module of a stanza queued for (or left unacknowledged by) a detached
 * session (the detached_stanza event). Borrows everything. */
/* Each module's handover_save part of sess, passed to put with the module's name (only
 * the parts that are not empty). */
void c2s_modules_handover_save(struct session *sess, void (*put)(void *ud, const char *module, const struct buf *part),
                               void *ud);
/* The part saved by the module named module (another c2s's answer: an unknown name is
 * ignored). Borrows all. */
void c2s_modules_handover_load(struct session *sess, const char *module, const void *p, size_t n);
void c2s_modules_detached_stanza(struct session *sess, const void *p, size_t n);
/* The module's per-session state of sess (session_state bytes), or NULL when it has
 * none or the session is closing. */
void *c2s_session_state(const struct session *sess, const struct c2s_module *m);

/* --- session.c: start-up loads -------------------------------------------------------------- */
/* A start-up load for sess begins: the client's presence is held (in order) until every
 * begun load has been released. */
void session_hold(struct session *sess);
/* The load is in (or failed): when it was the last, the held presence is handled now. */
void session_release(struct session *sess);
#endif
