-- deploy/sql/pgsql.sql - Meerkat schema version 1 for PostgreSQL (database created UTF8); store_open applies it, then the migrations (pgsql_v2.sql), in one transaction.
-- Every per-user table references users, so deleting a user deletes all their data.
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
    created_at    BIGINT  NOT NULL DEFAULT (EXTRACT(EPOCH FROM now()))::bigint,
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
    seconds  BIGINT  NOT NULL,
    status   TEXT,
    PRIMARY KEY (username, domain),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);

CREATE TABLE offline (
    username TEXT    NOT NULL,
    domain   TEXT    NOT NULL,
    id       BIGINT  NOT NULL,
    stamp_us BIGINT  NOT NULL,
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
-- Pages are keyset scans of the primary key or of (owner, peer, id); body_tsv serves full-text search.
CREATE TABLE mam_message (
    -- Byte-order collation: the keys are compared, never sorted for people, and the
    -- locale's rules cost a tenth of every insert. No foreign key to users: its check
    -- was a fifth of an insert's cost; the insert checks the user itself and deleting
    -- a user deletes its archive (STORE_USER_DELETE).
    username      TEXT COLLATE "C" NOT NULL,
    domain        TEXT COLLATE "C" NOT NULL,
    id            BIGINT   NOT NULL,
    peer          TEXT COLLATE "C" NOT NULL,
    peer_resource TEXT     NOT NULL DEFAULT '',
    outgoing      SMALLINT NOT NULL,
    origin_id     TEXT,
    stamp_us      BIGINT   NOT NULL,
    xml           TEXT     NOT NULL,
    body          TEXT     NOT NULL DEFAULT '',
    body_tsv      TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED,
    PRIMARY KEY (username, domain, id)
);
CREATE INDEX mam_message_peer ON mam_message (username, domain, peer, id);
CREATE INDEX mam_message_tsv ON mam_message USING GIN (body_tsv);

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
