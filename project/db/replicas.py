"""Replica health: replay lag measured cheaply in the background, never a query per request.

One daemon thread per process probes every REPLICA_CHECK_INTERVAL seconds, on its own short-timeout
connections, first each primary *server* (`pg_current_wal_lsn()`), then each replica server (host:port;
several aliases can share one): its replay LSN and its WAL receiver (`pg_stat_wal_receiver`).

Lag is measured against the primary, not the replica's own view: the monitor keeps, per primary
server, the moments its WAL position was first seen to pass each value, and a replica's lag is the
age of the oldest primary position it has not replayed (0 when it has replayed everything the primary
had at the last probe, even if the primary has been idle for an hour). Comparing the replica's
received LSN with its replayed LSN is not enough: a replica whose WAL receiver has stopped (network
cut, slot dropped) has replayed all it received and looks current forever while the primary moves on.
A replica whose receiver has not been streaming for MAX_REPLICA_LAG while its primary answers is
skipped too, even if the primary wrote nothing meanwhile. When the primary does not answer, nothing
newer than its last known position can have been committed there, so the replica is judged against that.

A replica that does not answer, or lags more than MAX_REPLICA_LAG, is unusable until a probe says
otherwise; `reason` says why. Every verdict is also reported to the replica's circuit breaker
(project/db/breakers.py): a bad one opens it, a good probe after its open period closes it, and an
operator can force it. A replica is used only while its verdict is good and its breaker is CLOSED.
Requests only read the in-memory verdict and the breaker's cached state (no query, no Redis call per
request), including each replica's replayed LSN for read-your-writes (project/db/routing.py).
"""

import logging
import math
import os
import threading
import time
from dataclasses import dataclass

import psycopg
from django.conf import settings

from .breakers import alias_guard

logger = logging.getLogger(__name__)

PRIMARY_SQL = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"

# One row even when pg_stat_wal_receiver has none (the receiver is not running). Its status and
# times are visible to superusers and pg_read_all_stats members only: grant that role in production.
# The backends of this role waiting for a synchronous standby to apply their commit (any database of
# the server); pg_cancel_backend ends only that wait: the commit stays committed.
RELEASE_SYNC_WAITERS_SQL = (
    "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity "
    "WHERE wait_event = 'SyncRep' AND usename = current_user"
)
REPLICA_SQL = """
SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint,
       CASE WHEN pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn()
            THEN EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp()) END,
       r.pid IS NOT NULL,
       r.status,
       EXTRACT(EPOCH FROM clock_timestamp() - r.last_msg_receipt_time)
  FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true
"""
HISTORY_SECONDS = 300.0  # older primary positions only ever prove a lag far above any sane MAX_REPLICA_LAG


def probe_connect(alias: str) -> psycopg.Connection:
    """A connection to `alias`'s server outside Django's pool, for probes (lag, health): a 1 s connect
    and statement timeout, so a hung server costs a probe a second, never a request."""
    db = settings.DATABASES[alias]
    return psycopg.connect(
        host=db["HOST"],
        port=db["PORT"],
        dbname=db["NAME"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        connect_timeout=1,
        autocommit=True,
        options="-c statement_timeout=1000",
    )


@dataclass
class ReplicaState:
    alias: str
    server: str
    primary_server: str = ""
    lag: float = math.inf  # seconds; inf = unknown or unreachable
    reachable: bool = False
    checked_at: float = 0.0
    error: str = ""
    replay_lsn: int = -1  # replayed WAL position at the last probe; -1 = unknown
    receiver: str = ""  # the WAL receiver's status ("streaming", ...), "stopped" when it has no row
    reason: str = ""  # why the replica is skipped (empty when usable)

    @property
    def usable(self) -> bool:
        return self.reachable and self.lag <= settings.MAX_REPLICA_LAG


def _server_key(db: dict) -> str:
    return f"{db['HOST']}:{db['PORT']}"


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class ReplicaMonitor:
    def __init__(self):
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()  # the thread and refresh_now() share the connections
        self._pid = None
        self._states: dict[str, ReplicaState] = {}
        self._conns: dict[str, psycopg.Connection] = {}
        self._primaries: dict[str, str] = {}  # primary server -> an alias on it (to connect)
        self._history: dict[str, list[tuple[float, int]]] = {}  # primary server -> [(first seen, lsn)]
        self._primary_ok: dict[str, bool] = {}
        self._cut_since: dict[str, float] = {}  # replica server -> when its receiver was first seen stopped
        self._wake = threading.Event()

    # --- read side, used on every routed read ---
    def usable(self, aliases: list[str]) -> list[str]:
        self._ensure_started()
        return [a for a in aliases if (s := self._states.get(a)) is not None and s.usable and alias_guard(a).admits()]

    def replayed(self, alias: str) -> int:
        """The WAL position `alias` had replayed at its last probe (-1 when unknown)."""
        state = self._states.get(alias)
        return state.replay_lsn if state is not None else -1

    def states(self) -> list[ReplicaState]:
        self._ensure_started()
        return list(self._states.values())

    def report_failure(self, alias: str, error: Exception) -> None:
        """A query on `alias` failed: open the breakers of its server's aliases (skipped until a probe
        after the open period finds them good) and probe now."""
        state = self._states.get(alias)
        if state is None:
            return
        for s in self._states.values():
            if s.server == state.server:
                s.reachable, s.error = False, str(error)[:200]
                s.reason = f"a query failed: {s.error}"
                alias_guard(s.alias).failure(f"a query failed: {s.error}")
        self._wake.set()

    def refresh_now(self) -> None:
        """Probe every server synchronously (tests, management commands)."""
        self._ensure_started()
        self._probe_all()

    # --- probing ---
    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # After a fork the parent's thread and connections are not ours.
            self._conns, self._states, self._primaries, self._history = {}, {}, {}, {}
            self._primary_ok, self._cut_since = {}, {}
            for group in settings.DATABASE_GROUPS.values():
                primary = settings.DATABASES[group["primary"]]
                for alias in group["replicas"]:
                    db = settings.DATABASES[alias]
                    self._primaries.setdefault(_server_key(primary), group["primary"])
                    self._states[alias] = ReplicaState(
                        alias=alias, server=_server_key(db), primary_server=_server_key(primary)
                    )
            self._pid = os.getpid()
            if self._states:
                threading.Thread(target=self._run, name="replica-monitor", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                self._probe_all()
            except Exception:  # never let the monitor die
                logger.exception("replica monitor probe failed")
            self._wake.wait(settings.REPLICA_CHECK_INTERVAL)
            self._wake.clear()

    def _probe_all(self) -> None:
        with self._probe_lock:
            # Primaries first: a replica is then compared with a position the primary had already
            # reached when the replica was asked, never with a later one.
            for server, alias in self._primaries.items():
                row, _error = self._query(server, alias, PRIMARY_SQL)
                self._primary_ok[server] = row is not None
                if row is not None:
                    self._remember(server, int(row[0]))
            by_server: dict[str, list[ReplicaState]] = {}
            for state in list(self._states.values()):
                by_server.setdefault(state.server, []).append(state)
            for server, states in by_server.items():
                row, error = self._query(server, states[0].alias, REPLICA_SQL)
                verdict = self._judge(states[0], row, error)
                for s in states:
                    self._apply(s, *verdict)
            self._release_sync_waiters()

    def _release_sync_waiters(self) -> None:
        """End the waits of commits that asked a synchronous standby which is no longer usable.

        A commit with `synchronous_commit = remote_apply` waits until the standby has applied it, for
        as long as that takes: a standby stopped in the middle holds it, and its row locks, until it
        returns, so every later write of those rows waits too, and the workers that make them (found
        by the black-box pass: PATCHes and flush tasks stuck for the whole 30 s outage, though new
        writes had stopped asking the standby). Cancelling such a wait is what PostgreSQL documents
        for it: the transaction is already committed and durable on the primary, stays so, and its
        client's COMMIT returns (with a warning). Run on each probe while a synchronous standby is
        unusable, so a commit that asked just before the standby was judged gone is released at the
        next probe."""
        sync = {alias for group in settings.DATABASE_GROUPS.values() for alias in group.get("sync_replicas") or ()}
        for server in {s.primary_server for s in self._states.values() if s.alias in sync and not s.usable}:
            if self._primary_ok.get(server):
                row, error = self._query(server, self._primaries[server], RELEASE_SYNC_WAITERS_SQL)
                if row and row[0]:
                    logger.warning("released %s commit(s) waiting for an unusable synchronous standby", row[0])

    def _remember(self, server: str, lsn: int) -> None:
        now = time.time()
        history = self._history.setdefault(server, [])
        if not history or lsn > history[-1][1]:
            history.append((now, lsn))
        # Drop an entry only when the next one is beyond the horizon too: a replica behind the oldest
        # kept entry is then still judged at least HISTORY_SECONDS behind, never against a newer one.
        while len(history) > 1 and now - history[1][0] > HISTORY_SECONDS:
            history.pop(0)

    def _judge(self, state: ReplicaState, row, error) -> tuple:
        """Return (reachable, lag, error, replay_lsn, receiver, reason) for one replica server."""
        if row is None:
            return False, math.inf, error, -1, "", f"unreachable: {error}"
        replay, legacy_lag, has_receiver, status, _last_msg_age = row
        if replay is None:
            return True, math.inf, "", -1, "", "not a standby (pg_last_wal_replay_lsn() is NULL)"
        replay, now = int(replay), time.time()
        receiver = (status or "unknown") if has_receiver else "stopped"
        history = self._history.get(state.primary_server) or []
        lag, reason = 0.0, ""
        behind = next(((t, lsn) for t, lsn in history if lsn > replay), None)
        if behind is not None:
            lag = max(now - behind[0], float(legacy_lag or 0.0))
            reason = (
                f"replayed {_lsn_text(replay)}, behind the primary's {_lsn_text(behind[1])} "
                f"for {now - behind[0]:.1f} s (WAL receiver: {receiver})"
            )
        elif not history and legacy_lag is not None:
            lag = float(legacy_lag)  # the primary never answered: the replica's own view is all there is
            reason = f"last replayed commit {lag:.1f} s old (primary not probed yet)"
        # A receiver that is not streaming gets nothing the primary writes from now on; skipped once
        # that has lasted MAX_REPLICA_LAG, while the primary answers (a primary that answers nobody
        # commits nothing, so then the replica has everything it can have).
        if receiver not in ("streaming", "unknown") and self._primary_ok.get(state.primary_server):
            since = self._cut_since.setdefault(state.server, now)
            if now - since > lag:
                lag = now - since
                reason = f"WAL receiver {receiver} for {lag:.1f} s; replayed {_lsn_text(replay)}"
        else:
            self._cut_since.pop(state.server, None)
        return True, lag, "", replay, receiver, reason

    def _apply(self, s: ReplicaState, reachable, lag, error, replay, receiver, reason) -> None:
        was_usable = s.usable
        s.reachable, s.lag, s.error = reachable, lag, error or ""
        s.replay_lsn, s.receiver, s.checked_at = replay, receiver, time.time()
        s.reason = "" if s.usable else (reason or f"lag {lag:.1f} s > MAX_REPLICA_LAG")
        if was_usable != s.usable:
            log = logger.info if s.usable else logger.warning
            verdict = "usable" if s.usable else "skipped"
            log("replica %s %s (lag=%s, %s)", s.alias, verdict, s.lag, s.reason or "current")
        # The probe is the breaker's call: requests never probe a replica. A refused probe (open
        # period, forced) reports nothing.
        breaker = alias_guard(s.alias)
        if breaker.allows():
            if s.usable:
                breaker.success()
            else:
                breaker.failure(s.reason)

    def _query(self, server: str, alias: str, sql: str):
        """Return (row, None) or (None, error) for one query on `server`, reconnecting as needed."""
        conn = self._conns.get(server)
        try:
            if conn is None or conn.closed:
                conn = probe_connect(alias)
                self._conns[server] = conn
            return conn.execute(sql).fetchone(), None
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
            self._conns.pop(server, None)
            return None, str(exc).strip()[:200] or exc.__class__.__name__


monitor = ReplicaMonitor()
