-- The addresses a token was last used from (admin API: /v1/tokens/{id}/usage), written in the
-- gateway's usage batches; one row per (token, address).
CREATE TABLE token_usage_ips (
    token_id     TEXT NOT NULL,
    ip           TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (token_id, ip)
);
CREATE INDEX token_usage_ips_recent_idx ON token_usage_ips (token_id, last_seen_at);
