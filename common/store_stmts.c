/* common/store_stmts.c - every SQL statement of the project, once per driver (sqlite ?N, PostgreSQL $N). */
#include "store_impl.h"

#define CRED_COLS "sha1_salt, sha1_iter, sha1_stored, sha1_server, " \
                  "sha256_salt, sha256_iter, sha256_stored, sha256_server"
#define ROSTER_COLS "jid, name, subscription, ask, groups, approved"

const struct store_stmt_def store_stmt_defs[STORE_STMT_COUNT] = {
    [STORE_USER_CREATE] = {
        "user_create", 10,
        "INSERT INTO users (username, domain, " CRED_COLS ") "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (username, domain) DO NOTHING",
        "INSERT INTO users (username, domain, " CRED_COLS ") "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (username, domain) DO NOTHING",
    },
    [STORE_USER_GET] = {
        "user_get", 2,
        "SELECT " CRED_COLS " FROM users WHERE username = ?1 AND domain = ?2",
        "SELECT " CRED_COLS " FROM users WHERE username = $1 AND domain = $2",
    },
    [STORE_USER_SET_PASSWORD] = {
        "user_set_password", 10,
        "UPDATE users SET sha1_salt = ?3, sha1_iter = ?4, sha1_stored = ?5, sha1_server = ?6, "
        "sha256_salt = ?7, sha256_iter = ?8, sha256_stored = ?9, sha256_server = ?10 "
        "WHERE username = ?1 AND domain = ?2",
        "UPDATE users SET sha1_salt = $3, sha1_iter = $4, sha1_stored = $5, sha1_server = $6, "
        "sha256_salt = $7, sha256_iter = $8, sha256_stored = $9, sha256_server = $10 "
        "WHERE username = $1 AND domain = $2",
    },
    /* The other tables reference users ON DELETE CASCADE. */
    [STORE_USER_DELETE] = {
        "user_delete", 2,
        "DELETE FROM users WHERE username = ?1 AND domain = ?2",
        /* The archive has no foreign key on PostgreSQL (insert speed): delete it here. */
        "WITH archive AS (DELETE FROM mam_message WHERE username = $1 AND domain = $2) "
        "DELETE FROM users WHERE username = $1 AND domain = $2",
    },
    [STORE_USER_LIST] = {
        "user_list", 1,
        "SELECT username FROM users WHERE domain = ?1 ORDER BY username",
        "SELECT username FROM users WHERE domain = $1 ORDER BY username",
    },
    [STORE_ROSTER_GET] = {
        "roster_get", 2,
        "SELECT " ROSTER_COLS " FROM roster WHERE username = ?1 AND domain = ?2 ORDER BY jid",
        "SELECT " ROSTER_COLS " FROM roster WHERE username = $1 AND domain = $2 ORDER BY jid",
    },
    [STORE_ROSTER_GET_ITEM] = {
        "roster_get_item", 3,
        "SELECT " ROSTER_COLS " FROM roster WHERE username = ?1 AND domain = ?2 AND jid = ?3",
        "SELECT " ROSTER_COLS " FROM roster WHERE username = $1 AND domain = $2 AND jid = $3",
    },
    /* approved is 0 or 1. */
    [STORE_ROSTER_SET] = {
        "roster_set", 8,
        "INSERT INTO roster (username, domain, " ROSTER_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
        "ON CONFLICT (username, domain, jid) DO UPDATE SET name = excluded.name, "
        "subscription = excluded.subscription, ask = excluded.ask, groups = excluded.groups, "
        "approved = excluded.approved",
        "INSERT INTO roster (username, domain, " ROSTER_COLS ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (username, domain, jid) DO UPDATE SET name = excluded.name, "
        "subscription = excluded.subscription, ask = excluded.ask, groups = excluded.groups, "
        "approved = excluded.approved",
    },
    [STORE_ROSTER_DELETE] = {
        "roster_delete", 3,
        "DELETE FROM roster WHERE username = ?1 AND domain = ?2 AND jid = ?3",
        "DELETE FROM roster WHERE username = $1 AND domain = $2 AND jid = $3",
    },
    [STORE_ROSTER_VERSION_GET] = {
        "roster_version_get", 2,
        "SELECT version FROM roster_version WHERE username = ?1 AND domain = ?2",
        "SELECT version FROM roster_version WHERE username = $1 AND domain = $2",
    },
    [STORE_ROSTER_VERSION_BUMP] = {
        "roster_version_bump", 2,
        "INSERT INTO roster_version (username, domain, version) VALUES (?1, ?2, 1) "
        "ON CONFLICT (username, domain) DO UPDATE SET version = roster_version.version + 1",
        "INSERT INTO roster_version (username, domain, version) VALUES ($1, $2, 1) "
        "ON CONFLICT (username, domain) DO UPDATE SET version = roster_version.version + 1",
    },
    [STORE_ROSTER_COUNT] = {
        "roster_count", 2,
        "SELECT count(*) FROM roster WHERE username = ?1 AND domain = ?2",
        "SELECT count(*) FROM roster WHERE username = $1 AND domain = $2",
    },
    [STORE_VCARD_GET] = {
        "vcard_get", 2,
        "SELECT xml FROM vcard WHERE username = ?1 AND domain = ?2",
        "SELECT xml FROM vcard WHERE username = $1 AND domain = $2",
    },
    [STORE_VCARD_SET] = {
        "vcard_set", 3,
        "INSERT INTO vcard (username, domain, xml) VALUES (?1, ?2, ?3) "
        "ON CONFLICT (username, domain) DO UPDATE SET xml = excluded.xml",
        "INSERT INTO vcard (username, domain, xml) VALUES ($1, $2, $3) "
        "ON CONFLICT (username, domain) DO UPDATE SET xml = excluded.xml",
    },
    [STORE_PRIVATE_GET] = {
        "private_get", 3,
        "SELECT xml FROM private_storage WHERE username = ?1 AND domain = ?2 AND namespace = ?3",
        "SELECT xml FROM private_storage WHERE username = $1 AND domain = $2 AND namespace = $3",
    },
    [STORE_PRIVATE_SET] = {
        "private_set", 4,
        "INSERT INTO private_storage (username, domain, namespace, xml) VALUES (?1, ?2, ?3, ?4) "
        "ON CONFLICT (username, domain, namespace) DO UPDATE SET xml = excluded.xml",
        "INSERT INTO private_storage (username, domain, namespace, xml) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (username, domain, namespace) DO UPDATE SET xml = excluded.xml",
    },
    [STORE_BLOCK_LIST] = {
        "block_list", 2,
        "SELECT jid FROM blocking WHERE username = ?1 AND domain = ?2 ORDER BY jid",
        "SELECT jid FROM blocking WHERE username = $1 AND domain = $2 ORDER BY jid",
    },
    [STORE_BLOCK_ADD] = {
        "block_add", 3,
        "INSERT INTO blocking (username, domain, jid) VALUES (?1, ?2, ?3) "
        "ON CONFLICT (username, domain, jid) DO NOTHING",
        "INSERT INTO blocking (username, domain, jid) VALUES ($1, $2, $3) "
        "ON CONFLICT (username, domain, jid) DO NOTHING",
    },
    [STORE_BLOCK_REMOVE] = {
        "block_remove", 3,
        "DELETE FROM blocking WHERE username = ?1 AND domain = ?2 AND jid = ?3",
        "DELETE FROM blocking WHERE username = $1 AND domain = $2 AND jid = $3",
    },
    [STORE_BLOCK_CLEAR] = {
        "block_clear", 2,
        "DELETE FROM blocking WHERE username = ?1 AND domain = ?2",
        "DELETE FROM blocking WHERE username = $1 AND domain = $2",
    },
    [STORE_LAST_GET] = {
        "last_get", 2,
        "SELECT seconds, status FROM last_activity WHERE username = ?1 AND domain = ?2",
        "SELECT seconds, status FROM last_activity WHERE username = $1 AND domain = $2",
    },
    [STORE_LAST_SET] = {
        "last_set", 4,
        "INSERT INTO last_activity (username, domain, seconds, status) VALUES (?1, ?2, ?3, ?4) "
        "ON CONFLICT (username, domain) DO UPDATE SET seconds = excluded.seconds, status = excluded.status",
        "INSERT INTO last_activity (username, domain, seconds, status) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (username, domain) DO UPDATE SET seconds = excluded.seconds, status = excluded.status",
    },
    /* Idempotent: a sender that re-sends after a restart does not duplicate. */
    [STORE_OFFLINE_ADD] = {
        "offline_add", 6,
        "INSERT INTO offline (username, domain, id, stamp_us, from_jid, xml) VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
        "ON CONFLICT (username, domain, id) DO NOTHING",
        "INSERT INTO offline (username, domain, id, stamp_us, from_jid, xml) VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (username, domain, id) DO NOTHING",
    },
    [STORE_OFFLINE_COUNT] = {
        "offline_count", 2,
        "SELECT count(*) FROM offline WHERE username = ?1 AND domain = ?2",
        "SELECT count(*) FROM offline WHERE username = $1 AND domain = $2",
    },
    [STORE_OFFLINE_FETCH] = {
        "offline_fetch", 2,
        "SELECT id, stamp_us, from_jid, xml FROM offline WHERE username = ?1 AND domain = ?2 ORDER BY id",
        "SELECT id, stamp_us, from_jid, xml FROM offline WHERE username = $1 AND domain = $2 ORDER BY id",
    },
    [STORE_OFFLINE_DELETE_UPTO] = {
        "offline_delete_upto", 3,
        "DELETE FROM offline WHERE username = ?1 AND domain = ?2 AND id <= ?3",
        "DELETE FROM offline WHERE username = $1 AND domain = $2 AND id <= $3",
    },
    /* The rows a session was given: a row stored meanwhile with a smaller id (another
     * writer's clock) is not one of them. */
    [STORE_OFFLINE_DELETE_IDS] = {
        "offline_delete_ids", 3,
        "DELETE FROM offline WHERE username = ?1 AND domain = ?2 AND instr(',' || ?3 || ',', ',' || id || ',') > 0",
        "DELETE FROM offline WHERE username = $1 AND domain = $2 AND id = ANY (string_to_array($3, ',')::bigint[])",
    },

    /* --- XEP-0313 archive ------------------------------------------------------------
     * An owner is an account, or a persistent group chat room (muc_room; its archive is
     * written by the room's router shard, router/muc.c): a row of anyone else is skipped.
     * Integers travel as text: sqlite CASTs them so comparisons use the integer index,
     * PostgreSQL casts to bigint. Every page is a keyset scan in id order of the
     * primary key (or of mam_message_peer with a peer), so its cost does not grow with
     * the archive. */
#define MAM_LINSERT \
        "INSERT INTO mam_message (username, domain, id, peer, peer_resource, outgoing, origin_id, stamp_us, xml, body) " \
        "SELECT ?1, ?2, CAST(?3 AS INTEGER), ?4, ?5, CAST(?6 AS INTEGER), ?7, CAST(?8 AS INTEGER), ?9, ?10 " \
        "WHERE EXISTS (SELECT 1 FROM users WHERE username = ?1 AND domain = ?2) " \
        "OR EXISTS (SELECT 1 FROM muc_room WHERE room = ?1 || '@' || ?2) " \
        "ON CONFLICT (username, domain, id) DO NOTHING"
    /* sqlite's full-text index (mam_fts, external content) is written by the statement
     * itself, not by a trigger: once per batch, for the rows the batch added - those past
     * the largest rowid before it (a new rowid is always past the largest one), and
     * under the transaction's write lock nobody else adds any. */
#define MAM_L_MAXROW "SELECT coalesce(max(rowid), 0) FROM mam_message"
#define MAM_L_FTS "INSERT INTO mam_fts (rowid, body) SELECT rowid, body FROM mam_message " \
                  "WHERE rowid > CAST(?1 AS INTEGER)"
    [STORE_MAM_INSERT] = {
        .name = "mam_insert", .nparams = 10,
        .sqlite = MAM_LINSERT,
        .pgsql = "INSERT INTO mam_message (username, domain, id, peer, peer_resource, outgoing, origin_id, stamp_us, xml, body) "
        "SELECT $1, $2, $3::bigint, $4, $5, $6::smallint, $7, $8::bigint, $9, $10 "
        "WHERE EXISTS (SELECT 1 FROM users WHERE username = $1 AND domain = $2) "
        "OR EXISTS (SELECT 1 FROM muc_room WHERE room = $1 || '@' || $2) "
        "ON CONFLICT (username, domain, id) DO NOTHING",
        .sqlite_before = MAM_L_MAXROW,
        .sqlite_after = MAM_L_FTS,
    },
    [STORE_MAM_ID_GET] = {
        "mam_id_get", 3,
        "SELECT id FROM mam_message WHERE username = ?1 AND domain = ?2 AND id = CAST(?3 AS INTEGER)",
        "SELECT id FROM mam_message WHERE username = $1 AND domain = $2 AND id = $3::bigint",
    },
#define MAM_SEL "SELECT id, peer, peer_resource, outgoing, stamp_us, xml FROM mam_message WHERE "
#define MAM_LQ "username = ?1 AND domain = ?2 AND id > CAST(?3 AS INTEGER) AND id < CAST(?4 AS INTEGER)"
#define MAM_PQ "username = $1 AND domain = $2 AND id > $3::bigint AND id < $4::bigint"
#define MAM_LQ_WITH " AND peer = ?7 AND (?8 IS NULL OR peer_resource = ?8)"
#define MAM_PQ_WITH " AND peer = $7 AND ($8::text IS NULL OR peer_resource = $8::text)"
#define MAM_LQ_FTS(n) " AND rowid IN (SELECT rowid FROM mam_fts WHERE mam_fts MATCH ?" #n ")"
#define MAM_PQ_FTS(n) " AND body_tsv @@ plainto_tsquery('simple', $" #n ")"
#define MAM_LQ_ASC " ORDER BY id ASC LIMIT CAST(?5 AS INTEGER) OFFSET CAST(?6 AS INTEGER)"
#define MAM_LQ_DESC " ORDER BY id DESC LIMIT CAST(?5 AS INTEGER) OFFSET CAST(?6 AS INTEGER)"
#define MAM_PQ_ASC " ORDER BY id ASC LIMIT $5::bigint OFFSET $6::bigint"
#define MAM_PQ_DESC " ORDER BY id DESC LIMIT $5::bigint OFFSET $6::bigint"
    [STORE_MAM_PAGE_ASC] = {"mam_page_asc", 6, MAM_SEL MAM_LQ MAM_LQ_ASC, MAM_SEL MAM_PQ MAM_PQ_ASC},
    [STORE_MAM_PAGE_DESC] = {"mam_page_desc", 6, MAM_SEL MAM_LQ MAM_LQ_DESC, MAM_SEL MAM_PQ MAM_PQ_DESC},
    [STORE_MAM_PAGE_WITH_ASC] = {
        "mam_page_with_asc", 8, MAM_SEL MAM_LQ MAM_LQ_WITH MAM_LQ_ASC, MAM_SEL MAM_PQ MAM_PQ_WITH MAM_PQ_ASC,
    },
    [STORE_MAM_PAGE_WITH_DESC] = {
        "mam_page_with_desc", 8, MAM_SEL MAM_LQ MAM_LQ_WITH MAM_LQ_DESC, MAM_SEL MAM_PQ MAM_PQ_WITH MAM_PQ_DESC,
    },
    [STORE_MAM_PAGE_FTS_ASC] = {
        "mam_page_fts_asc", 7, MAM_SEL MAM_LQ MAM_LQ_FTS(7) MAM_LQ_ASC, MAM_SEL MAM_PQ MAM_PQ_FTS(7) MAM_PQ_ASC,
    },
    [STORE_MAM_PAGE_FTS_DESC] = {
        "mam_page_fts_desc", 7, MAM_SEL MAM_LQ MAM_LQ_FTS(7) MAM_LQ_DESC, MAM_SEL MAM_PQ MAM_PQ_FTS(7) MAM_PQ_DESC,
    },
    [STORE_MAM_PAGE_WITH_FTS_ASC] = {
        "mam_page_with_fts_asc", 9, MAM_SEL MAM_LQ MAM_LQ_WITH MAM_LQ_FTS(9) MAM_LQ_ASC,
        MAM_SEL MAM_PQ MAM_PQ_WITH MAM_PQ_FTS(9) MAM_PQ_ASC,
    },
    [STORE_MAM_PAGE_WITH_FTS_DESC] = {
        "mam_page_with_fts_desc", 9, MAM_SEL MAM_LQ MAM_LQ_WITH MAM_LQ_FTS(9) MAM_LQ_DESC,
        MAM_SEL MAM_PQ MAM_PQ_WITH MAM_PQ_FTS(9) MAM_PQ_DESC,
    },
    /* Counting stops at cap rows, so a count never costs more than cap index entries. */
#define MAM_LCNT "SELECT count(*), coalesce(sum(CASE WHEN id < CAST(?5 AS INTEGER) THEN 1 ELSE 0 END), 0) " \
                 "FROM (SELECT id FROM mam_message WHERE "
#define MAM_PCNT "SELECT count(*), coalesce(sum(CASE WHEN id < $5::bigint THEN 1 ELSE 0 END), 0) " \
                 "FROM (SELECT id FROM mam_message WHERE "
#define MAM_LCAP " LIMIT CAST(?6 AS INTEGER)) t"
#define MAM_PCAP " LIMIT $6::bigint) t"
    [STORE_MAM_COUNT] = {"mam_count", 6, MAM_LCNT MAM_LQ MAM_LCAP, MAM_PCNT MAM_PQ MAM_PCAP},
    [STORE_MAM_COUNT_WITH] = {
        "mam_count_with", 8, MAM_LCNT MAM_LQ MAM_LQ_WITH MAM_LCAP, MAM_PCNT MAM_PQ MAM_PQ_WITH MAM_PCAP,
    },
    [STORE_MAM_COUNT_FTS] = {
        "mam_count_fts", 7, MAM_LCNT MAM_LQ MAM_LQ_FTS(7) MAM_LCAP, MAM_PCNT MAM_PQ MAM_PQ_FTS(7) MAM_PCAP,
    },
    [STORE_MAM_COUNT_WITH_FTS] = {
        "mam_count_with_fts", 9, MAM_LCNT MAM_LQ MAM_LQ_WITH MAM_LQ_FTS(9) MAM_LCAP,
        MAM_PCNT MAM_PQ MAM_PQ_WITH MAM_PQ_FTS(9) MAM_PCAP,
    },
    [STORE_MAM_PREFS_GET] = {
        "mam_prefs_get", 2,
        "SELECT default_mode, always_jids, never_jids FROM mam_prefs WHERE username = ?1 AND domain = ?2",
        "SELECT default_mode, always_jids, never_jids FROM mam_prefs WHERE username = $1 AND domain = $2",
    },
    [STORE_MAM_PREFS_SET] = {
        "mam_prefs_set", 5,
        "INSERT INTO mam_prefs (username, domain, default_mode, always_jids, never_jids) VALUES (?1, ?2, ?3, ?4, ?5) "
        "ON CONFLICT (username, domain) DO UPDATE SET default_mode = excluded.default_mode, "
        "always_jids = excluded.always_jids, never_jids = excluded.never_jids",
        "INSERT INTO mam_prefs (username, domain, default_mode, always_jids, never_jids) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (username, domain) DO UPDATE SET default_mode = excluded.default_mode, "
        "always_jids = excluded.always_jids, never_jids = excluded.never_jids",
    },
    /* The rows of a batch as one statement on PostgreSQL: each parameter is the array
     * of that column over the rows, and unnest zips them back into rows. sqlite runs
     * STORE_SQLITE_ROWS rows per statement (a VALUES list), the single-row form for the
     * rest, then the full-text index of them all, inside the batch's transaction. */
    [STORE_MAM_INSERT_BATCH] = {
        .name = "mam_insert_batch", .nparams = 10,
        .sqlite = MAM_LINSERT,
        .sqlite_rows =
        "INSERT INTO mam_message (username, domain, id, peer, peer_resource, outgoing, origin_id, stamp_us, xml, body) "
        "SELECT v.column1, v.column2, CAST(v.column3 AS INTEGER), v.column4, v.column5, CAST(v.column6 AS INTEGER), "
        "v.column7, CAST(v.column8 AS INTEGER), v.column9, v.column10 FROM (VALUES @ROWS@) AS v "
        "WHERE EXISTS (SELECT 1 FROM users WHERE users.username = v.column1 AND users.domain = v.column2) "
        "OR EXISTS (SELECT 1 FROM muc_room WHERE muc_room.room = v.column1 || '@' || v.column2) "
        "ON CONFLICT (username, domain, id) DO NOTHING",
        .sqlite_before = MAM_L_MAXROW,
        .sqlite_after = MAM_L_FTS,
        .pgsql = "INSERT INTO mam_message (username, domain, id, peer, peer_resource, outgoing, origin_id, stamp_us, xml, body) "
        "SELECT r.u, r.d, r.id, r.p, r.pr, r.o, r.oid, r.st, r.x, r.b "
        "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::smallint[], $7::text[], "
        "$8::bigint[], $9::text[], $10::text[]) AS r (u, d, id, p, pr, o, oid, st, x, b) "
        "WHERE EXISTS (SELECT 1 FROM users WHERE users.username = r.u AND users.domain = r.d) "
        "OR EXISTS (SELECT 1 FROM muc_room WHERE muc_room.room = r.u || '@' || r.d) "
        "ON CONFLICT (username, domain, id) DO NOTHING",
        .batch = true,
    },

    /* --- XEP-0357 push registrations ---------------------------------------------------
     * The bound on a user's registrations is in the insert itself, so one statement both
     * checks and writes (sessions enabling at the same instant on PostgreSQL can pass it by
     * one each, as with the block list). */
    [STORE_PUSH_REG_SET] = {
        "push_reg_set", 7,
        "INSERT INTO push_registration (username, domain, pubsub, node, form, created_us) "
        "SELECT ?1, ?2, ?3, ?4, ?5, CAST(?6 AS INTEGER) "
        "WHERE (SELECT count(*) FROM push_registration WHERE username = ?1 AND domain = ?2 "
        "AND NOT (pubsub = ?3 AND node = ?4)) < CAST(?7 AS INTEGER) "
        "ON CONFLICT (username, domain, pubsub, node) DO UPDATE SET form = excluded.form, "
        "created_us = excluded.created_us",
        "INSERT INTO push_registration (username, domain, pubsub, node, form, created_us) "
        "SELECT $1, $2, $3, $4, $5, $6::bigint "
        "WHERE (SELECT count(*) FROM push_registration WHERE username = $1 AND domain = $2 "
        "AND NOT (pubsub = $3 AND node = $4)) < $7::bigint "
        "ON CONFLICT (username, domain, pubsub, node) DO UPDATE SET form = excluded.form, "
        "created_us = excluded.created_us",
    },
    [STORE_PUSH_REG_DELETE] = {
        "push_reg_delete", 4,
        "DELETE FROM push_registration WHERE username = ?1 AND domain = ?2 AND pubsub = ?3 AND node = ?4",
        "DELETE FROM push_registration WHERE username = $1 AND domain = $2 AND pubsub = $3 AND node = $4",
    },
    [STORE_PUSH_REG_DELETE_PUBSUB] = {
        "push_reg_delete_pubsub", 3,
        "DELETE FROM push_registration WHERE username = ?1 AND domain = ?2 AND pubsub = ?3",
        "DELETE FROM push_registration WHERE username = $1 AND domain = $2 AND pubsub = $3",
    },
    [STORE_PUSH_REG_LIST] = {
        "push_reg_list", 2,
        "SELECT pubsub, node, form FROM push_registration WHERE username = ?1 AND domain = ?2 "
        "ORDER BY created_us, pubsub, node",
        "SELECT pubsub, node, form FROM push_registration WHERE username = $1 AND domain = $2 "
        "ORDER BY created_us, pubsub, node",
    },
    /* A write that arrives after a newer one of the same entry (two c2s processes, two
     * pool connections) keeps the newer message. */
    [STORE_INBOX_OUT] = {
        "inbox_out", 5,
        "INSERT INTO inbox (username, domain, peer, stamp_us, xml, unread) VALUES (?1, ?2, ?3, ?4, ?5, 0) "
        "ON CONFLICT (username, domain, peer) DO UPDATE SET stamp_us = max(inbox.stamp_us, excluded.stamp_us), "
        "xml = CASE WHEN excluded.stamp_us >= inbox.stamp_us THEN excluded.xml ELSE inbox.xml END, unread = 0",
        "INSERT INTO inbox (username, domain, peer, stamp_us, xml, unread) VALUES ($1, $2, $3, $4, $5, 0) "
        "ON CONFLICT (username, domain, peer) DO UPDATE SET stamp_us = GREATEST(inbox.stamp_us, excluded.stamp_us), "
        "xml = CASE WHEN excluded.stamp_us >= inbox.stamp_us THEN excluded.xml ELSE inbox.xml END, unread = 0",
    },
    [STORE_INBOX_IN] = {
        "inbox_in", 5,
        "INSERT INTO inbox (username, domain, peer, stamp_us, xml, unread) VALUES (?1, ?2, ?3, ?4, ?5, 1) "
        "ON CONFLICT (username, domain, peer) DO UPDATE SET stamp_us = max(inbox.stamp_us, excluded.stamp_us), "
        "xml = CASE WHEN excluded.stamp_us >= inbox.stamp_us THEN excluded.xml ELSE inbox.xml END, "
        "unread = inbox.unread + 1",
        "INSERT INTO inbox (username, domain, peer, stamp_us, xml, unread) VALUES ($1, $2, $3, $4, $5, 1) "
        "ON CONFLICT (username, domain, peer) DO UPDATE SET stamp_us = GREATEST(inbox.stamp_us, excluded.stamp_us), "
        "xml = CASE WHEN excluded.stamp_us >= inbox.stamp_us THEN excluded.xml ELSE inbox.xml END, "
        "unread = inbox.unread + 1",
    },
    [STORE_INBOX_READ] = {
        "inbox_read", 3,
        "UPDATE inbox SET unread = 0 WHERE username = ?1 AND domain = ?2 AND peer = ?3",
        "UPDATE inbox SET unread = 0 WHERE username = $1 AND domain = $2 AND peer = $3",
    },
    [STORE_INBOX_UNREAD] = {
        "inbox_unread", 3,
        "UPDATE inbox SET unread = 1 WHERE username = ?1 AND domain = ?2 AND peer = ?3 AND unread = 0",
        "UPDATE inbox SET unread = 1 WHERE username = $1 AND domain = $2 AND peer = $3 AND unread = 0",
    },
    [STORE_INBOX_LIST] = {
        "inbox_list", 2,
        "SELECT peer, stamp_us, xml, unread FROM inbox WHERE username = ?1 AND domain = ?2 "
        "ORDER BY stamp_us DESC, peer LIMIT 10000",
        "SELECT peer, stamp_us, xml, unread FROM inbox WHERE username = $1 AND domain = $2 "
        "ORDER BY stamp_us DESC, peer LIMIT 10000",
    },
    [STORE_INBOX_GET] = {
        "inbox_get", 3,
        "SELECT stamp_us, xml, unread FROM inbox WHERE username = ?1 AND domain = ?2 AND peer = ?3",
        "SELECT stamp_us, xml, unread FROM inbox WHERE username = $1 AND domain = $2 AND peer = $3",
    },

    /* --- PEP (XEP-0163) ---------------------------------------------------------------------
     * The bound on a user's nodes is in the insert, as for push registrations. */
    [STORE_PEP_NODE_GET] = {
        "pep_node_get", 3,
        "SELECT access_model, persist, max_items FROM pep_node WHERE username = ?1 AND domain = ?2 AND node = ?3",
        "SELECT access_model, persist, max_items FROM pep_node WHERE username = $1 AND domain = $2 AND node = $3",
    },
    [STORE_PEP_NODE_CREATE] = {
        "pep_node_create", 7,
        "INSERT INTO pep_node (username, domain, node, access_model, persist, max_items) "
        "SELECT ?1, ?2, ?3, ?4, CAST(?5 AS INTEGER), CAST(?6 AS INTEGER) "
        "WHERE (SELECT count(*) FROM pep_node WHERE username = ?1 AND domain = ?2) < CAST(?7 AS INTEGER) "
        "ON CONFLICT (username, domain, node) DO NOTHING",
        "INSERT INTO pep_node (username, domain, node, access_model, persist, max_items) "
        "SELECT $1, $2, $3, $4, $5::smallint, $6::integer "
        "WHERE (SELECT count(*) FROM pep_node WHERE username = $1 AND domain = $2) < $7::bigint "
        "ON CONFLICT (username, domain, node) DO NOTHING",
    },
    [STORE_PEP_NODE_LIST] = {
        "pep_node_list", 2,
        "SELECT node, access_model FROM pep_node WHERE username = ?1 AND domain = ?2 ORDER BY node",
        "SELECT node, access_model FROM pep_node WHERE username = $1 AND domain = $2 ORDER BY node",
    },
    [STORE_PEP_NODE_CONFIG] = {
        "pep_node_config", 6,
        "UPDATE pep_node SET access_model = ?4, persist = CAST(?5 AS INTEGER), max_items = CAST(?6 AS INTEGER) "
        "WHERE username = ?1 AND domain = ?2 AND node = ?3",
        "UPDATE pep_node SET access_model = $4, persist = $5::smallint, max_items = $6::integer "
        "WHERE username = $1 AND domain = $2 AND node = $3",
    },
    [STORE_PEP_NODE_DELETE] = {
        "pep_node_delete", 3,
        "DELETE FROM pep_node WHERE username = ?1 AND domain = ?2 AND node = ?3",
        "DELETE FROM pep_node WHERE username = $1 AND domain = $2 AND node = $3",
    },
    [STORE_PEP_ITEM_PUT] = {
        "pep_item_put", 6,
        "INSERT INTO pep_item (username, domain, node, item_id, seq, xml) VALUES (?1, ?2, ?3, ?4, CAST(?5 AS INTEGER), ?6) "
        "ON CONFLICT (username, domain, node, item_id) DO UPDATE SET seq = excluded.seq, xml = excluded.xml",
        "INSERT INTO pep_item (username, domain, node, item_id, seq, xml) VALUES ($1, $2, $3, $4, $5::bigint, $6) "
        "ON CONFLICT (username, domain, node, item_id) DO UPDATE SET seq = excluded.seq, xml = excluded.xml",
    },
    [STORE_PEP_ITEM_TRIM] = {
        "pep_item_trim", 4,
        "DELETE FROM pep_item WHERE username = ?1 AND domain = ?2 AND node = ?3 AND item_id NOT IN "
        "(SELECT item_id FROM pep_item WHERE username = ?1 AND domain = ?2 AND node = ?3 "
        "ORDER BY seq DESC LIMIT CAST(?4 AS INTEGER))",
        "DELETE FROM pep_item WHERE username = $1 AND domain = $2 AND node = $3 AND item_id NOT IN "
        "(SELECT item_id FROM pep_item WHERE username = $1 AND domain = $2 AND node = $3 "
        "ORDER BY seq DESC LIMIT $4::bigint)",
    },
    [STORE_PEP_ITEMS] = {
        "pep_items", 4,
        "SELECT item_id, xml FROM pep_item WHERE username = ?1 AND domain = ?2 AND node = ?3 "
        "ORDER BY seq DESC LIMIT CAST(?4 AS INTEGER)",
        "SELECT item_id, xml FROM pep_item WHERE username = $1 AND domain = $2 AND node = $3 "
        "ORDER BY seq DESC LIMIT $4::bigint",
    },
    [STORE_PEP_ITEM_GET] = {
        "pep_item_get", 4,
        "SELECT xml FROM pep_item WHERE username = ?1 AND domain = ?2 AND node = ?3 AND item_id = ?4",
        "SELECT xml FROM pep_item WHERE username = $1 AND domain = $2 AND node = $3 AND item_id = $4",
    },
    [STORE_PEP_ITEM_DELETE] = {
        "pep_item_delete", 4,
        "DELETE FROM pep_item WHERE username = ?1 AND domain = ?2 AND node = ?3 AND item_id = ?4",
        "DELETE FROM pep_item WHERE username = $1 AND domain = $2 AND node = $3 AND item_id = $4",
    },
    /* One query for all of a session's contacts at its login: the owners and node names
     * travel as JSON arrays (one parameter each, whatever their number). */
    [STORE_PEP_LAST_ITEMS] = {
        "pep_last_items", 3,
        "SELECT n.username, n.domain, n.node, n.access_model, i.item_id, i.xml FROM json_each(?1) o "
        "JOIN pep_node n ON n.username = json_extract(o.value, '$[0]') AND n.domain = json_extract(o.value, '$[1]') "
        "JOIN pep_item i ON i.username = n.username AND i.domain = n.domain AND i.node = n.node "
        "WHERE n.node IN (SELECT value FROM json_each(?2)) AND i.seq = (SELECT max(seq) FROM pep_item j "
        "WHERE j.username = n.username AND j.domain = n.domain AND j.node = n.node) "
        "ORDER BY n.username, n.domain, n.node LIMIT CAST(?3 AS INTEGER)",
        "SELECT n.username, n.domain, n.node, n.access_model, i.item_id, i.xml FROM json_array_elements($1::json) o "
        "JOIN pep_node n ON n.username = o.value->>0 AND n.domain = o.value->>1 "
        "JOIN pep_item i ON i.username = n.username AND i.domain = n.domain AND i.node = n.node "
        "WHERE n.node IN (SELECT json_array_elements_text($2::json)) AND i.seq = (SELECT max(seq) FROM pep_item j "
        "WHERE j.username = n.username AND j.domain = n.domain AND j.node = n.node) "
        "ORDER BY n.username, n.domain, n.node LIMIT $3::bigint",
    },

    /* --- persistent group chat rooms (XEP-0045) ---------------------------------------------- */
    [STORE_MUC_ROOM_GET] = {
        "muc_room_get", 1,
        "SELECT state FROM muc_room WHERE room = ?1",
        "SELECT state FROM muc_room WHERE room = $1",
    },
    [STORE_MUC_ROOM_PUT] = {
        "muc_room_put", 6,
        "INSERT INTO muc_room (room, service, public, name, state, updated_us) "
        "VALUES (?1, ?2, CAST(?3 AS INTEGER), ?4, ?5, CAST(?6 AS INTEGER)) "
        "ON CONFLICT (room) DO UPDATE SET service = excluded.service, public = excluded.public, "
        "name = excluded.name, state = excluded.state, updated_us = excluded.updated_us",
        "INSERT INTO muc_room (room, service, public, name, state, updated_us) "
        "VALUES ($1, $2, $3::smallint, $4, $5, $6::bigint) "
        "ON CONFLICT (room) DO UPDATE SET service = excluded.service, public = excluded.public, "
        "name = excluded.name, state = excluded.state, updated_us = excluded.updated_us",
    },
    [STORE_MUC_ROOM_DELETE] = {
        "muc_room_delete", 1,
        "DELETE FROM muc_room WHERE room = ?1",
        "DELETE FROM muc_room WHERE room = $1",
    },
    [STORE_MUC_ROOM_LIST] = {
        "muc_room_list", 2,
        "SELECT room, name FROM muc_room WHERE service = ?1 AND public = 1 ORDER BY room LIMIT CAST(?2 AS INTEGER)",
        "SELECT room, name FROM muc_room WHERE service = $1 AND public = 1 ORDER BY room LIMIT $2::bigint",
    },
    [STORE_MAM_DELETE_OWNER] = {
        "mam_delete_owner", 2,
        "DELETE FROM mam_message WHERE username = ?1 AND domain = ?2",
        "DELETE FROM mam_message WHERE username = $1 AND domain = $2",
    },
#define MAM_ROW_L "FROM mam_message WHERE username = ?1 AND domain = ?2 AND id = CAST(?3 AS INTEGER)"
#define MAM_ROW_P "FROM mam_message WHERE username = $1 AND domain = $2 AND id = $3::bigint"
    [STORE_MAM_FTS_FORGET] = {
        "mam_fts_forget", 3,
        "INSERT INTO mam_fts (mam_fts, rowid, body) SELECT 'delete', rowid, body " MAM_ROW_L,
        "SELECT id " MAM_ROW_P,
    },
    [STORE_MAM_REPLACE] = {
        "mam_replace", 4,
        "UPDATE mam_message SET xml = ?4, body = '' WHERE username = ?1 AND domain = ?2 AND id = CAST(?3 AS INTEGER)",
        "UPDATE mam_message SET xml = $4, body = '' WHERE username = $1 AND domain = $2 AND id = $3::bigint",
    },
    [STORE_MAM_FTS_INDEX] = {
        "mam_fts_index", 3,
        "INSERT INTO mam_fts (rowid, body) SELECT rowid, body " MAM_ROW_L,
        "SELECT id " MAM_ROW_P,
    },
};
