-- Prepended to the cache scripts by users/cache.py. Versions are decimal strings of non-negative
-- integers below 2^64, compared as strings, never as Lua numbers: those are doubles with 53 bits of
-- mantissa, so a 59-bit id and its tombstone version (id + 1) would compare equal.
-- Returns -1, 0 or 1 as version a is older than, equal to or newer than version b.
local function version_cmp(a, b)
  a = string.gsub(a, "^0+(%d)", "%1")
  b = string.gsub(b, "^0+(%d)", "%1")
  if #a ~= #b then
    return #a < #b and -1 or 1
  end
  if a == b then
    return 0
  end
  return a < b and -1 or 1
end
