-- deploy/sql/pgsql_v3.sql - schema version 2 -> 3 for PostgreSQL: the inbox (MongooseIM's mod_inbox).
-- store_open runs it after pgsql_v2.sql (new or version 1 database) or alone (a version 2 database).
-- One row per (user, conversation peer's bare JID): the last 1-1 message with a body of the
-- conversation as the user saw it (xml, jabber:client implied), when (stamp_us), and how many
-- of the peer's messages arrived since the user last sent one or read them (unread).
CREATE TABLE inbox (
    username   TEXT    NOT NULL,
    domain     TEXT    NOT NULL,
    peer       TEXT    NOT NULL,
    stamp_us   BIGINT  NOT NULL,
    xml        TEXT    NOT NULL,
    unread     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (username, domain, peer),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);
CREATE INDEX inbox_by_time ON inbox (username, domain, stamp_us);
UPDATE schema_version SET version = 3;
