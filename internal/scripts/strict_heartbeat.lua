-- strict_heartbeat: register a Manager of the strict local tier and publish
-- its heartbeat, at one instant (see strict.go in the package).
-- KEYS[1] the registry, a sorted set: a member per Manager whose lease may
--         be live, scored with the Unix ms until which it may be; and the
--         member "" scored with minus the Unix ms from which the registry
--         lists every such Manager.
-- ARGV[1] the Manager's id; ARGV[2] how long it stays listed, ms;
-- ARGV[3] the channel; ARGV[4] the heartbeat; ARGV[5] the registry's TTL, ms;
-- ARGV[6] the longest lease, ms.
-- A registry it starts anew lists every Manager a lease from now.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZADD', KEYS[1], -(now + tonumber(ARGV[6])), '')
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return redis.call('PUBLISH', ARGV[3], ARGV[4])
