/* router/archive.h - the router side of XEP-0313: the recipient's archive id, <stanza-id/>, and the incoming archive write. */
#ifndef MK_ROUTER_ARCHIVE_H
#define MK_ROUTER_ARCHIVE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "meerkat.pb-c.h"

struct node;
struct router_archive;
struct rchan_tx;

#define ROUTER_ARCHIVE_MAX_PENDING 200000u  /* unacknowledged writes per mam shard before back-pressure */
#define ROUTER_ARCHIVE_RESEND_MS 2000u

/* Creates one reliable-channel sender per mam shard on n->bus and the id generator of
 * this router (mamid_generator(CFG_ROLE_ROUTER, index)). Returns NULL when MAM is
 * disabled or no mam process is configured (every other call accepts NULL and does
 * nothing). Borrows n. */
struct router_archive *router_archive_new(struct node *n);
void router_archive_free(struct router_archive **rap);

/* Called for a Route about to be delivered to a local user's session(s) or stored
 * offline, before either. When r is an archivable 1-1 message (kind message, type
 * chat/normal/none, a body or a chat marker, no XEP-0334 no-store/no-permanent-store
 * hint), generates the recipient's archive id, writes into xml_out (appended) the
 * stanza to deliver and store offline instead of r->xml - the same bytes with any
 * <stanza-id/> claiming by=recipient removed and ours added before </message> - and
 * sends ArchiveWrite{owner = recipient bare, incoming} on the reliable channel to the
 * recipient's mam shard. Borrows everything.
 * A message that is not archived (not archivable, a no-store hint, no shard, or the
 * channel full) still loses any <stanza-id/> claiming by=recipient (XEP-0359: only
 * the recipient's server may say what its archive id is): then xml_out gets the bytes
 * without it. Whatever the result, when xml_out is not empty on return the caller
 * delivers (or stores offline) xml_out instead of r->xml.
 * *archive_id gets the id the write carries (the stanza-id) when archived, else 0.
 * The archive id is r->mam_id when the sender's c2s gave one (its own copy's id: a
 * re-sent Route stores nothing twice), else a new one of this router's generator.
 * When archived, *wtx and *wseq name the write on its channel (rchan_tx_acked says when
 * the mam shard has it committed); else *wtx is NULL.
 * Returns 1 (archived), 0 (not archived), or -1 (the channel to the shard is full:
 * not archived; the caller may also bounce wait/resource-constraint). */
int router_archive_incoming(struct router_archive *ra, const Mk__Route *r, struct buf *xml_out,
                            uint64_t *archive_id, struct rchan_tx **wtx, uint64_t *wseq);

/* A new archive id of this router's generator (0 when ra is NULL): the id of a group chat
 * message in its room's archive, known before its copies are written. */
uint64_t router_archive_next_id(struct router_archive *ra);

/* Sends ArchiveWrite{owner = room (bare), peer = room, peer_resource = nick, incoming,
 * mam_id = id} with the stored bytes xml[0..len) (the message as the room keeps it) on
 * the reliable channel to the room's mam shard: one write per group chat message, not
 * one per occupant (router/muc.c). *wtx and *wseq name the write on its channel (for
 * the fence of a later query of the room's archive). Returns 1 (sent), 0 (no mam
 * shard, or ra NULL) or -1 (the channel is full: errno EAGAIN, not archived). Borrows
 * everything. */
int router_archive_room(struct router_archive *ra, const char *room, const char *nick, uint64_t id, const char *xml,
                        size_t len, struct rchan_tx **wtx, uint64_t *wseq);

/* The read-your-writes fence of a write router_archive_incoming sent (tx, seq) in *out
 * (initialised here): this process's sender key, tx's epoch, seq. */
void router_archive_fence(const struct router_archive *ra, const struct rchan_tx *tx, uint64_t seq,
                          Mk__MamFence *out);

/* Envelope hook: consumes Ack envelopes from mam shards; on a Hello from a mam shard
 * re-sends what it has not acknowledged and returns false. Borrows e. */
bool router_archive_on_envelope(struct router_archive *ra, const Mk__Envelope *e);
/* Unacknowledged writes over all shards (metrics, graceful stop). */
size_t router_archive_pending(const struct router_archive *ra);

/* Pure helper, exported for tests: when the serialized message (jabber:client
 * implied) has <stanza-id xmlns='urn:xmpp:sid:0'/> children whose by is owner, appends
 * it without them to out and returns 1; otherwise returns 0 and leaves out untouched
 * (also when the bytes are not one <message/>). Parses only when the bytes mention
 * urn:xmpp:sid:0. Borrows everything. */
int router_archive_strip(const char *xml, size_t len, const char *owner, struct buf *out);
/* Pure helper, exported for tests: rewrites a serialized message (jabber:client
 * implied) for owner: removes <stanza-id xmlns='urn:xmpp:sid:0'/> children whose by is
 * owner and appends ours with id_text; appends the result to out. *no_store is set when
 * the message carries a no-store/no-permanent-store hint. Parses only when the bytes
 * mention urn:xmpp:sid:0 or urn:xmpp:hints. Returns 0, or -1 when the bytes are not
 * one <message/> element (out untouched). */
int router_archive_rewrite(const char *xml, size_t len, const char *owner, const char *id_text, struct buf *out,
                           bool *no_store);
#endif
