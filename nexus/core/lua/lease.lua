-- Take or keep a lease: granted when free or already ours; the expiry is then pushed out.
-- KEYS: lease        ARGV: holder, ttl_ms        Returns the current holder.
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return holder
