"""The Redis servers as the code talks to them: one client accessor per role, one Lua script loader,
one definition of "the server cannot answer".

The state Redis (noeviction, AOF) holds what must not be lost: the limiter and breaker state, the
write-behind buffer, idempotency records, the Celery broker. The cache Redis (allkeys-lru, no
persistence) holds what can be rebuilt. Both are django-redis aliases ("state", "default").
"""

import threading
from pathlib import Path

from django_redis import get_redis_connection
from redis import Redis
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

STATE_ALIAS = "state"
CACHE_ALIAS = "default"
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors that mean "the server cannot answer", as opposed to a bug in a script or a call."""

_scripts: dict[tuple[str, Path, tuple[Path, ...], str], Script] = {}
_lock = threading.Lock()


def state_redis() -> Redis:
    """The raw redis-py client of the state Redis (no key prefix is applied)."""
    return get_redis_connection(STATE_ALIAS)


def lua_script(path: Path, *, alias: str = STATE_ALIAS, include: tuple[Path, ...] = (), prelude: str = "") -> Script:
    """The script in `path`, preceded by `prelude` (Lua source the caller builds, e.g. constants whose one
    definition is in Python) and the files in `include` (shared Lua functions), registered with the
    `alias` server's client (read from disk once per process). redis-py runs it with EVALSHA and falls
    back to SCRIPT LOAD when the server forgot it (after a restart, say)."""
    key = (alias, path, include, prelude)
    script = _scripts.get(key)
    if script is None:
        with _lock:
            script = _scripts.get(key)
            if script is None:
                source = prelude + "".join(part.read_text() for part in (*include, path))
                script = get_redis_connection(alias).register_script(source)
                _scripts[key] = script
    return script
