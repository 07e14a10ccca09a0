-- deploy/sql/sqlite_v4.sql - schema version 3 -> 4 for the sqlite driver: the inbox (MongooseIM's mod_inbox).
-- store_open runs it after the earlier files (new or older database) or alone (a version 3 database).
-- One row per (user, conversation peer's bare JID): the last 1-1 message with a body of the
-- conversation as the user saw it (xml, jabber:client implied), when (stamp_us), and how many
-- of the peer's messages arrived since the user last sent one or read them (unread).
CREATE TABLE inbox (
    username   TEXT    NOT NULL,
    domain     TEXT    NOT NULL,
    peer       TEXT    NOT NULL,
    stamp_us   INTEGER NOT NULL,
    xml        TEXT    NOT NULL,
    unread     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (username, domain, peer),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);
CREATE INDEX inbox_by_time ON inbox (username, domain, stamp_us);
UPDATE schema_version SET version = 4;
