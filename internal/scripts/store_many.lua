-- store_many: store several loaded entries, each only while its lease
-- still holds the load's token (and, for entries under a generation, while
-- the generation is the one the load started under). The keys share one
-- hash slot (on a single node, any keys).
-- KEYS    the generation key the entries are checked against, when they
--         have one; then, for each entry, its key (a string, or the hash
--         holding the field); then their leases, and the leases' marks
--         (LEASE:w), in the same order. Every key the script touches is
--         among its KEYS: a cluster refuses the call as a whole while the
--         slot moves, rather than fail it half-way at an undeclared key.
-- ARGV[1] '1' for a forced load (a refresh): an entry whose store is
--         refused is deleted (DEL, or HDEL of its field), so that the value
--         the refresh meant to replace is not left behind
-- ARGV[2] the channel of the leases' notices ('' for none), ARGV[3] the
--         command that publishes on it (PUBLISH, or SPUBLISH on a cluster)
-- ARGV[4] the load's token, which each of its leases holds
-- ARGV[5] the generation the load started under (with a generation key;
--         '' when it found none, which no generation matches)
-- ARGV[6] '1' when each entry names a hash field, '0' for string entries
-- then, for each entry: its hash field (only when ARGV[6] is '1'), its
-- value, and its time to live in milliseconds (0 for none).
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
-- the work it does. What is the same for every entry (the token, the
-- generation) is sent once: each argument costs the script a string.
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
local token = ARGV[4]
local fields = ARGV[6] == '1'
local g = #KEYS % 3 -- 1 with a generation key
local genOk = true
if g == 1 then
  genOk = redis.call('GET', KEYS[1]) == ARGV[5]
end
local n = (#KEYS - g) / 3
local read = {}
for j = 1, 2 * n do
  read[j] = KEYS[g + n + j]
end
local holders = each('MGET', read) -- the leases, then their marks

local out, done = {}, {}
local told = {} -- the marked leases, as a notice
local a = 7 -- the entry's first argument
for j = 1, n do
  local key = KEYS[g + j]
  local field = ''
  if fields then
    field = ARGV[a]
    a = a + 1
  end
  local value, ttl = ARGV[a], ARGV[a + 1]
  a = a + 2
  local ok = holders[j] == token
  if holders[n + j] and channel ~= '' then
    told[#told + 1] = #read[j] .. ':' .. read[j]
    done[#done + 1] = read[n + j]
  end
  if ok then
    done[#done + 1] = read[j]
    ok = genOk
  end
  if ok then
    if field == '' then
      if ttl ~= '0' then
        redis.call('SET', key, value, 'PX', ttl)
      else
        redis.call('SET', key, value)
      end
    else
      redis.call('HSET', key, field, value)
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
