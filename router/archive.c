/* router/archive.c - the router side of XEP-0313: recipient archive ids, <stanza-id/> rewriting, incoming writes to mam. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "cfg.h"
#include "log.h"
#include "mamid.h"
#include "metrics.h"
#include "node.h"
#include "rchan.h"
#include "rchan_set.h"
#include "util.h"
#include "xml.h"

#define NS_SID     "urn:xmpp:sid:0"
#define NS_HINTS   "urn:xmpp:hints"
#define NS_MARKERS "urn:xmpp:chat-markers:0"

struct router_archive {
    struct node *node;
    struct mamid_gen ids;
    struct rchan_set *shards;   /* the writers to the mam shards */
    struct metric *m_writes;    /* label result: sent, backpressure, skipped */
    uint64_t self_key;          /* rchan_sender_key of this process: the writer in fences */
};

struct router_archive *router_archive_new(struct node *n)
{
    if (!n->cfg->modules.mam_enabled)
        return NULL;
    struct rchan_set *shards = rchan_set_new(n->loop, n->bus, n->cfg, CFG_ROLE_MAM, ROUTER_ARCHIVE_MAX_PENDING,
                                             ROUTER_ARCHIVE_RESEND_MS);
    if (shards == NULL)
        return NULL;
    struct router_archive *ra = xcalloc(1, sizeof *ra);
    ra->shards = shards;
    ra->node = n;
    ra->self_key = rchan_sender_key(bus_self(n->bus));
    int gen = mamid_generator(CFG_ROLE_ROUTER, n->self->index);
    if (gen < 0) {
        log_warn("mam_generator_range", "index=%u", n->self->index);
        gen = 191;
    }
    mamid_gen_init(&ra->ids, (unsigned)gen);
    ra->m_writes = metrics_counter(n->metrics, "meerkat_router_archive_writes_total",
                                   "Incoming archive writes by result (sent, backpressure, skipped)", "result");
    return ra;
}

void router_archive_free(struct router_archive **rap)
{
    if (rap == NULL || *rap == NULL)
        return;
    struct router_archive *ra = *rap;
    rchan_set_free(&ra->shards);
    free(ra);
    *rap = NULL;
}

size_t router_archive_pending(const struct router_archive *ra)
{
    return ra != NULL ? rchan_set_pending(ra->shards) : 0;
}

bool router_archive_on_envelope(struct router_archive *ra, const Mk__Envelope *e)
{
    return ra != NULL && rchan_set_on_envelope(ra->shards, e);
}

static void append_stanza_id(struct buf *out, const char *owner, const char *id_text)
{
    static const char a[] = "<stanza-id xmlns='" NS_SID "' by='";
    buf_append(out, a, sizeof a - 1);
    xml_escape(out, owner, strlen(owner));
    buf_append(out, "' id='", 6);
    buf_append(out, id_text, strlen(id_text));
    buf_append(out, "'/>", 3);
}

/* Splices our stanza-id into bytes our serializer wrote: before the final
 * "</message>", or into a self-closed "<message …/>". */
static int splice(const char *xml, size_t len, const char *owner, const char *id_text, struct buf *out)
{
    static const char close[] = "</message>";
    size_t cl = sizeof close - 1;
    while (len > 0 && (xml[len - 1] == ' ' || xml[len - 1] == '\n' || xml[len - 1] == '\r' || xml[len - 1] == '\t'))
        len--;
    if (len >= cl && memcmp(xml + len - cl, close, cl) == 0) {
        buf_append(out, xml, len - cl);
        append_stanza_id(out, owner, id_text);
        buf_append(out, close, cl);
        return 0;
    }
    if (len >= 2 && memcmp(xml + len - 2, "/>", 2) == 0 && len > 8 && memcmp(xml, "<message", 8) == 0) {
        buf_append(out, xml, len - 2);
        buf_append(out, ">", 1);
        append_stanza_id(out, owner, id_text);
        buf_append(out, close, cl);
        return 0;
    }
    return -1;
}

/* The message of the bytes (jabber:client implied), or NULL when they are not one message. */
static struct xml_node *parse_message(const char *xml, size_t len)
{
    char err[128];
    struct xml_node *msg = xml_parse_stanza(xml, len, err, sizeof err);
    if (msg != NULL && strcmp(msg->name, "message") != 0)
        xml_free(&msg);
    return msg;
}

/* Removes the <stanza-id/> children that claim to be by owner; returns how many. */
static size_t remove_forged(struct xml_node *msg, const char *owner)
{
    size_t n = 0;
    struct xml_node *c = xml_child(msg, "stanza-id", NS_SID);
    while (c != NULL) {
        struct xml_node *next = xml_next(c, "stanza-id", NS_SID);
        const char *by = xml_attr(c, "by");
        if (by != NULL && strcmp(by, owner) == 0) {
            xml_free(&c);
            n++;
        }
        c = next;
    }
    return n;
}

int router_archive_strip(const char *xml, size_t len, const char *owner, struct buf *out)
{
    if (xml == NULL || len == 0 || memmem(xml, len, NS_SID, sizeof NS_SID - 1) == NULL)
        return 0;
    struct xml_node *msg = parse_message(xml, len);
    int rc = 0;
    if (msg != NULL && remove_forged(msg, owner) > 0) {
        xml_serialize(msg, XML_NS_CLIENT, out);
        rc = 1;
    }
    xml_free(&msg);
    return rc;
}

int router_archive_rewrite(const char *xml, size_t len, const char *owner, const char *id_text, struct buf *out,
                           bool *no_store)
{
    *no_store = false;
    if (xml == NULL || len == 0)
        return -1;
    bool sid = memmem(xml, len, NS_SID, sizeof NS_SID - 1) != NULL;
    bool hints = memmem(xml, len, NS_HINTS, sizeof NS_HINTS - 1) != NULL;
    if (!sid && !hints)
        return splice(xml, len, owner, id_text, out);
    /* Rare: parse, drop stanza-ids that claim to be ours, look at the hints. */
    struct xml_node *msg = parse_message(xml, len);
    if (msg == NULL)
        return -1;
    if (xml_child(msg, "no-store", NS_HINTS) != NULL || xml_child(msg, "no-permanent-store", NS_HINTS) != NULL) {
        *no_store = true;
        xml_free(&msg);
        return 0;
    }
    remove_forged(msg, owner);
    struct xml_node *ours = xml_add_child(msg, "stanza-id", NS_SID);
    xml_set_attr(ours, "by", owner);
    xml_set_attr(ours, "id", id_text);
    xml_serialize(msg, XML_NS_CLIENT, out);
    xml_free(&msg);
    return 0;
}

static bool type_archivable(const char *type)
{
    return type == NULL || type[0] == '\0' || strcmp(type, "chat") == 0 || strcmp(type, "normal") == 0;
}

void router_archive_fence(const struct router_archive *ra, const struct rchan_tx *tx, uint64_t seq,
                          Mk__MamFence *out)
{
    mk__mam_fence__init(out);
    out->writer = ra->self_key;
    out->epoch = rchan_tx_epoch(tx);
    out->seq = seq;
}

/* An incoming ArchiveWrite (the mam role extracts body and origin-id from the bytes) on
 * tx, counted: its seq, or 0 when the channel is full (back-pressure, logged). */
static uint64_t send_write(struct router_archive *ra, struct rchan_tx *tx, const char *owner, const char *peer,
                           const char *peer_resource, uint64_t id, const char *xml, size_t len)
{
    Mk__ArchiveWrite aw = MK__ARCHIVE_WRITE__INIT;
    aw.owner = (char *)owner;
    aw.peer = (char *)peer;
    aw.peer_resource = (char *)peer_resource;
    aw.outgoing = false;
    aw.mam_id = id;
    aw.origin_id = (char *)"";
    aw.xml.data = (uint8_t *)xml;
    aw.xml.len = len;
    aw.body = (char *)"";
    aw.stamp_us = mamid_us(id);
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ARCHIVE;
    e.archive = &aw;
    uint64_t seq = rchan_send(tx, &e);
    if (seq == 0) {
        metric_inc(ra->m_writes, "backpressure");
        log_warn("mam_backpressure", "pending=%zu", rchan_tx_pending(tx));
    } else {
        metric_inc(ra->m_writes, "sent");
    }
    return seq;
}

int router_archive_incoming(struct router_archive *ra, const Mk__Route *r, struct buf *xml_out,
                            uint64_t *archive_id, struct rchan_tx **wtx, uint64_t *wseq)
{
    *archive_id = 0;
    *wtx = NULL;
    *wseq = 0;
    if (ra == NULL || r == NULL || r->kind != MK__STANZA_KIND__STANZA_KIND_MESSAGE || r->to == NULL ||
        r->xml.len == 0)
        return 0;
    const char *xml = (const char *)r->xml.data;
    size_t len = r->xml.len;
    /* to and from were prepared by the c2s: split them without stringprep. */
    const char *slash = strchr(r->to, '/');
    size_t olen = slash != NULL ? (size_t)(slash - r->to) : strlen(r->to);
    if (olen == 0 || memchr(r->to, '@', olen) == NULL)
        return 0;
    char *owner = xstrndup(r->to, olen);
    char *peer = NULL;
    int rc = 0;
    const char *fslash = r->from != NULL ? strchr(r->from, '/') : NULL;
    size_t plen = r->from == NULL ? 0 : fslash != NULL ? (size_t)(fslash - r->from) : strlen(r->from);
    bool archivable = !r->no_store && type_archivable(r->type) && plen > 0 &&
                      (r->has_body || memmem(xml, len, NS_MARKERS, sizeof NS_MARKERS - 1) != NULL);
    struct rchan_tx *tx = archivable ? rchan_set_shard(ra->shards, owner) : NULL;
    if (tx == NULL) {
        /* Not archived, but a stanza-id claiming to be the recipient's archive id is a
         * forgery all the same (XEP-0359): it goes whatever happens to the message. */
        router_archive_strip(xml, len, owner, xml_out);
        goto out;
    }
    peer = xstrndup(r->from, plen);
    /* The sender's c2s gave its own copy an id: the same one here makes a re-sent
     * Route (after a crash of this router) store nothing twice. */
    uint64_t id = r->mam_id != 0 ? r->mam_id : mamid_next(&ra->ids);
    char idt[MAMID_TEXT_LEN + 1];
    mamid_format(id, idt);
    struct buf rewritten;
    buf_init(&rewritten);
    bool no_store = false;
    if (router_archive_rewrite(xml, len, owner, idt, &rewritten, &no_store) == -1 || no_store) {
        metric_inc(ra->m_writes, "skipped");
        buf_release(&rewritten);
        if (no_store)
            router_archive_strip(xml, len, owner, xml_out);
        goto out;
    }
    uint64_t seq = send_write(ra, tx, owner, peer, fslash != NULL ? fslash + 1 : "", id, rewritten.data, rewritten.len);
    if (seq == 0) {
        buf_release(&rewritten);
        /* Not archived: the caller delivers the original bytes, less any forgery. */
        router_archive_strip(xml, len, owner, xml_out);
        errno = EAGAIN;
        rc = -1;
        goto out;
    }
    *archive_id = id;
    *wtx = tx;
    *wseq = seq;
    buf_append(xml_out, rewritten.data, rewritten.len);
    buf_release(&rewritten);
    rc = 1;
out:
    free(owner);
    free(peer);
    return rc;
}

uint64_t router_archive_next_id(struct router_archive *ra)
{
    return ra != NULL ? mamid_next(&ra->ids) : 0;
}

int router_archive_room(struct router_archive *ra, const char *room, const char *nick, uint64_t id, const char *xml,
                        size_t len, struct rchan_tx **wtx, uint64_t *wseq)
{
    *wtx = NULL;
    *wseq = 0;
    struct rchan_tx *tx = ra != NULL && id != 0 ? rchan_set_shard(ra->shards, room) : NULL;
    if (tx == NULL)
        return 0;
    uint64_t seq = send_write(ra, tx, room, room, nick, id, xml, len);
    if (seq == 0) {
        errno = EAGAIN;
        return -1;
    }
    *wtx = tx;
    *wseq = seq;
    return 1;
}
