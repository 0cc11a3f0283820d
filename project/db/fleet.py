"""Which database groups each live process can reach: a heartbeat in the state Redis.

Every web, worker and beat process writes, every SHARDING_HEARTBEAT_INTERVAL seconds, one key
`bulwark:fleet:v1:{host}:{pid}` (expiring after three intervals) naming its role and the groups it
was configured with at start. `manage.py reshard` reads them before switching the shard map and
refuses while any live process lacks the target group (users/sharding/resharding.py): a process that
cannot reach a group cannot serve the users moved onto it, and topology is read from the environment
only at start.

The groups are captured once, when the heartbeat starts: settings never change under a running process
(and tests that override them for a moment must not make the process look reconfigured).
"""

import atexit
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass

from django.conf import settings

logger = logging.getLogger(__name__)

PREFIX = "bulwark:fleet:v1:"


def _key() -> str:
    return f"{PREFIX}{socket.gethostname()}:{os.getpid()}"


def _role() -> str:
    argv = [os.path.basename(a) for a in sys.argv[:4]]
    return " ".join(argv) or "python"


def _redis():
    from django_redis import get_redis_connection

    return get_redis_connection("state")


@dataclass(frozen=True)
class Process:
    key: str
    role: str
    pid: int
    host: str
    groups: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.role} (pid {self.pid} on {self.host}; knows {', '.join(self.groups)})"


class Heartbeat:
    def __init__(self):
        self._lock = threading.Lock()
        self._pid = None
        self._payload = ""

    def ensure_started(self) -> None:
        """Start this process's heartbeat thread (again after a fork); cheap when already running."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._payload = json.dumps(
                {
                    "role": _role(),
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "groups": sorted(settings.DATABASE_GROUPS),
                }
            )
            threading.Thread(target=self._run, name="fleet-heartbeat", daemon=True).start()
            atexit.register(self._forget, self._pid)

    def beat(self) -> None:
        interval = settings.SHARDING_HEARTBEAT_INTERVAL
        _redis().set(_key(), self._payload, ex=max(1, round(interval * 3)))

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as exc:  # the state Redis down: reshard then refuses to switch (it cannot know)
                logger.debug("fleet heartbeat not written: %s", exc)
            time.sleep(settings.SHARDING_HEARTBEAT_INTERVAL)

    @staticmethod
    def _forget(pid: int) -> None:
        if pid != os.getpid():  # a forked child exiting must not remove its parent's key
            return
        try:
            _redis().delete(_key())
        except Exception:  # best effort: the key expires anyway
            logger.debug("fleet heartbeat not removed", exc_info=True)


heartbeat = Heartbeat()


def live_processes() -> list[Process]:
    """Every process whose heartbeat has not expired. Raise redis' errors when the state Redis is down."""
    client = _redis()
    # On a Redis Cluster, redis-py's scan_iter visits every master; the keys are in many slots, so they
    # are read by a pipeline of GETs (one MGET would be refused as CROSSSLOT).
    keys = sorted(client.scan_iter(match=f"{PREFIX}*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    processes = []
    for key, raw in zip(keys, pipe.execute() if keys else [], strict=True):
        if raw is None:  # expired between SCAN and MGET
            continue
        data = json.loads(raw)
        processes.append(
            Process(
                key=key.decode() if isinstance(key, bytes) else key,
                role=data["role"],
                pid=data["pid"],
                host=data["host"],
                groups=tuple(data["groups"]),
            )
        )
    return processes


def processes_lacking(group: str) -> list[Process]:
    """The live processes that were not configured with `group`."""
    return [p for p in live_processes() if group not in p.groups]
