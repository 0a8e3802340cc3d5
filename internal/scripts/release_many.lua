-- release_many: release.lua for several leases at once: delete each lease
-- that still holds its token.
-- KEYS the leases; ARGV the tokens, in the same order.
-- Returns how many were deleted.
local n = 0
for i, lease in ipairs(KEYS) do
  if redis.call('GET', lease) == ARGV[i] then
    n = n + redis.call('DEL', lease)
  end
end
return n
