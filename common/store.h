/* common/store.h - asynchronous storage on the loop: named prepared statements over sqlite or PostgreSQL. */
#ifndef MK_COMMON_STORE_H
#define MK_COMMON_STORE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "cfg.h"

/* Every statement the project runs is listed once in store_stmts.c with its SQL for
 * both drivers (sqlite with ?N, PostgreSQL with $N) and prepared at open. Parameters
 * and results travel as text (NULL for SQL NULL); bytes are exact, so 4-byte UTF-8
 * is kept intact. */
enum store_stmt {
    STORE_USER_CREATE = 0,    /* user, domain, sha1 salt/iter/stored/server, sha256 salt/iter/stored/server -> affected 0 if taken */
    STORE_USER_GET,           /* user, domain -> 1 row: sha1 salt,iter,stored,server, sha256 salt,iter,stored,server */
    STORE_USER_SET_PASSWORD,  /* user, domain, the 8 credential columns */
    STORE_USER_DELETE,        /* user, domain: the user and all their data (roster, vcard, private, ...) */
    STORE_USER_LIST,          /* domain -> rows: user */
    STORE_ROSTER_GET,         /* user, domain -> rows: jid, name, subscription, ask, groups (\n separated), approved */
    STORE_ROSTER_GET_ITEM,    /* user, domain, jid -> 0/1 row as above */
    STORE_ROSTER_SET,         /* user, domain, jid, name, subscription, ask, groups, approved (upsert) */
    STORE_ROSTER_DELETE,      /* user, domain, jid */
    STORE_ROSTER_VERSION_GET, /* user, domain -> 0/1 row: version */
    STORE_ROSTER_VERSION_BUMP,/* user, domain (upsert version = version + 1) */
    STORE_ROSTER_COUNT,       /* user, domain -> 1 row: items */
    STORE_VCARD_GET,          /* user, domain -> 0/1 row: xml */
    STORE_VCARD_SET,          /* user, domain, xml */
    STORE_PRIVATE_GET,        /* user, domain, namespace -> 0/1 row: xml */
    STORE_PRIVATE_SET,        /* user, domain, namespace, xml */
    STORE_BLOCK_LIST,         /* user, domain -> rows: jid */
    STORE_BLOCK_ADD,          /* user, domain, jid */
    STORE_BLOCK_REMOVE,       /* user, domain, jid */
    STORE_BLOCK_CLEAR,        /* user, domain */
    STORE_LAST_GET,           /* user, domain -> 0/1 row: seconds, status */
    STORE_LAST_SET,           /* user, domain, seconds, status */
    STORE_OFFLINE_ADD,        /* user, domain, id, stamp_us, from, xml */
    STORE_OFFLINE_COUNT,      /* user, domain -> 1 row: count */
    STORE_OFFLINE_FETCH,      /* user, domain -> rows in arrival order: id, stamp_us, from, xml */
    STORE_OFFLINE_DELETE_UPTO,/* user, domain, id: delete rows with id <= */
    STORE_OFFLINE_DELETE_IDS, /* user, domain, ids ("1,2,3", decimal, comma-separated): delete exactly those rows */
    /* XEP-0313 archive (mam/archive.c, mam/query.c, mam/prefs.c). Ids travel as decimal text. */
    STORE_MAM_INSERT,         /* user, domain, id, peer, peer_resource, outgoing 0/1, origin_id|NULL, stamp_us, xml, body:
                               * idempotent on (user, domain, id); a row for an unknown user is skipped (affected 0) */
    STORE_MAM_ID_GET,         /* user, domain, id -> 0/1 row: id */
    /* Pages: user, domain, lo, hi (lo < id < hi), limit, offset [, peer, resource|NULL] [, fts text]
     * -> rows: id, peer, peer_resource, outgoing, stamp_us, xml. The eight variants are in this
     * order so that STORE_MAM_PAGE_ASC + (desc ? 1 : 0) + (with ? 2 : 0) + (fts ? 4 : 0) picks one. */
    STORE_MAM_PAGE_ASC,
    STORE_MAM_PAGE_DESC,
    STORE_MAM_PAGE_WITH_ASC,
    STORE_MAM_PAGE_WITH_DESC,
    STORE_MAM_PAGE_FTS_ASC,
    STORE_MAM_PAGE_FTS_DESC,
    STORE_MAM_PAGE_WITH_FTS_ASC,
    STORE_MAM_PAGE_WITH_FTS_DESC,
    /* Counts over the same filter: user, domain, lo, hi, pivot, cap [, peer, resource|NULL] [, fts]
     * -> 1 row: matching rows (at most cap), of which with id < pivot.
     * STORE_MAM_COUNT + (with ? 1 : 0) + (fts ? 2 : 0). */
    STORE_MAM_COUNT,
    STORE_MAM_COUNT_WITH,
    STORE_MAM_COUNT_FTS,
    STORE_MAM_COUNT_WITH_FTS,
    STORE_MAM_PREFS_GET,      /* user, domain -> 0/1 row: default_mode, always_jids, never_jids (\n separated) */
    STORE_MAM_PREFS_SET,      /* user, domain, default_mode, always_jids, never_jids (upsert) */
    /* For store_batch only: the parameters of STORE_MAM_INSERT, one row per archived
     * message; each row is idempotent and skipped for an unknown user as there. */
    STORE_MAM_INSERT_BATCH,
    /* XEP-0357 registrations (c2s/push.c, pusher/xep0357.c, meerkat ctl push). */
    STORE_PUSH_REG_SET,       /* user, domain, pubsub, node, form, created_us, max: insert or replace the
                               * (user, pubsub, node) row; affected 0 when the user already has max
                               * other registrations (nothing written) */
    STORE_PUSH_REG_DELETE,    /* user, domain, pubsub, node */
    STORE_PUSH_REG_DELETE_PUBSUB, /* user, domain, pubsub: every node of that service */
    STORE_PUSH_REG_LIST,      /* user, domain -> rows in enable order: pubsub, node, form */
    /* The inbox (c2s/inbox.c): one row per (user, peer bare JID). */
    STORE_INBOX_OUT,          /* user, domain, peer, stamp_us, xml: the user sent it (upsert, unread 0) */
    STORE_INBOX_IN,           /* user, domain, peer, stamp_us, xml: the peer sent it (upsert, unread + 1) */
    STORE_INBOX_READ,         /* user, domain, peer: unread 0 */
    STORE_INBOX_UNREAD,       /* user, domain, peer: unread at least 1 */
    STORE_INBOX_LIST,         /* user, domain -> rows newest first (at most 10,000): peer, stamp_us, xml, unread */
    STORE_INBOX_GET,          /* user, domain, peer -> 0/1 row: stamp_us, xml, unread */
    /* PEP (c2s/pep.c): an account's nodes and their items; seq orders items (newest highest). */
    STORE_PEP_NODE_GET,       /* user, domain, node -> 0/1 row: access_model, persist (0/1), max_items */
    STORE_PEP_NODE_CREATE,    /* user, domain, node, access_model, persist, max_items, max_nodes: affected 0
                               * when the node exists or the user already has max_nodes nodes */
    STORE_PEP_NODE_LIST,      /* user, domain -> rows by node: node, access_model */
    STORE_PEP_NODE_CONFIG,    /* user, domain, node, access_model, persist, max_items -> affected */
    STORE_PEP_NODE_DELETE,    /* user, domain, node (its items go with it) -> affected */
    STORE_PEP_ITEM_PUT,       /* user, domain, node, item_id, seq, xml (upsert: a new seq) */
    STORE_PEP_ITEM_TRIM,      /* user, domain, node, keep: all but the keep newest items go */
    STORE_PEP_ITEMS,          /* user, domain, node, limit -> rows newest first: item_id, xml */
    STORE_PEP_ITEM_GET,       /* user, domain, node, item_id -> 0/1 row: xml */
    STORE_PEP_ITEM_DELETE,    /* user, domain, node, item_id -> affected */
    STORE_PEP_LAST_ITEMS,     /* owners (JSON array of [user, domain]), nodes (JSON array of names), limit
                               * -> rows: user, domain, node, access_model, item_id, xml: the newest item of
                               * each of those owners' nodes with one of those names */
    /* Persistent group chat rooms (router/muc.c): one row per room, its state a document of
     * router/muc_state.c. */
    STORE_MUC_ROOM_GET,       /* room -> 0/1 row: state */
    STORE_MUC_ROOM_PUT,       /* room, service, public 0/1, name|NULL, state, updated_us (upsert) */
    STORE_MUC_ROOM_DELETE,    /* room -> affected */
    STORE_MUC_ROOM_LIST,      /* service, limit -> rows by room: room, name (public rooms only) */
    STORE_MAM_DELETE_OWNER,   /* user, domain: the whole archive of that owner (a temporary room's, when it goes) */
    /* A message of an archive replaced (a XEP-0425 tombstone), run as one store_txn in this
     * order: STORE_MAM_FTS_FORGET and STORE_MAM_FTS_INDEX keep sqlite's full-text index
     * (external content) in step with the row; PostgreSQL's tsvector column follows body
     * by itself, so there they only read the row. */
    STORE_MAM_FTS_FORGET,     /* user, domain, id: the row's body leaves the full-text index */
    STORE_MAM_REPLACE,        /* user, domain, id, xml: the row's xml replaced, its body emptied -> affected */
    STORE_MAM_FTS_INDEX,      /* user, domain, id: the row's body enters the full-text index */
    STORE_STMT_COUNT,
};

struct store_result {
    int ok;                 /* 0 = success; -1 = failure (error holds one sentence) */
    const char *error;
    size_t nrows;
    size_t ncols;
    const char *const *vals;/* nrows * ncols, row-major, NULL for SQL NULL; borrowed until the callback returns */
    const size_t *lens;
    uint64_t affected;      /* rows changed by INSERT/UPDATE/DELETE */
    bool refused;           /* with ok=-1: the query never ran, the queue was full (back-pressure:
                             * answer 'wait' / resource-constraint rather than a server error) */
};

/* The callback runs on the loop, never inside the call that queued the query. */
typedef void store_cb(void *ud, const struct store_result *res);

struct store;

/* Opens the configured driver (cfg->storage), applies the schema in deploy/sql/
 * (embedded copy) when the database does not have it yet, and prepares every
 * statement. sqlite: WAL, busy timeout; pgsql: non-blocking libpq connections
 * (pool_size), reconnecting with backoff when the server goes away, queries queued
 * meanwhile. Returns NULL with err on a configuration or schema error. */
struct store *store_open(struct ev_loop *loop, const struct cfg *cfg, char *err, size_t errlen);
void store_close(struct store **sp);

/* Queues one statement with nparams text parameters (copied; NULL = SQL NULL).
 * cb may be NULL. With limits.max_store_queue queries already waiting, the query
 * is refused: cb gets ok=-1 and refused=true (on the loop, like any result), and
 * nothing of it is kept. The same holds for store_txn and store_batch. */
void store_query(struct store *s, enum store_stmt stmt, const char *const *params, size_t nparams,
                 store_cb *cb, void *ud);

/* As store_query, for a read whose caller has itself waited for the writes it must see
 * (their callbacks ran: mam/fence.c) and needs no order with the other queries: on
 * sqlite it runs on a read connection of its own, beside the writes queued before it
 * (a MAM query does not wait behind a big archive batch); on PostgreSQL it is
 * store_query (the pool's connections run side by side anyway). A statement that
 * writes runs as store_query. */
void store_query_read(struct store *s, enum store_stmt stmt, const char *const *params, size_t nparams,
                      store_cb *cb, void *ud);

/* Runs the statements in one transaction: all or nothing; cb gets the result of the
 * last statement, or the first failure. */
struct store_op {
    enum store_stmt stmt;
    const char *const *params;
    size_t nparams;
};
void store_txn(struct store *s, const struct store_op *ops, size_t nops, store_cb *cb, void *ud);

/* Runs one row-wise statement (a *_BATCH statement) for nrows rows as one
 * transaction: all or nothing. values holds nrows * nparams text values, row-major
 * (NULL = SQL NULL); borrowed (copied). cb gets no rows and affected = the rows
 * changed over the whole batch. Why it exists: a per-row INSERT costs a round trip
 * and an executor start per row; on PostgreSQL the batch is ONE statement taking
 * one array per column (one round trip, one plan, whatever nrows); sqlite runs a
 * multi-row form of its cached statement between BEGIN and COMMIT, and commits the
 * batches of one statement queued behind each other in one transaction (up to 4,096
 * rows: a commit writes each page its rows touched once), each batch's callback as if
 * it had run alone (one that fails fails alone, the others are stored). */
void store_batch(struct store *s, enum store_stmt stmt, const char *const *values, size_t nrows, size_t nparams,
                 store_cb *cb, void *ud);

/* True while the backend is reachable (for /readyz). */
bool store_ready(const struct store *s);
/* Queries queued or running (for metrics). */
size_t store_pending(const struct store *s);
/* Queries refused because the queue was full, since the store opened (for metrics). */
unsigned long long store_refused(const struct store *s);
/* Times the driver was handed the queries queued in a loop turn (for metrics: queries per hand-off). */
unsigned long long store_handoffs(const struct store *s);
/* Runs the loop until every queued query has finished (admin tools, shutdown). */
void store_drain(struct store *s);
const char *store_driver(const struct store *s);

/* sqlite's write-ahead log and its checkpoints (run beside the commits, on a thread of
 * their own), for metrics, logs and tests. */
struct store_wal_stats {
    int wal_pages;                    /* pages in the WAL after the last commit */
    int wal_pages_max;                /* the most seen after a commit */
    unsigned long long runs;          /* checkpoints run */
    unsigned long long restarts;      /* of them, RESTART ones (the WAL had reached its bound) */
    unsigned long long busy;          /* of them, ones that could not finish (a reader or the writer) */
    unsigned long long failures;      /* of them, ones that failed otherwise (logged) */
    int64_t last_us, max_us;          /* duration of the last one and the longest */
    int last_wal_pages, last_copied;  /* the last one: WAL pages, and of them copied into the database */
    int64_t held_us_total, held_us_max; /* the writer's waits for a RESTART (the WAL at its bound) */
    unsigned long long commits;       /* the writer's transactions committed */
    unsigned long long grouped;       /* batches (store_batch) committed in one transaction with others */
};
/* Fills *out and returns 0, or returns -1 when the driver has no WAL (pgsql). Borrows s. */
int store_wal_stats(const struct store *s, struct store_wal_stats *out);
/* The statement's short name ("user_create"), for logs and metrics; "?" when out of range. */
const char *store_stmt_name(enum store_stmt stmt);
#endif
