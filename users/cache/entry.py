"""The cache entry format: "<version>:<payload>", its one definition for Python and Lua.

- The payload is a value's JSON; "" is a tombstone or a cached "not found" (NOT_FOUND to callers);
  "~" is a version floor left by an invalidation: a miss, and nothing older than it may be stored.
- The Lua scripts get the separator and the floor marker from LUA_PRELUDE and parse, build and compare
  entries with the helpers in users/lua/_entry.lua, so the format is spelled here and nowhere else.
"""

import json
from functools import lru_cache

from django.core.serializers.json import DjangoJSONEncoder

SEP = ":"
FLOOR = "~"
EMPTY = ""  # the payload of a tombstone or a cached "not found"
TOMBSTONE_VERSION = 1 << 62
NOT_FOUND = object()  # a cached "does not exist", distinct from a miss (None)

LUA_PRELUDE = f"local ENTRY_SEP, ENTRY_FLOOR = {json.dumps(SEP)}, {json.dumps(FLOOR)}\n"

_FLOOR_SUFFIX = (SEP + FLOOR).encode()


def encode(value) -> str:
    """The payload of a cached value (a JSON-able dict, datetimes included)."""
    return json.dumps(value, cls=DjangoJSONEncoder)


def is_entry(raw: bytes | None) -> bool:
    """Whether a raw cache value is an entry to serve (not absent, not an invalidation's floor)."""
    return raw is not None and not raw.endswith(_FLOOR_SUFFIX)


def decode(raw: bytes):
    """The value of an entry to serve, or NOT_FOUND for a tombstone or a cached "not found". A row
    comes as a new dict each call, so callers may change it."""
    value, flat = _decoded(raw)
    if flat:
        return dict(value) if isinstance(value, dict) else value
    return _parse(raw)  # a nested value is parsed every time, so no caller shares its parts


def _parse(raw: bytes):
    _version, _, payload = raw.decode().partition(SEP)
    if payload == EMPTY:
        return NOT_FOUND
    return json.loads(payload)


@lru_cache(maxsize=1024)
def _decoded(raw: bytes) -> tuple:
    """(value, whether it is flat: no nested object or list). A hot row is decoded once: the same
    entry comes on every read of it, and parsing its JSON cost a cached read more than its limiter
    check's Python. Bounded by entries; rows are a few hundred bytes."""
    value = _parse(raw)
    nested = isinstance(value, list) or (
        isinstance(value, dict) and any(isinstance(v, dict | list) for v in value.values())
    )
    return value, not nested


def version(raw: bytes) -> int:
    """The version of a raw entry (a floor included)."""
    return int(raw.split(SEP.encode(), 1)[0])
