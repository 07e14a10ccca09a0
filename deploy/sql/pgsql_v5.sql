-- deploy/sql/pgsql_v5.sql - schema version 4 -> 5 for PostgreSQL: persistent group chat rooms (XEP-0045, router/muc.c).
-- store_open runs it after the earlier files (new or older database) or alone (a version 4 database).
-- One row per persistent room (bare JID room@service): its configuration, subject and
-- affiliations in one document (router/muc_state.c), with the columns the service's
-- room list needs (service, public, name) beside it. A destroyed room's row is deleted.
CREATE TABLE muc_room (
    room       TEXT     COLLATE "C" NOT NULL PRIMARY KEY,
    service    TEXT     COLLATE "C" NOT NULL,
    public     SMALLINT NOT NULL,
    name       TEXT,
    state      TEXT     NOT NULL,
    updated_us BIGINT   NOT NULL
);
CREATE INDEX muc_room_by_service ON muc_room (service, public, room);
UPDATE schema_version SET version = 5;
