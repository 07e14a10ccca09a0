/* c2s/pushev.h - what other c2s code asks of the push events module (c2s/pushev.c). */
#ifndef MK_C2S_PUSHEV_H
#define MK_C2S_PUSHEV_H
#include <stdbool.h>
#include <stddef.h>

#include "c2s.h"

/* A stanza (its serialized bytes p/n, borrowed) was queued for sess while its connection
 * is detached (XEP-0198, waiting for resumption), or was unacknowledged when it
 * detached: when it is a message with a body and
 * the user's domain wants delivered events, a DELIVERED event with unavailable and
 * sm_detached set goes to the pusher (an xep0357 backend publishes for it, as MongooseIM
 * pushes for a suspended session). Parses the bytes only when such events are wanted.
 * Borrows sess. */
void pushev_detached_stanza(struct session *sess, const void *p, size_t n);
#endif
