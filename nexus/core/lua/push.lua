-- Put runs on a pod's ready queue for one shard; a run already queued keeps its place, and a
-- run this pod holds in flight is not queued a second time.
-- KEYS: ready, shards-of-pod, inflight        ARGV: shard, priority1, member1, ...
-- Returns how many runs were added.
redis.call('SADD', KEYS[2], ARGV[1])
local added = 0
for i = 2, #ARGV, 2 do
  if not redis.call('ZSCORE', KEYS[3], ARGV[1] .. '/' .. ARGV[i + 1]) then
    added = added + redis.call('ZADD', KEYS[1], 'NX', ARGV[i], ARGV[i + 1])
  end
end
return added
