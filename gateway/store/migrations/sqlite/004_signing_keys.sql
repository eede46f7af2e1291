-- Identity-assertion signing keys (SPEC §11), shared by every replica (gateway/assertion.py).
-- seq orders the keys: the first start inserts seq 1, a rotation max(seq) + 1, each with
-- ON CONFLICT DO NOTHING, so of two racing writers exactly one wins.
CREATE TABLE signing_keys (
    seq         INTEGER PRIMARY KEY,
    kid         TEXT NOT NULL UNIQUE,       -- RFC 7638 thumbprint of the public key
    public_key  TEXT NOT NULL,              -- raw Ed25519 public key, base64url (JWK "x")
    private_key TEXT NOT NULL,              -- raw Ed25519 seed, base64url (JWK "d")
    created_at  TEXT NOT NULL,              -- published (listed in the JWKS) from here
    active_from TEXT NOT NULL               -- signs from here: created_at + the publish delay
);
