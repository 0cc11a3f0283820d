-- Pending (not yet acknowledged) views of one user: its shard group's buffer and claimed batches.
-- KEYS[1] the group's buffer hash  KEYS[2] its batches zset (members: batch hash key names)
-- ARGV[1] the user's views field  ARGV[2] the user's rev-mark field
-- Returns {buffered views, then for each claimed batch holding views of the user: views, rev mark}.
-- A rev mark (written before the batch's shard transaction commits) is the row version the update
-- produced; 0 while unmarked. The caller compares it with the row it read: a row at least that new
-- already contains the batch, so the batch must not be added again.
local out = {tonumber(redis.call("HGET", KEYS[1], ARGV[1]) or "0")}
for _, batch in ipairs(redis.call("ZRANGE", KEYS[2], 0, -1)) do
  local n = redis.call("HGET", batch, ARGV[1])
  if n then
    table.insert(out, n)
    table.insert(out, redis.call("HGET", batch, ARGV[2]) or "0")
  end
end
return out
