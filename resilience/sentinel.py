"""Connections to the master that Redis Sentinel names, checked to be a master (redis-py does not check).

For a while after a failover, a Sentinel that has not yet heard of it (Sentinels learn the new
configuration from each other, every 2 s) still names the old master; after SENTINEL FAILOVER that
server is up, and a replica within about a second (deploy/sentinel-reconfig). redis-py connects to
the address it is given and only PINGs it, which a replica answers, and asks the same Sentinel first
next time (the first one that answered moves to the head of its list). What a client then holds is a
connection to a replica that stays in its pool: reads and read-only scripts go on answering from it
(a Celery worker BRPOPs there and never receives a task again: the publishers push to the new
master), and each write fails later with "The previous master is now a slave" (a 503 of the app, or a
failed task) long after the Sentinels agree.

Redis' Sentinel client guidelines ask for a ROLE check after connecting: `MasterRoleConnection` makes
it; when the server is not a master it drops the connection, moves the Sentinel that named it to the end
of the list and asks the next one. When no Sentinel names a real master yet, the connection is refused
with MasterNotFoundError, as when no Sentinel names any master: the "state Redis unavailable" that
callers already handle (a view written to the database directly, a task retried by the next beat).
The state alias (django-redis, `SentinelConnectionPool` below) and the Celery broker (kombu's sentinel
transport, project/celery.py) both connect this way.
"""

import contextlib
import time

import redis
import redis.sentinel
from redis.utils import str_if_bytes


class MasterRoleConnection(redis.sentinel.SentinelManagedConnection):
    """A Sentinel-managed connection that accepts, for a master pool, only a server whose ROLE is master.

    Connecting asks the Sentinels for the master, connects, and asks the server ROLE; a server that is
    not a master is dropped and the Sentinel that named it moved to the end of the list, and the next
    Sentinel is asked, up to once each. Raise MasterNotFoundError (a ConnectionError) when none named a
    master that says it is one.
    """

    def _connect_retry(self):
        pool = self.connection_pool  # redis-py's proxy of the pool: is_master, sentinel_manager
        if self._sock or not pool.is_master:
            return super()._connect_retry()
        sentinels = pool.sentinel_manager.sentinels
        for _ in range(len(sentinels)):
            address = pool.get_master_address()  # moves the Sentinel that answered to the head
            self.connect_to(address)
            self.send_command("ROLE")
            role = str_if_bytes(self.read_response()[0])
            if role == "master":
                return None
            self.disconnect()
            sentinels.append(sentinels.pop(0))  # it lags behind a failover: ask the others first
        # Nothing was sent: MasterNotFoundError, as when no Sentinel names a master, tells callers so.
        raise redis.sentinel.MasterNotFoundError(
            f"No master found for {pool.service_name!r}: {address[0]}:{address[1]}, named by the Sentinels, is a {role}"
        )


class SentinelConnectionPool(redis.sentinel.SentinelConnectionPool):
    """redis-py's Sentinel pool whose connections check the master's role (django-redis'
    CONNECTION_POOL_CLASS for the state alias)."""

    def __init__(self, service_name, sentinel_manager, **kwargs):
        kwargs.setdefault("connection_class", MasterRoleConnection)
        super().__init__(service_name, sentinel_manager, **kwargs)


class SwitchoverFailed(RuntimeError):
    """A planned switchover did not complete. Raised before SENTINEL FAILOVER was sent, the master's writes
    were unpaused and nothing changed; after it (the Sentinels named no new master in time), the writes
    stay paused until deploy/sentinel-reconfig or deploy/sentinel-notify (on an abort) unpauses them, or
    the pause runs out."""


class _FailoverOutcomeUnknown(Exception):
    """SENTINEL FAILOVER was sent and its answer lost."""


def switchover(
    sentinels: list[tuple[str, int]], service_name: str, *, pause_ms: int = 10_000, timeout: float = 5.0
) -> tuple[tuple[str, int], tuple[str, int]]:
    """Promote a replica of `service_name` with no moment when two servers take writes and no
    acknowledged write lost; return (old master, new master) as the Sentinels name them.

    A bare SENTINEL FAILOVER cannot promise this: Sentinel runs its scripts without waiting for them,
    so deploy/sentinel-notify's pause of the old master races the promotion (sent 100-200 ms after
    +try-failover), and even when the pause wins, writes acknowledged just before it may not have
    reached the replica yet (replication is asynchronous). Here the steps come in order: CLIENT PAUSE
    WRITE on the master, in one transaction with the replication offset it has reached; every replica
    online reaches that offset (Sentinel may promote any of them); only then SENTINEL FAILOVER. Writes
    wait (up to `pause_ms`) until deploy/sentinel-reconfig demotes the old master, kills its clients and
    unpauses it; they reconnect to the new master.

    Raise SwitchoverFailed, after unpausing the master, if the master named is not one or has no replica
    online, a replica does not catch up within `timeout` seconds (at most half the Sentinels'
    down-after-milliseconds), or SENTINEL FAILOVER is refused (no good replica, a failover in
    progress); SwitchoverFailed too if the Sentinels name no new master within max(`timeout`, 30) s of
    it; MasterNotFoundError if no Sentinel names a master. A SENTINEL FAILOVER whose answer is lost
    (ConnectionError, TimeoutError) may have started: it is raised with the writes left paused, since
    unpausing could make two masters again.
    """
    options = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0, "retry": None}  # a stopped server: no retries
    manager = redis.sentinel.Sentinel(sentinels, sentinel_kwargs=options, **options)
    old = manager.discover_master(service_name)
    # A master paused for down-after-milliseconds is taken for down and failed over by the Sentinels
    # themselves (measured: +sdown 5 s into a pause left in place, down-after 5000; their PING waits
    # behind their hello PUBLISH, which a write pause holds): give up well before that.
    down_after = int(manager.sentinels[0].sentinel_master(service_name)["down-after-milliseconds"]) / 1000
    timeout = min(timeout, down_after / 2)
    master = redis.Redis(host=old[0], port=old[1], **options)
    with master.pipeline(transaction=True) as pipe:
        pipe.execute_command("CLIENT", "PAUSE", pause_ms, "WRITE")
        pipe.info("replication")
        _, info = pipe.execute()
    try:
        if info["role"] != "master":
            raise SwitchoverFailed(f"{old[0]}:{old[1]}, named by the Sentinels, is a {info['role']}")
        replicas = [
            (r["ip"], int(r["port"]))
            for name, r in info.items()
            if name.startswith("slave") and isinstance(r, dict) and r.get("state") == "online"
        ]
        if not replicas:
            raise SwitchoverFailed(f"{old[0]}:{old[1]} has no replica online")
        _wait_caught_up(replicas, info["master_repl_offset"], timeout=timeout, options=options)
        try:
            manager.sentinels[0].execute_command("SENTINEL", "FAILOVER", service_name)
        except redis.ResponseError as exc:  # refused: nothing started
            raise SwitchoverFailed(f"SENTINEL FAILOVER {service_name}: {exc}") from exc
        except redis.RedisError as exc:  # lost answer: it may have started, the pause must stay
            raise _FailoverOutcomeUnknown(f"SENTINEL FAILOVER {service_name}: {exc}; writes left paused") from exc
    except _FailoverOutcomeUnknown as exc:
        raise SwitchoverFailed(str(exc)) from exc.__cause__
    except BaseException:
        with contextlib.suppress(redis.RedisError):  # a master that died has no pause left to lift
            master.execute_command("CLIENT", "UNPAUSE")
        raise
    return old, _wait_promoted(manager, service_name, old, timeout=max(timeout, 30.0))


def _wait_caught_up(replicas, offset: int, *, timeout: float, options: dict) -> None:
    """Return once every replica in `replicas` has processed the replication stream up to `offset`;
    raise SwitchoverFailed naming those that have not after `timeout` seconds."""
    options = {**options, "socket_timeout": min(options["socket_timeout"], 0.5)}  # a stopped one, asked again
    pending = {address: redis.Redis(host=address[0], port=address[1], **options) for address in replicas}
    deadline = time.monotonic() + timeout
    while pending:
        last_pass = time.monotonic() > deadline  # every replica is asked once more after the deadline
        for address, replica in list(pending.items()):
            try:
                info = replica.info("replication")
            except redis.RedisError:  # stopped or unreachable: not caught up, as far as anyone knows
                continue
            if info.get("master_link_status") == "up" and info.get("slave_repl_offset", -1) >= offset:
                del pending[address]
        if pending and last_pass:
            late = ", ".join(f"{h}:{p}" for h, p in pending)
            raise SwitchoverFailed(f"replica(s) {late} did not reach offset {offset} in {timeout} s")
        if pending:
            time.sleep(0.005)


def _wait_promoted(manager, service_name: str, old: tuple[str, int], *, timeout: float) -> tuple[str, int]:
    """The master the Sentinel that ran the failover names once it is no longer `old`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            named = manager.discover_master(service_name)
            if named != old:
                return named
        except redis.sentinel.MasterNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise SwitchoverFailed(f"the Sentinels still name {old[0]}:{old[1]} {timeout} s after SENTINEL FAILOVER")
        time.sleep(0.05)
