-- Signing keys of the identity assertion (gateway/assertion.py); table: migrations 004.
-- $n placeholders (the SQLite driver maps them to ?n).

-- name: signing_keys
SELECT seq, kid, public_key, private_key, created_at, active_from
FROM signing_keys ORDER BY seq;

-- name: insert_signing_key
INSERT INTO signing_keys (seq, kid, public_key, private_key, created_at, active_from)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (seq) DO NOTHING;

-- name: drop_signing_keys_before
DELETE FROM signing_keys WHERE seq < $1;
