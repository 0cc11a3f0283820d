-- Store a versioned cache entry unless a newer (or equal) version is already cached.
-- This is what makes a slow reader harmless: it can never overwrite a newer version written through by
-- an update, nor a delete's tombstone. A version floor (left by an invalidation) admits that version
-- itself: it is what the next reader loads from the database. Entry helpers: _entry.lua.
-- KEYS[1] entry key   KEYS[2] lease key (deleted, may be "")
-- ARGV[1] version (a non-negative integer, compared with version_cmp)
-- ARGV[2] payload   ARGV[3] ttl seconds
-- Returns 1 when stored, 0 when refused because the cached version is not older.
local current = redis.call("GET", KEYS[1])
if KEYS[2] ~= "" then
  redis.call("DEL", KEYS[2])
end
if current then
  local version, payload = entry_parse(current)
  local order = version_cmp(version, ARGV[1])
  local is_floor = payload == ENTRY_FLOOR
  if order > 0 or (order == 0 and not is_floor) then
    return 0
  end
end
redis.call("SET", KEYS[1], entry_encode(ARGV[1], ARGV[2]), "EX", ARGV[3])
return 1
