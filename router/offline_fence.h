/* router/offline_fence.h - tells a c2s when every message this shard sent to offline storage for a user, before it knew the user's session available, is stored: the c2s fetches the user's offline messages again then (none is left behind by a fetch that ran before the write committed). */
#ifndef MK_ROUTER_OFFLINE_FENCE_H
#define MK_ROUTER_OFFLINE_FENCE_H

struct router;
struct router_sess;
struct router_offline_fence;

/* Borrows rt (its node and offline channel set, which must outlive the fence). */
struct router_offline_fence *router_offline_fence_new(struct router *rt);
void router_offline_fence_free(struct router_offline_fence **fp);   /* NULL-safe */

/* Session s just became available with a non-negative priority (a login's or a resync's
 * first available presence). Its c2s gets OfflineFetch{owner, c2s, session id} once the
 * offline writes sent so far to the user's mam shard are acknowledged (at once when none
 * is pending). Borrows s. */
void router_offline_fence_add(struct router_offline_fence *f, const struct router_sess *s);
/* Offline writes were acknowledged: sends the OfflineFetch that are due. */
void router_offline_fence_progress(struct router_offline_fence *f);
#endif
