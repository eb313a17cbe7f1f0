-- A scheduler pod says it is alive for ARGV[2] ms more.
-- KEYS: pods        ARGV: pod, ttl_ms
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return now
