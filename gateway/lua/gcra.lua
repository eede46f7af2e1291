-- GCRA (generic cell rate algorithm) over several limits at once, atomically, one round trip.
--
-- Why GCRA: one number of state per key (the "theoretical arrival time", TAT), exact in any
-- window, and a burst of N is allowed (SPEC: N requests in any window of the limit's length).
-- Each limit i has period W and quota N: every request pushes TAT by T = W/N; a request is
-- admitted while the new TAT lies no more than W ahead of now. All limits must admit, or none
-- is charged. Time comes from the Redis server, so replicas with skewed clocks agree.
--
-- KEYS[i]: the state key of limit i.  ARGV[2i-1], ARGV[2i]: quota N and window W (seconds).
-- Returns {admitted (1/0), index of the tightest limit (1-based), remaining, reset_ms,
--          retry_after_ms}.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local results = {}
local denied_idx, denied_retry = 0, 0
for i, key in ipairs(KEYS) do
  local quota = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i]) * 1000
  local interval = window / quota
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - window
  if now < allow_at then
    if allow_at - now > denied_retry then denied_idx, denied_retry = i, allow_at - now end
  end
  results[i] = new_tat
end
if denied_idx > 0 then
  local tat = tonumber(redis.call('GET', KEYS[denied_idx])) or now
  return {0, denied_idx, 0, math.ceil(tat - now), math.ceil(denied_retry)}
end
local tight_idx, tight_remaining, tight_reset = 1, nil, 0
for i, key in ipairs(KEYS) do
  local quota = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i]) * 1000
  local interval = window / quota
  local new_tat = results[i]
  redis.call('SET', key, string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
  local remaining = math.floor((window - (new_tat - now)) / interval)
  if tight_remaining == nil or remaining < tight_remaining then
    tight_idx, tight_remaining, tight_reset = i, remaining, math.ceil(new_tat - now)
  end
end
return {1, tight_idx, tight_remaining, tight_reset, 0}
