-- store_many: store several loaded entries, each only while its lease is
-- still held (and, with a generation, while the generation is the one the
-- load started under). The entries' keys share one hash slot (on a single
-- node, any keys).
-- KEYS    for each entry: its key (a string, or the hash holding the
--         field), its lease, and its container's generation if it has one
-- ARGV[1] '1' for a forced load (a refresh): an entry whose store is
--         refused is deleted (DEL, or HDEL of its field), so that the value
--         the refresh meant to replace is not left behind
-- ARGV[2] the channel of the leases' notices ('' for none), ARGV[3] the
--         command that publishes on it (PUBLISH, or SPUBLISH on a cluster)
-- then, for each entry, six arguments: the hash field ('' for a string
-- entry), the lease token, the generation the load started under, the
-- value, the time to live in milliseconds (0 for none), and '1' when the
-- entry has a generation key.
-- Returns, for each entry, 1 when written, 0 when its lease was void.
--
-- A lease that a waiting process marked (LEASE:w, a copy of the lease
-- as the waiter found it: this load's token, or an earlier holder's whose
-- lease an invalidation deleted) is published on the channel when its
-- store is done or refused, and its mark deleted: the waiter then reads
-- the entry.
--
-- The leases and marks are read with one MGET and the stored entries'
-- leases deleted with one DEL, in chunks: a call per entry costs more than
-- the work it does.
local chunk = 1000

-- each calls redis.call(cmd, ...) with the keys t[from..to], chunk by chunk,
-- and returns the replies of MGET joined.
local function each(cmd, t)
  local out = {}
  for from = 1, #t, chunk do
    local r = redis.call(cmd, unpack(t, from, math.min(from + chunk - 1, #t)))
    if type(r) == 'table' then
      for _, v in ipairs(r) do
        out[#out + 1] = v
      end
    end
  end
  return out
end

local forced = ARGV[1] == '1'
local channel, publish = ARGV[2], ARGV[3]
local first = 4 -- the first entry's first argument
local leases, keyAt, genAt = {}, {}, {}
local k = 1
for a = first, #ARGV, 6 do
  leases[#leases + 1] = KEYS[k + 1]
  keyAt[#keyAt + 1] = k
  if ARGV[a + 5] == '1' then
    genAt[#keyAt] = k + 2
    k = k + 3
  else
    k = k + 2
  end
end
local n = #leases
local read = {}
for j = 1, n do
  read[j] = leases[j]
  read[n + j] = leases[j] .. ':w'
end
local holders = each('MGET', read) -- the leases, then their marks

local out, done = {}, {}
local told = {} -- the marked leases, as a notice
local gens = {} -- generations read, by key: a memo's entries share one
for j = 1, n do
  local a = first + (j - 1) * 6
  local field, key = ARGV[a], KEYS[keyAt[j]]
  local ok = holders[j] == ARGV[a + 1]
  if holders[n + j] and channel ~= '' then
    told[#told + 1] = #leases[j] .. ':' .. leases[j]
    done[#done + 1] = read[n + j]
  end
  if ok then
    done[#done + 1] = leases[j]
    local gk = genAt[j]
    if gk then
      gk = KEYS[gk]
      local now = gens[gk]
      if now == nil then
        now = redis.call('GET', gk)
        gens[gk] = now
      end
      ok = now == ARGV[a + 2]
    end
  end
  if ok then
    local ttl = ARGV[a + 4]
    if field == '' then
      if ttl ~= '0' then
        redis.call('SET', key, ARGV[a + 3], 'PX', ttl)
      else
        redis.call('SET', key, ARGV[a + 3])
      end
    else
      redis.call('HSET', key, field, ARGV[a + 3])
      if ttl ~= '0' then
        redis.call('PEXPIRE', key, ttl)
      else
        redis.call('PERSIST', key)
      end
    end
    out[j] = 1
  else
    if forced then
      if field == '' then
        redis.call('DEL', key)
      else
        redis.call('HDEL', key, field)
      end
    end
    out[j] = 0
  end
end
each('DEL', done)
if #told > 0 then
  redis.call(publish, channel, table.concat(told))
end
return out
