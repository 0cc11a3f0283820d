-- Buffer one write-behind item, coalesced per user, with backpressure.
-- KEYS[1] wb:views (hash user->count)  KEYS[2] wb:seen (hash user->epoch ms)  KEYS[3] wb:since (zset user->first ms)
-- ARGV[1] kind ("views" | "seen")  ARGV[2] user id  ARGV[3] amount (views) or epoch ms (seen)
-- ARGV[4] max pending users (views only; 0 = no limit)  ARGV[5] now epoch ms
-- Returns the user's pending views after the add (views), 1 (seen), or -1 when the buffer is full.
if ARGV[1] == "views" then
  local max = tonumber(ARGV[4])
  if max > 0 and redis.call("HEXISTS", KEYS[1], ARGV[2]) == 0 and redis.call("HLEN", KEYS[1]) >= max then
    return -1
  end
  redis.call("ZADD", KEYS[3], "NX", ARGV[5], ARGV[2])
  return redis.call("HINCRBY", KEYS[1], ARGV[2], ARGV[3])
end
local current = tonumber(redis.call("HGET", KEYS[2], ARGV[2]) or "0")
if tonumber(ARGV[3]) > current then  -- the latest stamp wins, whatever order they arrive in
  redis.call("HSET", KEYS[2], ARGV[2], ARGV[3])
end
redis.call("ZADD", KEYS[3], "NX", ARGV[5], ARGV[2])
return 1
