-- An optional path probed for liveness instead of /v1/models (servers
-- without GET /v1/models). NULL: probe /v1/models.
-- Not idempotent (SQLite has no ADD COLUMN IF NOT EXISTS): the boot-time
-- repair that re-runs every migration skips its "duplicate column" error
-- (db::Db::recreate_missing_tables).
ALTER TABLE endpoints ADD COLUMN health_path TEXT;
