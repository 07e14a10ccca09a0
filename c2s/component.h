/* c2s/component.h - external components (XEP-0114) on the component listener: handshake, their stanzas in, routed stanzas out. */
#ifndef MK_C2S_COMPONENT_H
#define MK_C2S_COMPONENT_H
#include <stddef.h>
#include <stdint.h>

#include "meerkat.pb-c.h"
#include "xml.h"

#define NS_COMPONENT "jabber:component:accept"

struct c2s;
struct conn;

/* Makes c (just accepted on the component listener) a component connection: its
 * parser's events go to component_on_event; once authenticated it is never closed for
 * being idle (conn.c sends a whitespace keepalive instead). Borrows c; c->comp owns
 * the state. */
void component_attach(struct conn *c);
/* The parser's event callback of a component connection (ud is the conn): the stream
 * header (to = a configured component domain), the <handshake/> (hex SHA-1 of stream
 * id + secret), then stanzas, checked (from at the component's domain) and routed. */
void component_on_event(void *ud, enum xml_event_kind kind, struct xml_node **node);
/* The connection of c ends (stream error, close, socket gone): the routers forget the
 * component (SessionClose to every shard). Safe more than once. Borrows c. */
void component_end(struct conn *c, const char *reason);
/* Frees c->comp (the connection is being freed). */
void component_free(struct conn *c);
/* Writes the routed stanza of a Deliver to the component connection with that session
 * id, as its bytes came (a stanza on the bus carries no xmlns, so on the component
 * stream it is in jabber:component:accept, as XEP-0114 wants). Returns 1 when id is
 * a component connection of this c2s, 0 when not. Borrows r. */
int component_deliver(struct c2s *s, uint64_t id, const Mk__Route *r);
/* A router asks to close the component connection with that session id (a newer
 * connection for the domain replaced it: reason "conflict"). Returns 1 when id is a
 * component connection of this c2s, 0 when not. Borrows cl. */
int component_on_router_close(struct c2s *s, const Mk__SessionClose *cl);
/* A router (re)started: registers every component connection of this c2s with it
 * again. Returns how many. Borrows router. */
size_t component_resync_router(struct c2s *s, const char *router);
#endif
