"""The limiter's Lua scripts, and its memory of an unreachable state Redis."""

import functools
from pathlib import Path

from redis.commands.core import Script

from resilience.outage import Outage
from resilience.redis_state import UNAVAILABLE, lua_path, lua_script, state_redis

__all__ = ["CHAINED", "UNAVAILABLE", "chain_script", "outage", "script", "state_redis"]

_DIR = Path(__file__).resolve().parent
_COMMON = _DIR / "_common.lua"
_INCLUDE = (_COMMON,)
_CHAIN = _DIR / "chain.lua"
CHAINED = ("sliding_window", "token_bucket", "concurrency")  # the algorithms chain.lua can run


def script(name: str) -> Script:
    """The registered script `<name>.lua` of this package, after _common.lua (the clock and the denial
    statistics every limiter script shares)."""
    return lua_script(lua_path(_DIR, name), include=_INCLUDE)


def chain_script() -> Script:
    """chain.lua: several checks of one request in one call, each algorithm's own script run as a function."""
    return lua_script(_CHAIN, prelude=_algorithm_functions())


@functools.cache
def _algorithm_functions() -> str:
    # Each script, with _common.lua, becomes the body of a function whose parameters are named KEYS and
    # ARGV: inside it they mean one check's keys and arguments, and the script runs unchanged (Redis
    # itself runs a script as a function body: its `return`s end the function).
    common = _COMMON.read_text()
    functions = "".join(
        f"ALGORITHMS['{name}'] = function(KEYS, ARGV)\n{common}{(_DIR / f'{name}.lua').read_text()}\nend\n"
        for name in CHAINED
    )
    return "local ALGORITHMS = {}\n" + functions


outage = Outage("rate limiter")
