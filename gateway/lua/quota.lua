-- Named limits and usage credits (SPEC §13) in one atomic call: the limits of gcra.lua first
-- (a request they refuse costs no credit), then one credit from the token's counter (a request
-- refused for want of credits charges no limit). Used only for tokens with named limits or
-- credits; every other token keeps gcra.lua.
--
-- KEYS[1..n]: limit state keys; KEYS[n+1] (when ARGV[1] < #KEYS): the credit counter, a hash
--             {a = allowance leased from the store, p = the refill period it belongs to}.
-- ARGV[1] = n; ARGV[2i], ARGV[2i+1]: quota and window (s) of limit i; ARGV[2n+2]: the period.
-- Returns {admitted, index of the policy (1-based), remaining, reset_ms, retry_ms,
--          short (1: the counter is empty, nothing charged), allowance left (-1: no credits),
--          then remaining_i, reset_ms_i for each limit}.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local n = tonumber(ARGV[1])
local tats, news = {}, {}
local denied_idx, denied_retry = 0, 0
for i = 1, n do
  local quota = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1]) * 1000
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  tats[i] = tat
  news[i] = tat + window / quota
  local allow_at = news[i] - window
  if now < allow_at and allow_at - now > denied_retry then
    denied_idx, denied_retry = i, allow_at - now
  end
end
local function parts(charged)
  local out, tight_idx, tight_remaining, tight_reset = {}, 1, nil, 0
  for i = 1, n do
    local quota = tonumber(ARGV[2 * i])
    local window = tonumber(ARGV[2 * i + 1]) * 1000
    local tat = charged and news[i] or tats[i]
    local remaining = math.floor((window - (tat - now)) / (window / quota) + 1e-9)
    if remaining < 0 then remaining = 0 end
    local reset = math.ceil(tat - now)
    out[#out + 1] = remaining
    out[#out + 1] = reset
    if tight_remaining == nil or remaining < tight_remaining then
      tight_idx, tight_remaining, tight_reset = i, remaining, reset
    end
  end
  return out, tight_idx, tight_remaining or 0, tight_reset
end
local function reply(head, list)
  for _, v in ipairs(list) do head[#head + 1] = v end
  return head
end
if denied_idx > 0 then
  local list = parts(false)
  return reply({0, denied_idx, 0, math.ceil(tats[denied_idx] - now), math.ceil(denied_retry),
                0, -1}, list)
end
local allowance = -1
if #KEYS > n then
  local ck = KEYS[n + 1]
  local period = tonumber(ARGV[2 * n + 2])
  local state = redis.call('HMGET', ck, 'a', 'p')
  allowance = tonumber(state[1]) or 0
  local p = tonumber(state[2]) or period
  -- A new period: what was leased for the old one is gone (the store refills on the next lease).
  if p < period then allowance = 0 end
  if allowance <= 0 then
    local list, idx, remaining, reset = parts(false)
    return reply({0, idx, remaining, reset, 0, 1, 0}, list)
  end
  allowance = allowance - 1
  redis.call('HSET', ck, 'a', allowance, 'p', math.max(p, period))
  redis.call('PEXPIRE', ck, 40 * 86400 * 1000)
end
for i = 1, n do
  redis.call('SET', KEYS[i], string.format('%.3f', news[i]), 'PX', math.ceil(news[i] - now) + 1000)
end
local list, idx, remaining, reset = parts(true)
return reply({1, idx, remaining, reset, 0, 0, allowance}, list)
