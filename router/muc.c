/* router/muc.c - XEP-0045 group chat rooms on the router shard of their bare JIDs: join, leave, groupchat with subject and history, private messages, self-ping, kick, ban, destroy. */
#include "muc.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "archive.h"
#include "buf.h"
#include "bus.h"
#include "cfg.h"
#include "env.h"
#include "jid.h"
#include "log.h"
#include "mamid.h"
#include "metrics.h"
#include "muc_state.h"
#include "node.h"
#include "rchan.h"
#include "router.h"
#include "store.h"
#include "util.h"
#include "xml.h"

#define NS_DISCO_INFO  "http://jabber.org/protocol/disco#info"
#define NS_DISCO_ITEMS "http://jabber.org/protocol/disco#items"
#define NS_PING        "urn:xmpp:ping"
#define NS_DELAY       "urn:xmpp:delay"
#define NS_XDATA       "jabber:x:data"
#define NS_SID         "urn:xmpp:sid:0"
#define NS_MUC_REQUEST "http://jabber.org/protocol/muc#request"
#define NS_MODERATE    "urn:xmpp:message-moderate:1"
#define NS_RETRACT     "urn:xmpp:message-retract:1"
#define NS_REGISTER    "jabber:iq:register"
#define NS_MUC_REGISTER "http://jabber.org/protocol/muc#register"
#define MUC_NODE_ROOMUSER "x-roomuser-item"   /* XEP-0045 7.12: the asker's reserved nick */
#define MUC_HASH_SEED  0x6d75632d726f6f6dULL
#define MUC_MAX_PENDING 100000u
#define MUC_MAX_INVITES 16        /* invitations in one message */
/* Memory a room may hold for what clients send: its history (oldest messages dropped
 * first) and each occupant's presence (a bigger one is refused <not-acceptable/>). */
#define MUC_HISTORY_MAX_BYTES (128u * 1024u)
#define MUC_PRESENCE_MAX_BYTES (16u * 1024u)
#define MUC_LIST_PREFIX "mkmuc-rooms-"  /* resource of the service's internal room-list requests */
#define MUC_LIST_MAX 1000u        /* rooms one page of the service's disco#items lists at most (RSM max) */
#define MUC_LIST_PAGE 100u        /* rooms in the answer to a disco#items without RSM (then <set/> with count) */
#define MUC_LIST_SCAN 10000u      /* stored public rooms one shard reads for a listing */
#define NS_RSM         "http://jabber.org/protocol/rsm"
#define MUC_LIST_TIMEOUT 2.0      /* seconds a listing waits for the other shards */
#define MUC_MAX_LISTINGS 256      /* listings at a time; past it wait/resource-constraint */
/* Rooms being loaded from the store at a time, in all and started by one user; stanzas
 * (and their bytes, in all) waiting for loads. Past any: wait/resource-constraint. */
#define MUC_MAX_LOADS 256
#define MUC_MAX_LOADS_PER_USER 16
#define MUC_LOAD_MAX_QUEUED 1024
#define MUC_LOAD_MAX_BYTES (4u * 1024u * 1024u)
#define MUC_LOAD_TIMEOUT 5.0      /* seconds a stanza waits for its room's load; then wait/internal-server-error */
#define MUC_RETRY_SECONDS 1.0     /* a failed write of a room's row is tried again after this */
/* Queries of rooms' archives waiting for their mam shard's answer; past it
 * wait/resource-constraint. One that has no answer after MUC_MAM_TIMEOUT seconds (its
 * mam shard restarted meanwhile: queries are not on the reliable channel) is answered
 * wait/internal-server-error. */
#define MUC_MAX_MAM_QUERIES 256
/* XEP-0425 tombstones waiting for the moderated message's archive write to be committed
 * (then written); past it a moderation of an archived message is refused
 * wait/resource-constraint. */
#define MUC_MAX_TOMBSTONES 1024
#define MUC_TOMBSTONE_POLL 0.05   /* seconds between looks at the archive channel's acks */
#define MUC_MAM_TIMEOUT 30.0
#define NS_MAM_2       "urn:xmpp:mam:2"

enum muc_role {
    MUC_ROLE_NONE = 0,
    MUC_ROLE_VISITOR,
    MUC_ROLE_PARTICIPANT,
    MUC_ROLE_MODERATOR,
};

static const char *const role_names[] = {"none", "visitor", "participant", "moderator"};

struct muc_occupant {
    char *nick;
    char *jid;                     /* real full JID */
    size_t bare_len;
    enum muc_role role;
    char *pres;                    /* the children of its presence, serialized (show, status, ...) */
    size_t pres_len;
    /* The same user's other sessions joined under this nick (XEP-0045 multi-session
     * nicks): full JIDs that get every stanza jid gets; the room sees one occupant. */
    char **more;
    size_t nmore;
};

/* Sessions one nick may hold at once (the first and up to this many more). */
#define MUC_MORE_SESSIONS_MAX 8

struct muc_msg {
    char *nick;
    char *sid;                     /* its XEP-0359 stanza-id */
    char *inner;                   /* the message's children, serialized */
    size_t inner_len;
    int64_t stamp_us;
};

struct muc_room {
    char *jid;                     /* bare, prepared */
    struct muc_config conf;
    size_t jid_len;
    uint64_t hash;
    char *creator;                 /* bare JID whose count of created rooms this room is in */
    struct muc_occupant *occ;      /* in join order */
    size_t nocc, occ_cap;
    struct muc_aff_entry *affs;
    size_t naffs;
    struct muc_msg *hist;          /* ring of history_size */
    size_t hist_head, hist_count;
    size_t hist_bytes;             /* of the kept messages' children, at most MUC_HISTORY_MAX_BYTES */
    int64_t *stamps;               /* scratch for muc_history_count */
    char *subject;                 /* text; NULL: never set */
    char *subject_nick;            /* who set it; NULL: the room */
    /* The store (persistent rooms): at most one write of this room in flight; a change
     * meanwhile marks it dirty, and the next write stores what memory holds then. */
    bool p_stored;                 /* the store may hold a row of this room */
    bool p_busy;                   /* a write of its row is in flight */
    bool p_dirty;                  /* memory changed since the last write started */
    bool p_row;                    /* a put of its row is committed (and no delete since): its archive may be written */
    bool p_temp;                   /* the last put wrote a temporary room's row: its delete takes the archive too */
    bool p_purge;                  /* a temporary room's row and archive left by a room of this name are to go first */
    /* The room's last archive write: the fence of a query of its archive. */
    struct rchan_tx *a_tx;         /* NULL: none since this shard started */
    uint64_t a_seq;
    struct muc_room *hnext;
};

/* A query of a room's archive sent on to its mam shard: the answers come back here
 * (MamResult, session_id = n) and go on to the asker. */
struct muc_mam_query {
    uint64_t n;
    char *room;
    char *asker;                   /* full JID */
    char *iq_id;
    uint32_t hops;
    ev_timer timer;
    struct router_muc *m;
    struct muc_mam_query *next;
};

/* A room gone from memory (destroyed, or emptied while not persistent) whose row the
 * store may still hold: its DELETE, after any write in flight. While one exists, the
 * store's answer for that room is "none": nothing is loaded. */
struct muc_tomb {
    char *jid;
    bool busy;                     /* a write of the row is in flight */
    bool dirty;                    /* its DELETE is still to start */
    bool purge;                    /* a temporary room's: its archive goes with the row */
    struct muc_tomb *next;
};

/* Stanzas to a room that is not in memory, waiting for the store to say whether it is a
 * persistent room (then loaded) or none (then handled as now). */
struct muc_load {
    char *jid;
    size_t jid_len;
    struct muc_state st;           /* the stored state, while its history is read from its archive */
    char *by;                      /* bare JID of the user whose stanza started it */
    struct muc_pending *q;         /* in arrival order, at most MUC_LOAD_MAX_QUEUED */
    size_t nq, qcap;
    ev_timer timer;                /* a queued stanza waits at most MUC_LOAD_TIMEOUT */
    struct router_muc *m;
    struct muc_load *next;
};

/* A moderated message's archive row to become a tombstone (XEP-0425), once the room's
 * archive writes up to the moderation's (tx, seq) are committed: read back (its nick,
 * stanza-id and muc#user item are kept), then replaced. */
struct muc_tombstone {
    char *room;
    uint64_t id;                   /* the moderated message's archive id */
    char *by;                      /* the moderator's occupant JID */
    char *reason;                  /* NULL: none */
    int64_t stamp_us;
    struct rchan_tx *tx;           /* NULL: nothing to wait for */
    uint64_t seq;
    struct router_muc *m;
    struct muc_tombstone *next;
};

struct muc_creator {
    char *bare;
    unsigned rooms;
    struct muc_creator *next;
};

struct muc_pending {
    uint8_t *data;
    size_t len;
};

enum muc_list_mode {
    MUC_LIST_AFTER = 0,            /* the first rooms whose JID is past key ("" from the start) */
    MUC_LIST_BEFORE,               /* the last rooms whose JID is before key ("" to the end) */
};

/* What one page request asks of every shard. */
struct muc_list_ask {
    enum muc_list_mode mode;
    char *key;
    size_t want;                   /* rooms each shard returns at most */
};

/* A shard's public rooms, or the part of a page they make up. */
struct muc_list_part {
    char **jids, **names;          /* names may hold NULL */
    size_t n, cap;
    size_t count;                  /* the shard's rooms (all of them) */
    size_t skipped;                /* the shard's rooms before the part (at or before key for after) */
};

/* A disco#items of the service: this shard's public rooms and every other shard's,
 * gathered (each shard answers for its own), then one answer to the asker. */
struct muc_listing {
    uint64_t n;                    /* the number in the internal requests' from */
    char *asker;                   /* the user's full JID */
    char *service;
    char *iq_id;
    uint32_t hops;
    unsigned waiting;              /* shards not answered yet */
    struct muc_list_ask ask;       /* what each shard is asked for */
    size_t max;                    /* rooms in the page */
    size_t index;                  /* rooms skipped before it (RSM index) */
    bool rsm;                      /* the request had <set/>: the answer has one */
    struct muc_list_part got;      /* the shards' parts so far */
    ev_timer timer;
    struct router_muc *m;
    struct muc_listing *next;
};

struct router_muc {
    struct router *rt;
    struct muc_listing *listings;  /* few at a time */
    uint64_t next_listing;
    uint64_t next_stanza_id;
    const struct cfg *cfg;
    char **hosts;                  /* the service domain of each hosted domain */
    size_t nhosts;
    struct muc_room **buckets;
    size_t nbuckets;
    size_t nrooms;
    size_t noccupants;
    struct muc_creator *creators;  /* few: only users with rooms now */
    unsigned depth;                /* > 0 while a stanza is handled */
    struct muc_pending *pending;   /* stanzas to rooms that arrived meanwhile, in order */
    size_t npending, pending_cap;
    struct buf out;                /* scratch for outgoing stanzas */
    struct store *store;           /* persistent rooms */
    bool closing;                  /* router_muc_free: no new store work */
    struct muc_tomb *tombs;        /* few: destroyed rooms whose row is not deleted yet */
    struct muc_load *loads;
    size_t nloads;
    size_t load_bytes;             /* of the stanzas waiting for loads */
    ev_timer retry;                /* failed writes again */
    struct muc_tombstone *stones;  /* tombstones waiting for their row's commit, oldest first */
    size_t nstones;                /* those and the ones being written */
    ev_timer stone_timer;          /* looks at the acks while some wait */
    struct muc_mam_query *mamq;    /* few: queries of rooms' archives in flight */
    size_t nmamq;
    uint64_t next_mamq;
    struct metric *m_rooms;
    struct metric *m_occupants;
    struct metric *m_stanzas;      /* label kind: join, leave, groupchat, private, iq, error */
    struct metric *m_refused;      /* label condition */
    struct metric *m_store;        /* label op: put_ok, put_failed, delete_ok, delete_failed, load_found, load_none,
                                    * load_temporary, load_failed, load_unreadable, list_failed */
};

/* --- small helpers ------------------------------------------------------------------ */

static int host_of(const struct router_muc *m, const char *to, const struct jid_view *v);

static bool streq(const char *a, const char *b)
{
    return a != NULL && b != NULL && strcmp(a, b) == 0;
}

static void put_attr(struct buf *b, const char *name, const char *v)
{
    buf_printf(b, " %s='", name);
    xml_escape(b, v, strlen(v));
    buf_append(b, "'", 1);
}

static void put_text(struct buf *b, const char *v)
{
    xml_escape(b, v, strlen(v));
}

/* The children of st serialized, except the elements of namespaces skip1 and skip2 (may
 * be NULL) and any XEP-0359 stanza-id (only a server stamps those). */
static void children_of(const struct xml_node *st, const char *skip1, const char *skip2, struct buf *out)
{
    for (const struct xml_node *c = st->first_child; c != NULL; c = c->next) {
        if (c->name != NULL && ((skip1 != NULL && streq(c->ns, skip1)) || (skip2 != NULL && streq(c->ns, skip2)) ||
                                (streq(c->ns, NS_SID) && streq(c->name, "stanza-id"))))
            continue;
        xml_serialize(c, XML_NS_CLIENT, out);
    }
}

void muc_stamp(char *out, size_t outlen, int64_t t_us)
{
    time_t secs = (time_t)(t_us / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)((t_us / 1000) % 1000));
}

static bool parse_uint(const char *s, unsigned long long *v)
{
    if (s == NULL || *s < '0' || *s > '9')
        return false;
    char *end;
    errno = 0;
    *v = strtoull(s, &end, 10);
    return errno == 0 && *end == '\0';
}

size_t muc_history_count(const struct xml_node *x, const int64_t *stamps, size_t kept, int64_t now_us)
{
    const struct xml_node *h = x != NULL ? xml_child(x, "history", NS_MUC) : NULL;
    if (h == NULL)
        return kept;
    size_t n = kept;
    unsigned long long v;
    if (parse_uint(xml_attr(h, "maxstanzas"), &v) && v < n)
        n = (size_t)v;
    if (parse_uint(xml_attr(h, "maxchars"), &v) && v == 0)
        n = 0;
    if (parse_uint(xml_attr(h, "seconds"), &v)) {
        int64_t since = v > (unsigned long long)(now_us / 1000000) ? 0 : now_us - (int64_t)v * 1000000;
        size_t fresh = 0;
        while (fresh < kept && stamps[kept - 1 - fresh] >= since)
            fresh++;
        if (fresh < n)
            n = fresh;
    }
    return n;
}

/* --- rooms ------------------------------------------------------------------------------ */

static struct muc_room *room_find(const struct router_muc *m, const char *jid, size_t len)
{
    uint64_t h = mk_hash64(jid, len, MUC_HASH_SEED);
    for (struct muc_room *r = m->buckets[h & (m->nbuckets - 1)]; r != NULL; r = r->hnext)
        if (r->hash == h && r->jid_len == len && memcmp(r->jid, jid, len) == 0)
            return r;
    return NULL;
}

static struct muc_creator *creator_find(struct router_muc *m, const char *bare, size_t len, bool add)
{
    for (struct muc_creator *c = m->creators; c != NULL; c = c->next)
        if (strlen(c->bare) == len && memcmp(c->bare, bare, len) == 0)
            return c;
    if (!add)
        return NULL;
    struct muc_creator *c = xcalloc(1, sizeof *c);
    c->bare = xstrndup(bare, len);
    c->next = m->creators;
    m->creators = c;
    return c;
}

static void creator_release(struct router_muc *m, const char *bare)
{
    for (struct muc_creator **pp = &m->creators; *pp != NULL; pp = &(*pp)->next) {
        struct muc_creator *c = *pp;
        if (strcmp(c->bare, bare) != 0)
            continue;
        if (--c->rooms == 0) {
            *pp = c->next;
            free(c->bare);
            free(c);
        }
        return;
    }
}

static void grow_buckets(struct router_muc *m)
{
    size_t nb = m->nbuckets * 2;
    struct muc_room **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < m->nbuckets; i++)
        for (struct muc_room *r = m->buckets[i], *next; r != NULL; r = next) {
            next = r->hnext;
            r->hnext = b[r->hash & (nb - 1)];
            b[r->hash & (nb - 1)] = r;
        }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = nb;
}

/* Unlinks and returns the tomb of jid, or NULL. */
static struct muc_tomb *tomb_take(struct router_muc *m, const char *jid)
{
    for (struct muc_tomb **pp = &m->tombs; *pp != NULL; pp = &(*pp)->next)
        if (strcmp((*pp)->jid, jid) == 0) {
            struct muc_tomb *t = *pp;
            *pp = t->next;
            return t;
        }
    return NULL;
}

static struct muc_tomb *tomb_find(const struct router_muc *m, const char *jid, size_t len)
{
    for (struct muc_tomb *t = m->tombs; t != NULL; t = t->next)
        if (strlen(t->jid) == len && memcmp(t->jid, jid, len) == 0)
            return t;
    return NULL;
}

static void persist_kick(struct router_muc *m, const char *jid, size_t len);

static struct muc_room *room_new(struct router_muc *m, const char *jid, size_t len, const char *creator,
                                 size_t creator_len)
{
    if (m->nrooms + 1 > m->nbuckets)
        grow_buckets(m);
    struct muc_room *r = xcalloc(1, sizeof *r);
    r->jid = xstrndup(jid, len);
    r->jid_len = len;
    r->hash = mk_hash64(jid, len, MUC_HASH_SEED);
    r->creator = xstrndup(creator, creator_len);
    r->conf.public_room = true;
    r->conf.change_subject = true;
    r->conf.allow_invites = true;
    r->conf.max_users = m->cfg->modules.muc_max_occupants;
    unsigned hs = m->cfg->modules.muc_history_size;
    r->hist = hs > 0 ? xcalloc(hs, sizeof *r->hist) : NULL;
    r->stamps = hs > 0 ? xcalloc(hs, sizeof *r->stamps) : NULL;
    r->hnext = m->buckets[r->hash & (m->nbuckets - 1)];
    m->buckets[r->hash & (m->nbuckets - 1)] = r;
    m->nrooms++;
    creator_find(m, creator, creator_len, true)->rooms++;
    /* The row of a room of this name destroyed a moment ago may still be on its way out:
     * the new room takes over its writes, so that its own come after them. */
    struct muc_tomb *t = tomb_take(m, r->jid);
    if (t != NULL) {
        r->p_stored = true;
        r->p_busy = t->busy;
        r->p_dirty = true;
        r->p_purge = t->purge && t->dirty;   /* the old room's archive is not the new one's */
        free(t->jid);
        free(t);
    }
    return r;
}

static void occupant_release(struct muc_occupant *o)
{
    free(o->nick);
    free(o->jid);
    free(o->pres);
    for (size_t i = 0; i < o->nmore; i++)
        free(o->more[i]);
    free(o->more);
}

static void room_free(struct router_muc *m, struct muc_room *r)
{
    /* Its row (if the store may hold one) goes too: a tomb until the DELETE is done. */
    struct muc_tomb *t = NULL;
    if (!m->closing && m->store != NULL && (r->p_stored || r->p_busy || r->p_dirty)) {
        t = xcalloc(1, sizeof *t);
        t->jid = xstrdup(r->jid);
        t->busy = r->p_busy;
        t->dirty = true;
        t->purge = r->p_temp || r->p_purge;
    }
    for (struct muc_room **pp = &m->buckets[r->hash & (m->nbuckets - 1)]; *pp != NULL; pp = &(*pp)->hnext)
        if (*pp == r) {
            *pp = r->hnext;
            break;
        }
    m->nrooms--;
    creator_release(m, r->creator);
    for (size_t i = 0; i < r->nocc; i++)
        occupant_release(&r->occ[i]);
    m->noccupants -= r->nocc;
    free(r->occ);
    for (size_t i = 0; i < r->naffs; i++) {
        free(r->affs[i].bare);
        free(r->affs[i].nick);
    }
    free(r->affs);
    unsigned hs = m->cfg->modules.muc_history_size;
    for (size_t i = 0; i < r->hist_count; i++) {
        struct muc_msg *h = &r->hist[(r->hist_head + i) % hs];
        free(h->nick);
        free(h->sid);
        free(h->inner);
    }
    free(r->hist);
    free(r->stamps);
    free(r->subject);
    free(r->subject_nick);
    free(r->conf.name);
    free(r->conf.desc);
    free(r->conf.password);
    free(r->creator);
    free(r->jid);
    free(r);
    if (t != NULL) {
        t->next = m->tombs;
        m->tombs = t;
        persist_kick(m, t->jid, strlen(t->jid));
    }
}

/* --- the store: persistent rooms ---------------------------------------------------------
 * A persistent room's row is written whenever what it keeps (configuration, subject,
 * affiliations) changes, as a queued store write that nothing waits for. Writes of one
 * room are one at a time, so they reach the store in order whatever the driver's pool
 * does: a change while one is in flight marks the room dirty and the next write, once the
 * first is done, stores what memory holds then (changes in between coalesce). */

struct muc_write {
    struct router_muc *m;
    char *jid;
    bool put;
    bool purge;                    /* a delete that takes the room's archive too */
};

/* Whether the store keeps a row of r: a persistent room's, or a temporary room's that
 * archives (XEP-0313 on the room: the store keeps archive rows of accounts and stored
 * rooms only). The row of a temporary room says so; it goes, with the room's archive,
 * when the room goes. */
static bool room_keeps_row(const struct router_muc *m, const struct muc_room *r)
{
    return r->conf.persistent || (m->rt->archive != NULL && !r->conf.no_archive);
}

static void on_write_done(void *ud, const struct store_result *res);

/* The room as its stored form, borrowing the room's strings. */
static struct muc_state state_of(const struct muc_room *r)
{
    struct muc_state st;
    memset(&st, 0, sizeof st);
    st.creator = r->creator;
    st.conf = r->conf;
    st.subject = r->subject;
    st.subject_nick = r->subject_nick;
    st.affs = r->affs;
    st.naffs = r->naffs;
    return st;
}

/* Starts the write that brings jid's row to what memory holds (the room's state, or no
 * row for a tomb or a room no longer persistent), unless one is in flight already. */
static void persist_kick(struct router_muc *m, const char *jid, size_t len)
{
    if (m->store == NULL || m->closing)
        return;
    struct muc_room *r = room_find(m, jid, len);
    struct muc_tomb *t = r == NULL ? tomb_find(m, jid, len) : NULL;
    bool put, purge = false;
    if (r != NULL) {
        if (r->p_busy || !r->p_dirty)
            return;
        if (r->p_purge) {
            /* First the old room's row and archive; this room's row next (still dirty). */
            r->p_purge = false;
            put = false;
            purge = true;
        } else {
            r->p_dirty = false;
            put = room_keeps_row(m, r);
            purge = !put && r->p_temp;
            if (put)
                r->p_temp = !r->conf.persistent;
            else
                r->p_temp = false;
        }
        r->p_busy = true;
        r->p_stored = put;
    } else if (t != NULL) {
        if (t->busy)
            return;
        if (!t->dirty) {
            free(tomb_take(m, t->jid)->jid);
            free(t);
            return;
        }
        t->dirty = false;
        t->busy = true;
        put = false;
        purge = t->purge;
    } else {
        return;
    }
    struct muc_write *w = xcalloc(1, sizeof *w);
    w->m = m;
    w->jid = xstrndup(jid, len);
    w->put = put;
    w->purge = purge;
    if (!put && purge) {
        /* A temporary room's row and its archive, in one transaction: an archive write
         * still on its way is then skipped by the store (no row of its owner). */
        const char *at = strchr(w->jid, '@');
        char *user = xstrndup(w->jid, at != NULL ? (size_t)(at - w->jid) : 0);
        const char *params[] = {w->jid};
        const char *owner[] = {user, at != NULL ? at + 1 : ""};
        const struct store_op ops[] = {{STORE_MUC_ROOM_DELETE, params, 1}, {STORE_MAM_DELETE_OWNER, owner, 2}};
        store_txn(m->store, ops, MK_ARRAY_LEN(ops), on_write_done, w);
        free(user);
        return;
    }
    if (!put) {
        const char *params[] = {w->jid};
        store_query(m->store, STORE_MUC_ROOM_DELETE, params, 1, on_write_done, w);
        return;
    }
    struct buf doc;
    buf_init(&doc);
    struct muc_state st = state_of(r);
    muc_state_write(&st, &doc);
    buf_append(&doc, "", 1);
    const char *at = strchr(r->jid, '@');
    char stamp[24];
    snprintf(stamp, sizeof stamp, "%lld", (long long)mk_now_us());
    /* A temporary room's row is never listed from the store (only while in memory). */
    const char *params[] = {w->jid, at != NULL ? at + 1 : "", r->conf.public_room && r->conf.persistent ? "1" : "0",
                            r->conf.name, doc.data, stamp};
    store_query(m->store, STORE_MUC_ROOM_PUT, params, MK_ARRAY_LEN(params), on_write_done, w);
    buf_release(&doc);
}

/* Something a persistent room keeps changed (or the room stopped being persistent): its
 * row is written (now, or after the write in flight). */
static void persist_touch(struct router_muc *m, struct muc_room *r)
{
    if (!room_keeps_row(m, r) && !r->p_stored && !r->p_busy && !r->p_purge)
        return;
    r->p_dirty = true;
    persist_kick(m, r->jid, r->jid_len);
}

static void on_write_done(void *ud, const struct store_result *res)
{
    struct muc_write *w = ud;
    struct router_muc *m = w->m;
    size_t len = strlen(w->jid);
    bool ok = res->ok == 0;
    metric_inc(m->m_store, w->put ? (ok ? "put_ok" : "put_failed") : (ok ? "delete_ok" : "delete_failed"));
    if (!ok) {
        char sample[128];
        log_warn("muc_store_write_failed", "room=\"%s\" op=%s error=\"%s\"",
                 mk_sanitize(sample, sizeof sample, w->jid, len), w->put ? "put" : "delete",
                 res->error ? res->error : "");
    }
    struct muc_room *r = room_find(m, w->jid, len);
    struct muc_tomb *t = r == NULL ? tomb_find(m, w->jid, len) : NULL;
    if (r != NULL) {
        r->p_busy = false;
        r->p_dirty |= !ok;
        r->p_purge |= !ok && w->purge;   /* tried again before anything else */
        if (ok)
            r->p_row = w->put;
    } else if (t != NULL) {
        t->busy = false;
        t->dirty |= !ok;
    }
    if (!ok && !m->closing && !ev_is_active(&m->retry)) {
        ev_timer_set(&m->retry, MUC_RETRY_SECONDS, 0.);
        ev_timer_start(m->rt->node->loop, &m->retry);
    } else if (ok) {
        persist_kick(m, w->jid, len);
    }
    free(w->jid);
    free(w);
}

/* Failed writes, again: every dirty room and tomb with nothing in flight. */
static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct router_muc *m = w->data;
    for (size_t i = 0; i < m->nbuckets; i++)
        for (struct muc_room *r = m->buckets[i]; r != NULL; r = r->hnext)
            if (r->p_dirty && !r->p_busy)
                persist_kick(m, r->jid, r->jid_len);
    for (struct muc_tomb *t = m->tombs, *next; t != NULL; t = next) {
        next = t->next;   /* persist_kick may free t */
        if (t->dirty && !t->busy)
            persist_kick(m, t->jid, strlen(t->jid));
    }
}

/* A room in memory again from its stored state (consumed: *st is zeroed). */
static struct muc_room *room_from_state(struct router_muc *m, const char *jid, size_t len, struct muc_state *st)
{
    struct muc_room *r = room_new(m, jid, len, st->creator, strlen(st->creator));
    r->conf = st->conf;
    r->p_row = true;
    if (r->conf.max_users > m->cfg->modules.muc_max_occupants)
        r->conf.max_users = m->cfg->modules.muc_max_occupants;   /* the service's limit may have gone down */
    r->subject = st->subject;
    r->subject_nick = st->subject_nick;
    r->affs = st->affs;
    r->naffs = st->naffs;
    r->p_stored = true;
    free(st->creator);
    memset(st, 0, sizeof *st);
    return r;
}

static enum muc_aff aff_of(const struct muc_room *r, const char *bare, size_t len)
{
    for (size_t i = 0; i < r->naffs; i++)
        if (strlen(r->affs[i].bare) == len && memcmp(r->affs[i].bare, bare, len) == 0)
            return r->affs[i].aff;
    return MUC_AFF_NONE;
}

static struct muc_aff_entry *aff_entry(const struct muc_room *r, const char *bare, size_t len)
{
    for (size_t i = 0; i < r->naffs; i++)
        if (strlen(r->affs[i].bare) == len && memcmp(r->affs[i].bare, bare, len) == 0)
            return &r->affs[i];
    return NULL;
}

/* The affiliation that reserved nick (XEP-0045 7.10), or NULL. */
static const struct muc_aff_entry *nick_reserved(const struct muc_room *r, const char *nick)
{
    for (size_t i = 0; i < r->naffs; i++)
        if (r->affs[i].nick != NULL && strcmp(r->affs[i].nick, nick) == 0)
            return &r->affs[i];
    return NULL;
}

/* Sets bare's affiliation (NONE removes it, with its reserved nick; an outcast keeps no
 * nick). Returns 0, or -1 when the list is full. */
static int aff_set(struct muc_room *r, const char *bare, enum muc_aff aff)
{
    for (size_t i = 0; i < r->naffs; i++)
        if (strcmp(r->affs[i].bare, bare) == 0) {
            if (aff == MUC_AFF_NONE) {
                free(r->affs[i].bare);
                free(r->affs[i].nick);
                r->affs[i] = r->affs[--r->naffs];
            } else {
                r->affs[i].aff = aff;
                if (aff == MUC_AFF_OUTCAST) {
                    free(r->affs[i].nick);
                    r->affs[i].nick = NULL;
                }
            }
            return 0;
        }
    if (aff == MUC_AFF_NONE)
        return 0;
    if (r->naffs >= MUC_MAX_AFFILIATIONS)
        return -1;
    r->affs = xrealloc(r->affs, (r->naffs + 1) * sizeof *r->affs);
    r->affs[r->naffs].bare = xstrdup(bare);
    r->affs[r->naffs].nick = NULL;
    r->affs[r->naffs++].aff = aff;
    return 0;
}

static enum muc_role role_for(const struct muc_room *r, enum muc_aff aff)
{
    if (aff >= MUC_AFF_ADMIN)
        return MUC_ROLE_MODERATOR;
    return aff == MUC_AFF_NONE && r->conf.moderated ? MUC_ROLE_VISITOR : MUC_ROLE_PARTICIPANT;
}

static struct muc_occupant *by_nick(struct muc_room *r, const char *nick)
{
    for (size_t i = 0; i < r->nocc; i++)
        if (strcmp(r->occ[i].nick, nick) == 0)
            return &r->occ[i];
    return NULL;
}

/* The occupant one of whose sessions is jid (its first or another). */
static struct muc_occupant *by_jid(struct muc_room *r, const char *jid)
{
    for (size_t i = 0; i < r->nocc; i++) {
        struct muc_occupant *o = &r->occ[i];
        if (strcmp(o->jid, jid) == 0)
            return o;
        for (size_t k = 0; k < o->nmore; k++)
            if (strcmp(o->more[k], jid) == 0)
                return o;
    }
    return NULL;
}

/* o's session k: 0 its first, 1..nmore the others. */
static const char *session_at(const struct muc_occupant *o, size_t k)
{
    return k == 0 ? o->jid : o->more[k - 1];
}

/* The session jid of o (one of its sessions, o has more than one) leaves, o stays: when
 * its first session left, the next one is first. */
static void session_drop(struct muc_occupant *o, const char *jid)
{
    size_t i = o->nmore;
    if (strcmp(o->jid, jid) == 0) {
        free(o->jid);
        o->jid = o->more[0];
        i = 0;
    } else {
        for (size_t k = 0; k < o->nmore && i == o->nmore; k++)
            if (strcmp(o->more[k], jid) == 0) {
                free(o->more[k]);
                i = k;
            }
    }
    if (i == o->nmore)
        return;
    memmove(&o->more[i], &o->more[i + 1], (o->nmore - i - 1) * sizeof *o->more);
    o->nmore--;
}

static void occupant_remove(struct router_muc *m, struct muc_room *r, struct muc_occupant *o)
{
    size_t i = (size_t)(o - r->occ);
    occupant_release(o);
    memmove(&r->occ[i], &r->occ[i + 1], (r->nocc - i - 1) * sizeof *r->occ);
    r->nocc--;
    m->noccupants--;
}

/* --- sending ----------------------------------------------------------------------------- */

/* Routes r (borrowed) as this shard's own stanza: handled here when this shard owns its
 * to's bare JID, sent to the owning router shard otherwise. muc_send: the same for xml
 * with its routing fields (kind, from, to, type, id). */
static void muc_send_route(struct router_muc *m, Mk__Route *r)
{
    const char *to = r->to;
    const char *slash = strchr(to, '/');
    size_t blen = slash ? (size_t)(slash - to) : strlen(to);
    const struct cfg_proc *p = cfg_shard_n(m->cfg, CFG_ROLE_ROUTER, to, blen);
    if (p == NULL || p == m->rt->node->self) {
        router_route(m->rt, r, NULL, ROUTER_FROM_LOCAL, NULL);
        return;
    }
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
    e.route = r;
    if (node_send(m->rt->node, p->id, &e) == -1)
        metric_inc(m->rt->m_dropped, "muc_router_unreachable");
}

static void muc_send(struct router_muc *m, Mk__StanzaKind kind, const char *from, const char *to, const char *type,
                     const char *id, const char *xml, size_t len, bool has_body, uint32_t hops)
{
    Mk__Route r;
    env_route_init(&r, kind, from, to, type, id, xml, len);
    r.has_body = has_body;
    r.hops = hops;
    muc_send_route(m, &r);
}

/* Answers r with a stanza error (never an error to an error). */
static void muc_error(struct router_muc *m, const Mk__Route *r, const char *type, const char *condition)
{
    if (streq(r->type, "error") || r->from == NULL || *r->from == '\0')
        return;
    metric_inc(m->m_refused, condition);
    struct buf b;
    buf_init(&b);
    route_error_xml(&b, r->kind, r->to, r->from, r->id, type, condition);
    muc_send(m, r->kind, r->to, r->from, "error", r->id, b.data, b.len, false, r->hops + 1);
    buf_release(&b);
}

/* An IQ result from r->to to r->from with payload (may be NULL). */
static void muc_iq_result(struct router_muc *m, const Mk__Route *r, const char *payload, size_t len)
{
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "<iq");
    put_attr(&b, "from", r->to);
    put_attr(&b, "to", r->from);
    buf_append_str(&b, " type='result'");
    if (r->id != NULL && *r->id != '\0')
        put_attr(&b, "id", r->id);
    if (payload != NULL && len > 0) {
        buf_append(&b, ">", 1);
        buf_append(&b, payload, len);
        buf_append_str(&b, "</iq>");
    } else {
        buf_append_str(&b, "/>");
    }
    muc_send(m, MK__STANZA_KIND__STANZA_KIND_IQ, r->to, r->from, "result", r->id, b.data, b.len, false, r->hops + 1);
    buf_release(&b);
}

/* What a presence from the room about occupant o carries. */
struct pres_opts {
    const char *type;              /* NULL (available) or "unavailable" */
    enum muc_aff aff;
    enum muc_role role;
    const unsigned *codes;         /* status codes */
    size_t ncodes;
    const char *item_inner;        /* <actor/><reason/> inside <item/>, or NULL */
    const char *item_nick;         /* the new nick of a nick change (303), or NULL */
    const char *x_inner;           /* <destroy/> inside <x/>, or NULL */
    bool self;                     /* to o itself: status 110 */
    bool hide_jid;                 /* the recipient may not see o's real JID (semi-anonymous) */
};

/* --- fan-outs: stanzas from the room to several recipients ------------------------------
 * Every stanza the room sends to its occupants goes through a batch: stanzas built one
 * after the other as templates (their to attribute left empty at to_at), then handed to
 * router_fanout for the batch's recipients, which sends each c2s one Deliver carrying
 * them once (router/fanout.c). A batch is flushed at MUC_BATCH_BYTES of text, so that
 * no envelope comes near the bus's frame limit. */
#define MUC_BATCH_BYTES (32u * 1024u)

struct muc_tmpl {
    Mk__StanzaKind kind;
    size_t from, type, id;         /* offsets of NUL-ended strings in the batch's text */
    size_t xml, len, to_at;        /* the stanza's bytes in text; to_at from their start */
    bool has_body;
};

struct muc_batch {
    struct router_muc *m;
    char *const *to;               /* the recipients' full JIDs (borrowed) */
    size_t nto;
    uint32_t hops;
    struct buf text;
    struct muc_tmpl *t;
    size_t n, cap;
};

static void batch_init(struct muc_batch *bt, struct router_muc *m, char *const *to, size_t nto, uint32_t hops)
{
    memset(bt, 0, sizeof *bt);
    bt->m = m;
    bt->to = to;
    bt->nto = nto;
    bt->hops = hops;
    buf_init(&bt->text);
}

static size_t text_str(struct buf *b, const char *s)
{
    size_t off = b->len;
    buf_append(b, s != NULL ? s : "", s != NULL ? strlen(s) + 1 : 1);
    return off;
}

/* Starts a stanza: the caller writes its XML into the returned buffer (the opening tag
 * up to " to='", batch_to, the rest), then batch_done. */
static struct buf *batch_stanza(struct muc_batch *bt, Mk__StanzaKind kind, const char *from, const char *type,
                                const char *id)
{
    if (bt->n == bt->cap) {
        bt->cap = bt->cap ? bt->cap * 2 : 8;
        bt->t = xrealloc(bt->t, bt->cap * sizeof *bt->t);
    }
    struct muc_tmpl *t = &bt->t[bt->n];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->from = text_str(&bt->text, from);
    t->type = text_str(&bt->text, type);
    t->id = text_str(&bt->text, id);
    t->xml = bt->text.len;
    return &bt->text;
}

/* Where the recipient's JID goes: here, inside to='...'. */
static void batch_to(struct muc_batch *bt)
{
    struct muc_tmpl *t = &bt->t[bt->n];
    t->to_at = bt->text.len - t->xml;
}

static void batch_flush(struct muc_batch *bt)
{
    if (bt->n == 0)
        return;
    Mk__Route *routes = xmalloc(bt->n * sizeof *routes);
    Mk__Route **ptrs = xmalloc(bt->n * sizeof *ptrs);
    const char *text = bt->text.data;
    for (size_t i = 0; i < bt->n; i++) {
        const struct muc_tmpl *t = &bt->t[i];
        env_route_init(&routes[i], t->kind, text + t->from, "", text + t->type, text + t->id, text + t->xml, t->len);
        routes[i].has_body = t->has_body;
        routes[i].hops = bt->hops;
        routes[i].to_at = (uint32_t)t->to_at;
        ptrs[i] = &routes[i];
    }
    if (bt->nto > 0)
        router_fanout(bt->m->rt, ptrs, bt->n, bt->to, bt->nto, false);
    free(ptrs);
    free(routes);
    bt->n = 0;
    bt->text.len = 0;
}

static void batch_done(struct muc_batch *bt, bool has_body)
{
    struct muc_tmpl *t = &bt->t[bt->n];
    t->len = bt->text.len - t->xml;
    t->has_body = has_body;
    bt->n++;
    if (bt->text.len >= MUC_BATCH_BYTES)
        batch_flush(bt);
}

/* Sends what is left and frees the batch. */
static void batch_end(struct muc_batch *bt)
{
    batch_flush(bt);
    buf_release(&bt->text);
    free(bt->t);
}

/* o's presence (from room/nick) into the batch. */
static void add_presence(struct muc_batch *bt, const struct muc_room *r, const struct muc_occupant *o,
                         const struct pres_opts *po)
{
    char *from = xasprintf("%s/%s", r->jid, o->nick);
    struct buf *b = batch_stanza(bt, MK__STANZA_KIND__STANZA_KIND_PRESENCE, from, po->type, NULL);
    buf_append_str(b, "<presence");
    put_attr(b, "from", from);
    buf_append_str(b, " to='");
    batch_to(bt);
    buf_append(b, "'", 1);
    if (po->type != NULL)
        put_attr(b, "type", po->type);
    buf_append(b, ">", 1);
    if (po->type == NULL && o->pres != NULL)
        buf_append(b, o->pres, o->pres_len);
    buf_append_str(b, "<x xmlns='" NS_MUC_USER "'><item");
    put_attr(b, "affiliation", muc_aff_names[po->aff]);
    put_attr(b, "role", role_names[po->role]);
    if (!po->hide_jid)
        put_attr(b, "jid", o->jid);
    if (po->item_nick != NULL)
        put_attr(b, "nick", po->item_nick);
    if (po->item_inner != NULL) {
        buf_append(b, ">", 1);
        buf_append_str(b, po->item_inner);
        buf_append_str(b, "</item>");
    } else {
        buf_append_str(b, "/>");
    }
    if (po->x_inner != NULL)
        buf_append_str(b, po->x_inner);
    for (size_t i = 0; i < po->ncodes; i++)
        buf_printf(b, "<status code='%u'/>", po->codes[i]);
    if (po->self)
        buf_append_str(b, "<status code='110'/>");
    buf_append_str(b, "</x></presence>");
    batch_done(bt, false);
    free(from);
}

/* Sends o's presence (from room/nick) to the real JID to. */
static void send_presence(struct router_muc *m, const struct muc_room *r, const struct muc_occupant *o, const char *to,
                          const struct pres_opts *po, uint32_t hops)
{
    char *tos[1] = {(char *)to};
    struct muc_batch bt;
    batch_init(&bt, m, tos, 1, hops);
    add_presence(&bt, r, o, po);
    batch_end(&bt);
}

/* Every session of every occupant but skip (NULL: none) into a new array (*n of them):
 * all of them when which is 0, those that may see real JIDs (1) or not (2) in a
 * semi-anonymous room (moderators do). Borrowed strings. */
static char **sessions_of(const struct muc_room *r, const struct muc_occupant *skip, int which, size_t *n)
{
    size_t cap = 0;
    for (size_t i = 0; i < r->nocc; i++)
        cap += 1 + r->occ[i].nmore;
    char **to = xmalloc((cap ? cap : 1) * sizeof *to);
    *n = 0;
    for (size_t i = 0; i < r->nocc; i++) {
        const struct muc_occupant *t = &r->occ[i];
        if (t == skip)
            continue;
        bool sees = !r->conf.semi_anonymous || t->role == MUC_ROLE_MODERATOR;
        if ((which == 1 && !sees) || (which == 2 && sees))
            continue;
        for (size_t k = 0; k <= t->nmore; k++)
            to[(*n)++] = (char *)session_at(t, k);
    }
    return to;
}

/* o's presence (po, not to itself) to every other occupant: one fan-out for those who
 * may see its real JID, one for those who may not. */
static void broadcast_others(struct router_muc *m, struct muc_room *r, const struct muc_occupant *o,
                             struct pres_opts po, uint32_t hops)
{
    bus_charge(m->rt->node->bus, r->nocc);   /* see groupchat() */
    po.self = false;
    for (int which = 1; which <= 2; which++) {
        size_t n = 0;
        char **to = sessions_of(r, o, which, &n);
        if (n > 0) {
            po.hide_jid = which == 2;
            struct muc_batch bt;
            batch_init(&bt, m, to, n, hops);
            add_presence(&bt, r, o, &po);
            batch_end(&bt);
        }
        free(to);
        if (!r->conf.semi_anonymous)
            break;   /* everyone sees it: one fan-out */
    }
}

/* o's own presence (110 and self_codes) into a batch to o's sessions. */
static void add_self_presence(struct muc_batch *bt, const struct muc_room *r, const struct muc_occupant *o,
                              struct pres_opts po, const unsigned *self_codes, size_t nself)
{
    po.self = true;
    po.hide_jid = false;
    po.codes = self_codes;
    po.ncodes = nself;
    add_presence(bt, r, o, &po);
}

/* o's presence to every occupant (o itself with 110 and self_codes). */
static void broadcast_presence(struct router_muc *m, struct muc_room *r, const struct muc_occupant *o,
                               struct pres_opts po, const unsigned *self_codes, size_t nself, uint32_t hops)
{
    char **self = xmalloc((1 + o->nmore) * sizeof *self);
    for (size_t k = 0; k <= o->nmore; k++)
        self[k] = (char *)session_at(o, k);
    struct muc_batch bt;
    batch_init(&bt, m, self, 1 + o->nmore, hops);
    add_self_presence(&bt, r, o, po, self_codes, nself);
    batch_end(&bt);
    free(self);
    broadcast_others(m, r, o, po, hops);
}

static struct pres_opts opts_of(const struct muc_room *r, const struct muc_occupant *o)
{
    struct pres_opts po = {0};
    po.aff = aff_of(r, o->jid, o->bare_len);
    po.role = o->role;
    return po;
}

/* Every occupant's presence but o's, into a batch to a newcomer of o: real JIDs hidden
 * from a non-moderator in a semi-anonymous room. */
static void add_others_presences(struct muc_batch *bt, struct muc_room *r, const struct muc_occupant *o)
{
    for (size_t i = 0; i < r->nocc; i++)
        if (&r->occ[i] != o) {
            struct pres_opts po = opts_of(r, &r->occ[i]);
            po.hide_jid = r->conf.semi_anonymous && o->role != MUC_ROLE_MODERATOR;
            add_presence(bt, r, &r->occ[i], &po);
        }
}

/* The room's subject, into a batch to a joiner: always sent, empty when never set (the
 * end of the join). */
static void add_subject(struct muc_batch *bt, const struct muc_room *r)
{
    char *from = r->subject_nick ? xasprintf("%s/%s", r->jid, r->subject_nick) : xstrdup(r->jid);
    struct buf *b = batch_stanza(bt, MK__STANZA_KIND__STANZA_KIND_MESSAGE, from, "groupchat", NULL);
    buf_append_str(b, "<message");
    put_attr(b, "from", from);
    buf_append_str(b, " to='");
    batch_to(bt);
    buf_append_str(b, "' type='groupchat'>");
    if (r->subject != NULL && *r->subject != '\0') {
        buf_append_str(b, "<subject>");
        put_text(b, r->subject);
        buf_append_str(b, "</subject>");
    } else {
        buf_append_str(b, "<subject/>");
    }
    buf_append_str(b, "</message>");
    batch_done(bt, false);
    free(from);
}

/* The history a joiner asked for (x: its <x xmlns=NS_MUC/>, may be NULL), into a batch. */
static void add_history(struct muc_batch *bt, struct muc_room *r, const struct xml_node *x)
{
    unsigned hs = bt->m->cfg->modules.muc_history_size;
    if (hs == 0 || r->hist_count == 0)
        return;
    for (size_t i = 0; i < r->hist_count; i++)
        r->stamps[i] = r->hist[(r->hist_head + i) % hs].stamp_us;
    size_t n = muc_history_count(x, r->stamps, r->hist_count, mk_now_us());
    char stamp[40];
    for (size_t i = r->hist_count - n; i < r->hist_count; i++) {
        const struct muc_msg *h = &r->hist[(r->hist_head + i) % hs];
        char *from = xasprintf("%s/%s", r->jid, h->nick);
        struct buf *b = batch_stanza(bt, MK__STANZA_KIND__STANZA_KIND_MESSAGE, from, "groupchat", NULL);
        buf_append_str(b, "<message");
        put_attr(b, "from", from);
        buf_append_str(b, " to='");
        batch_to(bt);
        buf_append_str(b, "' type='groupchat'>");
        buf_append(b, h->inner, h->inner_len);
        muc_stamp(stamp, sizeof stamp, h->stamp_us);
        buf_append_str(b, "<delay xmlns='" NS_DELAY "'");
        put_attr(b, "from", r->jid);
        put_attr(b, "stamp", stamp);
        buf_append_str(b, "/></message>");
        batch_done(bt, true);
        free(from);
    }
}

/* What a newcomer (a session of o, full JID to) gets, as one batch: every other
 * occupant's presence, o's own (110, self_codes), the history it asked for (x) and the
 * subject. */
static void welcome(struct router_muc *m, struct muc_room *r, const struct muc_occupant *o, const char *to,
                    const struct xml_node *x, const unsigned *self_codes, size_t nself, uint32_t hops)
{
    bus_charge(m->rt->node->bus, r->nocc);   /* see groupchat() */
    char *tos[1] = {(char *)to};
    struct muc_batch bt;
    batch_init(&bt, m, tos, 1, hops);
    add_others_presences(&bt, r, o);
    add_self_presence(&bt, r, o, opts_of(r, o), self_codes, nself);
    add_history(&bt, r, x);
    add_subject(&bt, r);
    batch_end(&bt);
}

static void history_add(struct router_muc *m, struct muc_room *r, const char *nick, const char *inner, size_t len,
                        const char *sid, int64_t stamp_us)
{
    unsigned hs = m->cfg->modules.muc_history_size;
    if (hs == 0 || len > MUC_HISTORY_MAX_BYTES)
        return;
    while (r->hist_count > 0 && (r->hist_count == hs || r->hist_bytes + len > MUC_HISTORY_MAX_BYTES)) {
        struct muc_msg *old = &r->hist[r->hist_head];
        r->hist_bytes -= old->inner_len;
        free(old->nick);
        free(old->sid);
        free(old->inner);
        r->hist_head = (r->hist_head + 1) % hs;
        r->hist_count--;
    }
    struct muc_msg *h = &r->hist[(r->hist_head + r->hist_count++) % hs];
    r->hist_bytes += len;
    h->nick = xstrdup(nick);
    h->sid = xstrdup(sid);
    h->inner = xstrndup(inner, len);
    h->inner_len = len;
    h->stamp_us = stamp_us;
}

/* Removes o from the room after telling everyone (o with 110); frees the room when it is
 * then empty. item_inner / codes as in pres_opts. */
static void leave(struct router_muc *m, struct muc_room *r, struct muc_occupant *o, const unsigned *codes, size_t n,
                  const char *item_inner, uint32_t hops)
{
    struct pres_opts po = opts_of(r, o);
    po.type = "unavailable";
    po.role = MUC_ROLE_NONE;
    po.codes = codes;
    po.ncodes = n;
    po.item_inner = item_inner;
    broadcast_presence(m, r, o, po, codes, n, hops);
    occupant_remove(m, r, o);
    if (r->nocc == 0 && !r->conf.persistent)
        room_free(m, r);   /* a persistent room stays, empty (XEP-0045 10.1.3) */
}

/* --- presence ---------------------------------------------------------------------------- */

/* Another session of o's user joins under o's nick (XEP-0045 multi-session nicks): the
 * room sees no new occupant and no presence; the session gets the occupants' presences,
 * o's own (110), the history and the subject, and from then on everything o gets. */
static void join_session(struct router_muc *m, struct muc_room *r, struct muc_occupant *o, const Mk__Route *in,
                         const struct xml_node *st)
{
    if (o->nmore >= MUC_MORE_SESSIONS_MAX) {
        muc_error(m, in, "wait", "resource-constraint");
        return;
    }
    o->more = xrealloc(o->more, (o->nmore + 1) * sizeof *o->more);
    o->more[o->nmore++] = xstrdup(in->from);
    static const unsigned code100[] = {100};
    welcome(m, r, o, in->from, xml_child(st, "x", NS_MUC), code100, r->conf.semi_anonymous ? 0 : 1, in->hops + 1);
    metric_inc(m->m_stanzas, "join_session");
}

/* XEP-0045 7.2.9 and 7.10: a nick another user reserved is refused <conflict/>; in a
 * members-only room a user with a reserved nick enters (or changes to) that nick only,
 * else <not-acceptable/>. True when it answered in with that error. */
static bool nick_refused(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const char *nick,
                         size_t bare_len)
{
    const struct muc_aff_entry *holder = nick_reserved(r, nick);
    if (holder != NULL && (strlen(holder->bare) != bare_len || memcmp(holder->bare, in->from, bare_len) != 0)) {
        muc_error(m, in, "cancel", "conflict");
        return true;
    }
    const struct muc_aff_entry *own = aff_entry(r, in->from, bare_len);
    if (r->conf.members_only && own != NULL && own->nick != NULL && strcmp(own->nick, nick) != 0) {
        muc_error(m, in, "cancel", "not-acceptable");
        return true;
    }
    return false;
}

static void join(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *st,
                 const char *nick, const struct jid_view *from)
{
    const struct cfg_modules *mc = &m->cfg->modules;
    bool created = false;
    if (r == NULL) {
        struct jid_view to;
        router_jid_split(in->to, &to);
        struct muc_creator *c = creator_find(m, in->from, from->bare_len, false);
        if (c != NULL && c->rooms >= mc->muc_max_rooms_per_user) {
            log_info("muc_room_limit", "rooms=%u", c->rooms);
            muc_error(m, in, "cancel", "not-allowed");
            return;
        }
        r = room_new(m, in->to, to.bare_len, in->from, from->bare_len);
        aff_set(r, r->creator, MUC_AFF_OWNER);
        created = true;
        persist_touch(m, r);   /* a room that archives has a row from the start */
    } else {
        enum muc_aff aff = aff_of(r, in->from, from->bare_len);
        if (aff == MUC_AFF_OUTCAST) {
            muc_error(m, in, "auth", "forbidden");
            return;
        }
        if (r->conf.password != NULL && aff < MUC_AFF_ADMIN) {
            const struct xml_node *x = xml_child(st, "x", NS_MUC);
            const struct xml_node *pw = x != NULL ? xml_child(x, "password", NS_MUC) : NULL;
            char *given = pw != NULL ? xml_text(pw) : NULL;
            bool ok = given != NULL && strcmp(given, r->conf.password) == 0;
            free(given);
            if (!ok) {
                muc_error(m, in, "auth", "not-authorized");   /* XEP-0045 7.2.5 */
                return;
            }
        }
        if (r->conf.members_only && aff < MUC_AFF_MEMBER) {
            muc_error(m, in, "auth", "registration-required");   /* XEP-0045 7.2.6 */
            return;
        }
        if (nick_refused(m, r, in, nick, from->bare_len))
            return;
        struct muc_occupant *held = by_nick(r, nick);
        if (held != NULL && held->bare_len == from->bare_len && memcmp(held->jid, in->from, from->bare_len) == 0) {
            join_session(m, r, held, in, st);   /* the same user, another resource */
            return;
        }
        if (held != NULL) {
            muc_error(m, in, "cancel", "conflict");
            return;
        }
        if (r->nocc >= r->conf.max_users && aff < MUC_AFF_ADMIN) {
            muc_error(m, in, "wait", "service-unavailable");
            return;
        }
    }
    if (r->nocc == r->occ_cap) {
        r->occ_cap = r->occ_cap ? r->occ_cap * 2 : 4;
        r->occ = xrealloc(r->occ, r->occ_cap * sizeof *r->occ);
    }
    struct buf inner;
    buf_init(&inner);
    children_of(st, NS_MUC, NS_MUC_USER, &inner);
    if (inner.len > MUC_PRESENCE_MAX_BYTES) {
        buf_release(&inner);
        muc_error(m, in, "modify", "not-acceptable");
        if (created)
            room_free(m, r);
        return;
    }
    struct muc_occupant *o = &r->occ[r->nocc++];
    m->noccupants++;
    memset(o, 0, sizeof *o);
    o->nick = xstrdup(nick);
    o->jid = xstrdup(in->from);
    o->bare_len = from->bare_len;
    o->role = role_for(r, aff_of(r, o->jid, o->bare_len));
    if (inner.len > 0) {
        o->pres = xstrndup(inner.data, inner.len);
        o->pres_len = inner.len;
    }
    buf_release(&inner);
    uint32_t hops = in->hops + 1;
    /* The newcomer to everyone; then to itself: everyone already there, its own presence
     * with 100 (when the room shows real JIDs to all), 110 and 201 when it made the room,
     * the history and the subject (one batch). */
    broadcast_others(m, r, o, opts_of(r, o), hops);
    unsigned self_codes[2] = {100, 201};
    bool all_see = !r->conf.semi_anonymous;
    welcome(m, r, o, o->jid, xml_child(st, "x", NS_MUC), self_codes + (all_see ? 0 : 1),
            (all_see ? 1 : 0) + (created ? 1 : 0), hops);
    metric_inc(m->m_stanzas, "join");
    char sample[128];
    log_debug("muc_join", "room=\"%s\" created=%d occupants=%zu", mk_sanitize(sample, sizeof sample, r->jid, r->jid_len),
              created, r->nocc);
}

/* XEP-0045 7.6: o becomes nick: unavailable from the old nick with 303 and the new nick,
 * then available from the new one, to everyone (o with 110). */
static void change_nick(struct router_muc *m, struct muc_room *r, struct muc_occupant *o, const Mk__Route *in,
                        const char *nick)
{
    if (by_nick(r, nick) != NULL) {
        muc_error(m, in, "cancel", "conflict");
        return;
    }
    if (nick_refused(m, r, in, nick, o->bare_len))
        return;
    uint32_t hops = in->hops + 1;
    static const unsigned code303[] = {303};
    struct pres_opts po = opts_of(r, o);
    po.type = "unavailable";
    po.codes = code303;
    po.ncodes = 1;
    po.item_nick = nick;
    broadcast_presence(m, r, o, po, code303, 1, hops);
    free(o->nick);
    o->nick = xstrdup(nick);
    broadcast_presence(m, r, o, opts_of(r, o), NULL, 0, hops);
    metric_inc(m->m_stanzas, "nick");
}

static void on_presence(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *st,
                        const struct jid_view *to, const struct jid_view *from)
{
    const char *type = in->type ? in->type : "";
    struct muc_occupant *o = r != NULL ? by_jid(r, in->from) : NULL;
    if (streq(type, "error")) {
        /* An occupant's server says it is gone: removed (333). */
        if (o != NULL && o->nmore > 0)
            session_drop(o, in->from);   /* one of its sessions: the occupant stays */
        else if (o != NULL) {
            static const unsigned code[] = {333};
            leave(m, r, o, code, 1, NULL, in->hops + 1);
        }
        return;
    }
    if (streq(type, "unavailable")) {
        if (o == NULL)
            return;
        metric_inc(m->m_stanzas, "leave");
        if (o->nmore > 0) {
            /* One of the nick's sessions leaves: it alone hears so (110), the room sees
             * the occupant stay. */
            struct pres_opts po = opts_of(r, o);
            po.type = "unavailable";
            po.role = MUC_ROLE_NONE;
            po.self = true;
            send_presence(m, r, o, in->from, &po, in->hops + 1);
            session_drop(o, in->from);
            return;
        }
        leave(m, r, o, NULL, 0, NULL, in->hops + 1);
        return;
    }
    if (*type != '\0')
        return;   /* subscriptions and probes mean nothing to a room */
    if (to->resource == NULL || *to->resource == '\0') {
        muc_error(m, in, "modify", "jid-malformed");   /* XEP-0045 7.2.1: no nickname */
        return;
    }
    const char *nick = to->resource;
    if (strlen(nick) > m->cfg->modules.muc_max_nick_bytes) {
        muc_error(m, in, "modify", "not-acceptable");
        return;
    }
    if (o != NULL) {
        if (strcmp(o->nick, nick) != 0) {
            change_nick(m, r, o, in, nick);
            return;
        }
        /* A presence change, or a join again (a client that lost track): the newcomer's
         * sequence again for the latter. */
        struct buf inner;
        buf_init(&inner);
        children_of(st, NS_MUC, NS_MUC_USER, &inner);
        if (inner.len > MUC_PRESENCE_MAX_BYTES) {
            buf_release(&inner);
            muc_error(m, in, "modify", "not-acceptable");
            return;
        }
        free(o->pres);
        o->pres = inner.len > 0 ? xstrndup(inner.data, inner.len) : NULL;
        o->pres_len = inner.len;
        buf_release(&inner);
        const struct xml_node *x = xml_child(st, "x", NS_MUC);
        uint32_t hops = in->hops + 1;
        static const unsigned code100[] = {100};
        size_t n100 = x != NULL && !r->conf.semi_anonymous ? 1 : 0;
        if (x == NULL) {
            broadcast_presence(m, r, o, opts_of(r, o), code100, n100, hops);
            return;
        }
        broadcast_others(m, r, o, opts_of(r, o), hops);
        for (size_t k = 0; k <= o->nmore; k++)
            if (strcmp(session_at(o, k), in->from) != 0) {
                struct pres_opts po = opts_of(r, o);
                po.self = true;
                po.codes = code100;
                po.ncodes = n100;
                send_presence(m, r, o, session_at(o, k), &po, hops);
            }
        welcome(m, r, o, in->from, x, code100, n100, hops);
        return;
    }
    join(m, r, in, st, nick, from);
}

/* --- messages ---------------------------------------------------------------------------- */

/* Whether the room's groupchat messages go to its archive: any room's (temporary ones
 * too, as with MongooseIM's mod_mam_muc), unless its owner turned archiving off. The
 * store takes archive rows of accounts and stored rooms only, so a room archives once its
 * row (room_keeps_row) is committed, not before: no write the store would skip, and disco
 * says urn:xmpp:mam:2 from then on. A temporary room's archive lives as long as the room:
 * it goes with the room's row. */
static bool room_archives(const struct router_muc *m, const struct muc_room *r)
{
    return m->rt->archive != NULL && !r->conf.no_archive && r->p_row;
}

/* The room's one archive write of a groupchat message: the message as occupants get it
 * (inner: its children with the room's stanza-id), from the sender's occupant JID, with
 * no to, and the sender's real bare JID in a muc#user <item/> (left out of the results
 * for an asker who may not see it: mam/query.c). */
static void room_archive_write(struct router_muc *m, struct muc_room *r, const char *nick, const char *xml,
                               size_t len, uint64_t aid);

static void archive_write(struct router_muc *m, struct muc_room *r, const struct muc_occupant *o,
                          const Mk__Route *in, const struct buf *inner, uint64_t aid)
{
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "<message");
    buf_append_str(&b, " from='");
    xml_escape(&b, r->jid, r->jid_len);
    buf_append(&b, "/", 1);
    xml_escape(&b, o->nick, strlen(o->nick));
    buf_append_str(&b, "' type='groupchat'");
    if (in->id != NULL && *in->id != '\0')
        put_attr(&b, "id", in->id);
    buf_append(&b, ">", 1);
    if (inner->len > 0)
        buf_append(&b, inner->data, inner->len);
    buf_append_str(&b, "<x xmlns='" NS_MUC_USER "'><item jid='");
    xml_escape(&b, o->jid, o->bare_len);
    buf_append_str(&b, "'/></x></message>");
    room_archive_write(m, r, o->nick, b.data, b.len, aid);
    buf_release(&b);
}

/* Sends one row of the room's archive (xml[0..len), from nick, "" for the room itself)
 * with archive id aid on the reliable channel; the room's last write is then the fence of
 * its queries. */
static void room_archive_write(struct router_muc *m, struct muc_room *r, const char *nick, const char *xml,
                               size_t len, uint64_t aid)
{
    struct rchan_tx *tx = NULL;
    uint64_t seq = 0;
    int rc = router_archive_room(m->rt->archive, r->jid, nick, aid, xml, len, &tx, &seq);
    if (rc == 1) {
        r->a_tx = tx;
        r->a_seq = seq;
        metric_inc(m->m_stanzas, "archived");
    } else if (rc == -1) {
        metric_inc(m->rt->m_dropped, "muc_archive_backpressure");
    }
}

static void groupchat(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *st)
{
    struct muc_occupant *o = r != NULL ? by_jid(r, in->from) : NULL;
    if (o == NULL) {
        muc_error(m, in, "modify", "not-acceptable");
        return;
    }
    if (o->role < MUC_ROLE_PARTICIPANT) {
        muc_error(m, in, "auth", "forbidden");
        return;
    }
    metric_inc(m->m_stanzas, "groupchat");
    struct buf inner;
    buf_init(&inner);
    children_of(st, NS_MUC_USER, NULL, &inner);
    const struct xml_node *subject = xml_child(st, "subject", XML_NS_CLIENT);
    bool has_body = xml_child(st, "body", XML_NS_CLIENT) != NULL;
    if (subject != NULL && !has_body && !r->conf.change_subject && o->role != MUC_ROLE_MODERATOR) {
        buf_release(&inner);
        muc_error(m, in, "auth", "forbidden");   /* XEP-0045 8.1 */
        return;
    }
    /* XEP-0359: the room's stanza-id, the same in every copy and in the history (what
     * XEP-0425 moderation names); the archive id when the message is archived. */
    char sid[48];
    uint64_t aid = has_body && room_archives(m, r) ? router_archive_next_id(m->rt->archive) : 0;
    if (aid != 0)
        mamid_format(aid, sid);
    else
        snprintf(sid, sizeof sid, "%llx-%llx", (unsigned long long)m->rt->node->started_us,
                 (unsigned long long)++m->next_stanza_id);
    buf_append_str(&inner, "<stanza-id xmlns='" NS_SID "'");
    put_attr(&inner, "by", r->jid);
    put_attr(&inner, "id", sid);
    buf_append_str(&inner, "/>");
    if (subject != NULL && !has_body) {
        free(r->subject);
        free(r->subject_nick);
        r->subject = xml_text(subject);
        r->subject_nick = xstrdup(o->nick);
        persist_touch(m, r);
    } else if (has_body) {
        history_add(m, r, o->nick, inner.data ? inner.data : "", inner.len, sid, mk_now_us());
    }
    if (aid != 0)
        archive_write(m, r, o, in, &inner, aid);
    char *from = xasprintf("%s/%s", r->jid, o->nick);
    /* One stanza for every occupant's every session: router_fanout sends each c2s one
     * Deliver with it and the list of its sessions (router/fanout.c). */
    size_t nto = 0;
    char **to = sessions_of(r, NULL, 0, &nto);
    int64_t t0 = mk_mono_us();
    /* A fan-out is still r->nocc copies' work (much less than an envelope each now): a
     * backlog of them takes several loop turns, not one of seconds. */
    bus_charge(m->rt->node->bus, r->nocc);
    struct muc_batch bt;
    batch_init(&bt, m, to, nto, in->hops + 1);
    struct buf *b = batch_stanza(&bt, MK__STANZA_KIND__STANZA_KIND_MESSAGE, from, "groupchat", in->id);
    buf_append_str(b, "<message");
    put_attr(b, "from", from);
    buf_append_str(b, " type='groupchat'");
    if (in->id != NULL && *in->id != '\0')
        put_attr(b, "id", in->id);
    buf_append_str(b, " to='");
    batch_to(&bt);
    buf_append_str(b, "'>");
    if (inner.len > 0)
        buf_append(b, inner.data, inner.len);
    buf_append_str(b, "</message>");
    batch_done(&bt, has_body);
    batch_end(&bt);
    free(to);
    log_debug("muc_groupchat", "copies=%zu us=%lld", nto, (long long)(mk_mono_us() - t0));
    free(from);
    buf_release(&inner);
}

static void private_message(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *st,
                            const char *nick)
{
    struct muc_occupant *o = r != NULL ? by_jid(r, in->from) : NULL;
    if (o == NULL) {
        muc_error(m, in, "modify", "not-acceptable");
        return;
    }
    struct muc_occupant *t = by_nick(r, nick);
    if (t == NULL) {
        muc_error(m, in, "cancel", "item-not-found");
        return;
    }
    metric_inc(m->m_stanzas, "private");
    char *from = xasprintf("%s/%s", r->jid, o->nick);
    struct buf *b = &m->out;
    for (size_t k = 0; k <= t->nmore; k++) {   /* to every session of the nick */
        const char *to = session_at(t, k);
        b->len = 0;
        buf_append_str(b, "<message");
        put_attr(b, "from", from);
        put_attr(b, "to", to);
        put_attr(b, "type", in->type && *in->type ? in->type : "chat");
        if (in->id != NULL && *in->id != '\0')
            put_attr(b, "id", in->id);
        buf_append(b, ">", 1);
        children_of(st, NS_MUC_USER, NULL, b);
        buf_append_str(b, "<x xmlns='" NS_MUC_USER "'/></message>");
        muc_send(m, MK__STANZA_KIND__STANZA_KIND_MESSAGE, from, to, in->type && *in->type ? in->type : "chat", in->id,
                 b->data, b->len, in->has_body, in->hops + 1);
    }
    free(from);
}

/* Conditions under which an error from an occupant's address means it is gone. */
static bool error_means_gone(const struct xml_node *st)
{
    const struct xml_node *e = xml_child(st, "error", XML_NS_CLIENT);
    if (e == NULL)
        return false;
    static const char *const gone[] = {"service-unavailable", "recipient-unavailable", "remote-server-not-found",
                                       "item-not-found", "gone"};
    for (size_t i = 0; i < MK_ARRAY_LEN(gone); i++)
        if (xml_child(e, gone[i], NS_STANZAS) != NULL)
            return true;
    return false;
}

/* <reason>text</reason> of el's <reason/> (namespace ns) appended to b, if any. */
static void put_reason(struct buf *b, const struct xml_node *el, const char *ns)
{
    const struct xml_node *rs = xml_child(el, "reason", ns);
    if (rs == NULL)
        return;
    char *t = xml_text(rs);
    buf_append_str(b, "<reason>");
    put_text(b, t);
    buf_append_str(b, "</reason>");
    free(t);
}

/* XEP-0045 7.8.2 mediated invitations (from an occupant, to each <invite to/>: at most
 * MUC_MAX_INVITES a message) and declines (from anyone, to the <decline to/>). */
static void invitations(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *x)
{
    struct muc_occupant *o = by_jid(r, in->from);
    const struct xml_node *inv = xml_child(x, "invite", NS_MUC_USER);
    if (inv != NULL && o == NULL) {
        muc_error(m, in, "modify", "not-acceptable");
        return;
    }
    enum muc_aff inviter = o != NULL ? aff_of(r, o->jid, o->bare_len) : MUC_AFF_NONE;
    if (inv != NULL && !r->conf.allow_invites && inviter < MUC_AFF_ADMIN) {
        muc_error(m, in, "auth", "forbidden");
        return;
    }
    struct buf *b = &m->out;
    size_t n = 0;
    for (const struct xml_node *c = x->first_child; c != NULL; c = c->next) {
        bool invite = streq(c->name, "invite") && streq(c->ns, NS_MUC_USER);
        bool decline = streq(c->name, "decline") && streq(c->ns, NS_MUC_USER);
        if (!invite && !decline)
            continue;
        if (invite && o == NULL)
            continue;
        char *to = xml_attr(c, "to") ? jid_normalize(xml_attr(c, "to"), false) : NULL;
        if (to == NULL || n++ >= MUC_MAX_INVITES) {
            free(to);
            muc_error(m, in, "modify", n > MUC_MAX_INVITES ? "policy-violation" : "jid-malformed");
            return;
        }
        if (invite && r->conf.members_only) {
            /* XEP-0045 7.8.2: the invitee of a members-only room becomes a member. */
            char *bare = jid_normalize(to, true);
            if (bare != NULL && aff_of(r, bare, strlen(bare)) == MUC_AFF_NONE) {
                if (aff_set(r, bare, MUC_AFF_MEMBER) == -1) {
                    free(bare);
                    free(to);
                    muc_error(m, in, "wait", "resource-constraint");
                    return;
                }
                persist_touch(m, r);
            }
            free(bare);
        }
        char *from = invite ? xstrdup(in->from) : xstrndup(in->from, strcspn(in->from, "/"));
        b->len = 0;
        buf_append_str(b, "<message");
        put_attr(b, "from", r->jid);
        put_attr(b, "to", to);
        buf_append_str(b, "><x xmlns='" NS_MUC_USER "'>");
        buf_append_str(b, invite ? "<invite" : "<decline");
        put_attr(b, "from", from);
        buf_append(b, ">", 1);
        put_reason(b, c, NS_MUC_USER);
        buf_append_str(b, invite ? "</invite></x>" : "</decline></x>");
        if (invite) {
            buf_append_str(b, "<body>");
            put_text(b, from);
            buf_append_str(b, " invites you to the room ");
            put_text(b, r->jid);
            buf_append_str(b, "</body>");
        }
        buf_append_str(b, "</message>");
        muc_send(m, MK__STANZA_KIND__STANZA_KIND_MESSAGE, r->jid, to, "", NULL, b->data, b->len, invite, in->hops + 1);
        metric_inc(m->m_stanzas, invite ? "invite" : "decline");
        free(from);
        free(to);
    }
}

static void form_field(struct buf *b, const char *var, const char *type, const char *label, const char *value);

/* The first <value/> of form's field var as a new string ("" without one), or NULL when
 * there is no such field. */
static char *form_value(const struct xml_node *form, const char *var)
{
    for (const struct xml_node *f = xml_child(form, "field", NS_XDATA); f != NULL; f = xml_next(f, "field", NS_XDATA))
        if (streq(xml_attr(f, "var"), var)) {
            const struct xml_node *v = xml_child(f, "value", NS_XDATA);
            return v != NULL ? xml_text(v) : xstrdup("");
        }
    return NULL;
}

/* XEP-0045 7.13 and 8.6: a visitor of a moderated room asks for voice (a submitted
 * muc#request form): every moderator gets the form to approve; a moderator who sends
 * it back with muc#request_allow true gives the visitor named by muc#roomnick voice. */
static void voice_request(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *form)
{
    struct muc_occupant *o = by_jid(r, in->from);
    if (o == NULL) {
        muc_error(m, in, "modify", "not-acceptable");
        return;
    }
    char *allow = form_value(form, "muc#request_allow");
    bool approve = allow != NULL && (streq(allow, "1") || streq(allow, "true"));
    bool answer = allow != NULL;
    free(allow);
    if (answer) {
        /* A moderator's answer. */
        if (o->role != MUC_ROLE_MODERATOR) {
            muc_error(m, in, "auth", "forbidden");
            return;
        }
        if (!approve)
            return;
        char *nick = form_value(form, "muc#roomnick");
        struct muc_occupant *t = nick != NULL ? by_nick(r, nick) : NULL;
        free(nick);
        if (t == NULL) {
            muc_error(m, in, "cancel", "item-not-found");
            return;
        }
        if (t->role != MUC_ROLE_VISITOR)
            return;
        t->role = MUC_ROLE_PARTICIPANT;
        broadcast_presence(m, r, t, opts_of(r, t), NULL, 0, in->hops + 1);
        metric_inc(m->m_stanzas, "voice");
        return;
    }
    if (o->role != MUC_ROLE_VISITOR)
        return;   /* has voice already */
    struct buf *b = &m->out;
    uint32_t hops = in->hops + 1;
    for (size_t i = 0; i < r->nocc; i++) {
        const struct muc_occupant *mod = &r->occ[i];
        if (mod->role != MUC_ROLE_MODERATOR)
            continue;
        b->len = 0;
        buf_append_str(b, "<message");
        put_attr(b, "from", r->jid);
        put_attr(b, "to", mod->jid);
        buf_append_str(b, "><x xmlns='" NS_XDATA "' type='form'><title>Voice request</title>");
        form_field(b, "FORM_TYPE", "hidden", NULL, NS_MUC_REQUEST);
        form_field(b, "muc#role", "list-single", "Requested role", "participant");
        form_field(b, "muc#jid", "jid-single", "User ID", o->jid);
        form_field(b, "muc#roomnick", "text-single", "Room nickname", o->nick);
        form_field(b, "muc#request_allow", "boolean", "Grant voice to this person?", "false");
        buf_append_str(b, "</x></message>");
        muc_send(m, MK__STANZA_KIND__STANZA_KIND_MESSAGE, r->jid, mod->jid, "", NULL, b->data, b->len, false, hops);
    }
    metric_inc(m->m_stanzas, "voice_request");
}

static void on_message(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *st,
                       const struct jid_view *to)
{
    const char *type = in->type ? in->type : "";
    if (streq(type, "error")) {
        struct muc_occupant *o = r != NULL ? by_jid(r, in->from) : NULL;
        if (o != NULL && error_means_gone(st)) {
            static const unsigned code[] = {333};
            leave(m, r, o, code, 1, NULL, in->hops + 1);
        }
        return;
    }
    if (to->resource != NULL) {
        if (streq(type, "groupchat"))
            muc_error(m, in, "modify", "bad-request");   /* XEP-0045 7.5: groupchat goes to the room */
        else
            private_message(m, r, in, st, to->resource);
        return;
    }
    if (streq(type, "groupchat")) {
        groupchat(m, r, in, st);
        return;
    }
    const struct xml_node *x = xml_child(st, "x", NS_MUC_USER);
    if (x != NULL && (xml_child(x, "invite", NS_MUC_USER) != NULL || xml_child(x, "decline", NS_MUC_USER) != NULL)) {
        if (r == NULL)
            muc_error(m, in, "cancel", "item-not-found");
        else
            invitations(m, r, in, x);
        return;
    }
    const struct xml_node *form = xml_child(st, "x", NS_XDATA);
    char *form_type = form != NULL && streq(xml_attr(form, "type"), "submit") ? form_value(form, "FORM_TYPE") : NULL;
    bool request = r != NULL && streq(form_type, NS_MUC_REQUEST);
    free(form_type);
    if (request) {
        voice_request(m, r, in, form);
        return;
    }
    /* Registration and the like: not served yet. */
    muc_error(m, in, "cancel", r == NULL ? "item-not-found" : "feature-not-implemented");
}

/* --- IQs --------------------------------------------------------------------------------- */

static void room_disco_info(struct router_muc *m, struct muc_room *r, const Mk__Route *in)
{
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "<query xmlns='" NS_DISCO_INFO "'><identity category='conference' type='text'");
    const char *at = strchr(r->jid, '@');
    char *name = r->conf.name ? xstrdup(r->conf.name) : xstrndup(r->jid, at ? (size_t)(at - r->jid) : r->jid_len);
    put_attr(&b, "name", name);
    free(name);
    buf_append_str(&b, "/>");
    const char *const features[] = {
        NS_DISCO_INFO,
        NS_MUC,
        r->conf.public_room ? "muc_public" : "muc_hidden",
        r->conf.members_only ? "muc_membersonly" : "muc_open",
        r->conf.moderated ? "muc_moderated" : "muc_unmoderated",
        r->conf.semi_anonymous ? "muc_semianonymous" : "muc_nonanonymous",
        r->conf.persistent ? "muc_persistent" : "muc_temporary",
        r->conf.password ? "muc_passwordprotected" : "muc_unsecured",
        "http://jabber.org/protocol/muc#self-ping-optimization",
        NS_SID,
        NS_MODERATE,
        NS_REGISTER,
    };
    for (size_t i = 0; i < MK_ARRAY_LEN(features); i++) {
        buf_append_str(&b, "<feature");
        put_attr(&b, "var", features[i]);
        buf_append_str(&b, "/>");
    }
    if (room_archives(m, r))
        buf_append_str(&b, "<feature var='" NS_MAM_2 "'/><feature var='" NS_MAM_2 "#extended'/>");
    buf_printf(&b,
               "<x xmlns='" NS_XDATA "' type='result'><field var='FORM_TYPE' type='hidden'>"
               "<value>http://jabber.org/protocol/muc#roominfo</value></field>"
               "<field var='muc#roominfo_occupants'><value>%zu</value></field>",
               r->nocc);
    if (r->conf.desc != NULL) {
        buf_append_str(&b, "<field var='muc#roominfo_description'><value>");
        put_text(&b, r->conf.desc);
        buf_append_str(&b, "</value></field>");
    }
    buf_append_str(&b, "</x></query>");
    muc_iq_result(m, in, b.data, b.len);
    buf_release(&b);
}

static void put_item(struct buf *out, const char *jid, const char *name)
{
    buf_append_str(out, "<item");
    put_attr(out, "jid", jid);
    const char *at = strchr(jid, '@');
    char *n = name != NULL ? xstrdup(name) : xstrndup(jid, at != NULL ? (size_t)(at - jid) : strlen(jid));
    put_attr(out, "name", n);
    free(n);
    buf_append_str(out, "/>");
}

/* --- the service's room list (disco#items, XEP-0059 paging) ---------------------------------
 * Rooms are listed in the byte order of their JIDs. Each router shard answers for its
 * own public rooms (in memory, and stored ones not in memory): the part of a page it
 * could hold - its first `want` rooms after a key, or its last `want` before one - with
 * how many rooms it has and how many lie before the page. The shard that got the user's
 * request asks the others (an internal disco#items with the same <set/>), merges what
 * they answer and sends the page with <set/> first (and its index), last and count. An
 * index is served as the first index+max rooms, of which the page is the tail. Without
 * <set/> the answer is the first MUC_LIST_PAGE rooms; a <set/> with the count comes with
 * it when there are more. */

static void part_add(struct muc_list_part *p, const char *jid, const char *name)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        p->jids = xrealloc(p->jids, p->cap * sizeof *p->jids);
        p->names = xrealloc(p->names, p->cap * sizeof *p->names);
    }
    p->jids[p->n] = xstrdup(jid);
    p->names[p->n++] = name != NULL ? xstrdup(name) : NULL;
}

static void part_release(struct muc_list_part *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->jids[i]);
        free(p->names[i]);
    }
    free(p->jids);
    free(p->names);
    memset(p, 0, sizeof *p);
}

struct list_entry {
    const char *jid;
    const char *name;
};

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct list_entry *)a)->jid, ((const struct list_entry *)b)->jid);
}

/* Of n entries sorted by JID, the part ask wants (appended to out, its count and skipped
 * set). */
static void page_of(const struct list_entry *e, size_t n, const struct muc_list_ask *ask, struct muc_list_part *out)
{
    size_t lo;   /* the entries before key (before), or at or before it (after) */
    if (*ask->key == '\0') {
        lo = ask->mode == MUC_LIST_AFTER ? 0 : n;
    } else {
        size_t a = 0, b = n;
        while (a < b) {   /* the first entry past key (after), or at or past it (before) */
            size_t mid = a + (b - a) / 2;
            int c = strcmp(e[mid].jid, ask->key);
            if (c < 0 || (c == 0 && ask->mode == MUC_LIST_AFTER))
                a = mid + 1;
            else
                b = mid;
        }
        lo = a;
    }
    size_t from, to;
    if (ask->mode == MUC_LIST_AFTER) {
        from = lo;
        to = n - lo > ask->want ? lo + ask->want : n;
    } else {
        to = lo;
        from = lo > ask->want ? lo - ask->want : 0;
    }
    out->count += n;
    out->skipped += ask->mode == MUC_LIST_AFTER ? from : to;
    for (size_t i = from; i < to; i++)
        part_add(out, e[i].jid, e[i].name);
}

/* This shard's public rooms of service, for ask, into out: those in memory, then the
 * stored ones (rows of res, a STORE_MUC_ROOM_LIST answer, may be NULL) that this shard
 * owns and that are not in memory (memory is newer than the row). */
static void public_rooms(const struct router_muc *m, const char *service, const struct store_result *res,
                         const struct muc_list_ask *ask, struct muc_list_part *out)
{
    size_t n = 0, cap = 64;
    struct list_entry *e = xmalloc(cap * sizeof *e);
    for (size_t i = 0; i < m->nbuckets; i++)
        for (const struct muc_room *r = m->buckets[i]; r != NULL; r = r->hnext) {
            const char *at = strchr(r->jid, '@');
            if (!r->conf.public_room || at == NULL || strcmp(at + 1, service) != 0)
                continue;
            if (n == cap)
                e = xrealloc(e, (cap *= 2) * sizeof *e);
            e[n++] = (struct list_entry){r->jid, r->conf.name};
        }
    for (size_t i = 0; res != NULL && res->ok == 0 && res->ncols == 2 && i < res->nrows; i++) {
        const char *jid = res->vals[i * 2], *name = res->vals[i * 2 + 1];
        size_t len = jid != NULL ? strlen(jid) : 0;
        if (len == 0 || room_find(m, jid, len) != NULL || tomb_find(m, jid, len) != NULL ||
            cfg_shard(m->cfg, CFG_ROLE_ROUTER, jid) != m->rt->node->self)
            continue;
        if (n == cap)
            e = xrealloc(e, (cap *= 2) * sizeof *e);
        e[n++] = (struct list_entry){jid, name};
    }
    qsort(e, n, sizeof *e, cmp_entry);
    page_of(e, n, ask, out);
    free(e);
}

/* A store query for the stored public rooms of service, its answer given to done with ctx. */
struct muc_list_query {
    struct router_muc *m;
    uint64_t listing;              /* our own listing's number, or 0 */
    char *service;
    struct muc_list_ask ask;
    char *asker;                   /* another shard's request: its from */
    char *proc;                    /* and that router's id */
    uint32_t hops;
};

static void list_query_free(struct muc_list_query *q)
{
    free(q->service);
    free(q->ask.key);
    free(q->asker);
    free(q->proc);
    free(q);
}

static void on_list_rows(void *ud, const struct store_result *res);

static void list_query(struct router_muc *m, struct muc_list_query *q)
{
    char limit[24];
    snprintf(limit, sizeof limit, "%u", MUC_LIST_SCAN);
    const char *params[] = {q->service, limit};
    store_query(m->store, STORE_MUC_ROOM_LIST, params, 2, on_list_rows, q);
}

static void listing_release(struct router_muc *m, struct muc_listing *l)
{
    ev_timer_stop(m->rt->node->loop, &l->timer);
    part_release(&l->got);
    free(l->ask.key);
    free(l->asker);
    free(l->service);
    free(l->iq_id);
    free(l);
}

static void listing_finish(struct router_muc *m, struct muc_listing *l)
{
    for (struct muc_listing **pp = &m->listings; *pp != NULL; pp = &(*pp)->next)
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    /* The shards' parts merged: the page is their first max past the key (or past the
     * index), or their last max before it. */
    struct muc_list_part *g = &l->got;
    struct list_entry *e = xmalloc((g->n ? g->n : 1) * sizeof *e);
    for (size_t i = 0; i < g->n; i++)
        e[i] = (struct list_entry){g->jids[i], g->names[i]};
    qsort(e, g->n, sizeof *e, cmp_entry);
    size_t from, to;
    if (l->ask.mode == MUC_LIST_AFTER) {
        from = l->index < g->n ? l->index : g->n;
        to = g->n - from > l->max ? from + l->max : g->n;
    } else {
        to = g->n;
        from = to > l->max ? to - l->max : 0;
    }
    size_t first_index = l->ask.mode == MUC_LIST_AFTER ? g->skipped + from : g->skipped - (to - from);
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "<iq");
    put_attr(&b, "from", l->service);
    put_attr(&b, "to", l->asker);
    buf_append_str(&b, " type='result'");
    put_attr(&b, "id", l->iq_id);
    buf_append_str(&b, "><query xmlns='" NS_DISCO_ITEMS "'>");
    for (size_t i = from; i < to; i++)
        put_item(&b, e[i].jid, e[i].name);
    if (l->rsm || to - from < g->count) {
        buf_append_str(&b, "<set xmlns='" NS_RSM "'>");
        if (to > from) {
            buf_printf(&b, "<first index='%zu'>", first_index);
            put_text(&b, e[from].jid);
            buf_append_str(&b, "</first><last>");
            put_text(&b, e[to - 1].jid);
            buf_append_str(&b, "</last>");
        }
        buf_printf(&b, "<count>%zu</count></set>", g->count);
    }
    buf_append_str(&b, "</query></iq>");
    muc_send(m, MK__STANZA_KIND__STANZA_KIND_IQ, l->service, l->asker, "result", l->iq_id, b.data, b.len, false,
             l->hops);
    buf_release(&b);
    free(e);
    listing_release(m, l);
}

static void on_listing_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct muc_listing *l = w->data;
    log_warn("muc_listing_partial", "shards_missing=%u", l->waiting);
    listing_finish(l->m, l);
}

/* The <set xmlns=NS_RSM/> of a disco#items query q (may be absent) as what to ask every
 * shard: *max the page size (at most max_cap), *index the rooms to skip (index paging).
 * Returns 0, or -1 when it does not parse (bad-request); ask->key is set either way. */
static int list_rsm(const struct xml_node *q, size_t max_cap, struct muc_list_ask *ask, size_t *max, size_t *index,
                    bool *rsm)
{
    const struct xml_node *set = q != NULL ? xml_child(q, "set", NS_RSM) : NULL;
    ask->mode = MUC_LIST_AFTER;
    ask->key = NULL;
    *max = MUC_LIST_PAGE;
    *index = 0;
    *rsm = set != NULL;
    if (set == NULL) {
        ask->key = xstrdup("");
        ask->want = *max;
        return 0;
    }
    const struct xml_node *mx = xml_child(set, "max", NS_RSM), *after = xml_child(set, "after", NS_RSM),
                          *before = xml_child(set, "before", NS_RSM), *ix = xml_child(set, "index", NS_RSM);
    unsigned long long v;
    if (mx != NULL) {
        char *t = xml_text(mx);
        bool ok = parse_uint(t, &v);
        free(t);
        if (!ok)
            return -1;
        *max = v > max_cap ? max_cap : (size_t)v;
    }
    if (after != NULL && before != NULL)
        return -1;
    if (ix != NULL && after == NULL && before == NULL) {
        char *t = xml_text(ix);
        bool ok = parse_uint(t, &v);
        free(t);
        if (!ok)
            return -1;
        *index = v > MUC_LIST_SCAN ? MUC_LIST_SCAN : (size_t)v;
    }
    ask->mode = before != NULL ? MUC_LIST_BEFORE : MUC_LIST_AFTER;
    ask->key = before != NULL ? xml_text(before) : after != NULL ? xml_text(after) : xstrdup("");
    if (after != NULL && *ask->key == '\0') {
        free(ask->key);   /* an empty <after/> names no room */
        ask->key = NULL;
        return -1;
    }
    ask->want = *index + *max;
    return 0;
}

/* The internal request of one shard's part of ask. */
static void list_ask_xml(const struct muc_list_ask *ask, struct buf *out)
{
    buf_printf(out, "<iq type='get'><query xmlns='" NS_DISCO_ITEMS "'><set xmlns='" NS_RSM "'><max>%zu</max>",
               ask->want);
    if (ask->mode == MUC_LIST_BEFORE) {
        buf_append_str(out, "<before>");
        put_text(out, ask->key);
        buf_append_str(out, "</before>");
    } else if (*ask->key != '\0') {
        buf_append_str(out, "<after>");
        put_text(out, ask->key);
        buf_append_str(out, "</after>");
    }
    buf_append_str(out, "</set></query></iq>");
}

/* A user's disco#items of the service: asks every other router shard for its part of the
 * page (an IQ from <service>/MUC_LIST_PREFIX<this shard>-<n>, sent to that shard). */
static void list_rooms(struct router_muc *m, const Mk__Route *in, const struct xml_node *query,
                       const struct jid_view *to)
{
    size_t nl = 0;
    for (struct muc_listing *l = m->listings; l != NULL; l = l->next)
        nl++;
    if (nl >= MUC_MAX_LISTINGS) {
        muc_error(m, in, "wait", "resource-constraint");
        return;
    }
    struct muc_list_ask ask;
    size_t max, index;
    bool rsm;
    if (list_rsm(query, MUC_LIST_MAX, &ask, &max, &index, &rsm) == -1) {
        free(ask.key);
        muc_error(m, in, "modify", "bad-request");
        return;
    }
    struct muc_listing *l = xcalloc(1, sizeof *l);
    l->m = m;
    l->n = ++m->next_listing;
    l->asker = xstrdup(in->from);
    l->service = xstrndup(in->to, to->bare_len);
    l->iq_id = xstrdup(in->id ? in->id : "");
    l->hops = in->hops + 1;
    l->ask = ask;
    l->max = max;
    l->index = index;
    l->rsm = rsm;
    /* This shard's own rooms come with the store's answer (stored rooms not in memory). */
    struct muc_list_query *own = xcalloc(1, sizeof *own);
    own->m = m;
    own->listing = l->n;
    own->service = xstrdup(l->service);
    own->ask = ask;
    own->ask.key = xstrdup(ask.key);
    l->waiting = 1;
    list_query(m, own);
    const struct cfg_proc *procs[256];
    size_t np = cfg_procs_of_role(m->cfg, CFG_ROLE_ROUTER, procs, MK_ARRAY_LEN(procs));
    const char *self = m->rt->node->self->id;
    char *from = xasprintf("%s/" MUC_LIST_PREFIX "%s-%llu", l->service, self, (unsigned long long)l->n);
    struct buf q;
    buf_init(&q);
    list_ask_xml(&ask, &q);
    for (size_t i = 0; i < np; i++) {
        if (procs[i] == m->rt->node->self)
            continue;
        Mk__Route r = MK__ROUTE__INIT;
        r.kind = MK__STANZA_KIND__STANZA_KIND_IQ;
        r.from = from;
        r.to = l->service;
        r.type = (char *)"get";
        r.id = (char *)"";
        r.xml.data = (uint8_t *)q.data;
        r.xml.len = q.len;
        r.hops = l->hops;
        Mk__Envelope e = MK__ENVELOPE__INIT;
        e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
        e.route = &r;
        if (node_send(m->rt->node, procs[i]->id, &e) == 0)
            l->waiting++;
    }
    buf_release(&q);
    free(from);
    l->next = m->listings;
    m->listings = l;
    ev_timer_init(&l->timer, on_listing_timeout, MUC_LIST_TIMEOUT, 0.);
    l->timer.data = l;
    ev_timer_start(m->rt->node->loop, &l->timer);
}

static bool attr_size(const struct xml_node *n, const char *name, size_t *out)
{
    unsigned long long v;
    if (!parse_uint(xml_attr(n, name), &v) || v > (1ULL << 40))
        return false;
    *out = (size_t)v;
    return true;
}

/* The internal room-list request of another shard (from <service>/MUC_LIST_PREFIX<router>-<n>)
 * or the answer to ours. True when in was one of those. */
static bool listing_internal(struct router_muc *m, const Mk__Route *in, const struct jid_view *to,
                             const struct jid_view *from)
{
    static const size_t plen = sizeof MUC_LIST_PREFIX - 1;
    bool ask = from->resource != NULL && !from->has_local && strncmp(from->resource, MUC_LIST_PREFIX, plen) == 0 &&
               host_of(m, in->from, from) >= 0 && !to->has_local && to->resource == NULL;
    bool answer = to->resource != NULL && !to->has_local && strncmp(to->resource, MUC_LIST_PREFIX, plen) == 0 &&
                  !from->has_local && from->resource == NULL && host_of(m, in->from, from) >= 0;
    if (!ask && !answer)
        return false;
    const char *tail = (ask ? from->resource : to->resource) + plen;
    const char *dash = strrchr(tail, '-');
    if (dash == NULL)
        return true;
    char proc[64];
    size_t idlen = (size_t)(dash - tail);
    if (idlen >= sizeof proc)
        return true;
    memcpy(proc, tail, idlen);
    proc[idlen] = '\0';
    unsigned long long n;
    if (!parse_uint(dash + 1, &n))
        return true;
    char err[128];
    if (ask) {
        const struct cfg_proc *p = cfg_find_proc(m->cfg, proc);
        if (p == NULL || p->role != CFG_ROLE_ROUTER || !streq(in->type, "get"))
            return true;
        struct xml_node *st = xml_parse_stanza((const char *)in->xml.data, in->xml.len, err, sizeof err);
        struct muc_list_ask la;
        size_t max, index;
        bool rsm;
        int rc = list_rsm(st != NULL ? xml_child(st, "query", NS_DISCO_ITEMS) : NULL, MUC_LIST_SCAN + MUC_LIST_MAX,
                          &la, &max, &index, &rsm);
        xml_free(&st);
        if (rc == -1) {
            free(la.key);
            return true;
        }
        la.want = max;   /* the asking shard says how many it needs of each */
        struct muc_list_query *q = xcalloc(1, sizeof *q);
        q->m = m;
        q->service = xstrndup(in->to, to->bare_len);
        q->ask = la;
        q->asker = xstrdup(in->from);
        q->proc = xstrdup(p->id);
        q->hops = in->hops + 1;
        list_query(m, q);
        return true;
    }
    if (strcmp(proc, m->rt->node->self->id) != 0 || !streq(in->type, "result"))
        return true;
    struct muc_listing *l = m->listings;
    while (l != NULL && l->n != n)
        l = l->next;
    if (l == NULL)
        return true;   /* answered already (timeout) */
    struct xml_node *st = xml_parse_stanza((const char *)in->xml.data, in->xml.len, err, sizeof err);
    const struct xml_node *q = st != NULL ? xml_child(st, "query", NS_DISCO_ITEMS) : NULL;
    size_t count = 0, skipped = 0, nitems = 0;
    if (q != NULL && attr_size(q, "count", &count) && attr_size(q, "skipped", &skipped)) {
        l->got.count += count;
        l->got.skipped += skipped;
        for (const struct xml_node *it = xml_child(q, "item", NS_DISCO_ITEMS); it != NULL && nitems < l->ask.want;
             it = xml_next(it, "item", NS_DISCO_ITEMS)) {
            const char *jid = xml_attr(it, "jid");
            if (jid == NULL)
                continue;
            part_add(&l->got, jid, xml_attr(it, "name"));
            nitems++;
        }
    }
    xml_free(&st);
    if (--l->waiting == 0)
        listing_finish(m, l);
    return true;
}

static void on_list_rows(void *ud, const struct store_result *res)
{
    struct muc_list_query *q = ud;
    struct router_muc *m = q->m;
    if (res->ok != 0 && !m->closing) {
        metric_inc(m->m_store, "list_failed");
        log_warn("muc_list_failed", "error=\"%s\"", res->error ? res->error : "");   /* rooms in memory only */
    }
    if (m->closing) {
        list_query_free(q);
        return;
    }
    if (q->listing != 0) {
        struct muc_listing *l = m->listings;
        while (l != NULL && l->n != q->listing)
            l = l->next;
        if (l != NULL) {
            public_rooms(m, l->service, res, &q->ask, &l->got);
            if (--l->waiting == 0)
                listing_finish(m, l);
        }
        list_query_free(q);
        return;
    }
    /* Another shard's request: this shard's part, to it. */
    struct muc_list_part part;
    memset(&part, 0, sizeof part);
    public_rooms(m, q->service, res, &q->ask, &part);
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "<iq type='result'><query xmlns='" NS_DISCO_ITEMS "' count='%zu' skipped='%zu'>", part.count,
               part.skipped);
    for (size_t i = 0; i < part.n; i++) {
        buf_append_str(&b, "<item");
        put_attr(&b, "jid", part.jids[i]);
        if (part.names[i] != NULL)
            put_attr(&b, "name", part.names[i]);
        buf_append_str(&b, "/>");
    }
    buf_append_str(&b, "</query></iq>");
    part_release(&part);
    Mk__Route r = MK__ROUTE__INIT;
    r.kind = MK__STANZA_KIND__STANZA_KIND_IQ;
    r.from = q->service;
    r.to = q->asker;
    r.type = (char *)"result";
    r.id = (char *)"";
    r.xml.data = (uint8_t *)b.data;
    r.xml.len = b.len;
    r.hops = q->hops;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
    e.route = &r;
    if (node_send(m->rt->node, q->proc, &e) == -1)
        metric_inc(m->rt->m_dropped, "muc_router_unreachable");
    buf_release(&b);
    list_query_free(q);
}

static void service_iq(struct router_muc *m, const Mk__Route *in, const struct xml_node *st, const struct jid_view *to)
{
    const char *type = in->type ? in->type : "";
    if (!streq(type, "get") && !streq(type, "set"))
        return;
    const struct xml_node *q = xml_first_elem(st);
    if (streq(type, "get") && q != NULL && streq(q->name, "query") && streq(q->ns, NS_DISCO_INFO) &&
        xml_attr(q, "node") == NULL) {
        static const char info[] = "<query xmlns='" NS_DISCO_INFO "'>"
                                   "<identity category='conference' type='text' name='Chatrooms'/>"
                                   "<feature var='" NS_DISCO_INFO "'/><feature var='" NS_DISCO_ITEMS "'/>"
                                   "<feature var='" NS_MUC "'/><feature var='" NS_RSM "'/></query>";
        muc_iq_result(m, in, info, sizeof info - 1);
        return;
    }
    if (streq(type, "get") && q != NULL && streq(q->name, "ping") && streq(q->ns, NS_PING)) {
        muc_iq_result(m, in, NULL, 0);
        return;
    }
    if (streq(type, "get") && q != NULL && streq(q->name, "query") && streq(q->ns, NS_DISCO_ITEMS) &&
        xml_attr(q, "node") == NULL && to->resource == NULL) {
        list_rooms(m, in, q, to);
        return;
    }
    muc_error(m, in, "cancel", "service-unavailable");
}

/* The <reason/> of an admin item, as <reason>text</reason> with an <actor nick/> before. */
static char *actor_reason(const struct muc_occupant *actor, const struct xml_node *item)
{
    struct buf b;
    buf_init(&b);
    if (actor != NULL) {
        buf_append_str(&b, "<actor");
        put_attr(&b, "nick", actor->nick);
        buf_append_str(&b, "/>");
    }
    const struct xml_node *rs = xml_child(item, "reason", NS_MUC_ADMIN);
    if (rs != NULL) {
        char *t = xml_text(rs);
        buf_append_str(&b, "<reason>");
        put_text(&b, t);
        buf_append_str(&b, "</reason>");
        free(t);
    }
    buf_append(&b, "", 1);
    char *s = xstrdup(b.data);
    buf_release(&b);
    return s;
}

static int aff_parse(const char *s, enum muc_aff *out)
{
    for (size_t i = 0; i < MK_ARRAY_LEN(muc_aff_names); i++)
        if (streq(s, muc_aff_names[i])) {
            *out = (enum muc_aff)i;
            return 0;
        }
    return -1;
}

/* A role other than none (XEP-0045 8.3-8.6, 9.6-9.7): voice (participant) and its
 * revocation (visitor) by a moderator, moderator grants and revocations by an admin or
 * owner; an admin's or owner's role does not change. Returns false (never frees). */
static bool set_role(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *item,
                     struct muc_occupant *actor, enum muc_aff actor_aff, const char *role)
{
    enum muc_role want;
    if (streq(role, "visitor"))
        want = MUC_ROLE_VISITOR;
    else if (streq(role, "participant"))
        want = MUC_ROLE_PARTICIPANT;
    else if (streq(role, "moderator"))
        want = MUC_ROLE_MODERATOR;
    else {
        muc_error(m, in, "modify", "bad-request");
        return false;
    }
    if (actor == NULL || actor->role != MUC_ROLE_MODERATOR ||
        ((want == MUC_ROLE_MODERATOR) && actor_aff < MUC_AFF_ADMIN)) {
        muc_error(m, in, "auth", "forbidden");
        return false;
    }
    const char *nick = xml_attr(item, "nick");
    struct muc_occupant *t = nick ? by_nick(r, nick) : NULL;
    if (t == NULL) {
        muc_error(m, in, "cancel", "item-not-found");
        return false;
    }
    if (aff_of(r, t->jid, t->bare_len) >= MUC_AFF_ADMIN ||
        (t->role == MUC_ROLE_MODERATOR && actor_aff < MUC_AFF_ADMIN)) {
        muc_error(m, in, "cancel", "not-allowed");
        return false;
    }
    muc_iq_result(m, in, NULL, 0);
    t->role = want;
    char *ar = actor_reason(actor, item);
    struct pres_opts po = opts_of(r, t);
    po.item_inner = *ar ? ar : NULL;
    broadcast_presence(m, r, t, po, NULL, 0, in->hops + 1);
    free(ar);
    metric_inc(m->m_stanzas, "role");
    return false;
}

/* muc#admin get: the JIDs of one affiliation (to an admin or owner) or the occupants of
 * one role (to a moderator) - XEP-0045 9.5, 9.8, 10.5, 10.8 and 8.5, 9.7. */
static void admin_get(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *q)
{
    const struct xml_node *item = xml_child(q, "item", NS_MUC_ADMIN);
    const char *affs = item ? xml_attr(item, "affiliation") : NULL;
    const char *role = item ? xml_attr(item, "role") : NULL;
    struct jid_view fv;
    router_jid_split(in->from, &fv);
    enum muc_aff actor_aff = aff_of(r, in->from, fv.bare_len);
    struct muc_occupant *actor = by_jid(r, in->from);
    enum muc_aff aff;
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "<query xmlns='" NS_MUC_ADMIN "'>");
    if (affs != NULL && role == NULL && aff_parse(affs, &aff) == 0 && aff != MUC_AFF_NONE) {
        if (actor_aff < MUC_AFF_ADMIN) {
            buf_release(&b);
            muc_error(m, in, "auth", "forbidden");
            return;
        }
        for (size_t i = 0; i < r->naffs; i++)
            if (r->affs[i].aff == aff) {
                buf_append_str(&b, "<item");
                put_attr(&b, "affiliation", affs);
                put_attr(&b, "jid", r->affs[i].bare);
                if (r->affs[i].nick != NULL)
                    put_attr(&b, "nick", r->affs[i].nick);
                buf_append_str(&b, "/>");
            }
    } else if (role != NULL && affs == NULL &&
               (streq(role, "moderator") || streq(role, "participant") || streq(role, "visitor"))) {
        if (actor == NULL || actor->role != MUC_ROLE_MODERATOR) {
            buf_release(&b);
            muc_error(m, in, "auth", "forbidden");
            return;
        }
        for (size_t i = 0; i < r->nocc; i++) {
            const struct muc_occupant *o = &r->occ[i];
            if (!streq(role_names[o->role], role))
                continue;
            buf_append_str(&b, "<item");
            put_attr(&b, "role", role);
            put_attr(&b, "nick", o->nick);
            put_attr(&b, "jid", o->jid);
            put_attr(&b, "affiliation", muc_aff_names[aff_of(r, o->jid, o->bare_len)]);
            buf_append_str(&b, "/>");
        }
    } else {
        buf_release(&b);
        muc_error(m, in, "modify", "bad-request");
        return;
    }
    buf_append_str(&b, "</query>");
    muc_iq_result(m, in, b.data, b.len);
    buf_release(&b);
}

/* bare's affiliation became aff: its occupants are told, with their new role (an outcast
 * leaves with 301, a user no longer a member of a members-only room with 321). item_inner
 * as in pres_opts. Returns true when the room was freed. */
static bool affiliation_applied(struct router_muc *m, struct muc_room *r, const char *bare, enum muc_aff aff,
                                const char *item_inner, uint32_t hops)
{
    size_t blen = strlen(bare);
    for (size_t i = 0; i < r->nocc;) {
        struct muc_occupant *t = &r->occ[i];
        if (t->bare_len != blen || memcmp(t->jid, bare, blen) != 0) {
            i++;
            continue;
        }
        if (aff == MUC_AFF_OUTCAST || (r->conf.members_only && aff < MUC_AFF_MEMBER)) {
            static const unsigned code301[] = {301}, code321[] = {321};
            size_t before = m->nrooms;
            leave(m, r, t, aff == MUC_AFF_OUTCAST ? code301 : code321, 1, *item_inner ? item_inner : NULL, hops);
            if (m->nrooms < before)
                return true;
            continue;   /* t's slot now holds the next occupant */
        }
        t->role = role_for(r, aff);
        broadcast_presence(m, r, t, opts_of(r, t), NULL, 0, hops);
        i++;
    }
    return false;
}

/* muc#admin set: one item, kick (role none, by a moderator) or an affiliation change
 * (outcast by an admin or owner; member/none by an admin or owner; admin/owner by an
 * owner). Returns true when the room was freed. */
static bool admin_set(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *q)
{
    struct muc_occupant *actor = by_jid(r, in->from);
    struct jid_view fv;
    router_jid_split(in->from, &fv);
    enum muc_aff actor_aff = aff_of(r, in->from, fv.bare_len);
    const struct xml_node *item = xml_child(q, "item", NS_MUC_ADMIN);
    if (item == NULL || xml_next(item, "item", NS_MUC_ADMIN) != NULL) {
        muc_error(m, in, "modify", "bad-request");
        return false;
    }
    const char *role = xml_attr(item, "role");
    const char *affs = xml_attr(item, "affiliation");
    uint32_t hops = in->hops + 1;
    if (role != NULL && affs == NULL && !streq(role, "none"))
        return set_role(m, r, in, item, actor, actor_aff, role);
    if (role != NULL && affs == NULL) {
        if (actor == NULL || actor->role != MUC_ROLE_MODERATOR) {
            muc_error(m, in, "auth", "forbidden");
            return false;
        }
        const char *nick = xml_attr(item, "nick");
        struct muc_occupant *t = nick ? by_nick(r, nick) : NULL;
        if (t == NULL) {
            muc_error(m, in, "cancel", "item-not-found");
            return false;
        }
        if (aff_of(r, t->jid, t->bare_len) >= MUC_AFF_ADMIN) {
            muc_error(m, in, "cancel", "not-allowed");   /* an admin or owner cannot be kicked */
            return false;
        }
        char *ar = actor_reason(actor, item);
        muc_iq_result(m, in, NULL, 0);
        static const unsigned code[] = {307};
        size_t before = m->nrooms;
        leave(m, r, t, code, 1, ar, hops);
        free(ar);
        return m->nrooms < before;
    }
    enum muc_aff aff;
    const char *jid = xml_attr(item, "jid");
    if (affs == NULL || role != NULL || aff_parse(affs, &aff) == -1 || jid == NULL) {
        muc_error(m, in, "modify", "bad-request");
        return false;
    }
    char *bare = jid_normalize(jid, true);
    if (bare == NULL) {
        muc_error(m, in, "modify", "jid-malformed");
        return false;
    }
    enum muc_aff cur = aff_of(r, bare, strlen(bare));
    bool allowed = actor_aff == MUC_AFF_OWNER ||
                   (actor_aff == MUC_AFF_ADMIN && aff <= MUC_AFF_MEMBER && cur <= MUC_AFF_MEMBER);
    if (!allowed) {
        free(bare);
        muc_error(m, in, actor_aff >= MUC_AFF_ADMIN ? "cancel" : "auth",
                  actor_aff >= MUC_AFF_ADMIN ? "not-allowed" : "forbidden");
        return false;
    }
    if (cur == MUC_AFF_OWNER && aff != MUC_AFF_OWNER) {
        size_t owners = 0;
        for (size_t i = 0; i < r->naffs; i++)
            owners += r->affs[i].aff == MUC_AFF_OWNER;
        if (owners <= 1) {
            free(bare);
            muc_error(m, in, "cancel", "conflict");   /* XEP-0045 10.6: the last owner stays */
            return false;
        }
    }
    if (aff_set(r, bare, aff) == -1) {
        free(bare);
        muc_error(m, in, "wait", "resource-constraint");
        return false;
    }
    persist_touch(m, r);
    muc_iq_result(m, in, NULL, 0);
    char *ar = actor_reason(actor, item);
    bool freed = affiliation_applied(m, r, bare, aff, ar, hops);
    free(ar);
    free(bare);
    return freed;
}

static void form_field(struct buf *b, const char *var, const char *type, const char *label, const char *value)
{
    buf_append_str(b, "<field");
    put_attr(b, "var", var);
    put_attr(b, "type", type);
    if (label != NULL)
        put_attr(b, "label", label);
    buf_append(b, ">", 1);
    if (value != NULL) {
        buf_append_str(b, "<value>");
        put_text(b, value);
        buf_append_str(b, "</value>");
    }
    if (streq(var, "muc#roomconfig_whois"))
        buf_append_str(b, "<option label='Anyone'><value>anyone</value></option>"
                          "<option label='Moderators only'><value>moderators</value></option>");
    buf_append_str(b, "</field>");
}

/* muc#owner get: the configuration form with the room's values (XEP-0045 10.2). */
static void owner_get(struct router_muc *m, struct muc_room *r, const Mk__Route *in)
{
    struct jid_view fv;
    router_jid_split(in->from, &fv);
    if (aff_of(r, in->from, fv.bare_len) != MUC_AFF_OWNER) {
        muc_error(m, in, "auth", "forbidden");
        return;
    }
    const struct muc_config *c = &r->conf;
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "<query xmlns='" NS_MUC_OWNER "'><x xmlns='" NS_XDATA "' type='form'>"
                       "<title>Room configuration</title>");
    char num[32];
    snprintf(num, sizeof num, "%u", c->max_users);
    form_field(&b, "FORM_TYPE", "hidden", NULL, "http://jabber.org/protocol/muc#roomconfig");
    form_field(&b, "muc#roomconfig_roomname", "text-single", "Room name", c->name ? c->name : "");
    form_field(&b, "muc#roomconfig_roomdesc", "text-single", "Description", c->desc ? c->desc : "");
    form_field(&b, "muc#roomconfig_changesubject", "boolean", "Occupants may change the subject",
               c->change_subject ? "1" : "0");
    form_field(&b, "muc#roomconfig_publicroom", "boolean", "Public room", c->public_room ? "1" : "0");
    form_field(&b, "muc#roomconfig_persistentroom", "boolean", "Persistent room", c->persistent ? "1" : "0");
    form_field(&b, "muc#roomconfig_moderatedroom", "boolean", "Moderated room", c->moderated ? "1" : "0");
    form_field(&b, "muc#roomconfig_membersonly", "boolean", "Members-only room", c->members_only ? "1" : "0");
    form_field(&b, "muc#roomconfig_allowinvites", "boolean", "Occupants may invite", c->allow_invites ? "1" : "0");
    form_field(&b, "muc#roomconfig_passwordprotectedroom", "boolean", "Password required",
               c->password ? "1" : "0");
    form_field(&b, "muc#roomconfig_roomsecret", "text-private", "Password", c->password ? c->password : "");
    form_field(&b, "muc#roomconfig_maxusers", "text-single", "Most occupants", num);
    form_field(&b, "muc#roomconfig_whois", "list-single", "Who may see real JIDs",
               c->semi_anonymous ? "moderators" : "anyone");
    if (m->rt->archive != NULL)
        form_field(&b, "muc#roomconfig_enablearchiving", "boolean", "Archive messages (XEP-0313)",
                   c->no_archive ? "0" : "1");
    buf_append_str(&b, "</x></query>");
    muc_iq_result(m, in, b.data, b.len);
    buf_release(&b);
}

static int parse_bool(const char *v, bool *out)
{
    if (streq(v, "1") || streq(v, "true"))
        *out = true;
    else if (streq(v, "0") || streq(v, "false"))
        *out = false;
    else
        return -1;
    return 0;
}

/* Applies a submitted muc#roomconfig form: every field checked first, then all applied
 * (nothing on a refusal). Occupants are told (104); a room made members-only loses its
 * occupants without membership (322). Returns true when the room was freed. */
static bool configure(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *form)
{
    struct muc_config c = r->conf;
    char *name = NULL, *desc = NULL, *secret = NULL;
    bool has_name = false, has_desc = false, has_secret = false, pw = r->conf.password != NULL;
    const char *bad = NULL;
    for (const struct xml_node *f = xml_child(form, "field", NS_XDATA); f != NULL && bad == NULL;
         f = xml_next(f, "field", NS_XDATA)) {
        const char *var = xml_attr(f, "var");
        const struct xml_node *vn = xml_child(f, "value", NS_XDATA);
        char *v = vn != NULL ? xml_text(vn) : xstrdup("");
        bool bv = false;
        unsigned long long n;
        if (var == NULL)
            bad = "a field without var";
        else if (streq(var, "FORM_TYPE"))
            ;
        else if (streq(var, "muc#roomconfig_roomname")) {
            free(name);
            name = xstrdup(v);
            has_name = true;
        } else if (streq(var, "muc#roomconfig_roomdesc")) {
            free(desc);
            desc = xstrdup(v);
            has_desc = true;
        } else if (streq(var, "muc#roomconfig_roomsecret")) {
            free(secret);
            secret = xstrdup(v);
            has_secret = true;
        } else if (streq(var, "muc#roomconfig_maxusers")) {
            if (!parse_uint(v, &n) || n == 0 || n > m->cfg->modules.muc_max_occupants)
                bad = "muc#roomconfig_maxusers: out of range";
            else
                c.max_users = (unsigned)n;
        } else if (streq(var, "muc#roomconfig_whois")) {
            if (streq(v, "anyone") || streq(v, "moderators"))
                c.semi_anonymous = streq(v, "moderators");
            else
                bad = "muc#roomconfig_whois: anyone or moderators";
        } else if (parse_bool(v, &bv) == -1) {
            bad = "a boolean field with another value";
        } else if (streq(var, "muc#roomconfig_changesubject")) {
            c.change_subject = bv;
        } else if (streq(var, "muc#roomconfig_publicroom")) {
            c.public_room = bv;
        } else if (streq(var, "muc#roomconfig_persistentroom")) {
            c.persistent = bv;
        } else if (streq(var, "muc#roomconfig_moderatedroom")) {
            c.moderated = bv;
        } else if (streq(var, "muc#roomconfig_membersonly")) {
            c.members_only = bv;
        } else if (streq(var, "muc#roomconfig_allowinvites")) {
            c.allow_invites = bv;
        } else if (streq(var, "muc#roomconfig_passwordprotectedroom")) {
            pw = bv;
        } else if (streq(var, "muc#roomconfig_enablearchiving") && m->rt->archive != NULL) {
            c.no_archive = !bv;
        } else {
            bad = "a field this service does not offer";
        }
        free(v);
    }
    const char *secret_now = has_secret ? secret : r->conf.password;
    if (bad == NULL && pw && (secret_now == NULL || *secret_now == '\0'))
        bad = "a password-protected room needs muc#roomconfig_roomsecret";
    if (bad != NULL) {
        char sample[128];
        log_info("muc_config_refused", "room=\"%s\" why=\"%s\"", mk_sanitize(sample, sizeof sample, r->jid, r->jid_len),
                 bad);
        free(name);
        free(desc);
        free(secret);
        muc_error(m, in, "modify", "not-acceptable");
        return false;
    }
    if (has_name) {
        free(c.name);
        c.name = *name ? name : NULL;
        if (c.name == NULL)
            free(name);
    }
    if (has_desc) {
        free(c.desc);
        c.desc = *desc ? desc : NULL;
        if (c.desc == NULL)
            free(desc);
    }
    char *password = pw ? xstrdup(secret_now) : NULL;
    free(secret);
    free(c.password);
    c.password = password;
    bool now_members_only = c.members_only && !r->conf.members_only;
    /* XEP-0045 10.2.1: 172 / 173 tell that real JIDs are now shown to all / to moderators. */
    const char *whois_code = c.semi_anonymous == r->conf.semi_anonymous ? "" :
                             c.semi_anonymous ? "<status code='173'/>" : "<status code='172'/>";
    r->conf = c;
    persist_touch(m, r);
    muc_iq_result(m, in, NULL, 0);
    uint32_t hops = in->hops + 1;
    /* One fan-out to every session of every occupant. */
    size_t nto = 0;
    char **tos = sessions_of(r, NULL, 0, &nto);
    struct muc_batch bt;
    batch_init(&bt, m, tos, nto, hops);
    struct buf *b = batch_stanza(&bt, MK__STANZA_KIND__STANZA_KIND_MESSAGE, r->jid, "groupchat", NULL);
    buf_append_str(b, "<message");
    put_attr(b, "from", r->jid);
    buf_append_str(b, " to='");
    batch_to(&bt);
    buf_append_str(b, "' type='groupchat'><x xmlns='" NS_MUC_USER "'><status code='104'/>");
    buf_append_str(b, whois_code);
    buf_append_str(b, "</x></message>");
    batch_done(&bt, false);
    batch_end(&bt);
    free(tos);
    metric_inc(m->m_stanzas, "config");
    if (r->nocc == 0 && !r->conf.persistent) {
        room_free(m, r);   /* an owner from outside made an empty persistent room temporary: it goes */
        return true;
    }
    if (!now_members_only)
        return false;
    static const unsigned code322[] = {322};
    for (size_t i = 0; i < r->nocc;) {
        struct muc_occupant *t = &r->occ[i];
        if (aff_of(r, t->jid, t->bare_len) >= MUC_AFF_MEMBER) {
            i++;
            continue;
        }
        size_t before = m->nrooms;
        leave(m, r, t, code322, 1, NULL, hops);
        if (m->nrooms < before)
            return true;
    }
    return false;
}

/* muc#owner set: <destroy/> (owner only), or the instant room's empty submitted form. */
static bool owner_set(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *q)
{
    struct jid_view fv;
    router_jid_split(in->from, &fv);
    if (aff_of(r, in->from, fv.bare_len) != MUC_AFF_OWNER) {
        muc_error(m, in, "auth", "forbidden");
        return false;
    }
    const struct xml_node *d = xml_child(q, "destroy", NS_MUC_OWNER);
    if (d != NULL) {
        struct buf x;
        buf_init(&x);
        buf_append_str(&x, "<destroy");
        const char *alt = xml_attr(d, "jid");
        if (alt != NULL)
            put_attr(&x, "jid", alt);
        buf_append(&x, ">", 1);
        const struct xml_node *rs = xml_child(d, "reason", NS_MUC_OWNER);
        if (rs != NULL) {
            char *t = xml_text(rs);
            buf_append_str(&x, "<reason>");
            put_text(&x, t);
            buf_append_str(&x, "</reason>");
            free(t);
        }
        buf_append_str(&x, "</destroy>");
        buf_append(&x, "", 1);
        uint32_t hops = in->hops + 1;
        for (size_t i = 0; i < r->nocc; i++) {
            struct muc_occupant *o = &r->occ[i];
            struct pres_opts po = {0};
            po.type = "unavailable";
            po.aff = MUC_AFF_NONE;
            po.role = MUC_ROLE_NONE;
            po.x_inner = x.data;
            send_presence(m, r, o, o->jid, &po, hops);
        }
        buf_release(&x);
        muc_iq_result(m, in, NULL, 0);
        /* Its archive goes with its row (MongooseIM's mod_mam_muc forgets a destroyed
         * room's archive): a room made later under the same name does not inherit it. */
        r->p_purge = r->p_stored || r->p_busy || r->p_dirty;
        room_free(m, r);
        return true;
    }
    const struct xml_node *form = xml_child(q, "x", NS_XDATA);
    const char *ftype = form ? xml_attr(form, "type") : NULL;
    if (form != NULL && streq(ftype, "cancel")) {
        muc_iq_result(m, in, NULL, 0);   /* the instant room (XEP-0045 10.1.2): it is open already */
        return false;
    }
    if (form == NULL || !streq(ftype, "submit")) {
        muc_error(m, in, "modify", "bad-request");
        return false;
    }
    return configure(m, r, in, form);
}

static void tombstone_queue(struct router_muc *m, struct muc_room *r, uint64_t id, const char *by,
                            const struct xml_node *q);
/* XEP-0425 (0.3.0): a moderator retracts a groupchat message by its stanza-id: every
 * occupant is told, and it leaves the history. The id is not checked against anything
 * older than the history: the retraction goes out anyway. In a room that archives, the
 * retraction is archived too (its stanza-id, the same in every copy, is its archive id),
 * and the moderated message's row becomes a tombstone (tombstone_queue), so that the
 * archive no longer gives its content. */
static void moderate(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *q)
{
    struct muc_occupant *actor = by_jid(r, in->from);
    const char *id = xml_attr(q, "id");
    if (actor == NULL || actor->role != MUC_ROLE_MODERATOR) {
        muc_error(m, in, "auth", "forbidden");
        return;
    }
    if (id == NULL || *id == '\0' || xml_child(q, "retract", NS_RETRACT) == NULL) {
        muc_error(m, in, "modify", "bad-request");
        return;
    }
    uint64_t target = 0;
    bool archived = room_archives(m, r);
    bool stone = archived && mamid_parse(id, strlen(id), &target) == 0;
    if (stone && m->nstones >= MUC_MAX_TOMBSTONES) {
        muc_error(m, in, "wait", "resource-constraint");
        return;
    }
    unsigned hs = m->cfg->modules.muc_history_size;
    for (size_t i = 0; i < r->hist_count; i++) {
        struct muc_msg *h = &r->hist[(r->hist_head + i) % hs];
        if (h->sid == NULL || strcmp(h->sid, id) != 0)
            continue;
        r->hist_bytes -= h->inner_len;
        free(h->nick);
        free(h->sid);
        free(h->inner);
        for (size_t j = i; j + 1 < r->hist_count; j++)
            r->hist[(r->hist_head + j) % hs] = r->hist[(r->hist_head + j + 1) % hs];
        r->hist_count--;
        break;
    }
    muc_iq_result(m, in, NULL, 0);
    char *by = xasprintf("%s/%s", r->jid, actor->nick);
    struct buf inner;
    buf_init(&inner);
    buf_append_str(&inner, "<retract xmlns='" NS_RETRACT "'");
    put_attr(&inner, "id", id);
    buf_append_str(&inner, "><moderated xmlns='" NS_MODERATE "'");
    put_attr(&inner, "by", by);
    buf_append_str(&inner, "/>");
    put_reason(&inner, q, NS_MODERATE);
    buf_append_str(&inner, "</retract>");
    if (archived) {
        uint64_t aid = router_archive_next_id(m->rt->archive);
        char sid[MAMID_TEXT_LEN + 1];
        mamid_format(aid, sid);
        buf_append_str(&inner, "<stanza-id xmlns='" NS_SID "'");
        put_attr(&inner, "by", r->jid);
        put_attr(&inner, "id", sid);
        buf_append_str(&inner, "/>");
        struct buf a;
        buf_init(&a);
        buf_append_str(&a, "<message type='groupchat'");
        put_attr(&a, "from", r->jid);
        buf_append(&a, ">", 1);
        buf_append(&a, inner.data, inner.len);
        buf_append_str(&a, "</message>");
        room_archive_write(m, r, "", a.data, a.len, aid);
        buf_release(&a);
    }
    if (stone)
        tombstone_queue(m, r, target, by, q);
    /* One fan-out to every session of every occupant. */
    size_t nto = 0;
    char **tos = sessions_of(r, NULL, 0, &nto);
    struct muc_batch bt;
    batch_init(&bt, m, tos, nto, in->hops + 1);
    struct buf *b = batch_stanza(&bt, MK__STANZA_KIND__STANZA_KIND_MESSAGE, r->jid, "groupchat", NULL);
    buf_append_str(b, "<message type='groupchat'");
    put_attr(b, "from", r->jid);
    buf_append_str(b, " to='");
    batch_to(&bt);
    buf_append_str(b, "'>");
    buf_append(b, inner.data, inner.len);
    buf_append_str(b, "</message>");
    batch_done(&bt, false);
    batch_end(&bt);
    free(tos);
    buf_release(&inner);
    free(by);
    metric_inc(m->m_stanzas, "moderate");
}

/* --- XEP-0425 tombstones in a room's archive ----------------------------------------------
 * The moderated message's row may not be committed when the moderation comes (the
 * room's writes travel on the reliable channel, committed in batches): the tombstone
 * waits until the channel has acknowledged the room's writes up to the moderation, then
 * reads the row (STORE_MAM_PAGE_ASC on its id) and replaces it in one transaction with
 * the tombstone: the same from, type and id, its stanza-id and muc#user item (the
 * sender's real JID, hidden from who may not see it as before), and instead of the body
 * and everything else <retracted xmlns=urn:xmpp:message-retract:1 stamp/> holding
 * <moderated by/> and the <reason/>. Its body is emptied (full-text search no longer
 * finds it). A row that is not there (an id from before archiving, or none) is left. */

static void tombstone_free(struct muc_tombstone *t)
{
    free(t->room);
    free(t->by);
    free(t->reason);
    free(t);
}

static void on_tombstone_written(void *ud, const struct store_result *res)
{
    struct muc_tombstone *t = ud;
    struct router_muc *m = t->m;
    if (res->ok != 0)
        log_warn("muc_tombstone_failed", "error=\"%s\"", res->error ? res->error : "");
    metric_inc(m->m_stanzas, res->ok == 0 && res->affected == 1 ? "tombstone" : "tombstone_failed");
    m->nstones--;
    tombstone_free(t);
}

/* The tombstone of row xml (len bytes) into out; -1 when it does not parse. */
static int tombstone_xml(const struct muc_tombstone *t, const char *room_from, const char *xml, size_t len,
                         struct buf *out)
{
    char err[128];
    struct xml_node *msg = xml_parse_stanza(xml, len, err, sizeof err);
    if (msg == NULL || !streq(msg->name, "message")) {
        xml_free(&msg);
        return -1;
    }
    char stamp[40];
    muc_stamp(stamp, sizeof stamp, t->stamp_us);
    buf_append_str(out, "<message type='groupchat'");
    put_attr(out, "from", room_from);
    if (xml_attr(msg, "id") != NULL)
        put_attr(out, "id", xml_attr(msg, "id"));
    buf_append_str(out, "><retracted xmlns='" NS_RETRACT "'");
    put_attr(out, "stamp", stamp);
    buf_append_str(out, "><moderated xmlns='" NS_MODERATE "'");
    put_attr(out, "by", t->by);
    buf_append_str(out, "/>");
    if (t->reason != NULL) {
        buf_append_str(out, "<reason>");
        put_text(out, t->reason);
        buf_append_str(out, "</reason>");
    }
    buf_append_str(out, "</retracted>");
    for (const struct xml_node *c = msg->first_child; c != NULL; c = c->next)
        if (c->name != NULL && ((streq(c->ns, NS_SID) && streq(c->name, "stanza-id")) ||
                                (streq(c->ns, NS_MUC_USER) && streq(c->name, "x"))))
            xml_serialize(c, XML_NS_CLIENT, out);
    buf_append_str(out, "</message>");
    xml_free(&msg);
    return 0;
}

static void on_tombstone_row(void *ud, const struct store_result *res)
{
    struct muc_tombstone *t = ud;
    struct router_muc *m = t->m;
    char idt[24];
    snprintf(idt, sizeof idt, "%" PRIu64, t->id);
    const char *at = strchr(t->room, '@');
    /* id, peer, peer_resource, outgoing, stamp_us, xml */
    if (m->closing || res->ok != 0 || res->nrows != 1 || res->ncols < 6 || res->vals[5] == NULL || at == NULL ||
        !streq(res->vals[0], idt)) {
        metric_inc(m->m_stanzas, res->ok == 0 ? "tombstone_no_row" : "tombstone_failed");
        m->nstones--;
        tombstone_free(t);
        return;
    }
    const char *nick = res->vals[2] != NULL ? res->vals[2] : "";
    char *from = *nick ? xasprintf("%s/%s", t->room, nick) : xstrdup(t->room);
    struct buf x;
    buf_init(&x);
    int rc = tombstone_xml(t, from, res->vals[5], res->lens[5], &x);
    free(from);
    if (rc == -1) {
        buf_release(&x);
        metric_inc(m->m_stanzas, "tombstone_failed");
        m->nstones--;
        tombstone_free(t);
        return;
    }
    buf_append(&x, "", 1);
    char *user = xstrndup(t->room, (size_t)(at - t->room));
    const char *key[] = {user, at + 1, idt};
    const char *put[] = {user, at + 1, idt, x.data};
    const struct store_op ops[] = {
        {STORE_MAM_FTS_FORGET, key, 3}, {STORE_MAM_REPLACE, put, 4}, {STORE_MAM_FTS_INDEX, key, 3},
    };
    store_txn(m->store, ops, MK_ARRAY_LEN(ops), on_tombstone_written, t);
    free(user);
    buf_release(&x);
}

/* Starts the tombstones whose rows are committed, oldest first. */
static void tombstones_start(struct router_muc *m)
{
    while (m->stones != NULL && (m->stones->tx == NULL || rchan_tx_acked(m->stones->tx, m->stones->seq))) {
        struct muc_tombstone *t = m->stones;
        m->stones = t->next;
        const char *at = strchr(t->room, '@');
        char *user = xstrndup(t->room, at != NULL ? (size_t)(at - t->room) : 0);
        char lo[24], hi[24];
        snprintf(lo, sizeof lo, "%" PRIu64, t->id - 1);
        snprintf(hi, sizeof hi, "%" PRIu64, t->id + 1);
        const char *params[] = {user, at != NULL ? at + 1 : "", lo, hi, "1", "0"};
        store_query(m->store, STORE_MAM_PAGE_ASC, params, MK_ARRAY_LEN(params), on_tombstone_row, t);
        free(user);
    }
    if (m->stones == NULL)
        ev_timer_stop(m->rt->node->loop, &m->stone_timer);
    else if (!ev_is_active(&m->stone_timer)) {
        ev_timer_set(&m->stone_timer, MUC_TOMBSTONE_POLL, MUC_TOMBSTONE_POLL);
        ev_timer_start(m->rt->node->loop, &m->stone_timer);
    }
}

static void on_stone_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    tombstones_start(w->data);
}

/* The moderated message id of r's archive (moderation q by by) becomes a tombstone once
 * the room's writes so far are committed. */
static void tombstone_queue(struct router_muc *m, struct muc_room *r, uint64_t id, const char *by,
                            const struct xml_node *q)
{
    struct muc_tombstone *t = xcalloc(1, sizeof *t);
    t->m = m;
    t->room = xstrdup(r->jid);
    t->id = id;
    t->by = xstrdup(by);
    const struct xml_node *rs = xml_child(q, "reason", NS_MODERATE);
    t->reason = rs != NULL ? xml_text(rs) : NULL;
    t->stamp_us = mk_now_us();
    t->tx = r->a_tx;
    t->seq = r->a_seq;
    struct muc_tombstone **pp = &m->stones;
    while (*pp != NULL)
        pp = &(*pp)->next;
    *pp = t;
    m->nstones++;
    tombstones_start(m);
}

/* --- registration with a room (XEP-0045 7.10, 7.12) -------------------------------------
 * A user registers a nick with the room (jabber:iq:register): the nick is reserved for
 * their bare JID (nobody else may enter or change to it, <conflict/>), and in a room open
 * to all they become a member (an admin or owner keeps their affiliation). A members-only
 * room's membership is its admins' to give: there only a user affiliated already may
 * register (reserve a nick), others get <not-allowed/>. <remove/> (XEP-0077) gives the
 * reservation back, and the membership it gave. The reservation is kept with the
 * affiliations, so a persistent room stores it. */

static void register_form(struct router_muc *m, const Mk__Route *in)
{
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "<query xmlns='" NS_REGISTER "'><instructions>Choose the nickname to reserve in this room."
                       "</instructions><x xmlns='" NS_XDATA "' type='form'><title>Room registration</title>");
    form_field(&b, "FORM_TYPE", "hidden", NULL, NS_MUC_REGISTER);
    buf_append_str(&b, "<field var='muc#register_roomnick' type='text-single' label='Nickname'><required/></field>"
                       "</x></query>");
    muc_iq_result(m, in, b.data, b.len);
    buf_release(&b);
}

/* The nick of a submitted muc#register form, prepared, or NULL (bad form, or a nick this
 * service refuses). */
static char *register_nick(struct router_muc *m, const struct xml_node *form)
{
    char *ft = form_value(form, "FORM_TYPE");
    bool ok = ft == NULL || streq(ft, NS_MUC_REGISTER);
    free(ft);
    char *nick = ok ? form_value(form, "muc#register_roomnick") : NULL;
    if (nick == NULL || *nick == '\0' || strlen(nick) > m->cfg->modules.muc_max_nick_bytes) {
        free(nick);
        return NULL;
    }
    char err[64];
    char *prepped = jid_resourceprep(nick, err, sizeof err);
    free(nick);
    return prepped;
}

/* Returns true when the room was freed. */
static bool room_register(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *q)
{
    struct jid_view fv;
    router_jid_split(in->from, &fv);
    char *bare = xstrndup(in->from, fv.bare_len);
    struct muc_aff_entry *e = aff_entry(r, bare, fv.bare_len);
    enum muc_aff aff = e != NULL ? e->aff : MUC_AFF_NONE;
    bool get = streq(in->type, "get");
    bool freed = false;
    const struct xml_node *form = xml_child(q, "x", NS_XDATA);
    const char *ftype = form != NULL ? xml_attr(form, "type") : NULL;
    if (aff == MUC_AFF_OUTCAST) {
        muc_error(m, in, "auth", "forbidden");
    } else if (get && e != NULL && e->nick != NULL) {
        /* Registered already: the reserved nick. */
        struct buf b;
        buf_init(&b);
        buf_append_str(&b, "<query xmlns='" NS_REGISTER "'><registered/><username>");
        put_text(&b, e->nick);
        buf_append_str(&b, "</username></query>");
        muc_iq_result(m, in, b.data, b.len);
        buf_release(&b);
    } else if (!get && xml_child(q, "remove", NS_REGISTER) != NULL) {
        if (e == NULL || e->nick == NULL) {
            muc_error(m, in, "cancel", "item-not-found");
        } else {
            free(e->nick);
            e->nick = NULL;
            bool dropped = e->aff == MUC_AFF_MEMBER;
            if (dropped)
                aff_set(r, bare, MUC_AFF_NONE);
            persist_touch(m, r);
            muc_iq_result(m, in, NULL, 0);
            if (dropped)
                freed = affiliation_applied(m, r, bare, MUC_AFF_NONE, "", in->hops + 1);
            metric_inc(m->m_stanzas, "unregister");
        }
    } else if (r->conf.members_only && aff < MUC_AFF_MEMBER) {
        muc_error(m, in, "cancel", "not-allowed");
    } else if (get) {
        register_form(m, in);
    } else if (form != NULL && streq(ftype, "cancel")) {
        muc_iq_result(m, in, NULL, 0);
    } else if (form == NULL || !streq(ftype, "submit")) {
        muc_error(m, in, "modify", "bad-request");
    } else {
        char *nick = register_nick(m, form);
        const struct muc_aff_entry *holder = nick != NULL ? nick_reserved(r, nick) : NULL;
        const struct muc_occupant *user = nick != NULL ? by_nick(r, nick) : NULL;
        if (nick == NULL) {
            muc_error(m, in, "modify", "bad-request");
        } else if ((holder != NULL && holder != e) ||
                   (user != NULL && (user->bare_len != fv.bare_len || memcmp(user->jid, bare, fv.bare_len) != 0))) {
            muc_error(m, in, "cancel", "conflict");   /* another user's nick */
        } else if (e == NULL && aff_set(r, bare, MUC_AFF_MEMBER) == -1) {
            muc_error(m, in, "wait", "resource-constraint");
        } else {
            e = aff_entry(r, bare, fv.bare_len);
            free(e->nick);
            e->nick = nick;
            nick = NULL;
            persist_touch(m, r);
            muc_iq_result(m, in, NULL, 0);
            if (aff == MUC_AFF_NONE)
                freed = affiliation_applied(m, r, bare, MUC_AFF_MEMBER, "", in->hops + 1);
            metric_inc(m->m_stanzas, "register");
        }
        free(nick);
    }
    free(bare);
    return freed;
}

/* XEP-0045 7.12: the asker's reserved nick as the identity of node x-roomuser-item (an
 * empty answer without one). */
static void roomuser_item(struct router_muc *m, struct muc_room *r, const Mk__Route *in)
{
    struct jid_view fv;
    router_jid_split(in->from, &fv);
    const struct muc_aff_entry *e = aff_entry(r, in->from, fv.bare_len);
    struct buf b;
    buf_init(&b);
    buf_append_str(&b, "<query xmlns='" NS_DISCO_INFO "' node='" MUC_NODE_ROOMUSER "'>");
    if (e != NULL && e->nick != NULL) {
        buf_append_str(&b, "<identity category='conference' type='text'");
        put_attr(&b, "name", e->nick);
        buf_append_str(&b, "/>");
    }
    buf_append_str(&b, "</query>");
    muc_iq_result(m, in, b.data, b.len);
    buf_release(&b);
}

/* --- the room's archive (XEP-0313 on the room JID) ---------------------------------------- */

static bool is_mam_ns(const char *ns)
{
    return streq(ns, "urn:xmpp:mam:tmp") || streq(ns, "urn:xmpp:mam:0") || streq(ns, "urn:xmpp:mam:1") ||
           streq(ns, NS_MAM_2);
}

static void mam_query_free(struct router_muc *m, struct muc_mam_query *q)
{
    for (struct muc_mam_query **pp = &m->mamq; *pp != NULL; pp = &(*pp)->next)
        if (*pp == q) {
            *pp = q->next;
            m->nmamq--;
            break;
        }
    ev_timer_stop(m->rt->node->loop, &q->timer);
    free(q->room);
    free(q->asker);
    free(q->iq_id);
    free(q);
}

/* An IQ error from the room to the asker of q (not a Route of the asker's to answer). */
static void mam_query_error(struct router_muc *m, struct muc_mam_query *q, const char *type, const char *condition)
{
    metric_inc(m->m_refused, condition);
    struct buf b;
    buf_init(&b);
    route_error_xml(&b, MK__STANZA_KIND__STANZA_KIND_IQ, q->room, q->asker, q->iq_id, type, condition);
    muc_send(m, MK__STANZA_KIND__STANZA_KIND_IQ, q->room, q->asker, "error", q->iq_id, b.data, b.len, false, q->hops);
    buf_release(&b);
}

static void on_mam_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct muc_mam_query *q = w->data;
    struct router_muc *m = q->m;
    log_warn("muc_mam_query_timeout", "n=%" PRIu64, q->n);
    mam_query_error(m, q, "wait", "internal-server-error");
    mam_query_free(m, q);
}

/* A MAM IQ to the room (q its child): the form or a query, answered by the room's
 * archive on its mam shard when the asker may read it; prefs are the owner's business
 * in a user's archive, not a room's. */
static void room_mam(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *q)
{
    if (!room_archives(m, r)) {
        muc_error(m, in, "cancel", "service-unavailable");
        return;
    }
    if (!streq(q->name, "query")) {
        muc_error(m, in, "cancel", "feature-not-implemented");
        return;
    }
    struct jid_view fv;
    router_jid_split(in->from, &fv);
    enum muc_aff aff = aff_of(r, in->from, fv.bare_len);
    const struct muc_occupant *o = by_jid(r, in->from);
    /* Who may read it (MongooseIM's mod_mam_muc: whoever may enter): an occupant, an
     * affiliated user; nobody banned; nobody else when the room is closed to strangers. */
    if (aff == MUC_AFF_OUTCAST ||
        (o == NULL && aff < MUC_AFF_MEMBER && (r->conf.members_only || r->conf.password != NULL))) {
        muc_error(m, in, "auth", "forbidden");
        return;
    }
    const struct cfg_proc *sh = cfg_shard(m->cfg, CFG_ROLE_MAM, r->jid);
    if (sh == NULL) {
        muc_error(m, in, "cancel", "service-unavailable");
        return;
    }
    if (m->nmamq >= MUC_MAX_MAM_QUERIES) {
        muc_error(m, in, "wait", "resource-constraint");
        return;
    }
    bool see_jids = !r->conf.semi_anonymous || aff >= MUC_AFF_ADMIN || (o != NULL && o->role == MUC_ROLE_MODERATOR);
    struct muc_mam_query *mq = xcalloc(1, sizeof *mq);
    mq->n = ++m->next_mamq;
    mq->room = xstrdup(r->jid);
    mq->asker = xstrdup(in->from);
    mq->iq_id = xstrdup(in->id != NULL ? in->id : "");
    mq->hops = in->hops + 1;
    mq->m = m;
    ev_timer_init(&mq->timer, on_mam_timeout, MUC_MAM_TIMEOUT, 0.);
    mq->timer.data = mq;
    Mk__MamQuery mam = MK__MAM_QUERY__INIT;
    mam.owner = r->jid;
    mam.c2s = (char *)bus_self(m->rt->node->bus);
    mam.session_id = mq->n;
    mam.xml = in->xml;
    mam.from = in->from;
    mam.hide_real_jids = !see_jids;
    /* Read-your-writes: every message an occupant got before asking was written before
     * this, on this shard's channel to the room's mam shard. */
    Mk__MamFence fence;
    Mk__MamFence *fencep = &fence;
    if (r->a_tx != NULL) {
        router_archive_fence(m->rt->archive, r->a_tx, r->a_seq, &fence);
        mam.n_fences = 1;
        mam.fences = &fencep;
    }
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_MAM_QUERY;
    e.mam_query = &mam;
    if (node_send(m->rt->node, sh->id, &e) == -1) {
        free(mq->room);
        free(mq->asker);
        free(mq->iq_id);
        free(mq);
        muc_error(m, in, "wait", "resource-constraint");
        return;
    }
    mq->next = m->mamq;
    m->mamq = mq;
    m->nmamq++;
    ev_timer_start(m->rt->node->loop, &mq->timer);
    metric_inc(m->m_stanzas, "mam_query");
}

/* Whether the opening tag of xml says type='error'. */
static bool opening_is_error(const uint8_t *xml, size_t len)
{
    const uint8_t *gt = memchr(xml, '>', len);
    size_t n = gt != NULL ? (size_t)(gt - xml) : len;
    return memmem(xml, n, "type='error'", 12) != NULL || memmem(xml, n, "type=\"error\"", 12) != NULL;
}

void router_muc_on_mam_result(struct router_muc *m, const Mk__MamResult *res)
{
    if (m == NULL || res == NULL)
        return;
    struct muc_mam_query *q = m->mamq;
    while (q != NULL && q->n != res->session_id)
        q = q->next;
    if (q == NULL)
        return;   /* timed out meanwhile, or an earlier incarnation's */
    if (res->xml.len > 0) {
        /* The results are messages (never stored: no_store; no body for offline), the
         * last one the IQ answer. */
        Mk__Route r = MK__ROUTE__INIT;
        r.kind = res->last ? MK__STANZA_KIND__STANZA_KIND_IQ : MK__STANZA_KIND__STANZA_KIND_MESSAGE;
        r.from = q->room;
        r.to = q->asker;
        r.type = (char *)(!res->last ? "" : opening_is_error(res->xml.data, res->xml.len) ? "error" : "result");
        r.id = (char *)(res->last ? q->iq_id : "");
        r.xml = res->xml;
        r.no_store = true;
        r.hops = q->hops;
        muc_send_route(m, &r);
    }
    if (res->last)
        mam_query_free(m, q);
}

static void room_iq(struct router_muc *m, struct muc_room *r, const Mk__Route *in, const struct xml_node *st,
                    const struct jid_view *to)
{
    const char *type = in->type ? in->type : "";
    bool request = streq(type, "get") || streq(type, "set");
    if (r == NULL) {
        if (request)
            muc_error(m, in, "cancel", "item-not-found");
        return;
    }
    if (to->resource != NULL) {
        /* To an occupant: the sender must be one (XEP-0410); a ping of one's own nick is
         * answered here, anything else goes to the occupant from the sender's nick. */
        struct muc_occupant *o = by_jid(r, in->from);
        if (o == NULL) {
            if (request)
                muc_error(m, in, "modify", "not-acceptable");
            return;
        }
        struct muc_occupant *t = by_nick(r, to->resource);
        if (t == NULL) {
            if (request)
                muc_error(m, in, "cancel", "item-not-found");
            return;
        }
        const struct xml_node *q = xml_first_elem(st);
        if (t == o && streq(type, "get") && q != NULL && streq(q->name, "ping") && streq(q->ns, NS_PING)) {
            muc_iq_result(m, in, NULL, 0);
            return;
        }
        metric_inc(m->m_stanzas, "iq");
        char *from = xasprintf("%s/%s", r->jid, o->nick);
        struct buf *b = &m->out;
        b->len = 0;
        buf_append_str(b, "<iq");
        put_attr(b, "from", from);
        put_attr(b, "to", t->jid);
        put_attr(b, "type", type);
        if (in->id != NULL && *in->id != '\0')
            put_attr(b, "id", in->id);
        buf_append(b, ">", 1);
        children_of(st, NULL, NULL, b);
        buf_append_str(b, "</iq>");
        muc_send(m, MK__STANZA_KIND__STANZA_KIND_IQ, from, t->jid, type, in->id, b->data, b->len, false,
                 in->hops + 1);
        free(from);
        return;
    }
    if (!request)
        return;
    const struct xml_node *q = xml_first_elem(st);
    if (q == NULL) {
        muc_error(m, in, "modify", "bad-request");
        return;
    }
    if (is_mam_ns(q->ns)) {
        room_mam(m, r, in, q);
        return;
    }
    if (streq(type, "get") && streq(q->name, "query") && streq(q->ns, NS_DISCO_INFO) && xml_attr(q, "node") == NULL) {
        room_disco_info(m, r, in);
        return;
    }
    if (streq(type, "get") && streq(q->name, "query") && streq(q->ns, NS_DISCO_INFO) &&
        streq(xml_attr(q, "node"), MUC_NODE_ROOMUSER)) {
        roomuser_item(m, r, in);
        return;
    }
    if (streq(q->name, "query") && streq(q->ns, NS_REGISTER)) {
        room_register(m, r, in, q);
        return;
    }
    if (streq(type, "get") && streq(q->name, "query") && streq(q->ns, NS_DISCO_ITEMS)) {
        static const char items[] = "<query xmlns='" NS_DISCO_ITEMS "'/>";
        muc_iq_result(m, in, items, sizeof items - 1);   /* XEP-0045 6.5: occupants need not be listed */
        return;
    }
    if (streq(type, "set") && streq(q->name, "query") && streq(q->ns, NS_MUC_ADMIN)) {
        admin_set(m, r, in, q);
        return;
    }
    if (streq(type, "set") && streq(q->name, "query") && streq(q->ns, NS_MUC_OWNER)) {
        owner_set(m, r, in, q);
        return;
    }
    if (streq(type, "get") && streq(q->name, "query") && streq(q->ns, NS_MUC_ADMIN)) {
        admin_get(m, r, in, q);
        return;
    }
    if (streq(type, "set") && streq(q->name, "moderate") && streq(q->ns, NS_MODERATE)) {
        moderate(m, r, in, q);
        return;
    }
    if (streq(type, "get") && streq(q->name, "query") && streq(q->ns, NS_MUC_OWNER)) {
        owner_get(m, r, in);
        return;
    }
    muc_error(m, in, "cancel", streq(q->ns, NS_MUC_ADMIN) || streq(q->ns, NS_MUC_OWNER) ? "feature-not-implemented"
                                                                                      : "service-unavailable");
}

/* --- entry ------------------------------------------------------------------------------- */

/* Index of the service domain to.domain names, or -1. */
static int host_of(const struct router_muc *m, const char *to, const struct jid_view *v)
{
    for (size_t i = 0; i < m->nhosts; i++)
        if (strlen(m->hosts[i]) == v->domain_len && memcmp(m->hosts[i], to + v->domain_off, v->domain_len) == 0)
            return (int)i;
    return -1;
}

/* --- loading a room from the store ----------------------------------------------------------- */

static void dispatch(struct router_muc *m, const Mk__Route *r, bool loaded);

/* Whether in, to a room not in memory, needs to know if the room is a stored one: not an
 * unavailable or error presence, an error message or an IQ answer (each is a no-op for a
 * room without occupants). */
static bool wants_room(const Mk__Route *in)
{
    const char *type = in->type ? in->type : "";
    switch (in->kind) {
    case MK__STANZA_KIND__STANZA_KIND_PRESENCE:
        return !streq(type, "unavailable") && !streq(type, "error");
    case MK__STANZA_KIND__STANZA_KIND_MESSAGE:
        return !streq(type, "error");
    case MK__STANZA_KIND__STANZA_KIND_IQ:
        return streq(type, "get") || streq(type, "set");
    default:
        return false;
    }
}

static void pending_push(struct muc_pending **q, size_t *n, size_t *cap, const Mk__Route *r)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        *q = xrealloc(*q, *cap * sizeof **q);
    }
    size_t len = mk__route__get_packed_size(r);
    uint8_t *data = xmalloc(len ? len : 1);
    mk__route__pack(r, data);
    (*q)[(*n)++] = (struct muc_pending){data, len};
}

/* Answers every stanza waiting for l with a stanza error and empties its queue. */
static void load_refuse_queued(struct router_muc *m, struct muc_load *l, const char *type, const char *condition)
{
    for (size_t i = 0; i < l->nq; i++) {
        Mk__Route *p = mk__route__unpack(NULL, l->q[i].len, l->q[i].data);
        m->load_bytes -= l->q[i].len;
        free(l->q[i].data);
        if (p != NULL) {
            muc_error(m, p, type, condition);
            mk__route__free_unpacked(p, NULL);
        }
    }
    free(l->q);
    l->q = NULL;
    l->nq = l->qcap = 0;
}

static void on_load_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct muc_load *l = w->data;
    char sample[128];
    log_warn("muc_load_slow", "room=\"%s\" waiting=%zu", mk_sanitize(sample, sizeof sample, l->jid, l->jid_len), l->nq);
    load_refuse_queued(l->m, l, "wait", "internal-server-error");
}

/* The room's last messages (a page of its archive, newest first: id, peer, peer_resource,
 * outgoing, stamp_us, xml) as its history, oldest first, as groupchat() keeps them. A
 * row that does not parse, or has no body (a XEP-0425 tombstone or retraction), is left
 * out. */
static void history_from_archive(struct router_muc *m, struct muc_room *r, const struct store_result *res)
{
    if (res->ncols < 6)
        return;
    struct buf inner;
    buf_init(&inner);
    for (size_t k = res->nrows; k-- > 0;) {
        const char *const *v = res->vals + k * res->ncols;
        const size_t *lens = res->lens + k * res->ncols;
        unsigned long long id, stamp;
        if (v[0] == NULL || v[2] == NULL || v[4] == NULL || v[5] == NULL || !parse_uint(v[0], &id) ||
            !parse_uint(v[4], &stamp))
            continue;
        char err[128];
        struct xml_node *msg = xml_parse_stanza(v[5], lens[5], err, sizeof err);
        if (msg == NULL || !streq(msg->name, "message") || xml_child(msg, "body", XML_NS_CLIENT) == NULL) {
            /* History holds messages with a body: not a tombstone, not a retraction. */
            xml_free(&msg);
            continue;
        }
        char sid[MAMID_TEXT_LEN + 1];
        mamid_format((uint64_t)id, sid);
        inner.len = 0;
        children_of(msg, NS_MUC_USER, NULL, &inner);
        buf_append_str(&inner, "<stanza-id xmlns='" NS_SID "'");
        put_attr(&inner, "by", r->jid);
        put_attr(&inner, "id", sid);
        buf_append_str(&inner, "/>");
        history_add(m, r, v[2], inner.data, inner.len, sid, (int64_t)stamp);
        xml_free(&msg);
    }
    buf_release(&inner);
}

/* The end of a load: the room is in memory (or none is stored, or usable is false: then
 * the waiting stanzas are refused), the stanzas that waited are handled in order. */
static void load_end(struct router_muc *m, struct muc_load *l, bool usable, bool refused)
{
    for (struct muc_load **pp = &m->loads; *pp != NULL; pp = &(*pp)->next)
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    m->nloads--;
    ev_timer_stop(m->rt->node->loop, &l->timer);
    muc_state_release(&l->st);
    if (!usable) {
        /* Nothing is made up in its place (a new room would overwrite the stored one). A
         * store queue at its limit is back-pressure: wait/resource-constraint. */
        load_refuse_queued(m, l, "wait", refused ? "resource-constraint" : "internal-server-error");
    } else {
        for (size_t i = 0; i < l->nq; i++) {
            Mk__Route *p = mk__route__unpack(NULL, l->q[i].len, l->q[i].data);
            m->load_bytes -= l->q[i].len;
            free(l->q[i].data);
            l->q[i].data = NULL;
            if (p != NULL) {
                dispatch(m, p, true);
                mk__route__free_unpacked(p, NULL);
            }
        }
        free(l->q);
    }
    free(l->jid);
    free(l->by);
    free(l);
}

/* The room's history read from its archive (or not: a failure costs the history only). */
static void on_history_done(void *ud, const struct store_result *res)
{
    struct muc_load *l = ud;
    struct router_muc *m = l->m;
    char sample[128];
    mk_sanitize(sample, sizeof sample, l->jid, l->jid_len);
    if (!m->closing) {
        struct muc_room *r = room_from_state(m, l->jid, l->jid_len, &l->st);
        if (res->ok == 0)
            history_from_archive(m, r, res);
        else
            log_warn("muc_history_failed", "room=\"%s\" error=\"%s\"", sample, res->error ? res->error : "");
        log_info("muc_room_loaded", "room=\"%s\" history=%zu", sample, r->hist_count);
    }
    load_end(m, l, true, false);
}

static void on_load_done(void *ud, const struct store_result *res)
{
    struct muc_load *l = ud;
    struct router_muc *m = l->m;
    char sample[128];
    mk_sanitize(sample, sizeof sample, l->jid, l->jid_len);
    if (res->ok != 0) {
        metric_inc(m->m_store, "load_failed");
        log_warn("muc_load_failed", "room=\"%s\" error=\"%s\"", sample, res->error ? res->error : "");
        load_end(m, l, false, res->refused);
        return;
    }
    if (res->nrows == 1 && res->vals[0] != NULL && !m->closing) {
        char err[160];
        if (muc_state_read(res->vals[0], res->lens[0], MUC_MAX_AFFILIATIONS, &l->st, err, sizeof err) == -1) {
            metric_inc(m->m_store, "load_unreadable");
            log_error("muc_room_unreadable", "room=\"%s\" why=\"%s\"", sample, err);
            load_end(m, l, false, false);
            return;
        }
        if (!l->st.conf.persistent) {
            /* A temporary room's row, left by a restart of this shard or a stop: the room
             * died with it. The row and its archive go; the room is none. */
            metric_inc(m->m_store, "load_temporary");
            muc_state_release(&l->st);
            if (room_find(m, l->jid, l->jid_len) == NULL && tomb_find(m, l->jid, l->jid_len) == NULL) {
                struct muc_tomb *t = xcalloc(1, sizeof *t);
                t->jid = xstrndup(l->jid, l->jid_len);
                t->dirty = true;
                t->purge = true;
                t->next = m->tombs;
                m->tombs = t;
                persist_kick(m, t->jid, l->jid_len);
            }
            load_end(m, l, true, false);
            return;
        }
        metric_inc(m->m_store, "load_found");
        const char *at = memchr(l->jid, '@', l->jid_len);
        unsigned hs = m->cfg->modules.muc_history_size;
        if (m->rt->archive != NULL && !l->st.conf.no_archive && hs > 0 && at != NULL) {
            /* Join with history after a restart: the room's last messages come from its
             * archive; the stanzas keep waiting (in order) until they are in. */
            char *user = xstrndup(l->jid, (size_t)(at - l->jid));
            char limit[16];
            snprintf(limit, sizeof limit, "%u", hs);
            const char *params[] = {user, at + 1, "0", "9223372036854775807", limit, "0"};
            store_query(m->store, STORE_MAM_PAGE_DESC, params, MK_ARRAY_LEN(params), on_history_done, l);
            free(user);
            return;
        }
        room_from_state(m, l->jid, l->jid_len, &l->st);
        log_info("muc_room_loaded", "room=\"%s\"", sample);
    } else {
        metric_inc(m->m_store, "load_none");
    }
    load_end(m, l, true, false);
}

/* Holds in (borrowed: packed) until the store says whether its room (bare JID jid, len
 * bytes) is a stored one; starts that load unless it is running. by (by_len bytes) is the
 * sender's bare JID. */
static void load_wait(struct router_muc *m, const Mk__Route *in, const char *jid, size_t len, const char *by,
                      size_t by_len)
{
    struct muc_load *l = NULL;
    size_t mine = 0;   /* loads this user started (one user cannot take every slot) */
    for (struct muc_load *x = m->loads; x != NULL; x = x->next) {
        if (x->jid_len == len && memcmp(x->jid, jid, len) == 0)
            l = x;
        mine += strlen(x->by) == by_len && memcmp(x->by, by, by_len) == 0;
    }
    size_t bytes = mk__route__get_packed_size(in);
    if ((l == NULL && (m->nloads >= MUC_MAX_LOADS || mine >= MUC_MAX_LOADS_PER_USER)) ||
        (l != NULL && l->nq >= MUC_LOAD_MAX_QUEUED) || m->load_bytes + bytes > MUC_LOAD_MAX_BYTES) {
        muc_error(m, in, "wait", "resource-constraint");
        return;
    }
    if (l == NULL) {
        l = xcalloc(1, sizeof *l);
        l->m = m;
        l->jid = xstrndup(jid, len);
        l->jid_len = len;
        l->by = xstrndup(by, by_len);
        ev_timer_init(&l->timer, on_load_timeout, MUC_LOAD_TIMEOUT, 0.);
        l->timer.data = l;
        l->next = m->loads;
        m->loads = l;
        m->nloads++;
        const char *params[] = {l->jid};
        store_query(m->store, STORE_MUC_ROOM_GET, params, 1, on_load_done, l);
    }
    m->load_bytes += bytes;
    pending_push(&l->q, &l->nq, &l->qcap, in);
    if (!ev_is_active(&l->timer)) {
        ev_timer_set(&l->timer, MUC_LOAD_TIMEOUT, 0.);
        ev_timer_start(m->rt->node->loop, &l->timer);
    }
}

/* loaded: in waited for its room's load already (a room still not in memory is none). */
static void handle(struct router_muc *m, const Mk__Route *in, bool loaded)
{
    struct jid_view to, from;
    memset(&from, 0, sizeof from);
    if (router_jid_split(in->to, &to) == -1)
        return;
    if (in->hops > ROUTER_MAX_HOPS) {
        metric_inc(m->rt->m_dropped, "loop");
        return;
    }
    int from_ok = router_jid_split(in->from, &from);
    if (from_ok == 0 && in->kind == MK__STANZA_KIND__STANZA_KIND_IQ && listing_internal(m, in, &to, &from))
        return;
    if (from_ok == -1 || !from.has_local || from.resource == NULL) {
        /* Rooms answer only full JIDs of users (a component or a server speaks for no one
         * who could sit in a room). */
        metric_inc(m->rt->m_dropped, "muc_bad_from");
        if (from_ok == 0 && from.resource == NULL && in->from != NULL && *in->from != '\0')
            muc_error(m, in, "modify", "bad-request");
        return;
    }
    char err[128];
    struct xml_node *st = xml_parse_stanza((const char *)in->xml.data, in->xml.len, err, sizeof err);
    if (st == NULL) {
        metric_inc(m->rt->m_dropped, "muc_unparsable");
        log_warn("muc_unparsable", "error=\"%s\"", err);
        return;
    }
    if (!to.has_local) {
        if (in->kind == MK__STANZA_KIND__STANZA_KIND_IQ)
            service_iq(m, in, st, &to);
        else if (in->kind == MK__STANZA_KIND__STANZA_KIND_MESSAGE)
            muc_error(m, in, "cancel", "service-unavailable");
        xml_free(&st);
        return;
    }
    struct muc_room *r = room_find(m, in->to, to.bare_len);
    if (r == NULL && !loaded && m->store != NULL && wants_room(in) && tomb_find(m, in->to, to.bare_len) == NULL) {
        /* Maybe a persistent room not in memory yet (after a restart): the store says. */
        load_wait(m, in, in->to, to.bare_len, in->from, from.bare_len);
        xml_free(&st);
        return;
    }
    switch (in->kind) {
    case MK__STANZA_KIND__STANZA_KIND_PRESENCE:
        on_presence(m, r, in, st, &to, &from);
        break;
    case MK__STANZA_KIND__STANZA_KIND_MESSAGE:
        on_message(m, r, in, st, &to);
        break;
    case MK__STANZA_KIND__STANZA_KIND_IQ:
        room_iq(m, r, in, st, &to);
        break;
    default:
        break;
    }
    xml_free(&st);
}

/* Handles r now, or after the stanza being handled when called from within one (a room
 * never changes under its own loop). */
static void dispatch(struct router_muc *m, const Mk__Route *r, bool loaded)
{
    if (m->depth > 0) {
        /* A stanza to a room while a room is sending (an error bounced at once by this
         * shard): handled after, so that a room never changes under its own loop. */
        if (m->npending >= MUC_MAX_PENDING) {
            metric_inc(m->rt->m_dropped, "muc_pending_full");
            return;
        }
        pending_push(&m->pending, &m->npending, &m->pending_cap, r);
        return;
    }
    m->depth++;
    handle(m, r, loaded);
    for (size_t i = 0; i < m->npending; i++) {
        Mk__Route *p = mk__route__unpack(NULL, m->pending[i].len, m->pending[i].data);
        free(m->pending[i].data);
        m->pending[i].data = NULL;
        if (p != NULL) {
            handle(m, p, false);
            mk__route__free_unpacked(p, NULL);
        }
    }
    m->npending = 0;
    m->depth--;
}

bool router_muc_route(struct router_muc *m, const Mk__Route *r)
{
    if (m == NULL || r == NULL || r->to == NULL)
        return false;
    struct jid_view to;
    if (router_jid_split(r->to, &to) == -1 || host_of(m, r->to, &to) < 0)
        return false;
    if (m->closing) {
        metric_inc(m->rt->m_dropped, "muc_closing");
        return true;
    }
    dispatch(m, r, false);
    return true;
}

size_t router_muc_rooms_not_owned(const struct router_muc *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nbuckets; i++)
        for (const struct muc_room *r = m->buckets[i]; r != NULL; r = r->hnext)
            n += cfg_shard_n(m->cfg, CFG_ROLE_ROUTER, r->jid, r->jid_len) != m->rt->node->self;
    return n;
}

size_t router_muc_rooms(const struct router_muc *m)
{
    return m ? m->nrooms : 0;
}

size_t router_muc_occupants(const struct router_muc *m)
{
    return m ? m->noccupants : 0;
}

struct router_muc *router_muc_new(struct router *rt)
{
    const struct cfg *c = rt->node->cfg;
    if (!c->modules.muc_enabled)
        return NULL;
    struct router_muc *m = xcalloc(1, sizeof *m);
    m->rt = rt;
    m->cfg = c;
    m->nhosts = c->ndomains;
    m->hosts = xcalloc(m->nhosts ? m->nhosts : 1, sizeof *m->hosts);
    for (size_t i = 0; i < m->nhosts; i++) {
        char *h = cfg_muc_host(c, c->domains[i]);
        char *p = jid_normalize(h, true);
        m->hosts[i] = p != NULL ? p : h;
        if (p != NULL)
            free(h);
    }
    char err[256];
    m->store = store_open(rt->node->loop, c, err, sizeof err);
    if (m->store == NULL) {
        log_error("muc_store_failed", "reason=\"%s\"", err);
        for (size_t i = 0; i < m->nhosts; i++)
            free(m->hosts[i]);
        free(m->hosts);
        free(m);
        return NULL;
    }
    ev_timer_init(&m->retry, on_retry, MUC_RETRY_SECONDS, 0.);
    m->retry.data = m;
    ev_timer_init(&m->stone_timer, on_stone_timer, MUC_TOMBSTONE_POLL, MUC_TOMBSTONE_POLL);
    m->stone_timer.data = m;
    m->nbuckets = 64;
    m->buckets = xcalloc(m->nbuckets, sizeof *m->buckets);
    buf_init(&m->out);
    struct metrics *mx = rt->node->metrics;
    m->m_rooms = metrics_gauge(mx, "meerkat_router_muc_rooms", "Group chat rooms on this shard", NULL);
    m->m_occupants = metrics_gauge(mx, "meerkat_router_muc_occupants", "Occupants of the rooms on this shard", NULL);
    m->m_stanzas = metrics_counter(mx, "meerkat_router_muc_stanzas_total",
                                   "Stanzas rooms handled (join, leave, groupchat, private, iq)", "kind");
    m->m_refused = metrics_counter(mx, "meerkat_router_muc_refused_total", "Stanzas rooms refused with an error",
                                   "condition");
    m->m_store = metrics_counter(mx, "meerkat_router_muc_store_total",
                                 "Store operations of persistent rooms (put, delete, load, list) by outcome", "op");
    return m;
}

void router_muc_collect(struct router_muc *m)
{
    if (m == NULL)
        return;
    metric_set(m->m_rooms, NULL, (double)m->nrooms);
    metric_set(m->m_occupants, NULL, (double)m->noccupants);
}

void router_muc_free(struct router_muc **mp)
{
    if (mp == NULL || *mp == NULL)
        return;
    struct router_muc *m = *mp;
    /* Writes already started finish (each room's newest state is in flight or stored);
     * then nothing new starts, and what the store still holds is answered failed. */
    store_drain(m->store);
    m->closing = true;
    ev_timer_stop(m->rt->node->loop, &m->retry);
    ev_timer_stop(m->rt->node->loop, &m->stone_timer);
    while (m->stones != NULL) {   /* not started: lost (the retraction went out; the row stays) */
        struct muc_tombstone *t = m->stones;
        m->stones = t->next;
        tombstone_free(t);
    }
    store_close(&m->store);
    while (m->tombs != NULL) {
        struct muc_tomb *t = m->tombs;
        m->tombs = t->next;
        free(t->jid);
        free(t);
    }
    for (size_t i = 0; i < m->nbuckets; i++)
        while (m->buckets[i] != NULL)
            room_free(m, m->buckets[i]);
    free(m->buckets);
    for (size_t i = 0; i < m->nhosts; i++)
        free(m->hosts[i]);
    free(m->hosts);
    while (m->mamq != NULL)
        mam_query_free(m, m->mamq);
    while (m->listings != NULL) {
        struct muc_listing *l = m->listings;
        m->listings = l->next;
        listing_release(m, l);
    }
    for (size_t i = 0; i < m->npending; i++)
        free(m->pending[i].data);
    free(m->pending);
    buf_release(&m->out);
    free(m);
    *mp = NULL;
}
