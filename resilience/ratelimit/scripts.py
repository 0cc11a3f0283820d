"""The limiter's Lua scripts, and its memory of an unreachable state Redis."""

from pathlib import Path

from redis.commands.core import Script

from resilience.outage import Outage
from resilience.redis_state import UNAVAILABLE, lua_path, lua_script, state_redis

__all__ = ["UNAVAILABLE", "outage", "script", "state_redis"]

_DIR = Path(__file__).resolve().parent
_INCLUDE = (_DIR / "_common.lua",)


def script(name: str) -> Script:
    """The registered script `<name>.lua` of this package, after _common.lua (the clock and the denial
    statistics every limiter script shares)."""
    return lua_script(lua_path(_DIR, name), include=_INCLUDE)


outage = Outage("rate limiter")
