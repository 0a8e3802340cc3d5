-- strict_drop: publish a drop of the strict local tier, and return the
-- Managers that may hold a lease at that instant (see strict.go in the
-- package).
-- KEYS[1] the registry (see strict_heartbeat.lua).
-- ARGV[1] the channel; ARGV[2] the drop; ARGV[3] the longest lease, ms
--         (the wait for a registry that starts anew); ARGV[4] the
--         registry's TTL, ms.
-- Returns {ms, id...}: ms is how long from now the registry may still
-- miss a Manager whose lease is live (0 when it lists all), then the ids.
-- A registry lost (evicted, a restart, a failover that had not replicated
-- it) lists none of the Managers that may still hold a lease: it starts
-- anew, complete once every lease granted before has run out.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local from = redis.call('ZSCORE', KEYS[1], '')
if from then
  from = -tonumber(from)
else
  from = now + tonumber(ARGV[3])
  redis.call('ZADD', KEYS[1], -from, '')
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, '(' .. now)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
redis.call('PUBLISH', ARGV[1], ARGV[2])
local out = {math.max(from - now, 0)}
for _, id in ipairs(ids) do
  out[#out + 1] = id
end
return out
