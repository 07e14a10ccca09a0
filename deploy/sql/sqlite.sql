-- deploy/sql/sqlite.sql - Meerkat schema version 1 for the sqlite driver; store_open applies it, then the migrations (sqlite_v2.sql), in one transaction.
-- Every per-user table references users, so deleting a user deletes all their data (PRAGMA foreign_keys=ON).
CREATE TABLE users (
    username      TEXT    NOT NULL,
    domain        TEXT    NOT NULL,
    sha1_salt     TEXT    NOT NULL,
    sha1_iter     INTEGER NOT NULL,
    sha1_stored   TEXT    NOT NULL,
    sha1_server   TEXT    NOT NULL,
    sha256_salt   TEXT    NOT NULL,
    sha256_iter   INTEGER NOT NULL,
    sha256_stored TEXT    NOT NULL,
    sha256_server TEXT    NOT NULL,
    created_at    INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER)),
    PRIMARY KEY (username, domain)
);

CREATE TABLE roster (
    username     TEXT    NOT NULL,
    domain       TEXT    NOT NULL,
    jid          TEXT    NOT NULL,
    name         TEXT,
    subscription TEXT    NOT NULL DEFAULT 'none',
    ask          TEXT,
    groups       TEXT,
    approved     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (username, domain, jid),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);

CREATE TABLE roster_version (
    username TEXT    NOT NULL,
    domain   TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    PRIMARY KEY (username, domain),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);

CREATE TABLE vcard (
    username TEXT NOT NULL,
    domain   TEXT NOT NULL,
    xml      TEXT NOT NULL,
    PRIMARY KEY (username, domain),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);

CREATE TABLE private_storage (
    username  TEXT NOT NULL,
    domain    TEXT NOT NULL,
    namespace TEXT NOT NULL,
    xml       TEXT NOT NULL,
    PRIMARY KEY (username, domain, namespace),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);

CREATE TABLE blocking (
    username TEXT NOT NULL,
    domain   TEXT NOT NULL,
    jid      TEXT NOT NULL,
    PRIMARY KEY (username, domain, jid),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);

CREATE TABLE last_activity (
    username TEXT    NOT NULL,
    domain   TEXT    NOT NULL,
    seconds  INTEGER NOT NULL,
    status   TEXT,
    PRIMARY KEY (username, domain),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);

CREATE TABLE offline (
    username TEXT    NOT NULL,
    domain   TEXT    NOT NULL,
    id       INTEGER NOT NULL,
    stamp_us INTEGER NOT NULL,
    from_jid TEXT    NOT NULL,
    xml      TEXT    NOT NULL,
    PRIMARY KEY (username, domain, id),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);

CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
INSERT INTO schema_version (version) VALUES (1);

-- XEP-0313 archive: one row per message per owner; id is the MAM id ((us << 8) | generator).
-- Pages are keyset scans of the primary key or of (owner, peer, id); mam_fts (FTS5, external
-- content, kept in step by triggers) serves full-text search by rowid.
CREATE TABLE mam_message (
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
    UNIQUE (username, domain, id),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);
CREATE INDEX mam_message_peer ON mam_message (username, domain, peer, id);
CREATE VIRTUAL TABLE mam_fts USING fts5 (body, content = 'mam_message', content_rowid = 'rowid');
CREATE TRIGGER mam_message_ai AFTER INSERT ON mam_message BEGIN
    INSERT INTO mam_fts (rowid, body) VALUES (new.rowid, new.body);
END;
CREATE TRIGGER mam_message_ad AFTER DELETE ON mam_message BEGIN
    INSERT INTO mam_fts (mam_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
END;

-- XEP-0313 preferences: default 'always' | 'never' | 'roster'; lists are newline-separated JIDs.
CREATE TABLE mam_prefs (
    username     TEXT NOT NULL,
    domain       TEXT NOT NULL,
    default_mode TEXT NOT NULL,
    always_jids  TEXT NOT NULL DEFAULT '',
    never_jids   TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (username, domain),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);
