-- set_if_newer.lua for many entries in one call (write-behind flushes refresh thousands of rows).
-- KEYS[i] entry key
-- ARGV[1] ttl seconds; then for each key i: ARGV[2i] version, ARGV[2i+1] payload
-- Returns the number of entries stored (the others were refused: a newer version is cached).
local ttl = ARGV[1]
local stored = 0
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[2 * i])
  local current = redis.call("GET", key)
  local newer = true
  if current then
    local sep = string.find(current, ":", 1, true)
    newer = tonumber(string.sub(current, 1, sep - 1)) < version
  end
  if newer then
    redis.call("SET", key, ARGV[2 * i] .. ":" .. ARGV[2 * i + 1], "EX", ttl)
    stored = stored + 1
  end
end
return stored
