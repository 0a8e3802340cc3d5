-- tag_add: record that an entry carries a tag, and keep the tag's set small.
-- KEYS[1] the tag's sorted set
-- ARGV[1] now, Unix milliseconds
-- ARGV[2] when the entry expires, Unix milliseconds; 'inf' when it does not
-- ARGV[3] the member naming the entry
-- Members whose entries have expired are removed, and the set lives as long
-- as its longest-lived member.
local ttl = redis.call('PTTL', KEYS[1])
if ARGV[2] == 'inf' then
  redis.call('ZADD', KEYS[1], '+inf', ARGV[3])
else
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if ARGV[2] == 'inf' then
  redis.call('PERSIST', KEYS[1])
elseif ttl ~= -1 then
  local want = tonumber(ARGV[2]) - tonumber(ARGV[1])
  if ttl == -2 or ttl < want then
    redis.call('PEXPIRE', KEYS[1], want)
  end
end
return 1
