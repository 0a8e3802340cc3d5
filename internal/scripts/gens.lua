-- gens: return the generation each key holds, setting a new one where a key
-- has none. The keys share one hash slot; none expires.
-- KEYS     generation keys (a hash's generation and field version)
-- ARGV[i]  the new generation for KEYS[i]
local out = {}
for i, k in ipairs(KEYS) do
  local g = redis.call('GET', k)
  if not g then
    g = ARGV[i]
    redis.call('SET', k, g)
  end
  out[i] = g
end
return out
