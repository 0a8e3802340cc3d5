-- store_fields: write many fields of a hash at once, only when no
-- invalidation touched the hash since their values were loaded.
-- KEYS[1]    the hash
-- KEYS[2]    its generation (moved when the whole hash is invalidated)
-- KEYS[3]    its field version (moved when one of its fields is invalidated)
-- KEYS[4..]  the leases of the fields written: deleted, so that single-field
--            loads in flight (which may have read older data) are not stored
-- ARGV[1]    the generation seen before loading
-- ARGV[2]    the field version seen before loading
-- ARGV[3]    the hash's time to live, milliseconds; 0 for none
-- ARGV[4..]  field, value, field, value, ...
-- Returns 1 when written, 0 when an invalidation came between (or either key
-- was lost: a missing generation or version never matches).
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return 0
end
for i = 4, #KEYS do
  redis.call('DEL', KEYS[i])
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[1])
end
return 1
