"""The users cache store on the cache Redis: no stale sets, no stampedes (keys: keys.py, entries: entry.py).

- Every entry (entry.py) is written by set_if_newer.lua, which refuses to replace a newer
  version. Updates write through after commit with the row's `rev` (bumped by every write, including
  write-behind flushes); deletes write a tombstone whose version beats every reader still holding the
  old row. So after any interleaving of reads and writes, once quiet, the cache equals the database.
- A miss takes a lease in the same round trip (get_or_lease.lua). The lease holder loads and fills;
  others poll the cache for at most STAMPEDE_WAIT seconds and then load anyway, so nobody waits on a
  lock for long, and 50 concurrent cold reads cost about one database query.
- Redis down or hung: every call degrades to "miss, don't fill" after at most the socket timeout, and
  the cache Redis's breaker (`redis:cache`, shared by every process through the state Redis, this
  process's own while that is down) skips Redis entirely for a few seconds after repeated failures;
  forced open from the admin, every process serves from the databases within one sync interval. Failed
  invalidations are queued in the state Redis and replayed (see `replay_invalidations`).
- Hot entries (user rows, tokens) are also kept in a bounded per-process cache (resilience/client_cache.py,
  USERS_LOCAL_CACHE_ENTRIES / USERS_LOCAL_CACHE_BYTES) that Redis invalidates through client tracking: a
  hit costs no round trip. Another process's write reaches it within the invalidation delay (bound:
  client_cache.INVALIDATION_BOUND); this process's own writes drop their key at once. Callers pass
  `local=False` where even that delay is too much (a client reading its own writes).
"""

import logging
import random
import secrets
import threading
import time
from functools import partial
from pathlib import Path

from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from resilience.breaker import guard
from resilience.client_cache import LocalCache
from resilience.redis_fanout import Call, command, ready
from resilience.redis_state import CACHE_ALIAS, lua_script, state_redis

from . import entry
from .entry import NOT_FOUND, TOMBSTONE_VERSION
from .keys import LOCAL_PREFIXES, lease_key

logger = logging.getLogger(__name__)

USER_TTL = 300
NEGATIVE_TTL = 30
TOMBSTONE_TTL = 600
FLOOR_TTL = 600  # must outlive any reader still holding a row loaded before the invalidation
LEASE_MS = 2000
STAMPEDE_WAIT = 0.25  # the longest a reader waits for a lease holder before loading itself
PENDING_INVALIDATIONS = "users:cache:pending-invalidations"

_LUA = Path(__file__).parent.parent / "lua"


def _ttl(base: int) -> int:
    return int(base * random.uniform(0.9, 1.1))  # jitter: entries filled together expire apart


# --- the cache Redis's breaker: a dead cache costs a few timeouts, then nothing until it is probed ---
CACHE_BREAKER = "redis:cache"
# Declared in users/apps.py. As the old in-process switch did: 3 failures in a row open it for 2 s; then
# one probe. The state is shared (state Redis), read by each process at most every sync interval.
CACHE_BREAKER_OPTIONS = {
    "consecutive_failures": 3,
    "open_seconds": 2.0,
    "half_open_max_calls": 1,
    "success_threshold": 1,
    "permit_timeout_seconds": 5.0,
}
_breaker = guard(CACHE_BREAKER)
stats = {"hits": 0, "misses": 0, "errors": 0, "refused_sets": 0}


class CacheUnavailable(Exception):
    pass


def _client():
    return get_redis_connection(CACHE_ALIAS)


_local_cache: LocalCache | None = None
_local_cache_lock = threading.Lock()


def local_cache() -> LocalCache | None:
    """This process's tracked cache of hot entries, or None when USERS_LOCAL_CACHE_ENTRIES is 0."""
    global _local_cache
    if settings.USERS_LOCAL_CACHE_ENTRIES <= 0:
        return None
    if _local_cache is not None:
        return _local_cache
    with _local_cache_lock:  # two first requests at once must not start two tracking threads
        if _local_cache is None:
            _local_cache = LocalCache(
                name="users",
                connection_kwargs=_client().connection_pool.connection_kwargs,
                prefixes=LOCAL_PREFIXES,
                max_entries=settings.USERS_LOCAL_CACHE_ENTRIES,
                max_bytes=settings.USERS_LOCAL_CACHE_BYTES,
                on_connect=_on_tracking_connect,
            )
    return _local_cache


def local_cache_in_use() -> LocalCache | None:
    """This process's local cache if a read has made it (the metrics read it without making one)."""
    return _local_cache


def _forget_locally(key: str) -> None:
    """This process wrote `key`: its local copy goes now, not when Redis' invalidation arrives."""
    if _local_cache is not None:
        _local_cache.discard(key)


def _script(name: str):
    # Every script gets the entry format (entry.py's constants, then _entry.lua's parse and version
    # comparison): one definition, and versions never compared as doubles.
    return lua_script(
        _LUA / f"{name}.lua", alias=CACHE_ALIAS, include=(_LUA / "_entry.lua",), prelude=entry.LUA_PRELUDE
    )


def _call(fn):
    if not _breaker.allows():
        raise CacheUnavailable("cache breaker open")
    try:
        result = fn()
    except RedisError as exc:
        result = exc
    return _settle(result)


def _settle(result):
    """Return a cache call's result, or count its failure and raise CacheUnavailable."""
    if isinstance(result, RedisError | OSError):
        _breaker.failure(result)
        stats["errors"] += 1
        logger.warning("cache redis error: %s", result)
        raise CacheUnavailable(str(result)) from result
    _breaker.success()
    return result


class _LocalHit(bytes):
    """A probe's value taken from this process's local cache when the probe was built (see
    `probed_before_sending`)."""


def probed_before_sending(probed) -> bool:
    """Whether `probed`, a `probe` result, was read before the calls sent along with it went out: a
    value this process's local cache held when the probe was built. A reply from the cache Redis is
    not (the other servers may answer first; the cache Redis may hold a row filled since), nor is a
    row loaded after a miss or a failure."""
    return isinstance(probed, _LocalHit)


def probe(key: str, *, local: bool = True) -> Call | None:
    """A plain GET of `key` as a resilience.redis_fanout.Call, so that it can be in flight together with
    another server's; None while the breaker is open. With `local`, a value in this process's tracked
    cache answers the call without Redis, and a value Redis returns is kept there. Pass its result to `get_or_load(...,
    probed=result)`. It only peeks: the lease is taken on a miss by get_or_load, so a request refused
    after the probe (rate limited, say) leaves no lease behind. A GET, not get_or_lease.lua: on this
    path, the hottest read, a script costs the cache Redis several times as much."""
    if not _breaker.allows():
        return None
    near = local_cache() if local else None
    if near is None:
        return command(_client(), "GET", key)
    raw = near.get(key)
    if raw is not None:
        return ready(_LocalHit(raw))
    return command(_client(), "GET", key, on_reply=partial(_fill, near, key, near.begin()))


def _fill(near: LocalCache, key: str, token, raw):
    """Keep an entry Redis returned (not a miss, not a floor) in the local cache; return `raw`."""
    return near.fill(key, raw, token) if entry.is_entry(raw) else raw


def get_or_load(key: str, loader, *, version_of, ttl: int = USER_TTL, probed=None, local: bool = True):
    """Return the cached value for `key`, or load it with `loader()` and cache it.

    `loader` returns the value (a JSON-able dict) or None when it does not exist; `version_of(value)`
    gives its version. `probed` is the result (or exception) of the `probe(key)` call when it was
    already made; None (not probed, or the key was absent) and a version floor both go on to take the
    lease. `local` as for `probe`. Returns the value or None. Cache failures are invisible to the caller.
    """
    # Not while the breaker is open: writes then skip the cache Redis, so no invalidation would come.
    near = local_cache() if local and probed is None and _breaker.allows() else None
    try:
        if probed is not None and entry.is_entry(peeked := _settle(probed)):
            hit, value = 1, peeked
        elif near is not None and (raw := near.get(key)) is not None:
            hit, value = 1, raw
        else:  # no probe, or it only peeked at a miss: take the lease (or learn who holds it) now
            token = near.begin() if near is not None else None
            hit, value = _call(
                lambda: _script("get_or_lease")(keys=[key, lease_key(key)], args=[LEASE_MS, secrets.token_hex(8)])
            )
            if hit and near is not None:
                near.fill(key, value, token)
    except CacheUnavailable:
        return loader()
    if hit:
        stats["hits"] += 1
        decoded = entry.decode(value)
        return None if decoded is NOT_FOUND else decoded
    stats["misses"] += 1
    if value == b"wait":
        deadline = time.monotonic() + STAMPEDE_WAIT
        delay = 0.005
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.03)
            try:
                raw = _call(lambda: _client().get(key))
            except CacheUnavailable:
                break
            if entry.is_entry(raw):
                decoded = entry.decode(raw)
                return None if decoded is NOT_FOUND else decoded
    loaded = loader()
    if loaded is None:
        _set(key, 0, entry.EMPTY, NEGATIVE_TTL, lease=True)
    else:
        _set(key, version_of(loaded), entry.encode(loaded), ttl, lease=True)
    return loaded


def _set(key: str, version: int, payload: str, ttl: int, *, lease: bool = False) -> bool:
    _forget_locally(key)
    try:
        stored = _call(
            lambda: _script("set_if_newer")(
                keys=[key, lease_key(key) if lease else ""], args=[version, payload, _ttl(ttl)]
            )
        )
    except CacheUnavailable:
        return False
    if not stored:
        stats["refused_sets"] += 1
    return bool(stored)


def write_through(key: str, value, *, version: int, ttl: int = USER_TTL) -> None:
    """Cache a committed value. If the cache cannot take it, the key is queued for invalidation."""
    if not _set(key, version, entry.encode(value), ttl):
        if not _cached_version_at_least(key, version):
            queue_invalidation(key)


def tombstone(key: str, *, version: int = TOMBSTONE_VERSION, ttl: int = TOMBSTONE_TTL) -> None:
    """Mark `key` as deleted so no reader holding an older value can bring it back."""
    if not _set(key, version, entry.EMPTY, ttl):
        if not _cached_version_at_least(key, version):
            queue_invalidation(key)


def _cached_version_at_least(key: str, version: int) -> bool:
    try:
        raw = _call(lambda: _client().get(key))
    except CacheUnavailable:
        return False
    return entry.is_entry(raw) and entry.version(raw) >= version


# Keys whose invalidation could be recorded nowhere shared (the state Redis was down too): kept in this
# process, which uses the cache again only after deleting them (the breaker's before_use), and deletes
# them as soon as its tracking connection is back. Found by a black-box pass with both Redis paused: a
# logged-out token authenticated again, and a deleted account was served, until the entry's TTL.
_unqueued: set[str] = set()
_UNQUEUED_MAX = 100_000


def queue_invalidation(key: str) -> None:
    """Remember a lost write-through/delete in the state Redis; `replay_invalidations` deletes it. With
    the state Redis down too, this process keeps it and stops using the cache until it is deleted."""
    try:
        state_redis().sadd(PENDING_INVALIDATIONS, key)
        return
    except RedisError:
        pass
    if len(_unqueued) < _UNQUEUED_MAX:
        _unqueued.add(key)
        logger.warning("cache invalidation of %s kept in this process (state Redis down too)", key)
    else:
        logger.error("cache invalidation of %s lost (%d kept already); stale until TTL", key, len(_unqueued))
    _breaker.require_preparation()


def _delete_unqueued() -> None:
    """Delete from the cache Redis the keys this process could queue nowhere; raises RedisError."""
    keys = list(_unqueued)
    for start in range(0, len(keys), 1000):
        part = keys[start : start + 1000]
        for key in part:
            _forget_locally(key)
        _client().delete(*part)
        _unqueued.difference_update(part)


def _on_tracking_connect() -> None:
    """The cache Redis answers again: delete what this process could queue nowhere now, without waiting
    for its next request (other processes read those keys meanwhile)."""
    if _unqueued:
        _delete_unqueued()


def _delete_queued_before_use() -> None:
    """The cache breaker's `before_use` (resilience/breaker/guard.py): before this process reads the
    cache Redis again after the breaker refused it (or before its probe), delete every key whose write
    could not reach it meanwhile (queued by write_through and tombstone), so that no row older than an
    acknowledged write (a deleted account, a revoked token) is answered from it once it is back. Found
    by a black-box run: a write made while the breaker was open was answered with its old row for up to
    5 s after the cache came back, until beat's replay. Raises RedisError when the cache Redis cannot
    take the deletes (the cache stays unused); a state Redis that cannot be read holds no queue to
    replay, so the cache is used again as before (keys this process could queue nowhere are deleted
    first)."""
    _delete_unqueued()
    state = state_redis()
    for _ in range(100):  # 100,000 keys at most, then beat's replay goes on with the rest
        try:
            keys = state.srandmember(PENDING_INVALIDATIONS, 1000)
        except RedisError as exc:
            logger.warning("queued cache invalidations not readable (state Redis): %s", exc)
            return
        if not keys:
            return
        for key in keys:
            _forget_locally(key.decode())
        _client().delete(*keys)
        try:
            state.srem(PENDING_INVALIDATIONS, *keys)
        except RedisError as exc:
            logger.warning("replayed cache invalidations not removed from the queue: %s", exc)
            return


_breaker.before_use = _delete_queued_before_use


def replay_invalidations(limit: int = 1000) -> int:
    """Delete queued keys from the cache Redis; return how many were replayed (beat runs this)."""
    state = state_redis()
    keys = state.srandmember(PENDING_INVALIDATIONS, limit)
    if not keys:
        return 0
    for key in keys:
        _forget_locally(key.decode())
    _call(lambda: _client().delete(*keys))
    state.srem(PENDING_INVALIDATIONS, *keys)
    return len(keys)


def invalidate_many(entries: list[tuple[str, int]], *, chunk: int = 1000) -> None:
    """Invalidate (key, version) entries written elsewhere (write-behind flushes): each becomes a
    version floor, so the next reader reloads and no reader holding an older row can store it.
    One script call per `chunk` keys; if the cache cannot take it the keys are queued for deletion."""
    for start in range(0, len(entries), chunk):
        part = entries[start : start + chunk]
        for key, _version in part:
            _forget_locally(key)
        try:
            _call(
                lambda part=part: _script("floor_many")(
                    keys=[k for k, _ in part], args=[FLOOR_TTL, *[v for _, v in part]]
                )
            )
        except CacheUnavailable:
            for key, _version in part:
                queue_invalidation(key)
