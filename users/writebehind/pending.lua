-- Pending (not yet acknowledged) views of one user: the live buffer plus every claimed batch.
-- KEYS[1] wb:views  KEYS[2] wb:batches   ARGV[1] user id
-- Returns the total as an integer.
local total = tonumber(redis.call("HGET", KEYS[1], ARGV[1]) or "0")
for _, id in ipairs(redis.call("ZRANGE", KEYS[2], 0, -1)) do
  total = total + tonumber(redis.call("HGET", "wb:batch:" .. id .. ":views", ARGV[1]) or "0")
end
return total
