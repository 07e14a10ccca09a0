/* router/muc.h - XEP-0045 group chat: the rooms whose bare JIDs this router shard owns, their occupants, roles, affiliations, subject and history. */
#ifndef MK_ROUTER_MUC_H
#define MK_ROUTER_MUC_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "meerkat.pb-c.h"

struct router;
struct router_muc;
struct xml_node;

#define NS_MUC        "http://jabber.org/protocol/muc"
#define NS_MUC_USER   "http://jabber.org/protocol/muc#user"
#define NS_MUC_ADMIN  "http://jabber.org/protocol/muc#admin"
#define NS_MUC_OWNER  "http://jabber.org/protocol/muc#owner"

/* Affiliations with one room can be granted to at most this many JIDs (bans included);
 * past it a change is refused <resource-constraint/>. */
#define MUC_MAX_AFFILIATIONS 1000

/* A room is the bare JID room@<service>, where <service> is modules.muc.host of a hosted
 * domain; the c2s routes every stanza to router[shard(bare of its to)] as for a user, so a
 * room's state lives on the shard that owns its bare JID and nowhere else. A room is
 * created by the first join (the joiner is the owner) and is temporary: destroyed when
 * the last occupant leaves or the owner destroys it, lost when the shard restarts. An
 * owner may make it persistent (muc#roomconfig_persistentroom): then its configuration,
 * subject and affiliations (router/muc_state.h) are written to the store at each change
 * (queued writes, one at a time per room), it stays in memory while empty, and after a
 * restart it is loaded from the store when a stanza first addresses it (stanzas to a
 * room not in memory wait for the store's answer, bounded). Rooms are open, public and
 * non-anonymous (every occupant sees every real JID) until their owner configures them
 * otherwise (muc#owner form).
 *
 * A user may register with a room (XEP-0045 7.10, jabber:iq:register): the nick is then
 * reserved for their bare JID (kept with the affiliations, so stored with a persistent
 * room), they become a member of a room open to all, and in a members-only room a member
 * with a reserved nick enters under it only; disco#info node x-roomuser-item tells the
 * asker its reserved nick (7.12). The service's room list (disco#items) is in the order
 * of the rooms' JIDs and paged with XEP-0059 over every router shard.
 *
 * The router opens the store for this (storage: the same database as every process);
 * router_muc_new fails (NULL, logged) when it cannot.
 *
 * What the room sends its occupants leaves as fan-outs (router_fanout, router/fanout.c):
 * each stanza is built once with its to attribute left empty, and goes with the list of
 * its recipients' full JIDs; the occupants whose bare JIDs this shard owns get one
 * Deliver per c2s carrying the stanza once and their sessions (the c2s writes each one's
 * JID as to), the others one Fanout envelope per owning router shard, which does the
 * same with its sessions. A groupchat message is one fan-out; a presence change one per
 * variant (the occupant itself with 110, those who may see its real JID, those who may
 * not); a join is the newcomer's presence to the others plus one batch to the newcomer
 * (every occupant's presence, its own, the history, the subject). Each incoming stanza
 * is parsed once. */

/* NULL when modules.muc.enabled is false, or (logged) when the store cannot be opened.
 * Borrows rt (its node and config). */
struct router_muc *router_muc_new(struct router *rt);
/* Lets the store writes in flight finish (running the loop), then frees; NULL-safe. */
void router_muc_free(struct router_muc **mp);

/* True when r (borrowed) is addressed to a MUC service or a room of it: then it is
 * handled (answered, broadcast, refused or dropped) and the caller does nothing more. */
bool router_muc_route(struct router_muc *m, const Mk__Route *r);

/* A room's archive (XEP-0313 on the room JID). With modules.mam on, each groupchat
 * message with a body of a room that archives (muc#roomconfig_enablearchiving, on by
 * default as with MongooseIM's mod_mam_muc, temporary rooms too; the owner may turn it
 * off) is written once the room's row is stored (the store keeps archive rows of
 * accounts and stored rooms only: a temporary room that archives has a row marked
 * temporary, never listed nor loaded, deleted with the room's archive when the room
 * goes, or when a stanza addresses the room after a restart of its shard), and is
 * written once, by the room's shard, on its reliable channel to mam[shard(room)]: owner
 * and peer the room, peer_resource the sender's nick, the message as occupants get it
 * (its <stanza-id by=room/> is the archive id) with the sender's real JID in a muc#user
 * <item/>. A MAM query to the room is checked here (an occupant, or a member, owner or
 * admin; not an outcast; nobody else in a members-only or password-protected room) and
 * sent on to that mam shard with the room's last write as its fence (read-your-writes:
 * an occupant who got a message sees it) and whether the asker may see real JIDs (a
 * non-anonymous room, or a moderator, admin or owner); the shard answers this router,
 * which routes each result to the asker (router_muc_on_mam_result). A persistent room
 * loaded after a restart gets its history (the last history_size messages) from its
 * archive before the stanzas that waited for the load are handled. */
/* A MamResult of a query a room sent on (borrowed): routed to the asker from the room;
 * the last one ends the query. Does nothing for a query it does not know. */
void router_muc_on_mam_result(struct router_muc *m, const Mk__MamResult *res);

/* Rooms and occupants on this shard; router_muc_collect sets their gauges. */
size_t router_muc_rooms(const struct router_muc *m);
/* Rooms in memory whose bare JID another router shard owns (after a reload added one).
 * They are not handed over (README, "Adding a router shard"): stanzas to them go to the
 * new owner, which loads a persistent room from the store or has no such room. */
size_t router_muc_rooms_not_owned(const struct router_muc *m);
size_t router_muc_occupants(const struct router_muc *m);
void router_muc_collect(struct router_muc *m);

/* --- pure helpers (unit-tested) ----------------------------------------------------- */

/* What a joiner asked for in <history/> (the join's <x xmlns=NS_MUC/>, may be NULL):
 * how many of the last `kept` messages, stamped at stamps[0..kept) oldest first (µs), to
 * send at now_us, honouring maxstanzas, seconds and maxchars='0' (none). An unparsable
 * attribute is ignored. Returns the number of newest messages to send. */
size_t muc_history_count(const struct xml_node *x, const int64_t *stamps, size_t kept, int64_t now_us);

/* Writes the XEP-0082 UTC timestamp of t_us ("2026-12-03T07:55:58.123Z") into out (at
 * least 32 bytes). */
void muc_stamp(char *out, size_t outlen, int64_t t_us);
#endif
