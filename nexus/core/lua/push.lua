-- Put runs on a pod's ready queue for one shard; a run already queued keeps its place, and a
-- run this pod holds in flight is not queued a second time.
--
-- Runs come in groups of three arguments: kind, value, and the members of the runs that
-- share them, separated by spaces (one or many; a member holds none). A run's score (its
-- tag) is:
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
-- ARGV: shard, pod, then kind1, value1, members1, ...
-- Returns how many runs were added. A group's runs are looked up in two calls and added in
-- one, at most CHUNK at a time (the most values Lua's unpack takes is some thousands).
local ready, inflight, shares, clocks = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local shard, pod = ARGV[1], ARGV[2]
redis.call('SADD', KEYS[2], shard)
-- a pod's clock starts at 0 with its first push; a pod without one was adopted (its
-- callers' leads there are served, or moved ahead of the adopting pod's runs)
local now = tonumber(redis.call('HGET', clocks, pod) or '0')
redis.call('HSETNX', clocks, pod, now)
local CHUNK = 1000
local nexts = {}
local seen = {}
local added = 0

local function tag_of(kind, value)
  if kind == 'p' then
    return tonumber(value)
  elseif kind == 'a' then
    return now - 1
  end
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
  nexts[flow] = start + tonumber(value)
  return start
end

local function queue(kind, value, members)
  local held = {}
  for k, member in ipairs(members) do
    held[k] = shard .. '/' .. member
  end
  local flying = redis.call('ZMSCORE', inflight, unpack(held))
  local queued = redis.call('ZMSCORE', ready, unpack(members))
  local scored = {}
  for k, member in ipairs(members) do
    if not flying[k] and not queued[k] and not seen[member] then
      seen[member] = true
      scored[#scored + 1] = tag_of(kind, value)
      scored[#scored + 1] = member
    end
  end
  if #scored > 0 then
    added = added + redis.call('ZADD', ready, unpack(scored))
  end
end

for i = 3, #ARGV, 3 do
  local members = {}
  for member in string.gmatch(ARGV[i + 2], '%S+') do
    members[#members + 1] = member
    if #members == CHUNK then
      queue(ARGV[i], ARGV[i + 1], members)
      members = {}
    end
  end
  if #members > 0 then
    queue(ARGV[i], ARGV[i + 1], members)
  end
end
for flow, after in pairs(nexts) do
  redis.call('HSET', shares, 'f:' .. flow, after, 'p:' .. flow, pod)
end
return added
