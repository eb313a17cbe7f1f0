-- Take up to ARGV[1] runs off a pod's ready queue for one shard, lowest tag first, moving
-- them to the pod's in-flight set in the same step: a popped run is never only in this
-- process. Runs whose retry delay has passed come back to the ready queue first, with their
-- original tag, so they go ahead of newer runs. A due entry whose run is no longer in flight
-- (settled, or handed to another pod meanwhile) is dropped: it is recorded elsewhere.
-- The pod's virtual time becomes the highest tag it has popped (push.lua tags from it).
-- Runs of the shard whose outcome is recorded may be settled first, in the same call
-- (as settle.lua does): they leave the in-flight set and any retry delay.
-- KEYS: ready, delayed, inflight, clocks        ARGV: count, shard, pod[, members to settle,
--       'algorithm/id' separated by spaces (none has a space)]
-- Returns the runs taken as one string, 'member tag member tag ...' (members and tags have
-- no spaces): one reply to read, not two per run.
local ready, delayed, inflight = KEYS[1], KEYS[2], KEYS[3]
local count, shard = tonumber(ARGV[1]), ARGV[2]
if ARGV[4] then
  for member in string.gmatch(ARGV[4], '%S+') do
    redis.call('ZREM', inflight, shard .. '/' .. member)
    redis.call('ZREM', delayed, member)
  end
end
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local due = redis.call('ZRANGE', delayed, '-inf', now, 'BYSCORE', 'LIMIT', 0, 1000)
for _, member in ipairs(due) do
  local held = shard .. '/' .. member
  local priority = redis.call('ZSCORE', inflight, held)
  if priority then
    redis.call('ZADD', ready, priority, member)
    redis.call('ZREM', inflight, held)
  end
  redis.call('ZREM', delayed, member)
end
if count < 1 then
  return ''
end
local taken = redis.call('ZRANGE', ready, 0, count - 1, 'WITHSCORES')
if #taken == 0 then
  return ''
end
-- one ZREM and one ZADD for the whole batch, in chunks Lua's unpack can take
local members, held = {}, {}
for i = 1, #taken, 2 do
  members[#members + 1] = taken[i]
  held[#held + 1] = taken[i + 1]
  held[#held + 1] = shard .. '/' .. taken[i]
end
for i = 1, #members, 1000 do
  redis.call('ZREM', ready, unpack(members, i, math.min(i + 999, #members)))
end
for i = 1, #held, 2000 do
  redis.call('ZADD', inflight, unpack(held, i, math.min(i + 1999, #held)))
end
local before = redis.call('HGET', KEYS[4], ARGV[3])
if not before or tonumber(taken[#taken]) > tonumber(before) then
  redis.call('HSET', KEYS[4], ARGV[3], taken[#taken])
end
return table.concat(taken, ' ')
