-- Whether a run waits for a slot of one of the given limits: {label, rank among those
-- waiting, slots taken} for the first that holds it, or {} when none does.
-- KEYS: per limit: parked, slot set        ARGV: member, then the label of each limit
for i = 1, #KEYS, 2 do
  local rank = redis.call('ZRANK', KEYS[i], ARGV[1])
  if rank then
    return {ARGV[(i + 1) / 2 + 1], rank, redis.call('SCARD', KEYS[i + 1])}
  end
end
return {}
