-- store: write a loaded value only while its lease is still held, so that an
-- invalidation (which deletes the lease or moves the generation) voids it.
-- KEYS[1] the entry's key (a string, or the hash holding the field)
-- KEYS[2] the lease key
-- KEYS[3] the container's generation key (optional)
-- ARGV[1] the hash field, '' for a string entry
-- ARGV[2] the lease token
-- ARGV[3] the generation the load started under
-- ARGV[4] the value
-- ARGV[5] the time to live, milliseconds; 0 for none
-- Returns 1 when written, 0 when the lease was void.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[2])
if #KEYS > 2 and (redis.call('GET', KEYS[3]) or '0') ~= ARGV[3] then
  return 0
end
local ttl = tonumber(ARGV[5])
if ARGV[1] == '' then
  if ttl > 0 then
    redis.call('SET', KEYS[1], ARGV[4], 'PX', ttl)
  else
    redis.call('SET', KEYS[1], ARGV[4])
  end
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
  else
    redis.call('PERSIST', KEYS[1])
  end
end
return 1
