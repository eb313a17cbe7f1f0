-- A token bucket per shard, shared by every scheduler pod: at most `rate` grants per second
-- on average and `burst` at once. A 429 from the shard pauses it until Retry-After and halves
-- its rate (backoff.lua); once the pause is over the rate recovers by `recovery` of the
-- configured rate per second. Nothing accrues during a pause: neither tokens nor recovery.
-- KEYS: bucket        ARGV: want, rate, burst, recovery (times are the server's clock)
-- Returns {granted, wait_ms, factor}: how many creates may go now, when to ask again if
-- none, and the share of the configured rate in force.
local bucket = KEYS[1]
local want, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst, recovery = math.max(1, tonumber(ARGV[3])), tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local state = redis.call('HMGET', bucket, 'tokens', 'ts', 'factor', 'paused_until')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
local factor = tonumber(state[3]) or 1
local paused_until = tonumber(state[4]) or 0
if now < paused_until then
  redis.call('HSET', bucket, 'tokens', 0, 'ts', now, 'recovery', recovery)
  redis.call('PEXPIRE', bucket, 3600000)
  return {0, paused_until - now, tostring(factor)}
end
-- time since the last update, not counting any pause
local elapsed = math.max(0, now - math.max(ts, paused_until)) / 1000
local before = factor
factor = math.min(1, factor + recovery * elapsed)
-- the factor grew linearly over the interval: refill at its average (never above `rate`)
tokens = math.min(burst, tokens + elapsed * rate * (before + factor) / 2)
local granted = math.max(0, math.min(want, math.floor(tokens)))
tokens = tokens - granted
local wait = 0
if granted == 0 then
  local effective = rate * factor
  if effective > 0 then
    wait = math.ceil((1 - tokens) / effective * 1000)
  else
    wait = 1000
  end
end
redis.call('HSET', bucket, 'tokens', tokens, 'ts', now, 'factor', factor, 'recovery', recovery)
redis.call('PEXPIRE', bucket, 3600000)
return {granted, wait, tostring(factor)}
