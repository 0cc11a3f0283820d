--[[ Fixed-window counter, one call per request.

Windows are aligned to multiples of the window length on the Redis server's clock (TIME). At most
`limit` requests are admitted per window; up to 2 * limit can pass around a boundary, which is the
price of the simplest algorithm. A denial is recorded in the per-minute statistics in the same call.

KEYS[1]  state hash of one (policy, key): w = window index, c = admitted in that window
KEYS[2]  sorted set "denied members" of the current minute (ZINCRBY member 1 on a denial)
KEYS[3]  hash policy -> denials in the current minute (HINCRBY on a denial)
ARGV[1]  limit: requests per window
ARGV[2]  window length in milliseconds
ARGV[3]  cost of this request; 0 peeks: nothing is written and nothing is recorded
ARGV[4]  member recorded in KEYS[2] on a denial ("policy|key")
ARGV[5]  policy name, the field of KEYS[3]
ARGV[6]  TTL in seconds of KEYS[2] and KEYS[3]
ARGV[7]  clock override in milliseconds for deterministic tests; empty uses the server's TIME
Returns  {allowed 0|1, limit, remaining, reset seconds (end of the window), retry-after seconds
          (0 when allowed)}
         For a peek, allowed says whether a request of cost 1 would be admitted now.
]]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[7] ~= '' then
  now = tonumber(ARGV[7])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local idx = math.floor(now / window)
local state = redis.call('HMGET', KEYS[1], 'w', 'c')
local w, count = tonumber(state[1]), tonumber(state[2]) or 0
if w == nil or w < idx then
  count = 0
elseif w > idx then
  idx = w  -- the clock stepped back: keep counting in the newer window
end
local reset_ms = math.max(1, (idx + 1) * window - now)
local reset = math.ceil(reset_ms / 1000)

if cost == 0 then
  local ok = (count + 1 <= limit) and 1 or 0
  local retry = 0
  if ok == 0 then retry = math.max(1, reset) end
  return {ok, limit, math.max(0, limit - count), reset, retry}
end

if count + cost <= limit then
  count = count + cost
  redis.call('HSET', KEYS[1], 'w', idx, 'c', count)
  redis.call('PEXPIRE', KEYS[1], math.ceil(reset_ms))
  return {1, limit, limit - count, reset, 0}
end

local ttl = tonumber(ARGV[6])
redis.call('ZINCRBY', KEYS[2], 1, ARGV[4])
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
redis.call('EXPIRE', KEYS[3], ttl)
return {0, limit, math.max(0, limit - count), reset, math.max(1, reset)}
