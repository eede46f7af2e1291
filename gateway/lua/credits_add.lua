-- Add a lease taken from the store to a credit counter (gateway/credits.py). A counter of an
-- older period starts again from the lease (what it held belonged to the old period).
-- KEYS[1]: the counter hash {a, p}.  ARGV[1]: the period of the lease, ARGV[2]: the amount.
local period, amount = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'a', 'p')
local a, p = tonumber(state[1]) or 0, tonumber(state[2]) or period
if p < period then a, p = 0, period end
if a < 0 then a = 0 end
redis.call('HSET', KEYS[1], 'a', a + amount, 'p', p)
redis.call('PEXPIRE', KEYS[1], 40 * 86400 * 1000)
return a + amount
