/* mam/archive.h - the XEP-0313 archive of meerkat-mam: batched idempotent writes, preferences, queries. */
#ifndef MK_MAM_ARCHIVE_H
#define MK_MAM_ARCHIVE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "meerkat.pb-c.h"
#include "xml.h"

struct node;
struct store;
struct archive;

#define NS_MAM_TMP    "urn:xmpp:mam:tmp"      /* MongooseIM's legacy v0.2: accepted, deprecated */
#define NS_MAM_0      "urn:xmpp:mam:0"
#define NS_MAM_1      "urn:xmpp:mam:1"
#define NS_MAM_2      "urn:xmpp:mam:2"
#define NS_MAM_2_EXT  "urn:xmpp:mam:2#extended"
#define NS_RSM        "http://jabber.org/protocol/rsm"
#define NS_FORWARD    "urn:xmpp:forward:0"
#define NS_XDATA      "jabber:x:data"
#define NS_MAM_DELAY  "urn:xmpp:delay"
#define NS_MAM_STANZAS "urn:ietf:params:xml:ns:xmpp-stanzas"
#define NS_MUC_USER   "http://jabber.org/protocol/muc#user"

#define MAM_COUNT_CAP 10000u          /* <count> is exact below this; above it count and index are left out */
#define MAM_MAX_IDS 100u              /* ids in one :2#extended 'ids' query */

/* ---- the role's entry points (mam/main.c calls these) ----------------------------------- */

/* Creates the archive of this mam process: its reliable-channel receiver on n->bus,
 * the write batcher (cfg->modules.mam_batch_rows / mam_batch_ms), the prefs cache and
 * the metrics. Borrows n and st (both outlive the archive). */
struct archive *archive_new(struct node *n, struct store *st);
/* Frees *ap (NULL-safe, sets NULL). Writes not committed are lost here and re-sent by
 * their senders to the next incarnation. Call after store_close() (a queued query
 * calls back into the archive). */
void archive_free(struct archive **ap);
/* Handles ArchiveWrite (offline = false) and MamQuery envelopes; returns true when it
 * consumed the envelope (then *envp is left for the caller/bus to free as usual),
 * false when the envelope is not the archive's business (ArchiveWrite with offline =
 * true is left to the offline store). Borrows *envp. */
bool archive_on_envelope(struct archive *a, Mk__Envelope **envp);
/* Writes received and not yet committed (graceful stop waits for 0; /metrics). */
size_t archive_pending(const struct archive *a);
/* Starts a commit of what is ready now instead of waiting for the batch timer (stop). */
void archive_flush(struct archive *a);
/* Sets the lag gauges (meerkat_mam_pending_rows, meerkat_mam_oldest_pending_seconds);
 * called when /metrics is scraped. */
void archive_collect(struct archive *a);

/* ---- shared between archive.c, query.c and prefs.c -------------------------------------- */

enum mam_ns {
    MAM_NS_TMP = 0,
    MAM_NS_0,
    MAM_NS_1,
    MAM_NS_2,
};
/* The namespace of a MAM element, or -1 when ns is none of them. */
int mam_ns_parse(const char *ns);
const char *mam_ns_name(enum mam_ns ns);

/* A parsed query (form fields and RSM), bounds already folded into lo < id < hi. */
struct mam_query {
    enum mam_ns ns;
    char *queryid;                /* or NULL */
    char *with_bare;              /* "with" filter: bare JID, or NULL */
    char *with_resource;          /* its resource when a full JID was given, or NULL */
    uint64_t lo;                  /* exclusive lower bound (start, after-id) */
    uint64_t hi;                  /* exclusive upper bound (end, before-id) */
    char *fts;                    /* full-text-search text, or NULL */
    uint64_t *ids;                /* :2#extended 'ids', or NULL */
    size_t nids;
    unsigned max;                 /* page size after the cap */
    bool has_after;
    uint64_t after;
    bool has_before;              /* <before/> present */
    bool before_last_page;        /* <before/> empty: the last page */
    uint64_t before;
    bool has_index;
    uint64_t index;
    bool flip;                    /* :2#extended flip-page */
};

/* Parses a <query/> element in namespace ns (form or, for :tmp and :0, the legacy
 * child elements) with its RSM <set/>. max_page caps max (and is the default).
 * Returns 0, or -1 with *cond an RFC 6120 condition ("bad-request",
 * "feature-not-implemented", "item-not-found") and a sentence in text. Borrows query;
 * q owns what it holds (mam_query_release). */
int mam_query_parse(const struct xml_node *query, enum mam_ns ns, unsigned max_page, struct mam_query *q,
                    const char **cond, char *text, size_t textlen);
void mam_query_release(struct mam_query *q);
/* XEP-0082 date-time ("1970-01-01T00:00:00[.ffffff](Z|+hh:mm)") to microseconds since
 * the epoch. Returns 0, or -1 for anything malformed or before 1970. */
int mam_parse_stamp(const char *s, uint64_t *us);
/* Formats a stamp as "YYYY-MM-DDThh:mm:ss.ffffffZ" into out (>= 28 bytes). */
void mam_format_stamp(uint64_t us, char *out, size_t outlen);
/* Turns free text into an FTS5 query that matches rows holding every word: each word
 * double-quoted (quotes doubled), so no user text is FTS syntax. New string, or NULL
 * when the text has no word. */
char *mam_fts5_query(const char *text);

/* A stored row, as a page query returns it (borrowed strings). */
struct mam_row {
    uint64_t id;
    const char *peer;
    const char *peer_resource;
    bool outgoing;
    uint64_t stamp_us;
    const char *xml;
    size_t xml_len;
};
/* Appends one <message><result><forwarded>… for row to out, addressed to `to` (the
 * asking full JID) from `owner`. hide_real_jids (a room's archive asked by someone who
 * may not see real JIDs): the jid attribute of each <item/> in a muc#user <x/> of the
 * stored message is left out. Returns 0, or -1 when the stored bytes do not parse
 * (nothing appended). */
int mam_result_xml(struct buf *out, enum mam_ns ns, const char *queryid, const char *to, const char *owner,
                   const struct mam_row *row, bool hide_real_jids);

/* Finds, in the bytes of one <message/> as our serializer writes them (jabber:client
 * implied), the text of its first jabber:client <body/> child and the id of its first
 * <origin-id xmlns='urn:xmpp:sid:0'/> child, without building a tree: *body and
 * *origin_id get new strings, or NULL when the message has none. Returns 0, or -1
 * (both NULL) for a form the scan does not handle - CDATA, comments, markup inside
 * the body, an unknown reference, bytes that are not one element - and then the
 * caller parses. Borrows xml. */
int mam_scan_message(const char *xml, size_t len, char **body, char **origin_id);

/* Parses one stanza as it travels on the bus and is stored (jabber:client implied) into
 * a new tree the caller frees; NULL when the bytes are not one element. */
struct xml_node *mam_parse_stanza(const char *xml, size_t len);

/* query.c: answers one MamQuery (query or prefs IQ); results go to q->c2s. Borrows mq. */
void query_handle(struct archive *a, const Mk__MamQuery *mq, const char *sender);

/* ---- prefs.c ------------------------------------------------------------------------------- */
enum mam_default {
    MAM_DEFAULT_ALWAYS = 0,
    MAM_DEFAULT_NEVER,
    MAM_DEFAULT_ROSTER,
};

struct mam_prefs {
    enum mam_default def;
    char **always;                /* prepared JIDs (bare or full) */
    size_t nalways;
    char **never;
    size_t nnever;
};

enum mam_verdict {
    MAM_VERDICT_STORE = 0,
    MAM_VERDICT_SKIP,
    MAM_VERDICT_ROSTER,           /* store only if peer is in the owner's roster */
};
/* What prefs say about a message with peer (bare) / peer_resource ("" for none).
 * Never-lists win over always-lists. */
enum mam_verdict mam_prefs_decide(const struct mam_prefs *p, const char *peer, const char *peer_resource);
void mam_prefs_release(struct mam_prefs *p);
/* Parses <prefs default=...><always><jid/>…</always><never>…</never></prefs>. Returns 0, or -1
 * (bad-request) with a sentence. */
int mam_prefs_parse(const struct xml_node *prefs, struct mam_prefs *out, char *text, size_t textlen);
/* Appends <prefs xmlns=ns …/> as a child of parent. */
void mam_prefs_to_xml(const struct mam_prefs *p, const char *ns, struct xml_node *parent);
/* Newline-joined list / split back, for the store. */
char *mam_prefs_join(char *const *jids, size_t n);
void mam_prefs_split(const char *s, char ***jids, size_t *n);
const char *mam_default_name(enum mam_default d);
int mam_default_parse(const char *s, enum mam_default *out);

/* The per-owner prefs cache (LRU). get calls cb(ud, prefs) once the owner's prefs are
 * known: at once from the cache, or after a store read. prefs is borrowed for the call. */
struct prefs_cache;
typedef void prefs_ready_fn(void *ud, const struct mam_prefs *prefs);
struct prefs_cache *prefs_cache_new(struct store *st, size_t capacity);
void prefs_cache_free(struct prefs_cache **cp);
void prefs_cache_get(struct prefs_cache *c, const char *owner, prefs_ready_fn *cb, void *ud);
/* Replaces the cached prefs of owner (after a successful set). Copies p. */
void prefs_cache_put(struct prefs_cache *c, const char *owner, const struct mam_prefs *p);
/* The archive's cache (query.c's prefs IQ handler updates it). */
struct prefs_cache *archive_prefs_cache(struct archive *a);
struct node *archive_node(struct archive *a);
struct store *archive_store(struct archive *a);
/* Counts a MAM IQ in meerkat_mam_queries_total{kind}. */
void archive_count_query(struct archive *a, const char *kind);
/* Counts a query that waited for its owner's writes in
 * meerkat_mam_query_waits_total{result} ("committed" or "timeout"). */
void archive_count_wait(struct archive *a, const char *result);
/* A query of owner is waiting (fence_wait): moves owner's rows that are ready to the
 * urgent queue, which the next transaction takes on its own, ahead of the backlog of
 * other owners; rows of owner made ready while it waits go there too. Borrows owner. */
void archive_expedite(struct archive *a, const char *owner);
/* The archive's read-your-writes table (mam/fence.h): query.c waits on it. */
struct fence_table *archive_fences(struct archive *a);
/* Splits "user@domain" into new strings; -1 when there is no '@' or either part is empty. */
int mam_split_owner(const char *owner, char **user, char **domain);
#endif
