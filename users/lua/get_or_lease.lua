-- Read a cache entry, or take the lease to fill it (single-flight against stampedes).
-- KEYS[1] entry key   KEYS[2] lease key
-- ARGV[1] lease lifetime in ms   ARGV[2] lease token
-- A version floor (left by an invalidation: the entry must be reloaded, and nothing older than the
-- floor may be stored) is a miss. Entry helpers: _entry.lua.
-- Returns {1, value} on a hit; {0, "lease"} when this caller must load and fill;
-- {0, "wait"} when another caller holds the lease (poll briefly, then load anyway).
local value = redis.call("GET", KEYS[1])
if value and not entry_is_floor(value) then
  return {1, value}
end
if redis.call("SET", KEYS[2], ARGV[2], "NX", "PX", ARGV[1]) then
  return {0, "lease"}
end
return {0, "wait"}
