-- Subjects (SPEC §7 suspension, §3 creation_limit). A row exists for a subject that was ever
-- suspended, or that had tokens created under a creation_limit (the row is the per-subject lock
-- the count + insert runs under). Suspended while suspended_at is set; resume clears it.
CREATE TABLE subjects (
    subject          TEXT PRIMARY KEY,
    suspended_at     TEXT,
    suspended_reason TEXT,
    suspended_by     TEXT                -- the actor, as in the audit log
);
CREATE INDEX subjects_suspended_idx ON subjects (suspended_at);
-- creation_limit counts a subject's token_created events in its window (deleted tokens count too).
CREATE INDEX token_events_created_idx ON token_events (subject, at) WHERE type = 'token_created';
