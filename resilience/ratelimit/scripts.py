"""Load the Lua scripts once per process, and remember an unreachable state Redis for a moment.

Scripts are registered with redis-py's `register_script`, which runs EVALSHA and falls back to
SCRIPT LOAD + EVALSHA when the server does not know the script (after a restart, say).
"""

import functools
import logging
from pathlib import Path

from django_redis import get_redis_connection
from redis import Redis
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from resilience.outage import Outage

logger = logging.getLogger("resilience.ratelimit")

STATE_ALIAS = "state"
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors that mean "the state Redis cannot answer", as opposed to a bug in a script or a call."""

_DIR = Path(__file__).resolve().parent


def state_redis() -> Redis:
    """Return the raw redis-py client of the state Redis (no key prefix is applied)."""
    return get_redis_connection(STATE_ALIAS)


@functools.cache
def script(name: str) -> Script:
    """Return the registered script `<name>.lua` from this package (read from disk once per process)."""
    return state_redis().register_script((_DIR / f"{name}.lua").read_text())


outage = Outage("rate limiter")
