-- Forget runs a pod held in flight (and any retry delay they were waiting out): their
-- outcome is recorded in their checkpoints.
-- KEYS: inflight, then the delayed set of each shard named        ARGV: shard count n,
--       shard1..shardn, then in-flight members 'shard/algorithm/id', several in one
--       argument separated by spaces (none has a space)
-- Returns how many runs were in flight.
local n = tonumber(ARGV[1])
local delayed = {}
for i = 1, n do
  delayed[ARGV[1 + i]] = KEYS[1 + i]
end
local removed = 0
for i = n + 2, #ARGV do
  for held in string.gmatch(ARGV[i], '%S+') do
    removed = removed + redis.call('ZREM', KEYS[1], held)
    local shard, member = string.match(held, '^([^/]+)/(.+)$')
    if shard and delayed[shard] then
      redis.call('ZREM', delayed[shard], member)
    end
  end
end
return removed
