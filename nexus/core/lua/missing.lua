-- Which of the given runs are in no live pod's queue (ready, delayed or in flight: a delayed
-- run stays in the in-flight set).
-- KEYS: per pod: ready (for the shard), inflight        ARGV: shard, member1, member2, ...
-- Returns the members found nowhere.
local missing = {}
for i = 2, #ARGV do
  local member, found = ARGV[i], false
  for k = 1, #KEYS, 2 do
    if redis.call('ZSCORE', KEYS[k], member)
       or redis.call('ZSCORE', KEYS[k + 1], ARGV[1] .. '/' .. member) then
      found = true
      break
    end
  end
  if not found then
    missing[#missing + 1] = member
  end
end
return missing
