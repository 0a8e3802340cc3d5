-- release: delete a key that holds a token (a load's lease, or a lock), only
-- while it still holds that token.
-- KEYS[1] the lease or lock key; ARGV[1] the token.
-- Returns 1 when deleted, 0 when the key no longer holds this token (it
-- expired, or another token holds it). A lock's fence counter stays.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
