/* c2s/sm.h - XEP-0198 stream management: what the c2s core (conn.c, stream.c, session.c) calls; the module table is in c2s/sm.c. */
#ifndef MK_C2S_SM_H
#define MK_C2S_SM_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "c2s.h"
#include "xml.h"

#define NS_SM "urn:xmpp:sm:3"

/* XEP-0198 counters count modulo 2^32. True when a client's h acknowledges no more than
 * was sent: acked <= h <= sent going round the circle of 2^32 from acked (so a counter
 * that wrapped past 2^32 - 1 to 0 is still in order). */
static inline bool sm_h_valid(uint32_t acked, uint32_t sent, uint32_t h)
{
    return (uint32_t)(h - acked) <= (uint32_t)(sent - acked);
}

/* A stream-management element (namespace NS_SM: enable, resume, r, a) from the client
 * of c, bound (CONN_STATE_SESSION) or authenticated and not yet bound
 * (CONN_STATE_BIND: where <resume/> belongs). Answers it, or ends the stream with the
 * error it deserves. Borrows c and el. */
void sm_on_element(struct conn *c, const struct xml_node *el);

/* True when stream management is on for sess (its stanzas are counted and kept). */
bool sm_active(const struct session *sess);

/* The client of sess sent a stanza (counted in the 'h' the server acknowledges). */
void sm_handled(struct session *sess);

/* A stanza (its serialized bytes, p/n, borrowed) was written to the client of sess, or
 * to its queue while the session is detached: with stream management on, a copy is kept
 * until the client acknowledges it. Past modules.sm.max_unacked the stream ends at this
 * loop iteration's flush. Returns true when the caller should follow it with an <r/>
 * (no request outstanding): conn.c appends it after the stanza. */
bool sm_sent(struct session *sess, const void *p, size_t n);

/* The connection of sess is gone (peer closed, read or write error, idle): true when the
 * session is kept detached for resumption (the caller closes the socket and arms
 * sm_resume_timeout(sess)); false when it ends now. */
bool sm_detach(struct session *sess);
/* Seconds a detached session waits for <resume/>. */
double sm_resume_timeout(const struct session *sess);

/* Calls cb(ud, true) once the client of sess has acknowledged the last n stanzas written
 * to it (at once when stream management is off: they are in the output buffer, as
 * before), or cb(ud, false) when the session ends first; those n stanzas are then not
 * stored offline by stream management (the caller still has them: c2s/offline.c keeps its
 * rows). cb must not write to the session. Borrows sess; ud is the caller's. */
void sm_after_ack(struct session *sess, size_t n, void (*cb)(void *ud, bool acked), void *ud);

/* Stanzas sent to the client of sess and not acknowledged (0 with stream management off). */
uint32_t sm_unacked(const struct session *sess);
/* Asks the client of sess for an acknowledgement (<r/>) now; nothing with stream
 * management off or a detached session. Used by a graceful stop (c2s/drain.c). */
void sm_request_ack(struct session *sess);
/* Tells the client of sess how many of its stanzas the server handled (<a h/>, which
 * XEP-0198 allows unasked), so that a client whose stream ends next knows which of its
 * stanzas to send again; nothing with stream management off or a detached session. */
void sm_tell_handled(struct session *sess);

/* A Deliver d for session id sid, not (yet) a session here: true when a <resume/> from
 * another c2s is waiting for that id (the holder moved the route before answering); d
 * is kept (a copy; at most modules.sm.max_unacked) and handled once the session is here,
 * or routed again if it never comes. Borrows d. */
bool sm_park_deliver(struct c2s *s, uint64_t sid, const Mk__Deliver *d);
#endif
