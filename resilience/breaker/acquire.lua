--[[ Ask a circuit breaker for a permit to make one call. Atomic across every process.

CLOSED and FORCED_CLOSED admit every call; FORCED_OPEN admits none; OPEN admits none until its
next_probe_at, when it turns HALF_OPEN; HALF_OPEN admits at most ARGV[4] concurrent probes, each
holding a permit that expires after ARGV[5] ms if it is never reported. Time is the server's TIME.
A breaker seen for the first time is created CLOSED and added to the set of names.

KEYS[1]  state hash: state, epoch, window, consecutive, successes, opened_at, next_probe_at, ...
KEYS[2]  sorted set of half-open permit ids, scored by expiry time (ms)
KEYS[3]  list of transitions, newest first (JSON: at, from, to, reason), capped at ARGV[6]
KEYS[4]  set of every breaker name
ARGV[1]  breaker name
ARGV[2]  permit id, used if this call becomes a half-open probe
ARGV[3]  open duration (ms), only used to answer a retry-after in FORCED_OPEN
ARGV[4]  half-open concurrent probes (K)
ARGV[5]  permit timeout (ms)
ARGV[6]  transitions kept
Returns  {admitted 0|1, state, epoch, retry-after ms, transition from or '', transition to or '', reason or ''}
         `epoch` changes on every transition; a permit reports against the epoch it was given.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  state = 'CLOSED'
  redis.call('HSET', KEYS[1], 'state', state, 'epoch', 0, 'window', '', 'consecutive', 0, 'successes', 0,
             'created_at', now, 'changed_at', now)
  redis.call('SADD', KEYS[4], ARGV[1])
end
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')

if state == 'CLOSED' or state == 'FORCED_CLOSED' then
  return {1, state, epoch, 0, '', '', ''}
end
if state == 'FORCED_OPEN' then
  return {0, state, epoch, tonumber(ARGV[3]), '', '', ''}
end

local from, to, reason = '', '', ''
if state == 'OPEN' then
  local due = tonumber(redis.call('HGET', KEYS[1], 'next_probe_at') or '0')
  if now < due then
    return {0, state, epoch, due - now, '', '', ''}
  end
  epoch = epoch + 1
  from, to, reason = 'OPEN', 'HALF_OPEN', 'open period elapsed'
  state = 'HALF_OPEN'
  redis.call('HSET', KEYS[1], 'state', state, 'epoch', epoch, 'successes', 0, 'changed_at', now)
  redis.call('DEL', KEYS[2])
  redis.call('LPUSH', KEYS[3], cjson.encode({at = now, from = from, to = to, reason = reason}))
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
end

-- HALF_OPEN: hand out at most K permits; an unreported permit frees its slot when it expires
local timeout = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[2], now + timeout, ARGV[2])
  redis.call('PEXPIRE', KEYS[2], timeout + 1000)
  return {1, state, epoch, 0, from, to, reason}
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local retry = math.min(tonumber(ARGV[3]), math.max(1, tonumber(first[2]) - now))
return {0, state, epoch, retry, from, to, reason}
