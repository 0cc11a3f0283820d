-- Invalidate many entries without deleting them: replace each with a version floor unless a version at
-- least as new is cached. Readers treat a floor as a miss and reload; a slow reader holding an older
-- version can still not store it (see set_if_newer.lua). Entry helpers: _entry.lua.
-- KEYS[i] entry key   ARGV[1] floor ttl seconds   ARGV[i + 1] version for KEYS[i] (compared as
-- integers of any size by version_cmp)
-- Returns the number of entries floored.
local n = 0
for i, key in ipairs(KEYS) do
  local current = redis.call("GET", key)
  local older = true
  if current then
    local version = entry_parse(current)
    older = version_cmp(version, ARGV[i + 1]) < 0
  end
  if older then
    redis.call("SET", key, entry_encode(ARGV[i + 1], ENTRY_FLOOR), "EX", ARGV[1])
    n = n + 1
  end
end
return n
