-- Named queries shared by both backends. Placeholders are $1..$n (the SQLite driver rewrites
-- them to ?1..?n). Both dialects accept everything here: keep it that way.

-- name: insert_token
INSERT INTO tokens (id, token_hash, hint, subject, name, scopes, family, rate_limit,
                    rate_window_s, metadata, created_at, expires_at, rotated_from)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)

-- name: get_token
-- With its subject's suspension (subjects, 005): ``suspended`` is 1/true while it lasts.
SELECT t.*, s.subject IS NOT NULL AS suspended FROM tokens t
LEFT JOIN subjects s ON s.subject = t.subject AND s.suspended_at IS NOT NULL
WHERE t.id = $1

-- name: get_by_hash
-- The gateway's lookup: one primary-key probe more for the suspension flag (see get_token).
SELECT t.*, s.subject IS NOT NULL AS suspended FROM tokens t
LEFT JOIN subjects s ON s.subject = t.subject AND s.suspended_at IS NOT NULL
WHERE t.token_hash = $1

-- name: revoke_token
-- A token in a rotation grace has revoked_at in the future: revoking it now still counts. A
-- token revoked for any other reason is never revoked again, however the clocks of two
-- concurrent revokes compare (PostgreSQL re-checks this WHERE after a concurrent commit).
UPDATE tokens SET revoked_at = $2, revoked_reason = $3
WHERE id = $1 AND (revoked_at IS NULL OR (revoked_reason = 'rotated' AND revoked_at > $2))

-- name: claim_replay
-- Rotated-out members of a family presented after their grace: marking them is the claim. Of
-- concurrent replays (one process or many), exactly one transaction gets rows back; the others
-- find nothing left to mark and write nothing.
UPDATE tokens SET revoked_reason = $3
WHERE family = $1 AND revoked_reason = 'rotated' AND grace_until IS NOT NULL
  AND grace_until <= $2
RETURNING id, token_hash

-- name: rotate_out
-- Only an active, not yet rotated token can be rotated: of two concurrent rotations of one
-- token, exactly one matches this WHERE.
UPDATE tokens SET grace_until = $2, revoked_at = $2, revoked_reason = 'rotated'
WHERE id = $1 AND grace_until IS NULL
  AND (revoked_at IS NULL OR revoked_at > $3)
  AND (expires_at IS NULL OR expires_at > $3)

-- name: delete_token
DELETE FROM tokens WHERE id = $1

-- name: delete_usage
DELETE FROM token_usage_daily WHERE token_id = $1

-- name: delete_usage_ips
DELETE FROM token_usage_ips WHERE token_id = $1

-- name: cleanup_tokens
DELETE FROM tokens
WHERE (revoked_at IS NOT NULL AND revoked_at < $1) OR (expires_at IS NOT NULL AND expires_at < $1)

-- name: cleanup_usage
DELETE FROM token_usage_daily WHERE token_id NOT IN (SELECT id FROM tokens)

-- name: cleanup_usage_ips
-- Also addresses not seen since the cut-off, so a token used from churning addresses stays small.
DELETE FROM token_usage_ips WHERE token_id NOT IN (SELECT id FROM tokens) OR last_seen_at < $1

-- name: insert_event
INSERT INTO token_events (type, token_id, subject, actor, ip, user_agent, at, details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)

-- name: token_stats
SELECT
    COUNT(*) AS total,
    COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL AND revoked_at <= $1 THEN 1 ELSE 0 END), 0)
        AS revoked,
    COALESCE(SUM(CASE WHEN (revoked_at IS NULL OR revoked_at > $1)
                       AND expires_at IS NOT NULL AND expires_at <= $1 THEN 1 ELSE 0 END), 0)
        AS expired,
    COALESCE(SUM(CASE WHEN created_at >= $2 THEN 1 ELSE 0 END), 0) AS created_24h,
    COALESCE(SUM(CASE WHEN last_used_at >= $2 THEN 1 ELSE 0 END), 0) AS used_24h
FROM tokens

-- name: top_subjects
SELECT subject, COUNT(*) AS active FROM tokens
WHERE (revoked_at IS NULL OR revoked_at > $1) AND (expires_at IS NULL OR expires_at > $1)
GROUP BY subject ORDER BY active DESC, subject LIMIT $2

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)

-- name: add_usage
-- Values on the right are the row's old ones, so the IP follows the newest use.
UPDATE tokens SET
    usage_count = usage_count + $2,
    last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $3 THEN $3 ELSE last_used_at END,
    last_used_ip = CASE WHEN last_used_at IS NULL OR last_used_at <= $3 THEN $4 ELSE last_used_ip END
WHERE id = $1

-- name: add_daily_usage
INSERT INTO token_usage_daily (token_id, day, count) VALUES ($1, $2, $3)
ON CONFLICT (token_id, day) DO UPDATE SET count = token_usage_daily.count + excluded.count

-- name: daily_usage
SELECT day, count FROM token_usage_daily WHERE token_id = $1 AND day >= $2 ORDER BY day

-- name: add_usage_ip
INSERT INTO token_usage_ips (token_id, ip, last_seen_at, count) VALUES ($1, $2, $3, $4)
ON CONFLICT (token_id, ip) DO UPDATE SET
    count = token_usage_ips.count + excluded.count,
    last_seen_at = CASE WHEN token_usage_ips.last_seen_at < excluded.last_seen_at
                        THEN excluded.last_seen_at ELSE token_usage_ips.last_seen_at END

-- name: recent_ips
SELECT ip, last_seen_at, count FROM token_usage_ips WHERE token_id = $1
ORDER BY last_seen_at DESC, ip LIMIT $2

-- name: insert_legacy_token
INSERT INTO tokens (id, token_hash, hint, subject, name, scopes, family, metadata, created_at,
                    expires_at, last_used_at, legacy_kind, legacy_hash, legacy_prefix,
                    legacy_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)

-- name: legacy_hashes
SELECT legacy_hash FROM tokens WHERE legacy_kind = $1

-- name: legacy_prefixes
-- Prefixes that still have bcrypt tokens waiting for their first match.
SELECT DISTINCT legacy_prefix FROM tokens WHERE legacy_key IS NOT NULL

-- name: legacy_rehash
-- A bcrypt token's first match: from now on it is found by authgate's keyed hash. Of two
-- concurrent first matches one updates, the other finds legacy_key already cleared.
UPDATE tokens SET token_hash = $2, legacy_key = NULL WHERE id = $1 AND legacy_key IS NOT NULL

-- name: add_outcomes
INSERT INTO request_outcomes (hour, outcome, count) VALUES ($1, $2, $3)
ON CONFLICT (hour, outcome) DO UPDATE SET count = request_outcomes.count + excluded.count

-- name: outcome_counts
SELECT hour, outcome, count FROM request_outcomes WHERE hour >= $1 ORDER BY hour, outcome

-- name: prune_outcomes
DELETE FROM request_outcomes WHERE hour < $1

-- name: suspend_subject
-- Suspending a suspended subject changes nothing (no row counts as changed).
INSERT INTO subjects (subject, suspended_at, suspended_reason, suspended_by)
VALUES ($1, $2, $3, $4)
ON CONFLICT (subject) DO UPDATE SET suspended_at = excluded.suspended_at,
    suspended_reason = excluded.suspended_reason, suspended_by = excluded.suspended_by
WHERE subjects.suspended_at IS NULL

-- name: resume_subject
UPDATE subjects SET suspended_at = NULL, suspended_reason = NULL, suspended_by = NULL
WHERE subject = $1 AND suspended_at IS NOT NULL

-- name: get_subject
SELECT * FROM subjects WHERE subject = $1

-- name: subject_token_hashes
-- Every token of a subject, to drop from the caches when its suspension changes.
SELECT id, token_hash FROM tokens WHERE subject = $1

-- name: lock_subject
-- The per-subject lock of creation_limit: PostgreSQL holds the upserted row's lock until the
-- transaction ends (so a concurrent create of the subject waits, then counts what this one
-- committed); SQLite's BEGIN IMMEDIATE already serialises writers.
INSERT INTO subjects (subject) VALUES ($1)
ON CONFLICT (subject) DO UPDATE SET subject = excluded.subject

-- name: created_since
-- The subject's newest token creations in the window, newest first, at most the limit. A
-- rotation creates a token (the successor) and counts too (SPEC §3: "tokens created for one
-- subject, by any caller"): else rotating with a grace multiplies working tokens past the limit.
SELECT at FROM token_events
WHERE subject = $1 AND type IN ('token_created', 'token_rotated') AND at > $2
ORDER BY at DESC LIMIT $3
-- name: set_quota
-- Named limits and credits (SPEC §13), written with the token (insert, rotation).
UPDATE tokens SET rate_limits = $2, credits_remaining = $3, credits_refill = $4,
                  credits_interval = $5, credits_period = $6, credits_gen = $7
WHERE id = $1

-- name: credits_refill
-- The first lease of a new period refills the balance (to the refill amount); of concurrent
-- takes, one matches this WHERE (PostgreSQL re-checks it after a concurrent commit).
UPDATE tokens SET credits_remaining = credits_refill, credits_period = $3
WHERE id = $1 AND credits_gen = $2 AND credits_period < $3 AND credits_refill IS NOT NULL

-- name: credits_take
-- A lease: taken whole or not at all, so the balance never goes below 0.
UPDATE tokens SET credits_remaining = credits_remaining - $3
WHERE id = $1 AND credits_gen = $2 AND credits_remaining >= $3
RETURNING credits_remaining

-- name: credits_balance
SELECT credits_remaining FROM tokens WHERE id = $1 AND credits_gen = $2

-- name: credits_hand_over
-- A rotation moves the old token's balance to its successor: a new generation first (takes of
-- the old one fail from here on, and PostgreSQL holds the row), returning the balance as it is.
UPDATE tokens SET credits_gen = credits_gen + 1
WHERE id = $1 AND credits_remaining IS NOT NULL
RETURNING credits_remaining, credits_period

-- name: credits_zero
-- ... then nothing left on the old token, and no refill of it either.
UPDATE tokens SET credits_remaining = 0, credits_refill = NULL WHERE id = $1

-- name: rotatable
-- The WHERE of rotate_out, read only: whether a rotation refused by the creation limit would
-- otherwise have happened (a token that cannot be rotated is refused as such, not as limited).
SELECT id FROM tokens WHERE id = $1 AND grace_until IS NULL
  AND (revoked_at IS NULL OR revoked_at > $2)
  AND (expires_at IS NULL OR expires_at > $2)

-- name: count_subject_tokens
-- How many working tokens (not revoked, not expired; a rotated-out one in its grace counts)
-- have exactly this subject: a suspension's answer, so one that matches nothing shows.
SELECT COUNT(*) AS n FROM tokens WHERE subject = $1
  AND (revoked_at IS NULL OR revoked_at > $2)
  AND (expires_at IS NULL OR expires_at > $2)
