-- acquire: read an entry and, unless a value is there, take its load lease.
-- KEYS[1] the entry's key (a string, or the hash holding the field)
-- KEYS[2] the lease key
-- KEYS[3] the container's generation key (optional)
-- ARGV[1] the hash field, '' for a string entry
-- ARGV[2] the lease token
-- ARGV[3] the lease time, milliseconds
-- ARGV[4] '1' to take the lease even when a value is there
-- ARGV[5] a new generation, set when the container has none (with KEYS[3])
-- Returns {value or nil, status, generation}: status 1 when the lease was
-- taken, 0 when another holds it, 2 when a value is there and ARGV[4] is not
-- '1'. A container that lost its generation (evicted, or never set) gets a
-- new one: no entry was stored under it, so none of its old entries counts.
local v
if ARGV[1] == '' then
  v = redis.call('GET', KEYS[1])
else
  v = redis.call('HGET', KEYS[1], ARGV[1])
end
local gen = ''
if #KEYS > 2 then
  gen = redis.call('GET', KEYS[3])
  if not gen then
    gen = ARGV[5]
    redis.call('SET', KEYS[3], gen)
  end
end
if v and ARGV[4] ~= '1' then
  return {v, 2, gen}
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {v, 1, gen}
end
return {v, 0, gen}
