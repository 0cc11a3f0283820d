--[[ Sliding-window counter (Cloudflare's approximation), one call per request.

The rate is prev * (1 - elapsed / window) + curr, where prev and curr count the requests admitted in
the previous and the current fixed window. Time is the Redis server's TIME, so every app process
shares one clock. Denied requests are not counted: a client that keeps retrying is admitted again as
soon as its rate falls. A denial is recorded in the per-minute statistics in the same call.

KEYS[1]  state hash of one (policy, key): w = current window index, c = admitted in it, p = admitted
         in the previous window
KEYS[2]  sorted set "denied members" of the current minute (ZINCRBY member 1 on a denial)
KEYS[3]  hash policy -> denials in the current minute (HINCRBY on a denial)
ARGV[1]  limit: requests per window
ARGV[2]  window length in milliseconds
ARGV[3]  cost of this request; 0 peeks: nothing is written and nothing is recorded
ARGV[4]  member recorded in KEYS[2] on a denial ("policy|key")
ARGV[5]  policy name, the field of KEYS[3]
ARGV[6]  TTL in seconds of KEYS[2] and KEYS[3]
ARGV[7]  clock override in milliseconds for deterministic tests; empty uses the server's TIME
Returns  {allowed 0|1, limit, remaining, reset seconds, retry-after seconds (0 when allowed)}
         For a peek, allowed says whether a request of cost 1 would be admitted now.
]]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = clock_ms()  -- _common.lua
local EPSILON = 1e-9  -- float rounding must not deny a request admitted by exact arithmetic

local idx = math.floor(now / window)
local state = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local w = tonumber(state[1])
local curr, prev = tonumber(state[2]) or 0, tonumber(state[3]) or 0
if w == nil then
  curr, prev = 0, 0
elseif w == idx - 1 then
  prev, curr = curr, 0
elseif w > idx then
  idx = w  -- the clock stepped back: keep the newer counts, weighted as conservatively as possible
elseif w ~= idx then
  curr, prev = 0, 0
end
local elapsed = math.max(0, now - idx * window)
local rate = prev * (1 - elapsed / window) + curr
local reset_ms = window - elapsed

local function wait_ms(need)
  -- time until rate + need <= limit, assuming nothing else is admitted meanwhile
  if need > limit then return window end
  if curr + need <= limit then
    if prev <= 0 then return 0 end
    return math.max(0, window * (1 - (limit - curr - need) / prev) - elapsed)
  end
  return reset_ms + math.max(0, window * (1 - (limit - need) / curr))
end

if cost == 0 then
  local ok = (rate + 1 <= limit + EPSILON) and 1 or 0
  local retry = 0
  if ok == 0 then retry = math.max(1, math.ceil(wait_ms(1) / 1000)) end
  return {ok, limit, math.max(0, math.floor(limit - rate + EPSILON)), math.max(math.ceil(reset_ms / 1000), retry), retry}
end

if rate + cost <= limit + EPSILON then
  curr = curr + cost
  redis.call('HSET', KEYS[1], 'w', idx, 'c', curr, 'p', prev)
  -- Once two more windows have started, neither count matters any more: the hash expires at the end
  -- of window idx + 1. That moment is the same for every request of window idx, so it is set by the
  -- first one (HSET keeps a key's expiry), a command less for the others.
  if w ~= idx then
    redis.call('PEXPIRE', KEYS[1], math.ceil(2 * window - elapsed))
  end
  return {1, limit, math.max(0, math.floor(limit - rate - cost + EPSILON)), math.ceil(reset_ms / 1000), 0}
end

record_denial()  -- _common.lua
local retry = math.max(1, math.ceil(wait_ms(cost) / 1000))
return {0, limit, 0, math.max(math.ceil(reset_ms / 1000), retry), retry}
