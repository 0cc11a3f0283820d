"""The users cache on the cache Redis: named, versioned keys (keys.py); the "<version>:<payload>" entry,
its floor and its tombstone (entry.py); and the store that reads, fills and invalidates it (store.py).

Callers use the package: `from users import cache; cache.get_or_load(cache.user_key(...), ...)`.
"""

from .entry import NOT_FOUND, TOMBSTONE_VERSION
from .keys import token_key, user_key, username_key
from .store import (
    CACHE_BREAKER,
    CACHE_BREAKER_OPTIONS,
    FLOOR_TTL,
    LEASE_MS,
    NEGATIVE_TTL,
    PENDING_INVALIDATIONS,
    STAMPEDE_WAIT,
    TOMBSTONE_TTL,
    USER_TTL,
    CacheUnavailable,
    _set,
    get_or_load,
    invalidate_many,
    local_cache,
    probe,
    probed_before_sending,
    queue_invalidation,
    replay_invalidations,
    stats,
    tombstone,
    write_through,
)

__all__ = [
    "CACHE_BREAKER",
    "CACHE_BREAKER_OPTIONS",
    "FLOOR_TTL",
    "LEASE_MS",
    "NEGATIVE_TTL",
    "NOT_FOUND",
    "PENDING_INVALIDATIONS",
    "STAMPEDE_WAIT",
    "TOMBSTONE_TTL",
    "TOMBSTONE_VERSION",
    "USER_TTL",
    "CacheUnavailable",
    "_set",  # the tests reach the unguarded set through this
    "get_or_load",
    "invalidate_many",
    "local_cache",
    "probe",
    "probed_before_sending",
    "queue_invalidation",
    "replay_invalidations",
    "stats",
    "tombstone",
    "token_key",
    "user_key",
    "username_key",
    "write_through",
]
