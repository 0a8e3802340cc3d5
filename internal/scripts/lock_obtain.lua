-- lock_obtain: take a lock and draw its fencing token, in one step.
-- KEYS[1] the lock key
-- KEYS[2] the lock's fence counter (same hash slot; it never expires)
-- KEYS[3] the lock's mark as awaited (KEYS[1]:w)
-- ARGV[1] the token
-- ARGV[2] the lease time, milliseconds
-- ARGV[3] '1' when the caller waits to be told of a Release: a lock held by
--         another token is then marked as awaited (KEYS[3], a copy of
--         it, which release.lua sees)
-- Returns the fence (at least 1) when the lock is taken, 0 when another
-- token holds it. A lock already held with this token (an earlier attempt
-- whose reply was lost) has its lease renewed and returns its fence again.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  if fence == 1 then
    -- A new counter (a new name, or one whose counter Redis lost) starts at
    -- the server's time in microseconds, so that it starts above every fence
    -- it may have given before.
    local t = redis.call('TIME')
    local seed = t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
    redis.call('SET', KEYS[2], seed)
    return tonumber(seed)
  end
  return fence
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local fence = redis.call('GET', KEYS[2])
  if fence then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(fence)
  end
end
if ARGV[3] == '1' then
  redis.call('COPY', KEYS[1], KEYS[3], 'REPLACE')
end
return 0
