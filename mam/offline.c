/* mam/offline.c - offline message storage: per-owner ordered count + add, XEP-0203 delay, bounce when full. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cfg.h"
#include "log.h"
#include "mam.h"
#include "metrics.h"
#include "node.h"
#include "rchan.h"
#include "store.h"
#include "util.h"
#include "xml.h"

#define OWNER_HASH_SEED 0x6f66666c696e6521ULL
#define OWNER_MIN_BUCKETS 64

struct offline_job {
    struct mam *mam;
    struct offline_owner *owner;
    char *user;                     /* owner's local part */
    char *domain;                   /* owner's domain */
    char *from;                     /* sender: full JID when known, else bare */
    char *sender_bare;
    char *id;                       /* the stanza's id attribute, or NULL */
    struct buf xml;                 /* stamped stanza */
    uint64_t stamp_us;
    uint64_t row_id;                /* the id asked for (0: a new one) */
    uint64_t ack_no;                /* its record in m->acks, 0 when not on the channel */
    struct offline_job *next;
};

/* Acknowledges the oldest records that are done (cumulative per sender). */
static void acks_drain(struct mam *m)
{
    while (m->nacks > 0 && m->acks[m->acks_head].done) {
        struct offline_ack *a = &m->acks[m->acks_head];
        rchan_rx_done(m->offline_rx, a->sender, a->epoch, a->seq);
        free(a->sender);
        a->sender = NULL;
        m->acks_head = (m->acks_head + 1) % m->acks_cap;
        m->nacks--;
        m->acks_first++;
    }
}

/* A record for a write on the channel; returns its number. */
static uint64_t acks_push(struct mam *m, const char *sender, uint64_t epoch, uint64_t seq)
{
    if (m->nacks == m->acks_cap) {
        size_t ncap = m->acks_cap ? m->acks_cap * 2 : 256;
        struct offline_ack *ring = xcalloc(ncap, sizeof *ring);
        for (size_t i = 0; i < m->nacks; i++)
            ring[i] = m->acks[(m->acks_head + i) % m->acks_cap];
        free(m->acks);
        m->acks = ring;
        m->acks_cap = ncap;
        m->acks_head = 0;
    }
    if (m->nacks == 0 && m->acks_first == 0)
        m->acks_first = 1;
    struct offline_ack *a = &m->acks[(m->acks_head + m->nacks) % m->acks_cap];
    a->sender = xstrdup(sender);
    a->epoch = epoch;
    a->seq = seq;
    a->done = false;
    m->nacks++;
    return m->acks_first + m->nacks - 1;
}

static void acks_done(struct mam *m, uint64_t no)
{
    if (no == 0 || no < m->acks_first || no - m->acks_first >= m->nacks)
        return;
    m->acks[(m->acks_head + (no - m->acks_first)) % m->acks_cap].done = true;
    acks_drain(m);
}

void offline_format_stamp(uint64_t stamp_us, char *out, size_t outlen)
{
    time_t secs = (time_t)(stamp_us / 1000000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%06uZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(stamp_us % 1000000u));
}

int offline_stamp_xml(const void *xml, size_t len, const char *domain, uint64_t stamp_us, struct buf *out,
                      char **id)
{
    *id = NULL;
    if (xml == NULL || len == 0)
        return -1;
    char err[128];
    struct xml_node *msg = xml_parse_stanza(xml, len, err, sizeof err);
    if (msg == NULL)
        return -1;
    if (strcmp(msg->name, "message") != 0 || msg->ns == NULL || strcmp(msg->ns, XML_NS_CLIENT) != 0) {
        xml_free(&msg);
        return -1;
    }
    char stamp[40];
    offline_format_stamp(stamp_us, stamp, sizeof stamp);
    struct xml_node *delay = xml_add_child(msg, "delay", NS_DELAY);
    xml_set_attr(delay, "from", domain);
    xml_set_attr(delay, "stamp", stamp);
    xml_add_text(delay, "Offline Storage", strlen("Offline Storage"));
    *id = xstrdup(xml_attr(msg, "id"));
    xml_serialize(msg, XML_NS_CLIENT, out);
    xml_free(&msg);
    return 0;
}

uint64_t mam_id_next(struct mam *m)
{
    uint64_t us = (uint64_t)mk_now_us();
    if (us <= m->last_id_us)
        us = m->last_id_us + 1;
    m->last_id_us = us;
    return (us << 8) | (m->gen & 0xffu);
}

void offline_init(struct mam *m)
{
    m->nbuckets = OWNER_MIN_BUCKETS;
    m->owners = xcalloc(m->nbuckets, sizeof *m->owners);
}

static void job_free(struct offline_job *j)
{
    free(j->user);
    free(j->domain);
    free(j->from);
    free(j->sender_bare);
    free(j->id);
    buf_release(&j->xml);
    free(j);
}

void offline_fini(struct mam *m)
{
    for (size_t i = 0; i < m->nacks; i++)
        free(m->acks[(m->acks_head + i) % m->acks_cap].sender);
    free(m->acks);
    m->acks = NULL;
    m->nacks = m->acks_cap = m->acks_head = 0;
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct offline_owner *o = m->owners[i];
        while (o != NULL) {
            struct offline_owner *on = o->hnext;
            struct offline_job *j = o->head;
            while (j != NULL) {
                struct offline_job *jn = j->next;
                job_free(j);
                j = jn;
            }
            free(o->owner);
            free(o);
            o = on;
        }
    }
    free(m->owners);
    m->owners = NULL;
    m->nbuckets = m->nowners = m->queued = 0;
}

static struct offline_owner *owner_find(struct mam *m, const char *owner, uint64_t h)
{
    for (struct offline_owner *o = m->owners[h & (m->nbuckets - 1)]; o != NULL; o = o->hnext)
        if (o->hash == h && strcmp(o->owner, owner) == 0)
            return o;
    return NULL;
}

static void owners_grow(struct mam *m)
{
    size_t nb = m->nbuckets * 2;
    struct offline_owner **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct offline_owner *o = m->owners[i];
        while (o != NULL) {
            struct offline_owner *on = o->hnext;
            o->hnext = b[o->hash & (nb - 1)];
            b[o->hash & (nb - 1)] = o;
            o = on;
        }
    }
    free(m->owners);
    m->owners = b;
    m->nbuckets = nb;
}

static void owner_remove(struct mam *m, struct offline_owner *o)
{
    struct offline_owner **pp = &m->owners[o->hash & (m->nbuckets - 1)];
    while (*pp != NULL && *pp != o)
        pp = &(*pp)->hnext;
    if (*pp == o)
        *pp = o->hnext;
    m->nowners--;
    free(o->owner);
    free(o);
}

/* Sends the sender a message error (type, condition) for the offline message j. */
static void bounce(struct mam *m, const struct offline_job *j, const char *type, const char *condition)
{
    const struct cfg_proc *p = cfg_shard(m->node->cfg, CFG_ROLE_ROUTER, j->sender_bare);
    if (p == NULL)
        return;
    struct xml_node *msg = xml_node_new("message", XML_NS_CLIENT);
    xml_set_attr(msg, "from", j->owner->owner);
    xml_set_attr(msg, "to", j->from);
    xml_set_attr(msg, "type", "error");
    if (j->id != NULL)
        xml_set_attr(msg, "id", j->id);
    struct xml_node *err = xml_add_child(msg, "error", XML_NS_CLIENT);
    xml_set_attr(err, "type", type);
    xml_add_child(err, condition, NS_STANZAS);
    struct buf out;
    buf_init(&out);
    xml_serialize(msg, XML_NS_CLIENT, &out);
    xml_free(&msg);
    Mk__Route r = MK__ROUTE__INIT;
    r.kind = MK__STANZA_KIND__STANZA_KIND_MESSAGE;
    r.from = j->owner->owner;
    r.to = j->from;
    r.type = (char *)"error";
    r.id = j->id ? j->id : (char *)"";
    r.xml.data = (uint8_t *)out.data;
    r.xml.len = out.len;
    r.hops = 1;
    Mk__Envelope e = MK__ENVELOPE__INIT;
    e.payload_case = MK__ENVELOPE__PAYLOAD_ROUTE;
    e.route = &r;
    node_send(m->node, p->id, &e);
    buf_release(&out);
}

static void job_start(struct offline_job *j);

/* The head job of its owner is finished: free it and start the next one. */
static void job_done(struct offline_job *j, const char *result)
{
    struct mam *m = j->mam;
    struct offline_owner *o = j->owner;
    metric_inc(m->m_offline, result);
    o->head = j->next;
    if (o->head == NULL)
        o->tail = NULL;
    uint64_t ack_no = j->ack_no;
    job_free(j);
    acks_done(m, ack_no);
    m->queued--;
    if (o->head != NULL)
        job_start(o->head);
    else
        owner_remove(m, o);
    /* A graceful stop ends once everything queued is stored (mam/main.c checks the archive too). */
}

/* The insert failed: either the recipient does not exist (the foreign key refused the
 * row; RFC 6121 8.5.2.2.1: service-unavailable) or the store has a problem. */
static void on_user_checked(void *ud, const struct store_result *res)
{
    struct offline_job *j = ud;
    if (res->ok == 0 && res->nrows == 0) {
        bounce(j->mam, j, "cancel", "service-unavailable");
        job_done(j, "no_user");
        return;
    }
    log_warn("offline_store_failed", "step=add user_check=%s", res->ok == 0 ? "exists" : "failed");
    bounce(j->mam, j, "wait", "internal-server-error");
    job_done(j, "failed");
}

static void on_added(void *ud, const struct store_result *res)
{
    struct offline_job *j = ud;
    if (res->ok != 0) {
        log_debug("offline_add_failed", "reason=\"%s\"", res->error ? res->error : "");
        const char *params[] = {j->user, j->domain};
        store_query(j->mam->store, STORE_USER_GET, params, MK_ARRAY_LEN(params), on_user_checked, j);
        return;
    }
    job_done(j, "stored");
}

static void on_counted(void *ud, const struct store_result *res)
{
    struct offline_job *j = ud;
    struct mam *m = j->mam;
    if (res->ok != 0 || res->nrows < 1 || res->ncols < 1 || res->vals[0] == NULL) {
        log_warn("offline_store_failed", "step=count reason=\"%s\"", res->error ? res->error : "no row");
        bounce(m, j, "wait", "internal-server-error");
        job_done(j, "failed");
        return;
    }
    unsigned long long count = strtoull(res->vals[0], NULL, 10);
    if (count >= m->node->cfg->limits.offline_max) {
        /* XEP-0160: the store is full; the sender learns it and may retry later. */
        bounce(m, j, "wait", "resource-constraint");
        job_done(j, "bounced_full");
        return;
    }
    char id[24], stamp[24];
    snprintf(id, sizeof id, "%" PRIu64, j->row_id != 0 ? j->row_id : mam_id_next(m));
    snprintf(stamp, sizeof stamp, "%" PRIu64, j->stamp_us);
    const char *params[] = {j->user, j->domain, id, stamp, j->from, buf_cstr(&j->xml)};
    store_query(m->store, STORE_OFFLINE_ADD, params, MK_ARRAY_LEN(params), on_added, j);
}

static void job_start(struct offline_job *j)
{
    const char *params[] = {j->user, j->domain};
    store_query(j->mam->store, STORE_OFFLINE_COUNT, params, MK_ARRAY_LEN(params), on_counted, j);
}

void offline_write(struct mam *m, const Mk__ArchiveWrite *aw, const char *sender, uint64_t epoch, uint64_t seq)
{
    /* Numbered first: a write refused below is handled too, and acknowledged in its turn. */
    uint64_t ack_no = sender != NULL ? acks_push(m, sender, epoch, seq) : 0;
    const char *owner = aw->owner;
    const char *at = owner ? strchr(owner, '@') : NULL;
    if (at == NULL || at == owner || at[1] == '\0' || strchr(owner, '/') != NULL || aw->peer == NULL ||
        *aw->peer == '\0') {
        metric_inc(m->m_offline, "invalid");
        acks_done(m, ack_no);
        return;
    }
    struct offline_job *j = xcalloc(1, sizeof *j);
    j->mam = m;
    j->user = xstrndup(owner, (size_t)(at - owner));
    j->domain = xstrdup(at + 1);
    j->sender_bare = xstrdup(aw->peer);
    if (aw->peer_resource != NULL && *aw->peer_resource != '\0')
        j->from = xasprintf("%s/%s", aw->peer, aw->peer_resource);
    else
        j->from = xstrdup(aw->peer);
    j->stamp_us = aw->stamp_us ? aw->stamp_us : (uint64_t)mk_now_us();
    buf_init(&j->xml);
    if (offline_stamp_xml(aw->xml.data, aw->xml.len, j->domain, j->stamp_us, &j->xml, &j->id) == -1) {
        metric_inc(m->m_offline, "invalid");
        job_free(j);
        acks_done(m, ack_no);
        return;
    }
    j->row_id = aw->mam_id;
    uint64_t h = mk_hash64(owner, strlen(owner), OWNER_HASH_SEED);
    struct offline_owner *o = owner_find(m, owner, h);
    if (m->queued >= MAM_OFFLINE_MAX_QUEUED) {
        /* The store is not keeping up (or is away): refuse rather than grow without bound. */
        struct offline_owner tmp = {.owner = (char *)owner};
        j->owner = &tmp;
        bounce(m, j, "wait", "resource-constraint");
        metric_inc(m->m_offline, "bounced_busy");
        job_free(j);
        acks_done(m, ack_no);
        return;
    }
    j->ack_no = ack_no;
    if (o == NULL) {
        if (m->nowners + 1 > m->nbuckets)
            owners_grow(m);
        o = xcalloc(1, sizeof *o);
        o->owner = xstrdup(owner);
        o->hash = h;
        o->hnext = m->owners[h & (m->nbuckets - 1)];
        m->owners[h & (m->nbuckets - 1)] = o;
        m->nowners++;
    }
    j->owner = o;
    m->queued++;
    if (o->tail != NULL) {
        o->tail->next = j;
        o->tail = j;
        return;   /* starts when the ones before it are done */
    }
    o->head = o->tail = j;
    job_start(j);
}
