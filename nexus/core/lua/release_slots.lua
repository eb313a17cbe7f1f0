-- Give back the slots runs hold (their Job was not made, or they finished).
-- KEYS: the slot sets        ARGV: per slot set in KEYS, the member to remove (same order)
local removed = 0
for i = 1, #KEYS do
  removed = removed + redis.call('SREM', KEYS[i], ARGV[i])
end
return removed
