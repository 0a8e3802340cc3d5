-- acquire_many: for each of several entries, read it and, unless a value is
-- there, take its load lease. The entries' keys share one hash slot (on a
-- single node, any keys).
-- KEYS    for each entry: its key (a string, or the hash holding the
--         field), its lease, and its container's generation if it has one
-- ARGV[1] the lease time, milliseconds
-- then, for each entry, five arguments: the hash field ('' for a string
-- entry), the lease token, '1' to take the lease even when a value is
-- there, '1' when the entry has a generation key, and a new generation,
-- set when the container has none.
-- Returns, for each entry, value or false, status (1 lease taken, 0 held
-- by another, 2 a value is there and the lease was not asked for) and
-- generation ('' for none), flattened.
local out = {}
local gens = {} -- generations read or set, by key: a memo's entries share one
local k = 1
for a = 2, #ARGV, 5 do
  local field, token, take, hasgen, newgen = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local key, lease = KEYS[k], KEYS[k + 1]
  k = k + 2
  local gen = ''
  if hasgen == '1' then
    local gk = KEYS[k]
    gen = gens[gk]
    if not gen then
      gen = redis.call('GET', gk)
      if not gen then
        gen = newgen
        redis.call('SET', gk, gen)
      end
      gens[gk] = gen
    end
    k = k + 1
  end
  local v
  if field == '' then
    v = redis.call('GET', key)
  else
    v = redis.call('HGET', key, field)
  end
  local status = 0
  if v and take ~= '1' then
    status = 2
  elseif redis.call('SET', lease, token, 'NX', 'PX', ARGV[1]) then
    status = 1
  end
  out[#out + 1] = v
  out[#out + 1] = status
  out[#out + 1] = gen
end
return out
