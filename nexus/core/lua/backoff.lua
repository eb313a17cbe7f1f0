-- The shard answered 429: nobody creates until now + retry_after, and the rate halves.
-- The halving applies to the rate in force now, i.e. after the recovery since the last take
-- (at the `recovery` the takers last gave).
-- KEYS: bucket        ARGV: retry_after_ms, floor
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local bucket = KEYS[1]
local until_ms = now + tonumber(ARGV[1])
local state = redis.call('HMGET', bucket, 'ts', 'factor', 'paused_until', 'recovery')
local ts = tonumber(state[1]) or now
local factor = tonumber(state[2]) or 1
local paused = tonumber(state[3]) or 0
local recovery = tonumber(state[4]) or 0
if paused <= now then
  -- halve once per 429 episode, not once per rejected call of the same burst
  local elapsed = math.max(0, now - math.max(ts, paused)) / 1000
  factor = math.min(1, factor + recovery * elapsed)
  factor = math.max(tonumber(ARGV[2]), factor / 2)
end
redis.call('HSET', bucket, 'paused_until', math.max(paused, until_ms), 'factor', factor,
           'tokens', 0, 'ts', now)
redis.call('PEXPIRE', bucket, 3600000)
return tostring(factor)
