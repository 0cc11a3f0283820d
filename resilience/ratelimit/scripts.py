"""Load the Lua scripts once per process, and remember an unreachable state Redis for a moment.

Scripts are registered with redis-py's `register_script`, which runs EVALSHA and falls back to
SCRIPT LOAD + EVALSHA when the server does not know the script (after a restart, say).
"""

import functools
import logging
import threading
import time
from pathlib import Path

from django.conf import settings
from django_redis import get_redis_connection
from redis import Redis
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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


class Outage:
    """Process-local memory of a state-Redis failure, so that a hung Redis costs one timeout per
    `RESILIENCE_STATE_RETRY_SECONDS` (default 1.0) instead of one per request. Logs once per outage."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._until = 0.0
        self._logged = False
        self._lock = threading.Lock()

    def active(self) -> bool:
        """True while Redis is known to be down and should not be asked again yet."""
        return time.monotonic() < self._until

    def failed(self, exc: BaseException) -> None:
        backoff = float(getattr(settings, "RESILIENCE_STATE_RETRY_SECONDS", 1.0))
        with self._lock:
            self._until = time.monotonic() + backoff
            first, self._logged = not self._logged, True
        if first:
            logger.warning("%s: state Redis unavailable (%s: %s); degraded until it answers again",
                           self._what, exc.__class__.__name__, exc)

    def recovered(self) -> None:
        if self._logged:
            with self._lock:
                was, self._logged, self._until = self._logged, False, 0.0
            if was:
                logger.warning("%s: state Redis answers again; leaving degraded mode", self._what)

    def clear(self) -> None:
        """Forget any outage (tests, or an operator who knows Redis is back)."""
        with self._lock:
            self._until, self._logged = 0.0, False


outage = Outage("rate limiter")
