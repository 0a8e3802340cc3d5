-- renew: extend a lease held with this token.
-- KEYS[1] the lease key; ARGV[1] the token; ARGV[2] the lease time, milliseconds.
-- Returns 1 when extended, 0 when the lease is no longer held with this token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
