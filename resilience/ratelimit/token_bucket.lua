--[[ Token bucket with continuous refill, one call per request.

The bucket holds up to `limit` tokens and refills at limit / window tokens per millisecond; a request
takes `cost` tokens or is denied without taking any. Time is the Redis server's TIME, so every app
process shares one clock. A denial is recorded in the per-minute statistics in the same call.

KEYS[1]  state hash of one (policy, key): tk = tokens left (a float), ts = time of the last update (ms)
KEYS[2]  sorted set "denied members" of the current minute (ZINCRBY member 1 on a denial)
KEYS[3]  hash policy -> denials in the current minute (HINCRBY on a denial)
ARGV[1]  limit: bucket capacity, and tokens refilled per window
ARGV[2]  window length in milliseconds
ARGV[3]  cost of this request; 0 peeks: nothing is written and nothing is recorded
ARGV[4]  member recorded in KEYS[2] on a denial ("policy|key")
ARGV[5]  policy name, the field of KEYS[3]
ARGV[6]  TTL in seconds of KEYS[2] and KEYS[3]
ARGV[7]  clock override in milliseconds for deterministic tests; empty uses the server's TIME
Returns  {allowed 0|1, limit, remaining, reset seconds (until the bucket is full),
          retry-after seconds (0 when allowed)}
         For a peek, allowed says whether a request of cost 1 would be admitted now.
]]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = clock_ms()  -- _common.lua
local EPSILON = 1e-9
local per_ms = limit / window

local state = redis.call('HMGET', KEYS[1], 'tk', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then
  tokens, ts = limit, now
elseif now > ts then
  tokens = math.min(limit, tokens + (now - ts) * per_ms)
  ts = now
end  -- a clock that stepped back refills nothing

local function secs(tokens_missing)
  if tokens_missing <= EPSILON or per_ms <= 0 then return 0 end
  return math.ceil(tokens_missing / per_ms / 1000)
end

if cost == 0 then
  local ok = (tokens + EPSILON >= 1) and 1 or 0
  local retry = 0
  if ok == 0 then retry = math.max(1, secs(1 - tokens)) end
  return {ok, limit, math.floor(tokens + EPSILON), secs(limit - tokens), retry}
end

if tokens + EPSILON >= cost then
  tokens = math.max(0, tokens - cost)
  redis.call('HSET', KEYS[1], 'tk', tokens, 'ts', ts)
  -- once the bucket would be full again the hash is equivalent to no hash at all
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((limit - tokens) / per_ms)))
  return {1, limit, math.floor(tokens + EPSILON), secs(limit - tokens), 0}
end

record_denial()  -- _common.lua
local retry
if cost > limit then retry = math.ceil(window / 1000) else retry = math.max(1, secs(cost - tokens)) end
return {0, limit, math.floor(tokens + EPSILON), math.max(secs(limit - tokens), retry), retry}
