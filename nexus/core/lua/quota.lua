-- A caller's runs of one UTC day against its daily quota.
-- KEYS: the day's counter
-- ARGV: quota, expire_at (unix ms), delta: 1 takes one run (unless the quota is used up),
--       -1 gives one back, 0 only reads
-- Returns {taken (1/0), the count now}.
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local delta = tonumber(ARGV[3])
if delta == 0 or (delta < 0 and count <= 0) then
  return {1, count}
end
if delta > 0 and count + delta > tonumber(ARGV[1]) then
  return {0, count}
end
count = redis.call('INCRBY', KEYS[1], delta)
if delta > 0 then
  redis.call('PEXPIREAT', KEYS[1], ARGV[2])
end
return {1, count}
