/* pusher/webhook.h - the HTTP webhook backend's request bodies: MongooseIM's form, or signed JSON. */
#ifndef MK_PUSHER_WEBHOOK_H
#define MK_PUSHER_WEBHOOK_H
#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "meerkat.pb-c.h"

/* Length of "sha256=" + 64 hex digits, without the NUL. */
#define WEBHOOK_SIGNATURE_LEN 71u

/* Appends s (n bytes, borrowed) to out encoded as MongooseIM 2.2.0 encodes a form
 * value (cowlib's cow_qs:qs): A-Z a-z 0-9 - . _ kept, space as '+', every other
 * byte as %XX with upper-case hex. */
void webhook_form_encode(struct buf *out, const char *s, size_t n);

/* Appends the form body of a SENT chat message with a non-empty body to out:
 * author=<sender's localpart>&server=<sender's domain>&receiver=<recipient's
 * localpart>&message=<body>. Returns 0, or -1 (out untouched) when the event is not
 * one the form reports (another kind, a type other than chat, no body). Borrows ev. */
int webhook_form_body(const Mk__PushEvent *ev, struct buf *out);

/* Appends s (n bytes, borrowed) to out as a JSON string with its quotes: '"' and
 * '\' escaped, control characters as \n \r \t \b \f or \u00XX, other bytes
 * (UTF-8) as they are. */
void webhook_json_string(struct buf *out, const char *s, size_t n);

/* Appends the event as one JSON object to out: kind, id, timestamp (RFC 3339, UTC,
 * microseconds), stamp_us, user, from, to, type, body (null when none), direction
 * ("in" for what a local user sent, "out" for what was delivered or stored, null for
 * presence), unavailable, mam_id (the stanza-id text form, null when none). Borrows ev. */
void webhook_json_body(const Mk__PushEvent *ev, struct buf *out);

/* Writes "sha256=<hex HMAC-SHA256 of body with secret>" and a NUL into out
 * (WEBHOOK_SIGNATURE_LEN + 1 bytes). Borrows everything. */
void webhook_signature(const char *secret, const void *body, size_t len, char *out);
#endif
