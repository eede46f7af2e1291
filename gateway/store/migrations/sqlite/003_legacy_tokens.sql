-- Imported tokens (SPEC §10): how the source system hashed each one, so the gateway can accept
-- it as its owner holds it. NULL for authgate's own tokens.
ALTER TABLE tokens ADD COLUMN legacy_kind TEXT;      -- sanctum | sha256 | bcrypt
ALTER TABLE tokens ADD COLUMN legacy_hash TEXT;      -- the source system's hash, as it made it
ALTER TABLE tokens ADD COLUMN legacy_prefix TEXT;    -- bcrypt: the prefix its tokens carry
ALTER TABLE tokens ADD COLUMN legacy_key TEXT;       -- bcrypt: candidate key until first match
-- A second import of the same source finds its tokens here (idempotence); NULLs are distinct.
CREATE UNIQUE INDEX tokens_legacy_idx ON tokens (legacy_kind, legacy_hash);
CREATE INDEX tokens_legacy_key_idx ON tokens (legacy_key);
