"""Which shard group holds a user, and running a query there with replica failover.

`read_on(group, fn)` calls `fn(alias)` on the alias routing chooses; if a replica fails mid-query it is
reported to the monitor and the read is retried once on the primary, so a dying replica never fails a
request. If the primary fails, ShardUnavailable is raised: the API answers 503 with Retry-After.

Every call on a primary goes through its circuit breaker (project/db/breakers.py): connection failures
open it, and while it is open (or forced open from the admin) ShardUnavailable is raised at once,
without waiting for a connect timeout.
"""

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connections

from project.db import routing
from project.db.breakers import alias_guard
from project.db.replicas import monitor

from .hashing import logical_shard_for_username
from .ids import logical_shard_of_id
from .shardmap import shard_map

CONNECTION_ERRORS = (OperationalError, InterfaceError)


class ShardUnavailable(Exception):
    """A shard group's primary cannot be reached. Retryable."""

    def __init__(self, group: str, cause: Exception | None = None):
        super().__init__(f"shard {group} is unavailable: {cause}")
        self.group = group


class ShardNotConfigured(ShardUnavailable):
    """The shard map names a group this process has no connection settings for (it was started before
    the group was added). The user exists: answering "not found" would be a lie, so this is a 503."""


class ShardFrozen(ShardUnavailable):
    """The user's logical shard is in the final switch of a move: writes are refused for a moment."""


FROZEN_SQLSTATE = "BW001"  # raised by the fence triggers (users/sharding/fence_sql.py)


def _frozen(exc: Exception) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == FROZEN_SQLSTATE


def group_for_logical(logical_shard: int) -> str:
    """The group holding `logical_shard`. Raise ShardNotConfigured when this process cannot reach it."""
    group = shard_map.group_for_logical(logical_shard)
    if group not in settings.DATABASE_GROUPS:
        # Logged as a configuration error by the shard map when it loads (once, not per request).
        raise ShardNotConfigured(group, "not configured in this process")
    return group


def group_for_user_id(user_id: int) -> str:
    return group_for_logical(logical_shard_of_id(user_id))


def group_for_username(username: str) -> str:
    return group_for_logical(logical_shard_for_username(username))


def _discard(alias: str) -> None:
    # A broken connection must not be reused by the next query in this thread.
    try:
        connections[alias].close()
    except DatabaseError:
        pass


class BreakerOpen(Exception):
    """The cause of a ShardUnavailable raised without trying: the primary's breaker is open."""


def _on_primary(group: str, alias: str, fn):
    """Call `fn()` through the breaker of the primary `alias`; ShardUnavailable when it refuses.
    Only connection failures count against it: an answer, even an error, means the server is up."""
    breaker = alias_guard(alias)
    if not breaker.allows():
        raise ShardUnavailable(group, BreakerOpen(f"circuit {breaker.name} is {breaker.state}"))
    try:
        result = fn()
    except CONNECTION_ERRORS as exc:
        breaker.failure(exc)
        raise
    except ShardUnavailable as exc:  # write_on's own translation of a connection failure
        if isinstance(exc.__cause__, CONNECTION_ERRORS):
            breaker.failure(exc.__cause__)
        else:
            breaker.success()
        raise
    except BaseException:
        breaker.success()
        raise
    breaker.success()
    return result


def read_on(group: str, fn):
    alias = routing.read_alias(group)
    primary = routing.primary_alias(group)
    if alias != primary:
        try:
            return fn(alias)
        except CONNECTION_ERRORS as exc:
            _discard(alias)
            monitor.report_failure(alias, exc)
    try:
        return _on_primary(group, primary, lambda: fn(primary))
    except CONNECTION_ERRORS as exc:
        _discard(primary)
        raise ShardUnavailable(group, exc) from exc


def write_on(group: str, fn, *, pin: bool = True):
    """Call `fn(primary_alias)`; a connection failure becomes ShardUnavailable (nothing was committed
    unless `fn` committed before failing, which callers design for). `pin=False` for bookkeeping the
    client never reads back (a token's last use): it is not noted for read-your-writes, so it neither
    pins the client's next reads nor waits for the synchronous standby."""
    # The breaker first: a refused write must not be noted for read-your-writes either (whose commit
    # LSN would then be asked of the refused primary at the end of the request).
    return _on_primary(group, routing.primary_alias(group), lambda: _write(group, fn, pin=pin))


def _write(group: str, fn, *, pin: bool = True):
    synced = pin and routing.sync_apply(group)
    alias = routing.write_alias(group, synced=synced) if pin else routing.primary_alias(group)
    try:
        if not synced:
            return fn(alias)
        # `fn` owns its transactions (it may commit more than one), so the setting is made for the
        # session around it, or for the caller's transaction when one is open, and undone after.
        local = connections[alias].in_atomic_block
        with connections[alias].cursor() as cursor:
            cursor.execute(f"SET {'LOCAL ' if local else ''}synchronous_commit = remote_apply")
        try:
            return fn(alias)
        finally:
            if not local and connections[alias].connection is not None:
                with connections[alias].cursor() as cursor:
                    cursor.execute("RESET synchronous_commit")
    except CONNECTION_ERRORS as exc:
        if not connections[alias].in_atomic_block:
            _discard(alias)
        raise ShardUnavailable(group, exc) from exc
    except DatabaseError as exc:
        if _frozen(exc):
            raise ShardFrozen(group, exc) from exc
        raise
