-- Let parked runs go: each becomes due at once in its pod's delayed set, so that pod's next
-- pop queues it again at its tag (ahead of newer runs), and it tries for its slots again.
-- A run no longer held in flight by the pod that parked it (adopted, settled) is only
-- forgotten here: wherever it is now, it is queued or done.
-- KEYS: parked (limit), parked-where (limit), waiting limits (registry),
--       then per run: delayed (its pod, its shard), inflight (its pod)
-- ARGV: label, then per run: member, pod<TAB>shard as read (the caller read them first)
-- Returns how many runs were let go, or -1 (nothing changed) when a run's place changed
-- since it was read.
local parked, where = KEYS[1], KEYS[2]
local released = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', where, ARGV[i]) ~= ARGV[i + 1] then
    return -1
  end
end
for i = 2, #ARGV, 2 do
  local member = ARGV[i]
  local k = 4 + (i - 2)
  local shard = string.match(ARGV[i + 1], '\t(.*)$')
  if redis.call('ZSCORE', KEYS[k + 1], shard .. '/' .. member)
     and redis.call('ZSCORE', KEYS[k], member) then
    redis.call('ZADD', KEYS[k], 0, member)
    released = released + 1
  end
  redis.call('ZREM', parked, member)
  redis.call('HDEL', where, member)
end
if redis.call('ZCARD', parked) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
end
return released
