-- Claim one shard group's buffer as a batch, atomically, and list the group's batches to apply.
-- KEYS[1] buffer hash  KEYS[2] since zset  KEYS[3] batches zset (batch key -> last claim ms)
-- KEYS[4] first zset (batch key -> first claim ms)  KEYS[5] the key name for a new batch
-- ARGV[1] now ms  ARGV[2] reclaim-after ms
-- The buffer is RENAMEd to the new batch key, so ingestion continues into a fresh hash at once and
-- nothing is deleted before the database has it. A group has at most one batch in flight: while
-- one is claimed (its shard down, its flusher busy or dead) the buffer keeps coalescing instead of
-- piling up batches. Batches claimed longer than reclaim-after ago (their flusher died, or released
-- them after a failure with score 0) are re-claimed by bumping their score.
-- Returns the key names of the batches this caller must apply.
local now = tonumber(ARGV[1])
local claimed = redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now - tonumber(ARGV[2]))
for _, old in ipairs(claimed) do
  redis.call("ZADD", KEYS[3], now, old)
end
if redis.call("ZCARD", KEYS[3]) == 0 and redis.call("EXISTS", KEYS[1]) == 1 then
  redis.call("RENAME", KEYS[1], KEYS[5])
  redis.call("DEL", KEYS[2])
  redis.call("ZADD", KEYS[3], now, KEYS[5])
  redis.call("ZADD", KEYS[4], now, KEYS[5])
  table.insert(claimed, KEYS[5])
end
return claimed
