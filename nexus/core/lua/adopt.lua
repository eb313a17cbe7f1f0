-- Move every run of a dead pod -- queued, delayed or in flight -- to a live pod's ready
-- queues, keeping their order, ahead of the runs the live pod queued since its last pop, and
-- forget the dead pod. Tags are virtual times of the pod that gave them (push.lua): when the
-- dead pod's reach past the live pod's virtual time, they are all shifted down by the same
-- amount, so that they stay in their order and go ahead of newer runs.
-- Atomic: a run is in exactly one place before and after. A run the live pod already holds
-- in flight is not queued again; one it already has queued keeps the older priority.
-- KEYS: pods, dead-shards, dead-inflight, live-shards, live-inflight,
--       then per shard: dead-ready, dead-delayed, live-ready, clocks
-- ARGV: dead-pod, live-pod, shard1, shard2, ...
-- Returns how many runs moved, or changes nothing and returns -1 when the dead pod has runs
-- for a shard that is not listed (the caller read its shards before they changed, and
-- retries), or -2 when, by the Redis clock, the live pod is not alive (it stopped, or handed
-- its own queue over, since the caller looked) or the dead pod is alive again.
local pods, dead_shards, dead_inflight = KEYS[1], KEYS[2], KEYS[3]
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local dead_until = redis.call('ZSCORE', pods, ARGV[1])
local live_until = redis.call('ZSCORE', pods, ARGV[2])
if (dead_until and tonumber(dead_until) >= now) or not live_until or tonumber(live_until) < now then
  return -2
end
local live_shards, live_inflight = KEYS[4], KEYS[5]
local targets = {}
for s = 3, #ARGV do
  targets[ARGV[s]] = 6 + (s - 3) * 4
end
for _, shard in ipairs(redis.call('SMEMBERS', dead_shards)) do
  if not targets[shard] then
    return -1
  end
end
local held = redis.call('ZRANGE', dead_inflight, 0, -1, 'WITHSCORES')
local parsed = {}
for i = 1, #held, 2 do
  local shard, member = string.match(held[i], '^([^/]+)/(.+)$')
  if not shard or not targets[shard] then
    return -1
  end
  parsed[#parsed + 1] = {shard, member, held[i + 1]}
end
-- per shard, how far the dead pod's tags are shifted (0 unless they reach the live pod's)
local shift = {}
for s = 3, #ARGV do
  local base = targets[ARGV[s]]
  local highest = redis.call('ZRANGE', KEYS[base], -1, -1, 'WITHSCORES')[2]
  highest = highest and tonumber(highest) or nil
  for _, run in ipairs(parsed) do
    if run[1] == ARGV[s] and (not highest or tonumber(run[3]) > highest) then
      highest = tonumber(run[3])
    end
  end
  local live_now = redis.call('HGET', KEYS[base + 3], ARGV[2])
  shift[ARGV[s]] = 0
  if highest and live_now and highest >= tonumber(live_now) - 1 then
    shift[ARGV[s]] = tonumber(live_now) - 1 - highest
  end
  redis.call('HDEL', KEYS[base + 3], ARGV[1])
end
local moved = 0
local function give(shard, member, priority)
  if redis.call('ZSCORE', live_inflight, shard .. '/' .. member) then
    return
  end
  local tag = tonumber(priority) + shift[shard]
  moved = moved + redis.call('ZADD', KEYS[targets[shard] + 2], 'LT', tag, member)
end
for s = 3, #ARGV do
  local base = targets[ARGV[s]]
  local queued = redis.call('ZRANGE', KEYS[base], 0, -1, 'WITHSCORES')
  for i = 1, #queued, 2 do
    give(ARGV[s], queued[i], queued[i + 1])
  end
  redis.call('DEL', KEYS[base], KEYS[base + 1])
  redis.call('SADD', live_shards, ARGV[s])
end
for _, run in ipairs(parsed) do
  give(run[1], run[2], run[3])
end
redis.call('DEL', dead_inflight, dead_shards)
redis.call('ZREM', pods, ARGV[1])
return moved
