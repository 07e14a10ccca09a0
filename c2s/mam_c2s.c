/* c2s/mam_c2s.c - the c2s side of XEP-0313: outgoing archive writes, MAM IQ forwarding, results written back. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "feat.h"
#include "log.h"
#include "mam_c2s.h"
#include "mamid.h"
#include "metrics.h"
#include "module.h"
#include "node.h"
#include "rchan.h"
#include "rchan_set.h"
#include "util.h"

#define NS_MAM_TMP   "urn:xmpp:mam:tmp"
#define NS_MAM_0     "urn:xmpp:mam:0"
#define NS_MAM_1     "urn:xmpp:mam:1"
#define NS_MAM_2     "urn:xmpp:mam:2"
#define NS_MAM_2_EXT "urn:xmpp:mam:2#extended"
#define NS_SID       "urn:xmpp:sid:0"
#define NS_HINTS     "urn:xmpp:hints"
#define NS_MARKERS   "urn:xmpp:chat-markers:0"
#define NS_MUC_USER  "http://jabber.org/protocol/muc#user"

static const char *const mam_namespaces[] = {NS_MAM_TMP, NS_MAM_0, NS_MAM_1, NS_MAM_2};

/* One c2s per process: the module keeps its state here rather than in struct c2s, so
 * that c2s.h does not change for it. */
static struct {
    struct c2s *s;
    bool enabled;
    struct mamid_gen ids;
    struct rchan_set *shards;   /* the writers to the mam shards */
    uint64_t self_key;          /* rchan_sender_key of this process: the writer in its fences */
    struct metric *m_writes;    /* label result: sent, backpressure, no_shard */
    struct metric *m_queries;
} mc;

void mam_c2s_init(struct c2s *s)
{
    memset(&mc, 0, sizeof mc);
    mc.s = s;
    if (!s->cfg->modules.mam_enabled)
        return;
    mc.shards = rchan_set_new(s->loop, s->node->bus, s->cfg, CFG_ROLE_MAM, MAM_C2S_MAX_PENDING, MAM_C2S_RESEND_MS);
    if (mc.shards == NULL)
        return;
    mc.enabled = true;
    mc.self_key = rchan_sender_key(bus_self(s->node->bus));
    int gen = mamid_generator(CFG_ROLE_C2S, s->node->self->index);
    if (gen < 0) {
        log_warn("mam_generator_range", "index=%u", s->node->self->index);
        gen = 127;
    }
    mamid_gen_init(&mc.ids, (unsigned)gen);
    mc.m_writes = metrics_counter(s->node->metrics, "meerkat_c2s_archive_writes_total",
                                  "Outgoing archive writes by result (sent, backpressure, no_shard)", "result");
    mc.m_queries = metrics_counter(s->node->metrics, "meerkat_c2s_mam_queries_total",
                                   "MAM IQs forwarded to the mam shards", NULL);
}

void mam_c2s_fini(struct c2s *s)
{
    rchan_set_free(&mc.shards);
    memset(&mc, 0, sizeof mc);
}

size_t mam_c2s_pending(void)
{
    return rchan_set_pending(mc.shards);
}

static bool has_text(const struct xml_node *el)
{
    for (struct xml_node *t = el->first_child; t != NULL; t = t->next) {
        if (t->name == NULL && t->text_len > 0)
            return true;
    }
    return false;
}

/* The first non-empty body's text (new string), or NULL. */
static char *body_text(const struct xml_node *msg)
{
    for (struct xml_node *b = xml_child(msg, "body", XML_NS_CLIENT); b != NULL; b = xml_next(b, "body", XML_NS_CLIENT)) {
        if (has_text(b))
            return xml_text(b);
    }
    return NULL;
}

static bool is_marker(const struct xml_node *msg)
{
    return xml_child(msg, "received", NS_MARKERS) != NULL || xml_child(msg, "displayed", NS_MARKERS) != NULL ||
           xml_child(msg, "acknowledged", NS_MARKERS) != NULL;
}

static bool is_mam_result(const struct xml_node *msg)
{
    for (size_t i = 0; i < MK_ARRAY_LEN(mam_namespaces); i++) {
        if (xml_child(msg, "result", mam_namespaces[i]) != NULL)
            return true;
    }
    return false;
}

int mam_c2s_outgoing(struct c2s *s, struct session *sess, const struct xml_node *msg, uint64_t *mam_id)
{
    *mam_id = 0;
    if (!mc.enabled || msg == NULL || msg->name == NULL || strcmp(msg->name, "message") != 0)
        return 0;
    const char *type = xml_attr(msg, "type");
    if (type != NULL && strcmp(type, "chat") != 0 && strcmp(type, "normal") != 0)
        return 0;
    const char *to = xml_attr(msg, "to");
    if (to == NULL || feat_no_store(msg) || is_mam_result(msg) || xml_child(msg, "x", NS_MUC_USER) != NULL)
        return 0;
    char *body = body_text(msg);
    if (body == NULL && !is_marker(msg) && xml_child(msg, "store", NS_HINTS) == NULL)
        return 0;
    struct jid tj;
    char err[128];
    if (jid_parse(to, &tj, err, sizeof err) == -1) {
        free(body);
        return 0;
    }
    char *peer = jid_to_string(&tj, true);
    struct rchan_tx *tx = rchan_set_shard(mc.shards, sess->bare);
    if (tx == NULL) {
        metric_inc(mc.m_writes, "no_shard");
        free(peer);
        free(body);
        jid_release(&tj);
        return 0;
    }
    struct buf xml;
    buf_init(&xml);
    xml_serialize(msg, XML_NS_CLIENT, &xml);
    struct xml_node *oid = xml_child(msg, "origin-id", NS_SID);
    Mk__ArchiveWrite aw = MK__ARCHIVE_WRITE__INIT;
    aw.owner = sess->bare;
    aw.peer = peer;
    aw.peer_resource = (char *)(tj.resource != NULL ? tj.resource : "");
    aw.outgoing = true;
    aw.mam_id = mamid_next(&mc.ids);
    aw.origin_id = (char *)(oid != NULL && xml_attr(oid, "id") != NULL ? xml_attr(oid, "id") : "");
    aw.xml.data = (uint8_t *)xml.data;
    aw.xml.len = xml.len;
    aw.body = body != NULL ? body : "";
    aw.stamp_us = mamid_us(aw.mam_id);
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ARCHIVE;
    e.archive = &aw;
    int rc = 0;
    uint64_t seq = rchan_send(tx, &e);
    if (seq == 0) {
        metric_inc(mc.m_writes, "backpressure");
        log_warn("mam_backpressure", "pending=%zu", rchan_tx_pending(tx));
        errno = EAGAIN;
        rc = -1;
    } else {
        metric_inc(mc.m_writes, "sent");
        sess->mam_sent = (struct c2s_mam_fence){mc.self_key, rchan_tx_epoch(tx), seq};
        *mam_id = aw.mam_id;
    }
    buf_release(&xml);
    free(peer);
    free(body);
    jid_release(&tj);
    return rc;
}

static int mam_ns_of(const char *ns)
{
    for (size_t i = 0; i < MK_ARRAY_LEN(mam_namespaces); i++) {
        if (ns != NULL && strcmp(ns, mam_namespaces[i]) == 0)
            return (int)i;
    }
    return -1;
}

enum disp mam_c2s_iq(struct session *sess, struct xml_node *iq)
{
    if (!mc.enabled)
        return DISP_PASS;
    const char *type = xml_attr(iq, "type");
    if (type == NULL || (strcmp(type, "get") != 0 && strcmp(type, "set") != 0))
        return DISP_PASS;
    struct xml_node *child = xml_first_elem(iq);
    if (child == NULL || mam_ns_of(child->ns) < 0 ||
        (strcmp(child->name, "query") != 0 && strcmp(child->name, "prefs") != 0))
        return DISP_PASS;
    const char *to = xml_attr(iq, "to");
    if (to != NULL) {
        /* Only the user's own archive: a MUC room or another account answers for itself. */
        struct jid tj;
        char err[128];
        if (jid_parse(to, &tj, err, sizeof err) == -1)
            return DISP_PASS;
        bool own = tj.resource == NULL && jid_bare_equal(&tj, &sess->jid);
        jid_release(&tj);
        if (!own)
            return DISP_PASS;
    }
    const struct cfg_proc *sh = cfg_shard(mc.s->cfg, CFG_ROLE_MAM, sess->bare);
    if (sh == NULL) {
        session_send_error(sess, iq, "cancel", "service-unavailable", NULL);
        return DISP_DONE;
    }
    struct buf xml;
    buf_init(&xml);
    xml_serialize(iq, XML_NS_CLIENT, &xml);
    Mk__MamQuery q = MK__MAM_QUERY__INIT;
    q.owner = sess->bare;
    q.c2s = (char *)bus_self(mc.s->node->bus);
    q.session_id = sess->id;
    q.xml.data = (uint8_t *)xml.data;
    q.xml.len = xml.len;
    q.from = sess->full;
    /* Read-your-writes: the shard answers after these writes are in (proto MamQuery). */
    Mk__MamFence fences[2];
    Mk__MamFence *fencep[2];
    size_t nfences = 0;
    if ((fencep[nfences] = c2s_mam_fence_to(&sess->mam_sent, &fences[nfences])) != NULL)
        nfences++;
    if ((fencep[nfences] = c2s_mam_fence_to(&sess->mam_delivered, &fences[nfences])) != NULL)
        nfences++;
    q.n_fences = nfences;
    q.fences = fencep;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_MAM_QUERY;
    e.mam_query = &q;
    if (node_send(mc.s->node, sh->id, &e) == -1)
        session_send_error(sess, iq, "wait", "resource-constraint", "the archive is busy");
    else
        metric_inc(mc.m_queries, NULL);
    buf_release(&xml);
    return DISP_DONE;
}

void mam_c2s_on_result(struct c2s *s, const Mk__MamResult *r)
{
    struct session *sess = session_by_id(s, r->session_id);
    if (sess == NULL || sess->conn == NULL || sess->conn->closed || r->xml.len == 0)
        return;
    conn_write(sess->conn, r->xml.data, r->xml.len);
}

bool mam_c2s_on_envelope(struct c2s *s, const Mk__Envelope *e)
{
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_ACK:
        return rchan_set_on_envelope(mc.shards, e);
    case MK__ENVELOPE__PAYLOAD_MAM_RESULT:
        if (e->mam_result != NULL)
            mam_c2s_on_result(s, e->mam_result);
        return true;
    case MK__ENVELOPE__PAYLOAD_HELLO:
        return rchan_set_on_envelope(mc.shards, e);
    default:
        return false;
    }
}

/* --- the module ---------------------------------------------------------------------------- */

static bool mam_advertised(const struct c2s *s, const char *domain)
{
    (void)domain;
    return mc.enabled;
}

static size_t mam_pending(const struct c2s *s)
{
    return mam_c2s_pending();
}

static enum disp mam_iq(struct session *sess, const struct xml_node *iq, const char *target)
{
    if (target == NULL || strcmp(target, sess->bare) != 0)
        return DISP_PASS;   /* a MUC room or another account answers for itself */
    return mam_c2s_iq(sess, (struct xml_node *)iq);
}

/* The sender's own archive copy goes on the reliable channel to its mam shard, just
 * before the message is routed; its id is left in c2s->out_mam_id for the Route. */
static enum disp mam_out(struct session *sess, Mk__StanzaKind kind, struct xml_node *st)
{
    struct c2s *s = sess->conn->c2s;
    if (kind == MK__STANZA_KIND__STANZA_KIND_MESSAGE && mam_c2s_outgoing(s, sess, st, &s->out_mam_id) == -1)
        log_warn("archive_backpressure", "jid=%s", sess->full);
    return DISP_PASS;
}

static const struct c2s_iq_handler iqs[] = {
    {NS_MAM_TMP, 0, mam_iq, NULL},
    {NS_MAM_0, 0, mam_iq, NULL},
    {NS_MAM_1, 0, mam_iq, NULL},
    {NS_MAM_2, 0, mam_iq, NULL},
    {NULL, 0, NULL, NULL},
};

/* What an account's disco#info lists when MAM is on. */
static const char *const account_features[] = {NS_MAM_TMP, NS_MAM_0, NS_MAM_1, NS_MAM_2, NS_MAM_2_EXT, NS_SID, NULL};

const struct c2s_module mam_module = {
    .name = "mam",
    .account_features = account_features,
    .advertised = mam_advertised,
    .iqs = iqs,
    .init = mam_c2s_init,
    .fini = mam_c2s_fini,
    .pending = mam_pending,
    .envelope = mam_c2s_on_envelope,
    .stanza_out = mam_out,
};
