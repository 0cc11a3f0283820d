"""The write-behind buffer in the state Redis (noeviction, AOF): ingestion and pending reads.

One round trip per ingested item (ingest.lua). If the state Redis is unreachable, `views_add` writes
the views straight to the database instead (never dropped); last-seen stamps are best effort and are
dropped with a log line (they are refreshed by the client's next request).
"""

import logging
import threading
import time
from pathlib import Path

from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.sentinel import MasterNotFoundError

from resilience.redis_fanout import Call, script_call

logger = logging.getLogger(__name__)

VIEWS, SEEN, SINCE, BATCHES, STATS = "wb:views", "wb:seen", "wb:since", "wb:batches", "wb:stats"
_HERE = Path(__file__).parent
_scripts: dict = {}
_lock = threading.Lock()
_recent_touches: dict[int, float] = {}


class BufferFull(Exception):
    """The buffer is above WRITE_BEHIND_MAX_PENDING: shed load (503 + Retry-After)."""


class BufferUncertain(Exception):
    """The state Redis failed after the command may have been applied (a timeout, a reset mid-reply).

    Writing the view to the database as well could count it twice, so it is not acknowledged: the
    client gets 503 + Retry-After and decides whether to retry."""


def _never_sent(exc: RedisError) -> bool:
    # redis-py reports a failed connect as "Error <errno> connecting to host:port", a server still
    # replaying its AOF refuses every command with LOADING, and while no Sentinel names a master there
    # is nowhere to send it: in each case the command was not applied, so the fallback cannot double count.
    return isinstance(exc, BusyLoadingError | MasterNotFoundError) or (
        isinstance(exc, RedisConnectionError) and "connecting to" in str(exc)
    )


def redis_state():
    return get_redis_connection("state")


def script(name: str):
    if name not in _scripts:
        with _lock:
            _scripts[name] = redis_state().register_script((_HERE / f"{name}.lua").read_text())
    return _scripts[name]


def _now_ms() -> int:
    return int(time.time() * 1000)


def views_add(*, user_id: int, count: int = 1) -> str:
    """Add views to the buffer. Return "buffered" or "direct" (state Redis refuses connections: written
    to the database at once). Raise BufferFull under backpressure, BufferUncertain when the outcome in
    Redis is unknown."""
    if not settings.WRITE_BEHIND_ENABLED:  # the benchmark's baseline: an UPDATE per request
        from users.services import user_record_views_direct

        user_record_views_direct(user_id=user_id, count=count)
        return "direct"
    try:
        result = script("ingest")(
            keys=[VIEWS, SEEN, SINCE], args=["views", user_id, count, settings.WRITE_BEHIND_MAX_PENDING, _now_ms()]
        )
    except RedisError as exc:
        if not _never_sent(exc):
            logger.warning("write-behind buffer failed mid-command (%s): view of %s not acknowledged", exc, user_id)
            raise BufferUncertain(str(exc)) from exc
        logger.warning("write-behind buffer unreachable (%s): writing %s view(s) of %s directly", exc, count, user_id)
        from users.services import user_record_views_direct

        user_record_views_direct(user_id=user_id, count=count)
        return "direct"
    if result == -1:
        raise BufferFull
    return "buffered"


def touch_last_seen(*, user_id: int) -> None:
    """Stamp the user's last_seen_at through the buffer (coalesced; at most once a second per process)."""
    now = time.time()
    if now - _recent_touches.get(user_id, 0.0) < 1.0:
        return
    _recent_touches[user_id] = now
    if len(_recent_touches) > 10_000:
        _recent_touches.clear()
    try:
        script("ingest")(keys=[VIEWS, SEEN, SINCE], args=["seen", user_id, int(now * 1000), 0, _now_ms()])
    except RedisError as exc:
        logger.warning("last_seen of %s dropped: state Redis unreachable (%s)", user_id, exc)


def pending_views_call(*, user_id: int) -> Call:
    """The pending-views read as a resilience.redis_fanout.Call, to ride along another round trip;
    `pending_views(user_id=..., result=...)` reads its result."""
    return script_call(redis_state(), script("pending"), [VIEWS, BATCHES], [user_id])


def pending_views(*, user_id: int, result=None) -> int:
    """Views of `user_id` not yet acknowledged as flushed; 0 if the state Redis is unreachable.
    `result` is the outcome of a `pending_views_call` already made."""
    if isinstance(result, Exception):
        return 0
    try:
        return int(script("pending")(keys=[VIEWS, BATCHES], args=[user_id]) if result is None else result)
    except RedisError:
        return 0


def stats() -> dict:
    """Backlog and flush figures for metrics and the admin dashboard."""
    r = redis_state()
    pipe = r.pipeline(transaction=False)
    pipe.hlen(VIEWS)
    pipe.hlen(SEEN)
    pipe.zrange(SINCE, 0, 0, withscores=True)
    pipe.zrange(BATCHES, 0, -1, withscores=True)
    pipe.hgetall(STATS)
    views, seen, since, batches, flush = pipe.execute()
    now = _now_ms()
    oldest = min([s for _, s in since] + [s for _, s in batches], default=None)
    flush = {k.decode(): v.decode() for k, v in flush.items()}
    return {
        "pending_views_users": views,
        "pending_seen_users": seen,
        "claimed_batches": len(batches),
        "oldest_pending_age_s": None if oldest is None else round((now - oldest) / 1000, 3),
        "last_flush_at": float(flush["last_flush_at"]) if "last_flush_at" in flush else None,
        "last_flush_rows": int(flush.get("last_flush_rows", 0)),
        "last_flush_duration_ms": float(flush.get("last_flush_duration_ms", 0)),
        "total_rows_flushed": int(flush.get("total_rows", 0)),
    }
