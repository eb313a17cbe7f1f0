-- The registered scheduler pods split by liveness: {live..., '', dead...}.
-- KEYS: pods
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local live = redis.call('ZRANGE', KEYS[1], now, '+inf', 'BYSCORE')
local dead = redis.call('ZRANGE', KEYS[1], '-inf', '(' .. now, 'BYSCORE')
live[#live + 1] = ''
for _, pod in ipairs(dead) do
  live[#live + 1] = pod
end
return live
