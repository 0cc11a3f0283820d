-- Claim everything buffered as one batch, atomically, and list batches to apply.
-- KEYS[1] wb:views  KEYS[2] wb:seen  KEYS[3] wb:since  KEYS[4] wb:batches (zset batch id -> claim ms)
-- ARGV[1] new batch id  ARGV[2] now ms  ARGV[3] reclaim-after ms
-- The buffer hashes are RENAMEd to wb:batch:<id>:views / :seen, so ingestion continues into fresh
-- hashes at once and nothing is deleted before the database has it (Sentry's buffer deletes first).
-- Batches claimed longer than reclaim-after ago (their flusher died or failed) are re-claimed by
-- bumping their score. Returns the ids of the batches this caller must apply.
local id = ARGV[1]
local now = tonumber(ARGV[2])
local claimed = {}
local any = false
if redis.call("EXISTS", KEYS[1]) == 1 then
  redis.call("RENAME", KEYS[1], "wb:batch:" .. id .. ":views")
  any = true
end
if redis.call("EXISTS", KEYS[2]) == 1 then
  redis.call("RENAME", KEYS[2], "wb:batch:" .. id .. ":seen")
  any = true
end
if any then
  redis.call("DEL", KEYS[3])
  redis.call("ZADD", KEYS[4], now, id)
  table.insert(claimed, id)
end
local stale = redis.call("ZRANGEBYSCORE", KEYS[4], "-inf", now - tonumber(ARGV[3]))
for _, old in ipairs(stale) do
  redis.call("ZADD", KEYS[4], now, old)
  table.insert(claimed, old)
end
return claimed
