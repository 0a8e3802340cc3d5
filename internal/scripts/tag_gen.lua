-- tag_gen: return a tag's generation, making one when it has none, and keep
-- it alive at least as long as an entry about to be stored with it.
-- KEYS[1] the tag's generation key
-- ARGV[1] a new generation, set when the tag has none
-- ARGV[2] how long the entry lives, milliseconds; '0' when it never expires
local g = redis.call('GET', KEYS[1])
local keep = tonumber(ARGV[2])
if not g then
  if keep > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', keep)
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
  return ARGV[1]
end
if keep == 0 then
  redis.call('PERSIST', KEYS[1])
  return g
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl >= 0 and ttl < keep then
  redis.call('PEXPIRE', KEYS[1], keep)
end
return g
