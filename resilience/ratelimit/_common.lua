-- Shared by every limiter script (scripts.py puts it in front of each): the clock and the denial
-- statistics, which every limiter script takes at the same KEYS and ARGV positions:
-- KEYS[2] denied members of the minute, KEYS[3] denials per policy of the minute,
-- ARGV[4] the member ("policy|key"), ARGV[5] the policy, ARGV[6] their TTL, ARGV[7] a clock override.

-- Milliseconds: the clock override of deterministic tests, else the Redis server's TIME (one clock for
-- every app process).
local function clock_ms()
  if ARGV[7] ~= '' then
    return tonumber(ARGV[7])
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function record_denial()
  local ttl = tonumber(ARGV[6])
  redis.call('ZINCRBY', KEYS[2], 1, ARGV[4])
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
  redis.call('EXPIRE', KEYS[3], ttl)
end
