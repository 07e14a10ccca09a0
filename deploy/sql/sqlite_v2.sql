-- deploy/sql/sqlite_v2.sql - schema version 1 -> 2 for the sqlite driver: XEP-0357 push registrations.
-- store_open runs it after sqlite.sql (new database) or alone (a version 1 database), in the same transaction.
-- One row per (user, pubsub service, node) a client enabled; form is the enable request's
-- publish-options as a submitted jabber:x:data form without FORM_TYPE (var and first value
-- of each field, in the client's order), '' when it had none.
CREATE TABLE push_registration (
    username   TEXT    NOT NULL,
    domain     TEXT    NOT NULL,
    pubsub     TEXT    NOT NULL,
    node       TEXT    NOT NULL,
    form       TEXT    NOT NULL DEFAULT '',
    created_us INTEGER NOT NULL,
    PRIMARY KEY (username, domain, pubsub, node),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);
UPDATE schema_version SET version = 2;
