-- Alerts (SPEC §12) and their outbox (gateway/monitor/). An alert is raised once per dedup_key
-- (kind, target, threshold or window), however many replicas check at once: the UNIQUE
-- constraint decides. Each alert has one delivery row per channel, retried with backoff until
-- delivered or 24 h old; a worker claims a row (claimed_until) before sending it.
CREATE TABLE alerts (
    seq        BIGSERIAL PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    dedup_key  TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    severity   TEXT NOT NULL,
    message    TEXT NOT NULL,
    raised_at  TIMESTAMPTZ NOT NULL,
    token_id   TEXT,
    subject    TEXT,
    ip         TEXT,
    threshold  TEXT,
    "window"   TEXT,
    details    JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX alerts_kind_idx ON alerts (kind, seq);
CREATE INDEX alerts_token_idx ON alerts (token_id, seq);
CREATE INDEX alerts_subject_idx ON alerts (subject, seq);
CREATE INDEX alerts_raised_at_idx ON alerts (raised_at);

CREATE TABLE alert_deliveries (
    id            BIGSERIAL PRIMARY KEY,
    alert_id      TEXT NOT NULL,
    channel       TEXT NOT NULL,              -- type:fingerprint, never the URL
    created_at    TIMESTAMPTZ NOT NULL,
    next_at       TIMESTAMPTZ NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    claimed_until TIMESTAMPTZ,
    delivered_at  TIMESTAMPTZ,
    failed_at     TIMESTAMPTZ,                         -- gave up: 24 h of attempts
    last_error    TEXT,
    UNIQUE (alert_id, channel)
);
CREATE INDEX alert_deliveries_due_idx ON alert_deliveries (next_at) WHERE delivered_at IS NULL AND failed_at IS NULL;

-- The watcher's lease: one replica at a time runs the checks.
CREATE TABLE monitor_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
