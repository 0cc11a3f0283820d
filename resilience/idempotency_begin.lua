--[[ Begin a request that carries an Idempotency-Key: claim the key, or say why not, in one call.

A key seen before (pending or done) is left alone: the caller reads its record. A new key is claimed
(its pending record written) only while its caller has used fewer new keys than the cap in the
caller's current window; the claim and the count happen in this one script, so concurrent requests
cannot take the caller past the cap. Replays of known keys are never counted nor refused.

KEYS[1]  the key's record (string)
KEYS[2]  the caller's count of new keys (string; it expires when the caller's window ends, the window
         starting at the first new key)
ARGV[1]  the pending record to write
ARGV[2]  TTL of the pending record, seconds
ARGV[3]  cap: new keys per caller per window
ARGV[4]  window, seconds
Returns  {1, 0}    claimed: run the request
         {0, 0}    the key exists: read its record
         {-1, ttl} the cap is reached: refuse; ttl is the number of seconds until the window ends
]]
if redis.call("EXISTS", KEYS[1]) == 1 then
  return {0, 0}
end
local used = tonumber(redis.call("GET", KEYS[2]) or "0")
if used >= tonumber(ARGV[3]) then
  local ttl = redis.call("TTL", KEYS[2])
  if ttl < 0 then
    -- A count without expiry would refuse the caller forever: give it a window.
    redis.call("EXPIRE", KEYS[2], ARGV[4])
    ttl = tonumber(ARGV[4])
  end
  return {-1, ttl}
end
redis.call("SET", KEYS[1], ARGV[1], "EX", ARGV[2])
if redis.call("INCR", KEYS[2]) == 1 then
  redis.call("EXPIRE", KEYS[2], ARGV[4])
end
return {1, 0}
