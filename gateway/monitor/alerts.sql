-- Alerts, their outbox and the watcher's lease (gateway/monitor/); tables: migrations 006.
-- $n placeholders (the SQLite driver maps them to ?n).

-- name: insert_alert
INSERT INTO alerts (id, dedup_key, kind, severity, message, raised_at, token_id, subject, ip,
                    threshold, "window", details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (dedup_key) DO NOTHING;

-- name: insert_delivery
INSERT INTO alert_deliveries (alert_id, channel, created_at, next_at)
VALUES ($1, $2, $3, $3)
ON CONFLICT (alert_id, channel) DO NOTHING;

-- name: insert_alert_event
INSERT INTO token_events (type, token_id, subject, actor, ip, user_agent, at, details)
VALUES ('alert_raised', $1, $2, 'monitor', $3, NULL, $4, $5);

-- name: get_alert
SELECT * FROM alerts WHERE id = $1;

-- name: claim_deliveries
UPDATE alert_deliveries SET claimed_until = $2, attempts = attempts + 1
WHERE id IN (SELECT id FROM alert_deliveries
             WHERE delivered_at IS NULL AND failed_at IS NULL AND next_at <= $1
               AND (claimed_until IS NULL OR claimed_until <= $1)
             ORDER BY next_at LIMIT $3)
  AND delivered_at IS NULL AND failed_at IS NULL
  AND (claimed_until IS NULL OR claimed_until <= $1)
RETURNING id, alert_id, channel, created_at, attempts;

-- name: delivered
UPDATE alert_deliveries SET delivered_at = $2, claimed_until = NULL, last_error = NULL
WHERE id = $1;

-- name: retry_later
UPDATE alert_deliveries SET next_at = $2, claimed_until = NULL, last_error = $3 WHERE id = $1;

-- name: give_up
UPDATE alert_deliveries SET failed_at = $2, claimed_until = NULL, last_error = $3 WHERE id = $1;

-- name: oldest_pending
SELECT MIN(created_at) AS oldest, MIN(next_at) AS due FROM alert_deliveries
WHERE delivered_at IS NULL AND failed_at IS NULL;

-- name: deliveries_of
SELECT channel, attempts, delivered_at, failed_at, last_error FROM alert_deliveries
WHERE alert_id = $1 ORDER BY channel;

-- name: take_lease
INSERT INTO monitor_lease (name, holder, expires_at) VALUES ('watcher', $1, $2)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE monitor_lease.holder = excluded.holder OR monitor_lease.expires_at <= $3;

-- name: lease_holder
SELECT holder, expires_at FROM monitor_lease WHERE name = 'watcher';

-- name: release_lease
DELETE FROM monitor_lease WHERE name = 'watcher' AND holder = $1;

-- name: expiring_tokens
SELECT id, subject, name, expires_at FROM tokens
WHERE expires_at IS NOT NULL AND expires_at > $1 AND expires_at <= $2
  AND revoked_at IS NULL AND grace_until IS NULL;

-- name: old_tokens
SELECT id, subject, name, created_at FROM tokens
WHERE created_at <= $1 AND revoked_at IS NULL AND grace_until IS NULL
  AND (expires_at IS NULL OR expires_at > $2);

-- name: busy_tokens
SELECT d.token_id AS token_id, SUM(d.count) AS requests FROM token_usage_daily d
WHERE d.day >= $1 GROUP BY d.token_id HAVING SUM(d.count) >= $2;

-- name: inactive_tokens
SELECT id, subject, name, created_at, last_used_at FROM tokens
WHERE COALESCE(last_used_at, created_at) <= $1 AND revoked_at IS NULL
  AND (expires_at IS NULL OR expires_at > $2);

-- name: ips_in_window
SELECT u.token_id AS token_id, t.subject AS subject, COUNT(*) AS ips FROM token_usage_ips u
JOIN tokens t ON t.id = u.token_id
WHERE u.last_seen_at >= $1 GROUP BY u.token_id, t.subject HAVING COUNT(*) >= $2;

-- name: recent_ips_of
SELECT ip, last_seen_at FROM token_usage_ips WHERE token_id = $1 AND last_seen_at >= $2
ORDER BY last_seen_at DESC LIMIT 1000;

-- name: usage_counts
SELECT id, subject, usage_count, created_at FROM tokens WHERE last_used_at >= $1;

-- name: events_since
SELECT id, type, token_id, subject, ip, at, details FROM token_events
WHERE type = $1 AND at >= $2 ORDER BY id LIMIT 50000;

-- name: known_keys
SELECT dedup_key FROM alerts WHERE kind = $1 AND raised_at >= $2;

-- name: recent_alerts
SELECT id, dedup_key, raised_at, details FROM alerts WHERE kind = $1 AND raised_at >= $2
ORDER BY seq;

-- name: release_claim
UPDATE alert_deliveries SET claimed_until = NULL WHERE id = $1 AND delivered_at IS NULL;
