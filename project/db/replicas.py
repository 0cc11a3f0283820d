"""Replica health: replay lag measured cheaply in the background, never a query per request.

One daemon thread per process probes each replica *server* (host:port; several aliases can share one)
every REPLICA_CHECK_INTERVAL seconds on its own short-timeout connection. Lag is measured the way
postgres_exporter does: when everything received has been replayed the replica is current (lag 0,
even if the primary has been idle for an hour); otherwise lag is the age of the last replayed commit.
A replica that does not answer, or lags more than MAX_REPLICA_LAG, is unusable until a probe says
otherwise. Requests only read the in-memory verdict.
"""

import logging
import math
import os
import threading
import time
from dataclasses import dataclass

import psycopg
from django.conf import settings

logger = logging.getLogger(__name__)

LAG_SQL = """
SELECT CASE
         WHEN pg_last_wal_receive_lsn() IS NULL THEN NULL
         WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
         ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())
       END
"""


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
    lag: float = math.inf  # seconds; inf = unknown or unreachable
    reachable: bool = False
    checked_at: float = 0.0
    error: str = ""

    @property
    def usable(self) -> bool:
        return self.reachable and self.lag <= settings.MAX_REPLICA_LAG


def _server_key(db: dict) -> str:
    return f"{db['HOST']}:{db['PORT']}"


class ReplicaMonitor:
    def __init__(self):
        self._lock = threading.Lock()
        self._pid = None
        self._states: dict[str, ReplicaState] = {}
        self._conns: dict[str, psycopg.Connection] = {}
        self._wake = threading.Event()

    # --- read side, used on every routed read ---
    def usable(self, aliases: list[str]) -> list[str]:
        self._ensure_started()
        return [a for a in aliases if (s := self._states.get(a)) is not None and s.usable]

    def states(self) -> list[ReplicaState]:
        self._ensure_started()
        return list(self._states.values())

    def report_failure(self, alias: str, error: Exception) -> None:
        """A query on `alias` failed: skip its server until the next successful probe."""
        state = self._states.get(alias)
        if state is None:
            return
        for s in self._states.values():
            if s.server == state.server:
                s.reachable, s.error = False, str(error)[:200]
        self._wake.set()

    def refresh_now(self) -> None:
        """Probe every replica server synchronously (tests, management commands)."""
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
            self._conns = {}
            self._states = {}
            for group in settings.DATABASE_GROUPS.values():
                for alias in group["replicas"]:
                    db = settings.DATABASES[alias]
                    self._states[alias] = ReplicaState(alias=alias, server=_server_key(db))
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
        by_server: dict[str, list[ReplicaState]] = {}
        for state in list(self._states.values()):
            by_server.setdefault(state.server, []).append(state)
        for server, states in by_server.items():
            lag, error = self._probe(server, states[0].alias)
            now = time.time()
            for s in states:
                was_usable = s.usable
                s.reachable = error is None
                s.lag = math.inf if lag is None else lag
                s.error = error or ""
                s.checked_at = now
                if was_usable != s.usable:
                    log = logger.info if s.usable else logger.warning
                    verdict = "usable" if s.usable else "skipped"
                    log("replica %s %s (lag=%s, error=%s)", s.alias, verdict, s.lag, s.error)

    def _probe(self, server: str, alias: str) -> tuple[float | None, str | None]:
        conn = self._conns.get(server)
        try:
            if conn is None or conn.closed:
                conn = probe_connect(alias)
                self._conns[server] = conn
            row = conn.execute(LAG_SQL).fetchone()
            return (None if row[0] is None else float(row[0])), None
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
            self._conns.pop(server, None)
            return None, str(exc).strip()[:200] or exc.__class__.__name__


monitor = ReplicaMonitor()
