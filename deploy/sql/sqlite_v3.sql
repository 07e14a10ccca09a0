-- deploy/sql/sqlite_v3.sql - schema version 2 -> 3 for the sqlite driver: the archive's full-text index is written per batch.
-- store_open runs it after the earlier files (new database) or alone (a version 2 database), in the same transaction.
-- The archive insert statements (common/store_stmts.c) now add a batch's mam_fts entries with one
-- INSERT ... SELECT after its rows, instead of a trigger per row: the per-row trigger goes.
-- Rows already indexed stay indexed; the delete trigger (a user's archive removed) stays.
DROP TRIGGER IF EXISTS mam_message_ai;
UPDATE schema_version SET version = 3;
