-- The stats writer inserts up to 100,000 history rows a second; the
-- completed_at index cost a second B-tree insert per row. The retention
-- pruner walks the primary key instead: request ids are UUIDv7, so the ids
-- of old attempts sort first (see request_history::prune_before).
DROP INDEX IF EXISTS request_history_completed_at;
