/* c2s/drain.h - graceful stop of the client streams: nothing a stopping c2s holds for its clients is lost, and they are sent to another c2s (<see-other-host/>) or told <system-shutdown/>. */
#ifndef MK_C2S_DRAIN_H
#define MK_C2S_DRAIN_H
#include <stdbool.h>
#include <stddef.h>

#include "c2s.h"
#include "meerkat.pb-c.h"

/* Starts the graceful stop of every client stream (SIGTERM, after the listeners
 * closed). A stream that is not a bound session ends now. For the sessions:
 *  1. each router shard is told that they are gone (SessionClose): what it routes to
 *     their users from now on goes to their other sessions or to offline storage;
 *  2. a SessionList request to every router is the barrier: its answer comes after
 *     every Deliver that router sent before it forgot the sessions, so all of those
 *     are written to the clients first (waiting at most the drain budget);
 *  3. a client with stream management is asked to acknowledge (<r/>) and its stream
 *     ends once it has acknowledged everything (or the budget is spent: what is still
 *     unacknowledged then goes to offline storage, c2s/sm.c), after an <a h/> telling
 *     it which of its own stanzas were handled; without stream management the stream
 *     ends after the barrier, behind everything written to it.
 * A stream ends with <see-other-host/> naming where to reconnect (cfg see_other_host:
 * auto names the client listener when another c2s process of this host (its bus
 * endpoint's host is this one's) has said hello since this one started: it listens
 * there too; a fixed host:port; off), else <system-shutdown/>.
 * The budget is half of grace_sec. Borrows s. */
void drain_start(struct c2s *s);
/* A router's answer to the barrier (a SessionList envelope): true when consumed (every
 * SessionList is: a c2s asks for nothing else). Borrows everything. */
bool drain_on_envelope(struct c2s *s, const Mk__Envelope *e);
/* True while the barrier has not been passed (the stop waits for it). */
bool drain_pending(const struct c2s *s);
/* Stops the watchers (process end). */
void drain_fini(struct c2s *s);
#endif
