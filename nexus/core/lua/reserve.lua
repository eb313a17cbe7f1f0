-- Take concurrency slots for runs, all of a run's or none: a slot set holds the runs that
-- count against one limit (an algorithm's, a workgroup's, a caller's), across every pod.
-- A run already holding a slot keeps it (taking it again is harmless).
-- KEYS: the slot sets named, then the registry of slot sets
-- ARGV: per run: member, n, then n pairs (index of its slot set in KEYS, limit size)
-- Returns per run 0 when it holds all its slots, else the index of the first full set.
local registry = KEYS[#KEYS]
local answers = {}
local i = 1
while i <= #ARGV do
  local member, n = ARGV[i], tonumber(ARGV[i + 1])
  local full = 0
  for j = 0, n - 1 do
    local index, size = tonumber(ARGV[i + 2 + 2 * j]), tonumber(ARGV[i + 3 + 2 * j])
    local key = KEYS[index]
    if redis.call('SISMEMBER', key, member) == 0 and redis.call('SCARD', key) >= size then
      full = index
      break
    end
  end
  if full == 0 then
    for j = 0, n - 1 do
      local key = KEYS[tonumber(ARGV[i + 2 + 2 * j])]
      redis.call('SADD', key, member)
      redis.call('SADD', registry, key)
    end
  end
  answers[#answers + 1] = full
  i = i + 2 + 2 * n
end
return answers
