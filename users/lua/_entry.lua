-- The cache entry format, prepended to the cache scripts by users/cache/store.py after the line that
-- defines ENTRY_SEP and ENTRY_FLOOR from users/cache/entry.py (their one definition). An entry is
-- "<version><ENTRY_SEP><payload>"; a payload of ENTRY_FLOOR is a version floor left by an invalidation.

-- Versions are decimal strings of non-negative integers below 2^64, compared as strings, never as Lua
-- numbers: those are doubles with 53 bits of mantissa, so a 59-bit id and its tombstone version
-- (id + 1) would compare equal.
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

-- Returns an entry's version and payload (the payload may itself contain the separator).
local function entry_parse(entry)
  local sep = string.find(entry, ENTRY_SEP, 1, true)
  return string.sub(entry, 1, sep - 1), string.sub(entry, sep + #ENTRY_SEP)
end

local function entry_encode(version, payload)
  return version .. ENTRY_SEP .. payload
end

-- Whether an entry is a version floor (to be reloaded), as opposed to a value, tombstone or "not found".
local function entry_is_floor(entry)
  local _, payload = entry_parse(entry)
  return payload == ENTRY_FLOOR
end
