--[[ Force a circuit breaker into a state, or reset it. Atomic across every process.

FORCED_OPEN rejects every call and FORCED_CLOSED admits every call (neither counts outcomes) until
the next force or reset; CLOSED is a reset: counts, half-open permits and the last error are
cleared. Always recorded as a transition, even when the state does not change.

KEYS[1]  state hash            KEYS[2]  half-open permits (sorted set)
KEYS[3]  transitions list      KEYS[4]  set of names
ARGV[1]  breaker name          ARGV[2]  target: FORCED_OPEN, FORCED_CLOSED or CLOSED
ARGV[3]  reason                ARGV[4]  transitions kept
Returns  {state before, state after}
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local from = redis.call('HGET', KEYS[1], 'state') or 'CLOSED'
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') + 1
local to = ARGV[2]
redis.call('HSET', KEYS[1], 'state', to, 'epoch', epoch, 'changed_at', now, 'successes', 0,
           'window', '', 'consecutive', 0)
if redis.call('HEXISTS', KEYS[1], 'created_at') == 0 then redis.call('HSET', KEYS[1], 'created_at', now) end
if to == 'CLOSED' then
  redis.call('HDEL', KEYS[1], 'last_error', 'last_error_at', 'opened_at', 'next_probe_at')
end
redis.call('DEL', KEYS[2])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('LPUSH', KEYS[3], cjson.encode({at = now, from = from, to = to, reason = ARGV[3]}))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
return {from, to}
