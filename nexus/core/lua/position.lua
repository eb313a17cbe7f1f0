-- Where a run waits: {pod, rank} in the first live pod's queue that holds it, or {} when it
-- is in none (in flight, or not queued at all).
-- KEYS: ready queues of every live pod for the run's shard        ARGV: member, pod names...
for i, key in ipairs(KEYS) do
  local rank = redis.call('ZRANK', key, ARGV[1])
  if rank then
    return {ARGV[i + 1], rank}
  end
end
return {}
