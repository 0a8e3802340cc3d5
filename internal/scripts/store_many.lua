-- store_many: store several loaded entries, each only while its lease is
-- still held (and, with a generation, while the generation is the one the
-- load started under). The entries' keys share one hash slot (on a single
-- node, any keys).
-- KEYS    for each entry: its key (a string, or the hash holding the
--         field), its lease, and its container's generation if it has one
-- ARGV[1] '1' for a forced load (a refresh): an entry whose store is
--         refused is deleted (DEL, or HDEL of its field), so that the value
--         the refresh meant to replace is not left behind
-- then, for each entry, six arguments: the hash field ('' for a string
-- entry), the lease token, the generation the load started under, the
-- value, the time to live in milliseconds (0 for none), and '1' when the
-- entry has a generation key.
-- Returns, for each entry, 1 when written, 0 when its lease was void.
local out = {}
local gens = {} -- generations read, by key: a memo's entries share one
local k = 1
for a = 2, #ARGV, 6 do
  local field, token, gen, value, ttl, hasgen = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4]), ARGV[a + 5]
  local key, lease = KEYS[k], KEYS[k + 1]
  k = k + 2
  local ok = redis.call('GET', lease) == token
  if ok then
    redis.call('DEL', lease)
  end
  if hasgen == '1' then
    if ok then
      local gk = KEYS[k]
      local now = gens[gk]
      if now == nil then
        now = redis.call('GET', gk)
        gens[gk] = now
      end
      if now ~= gen then
        ok = false
      end
    end
    k = k + 1
  end
  if ok then
    if field == '' then
      if ttl > 0 then
        redis.call('SET', key, value, 'PX', ttl)
      else
        redis.call('SET', key, value)
      end
    else
      redis.call('HSET', key, field, value)
      if ttl > 0 then
        redis.call('PEXPIRE', key, ttl)
      else
        redis.call('PERSIST', key)
      end
    end
    out[#out + 1] = 1
  else
    if ARGV[1] == '1' then
      if field == '' then
        redis.call('DEL', key)
      else
        redis.call('HDEL', key, field)
      end
    end
    out[#out + 1] = 0
  end
end
return out
