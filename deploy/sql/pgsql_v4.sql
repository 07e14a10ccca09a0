-- deploy/sql/pgsql_v4.sql - schema version 3 -> 4 for PostgreSQL: PEP nodes and items (XEP-0163, c2s/pep.c).
-- store_open runs it after the earlier files (new or older database) or alone (a version 3 database).
-- One row per (account, node) with the node's configuration, and one per item kept
-- (persist_items), newest by seq; a node's items go with it.
CREATE TABLE pep_node (
    username     TEXT     NOT NULL,
    domain       TEXT     NOT NULL,
    node         TEXT     NOT NULL,
    access_model TEXT     NOT NULL,
    persist      SMALLINT NOT NULL,
    max_items    INTEGER  NOT NULL,
    PRIMARY KEY (username, domain, node),
    FOREIGN KEY (username, domain) REFERENCES users (username, domain) ON DELETE CASCADE
);
CREATE TABLE pep_item (
    username     TEXT     NOT NULL,
    domain       TEXT     NOT NULL,
    node         TEXT     NOT NULL,
    item_id      TEXT     NOT NULL,
    seq          BIGINT   NOT NULL,
    xml          TEXT     NOT NULL,
    PRIMARY KEY (username, domain, node, item_id),
    FOREIGN KEY (username, domain, node) REFERENCES pep_node (username, domain, node) ON DELETE CASCADE
);
CREATE INDEX pep_item_by_seq ON pep_item (username, domain, node, seq);
UPDATE schema_version SET version = 4;
