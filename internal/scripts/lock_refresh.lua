-- lock_refresh: extend, or only read, the lease of a lock held with a token.
-- KEYS[1] the lock key, KEYS[2] its mark as awaited (KEYS[1]:w)
-- ARGV[1] the token
-- ARGV[2] the new lease time, milliseconds; '0' to read the lease only
-- Returns the lease's remaining milliseconds when the lock is held with this
-- token, -2 when it is not (it expired, or another token holds it).
--
-- A mark of the lock as awaited (KEYS[2], a copy of this token made by a
-- waiting process, which lasts as long as the lease had left then) is
-- extended with the lease, so that the Release it waits for still sees it.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -2
end
if ARGV[2] == '0' then
  return redis.call('PTTL', KEYS[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local mark = KEYS[2]
if redis.call('GET', mark) == ARGV[1] then
  redis.call('PEXPIRE', mark, ARGV[2])
end
return tonumber(ARGV[2])
