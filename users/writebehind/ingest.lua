-- Buffer one write-behind item of one shard group, coalesced per user, with backpressure.
-- KEYS[1] the group's buffer hash  KEYS[2] its since zset  KEYS[3] its batches zset (members are the
-- claimed batch hashes' key names, written by claim.lua from names the caller passed; same hash tag)
-- KEYS[4] (views with an id only) the view's marker key
-- ARGV[1] kind ("views" | "seen")  ARGV[2] user id  ARGV[3] the user's field  ARGV[4] views to add or
-- epoch ms seen  ARGV[5] max users with pending views in this group, buffered or claimed (0 = none)
-- ARGV[6] now epoch ms  ARGV[7] the count field ("#views")  ARGV[8] marker ttl seconds
-- Returns the user's buffered views after the add (views), 1 (seen), -1 when the group's backlog is
-- full (nothing added), -2 when the marker says this view was counted before (nothing added).
if ARGV[1] == "views" then
  if KEYS[4] and redis.call("EXISTS", KEYS[4]) == 1 then
    -- A write, so that a WAIT sent after this call also covers the first attempt's count (replication
    -- is ordered): the retry of an unconfirmed view is confirmed only once that count is replicated.
    redis.call("EXPIRE", KEYS[4], ARGV[8])
    return -2
  end
  local max = tonumber(ARGV[5])
  if max > 0 and redis.call("HEXISTS", KEYS[1], ARGV[3]) == 0 then
    -- Claimed batches count too: a shard that is down keeps its batch, and its backlog must stay bounded.
    local users = tonumber(redis.call("HGET", KEYS[1], ARGV[7]) or "0")
    for _, batch in ipairs(redis.call("ZRANGE", KEYS[3], 0, -1)) do
      users = users + tonumber(redis.call("HGET", batch, ARGV[7]) or "0")
    end
    if users >= max then
      return -1
    end
  end
  if KEYS[4] then
    redis.call("SET", KEYS[4], "1", "EX", ARGV[8])
  end
  redis.call("ZADD", KEYS[2], "NX", ARGV[6], ARGV[2])
  local total = redis.call("HINCRBY", KEYS[1], ARGV[3], ARGV[4])
  if total == tonumber(ARGV[4]) then  -- a new field: one more user with pending views
    redis.call("HINCRBY", KEYS[1], ARGV[7], 1)
  end
  return total
end
local current = tonumber(redis.call("HGET", KEYS[1], ARGV[3]) or "0")
if tonumber(ARGV[4]) > current then  -- the latest stamp wins, whatever order they arrive in
  redis.call("HSET", KEYS[1], ARGV[3], ARGV[4])
end
redis.call("ZADD", KEYS[2], "NX", ARGV[6], ARGV[2])
return 1
