-- Invalidate many entries without deleting them: replace each with a version floor "<version>:~"
-- unless a version at least as new is cached. Readers treat a floor as a miss and reload; a slow
-- reader holding an older version can still not store it (see set_if_newer.lua).
-- KEYS[i] entry key   ARGV[1] floor ttl seconds   ARGV[i + 1] version for KEYS[i] (compared as
-- integers of any size by version_cmp, _version.lua)
-- Returns the number of entries floored.
local n = 0
for i, key in ipairs(KEYS) do
  local current = redis.call("GET", key)
  local older = true
  if current then
    local sep = string.find(current, ":", 1, true)
    older = version_cmp(string.sub(current, 1, sep - 1), ARGV[i + 1]) < 0
  end
  if older then
    redis.call("SET", key, ARGV[i + 1] .. ":~", "EX", ARGV[1])
    n = n + 1
  end
end
return n
