/* mam/archive.c - XEP-0313 archive writes: reliable-channel intake, prefs, batched idempotent commits, acks in order. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "cfg.h"
#include "log.h"
#include "mamid.h"
#include "metrics.h"
#include "node.h"
#include "rchan.h"
#include "store.h"
#include "util.h"

#define PREFS_CACHE_SIZE 4096
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 5000
#define POISON_ATTEMPTS 3       /* a row that fails alone this often, with the store up, is dropped */

enum item_state {
    ITEM_PREFS = 0,             /* waiting for the owner's prefs or roster */
    ITEM_READY,                 /* to insert */
    ITEM_INFLIGHT,              /* in a transaction */
    ITEM_DONE,                  /* committed, or not to be stored: ack when it reaches the head */
};

/* One ArchiveWrite, kept in arrival order until it is acknowledged. */
struct arch_item {
    struct archive *a;
    enum item_state state;
    char *sender;               /* reliable-channel sender, or NULL (not on the channel) */
    uint64_t epoch;
    uint64_t seq;
    char *owner;
    char *user;
    char *domain;
    char *peer;
    char *peer_resource;
    bool outgoing;
    uint64_t id;
    char *origin_id;
    uint64_t stamp_us;
    char *xml;
    char *body;
    unsigned attempts;
    struct arch_item *next;
};

struct archive {
    struct node *node;
    struct store *store;
    struct rchan_rx *rx;
    struct prefs_cache *prefs;
    struct mamid_gen ids;       /* for writes that arrive without an id */
    unsigned batch_rows;
    unsigned batch_ms;
    struct arch_item *head;     /* arrival order */
    struct arch_item *tail;
    size_t nitems;
    size_t nready;
    size_t ninflight;
    unsigned retry_ms;          /* current backoff after a failed commit, 0 when healthy */
    ev_timer batch_timer;
    int64_t commit_start_us;
    struct metric *m_writes;    /* label result: stored, skipped, duplicate, invalid, dropped */
    struct metric *m_batch_rows;
    struct metric *m_commit_seconds;
    struct metric *m_commit_failures;
    struct metric *m_pending;
    struct metric *m_queries;   /* label kind: query, form, prefs, error */
};

static void item_free(struct arch_item *it)
{
    free(it->sender);
    free(it->owner);
    free(it->user);
    free(it->domain);
    free(it->peer);
    free(it->peer_resource);
    free(it->origin_id);
    free(it->xml);
    free(it->body);
    free(it);
}

struct prefs_cache *archive_prefs_cache(struct archive *a) { return a->prefs; }
struct node *archive_node(struct archive *a) { return a->node; }
struct store *archive_store(struct archive *a) { return a->store; }
size_t archive_pending(const struct archive *a) { return a->nitems; }

/* Acknowledges, in arrival order, every item at the head that is done. rchan acks are
 * cumulative per sender, so an item is acknowledged only once all before it are. */
static void ack_done(struct archive *a)
{
    while (a->head != NULL && a->head->state == ITEM_DONE) {
        struct arch_item *it = a->head;
        a->head = it->next;
        if (a->head == NULL)
            a->tail = NULL;
        a->nitems--;
        if (it->sender != NULL)
            rchan_rx_done(a->rx, it->sender, it->epoch, it->seq);
        item_free(it);
    }
    metric_set(a->m_pending, NULL, (double)a->nitems);
}

static void flush(struct archive *a);

static void schedule(struct archive *a)
{
    if (a->ninflight > 0 || a->nready == 0)
        return;
    if (a->retry_ms == 0 && a->nready >= a->batch_rows) {
        ev_timer_stop(a->node->loop, &a->batch_timer);
        flush(a);
        return;
    }
    if (!ev_is_active(&a->batch_timer)) {
        unsigned ms = a->retry_ms > 0 ? a->retry_ms : a->batch_ms;
        ev_timer_set(&a->batch_timer, ms / 1000.0, 0.);
        ev_timer_start(a->node->loop, &a->batch_timer);
    }
}

static void on_batch_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct archive *a = w->data;
    if (a->ninflight == 0)
        flush(a);
}

static void mark_ready(struct arch_item *it)
{
    it->state = ITEM_READY;
    it->a->nready++;
}

static void mark_done(struct arch_item *it, const char *result)
{
    it->state = ITEM_DONE;
    metric_inc(it->a->m_writes, result);
}

static void on_commit(void *ud, const struct store_result *res)
{
    struct archive *a = ud;
    metric_observe(a->m_commit_seconds, NULL, (double)(mk_mono_us() - a->commit_start_us) / 1e6);
    size_t n = a->ninflight;
    a->ninflight = 0;
    if (res->ok == 0) {
        a->retry_ms = 0;
        for (struct arch_item *it = a->head; it != NULL; it = it->next) {
            if (it->state == ITEM_INFLIGHT)
                mark_done(it, "stored");
        }
        metric_observe(a->m_batch_rows, NULL, (double)n);
    } else {
        metric_inc(a->m_commit_failures, NULL);
        bool up = store_ready(a->store);
        log_warn("mam_commit_failed", "rows=%zu store_ready=%d error=\"%s\"", n, up ? 1 : 0,
                 res->error != NULL ? res->error : "");
        for (struct arch_item *it = a->head; it != NULL; it = it->next) {
            if (it->state != ITEM_INFLIGHT)
                continue;
            it->attempts++;
            /* A row that fails alone while the database answers would block its sender
             * forever: drop it, loudly. */
            if (n == 1 && up && it->attempts >= POISON_ATTEMPTS) {
                char sample[128];
                log_error("mam_write_dropped", "owner=\"%s\" id=%" PRIu64 " error=\"%s\"",
                          mk_sanitize(sample, sizeof sample, it->owner, strlen(it->owner)), it->id,
                          res->error != NULL ? res->error : "");
                mark_done(it, "dropped");
            } else {
                mark_ready(it);
            }
        }
        a->retry_ms = a->retry_ms == 0 ? RETRY_MIN_MS : a->retry_ms * 2;
        if (a->retry_ms > RETRY_MAX_MS)
            a->retry_ms = RETRY_MAX_MS;
    }
    ack_done(a);
    schedule(a);
}

/* Starts one transaction with up to batch_rows ready rows, oldest first. After a
 * failure, rows that failed before go alone, so one bad row cannot block a batch. */
static void flush(struct archive *a)
{
    if (a->ninflight > 0 || a->nready == 0)
        return;
    size_t max = a->batch_rows;
    struct arch_item *first = NULL;
    for (struct arch_item *it = a->head; it != NULL; it = it->next) {
        if (it->state == ITEM_READY) {
            first = it;
            break;
        }
    }
    if (first != NULL && first->attempts > 0)
        max = 1;
    struct store_op *ops = xcalloc(max, sizeof *ops);
    const char **params = xcalloc(max * 10, sizeof *params);
    char (*nums)[3][24] = xcalloc(max, sizeof *nums);
    size_t n = 0;
    for (struct arch_item *it = first; it != NULL && n < max; it = it->next) {
        if (it->state != ITEM_READY)
            continue;
        const char **p = params + n * 10;
        snprintf(nums[n][0], sizeof nums[n][0], "%" PRIu64, it->id);
        snprintf(nums[n][1], sizeof nums[n][1], "%d", it->outgoing ? 1 : 0);
        snprintf(nums[n][2], sizeof nums[n][2], "%" PRIu64, it->stamp_us);
        p[0] = it->user;
        p[1] = it->domain;
        p[2] = nums[n][0];
        p[3] = it->peer;
        p[4] = it->peer_resource;
        p[5] = nums[n][1];
        p[6] = it->origin_id;
        p[7] = nums[n][2];
        p[8] = it->xml;
        p[9] = it->body;
        ops[n].stmt = STORE_MAM_INSERT;
        ops[n].params = p;
        ops[n].nparams = 10;
        it->state = ITEM_INFLIGHT;
        a->nready--;
        n++;
    }
    a->ninflight = n;
    a->commit_start_us = mk_mono_us();
    store_txn(a->store, ops, n, on_commit, a);
    free(ops);
    free(params);
    free(nums);
}

void archive_flush(struct archive *a)
{
    ev_timer_stop(a->node->loop, &a->batch_timer);
    flush(a);
}

/* ---- prefs at write time ---------------------------------------------------------------- */

static void on_roster_item(void *ud, const struct store_result *res)
{
    struct arch_item *it = ud;
    struct archive *a = it->a;
    if (res->ok != 0) {
        /* Cannot tell: archive (prefs errors never lose messages). */
        mark_ready(it);
    } else if (res->nrows > 0) {
        mark_ready(it);
    } else {
        mark_done(it, "skipped");
    }
    ack_done(a);
    schedule(a);
}

static void on_item_prefs(void *ud, const struct mam_prefs *prefs)
{
    struct arch_item *it = ud;
    struct archive *a = it->a;
    switch (mam_prefs_decide(prefs, it->peer, it->peer_resource)) {
    case MAM_VERDICT_STORE:
        mark_ready(it);
        break;
    case MAM_VERDICT_SKIP:
        mark_done(it, "skipped");
        break;
    case MAM_VERDICT_ROSTER: {
        const char *params[] = {it->user, it->domain, it->peer};
        store_query(a->store, STORE_ROSTER_GET_ITEM, params, 3, on_roster_item, it);
        return;
    }
    }
    ack_done(a);
    schedule(a);
}

/* ---- intake ------------------------------------------------------------------------------- */

static char *dup_or_empty(const char *s)
{
    return xstrdup(s != NULL ? s : "");
}

static void on_archive_write(struct archive *a, const Mk__Envelope *e)
{
    const Mk__ArchiveWrite *aw = e->archive;
    struct arch_item *it = xcalloc(1, sizeof *it);
    it->a = a;
    it->state = ITEM_PREFS;
    if (e->rc_seq != 0) {
        it->sender = xstrdup(e->sender);
        it->epoch = e->rc_epoch;
        it->seq = e->rc_seq;
    }
    /* Queue first: even an invalid write is acknowledged in its turn. */
    if (a->tail != NULL)
        a->tail->next = it;
    else
        a->head = it;
    a->tail = it;
    a->nitems++;

    it->owner = dup_or_empty(aw->owner);
    it->peer = dup_or_empty(aw->peer);
    it->peer_resource = dup_or_empty(aw->peer_resource);
    it->outgoing = aw->outgoing;
    it->origin_id = aw->origin_id != NULL && aw->origin_id[0] != '\0' ? xstrdup(aw->origin_id) : NULL;
    it->stamp_us = aw->stamp_us;
    it->body = dup_or_empty(aw->body);
    bool valid = mam_split_owner(it->owner, &it->user, &it->domain) == 0 && it->peer[0] != '\0' &&
                 aw->xml.len > 0 && memchr(aw->xml.data, '\0', aw->xml.len) == NULL &&
                 cfg_is_local_domain(a->node->cfg, it->domain);
    if (!valid) {
        char sample[128];
        log_warn("mam_write_invalid", "from=%s owner=\"%s\"", e->sender != NULL ? e->sender : "",
                 mk_sanitize(sample, sizeof sample, it->owner, strlen(it->owner) > 24 ? 24 : strlen(it->owner)));
        mark_done(it, "invalid");
        ack_done(a);
        return;
    }
    it->xml = xstrndup((const char *)aw->xml.data, aw->xml.len);
    /* The router sends the bytes only (it never parses on the hot path): the body for
     * full-text search and the origin-id come out of them here, once per row. */
    if (it->body[0] == '\0' && memmem(it->xml, aw->xml.len, "<body", 5) != NULL) {
        struct xml_node *msg = mam_parse_stanza(it->xml, aw->xml.len);
        if (msg != NULL) {
            struct xml_node *b = xml_child(msg, "body", XML_NS_CLIENT);
            if (b != NULL) {
                free(it->body);
                it->body = xml_text(b);
            }
            struct xml_node *oid = xml_child(msg, "origin-id", "urn:xmpp:sid:0");
            if (it->origin_id == NULL && oid != NULL && xml_attr(oid, "id") != NULL)
                it->origin_id = xstrdup(xml_attr(oid, "id"));
            xml_free(&msg);
        }
    }
    it->id = aw->mam_id != 0 ? aw->mam_id : mamid_next(&a->ids);
    if (it->stamp_us == 0)
        it->stamp_us = mamid_us(it->id);
    prefs_cache_get(a->prefs, it->owner, on_item_prefs, it);
}

bool archive_on_envelope(struct archive *a, Mk__Envelope **envp)
{
    const Mk__Envelope *e = *envp;
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_ARCHIVE:
        if (e->archive == NULL || e->archive->offline)
            return false;
        if (e->rc_seq != 0) {
            switch (rchan_rx_check(a->rx, e)) {
            case RCHAN_NEW:
                break;
            case RCHAN_DUP:
                metric_inc(a->m_writes, "duplicate");
                return true;
            case RCHAN_GAP:
                return true;
            }
        }
        on_archive_write(a, e);
        return true;
    case MK__ENVELOPE__PAYLOAD_MAM_QUERY:
        if (e->mam_query != NULL)
            query_handle(a, e->mam_query, e->sender);
        return true;
    default:
        return false;
    }
}

struct archive *archive_new(struct node *n, struct store *st)
{
    struct archive *a = xcalloc(1, sizeof *a);
    a->node = n;
    a->store = st;
    a->rx = rchan_rx_new(n->loop, n->bus);
    a->prefs = prefs_cache_new(st, PREFS_CACHE_SIZE);
    int gen = mamid_generator(CFG_ROLE_MAM, n->self->index);
    mamid_gen_init(&a->ids, gen >= 0 ? (unsigned)gen : 239u);
    a->batch_rows = n->cfg->modules.mam_batch_rows > 0 ? n->cfg->modules.mam_batch_rows : 256;
    a->batch_ms = n->cfg->modules.mam_batch_ms;
    ev_timer_init(&a->batch_timer, on_batch_timer, 0., 0.);
    a->batch_timer.data = a;
    static const double rows_buckets[] = {1, 4, 16, 64, 256, 1024};
    static const double sec_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1};
    a->m_writes = metrics_counter(n->metrics, "meerkat_mam_archive_writes_total",
                                  "Archive writes by result (stored, skipped, duplicate, invalid, dropped)", "result");
    a->m_batch_rows = metrics_histogram(n->metrics, "meerkat_mam_archive_batch_rows", "Rows per archive commit", NULL,
                                        rows_buckets, MK_ARRAY_LEN(rows_buckets));
    a->m_commit_seconds = metrics_histogram(n->metrics, "meerkat_mam_archive_commit_seconds",
                                            "Archive batch commit latency", NULL, sec_buckets,
                                            MK_ARRAY_LEN(sec_buckets));
    a->m_commit_failures = metrics_counter(n->metrics, "meerkat_mam_archive_commit_failures_total",
                                           "Archive batch commits that failed and were retried", NULL);
    a->m_pending = metrics_gauge(n->metrics, "meerkat_mam_archive_pending", "Archive writes not yet acknowledged",
                                 NULL);
    a->m_queries = metrics_counter(n->metrics, "meerkat_mam_queries_total", "MAM IQs by kind", "kind");
    return a;
}

void archive_count_query(struct archive *a, const char *kind)
{
    metric_inc(a->m_queries, kind);
}

void archive_free(struct archive **ap)
{
    if (ap == NULL || *ap == NULL)
        return;
    struct archive *a = *ap;
    ev_timer_stop(a->node->loop, &a->batch_timer);
    struct arch_item *it = a->head;
    while (it != NULL) {
        struct arch_item *n = it->next;
        item_free(it);
        it = n;
    }
    prefs_cache_free(&a->prefs);
    rchan_rx_free(&a->rx);
    free(a);
    *ap = NULL;
}
