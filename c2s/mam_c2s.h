/* c2s/mam_c2s.h - the c2s side of XEP-0313: outgoing archive writes on the reliable channel, MAM IQs to the mam shard, results back. */
#ifndef MK_C2S_MAM_C2S_H
#define MK_C2S_MAM_C2S_H
#include <stdbool.h>
#include <stdint.h>

#include "c2s.h"
#include "meerkat.pb-c.h"
#include "xml.h"

#define MAM_C2S_MAX_PENDING 200000u   /* unacknowledged archive writes per mam shard before back-pressure */
#define MAM_C2S_RESEND_MS 2000u       /* re-send when no ack progress for this long */

/* Creates one reliable-channel sender per configured mam shard on s->node->bus and the
 * id generator of this c2s (mamid_generator(CFG_ROLE_C2S, index)). Does nothing when
 * cfg->modules.mam_enabled is false. The module's init hook (after node_init). Borrows s. */
void mam_c2s_init(struct c2s *s);
/* Frees what mam_c2s_init made (unacknowledged writes are lost with the process and
 * were not acknowledged: the archive misses them only if the c2s dies too). */
void mam_c2s_fini(struct c2s *s);

/* For a message the client of sess sent (from already stamped, to prepared), just
 * before it is routed: when it is archivable (type chat/normal or none; a non-empty
 * body, a chat marker, or a <store/> hint; no <no-store/>/<no-permanent-store/>
 * hint; not a MAM result or MUC private message) sends ArchiveWrite{outgoing, owner =
 * sender bare, id from this c2s's generator} to the owner's mam shard on the reliable
 * channel, and remembers its place on that channel in sess->mam_sent (read-your-writes,
 * see mam_c2s_iq). Borrows everything. *mam_id gets the id of the write when sent, else 0
 * (the Route carries it: the router gives the recipient's copy the same id). Returns 0
 * (sent or not archivable), or -1 with errno EAGAIN when the channel is full (the
 * caller may bounce wait/resource-constraint). */
int mam_c2s_outgoing(struct c2s *s, struct session *sess, const struct xml_node *msg, uint64_t *mam_id);

/* For an IQ from the client (the module's IQ handler): a get/set whose child is <query/> or
 * <prefs/> in a MAM namespace, addressed to the user's own bare JID or to nobody, is
 * forwarded as MamQuery to the owner's mam shard and DISP_DONE is returned (errors are
 * answered here). The MamQuery carries sess->mam_sent and sess->mam_delivered as
 * fences: the shard answers once those writes are in (mam/fence.h), so the session
 * reads what it sent and received. DISP_PASS for anything else. Borrows sess and iq. */
enum disp mam_c2s_iq(struct session *sess, struct xml_node *iq);

/* Writes a MamResult's bytes, as they are, to its session (if still there). Borrows r. */
void mam_c2s_on_result(struct c2s *s, const Mk__MamResult *r);

/* Envelope hook for the c2s's on_envelope: consumes Ack envelopes from mam shards
 * (rchan_tx_ack) and MamResult; on a Hello from a mam shard re-sends what that shard
 * has not acknowledged and returns false (others may want the Hello too). Returns true
 * when consumed. Borrows e. */
bool mam_c2s_on_envelope(struct c2s *s, const Mk__Envelope *e);

/* Unacknowledged archive writes over all shards (for /metrics and graceful stop). */
size_t mam_c2s_pending(void);
#endif
