-- release: delete a key that holds a token (a load's lease, or a lock), only
-- while it still holds that token, and publish it when a waiting process
-- marked it (KEY:w, a copy of the key as the waiter found it: this token,
-- or an earlier holder's).
-- KEYS[1] the lease or lock key, KEYS[2] its mark (KEYS[1]:w); ARGV[1] the
-- token; ARGV[2] the channel of
-- its notices ('' or absent for none), ARGV[3] the command that publishes
-- on it (PUBLISH, or SPUBLISH on a cluster).
-- Returns 1 when deleted, 0 when the key no longer holds this token (it
-- expired, or another token holds it). A lock's fence counter stays.
local held = redis.call('MGET', KEYS[1], KEYS[2])
local n = 0
if held[1] == ARGV[1] then
  n = redis.call('DEL', KEYS[1])
end
if held[2] and (ARGV[2] or '') ~= '' then
  redis.call('DEL', KEYS[2])
  redis.call(ARGV[3], ARGV[2], #KEYS[1] .. ':' .. KEYS[1])
end
return n
