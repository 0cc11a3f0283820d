"""The write-behind buffer in the state Redis (noeviction, AOF): ingestion and pending reads.

One buffer per shard group (keys.py), so a group's items are claimed, applied and acknowledged
whatever another group does. One round trip per ingested item (ingest.lua; with
WRITE_BEHIND_WAIT_REPLICAS the WAIT rides in the same round trip). If the state Redis is unreachable,
`views_add` writes the views straight to the database instead (never dropped); last-seen stamps are
best effort and are dropped with a log line (they are refreshed by the client's next request).
"""

import logging
import time
from pathlib import Path

from django.conf import settings
from redis.exceptions import BusyLoadingError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.sentinel import MasterNotFoundError

from project import tracing
from resilience.redis_fanout import Call, script_call
from resilience.redis_state import NOT_RUN, lua_path, lua_script, run_and_wait, state_redis
from users.sharding.access import group_for_user_id

from .keys import COUNT_FIELD, STATS, TRACE_LINKS, GroupKeys, group_keys, rev_field, seen_field, views_field

logger = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_recent_touches: dict[int, float] = {}


class BufferFull(Exception):
    """The user's shard group has max_pending_per_shard() users with pending views (buffered or in
    a claimed batch): shed that shard's load (503 + Retry-After)."""


class BufferUncertain(Exception):
    """The state Redis failed after the command may have been applied (a timeout, a reset mid-reply),
    or WRITE_BEHIND_WAIT_REPLICAS asked for a replica's confirmation that did not come in time.

    Writing the view to the database as well could count it twice, so it is not acknowledged: the
    client gets 503 + Retry-After and may retry with the same Idempotency-Key (the view's id then
    tells whether the first attempt was counted)."""


# A marker must outlive every retry the idempotency record allows.
MARKER_TTL = 24 * 3600


def max_pending_per_shard() -> int:
    """Users with pending views one shard group may hold: WRITE_BEHIND_MAX_PENDING_PER_SHARD, else
    an even share of WRITE_BEHIND_MAX_PENDING (0 = no limit). The per-group limits then add up to at
    most the global one, which every group enforces in its own slot without reading the others."""
    if settings.WRITE_BEHIND_MAX_PENDING_PER_SHARD:
        return settings.WRITE_BEHIND_MAX_PENDING_PER_SHARD
    if not settings.WRITE_BEHIND_MAX_PENDING:
        return 0
    return max(1, settings.WRITE_BEHIND_MAX_PENDING // len(settings.SHARD_GROUPS))


def _never_sent(exc: RedisError | RedisClusterException) -> bool:
    # redis-py reports a failed connect as "Error <errno> connecting to host:port", a server still
    # replaying its AOF refuses every command with LOADING, and while no Sentinel names a master there
    # is nowhere to send it; a Redis Cluster answers CLUSTERDOWN, TRYAGAIN or MOVED without running it
    # (NOT_RUN). In each case the command was not applied, so the fallback cannot double count.
    return isinstance(exc, (BusyLoadingError, MasterNotFoundError, *NOT_RUN)) or (
        isinstance(exc, RedisConnectionError) and "connecting to" in str(exc)
    )


redis_state = state_redis  # the buffer's server: the state Redis (resilience/redis_state.py)


def script(name: str):
    """The registered script `<name>.lua` of this package."""
    return lua_script(lua_path(_HERE, name))


def _now_ms() -> int:
    return int(time.time() * 1000)


def views_add(*, user_id: int, count: int = 1, view_id: str | None = None) -> str:
    """Add views to the user's shard group buffer. Return "buffered" or "direct" (state Redis refuses
    connections: written to the database at once). Raise BufferFull under that shard's backpressure,
    BufferUncertain when the outcome in Redis is unknown (or unconfirmed by a replica, see
    WRITE_BEHIND_WAIT_REPLICAS).

    `view_id` (a stable id of this view, e.g. from its Idempotency-Key) makes the add idempotent: a
    second add with the same id within MARKER_TTL counts nothing and answers "buffered" again."""
    if not settings.WRITE_BEHIND_ENABLED:  # the benchmark's baseline: an UPDATE per request
        from users.services import user_record_views_direct

        user_record_views_direct(user_id=user_id, count=count)
        return "direct"
    k = group_keys(group_for_user_id(user_id))
    keys = [k.buffer, k.since, k.batches] + ([k.marker(view_id)] if view_id else [])
    args = ["views", user_id, views_field(user_id), count, max_pending_per_shard(), _now_ms(), COUNT_FIELD, MARKER_TTL]
    replicas = settings.WRITE_BEHIND_WAIT_REPLICAS
    try:
        if replicas:
            # WAIT blocks until `replicas` replicas have everything this connection wrote, or the
            # timeout; in the same pipeline, so on the same connection and in the same round trip.
            result, confirmed = run_and_wait(
                redis_state(),
                script("ingest"),
                keys=keys,
                args=args,
                replicas=replicas,
                timeout_ms=settings.WRITE_BEHIND_WAIT_TIMEOUT_MS,
            )
        else:
            result, confirmed = script("ingest")(keys=keys, args=args), 0
    except (RedisError, RedisClusterException) as exc:
        if not _never_sent(exc):
            logger.warning("write-behind buffer failed mid-command (%s): view of %s not acknowledged", exc, user_id)
            raise BufferUncertain(str(exc)) from exc
        logger.warning("write-behind buffer unreachable (%s): writing %s view(s) of %s directly", exc, count, user_id)
        from users.services import user_record_views_direct

        user_record_views_direct(user_id=user_id, count=count)
        return "direct"
    if result == -1:
        raise BufferFull(k.group)
    if (parent := tracing.traceparent()) is not None:
        _remember_trace(k, parent)
    if replicas and confirmed < replicas:
        # The master has the view, a failover now could lose it: not acknowledged. A direct database
        # write instead would count it twice whenever the master survives.
        logger.warning("view of %s buffered but confirmed by %s of %s replica(s)", user_id, confirmed, replicas)
        raise BufferUncertain(f"confirmed by {confirmed} of {replicas} replica(s)")
    return "buffered"


def _remember_trace(k: GroupKeys, parent: str) -> None:
    """Leave this request's trace context for the group's next flush to link to (tracing on only: one
    more round trip). Best effort: a lost one costs a link, never a view."""
    try:
        pipe = redis_state().pipeline(transaction=False)
        pipe.lpush(k.traces, parent)
        pipe.ltrim(k.traces, 0, TRACE_LINKS - 1)
        pipe.execute()
    except (RedisError, RedisClusterException) as exc:
        logger.info("trace link of a buffered view dropped: %s", exc)


def take_traces(k: GroupKeys) -> list[str]:
    """Take the trace contexts left by the requests that buffered views in the group since the last
    take (none, and no Redis call, when this process does not trace)."""
    if not tracing.enabled():
        return []
    try:
        pipe = redis_state().pipeline(transaction=True)  # one slot: a cluster runs it too
        pipe.lrange(k.traces, 0, -1)
        pipe.delete(k.traces)
        parents, _ = pipe.execute()
    except (RedisError, RedisClusterException) as exc:
        logger.info("flush span not linked to its requests: %s", exc)
        return []
    return [p.decode() if isinstance(p, bytes) else p for p in parents]


def touch_last_seen(*, user_id: int) -> None:
    """Stamp the user's last_seen_at through the buffer (coalesced; at most once a second per process)."""
    now = time.time()
    if now - _recent_touches.get(user_id, 0.0) < 1.0:
        return
    _recent_touches[user_id] = now
    if len(_recent_touches) > 10_000:
        _recent_touches.clear()
    try:
        k = group_keys(group_for_user_id(user_id))
        script("ingest")(
            keys=[k.buffer, k.since, k.batches],
            args=["seen", user_id, seen_field(user_id), int(now * 1000), 0, _now_ms(), COUNT_FIELD, 0],
        )
    except RedisError as exc:
        logger.warning("last_seen of %s dropped: state Redis unreachable (%s)", user_id, exc)


def _pending_call_args(user_id: int) -> tuple[list[str], list]:
    k = group_keys(group_for_user_id(user_id))
    return [k.buffer, k.batches], [views_field(user_id), rev_field(user_id)]


def pending_views_call(*, user_id: int) -> Call:
    """The pending-views read as a resilience.redis_fanout.Call, to ride along another round trip;
    `pending_views(user_id=..., rev=..., result=...)` reads its result."""
    keys, args = _pending_call_args(user_id)
    return script_call(redis_state(), script("pending"), keys, args)


def _count(reply, rev: int) -> tuple[int, bool]:
    """(pending views, whether a claimed batch counted may have been applied since the read)."""
    total, unsure = int(reply[0]), False
    for n, mark in zip(reply[1::2], reply[2::2], strict=True):
        mark = int(mark)
        if mark == 0:  # not applied when read; it may have been committed since
            total += int(n)
            unsure = True
        elif rev < mark:  # the row read predates the batch's application
            total += int(n)
    return total, unsure


def pending_views(*, user_id: int, rev: int, result=None, row_read_first: bool = False) -> int:
    """Views of `user_id` not yet in the row of version `rev` the caller has read; 0 if the state
    Redis is unreachable. Never more than acknowledged views (less for a moment, e.g. from a lagging
    replica): a claimed batch is counted only if its rev mark says the row read is older than it.

    `result` is the outcome of a `pending_views_call` sent ahead; `row_read_first` says the row was
    read before that call went out (a local-cache hit). Only then can `result` be used as it is: a row
    read after it (from the database after a cache miss or failure, or a cache reply that came later)
    may already hold views `result` saw buffered, claimed, applied and acknowledged in between; its
    count is then that of a pending read made now that the row is in hand (found under view load while
    the cache Redis was paused: one flush batch counted twice). So is the count when `result` counted
    a batch not yet marked: it may have been committed since (marks precede commits). A `result` that
    counted nothing needs no second read: there is nothing to count twice."""
    if isinstance(result, Exception):
        return 0
    try:
        if result is not None:
            total, unsure = _count(result, rev)
            if total == 0 or (row_read_first and not unsure):
                return total
        keys, args = _pending_call_args(user_id)
        return _count(script("pending")(keys=keys, args=args), rev)[0]
    except RedisError:
        return 0


def stats() -> dict:
    """Backlog and flush figures for metrics and the admin dashboard, summed over the shard groups."""
    r = redis_state()
    groups = [group_keys(g) for g in settings.SHARD_GROUPS]
    pipe = r.pipeline(transaction=False)
    for k in groups:
        pipe.hget(k.buffer, COUNT_FIELD)
        pipe.hlen(k.buffer)
        pipe.zrange(k.since, 0, 0, withscores=True)
        pipe.zrange(k.batches, 0, -1)
        pipe.zrange(k.first, 0, 0, withscores=True)
    pipe.hgetall(STATS)
    *per_group, flush = pipe.execute()
    views = seen = claimed = 0
    oldest_ms, batch_keys = [], []
    for i in range(len(groups)):
        buffered, fields, since, batches, first = per_group[5 * i : 5 * i + 5]
        buffered = int(buffered or 0)
        views += buffered
        seen += fields - buffered - (1 if buffered else 0)  # the rest of the buffer: last-seen stamps
        claimed += len(batches)
        batch_keys += batches
        oldest_ms += [s for _, s in since] + [s for _, s in first]
    if batch_keys:
        pipe = r.pipeline(transaction=False)
        for key in batch_keys:
            pipe.hget(key, COUNT_FIELD)
        views += sum(int(n or 0) for n in pipe.execute())
    now = _now_ms()
    oldest = min(oldest_ms, default=None)
    flush = {k.decode(): v.decode() for k, v in flush.items()}
    return {
        "pending_views_users": views,
        "pending_seen_users": seen,
        "claimed_batches": claimed,
        "oldest_pending_age_s": None if oldest is None else round((now - oldest) / 1000, 3),
        "last_flush_at": float(flush["last_flush_at"]) if "last_flush_at" in flush else None,
        "last_flush_rows": int(flush.get("last_flush_rows", 0)),
        "last_flush_duration_ms": float(flush.get("last_flush_duration_ms", 0)),
        "total_rows_flushed": int(flush.get("total_rows", 0)),
    }
