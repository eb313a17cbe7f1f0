-- Runs a pod holds in flight wait for a slot of a full limit: each is listed in the limit's
-- parked set (by its tag: the first parked is the first let go) and, so that no pop takes
-- it meanwhile, held in the pod's delayed set with no due time. It stays in the pod's
-- in-flight set, so a restart, adoption or the maintainer's sweep treat it as any other
-- run the pod holds. A run no longer in flight here is left alone.
-- KEYS: delayed (pod, shard), inflight (pod), parked (limit), parked-where (limit),
--       waiting limits (registry)
-- ARGV: pod, shard, label, then per run: member, tag
-- Returns how many runs were parked.
local delayed, inflight, parked, where = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pod, shard = ARGV[1], ARGV[2]
local count = 0
for i = 4, #ARGV, 2 do
  local member, tag = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', inflight, shard .. '/' .. member) then
    redis.call('ZADD', delayed, '+inf', member)
    redis.call('ZADD', parked, tag, member)
    redis.call('HSET', where, member, pod .. '\t' .. shard)
    count = count + 1
  end
end
if count > 0 then
  redis.call('SADD', KEYS[5], ARGV[3])
end
return count
