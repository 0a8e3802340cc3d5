-- release_many: release.lua for several leases at once: delete each lease
-- that still holds its token, and publish the leases that a waiting process
-- marked (LEASE:w; see store_many.lua).
-- KEYS the leases, then their marks (LEASE:w) in the same order; ARGV the
-- tokens, in the leases' order, then the channel of the leases' notices
-- ('' for none) and the command that publishes on it. Every key a script
-- touches is among its KEYS: a cluster refuses the call as a whole while
-- the slot moves, rather than fail it half-way at an undeclared key.
-- Returns how many were deleted.
local chunk = 1000

-- each calls redis.call(cmd, ...) with the keys t[1..#t], chunk by chunk,
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

local n = #KEYS / 2
local channel, publish = ARGV[n + 1] or '', ARGV[n + 2]
local read = KEYS
local held = each('MGET', read)
local del, told = {}, {}
for i = 1, n do
  if held[i] == ARGV[i] then
    del[#del + 1] = KEYS[i]
  end
  if held[n + i] and channel ~= '' then
    del[#del + 1] = read[n + i]
    told[#told + 1] = #KEYS[i] .. ':' .. KEYS[i]
  end
end
local deleted = 0
each('DEL', del)
for i = 1, n do
  if held[i] == ARGV[i] then
    deleted = deleted + 1
  end
end
if #told > 0 then
  redis.call(publish, channel, table.concat(told))
end
return deleted
