/* common/env.h - bus envelopes: the only module that packs and unpacks the generated protobuf-c code. */
#ifndef MK_COMMON_ENV_H
#define MK_COMMON_ENV_H
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "meerkat.pb-c.h"

#define ENV_VERSION 1u

/* Received envelopes are read through the generated struct (Mk__Envelope and its
 * payload structs, field by field); they are built and freed only here. */

/* Decodes one frame. Returns a new envelope, or NULL when the bytes are not a valid
 * Envelope, carry a version newer than ENV_VERSION, or lack a sender or payload. */
Mk__Envelope *env_decode(const void *data, size_t len);
/* Frees a decoded envelope; NULL-safe; sets *ep to NULL. */
void env_free(Mk__Envelope **ep);

/* Packs e (built by the caller on the stack from the generated initialisers, fields
 * borrowed) into out (appended). Sets e->version to ENV_VERSION. */
void env_pack(Mk__Envelope *e, struct buf *out);

/* The payload's name for logs and metrics ("route", "hello", ...), "none" when unset. */
const char *env_payload_name(const Mk__Envelope *e);
/* Initialises *r as a Route of kind from -> to with type and id (NULL: "") and the
 * stanza's bytes xml[0, len). Borrows every pointer (r points at them). */
void env_route_init(Mk__Route *r, Mk__StanzaKind kind, const char *from, const char *to, const char *type,
                    const char *id, const char *xml, size_t len);

/* A fan-out template (Route.to_at != 0) made whole for one recipient: *out becomes a
 * shallow copy of tmpl with to and to_at 0, its xml the template's bytes with to
 * (XML-escaped) written at to_at, in xml (emptied first). Borrows tmpl and to (out
 * points at them and at xml's bytes, valid until xml changes). Returns 0, or -1 with
 * errno EINVAL when tmpl is not a template (to_at 0 or past its bytes) or to is NULL. */
int env_route_fill(const Mk__Route *tmpl, const char *to, struct buf *xml, Mk__Route *out);
#endif
