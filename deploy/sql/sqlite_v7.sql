-- deploy/sql/sqlite_v7.sql - schema version 6 -> 7 for the sqlite driver: group chat rooms' archives (XEP-0313 on the room JID, router/muc.c).
-- store_open runs it after the earlier files (new or older database) or alone (a version 6 database).
-- A persistent room's archive lives in mam_message with the room as owner (username the
-- room's local part, domain the MUC service), which is not an account: the archive loses
-- its foreign key on users (the insert statements check the owner is an account or a
-- stored room, as on PostgreSQL), and deleting a user deletes their archive by a trigger
-- instead of the cascade. The table is rebuilt (sqlite cannot drop a constraint) with
-- its rowids, so the full-text index (mam_fts, external content by rowid) stays valid.
DROP TRIGGER IF EXISTS mam_message_ad;
CREATE TABLE mam_message_v7 (
    username      TEXT    NOT NULL,
    domain        TEXT    NOT NULL,
    id            INTEGER NOT NULL,
    peer          TEXT    NOT NULL,
    peer_resource TEXT    NOT NULL DEFAULT '',
    outgoing      INTEGER NOT NULL,
    origin_id     TEXT,
    stamp_us      INTEGER NOT NULL,
    xml           TEXT    NOT NULL,
    body          TEXT    NOT NULL DEFAULT '',
    UNIQUE (username, domain, id)
);
INSERT INTO mam_message_v7 (rowid, username, domain, id, peer, peer_resource, outgoing, origin_id, stamp_us, xml, body)
    SELECT rowid, username, domain, id, peer, peer_resource, outgoing, origin_id, stamp_us, xml, body FROM mam_message;
DROP TABLE mam_message;
ALTER TABLE mam_message_v7 RENAME TO mam_message;
CREATE INDEX mam_message_peer ON mam_message (username, domain, peer, id);
CREATE TRIGGER mam_message_ad AFTER DELETE ON mam_message BEGIN
    INSERT INTO mam_fts (mam_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
END;
CREATE TRIGGER users_archive_ad AFTER DELETE ON users BEGIN
    DELETE FROM mam_message WHERE username = old.username AND domain = old.domain;
END;
UPDATE schema_version SET version = 7;
