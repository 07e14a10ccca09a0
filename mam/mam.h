/* mam/mam.h - meerkat-mam's process-wide state: the store, the offline writes in flight, and their per-owner queues. */
#ifndef MK_MAM_MAM_H
#define MK_MAM_MAM_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "meerkat.pb-c.h"

struct node;
struct store;
struct metric;

#define NS_DELAY   "urn:xmpp:delay"
#define NS_STANZAS "urn:ietf:params:xml:ns:xmpp-stanzas"

#define MAM_OFFLINE_MAX_QUEUED 100000   /* offline writes waiting for the store; past it, bounce */

struct offline_job;

/* The offline writes of one owner, applied one at a time so they are stored in arrival order. */
struct offline_owner {
    char *owner;                    /* bare JID */
    uint64_t hash;
    struct offline_job *head;       /* in flight */
    struct offline_job *tail;
    struct offline_owner *hnext;
};

struct archive;
struct rchan_rx;

/* An offline write received on the reliable channel, in arrival order: writes of
 * different owners finish out of order, acknowledgements are cumulative. */
struct offline_ack {
    char *sender;
    uint64_t epoch;
    uint64_t seq;
    bool done;
};

struct mam {
    struct node *node;
    struct store *store;
    struct archive *archive;        /* XEP-0313 writes and queries; NULL when MAM is off */
    bool stopping;
    unsigned gen;                   /* id generator: this process's index, 0-255 */
    uint64_t last_id_us;            /* keeps ids strictly increasing */
    struct offline_owner **owners;  /* owners with queued writes, hashed */
    size_t nbuckets;
    size_t nowners;
    size_t queued;                  /* jobs over all owners */
    struct rchan_rx *offline_rx;    /* offline writes from the routers, on the reliable channel */
    struct offline_ack *acks;       /* ring, oldest at acks_head */
    size_t acks_cap;
    size_t acks_head;
    size_t nacks;
    uint64_t acks_first;            /* number of the record at acks_head (numbers from 1) */
    struct metric *m_offline;       /* label result: stored, bounced_full, bounced_busy, no_user, failed, invalid */
    struct metric *m_archive_ignored;
    struct metric *m_ignored;       /* label payload */
    struct metric *m_queued;
};

/* --- offline.c ------------------------------------------------------------------------ */
void offline_init(struct mam *m);
/* Frees every queued job (their stanzas are lost: call at exit only). */
void offline_fini(struct mam *m);
/* Queues an offline write (ArchiveWrite with offline = true) for its owner. Borrows aw
 * (copies what it keeps). When sender is not NULL the write came on the reliable
 * channel as (sender, epoch, seq), already checked by m->offline_rx: it is acknowledged
 * once it is handled (stored, or bounced to its sender), in arrival order. aw->mam_id,
 * when not 0, is the row's id (a re-sent write is stored once). */
void offline_write(struct mam *m, const Mk__ArchiveWrite *aw, const char *sender, uint64_t epoch, uint64_t seq);
/* A new offline/archive id: microseconds << 8 | gen, strictly increasing. */
uint64_t mam_id_next(struct mam *m);

/* Pure helpers, exported for the unit tests. */
/* Writes "YYYY-MM-DDThh:mm:ss.uuuuuuZ" (XEP-0082) for stamp_us into out (>= 28 bytes). */
void offline_format_stamp(uint64_t stamp_us, char *out, size_t outlen);
/* Parses the stanza bytes (jabber:client implied), checks it is a message, adds
 * <delay xmlns='urn:xmpp:delay' from=domain stamp=.../> and appends the result to out.
 * Borrows everything. *id gets the stanza's id attribute (a new string or NULL).
 * Returns 0, or -1 when the bytes are not one message element. */
int offline_stamp_xml(const void *xml, size_t len, const char *domain, uint64_t stamp_us, struct buf *out,
                      char **id);
#endif
