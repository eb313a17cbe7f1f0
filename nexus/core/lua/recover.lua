-- Put the runs a pod holds in flight back on its ready queues, at their priorities (so they
-- go ahead of newer runs). A pod does this when it starts, before it pops anything: what is
-- in flight then was taken by its previous process, which stopped before settling it. A run
-- waiting out a retry delay stays as it is (the pop after its delay takes it back); one
-- already queued keeps the older priority.
-- KEYS: shards-of-pod, inflight, then per shard: ready, delayed
-- ARGV: shard1, shard2, ...
-- Returns how many runs moved, or -1 (and changes nothing) when a run in flight is for a
-- shard that is not listed: the caller read the in-flight set before it changed, and retries.
local shards, inflight = KEYS[1], KEYS[2]
local targets = {}
for s = 1, #ARGV do
  targets[ARGV[s]] = 3 + (s - 1) * 2
end
local held = redis.call('ZRANGE', inflight, 0, -1, 'WITHSCORES')
local parsed = {}
for i = 1, #held, 2 do
  local shard, member = string.match(held[i], '^([^/]+)/(.+)$')
  if shard then  -- anything else names no run: it stays where it is
    if not targets[shard] then
      return -1
    end
    parsed[#parsed + 1] = {held[i], shard, member, held[i + 1]}
  end
end
local moved = 0
for _, run in ipairs(parsed) do
  local ready, delayed = KEYS[targets[run[2]]], KEYS[targets[run[2]] + 1]
  if not redis.call('ZSCORE', delayed, run[3]) then
    redis.call('ZADD', ready, 'LT', run[4], run[3])
    redis.call('ZREM', inflight, run[1])
    redis.call('SADD', shards, run[2])
    moved = moved + 1
  end
end
return moved
