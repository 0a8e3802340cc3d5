-- store: write a loaded value only while its lease is still held, so that an
-- invalidation (which deletes the lease or the generation) voids it.
-- KEYS[1] the entry's key (a string, or the hash holding the field)
-- KEYS[2] the lease key
-- KEYS[3] the container's generation key (optional)
-- ARGV[1] the hash field, '' for a string entry
-- ARGV[2] the lease token
-- ARGV[3] the generation the load started under (a missing generation never
--         matches it)
-- ARGV[4] the value
-- ARGV[5] the time to live, milliseconds; 0 for none
-- ARGV[6] '1' for a forced load (a refresh): when its store is refused, the
--         entry is deleted, since the lease may have been lost rather than
--         voided, and the value the refresh replaces must not stay
-- Returns 1 when written, 0 when the lease was void.
local function refuse()
  if ARGV[6] == '1' then
    if ARGV[1] == '' then
      redis.call('DEL', KEYS[1])
    else
      redis.call('HDEL', KEYS[1], ARGV[1])
    end
  end
  return 0
end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return refuse()
end
redis.call('DEL', KEYS[2])
if #KEYS > 2 and redis.call('GET', KEYS[3]) ~= ARGV[3] then
  return refuse()
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
