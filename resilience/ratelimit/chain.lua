--[[ Several limiter checks of one request in one call (one network wait), run in order: each check runs
only while every check before it admitted, or denied under a policy in shadow mode (which refuses
nothing). So a request denied by a rate policy never takes the concurrency slot that follows it, and
nothing is written for a check that did not run: the same outcome as the calls made one after the other,
but atomic. scripts.py puts in front of this file one function per algorithm, `ALGORITHMS[name](KEYS,
ARGV)`: the algorithm's own script (with _common.lua) as a function body, its KEYS and ARGV those of one
check. On a Redis Cluster the checks' keys are in different slots: limiter.py makes one call per check
there instead.

KEYS     3 per check, in order: check i's KEYS[1..3] are KEYS[3i-2..3i]
ARGV     9 per check, in order: check i's are ARGV[9i-8..9i]:
           the algorithm ("sliding_window", "token_bucket", "concurrency"),
           "1" if a denial stops the chain (an enforced policy), "0" if not (shadow mode),
           then the algorithm's ARGV[1..7]
Returns  one reply per check that ran (the algorithm's own reply), in order; fewer than the checks when a
         denial stopped the chain
]]
local replies = {}
local checks = #ARGV / 9
for i = 1, checks do
  local a = (i - 1) * 9
  local reply = ALGORITHMS[ARGV[a + 1]](
    {KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]},
    {ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9]}
  )
  replies[i] = reply
  if reply[1] == 0 and ARGV[a + 2] == '1' then
    break
  end
end
return replies
