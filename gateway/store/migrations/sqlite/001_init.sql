-- SQLite twin of the PostgreSQL schema. Times are ISO 8601 UTC text with microseconds, one
-- fixed format, so they compare and sort as time; JSON columns are text.
-- Tokens: only a keyed hash of the secret is stored, never the secret.
CREATE TABLE tokens (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT, -- insertion order: stable cursor for "newest first"
    id             TEXT NOT NULL UNIQUE,
    token_hash     TEXT NOT NULL UNIQUE,
    hint           TEXT NOT NULL,
    subject        TEXT NOT NULL,
    name           TEXT NOT NULL,
    scopes         TEXT NOT NULL DEFAULT '[]',
    family         TEXT NOT NULL,
    rate_limit     INTEGER,
    rate_window_s  INTEGER,
    metadata       TEXT NOT NULL DEFAULT '{}',
    created_at     TEXT NOT NULL,
    expires_at     TEXT,
    last_used_at   TEXT,
    last_used_ip   TEXT,
    usage_count    INTEGER NOT NULL DEFAULT 0,
    revoked_at     TEXT,                     -- in the future while a rotation's grace runs
    revoked_reason TEXT,
    rotated_from   TEXT,
    grace_until    TEXT
);
CREATE INDEX tokens_subject_idx ON tokens (subject, seq);
CREATE INDEX tokens_family_idx ON tokens (family);
CREATE INDEX tokens_revoked_at_idx ON tokens (revoked_at);
CREATE INDEX tokens_expires_at_idx ON tokens (expires_at);
CREATE INDEX tokens_created_at_idx ON tokens (created_at);
CREATE INDEX tokens_last_used_at_idx ON tokens (last_used_at);

CREATE TABLE token_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT NOT NULL,
    token_id   TEXT,
    subject    TEXT,
    actor      TEXT NOT NULL,
    ip         TEXT,
    user_agent TEXT,
    at         TEXT NOT NULL,
    details    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX token_events_token_idx ON token_events (token_id, id);
CREATE INDEX token_events_subject_idx ON token_events (subject, id);
CREATE INDEX token_events_type_idx ON token_events (type, id);
CREATE INDEX token_events_at_idx ON token_events (at);

-- Requests per token per UTC day, written in batches by the gateway.
CREATE TABLE token_usage_daily (
    token_id TEXT NOT NULL,
    day      TEXT NOT NULL,
    count    INTEGER NOT NULL,
    PRIMARY KEY (token_id, day)
);
