--[[ Retry budget of one webhook host: count a first attempt, or admit a retry if the budget allows.

Retries to a host may be at most `ratio` of its first attempts, and always at least `minimum`,
counted over the current window and the previous one (so the budget does not reset all at once).

KEYS[1]  hash of the host's current window: f = first attempts, r = retries admitted
KEYS[2]  the same hash of the previous window (read only)
ARGV[1]  "first" or "retry"
ARGV[2]  ratio (retries per first attempt, e.g. 0.1)
ARGV[3]  minimum retries per two windows
ARGV[4]  TTL in seconds of KEYS[1] (two windows: it is the "previous" one for one more window)
Returns  {admitted 0|1, retries admitted in the two windows (this one included), allowance}
]]
local ttl = tonumber(ARGV[4])
local cur = redis.call('HMGET', KEYS[1], 'f', 'r')
local prev = redis.call('HMGET', KEYS[2], 'f', 'r')
local firsts = (tonumber(cur[1]) or 0) + (tonumber(prev[1]) or 0)
local retries = (tonumber(cur[2]) or 0) + (tonumber(prev[2]) or 0)
local allowance = math.max(tonumber(ARGV[3]), math.floor(tonumber(ARGV[2]) * firsts))

if ARGV[1] == 'first' then
  redis.call('HINCRBY', KEYS[1], 'f', 1)
  redis.call('EXPIRE', KEYS[1], ttl)
  return {1, retries, allowance}
end
if retries < allowance then
  redis.call('HINCRBY', KEYS[1], 'r', 1)
  redis.call('EXPIRE', KEYS[1], ttl)
  return {1, retries + 1, allowance}
end
return {0, retries, allowance}
