-- lock_release: delete a lock held with a token.
-- KEYS[1] the lock key
-- ARGV[1] the token
-- Returns 1 when deleted, 0 when the lock is not held with this token (it
-- expired, or another token holds it). The fence counter stays.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
