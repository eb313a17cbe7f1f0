-- Hold in-flight runs back for ARGV[1] ms: they stay in the in-flight set (keeping their
-- priority) and are listed in the delayed set, which the next pop after that time drains.
-- A run that is not in flight (settled, or adopted by another pod) is left alone.
-- KEYS: delayed, inflight        ARGV: delay_ms, shard, member1, member2, ...
-- Returns how many runs are now delayed.
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local due = now + tonumber(ARGV[1])
local delayed = 0
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[2], ARGV[2] .. '/' .. ARGV[i]) then
    redis.call('ZADD', KEYS[1], due, ARGV[i])
    delayed = delayed + 1
  end
end
return delayed
