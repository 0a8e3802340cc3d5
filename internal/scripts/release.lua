-- release: delete a lease held with this token.
-- KEYS[1] the lease key; ARGV[1] the token.
-- Returns 1 when deleted, 0 when the lease is no longer held with this token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
