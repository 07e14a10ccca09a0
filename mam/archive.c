/* mam/archive.c - XEP-0313 archive writes: reliable-channel intake, prefs, batched idempotent commits, acks in order. */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "archive.h"
#include "cfg.h"
#include "fence.h"
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
#define MAX_INFLIGHT 4          /* batches handed to the store at once (pgsql: at most its pool; sqlite: its writer commits them together) */
#define BACKLOG_BATCH_FACTOR 4  /* a batch grows to this many times batch_rows while rows wait */
#define ROW_COLS 10             /* parameters of STORE_MAM_INSERT_BATCH per row */

enum item_state {
    ITEM_PREFS = 0,             /* waiting for the owner's prefs or roster */
    ITEM_READY,                 /* to insert: on the ready queue */
    ITEM_INFLIGHT,              /* in a transaction */
    ITEM_DONE,                  /* committed, or not to be stored: ack when it reaches the head */
};

/* One ArchiveWrite, kept in arrival order until it is acknowledged. The strings
 * live in strs, one allocation per item. */
struct arch_item {
    struct arch_item *next;     /* arrival order */
    struct arch_item *rnext;    /* its ready queue (struct ready_queue) */
    struct arch_item *rprev;
    struct archive *a;
    struct fence_link fence;    /* pending for its owner's queries until done */
    enum item_state state;
    bool urgent;                /* on the urgent queue: a query of its owner waits for it */
    bool outgoing;
    unsigned attempts;
    uint64_t epoch;
    uint64_t seq;
    uint64_t id;
    uint64_t stamp_us;
    ev_tstamp arrived;          /* loop time it reached the shard (the lag metric) */
    char *sender;               /* reliable-channel sender, or NULL (not on the channel) */
    char *owner;
    char *user;
    char *domain;
    char *peer;
    char *peer_resource;
    char *origin_id;            /* or NULL */
    char *xml;
    char *body;
    char strs[];
};

/* Rows to insert, oldest first (a failed row goes back to the front). Doubly linked:
 * a row moves to the urgent queue when a query of its owner starts waiting. */
struct ready_queue {
    struct arch_item *head;
    struct arch_item *tail;
    size_t n;
};

/* One transaction in flight and the items it holds. */
struct arch_batch {
    struct archive *a;
    bool busy;
    struct arch_item **items;
    size_t n;
    size_t cap;
    int64_t start_us;
    uint64_t failures_at_start; /* a->failures when it started */
};

struct archive {
    struct node *node;
    struct store *store;
    struct rchan_rx *rx;
    struct prefs_cache *prefs;
    struct fence_table *fences; /* read-your-writes: pending writes per owner, waiting queries */
    struct mamid_gen ids;       /* for writes that arrive without an id */
    unsigned batch_rows;
    unsigned batch_ms;
    struct arch_item *head;     /* arrival order */
    struct arch_item *tail;
    size_t nitems;
    struct ready_queue ready;   /* ready to insert */
    struct ready_queue urgent;  /* ready, and awaited by a query of their owner: committed first */
    size_t nready;              /* ready.n + urgent.n */
    size_t nundone;             /* received, neither committed nor skipped (meerkat_mam_pending_rows) */
    size_t max_pending;         /* limits.mam_max_pending_rows: past it new writes are refused */
    unsigned long long refused_logged;
    struct arch_batch batches[MAX_INFLIGHT];
    unsigned max_inflight;
    unsigned nbusy;
    unsigned retry_ms;          /* current backoff after a failed commit, 0 when healthy */
    uint64_t failures;          /* failed commits so far */
    ev_timer batch_timer;
    const char **values;        /* a batch's parameters while store_batch copies them */
    char (*nums)[3][24];
    size_t values_cap;          /* rows */
    struct metric *m_writes;    /* label result: stored, skipped, duplicate, invalid, dropped */
    struct metric *m_batch_rows;
    struct metric *m_commit_seconds;
    struct metric *m_commit_failures;
    struct metric *m_pending;
    struct metric *m_pending_rows;
    struct metric *m_oldest_pending;
    struct metric *m_wal_pages;         /* sqlite: the WAL and its checkpoints (store_wal_stats) */
    struct metric *m_checkpoints;
    struct metric *m_checkpoint_max;
    struct metric *m_commits;
    struct metric *m_grouped;
    struct metric *m_refused;
    struct metric *m_queries;   /* label kind: query, form, prefs, error */
    struct metric *m_query_waits; /* label result: committed, timeout */
};

struct prefs_cache *archive_prefs_cache(struct archive *a) { return a->prefs; }
struct node *archive_node(struct archive *a) { return a->node; }
struct store *archive_store(struct archive *a) { return a->store; }
size_t archive_pending(const struct archive *a) { return a->nitems; }
struct fence_table *archive_fences(struct archive *a) { return a->fences; }

/* Acknowledges, in arrival order, every item at the head that is done. rchan acks are
 * cumulative per sender (and sent once per loop iteration), so an item is
 * acknowledged only once all before it are. */
static void ack_done(struct archive *a)
{
    if (a->head == NULL || a->head->state != ITEM_DONE)
        return;
    while (a->head != NULL && a->head->state == ITEM_DONE) {
        struct arch_item *it = a->head;
        a->head = it->next;
        if (a->head == NULL)
            a->tail = NULL;
        a->nitems--;
        if (it->sender != NULL)
            rchan_rx_done(a->rx, it->sender, it->epoch, it->seq);
        free(it);
    }
    metric_set(a->m_pending, NULL, (double)a->nitems);
}

static void flush_one(struct archive *a);

static void timer_start(struct archive *a, unsigned ms)
{
    if (ev_is_active(&a->batch_timer))
        return;
    ev_timer_set(&a->batch_timer, ms / 1000.0, 0.);
    ev_timer_start(a->node->loop, &a->batch_timer);
}

/* Starts what may start now: full batches while a slot is free; otherwise the batch
 * timer for what is ready. After a failed commit one batch at a time, after the
 * backoff. */
static void schedule(struct archive *a)
{
    if (a->nready == 0)
        return;
    if (a->retry_ms > 0) {
        if (a->nbusy == 0)
            timer_start(a, a->retry_ms);
        return;
    }
    /* Rows a query waits for go at once, whatever the batch size. */
    while ((a->nready >= a->batch_rows || a->urgent.n > 0) && a->nbusy < a->max_inflight) {
        ev_timer_stop(a->node->loop, &a->batch_timer);
        flush_one(a);
        if (a->retry_ms > 0)
            return;
    }
    if (a->nready > 0 && a->nbusy < a->max_inflight)
        timer_start(a, a->batch_ms);
}

static void on_batch_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct archive *a = w->data;
    if (a->retry_ms > 0 ? a->nbusy == 0 : a->nbusy < a->max_inflight)
        flush_one(a);
    schedule(a);
}

static void rq_push_back(struct ready_queue *q, struct arch_item *it)
{
    it->rnext = NULL;
    it->rprev = q->tail;
    if (q->tail != NULL)
        q->tail->rnext = it;
    else
        q->head = it;
    q->tail = it;
    q->n++;
}

static void rq_push_front(struct ready_queue *q, struct arch_item *it)
{
    it->rprev = NULL;
    it->rnext = q->head;
    if (q->head != NULL)
        q->head->rprev = it;
    else
        q->tail = it;
    q->head = it;
    q->n++;
}

static void rq_remove(struct ready_queue *q, struct arch_item *it)
{
    if (it->rprev != NULL)
        it->rprev->rnext = it->rnext;
    else
        q->head = it->rnext;
    if (it->rnext != NULL)
        it->rnext->rprev = it->rprev;
    else
        q->tail = it->rprev;
    it->rnext = it->rprev = NULL;
    q->n--;
}

/* A row to insert: on the urgent queue when a query of its owner already waits. */
static void mark_ready(struct arch_item *it)
{
    struct archive *a = it->a;
    it->state = ITEM_READY;
    it->urgent = fence_awaited(&it->fence);
    rq_push_back(it->urgent ? &a->urgent : &a->ready, it);
    a->nready++;
}

/* Puts a failed item back at the front of its queue. */
static void mark_ready_front(struct arch_item *it)
{
    struct archive *a = it->a;
    it->state = ITEM_READY;
    rq_push_front(it->urgent ? &a->urgent : &a->ready, it);
    a->nready++;
}

static void mark_done(struct arch_item *it, const char *result)
{
    it->state = ITEM_DONE;
    it->a->nundone--;
    metric_inc(it->a->m_writes, result);
    fence_done(it->a->fences, &it->fence);
}

static void on_commit(void *ud, const struct store_result *res)
{
    struct arch_batch *b = ud;
    struct archive *a = b->a;
    metric_observe(a->m_commit_seconds, NULL, (double)(mk_mono_us() - b->start_us) / 1e6);
    size_t n = b->n;
    b->busy = false;
    b->n = 0;
    a->nbusy--;
    if (res->ok == 0) {
        /* Healthy again only by a batch started after the last failure: one that was
         * already committing says nothing about the rows that failed. */
        if (b->failures_at_start == a->failures)
            a->retry_ms = 0;
        for (size_t i = 0; i < n; i++)
            mark_done(b->items[i], "stored");
        metric_observe(a->m_batch_rows, NULL, (double)n);
    } else {
        metric_inc(a->m_commit_failures, NULL);
        a->failures++;
        bool up = store_ready(a->store);
        log_warn("mam_commit_failed", "rows=%zu store_ready=%d error=\"%s\"", n, up ? 1 : 0,
                 res->error != NULL ? res->error : "");
        /* Back to the front in their order, newest first. */
        for (size_t i = n; i-- > 0;) {
            struct arch_item *it = b->items[i];
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
                mark_ready_front(it);
            }
        }
        a->retry_ms = a->retry_ms == 0 ? RETRY_MIN_MS : a->retry_ms * 2;
        if (a->retry_ms > RETRY_MAX_MS)
            a->retry_ms = RETRY_MAX_MS;
    }
    ack_done(a);
    schedule(a);
}

/* Decimal text of v into out (>= 21 bytes); returns out. */
static char *u64_text(uint64_t v, char *out)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return out;
}

/* Starts one transaction in a free slot with up to batch_rows ready rows, oldest
 * first, as ONE statement (store_batch). A row that failed before goes alone, so one
 * bad row cannot block a batch. */
static void flush_one(struct archive *a)
{
    if (a->nready == 0 || a->nbusy >= a->max_inflight)
        return;
    struct arch_batch *b = NULL;
    for (unsigned i = 0; i < a->max_inflight && b == NULL; i++)
        if (!a->batches[i].busy)
            b = &a->batches[i];
    /* The rows queries wait for go first, in a transaction of their own: a query waits
     * for its owner's rows, not for the backlog of every other owner. */
    struct ready_queue *q = a->urgent.n > 0 ? &a->urgent : &a->ready;
    size_t max = a->batch_rows;
    unsigned free_slots = a->max_inflight - a->nbusy;
    if (q->head->attempts > 0) {
        max = 1;
    } else if (q == &a->urgent) {
        max = (size_t)a->batch_rows * BACKLOG_BATCH_FACTOR;
    } else if (q->n > (size_t)a->batch_rows * free_slots) {
        /* Behind: larger transactions cost less per row (one plan, one commit, one
         * round trip), so the backlog is shared out over the free slots. */
        max = q->n / free_slots;
        if (max > (size_t)a->batch_rows * BACKLOG_BATCH_FACTOR)
            max = (size_t)a->batch_rows * BACKLOG_BATCH_FACTOR;
    }
    if (max > q->n)
        max = q->n;
    if (b->cap < max) {
        b->cap = max;
        b->items = xrealloc(b->items, b->cap * sizeof *b->items);
    }
    if (a->values_cap < max) {
        a->values_cap = max;
        a->values = xrealloc(a->values, max * ROW_COLS * sizeof *a->values);
        a->nums = xrealloc(a->nums, max * sizeof *a->nums);
    }
    size_t n = 0;
    while (n < max) {
        struct arch_item *it = q->head;
        rq_remove(q, it);
        it->state = ITEM_INFLIGHT;
        a->nready--;
        const char **p = a->values + n * ROW_COLS;
        p[0] = it->user;
        p[1] = it->domain;
        p[2] = u64_text(it->id, a->nums[n][0]);
        p[3] = it->peer;
        p[4] = it->peer_resource;
        p[5] = it->outgoing ? "1" : "0";
        p[6] = it->origin_id;
        p[7] = u64_text(it->stamp_us, a->nums[n][2]);
        p[8] = it->xml;
        p[9] = it->body;
        b->items[n++] = it;
    }
    b->n = n;
    b->busy = true;
    b->start_us = mk_mono_us();
    b->failures_at_start = a->failures;
    a->nbusy++;
    store_batch(a->store, STORE_MAM_INSERT_BATCH, a->values, n, ROW_COLS, on_commit, b);
}

void archive_expedite(struct archive *a, const char *owner)
{
    for (struct fence_link *l = fence_pending(a->fences, owner); l != NULL; l = l->next) {
        struct arch_item *it = (struct arch_item *)(void *)((char *)l - offsetof(struct arch_item, fence));
        if (it->state != ITEM_READY || it->urgent)
            continue;
        rq_remove(&a->ready, it);
        it->urgent = true;
        rq_push_back(&a->urgent, it);
    }
    schedule(a);
}

void archive_collect(struct archive *a)
{
    metric_set(a->m_pending_rows, NULL, (double)a->nundone);
    /* The head of the arrival order is the oldest row not done (ack_done pops done ones). */
    double age = 0;
    if (a->head != NULL && a->head->state != ITEM_DONE)
        age = ev_now(a->node->loop) - a->head->arrived;
    metric_set(a->m_oldest_pending, NULL, age > 0 ? age : 0);
    struct store_wal_stats ws;
    if (store_wal_stats(a->store, &ws) == 0) {
        metric_set(a->m_wal_pages, NULL, ws.wal_pages);
        metric_set(a->m_checkpoints, "passive", (double)(ws.runs - ws.restarts));
        metric_set(a->m_checkpoints, "restart", (double)ws.restarts);
        metric_set(a->m_checkpoint_max, NULL, (double)ws.max_us / 1e6);
        metric_set(a->m_commits, NULL, (double)ws.commits);
        metric_set(a->m_grouped, NULL, (double)ws.grouped);
    }
}

void archive_flush(struct archive *a)
{
    ev_timer_stop(a->node->loop, &a->batch_timer);
    while (a->nready > 0 && a->nbusy < a->max_inflight && a->retry_ms == 0)
        flush_one(a);
    schedule(a);
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

/* ---- body and origin-id out of the stored bytes --------------------------------------------- */

struct scan_tag {
    const char *name;
    size_t name_len;
    const char *xmlns;          /* raw value, or NULL */
    size_t xmlns_len;
    const char *id;             /* raw value, or NULL */
    size_t id_len;
    bool self_closing;
};

static bool scan_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool span_is(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n == l && memcmp(p, lit, l) == 0;
}

/* Reads the start tag at p ('<'). Returns the byte after it, or NULL when it is not a
 * well-formed start tag. */
static const char *scan_start_tag(const char *p, const char *end, struct scan_tag *t)
{
    memset(t, 0, sizeof *t);
    p++;
    t->name = p;
    while (p < end && !scan_space(*p) && *p != '>' && *p != '/')
        p++;
    t->name_len = (size_t)(p - t->name);
    if (t->name_len == 0 || memchr(t->name, ':', t->name_len) != NULL)
        return NULL;
    for (;;) {
        while (p < end && scan_space(*p))
            p++;
        if (p >= end)
            return NULL;
        if (*p == '>')
            return p + 1;
        if (*p == '/') {
            if (p + 1 >= end || p[1] != '>')
                return NULL;
            t->self_closing = true;
            return p + 2;
        }
        const char *an = p;
        while (p < end && *p != '=' && !scan_space(*p) && *p != '>' && *p != '/')
            p++;
        size_t anl = (size_t)(p - an);
        while (p < end && scan_space(*p))
            p++;
        if (anl == 0 || p >= end || *p != '=')
            return NULL;
        p++;
        while (p < end && scan_space(*p))
            p++;
        if (p >= end || (*p != '"' && *p != '\''))
            return NULL;
        const char *v = p + 1;
        const char *q = memchr(v, *p, (size_t)(end - v));
        if (q == NULL)
            return NULL;
        if (span_is(an, anl, "xmlns")) {
            t->xmlns = v;
            t->xmlns_len = (size_t)(q - v);
        } else if (span_is(an, anl, "id")) {
            t->id = v;
            t->id_len = (size_t)(q - v);
        }
        p = q + 1;
    }
}

/* Appends the code point c as UTF-8; -1 when it is not a character XML allows. */
static int put_utf8(struct buf *out, unsigned long c)
{
    unsigned char u[4];
    size_t n;
    if (c == 0 || (c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF || c == 0xFFFE || c == 0xFFFF ||
        (c < 0x20 && c != '\t' && c != '\n' && c != '\r'))
        return -1;
    if (c < 0x80) {
        u[0] = (unsigned char)c;
        n = 1;
    } else if (c < 0x800) {
        u[0] = (unsigned char)(0xC0 | (c >> 6));
        u[1] = (unsigned char)(0x80 | (c & 0x3F));
        n = 2;
    } else if (c < 0x10000) {
        u[0] = (unsigned char)(0xE0 | (c >> 12));
        u[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (c & 0x3F));
        n = 3;
    } else {
        u[0] = (unsigned char)(0xF0 | (c >> 18));
        u[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
        u[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        u[3] = (unsigned char)(0x80 | (c & 0x3F));
        n = 4;
    }
    buf_append(out, u, n);
    return 0;
}

/* Appends s[0..n) with its entity and character references replaced; -1 on a
 * reference the scan does not know (the caller parses instead). */
static int scan_unescape(const char *s, size_t n, struct buf *out)
{
    const char *end = s + n;
    while (s < end) {
        const char *amp = memchr(s, '&', (size_t)(end - s));
        if (amp == NULL) {
            buf_append(out, s, (size_t)(end - s));
            return 0;
        }
        buf_append(out, s, (size_t)(amp - s));
        const char *semi = memchr(amp, ';', (size_t)(end - amp));
        if (semi == NULL)
            return -1;
        const char *r = amp + 1;
        size_t rl = (size_t)(semi - r);
        if (span_is(r, rl, "amp")) {
            buf_append(out, "&", 1);
        } else if (span_is(r, rl, "lt")) {
            buf_append(out, "<", 1);
        } else if (span_is(r, rl, "gt")) {
            buf_append(out, ">", 1);
        } else if (span_is(r, rl, "quot")) {
            buf_append(out, "\"", 1);
        } else if (span_is(r, rl, "apos")) {
            buf_append(out, "'", 1);
        } else if (rl >= 2 && r[0] == '#') {
            bool hex = r[1] == 'x';
            const char *d = r + (hex ? 2 : 1);
            if (d == semi || semi - d > 8)
                return -1;
            unsigned long c = 0;
            for (; d < semi; d++) {
                int v;
                if (*d >= '0' && *d <= '9')
                    v = *d - '0';
                else if (hex && *d >= 'a' && *d <= 'f')
                    v = *d - 'a' + 10;
                else if (hex && *d >= 'A' && *d <= 'F')
                    v = *d - 'A' + 10;
                else
                    return -1;
                c = c * (hex ? 16 : 10) + (unsigned long)v;
            }
            if (put_utf8(out, c) == -1)
                return -1;
        } else {
            return -1;
        }
        s = semi + 1;
    }
    return 0;
}

int mam_scan_message(const char *xml, size_t len, char **body, char **origin_id)
{
    *body = NULL;
    *origin_id = NULL;
    const char *p = xml, *end = xml + len;
    struct scan_tag t;
    if (len < 9 || memcmp(xml, "<message", 8) != 0)
        return -1;
    p = scan_start_tag(p, end, &t);
    if (p == NULL || !span_is(t.name, t.name_len, "message") ||
        (t.xmlns != NULL && !span_is(t.xmlns, t.xmlns_len, XML_NS_CLIENT)))
        return -1;
    if (t.self_closing)
        return 0;
    struct buf text;
    buf_init(&text);
    bool have_body = false, in_body = false;
    unsigned depth = 1;
    while (depth > 0) {
        const char *lt = memchr(p, '<', (size_t)(end - p));
        if (lt == NULL)
            goto fail;
        if (in_body && scan_unescape(p, (size_t)(lt - p), &text) == -1)
            goto fail;
        p = lt;
        if (p + 1 >= end || p[1] == '!' || p[1] == '?')
            goto fail;      /* CDATA, comments, PIs: not from our serializer */
        if (p[1] == '/') {
            const char *gt = memchr(p, '>', (size_t)(end - p));
            if (gt == NULL)
                goto fail;
            p = gt + 1;
            depth--;
            if (in_body && depth == 1) {
                in_body = false;
                buf_append(&text, "", 1);
                *body = text.data;
                buf_init(&text);
            }
            continue;
        }
        p = scan_start_tag(p, end, &t);
        if (p == NULL || in_body)
            goto fail;      /* markup inside the body: let the parser say what its text is */
        if (depth == 1) {
            bool client = t.xmlns == NULL || span_is(t.xmlns, t.xmlns_len, XML_NS_CLIENT);
            if (!have_body && client && span_is(t.name, t.name_len, "body")) {
                have_body = true;
                if (t.self_closing)
                    *body = xstrdup("");
                else
                    in_body = true;
            } else if (*origin_id == NULL && span_is(t.name, t.name_len, "origin-id") && t.xmlns != NULL &&
                       span_is(t.xmlns, t.xmlns_len, "urn:xmpp:sid:0") && t.id != NULL) {
                struct buf id;
                buf_init(&id);
                if (scan_unescape(t.id, t.id_len, &id) == -1) {
                    buf_release(&id);
                    goto fail;
                }
                buf_append(&id, "", 1);
                *origin_id = id.data;
            }
        }
        if (!t.self_closing)
            depth++;
    }
    buf_release(&text);
    return 0;
fail:
    buf_release(&text);
    xfree(body);
    xfree(origin_id);
    return -1;
}

/* ---- intake ------------------------------------------------------------------------------- */

/* Copies s (NULL as "") into *cursor and advances it. */
static char *pack(char **cursor, const char *s, size_t n)
{
    char *d = *cursor;
    if (n > 0)
        memcpy(d, s, n);
    d[n] = '\0';
    *cursor = d + n + 1;
    return d;
}

static size_t len_or_0(const char *s)
{
    return s != NULL ? strlen(s) : 0;
}

/* An archive owner's domain: a hosted domain, or the MUC service of one (a room's archive,
 * written by router/muc.c); the second is looked at only for owners not at a hosted domain. */
static bool owner_domain_ok(const struct cfg *c, const char *domain)
{
    if (cfg_is_local_domain(c, domain))
        return true;
    if (!c->modules.muc_enabled)
        return false;
    bool ok = false;
    for (size_t i = 0; i < c->ndomains && !ok; i++) {
        char *h = cfg_muc_host(c, c->domains[i]);
        ok = h != NULL && strcasecmp(h, domain) == 0;
        free(h);
    }
    return ok;
}

static void on_archive_write(struct archive *a, const Mk__Envelope *e)
{
    const Mk__ArchiveWrite *aw = e->archive;
    const char *owner = aw->owner != NULL ? aw->owner : "";
    const char *at = strchr(owner, '@');
    bool valid = at != NULL && at != owner && at[1] != '\0' && strchr(at + 1, '/') == NULL &&
                 aw->peer != NULL && aw->peer[0] != '\0' && aw->xml.len > 0 &&
                 memchr(aw->xml.data, '\0', aw->xml.len) == NULL && owner_domain_ok(a->node->cfg, at + 1);
    const char *xml = (const char *)aw->xml.data;
    size_t xml_len = valid ? aw->xml.len : 0;
    const char *body = aw->body != NULL ? aw->body : "";
    const char *origin_id = aw->origin_id != NULL && aw->origin_id[0] != '\0' ? aw->origin_id : NULL;
    char *found_body = NULL, *found_oid = NULL;
    /* The router sends the bytes only (it never parses on the hot path): the body for
     * full-text search and the origin-id come out of them here, by a scan of what our
     * serializer writes, or by a parse for anything else. */
    if (valid && body[0] == '\0' && memmem(xml, xml_len, "<body", 5) != NULL) {
        if (mam_scan_message(xml, xml_len, &found_body, &found_oid) == -1) {
            struct xml_node *msg = mam_parse_stanza(xml, xml_len);
            if (msg != NULL) {
                struct xml_node *b = xml_child(msg, "body", XML_NS_CLIENT);
                if (b != NULL)
                    found_body = xml_text(b);
                struct xml_node *oid = xml_child(msg, "origin-id", "urn:xmpp:sid:0");
                if (oid != NULL && xml_attr(oid, "id") != NULL)
                    found_oid = xstrdup(xml_attr(oid, "id"));
                xml_free(&msg);
            }
        }
        if (found_body != NULL)
            body = found_body;
        if (origin_id == NULL)
            origin_id = found_oid;
    }
    const char *sender = e->rc_seq != 0 && e->sender != NULL ? e->sender : NULL;
    const char *peer = aw->peer != NULL ? aw->peer : "";
    const char *peer_resource = aw->peer_resource != NULL ? aw->peer_resource : "";
    size_t owner_len = strlen(owner), user_len = at != NULL ? (size_t)(at - owner) : 0;
    size_t domain_len = at != NULL ? owner_len - user_len - 1 : 0;
    size_t size = len_or_0(sender) + owner_len + user_len + domain_len + strlen(peer) + strlen(peer_resource) +
                  len_or_0(origin_id) + xml_len + strlen(body) + 9;
    struct arch_item *it = xmalloc(sizeof *it + size);
    memset(it, 0, sizeof *it);
    char *cur = it->strs;
    it->a = a;
    it->state = ITEM_PREFS;
    if (e->rc_seq != 0) {
        it->sender = sender != NULL ? pack(&cur, sender, strlen(sender)) : NULL;
        it->epoch = e->rc_epoch;
        it->seq = e->rc_seq;
    }
    it->owner = pack(&cur, owner, owner_len);
    it->user = pack(&cur, owner, user_len);
    it->domain = pack(&cur, at != NULL ? at + 1 : "", domain_len);
    it->peer = pack(&cur, peer, strlen(peer));
    it->peer_resource = pack(&cur, peer_resource, strlen(peer_resource));
    it->origin_id = origin_id != NULL ? pack(&cur, origin_id, strlen(origin_id)) : NULL;
    it->xml = pack(&cur, xml, xml_len);
    it->body = pack(&cur, body, strlen(body));
    it->outgoing = aw->outgoing;
    it->stamp_us = aw->stamp_us;
    free(found_body);
    free(found_oid);
    /* Queue first: even an invalid write is acknowledged in its turn. */
    if (a->tail != NULL)
        a->tail->next = it;
    else
        a->head = it;
    a->tail = it;
    a->nitems++;
    a->nundone++;
    it->arrived = ev_now(a->node->loop);
    /* Where this write stands on its channel: the fences of queries name such places. */
    struct fence_pos place = {0, 0, 0};
    if (sender != NULL) {
        place.writer = rchan_sender_key(sender);
        place.epoch = e->rc_epoch;
        place.seq = e->rc_seq;
    }
    if (!valid) {
        fence_seen(a->fences, &place, e->rc_base);
        char sample[128];
        log_warn("mam_write_invalid", "from=%s owner=\"%s\"", e->sender != NULL ? e->sender : "",
                 mk_sanitize(sample, sizeof sample, it->owner, strlen(it->owner) > 24 ? 24 : strlen(it->owner)));
        mark_done(it, "invalid");
        ack_done(a);
        return;
    }
    it->id = aw->mam_id != 0 ? aw->mam_id : mamid_next(&a->ids);
    if (it->stamp_us == 0)
        it->stamp_us = mamid_us(it->id);
    fence_arrived(a->fences, &it->fence, it->owner, &place, e->rc_base);
    prefs_cache_get(a->prefs, it->owner, on_item_prefs, it);
}

bool archive_on_envelope(struct archive *a, Mk__Envelope **envp)
{
    const Mk__Envelope *e = *envp;
    switch (e->payload_case) {
    case MK__ENVELOPE__PAYLOAD_ARCHIVE:
        if (e->archive == NULL || e->archive->offline)
            return false;
        if (e->rc_seq != 0 && a->max_pending > 0 && a->nundone >= a->max_pending) {
            /* Bounded: not taken (nor acknowledged). Its sender keeps it and re-sends it
             * when its acks stall (rchan.h); its window fills meanwhile, and past it the
             * sender counts back-pressure. Checked before rchan_rx_check so that the
             * write stays the next one expected from its sender. */
            metric_inc(a->m_refused, NULL);
            if (a->refused_logged++ % 10000 == 0)
                log_warn("mam_archive_full", "pending_rows=%zu max=%zu refused_total=%llu", a->nundone,
                         a->max_pending, a->refused_logged);
            return true;
        }
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
    a->fences = fence_table_new();
    int gen = mamid_generator(CFG_ROLE_MAM, n->self->index);
    mamid_gen_init(&a->ids, gen >= 0 ? (unsigned)gen : 239u);
    a->batch_rows = n->cfg->modules.mam_batch_rows > 0 ? n->cfg->modules.mam_batch_rows : 256;
    a->batch_ms = n->cfg->modules.mam_batch_ms;
    a->max_pending = n->cfg->limits.mam_max_pending_rows;
    /* PostgreSQL commits batches side by side on the pool's connections (one stays
     * free for queries when there are three or more). sqlite's one writer commits the
     * batches handed to it while it was busy together, in one transaction (group
     * commit, store_sqlite.c): the rows that arrive during a commit go into the next
     * one, which costs less per row than a transaction of their own (two rows of one
     * owner share their index pages only inside one; docs/BENCHMARKS-MAM.md). */
    int pool = n->cfg->storage.pool_size;
    a->max_inflight = 1;
    if (strcmp(store_driver(st), "pgsql") == 0 && pool > 1)
        a->max_inflight = pool >= 3 ? (unsigned)pool - 1 : (unsigned)pool;
    else if (strcmp(store_driver(st), "sqlite") == 0)
        a->max_inflight = MAX_INFLIGHT;
    if (a->max_inflight > MAX_INFLIGHT)
        a->max_inflight = MAX_INFLIGHT;
    for (size_t i = 0; i < MAX_INFLIGHT; i++)
        a->batches[i].a = a;
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
    a->m_pending_rows = metrics_gauge(n->metrics, "meerkat_mam_pending_rows",
                                      "Archive rows received and not yet committed (or skipped by the prefs)", NULL);
    a->m_oldest_pending = metrics_gauge(n->metrics, "meerkat_mam_oldest_pending_seconds",
                                        "Age of the oldest archive row received and not yet committed, 0 when none",
                                        NULL);
    a->m_wal_pages = metrics_gauge(n->metrics, "meerkat_store_wal_pages",
                                   "sqlite: pages in the write-ahead log after the last commit", NULL);
    a->m_checkpoints = metrics_counter(n->metrics, "meerkat_store_checkpoints_total",
                                       "sqlite: WAL checkpoints run beside the commits, by mode (restart: the WAL "
                                       "had reached its bound and the writer ran it before its next transaction)",
                                       "mode");
    a->m_checkpoint_max = metrics_gauge(n->metrics, "meerkat_store_checkpoint_seconds_max",
                                        "sqlite: the longest WAL checkpoint so far", NULL);
    a->m_commits = metrics_counter(n->metrics, "meerkat_store_commits_total",
                                   "sqlite: transactions the writer committed", NULL);
    a->m_grouped = metrics_counter(n->metrics, "meerkat_store_grouped_batches_total",
                                   "sqlite: archive batches committed in one transaction with the batches queued "
                                   "next to them (group commit)", NULL);
    a->m_refused = metrics_counter(n->metrics, "meerkat_mam_archive_refused_total",
                                   "Archive writes refused because limits.mam_max_pending_rows rows were pending "
                                   "(their sender re-sends them)",
                                   NULL);
    a->m_queries = metrics_counter(n->metrics, "meerkat_mam_queries_total", "MAM IQs by kind", "kind");
    a->m_query_waits = metrics_counter(n->metrics, "meerkat_mam_query_waits_total",
                                       "MAM queries that waited for their owner's writes, by how the wait ended "
                                       "(committed, timeout: answered anyway)",
                                       "result");
    return a;
}

void archive_count_query(struct archive *a, const char *kind)
{
    metric_inc(a->m_queries, kind);
}

void archive_count_wait(struct archive *a, const char *result)
{
    metric_inc(a->m_query_waits, result);
}

void archive_free(struct archive **ap)
{
    if (ap == NULL || *ap == NULL)
        return;
    struct archive *a = *ap;
    ev_timer_stop(a->node->loop, &a->batch_timer);
    /* Waiting queries are dropped unanswered (their c2s times them out), before the
     * items their owners' entries point at go. */
    fence_table_free(&a->fences);
    struct arch_item *it = a->head;
    while (it != NULL) {
        struct arch_item *n = it->next;
        free(it);
        it = n;
    }
    for (size_t i = 0; i < MAX_INFLIGHT; i++)
        free(a->batches[i].items);
    free(a->values);
    free(a->nums);
    prefs_cache_free(&a->prefs);
    rchan_rx_free(&a->rx);
    free(a);
    *ap = NULL;
}
