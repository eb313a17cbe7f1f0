-- Put runs on a pod's ready queue for one shard; a run already queued keeps its place, and a
-- run this pod holds in flight is not queued a second time.
--
-- Each run comes as three arguments: kind, value, member. Its score (its tag) is:
--   'p'      : value, as given;
--   'a'      : ahead of every run this pod queued since its last pop (a recovered run);
--   'f:<flow>': weighted fair share (start-time fair queueing). The flow (a caller) has a
--              "next tag" that it left on the pod it last queued on; its lead over that
--              pod's virtual time is what it has queued and not yet had served, in units
--              every pod shares. Here it starts at this pod's virtual time plus that lead
--              (a caller that queued nothing lately starts now: no banked credit), and
--              each run of it advances its next tag by value (1 / weight).
-- A pod's virtual time (the clocks hash) is the tag of the last run it popped.
-- KEYS: ready, shards-of-pod, inflight, shares (hash, per shard), clocks (hash, per shard)
-- ARGV: shard, pod, then kind1, value1, member1, ...
-- Returns how many runs were added.
local ready, inflight, shares, clocks = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local shard, pod = ARGV[1], ARGV[2]
redis.call('SADD', KEYS[2], shard)
-- a pod's clock starts at 0 with its first push; a pod without one was adopted (its
-- callers' leads there are served, or moved ahead of the adopting pod's runs)
local now = tonumber(redis.call('HGET', clocks, pod) or '0')
redis.call('HSETNX', clocks, pod, now)
local nexts = {}
local added = 0
for i = 3, #ARGV, 3 do
  local kind, value, member = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if not redis.call('ZSCORE', inflight, shard .. '/' .. member)
     and not redis.call('ZSCORE', ready, member) then
    local tag
    if kind == 'p' then
      tag = tonumber(value)
    elseif kind == 'a' then
      tag = now - 1
    else
      local flow = string.sub(kind, 3)
      local start = nexts[flow]
      if not start then
        start = now
        local last = redis.call('HMGET', shares, 'f:' .. flow, 'p:' .. flow)
        if last[1] then
          local there = now
          if last[2] ~= pod then
            there = tonumber(redis.call('HGET', clocks, last[2]) or last[1])
          end
          start = now + math.max(0, tonumber(last[1]) - there)
        end
      end
      tag = start
      nexts[flow] = start + tonumber(value)
    end
    added = added + redis.call('ZADD', ready, tag, member)
  end
end
for flow, after in pairs(nexts) do
  redis.call('HSET', shares, 'f:' .. flow, after, 'p:' .. flow, pod)
end
return added
