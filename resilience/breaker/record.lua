--[[ Report the outcome of a call made under a permit from acquire.lua. Atomic across every process.

CLOSED: the outcome joins a count-based sliding window of the last ARGV[6] calls; the breaker opens
when `consecutive` bad outcomes reach ARGV[9], or when the window holds at least ARGV[7] calls and
the share of bad ones (failures and slow calls) reaches ARGV[8] percent.
HALF_OPEN: a probe's success counts towards ARGV[10] successes that close the breaker; a probe's
failure or slowness reopens it. A probe whose permit already expired no longer counts.
OPEN, FORCED_OPEN, FORCED_CLOSED: outcomes are not counted. A permit from an older epoch (the breaker
changed state since it was handed out) is not counted either. The last error is always kept.

KEYS[1]  state hash            KEYS[2]  half-open permits (sorted set)
KEYS[3]  transitions list      KEYS[4]  set of names (a breaker first seen here joins it)
ARGV[1]  breaker name          ARGV[2]  epoch of the permit           ARGV[3]  permit id
ARGV[4]  outcome: 's' success, 'f' failure, 'l' slow success, 'i' ignored (excluded exception)
ARGV[5]  error description ('' if none)
ARGV[6]  window size N         ARGV[7]  minimum calls                 ARGV[8]  failure-rate threshold (%)
ARGV[9]  consecutive bad outcomes that open (0 disables)            ARGV[10] successes that close
ARGV[11] open duration (ms)    ARGV[12] transitions kept
ARGV[13] how many calls had this outcome (CLOSED only; a hot path reports its successes in batches)
Returns  {state after, transition from or '', transition to or '', reason or ''}
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  -- A hot path (guard.py) reports failures without asking for a permit first: a breaker never seen
  -- is created CLOSED at epoch 0, as acquire.lua would. Any other epoch belongs to a deleted breaker.
  if tonumber(ARGV[2]) ~= 0 then return {'CLOSED', '', '', ''} end
  state = 'CLOSED'
  redis.call('HSET', KEYS[1], 'state', state, 'epoch', 0, 'window', '', 'consecutive', 0, 'successes', 0,
             'created_at', now, 'changed_at', now)
  redis.call('SADD', KEYS[4], ARGV[1])
end
local outcome = ARGV[4]
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'last_error', ARGV[5], 'last_error_at', now)
end
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if tonumber(ARGV[2]) ~= epoch then
  return {state, '', '', ''}
end

local function transition(to, reason)
  local fields = {'state', to, 'epoch', epoch + 1, 'changed_at', now, 'successes', 0}
  if to == 'OPEN' then
    local due = now + tonumber(ARGV[11])
    for _, v in ipairs({'opened_at', now, 'next_probe_at', due}) do table.insert(fields, v) end
  else
    for _, v in ipairs({'window', '', 'consecutive', 0}) do table.insert(fields, v) end
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('DEL', KEYS[2])
  redis.call('LPUSH', KEYS[3], cjson.encode({at = now, from = state, to = to, reason = reason}))
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[12]) - 1)
  return {to, state, to, reason}
end

if state == 'CLOSED' then
  if outcome == 'i' then return {state, '', '', ''} end
  local size = tonumber(ARGV[6])
  local count = math.min(math.max(tonumber(ARGV[13] or '1'), 1), size)
  local window = (redis.call('HGET', KEYS[1], 'window') or '') .. string.rep(outcome, count)
  if #window > size then window = string.sub(window, -size) end
  local consecutive = 0
  if outcome ~= 's' then consecutive = tonumber(redis.call('HGET', KEYS[1], 'consecutive') or '0') + count end
  redis.call('HSET', KEYS[1], 'window', window, 'consecutive', consecutive)
  local threshold = tonumber(ARGV[9])
  if threshold > 0 and consecutive >= threshold then
    return transition('OPEN', consecutive .. ' consecutive failures')
  end
  local calls = #window
  local _, failures = string.gsub(window, '[fl]', '')
  if calls >= tonumber(ARGV[7]) and failures * 100 >= tonumber(ARGV[8]) * calls then
    return transition('OPEN', string.format('failure rate %d%% of last %d calls', math.floor(failures * 100 / calls), calls))
  end
  return {state, '', '', ''}
end

if state == 'HALF_OPEN' then
  if redis.call('ZREM', KEYS[2], ARGV[3]) == 0 then return {state, '', '', ''} end
  if outcome == 'i' then return {state, '', '', ''} end
  if outcome == 's' then
    local successes = redis.call('HINCRBY', KEYS[1], 'successes', 1)
    if successes >= tonumber(ARGV[10]) then
      return transition('CLOSED', successes .. ' successful probes')
    end
    return {state, '', '', ''}
  end
  local why = 'probe was slow'
  if outcome == 'f' then why = 'probe failed' end
  return transition('OPEN', why)
end

return {state, '', '', ''}
