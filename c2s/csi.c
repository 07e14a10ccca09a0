/* c2s/csi.c - the "csi" module: XEP-0352 client state indication. While a client says it is inactive, presence updates and chat states for it are held, the latest per contact; anything else (a message with a body, an IQ, a subscription request, an error) goes out at once, after what is held, in order. <active/> flushes the hold. */
#include <stdlib.h>
#include <string.h>

#include "c2s.h"
#include "csi_part.h"
#include "feat.h"
#include "log.h"
#include "metrics.h"
#include "module.h"
#include "util.h"

#define NS_CSI        "urn:xmpp:csi:0"
#define NS_CHATSTATES "http://jabber.org/protocol/chatstates"
#define NS_CARBONS    "urn:xmpp:carbons:2"
#define NS_FORWARD    "urn:xmpp:forward:0"
#define NS_SID        "urn:xmpp:sid:0"

/* Bounds of one session's hold: past either, everything held is written first (a client
 * inactive for hours with a busy roster costs at most this much memory). */
#define CSI_MAX_HELD       256
#define CSI_MAX_HELD_BYTES (128u * 1024u)

/* A held stanza: its collapse key and its bytes as routed, in one block. */
struct csi_held {
    char *key;                     /* "p<full JID>" presence, "c<bare JID>" chat state, "r"/"s" carbon of one */
    char *xml;
    size_t len;
};

struct csi_session {
    bool inactive;
    struct csi_held *held;         /* arrival order (a collapsed one moves to the end) */
    size_t nheld;
    size_t cap;
    size_t bytes;
};

extern const struct c2s_module csi_module;

static struct {
    struct metric *m_states;       /* label state: active, inactive */
    struct metric *m_held;         /* label kind: presence, chatstate */
    struct metric *m_collapsed;    /* label kind */
    struct metric *m_flushed;      /* label reason: active, urgent, limit */
    struct metric *m_inactive;     /* gauge */
    size_t ninactive;
} cs;

static void csi_init(struct c2s *s)
{
    struct metrics *m = s->node->metrics;
    cs.m_states = metrics_counter(m, "meerkat_c2s_csi_states_total",
                                  "XEP-0352 <active/> and <inactive/> received from clients", "state");
    cs.m_held = metrics_counter(m, "meerkat_c2s_csi_held_total",
                                "Stanzas held for an inactive client (XEP-0352)", "kind");
    cs.m_collapsed = metrics_counter(m, "meerkat_c2s_csi_collapsed_total",
                                     "Held stanzas replaced by a newer one of the same contact", "kind");
    cs.m_flushed = metrics_counter(m, "meerkat_c2s_csi_flushed_total",
                                   "Held stanzas written to the client, by what made them go", "reason");
    cs.m_inactive = metrics_gauge(m, "meerkat_c2s_csi_inactive_sessions", "Sessions whose client is inactive", NULL);
    cs.ninactive = 0;
}

static void csi_stream_features(struct conn *c, struct xml_node *features, bool authenticated)
{
    if (authenticated)
        xml_add_child(features, "csi", NS_CSI);
}

static void drop_all(struct csi_session *cst)
{
    for (size_t i = 0; i < cst->nheld; i++)
        free(cst->held[i].key);
    free(cst->held);
    cst->held = NULL;
    cst->nheld = cst->cap = cst->bytes = 0;
}

/* Writes everything held, in order, and empties the hold. */
static void flush(struct session *sess, struct csi_session *cst, const char *reason)
{
    if (cst->nheld == 0)
        return;
    for (size_t i = 0; i < cst->nheld; i++)
        conn_write(sess->conn, cst->held[i].xml, cst->held[i].len);
    metric_add(cs.m_flushed, reason, (double)cst->nheld);
    drop_all(cst);
}

static void set_inactive(struct csi_session *cst, bool inactive)
{
    if (cst->inactive == inactive)
        return;
    cst->inactive = inactive;
    if (inactive)
        cs.ninactive++;
    else
        cs.ninactive--;
    metric_set(cs.m_inactive, NULL, (double)cs.ninactive);
}

static enum disp csi_nonza(struct session *sess, const struct xml_node *el)
{
    struct csi_session *cst = c2s_session_state(sess, &csi_module);
    if (cst == NULL || el->ns == NULL || strcmp(el->ns, NS_CSI) != 0)
        return DISP_PASS;
    if (strcmp(el->name, "inactive") == 0) {
        set_inactive(cst, true);
        metric_inc(cs.m_states, "inactive");
        return DISP_DONE;
    }
    if (strcmp(el->name, "active") == 0) {
        flush(sess, cst, "active");
        set_inactive(cst, false);
        metric_inc(cs.m_states, "active");
        return DISP_DONE;
    }
    return DISP_PASS;
}

/* True when msg's element children are only a chat state and what travels with one
 * (thread, hints, stanza and origin ids, delay), with a chat state among them. */
static bool chat_state_only(const struct xml_node *msg)
{
    bool state = false;
    for (const struct xml_node *c = xml_first_elem(msg); c != NULL; c = xml_next(c, NULL, NULL)) {
        const char *ns = c->ns ? c->ns : "";
        if (strcmp(ns, NS_CHATSTATES) == 0)
            state = true;
        else if (!(strcmp(ns, XML_NS_CLIENT) == 0 && strcmp(c->name, "thread") == 0) &&
                 strcmp(ns, NS_HINTS) != 0 && strcmp(ns, NS_SID) != 0 && strcmp(ns, NS_DELAY) != 0)
            return false;
    }
    return state;
}

/* The collapse key of a routed bodiless message that is only a chat state (directly, or
 * as a carbon copy of one), as a new string; NULL when it is something else (urgent). */
static char *chat_state_key(const Mk__Route *r)
{
    char err[128];
    struct xml_node *msg = feat_parse_routed(r, err, sizeof err);
    if (msg == NULL)
        return NULL;
    char *key = NULL;
    const struct xml_node *w = xml_child(msg, "received", NS_CARBONS);
    char tag = 'r';
    if (w == NULL) {
        w = xml_child(msg, "sent", NS_CARBONS);
        tag = 's';
    }
    if (w != NULL) {
        /* A carbon copy: keyed by the other party of the conversation it belongs to. */
        const struct xml_node *fw = xml_child(w, "forwarded", NS_FORWARD);
        const struct xml_node *in = fw != NULL ? xml_child(fw, "message", XML_NS_CLIENT) : NULL;
        const char *peer = in != NULL ? xml_attr(in, tag == 'r' ? "from" : "to") : NULL;
        if (peer != NULL && xml_next(w, NULL, NULL) == NULL && xml_first_elem(msg) == w && chat_state_only(in)) {
            char *bare = feat_bare_of(peer);
            key = xasprintf("%c%s", tag, bare);
            free(bare);
        }
    } else if (chat_state_only(msg) && r->from != NULL) {
        char *bare = feat_bare_of(r->from);
        key = xasprintf("c%s", bare);
        free(bare);
    }
    xml_free(&msg);
    return key;
}

/* Adds (key, xml) at the end of the hold (copies both). */
static void append(struct csi_session *cst, const char *key, size_t kl, const void *xml, size_t len)
{
    if (cst->nheld == cst->cap) {
        cst->cap = cst->cap ? cst->cap * 2 : 8;
        cst->held = xrealloc(cst->held, cst->cap * sizeof *cst->held);
    }
    char *block = xmalloc(kl + 1 + len);
    memcpy(block, key, kl);
    block[kl] = '\0';
    memcpy(block + kl + 1, xml, len);
    cst->held[cst->nheld++] = (struct csi_held){.key = block, .xml = block + kl + 1, .len = len};
    cst->bytes += len;
}

/* Holds r's bytes under key (consumed), replacing an older one of the same key. */
static void hold(struct session *sess, struct csi_session *cst, char *key, const Mk__Route *r, const char *kind)
{
    for (size_t i = 0; i < cst->nheld; i++) {
        if (strcmp(cst->held[i].key, key) != 0)
            continue;
        /* The latest per contact: the older one goes, the newer one takes its turn at the
         * end (where it arrived). */
        cst->bytes -= cst->held[i].len;
        free(cst->held[i].key);
        memmove(&cst->held[i], &cst->held[i + 1], (cst->nheld - i - 1) * sizeof *cst->held);
        cst->nheld--;
        metric_inc(cs.m_collapsed, kind);
        break;
    }
    if (cst->nheld >= CSI_MAX_HELD || cst->bytes + r->xml.len > CSI_MAX_HELD_BYTES)
        flush(sess, cst, "limit");
    append(cst, key, strlen(key), r->xml.data, r->xml.len);
    free(key);
    metric_inc(cs.m_held, kind);
}

/* Last of the stanza_in hooks: whatever reaches it is going to be written. */
static bool csi_stanza_in(struct session *sess, const Mk__Route *r)
{
    struct csi_session *cst = c2s_session_state(sess, &csi_module);
    if (cst == NULL || !cst->inactive)
        return true;
    const char *type = r->type ? r->type : "";
    char *key = NULL;
    const char *kind = NULL;
    if (r->kind == MK__STANZA_KIND__STANZA_KIND_PRESENCE && (*type == '\0' || strcmp(type, "unavailable") == 0) &&
        r->from != NULL) {
        key = xasprintf("p%s", r->from);
        kind = "presence";
    } else if (r->kind == MK__STANZA_KIND__STANZA_KIND_MESSAGE && !r->has_body && strcmp(type, "error") != 0 &&
               strcmp(type, "groupchat") != 0 &&
               memmem(r->xml.data, r->xml.len, NS_CHATSTATES, sizeof NS_CHATSTATES - 1) != NULL) {
        key = chat_state_key(r);
        kind = "chatstate";
    }
    if (key != NULL) {
        hold(sess, cst, key, r, kind);
        return false;
    }
    /* Urgent: what is held goes first, so the client sees everything in order. */
    flush(sess, cst, "urgent");
    return true;
}

/* Handover (XEP-0198 resumption on another c2s): "inactive" and what is held
 * (c2s/csi_part.h); nothing when active (nothing is held then). */
static void csi_handover_save(struct session *sess, struct buf *out)
{
    struct csi_session *cst = c2s_session_state(sess, &csi_module);
    if (cst == NULL || !cst->inactive)
        return;
    unsigned char b = CSI_PART_INACTIVE;
    buf_append(out, &b, 1);
    for (size_t i = 0; i < cst->nheld; i++)
        csi_part_put(out, cst->held[i].key, strlen(cst->held[i].key), cst->held[i].xml, cst->held[i].len);
}

static bool load_one(void *ud, const char *key, size_t kl, const void *xml, size_t len)
{
    struct csi_session *cst = ud;
    if (cst->nheld >= CSI_MAX_HELD || cst->bytes + len > CSI_MAX_HELD_BYTES)
        return false;
    append(cst, key, kl, xml, len);
    return true;
}

static void csi_handover_load(struct session *sess, const void *data, size_t n)
{
    struct csi_session *cst = c2s_session_state(sess, &csi_module);
    if (cst == NULL)
        return;
    int rc = csi_part_parse(data, n, load_one, cst);
    if (rc != -1)
        set_inactive(cst, true);   /* the part exists only for an inactive client */
    if (rc != 0)
        log_warn("csi_handover_bad", "jid=%s bytes=%zu kept=%zu", sess->full, n, cst->nheld);
}

static void csi_session_close(struct session *sess)
{
    struct csi_session *cst = c2s_session_state(sess, &csi_module);
    if (cst == NULL)
        return;
    set_inactive(cst, false);
    drop_all(cst);
}

const struct c2s_module csi_module = {
    .name = "csi",
    .stream_features = csi_stream_features,
    .session_state = sizeof(struct csi_session),
    .init = csi_init,
    .session_close = csi_session_close,
    .stanza_in = csi_stanza_in,
    .nonza = csi_nonza,
    .handover_save = csi_handover_save,
    .handover_load = csi_handover_load,
};
