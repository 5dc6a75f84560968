-- llmlb control plane schema. Every table is written by one writer task.
-- Every statement is idempotent (IF NOT EXISTS): the control plane re-runs
-- this file at boot to recreate an aggregate table that was dropped by hand.

-- Registered endpoints with their health and lifetime request counters.
CREATE TABLE IF NOT EXISTS endpoints (
    id                  TEXT PRIMARY KEY NOT NULL,      -- UUID
    name                TEXT NOT NULL UNIQUE,
    base_url            TEXT NOT NULL,
    api_key             TEXT,                           -- upstream key, never returned by an API
    static_models       TEXT,                           -- JSON array, NULL = discover
    discovered_models   TEXT NOT NULL DEFAULT '[]',     -- JSON array from GET /v1/models
    status              TEXT NOT NULL DEFAULT 'pending',-- pending | online | error | offline
    latency_ms          REAL,                           -- last successful probe; kept on failure
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_checked_at     INTEGER,                        -- unix ms
    last_error          TEXT,
    total_requests      INTEGER NOT NULL DEFAULT 0,
    successful_requests INTEGER NOT NULL DEFAULT 0,
    failed_requests     INTEGER NOT NULL DEFAULT 0,
    total_input_tokens  INTEGER NOT NULL DEFAULT 0,
    total_output_tokens INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,               -- unix ms
    updated_at          INTEGER NOT NULL                -- unix ms
);

-- One row per upstream attempt; request_id (UUIDv7 bytes) is the
-- deduplication key that makes stats delivery exactly-once.
CREATE TABLE IF NOT EXISTS request_history (
    request_id    BLOB PRIMARY KEY NOT NULL,
    proxy_id      TEXT NOT NULL,
    endpoint_id   TEXT NOT NULL,
    model         TEXT NOT NULL,
    api_kind      INTEGER NOT NULL,
    status_code   INTEGER NOT NULL,
    success       INTEGER NOT NULL,
    duration_ms   REAL NOT NULL,
    ttft_ms       REAL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    completed_at  INTEGER NOT NULL,                     -- unix ms
    error         TEXT,
    api_key_id    TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS request_history_completed_at ON request_history (completed_at);

-- Per UTC day x endpoint x model x api kind totals (TPS fallback at boot).
CREATE TABLE IF NOT EXISTS endpoint_daily_stats (
    date                TEXT NOT NULL,                  -- YYYY-MM-DD (UTC)
    endpoint_id         TEXT NOT NULL,
    model               TEXT NOT NULL,
    api_kind            INTEGER NOT NULL,
    total_requests      INTEGER NOT NULL DEFAULT 0,
    successful_requests INTEGER NOT NULL DEFAULT 0,
    failed_requests     INTEGER NOT NULL DEFAULT 0,
    total_input_tokens  INTEGER NOT NULL DEFAULT 0,
    total_output_tokens INTEGER NOT NULL DEFAULT 0,     -- of TPS-eligible requests
    total_duration_ms   REAL NOT NULL DEFAULT 0,        -- of TPS-eligible requests
    PRIMARY KEY (date, endpoint_id, model, api_kind)
) WITHOUT ROWID;

-- Per UTC minute totals: the dashboard timeline and the average response
-- time are restored from here without scanning request_history.
CREATE TABLE IF NOT EXISTS request_minutes (
    minute            INTEGER PRIMARY KEY NOT NULL,     -- unix minutes (UTC)
    success           INTEGER NOT NULL DEFAULT 0,
    failure           INTEGER NOT NULL DEFAULT 0,
    total_duration_ms REAL NOT NULL DEFAULT 0           -- of every completed attempt
);

-- Exact TPS state per endpoint x model x api kind (EMA, restored as is).
CREATE TABLE IF NOT EXISTS model_stats (
    endpoint_id         TEXT NOT NULL,
    model               TEXT NOT NULL,
    api_kind            INTEGER NOT NULL,
    request_count       INTEGER NOT NULL DEFAULT 0,
    total_output_tokens INTEGER NOT NULL DEFAULT 0,
    tps_ema             REAL,                           -- NULL until the first sample
    updated_at          INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, model, api_kind)
) WITHOUT ROWID;

-- Client API keys for the proxies; only a SHA-256 of the secret is stored.
CREATE TABLE IF NOT EXISTS api_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    sha256       TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
