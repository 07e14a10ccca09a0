-- deploy/sql/sqlite_v6.sql - schema version 5 -> 6 for the sqlite driver: persistent group chat rooms (XEP-0045, router/muc.c).
-- store_open runs it after the earlier files (new or older database) or alone (a version 5 database).
-- One row per persistent room (bare JID room@service): its configuration, subject and
-- affiliations in one document (router/muc_state.c), with the columns the service's
-- room list needs (service, public, name) beside it. A destroyed room's row is deleted.
CREATE TABLE muc_room (
    room       TEXT     NOT NULL PRIMARY KEY,
    service    TEXT     NOT NULL,
    public     INTEGER  NOT NULL,
    name       TEXT,
    state      TEXT     NOT NULL,
    updated_us INTEGER  NOT NULL
);
CREATE INDEX muc_room_by_service ON muc_room (service, public, room);
UPDATE schema_version SET version = 6;
