-- Named limits and usage credits (SPEC §13).
ALTER TABLE tokens ADD COLUMN rate_limits TEXT;           -- JSON [{"name", "limit", "window_s"}]
-- The balance not yet leased to the gateway's counters, and the refill period it belongs to
-- (gateway/credits.py); NULL: the token has no credits.
ALTER TABLE tokens ADD COLUMN credits_remaining BIGINT;
ALTER TABLE tokens ADD COLUMN credits_refill BIGINT;      -- refill amount, NULL: no refill
ALTER TABLE tokens ADD COLUMN credits_interval TEXT;      -- day | month
ALTER TABLE tokens ADD COLUMN credits_period BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN credits_gen INTEGER NOT NULL DEFAULT 0;
