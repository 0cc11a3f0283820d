"""The faults, each with how it is caused, how it is healed, and which refusals it may cause.

Locally one PostgreSQL cluster holds the default database and every shard: "a shard primary stopped"
refuses connections to one shard database (what docs/operations.md describes), "the default primary
restarted" restarts the cluster, so every primary is down for the hold. "A replica cut off" points the
asynchronous standby's WAL receiver elsewhere; "add a shard" runs the real resharding command.
"""

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from django.conf import settings

from project.db.replicas import monitor
from tests.processes import Process, app_env
from tests.stack import stack, wait_for
from users.sharding.shardmap import shard_map

from .receiver import Receiver

RESHARD_TARGET = "shard_2"  # configured in the chaos settings (SHARD_COUNT=3), not in the initial map
RESHARD_TIMEOUT = 180.0
FAULT_POINT = "flush.after_commit"  # users/writebehind/flush.py: one shard committed, the batch not acknowledged


def child_env(**extra) -> dict:
    """This process's environment (every BULWARK_* port and BULWARK_STACK_DIR) on the chaos settings,
    with `extra` set: what each process the suite starts gets."""
    return app_env({"DJANGO_SETTINGS_MODULE": "chaos.settings", **extra})


@dataclass
class Suite:
    """The processes a scenario may break and heal."""

    server: Process
    worker: Process
    beat: Process
    receiver: Receiver
    log_dir: object


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    inject: Callable[[Suite], None]
    heal: Callable[[Suite], None]
    guarantee: str
    refusals: str = ""  # why 503/429 answers are expected; empty: none may occur
    recovered: Callable[[Suite], bool] = field(default=lambda suite: True)
    # Checked during the fault: no read of a user shows more views than were acknowledged to the load
    # (or still in flight). Off where a scenario does not promise it yet (not measured there).
    exact_reads: bool = False
    # Checked during the fault: another client's read never shows an update older than the documented
    # staleness bound (STALE_BOUND in chaos/__main__.py).
    bounded_staleness: bool = False


def pg(alias: str, sql: str, params: tuple = ()) -> None:
    """Run an administrative statement on the server of `alias` (connected to its `postgres` database)."""
    db = settings.DATABASES[alias]
    with psycopg.connect(
        host=db["HOST"],
        port=db["PORT"],
        dbname="postgres",
        user=db["USER"],
        password=db["PASSWORD"] or None,
        autocommit=True,
        connect_timeout=5,
    ) as conn:
        conn.execute(sql, params)


def replica_aliases() -> list[str]:
    return [alias for spec in settings.DATABASE_GROUPS.values() for alias in spec["replicas"]]


def replicas_usable(_suite=None) -> bool:
    monitor.refresh_now()
    return monitor.usable(replica_aliases()) == replica_aliases()


SHARD_DOWN = "shard_1"


def shard_allow(allow: bool) -> None:
    name = settings.DATABASES[SHARD_DOWN]["NAME"]
    pg("default", f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
    if not allow:
        pg("default", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def replay(paused: bool) -> None:
    pg(replica_aliases()[0], f"SELECT pg_wal_replay_{'pause' if paused else 'resume'}()")


_conninfo: dict[str, str] = {}  # the cut-off replica's primary_conninfo, restored by the heal


def replica_cut(cut: bool) -> None:
    """Cut the asynchronous standby's WAL receiver off its primary (primary_conninfo pointed at a closed
    port, reloaded), or restore it. The replica keeps answering queries: only the WAL stops arriving,
    which is what a network cut, a dead primary or a dropped slot looks like from the service."""
    alias = replica_aliases()[0]  # the asynchronous standby's server holds every group's _r0
    if cut:
        db = settings.DATABASES[alias]
        with psycopg.connect(
            host=db["HOST"], port=db["PORT"], dbname="postgres", user=db["USER"], password=db["PASSWORD"] or None
        ) as conn:
            _conninfo.setdefault(alias, conn.execute("SHOW primary_conninfo").fetchone()[0])
        pg(alias, "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 connect_timeout=1'")
    elif alias in _conninfo:
        pg(alias, f"ALTER SYSTEM SET primary_conninfo = '{_conninfo.pop(alias).replace(chr(39), chr(39) * 2)}'")
    else:
        return
    pg(alias, "SELECT pg_reload_conf()")


_reshard: dict = {}  # the running `manage.py reshard` of the add-shard scenario


def reshard_start(suite: Suite) -> None:
    """`make add-shard`'s command, as an operator runs it beside the serving fleet."""
    argv = [sys.executable, "manage.py", "reshard", "plan", "--to", RESHARD_TARGET, "--apply"]
    _reshard["proc"] = Process("reshard", argv, log_path=suite.log_dir / "reshard.log", env=child_env()).start()


def reshard_wait(_suite: Suite) -> None:
    """The move runs to its end under the load (copy, fence, verify, switch, clean-up)."""
    reshard = _reshard.get("proc")
    if reshard is None:
        return
    try:
        reshard.proc.wait(timeout=RESHARD_TIMEOUT)
    except subprocess.TimeoutExpired:
        reshard.kill()


def reshard_done(_suite: Suite) -> bool:
    reshard = _reshard.get("proc")
    return reshard is not None and reshard.proc.returncode == 0 and RESHARD_TARGET in set(shard_map.table())


def kill_worker_mid_flush(suite: Suite) -> None:
    """Restart the worker with the flusher's crash point armed; once a flush has committed one shard's
    part and SIGKILLed its pool process, SIGKILL the whole worker too (a lost node)."""
    marker = suite.log_dir / "writebehind-fault-fired"
    marker.unlink(missing_ok=True)
    suite.worker.stop()
    suite.worker.start(child_env(FAULT_POINT=FAULT_POINT, FAULT_POINT_MARKER=marker))
    wait_for(marker.exists, timeout=60, interval=0.05, message="a flush to be SIGKILLed after its first shard commit")
    suite.worker.kill()


SCENARIOS = [
    Scenario(
        "cache-kill",
        "cache Redis killed (SIGKILL), restarted empty",
        lambda s: stack("kill", "cache"),
        lambda s: stack("start", "cache"),
        "every endpoint answers from the databases; lost write-throughs are replayed as invalidations",
    ),
    Scenario(
        "cache-hang",
        "cache Redis hung (SIGSTOP), then SIGCONT",
        lambda s: stack("pause", "cache"),
        lambda s: stack("resume", "cache"),
        "each call waits at most the 0.25 s socket timeout, then the shared redis:cache breaker skips the cache",
    ),
    Scenario(
        "state-kill",
        "state Redis killed (SIGKILL), restarted from its AOF",
        lambda s: stack("kill", "state"),
        lambda s: stack("start", "state"),
        "views are written straight to the database while connections are refused; none lost or doubled",
        refusals="a view whose Redis command was in flight when Redis died is answered 503 'unconfirmed' "
        "(never acknowledged); users.register fails closed (429) while the limiter has no Redis",
    ),
    Scenario(
        "replica-stop",
        "streaming replica stopped, then started",
        lambda s: stack("stop", "replica"),
        lambda s: stack("start", "replica"),
        "reads fail over to the primaries (retried once, skipped after the next probe)",
        recovered=replicas_usable,
    ),
    Scenario(
        "replica-lag",
        "replica lagging (WAL replay paused), then resumed",
        lambda s: replay(True),
        lambda s: replay(False),
        "a replica beyond MAX_REPLICA_LAG is skipped; a client always reads its own writes",
        recovered=replicas_usable,
    ),
    Scenario(
        "replica-cutoff",
        "asynchronous standby cut off from its primary (WAL receiver pointed at a closed port), then restored",
        lambda s: replica_cut(True),
        lambda s: replica_cut(False),
        "the replica answers queries but receives nothing: it is skipped within MAX_REPLICA_LAG + one probe, "
        "so no client reads an update older than that bound; a client always reads its own writes",
        recovered=replicas_usable,
        bounded_staleness=True,
    ),
    Scenario(
        "shard-down",
        f"{SHARD_DOWN} primary down (connections refused, backends terminated)",
        lambda s: shard_allow(False),
        lambda s: shard_allow(True),
        "other shards serve; their views are applied and acknowledged at once and reads of their users "
        "never exceed acknowledged views; the shard's own batch stays claimed until it returns, then applies once",
        refusals=f"{SHARD_DOWN}'s writes (updates, registrations hashing to it) answer 503 + Retry-After, "
        "and its reads that neither the cache nor a replica can serve (CP per shard)",
        exact_reads=True,
    ),
    Scenario(
        "primary-restart",
        "PostgreSQL primary (default and every shard) stopped, then started",
        lambda s: stack("stop", "primary"),
        lambda s: stack("start", "primary"),
        "reads from cache and replica, views buffered; writes refused, none half-done",
        refusals="registrations and updates answer 503 + Retry-After while no primary runs (reads are served "
        "by the cache and the replica, views by the buffer)",
    ),
    Scenario(
        "worker-kill",
        "Celery worker SIGKILLed during a flush (after one shard committed)",
        kill_worker_mid_flush,
        lambda s: s.worker.start(),
        "the half-applied batch is re-claimed and applied exactly once (the ledger skips the done shard)",
    ),
    Scenario(
        "beat-stop",
        "Celery beat stopped, then started",
        lambda s: s.beat.stop(),
        lambda s: s.beat.start(),
        "views accumulate in the buffer (reads include them) and flush when beat returns",
    ),
    Scenario(
        "webhook-down",
        "webhook receiver down (connection refused), then back",
        lambda s: s.receiver.stop(),
        lambda s: s.receiver.start(),
        "deliveries wait behind the host's breaker and arrive once it is back; none dropped",
    ),
    # Last: it leaves the map on three shard groups (the next run's setup restores the initial map).
    Scenario(
        "add-shard",
        f"`manage.py reshard plan --to {RESHARD_TARGET} --apply` while serving (the fleet knows the group)",
        reshard_start,
        reshard_wait,
        "every user stays readable (never 404), no read older than the staleness bound, views exact; "
        "the move completes (rc 0) and the map uses the new group",
        refusals="writes to the logical shards being moved answer 503 `shard_moving` + Retry-After while "
        "they are fenced (about SHARDING_MAP_TTL, 2 s, per move)",
        recovered=reshard_done,
        exact_reads=True,
        bounded_staleness=True,
    ),
]
