--[[ Concurrent-requests limiter: take one of `limit` slots of a key, or say when to come back.

A slot is a member of a sorted set scored by its expiry (server time, ms). Expired slots are removed
first, in the same call: a process killed mid-request (no release) holds its slot until the expiry,
never longer. The holder releases its slot with ZREM KEYS[1] token (resilience/ratelimit/concurrency.py).
A denied request takes no slot. A denial is recorded in the per-minute statistics in the same call.

KEYS[1]  sorted set of one (policy, key): member = request token, score = expiry in ms
KEYS[2]  sorted set "denied members" of the current minute (ZINCRBY member 1 on a denial)
KEYS[3]  hash policy -> denials in the current minute (HINCRBY on a denial)
ARGV[1]  limit: slots (requests in flight) per key
ARGV[2]  expiry of a slot in milliseconds
ARGV[3]  token of this request; empty peeks: nothing is written and nothing is recorded
ARGV[4]  member recorded in KEYS[2] on a denial ("policy|key")
ARGV[5]  policy name, the field of KEYS[3]
ARGV[6]  TTL in seconds of KEYS[2] and KEYS[3]
ARGV[7]  clock override in milliseconds for deterministic tests; empty uses the server's TIME
Returns  {allowed 0|1, limit, remaining slots, reset seconds (until the oldest slot expires),
          retry-after seconds (0 when allowed, else 1: slots are normally given back when a request
          ends, long before they expire)}
]]
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2])
local token = ARGV[3]
local now = clock_ms()  -- _common.lua

local function reset_seconds()
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if oldest[2] == nil then return 0 end
  return math.max(0, math.ceil((tonumber(oldest[2]) - now) / 1000))
end

if token == '' then
  local held = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
  local ok = (held < limit) and 1 or 0
  return {ok, limit, math.max(0, limit - held), reset_seconds(), 1 - ok}
end

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held < limit then
  redis.call('ZADD', KEYS[1], now + expiry, token)
  -- the set lives as long as its newest slot
  redis.call('PEXPIRE', KEYS[1], expiry)
  return {1, limit, limit - held - 1, reset_seconds(), 0}
end

record_denial()  -- _common.lua
return {0, limit, 0, reset_seconds(), 1}
