"""Runtime overrides: an operator changes a limit during an incident without a deploy.

An override is a dict of values laid over the settings of one target, named "<kind>:<name>"
("ratelimit:api.read", "breaker:webhook:example.com"), with a reason, the staff user who made it and
an expiry. Settings stay the defaults: when an override expires or is cleared, the setting applies
again. The owner of each kind validates its values before they are stored (ratelimit/policies.py,
breaker/options.py); this module only stores and serves them.

Storage: one hash in the state Redis, target -> JSON. Expiry is enforced by readers (an entry past its
`expires_at` is ignored) and the hash itself expires with its last entry; writers prune expired entries.

Reading on the hot path costs no Redis round trip per request: each process keeps a snapshot and
refreshes it at most every RESILIENCE_OVERRIDES_REFRESH_SECONDS (default 1 s), on the request that
finds it stale, while other threads keep using the old one. An override therefore reaches every
process within that interval plus one request, and an expired one stops applying within it too.
While the state Redis is unavailable the last snapshot stays in force (expiring entries still expire);
a process that never read one applies none: the settings.
"""

import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings

from .outage import Outage
from .redis_state import UNAVAILABLE, state_redis

logger = logging.getLogger("resilience.overrides")

KEY = "ovr:v1"
MAX_SECONDS = 7 * 86400  # an override is an incident measure: a lasting change belongs in settings

outage = Outage("runtime overrides")


@dataclass(frozen=True)
class Override:
    target: str
    values: dict[str, Any]
    reason: str
    user: str
    created_at: float  # epoch seconds
    expires_at: float

    def active(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.expires_at

    @classmethod
    def from_json(cls, target: str, raw: bytes | str) -> "Override":
        data = json.loads(raw)
        return cls(
            target=target,
            values=dict(data["values"]),
            reason=str(data["reason"]),
            user=str(data["user"]),
            created_at=float(data["created_at"]),
            expires_at=float(data["expires_at"]),
        )

    def to_json(self) -> str:
        data = asdict(self)
        del data["target"]
        return json.dumps(data, sort_keys=True)


def target(kind: str, name: str) -> str:
    """The target name of the limit `name` of `kind` ("ratelimit", "breaker", ...)."""
    return f"{kind}:{name}"


# --- the admin side: straight to Redis; raises redis' ConnectionError/TimeoutError when it is down ---
def _read_all(client) -> dict[str, Override]:
    now = time.time()
    found = {}
    for raw_target, raw in client.hgetall(KEY).items():
        name = raw_target.decode()
        try:
            override = Override.from_json(name, raw)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring an unreadable override of %s", name)
            continue
        if override.active(now):
            found[name] = override
    return found


def override_list() -> dict[str, Override]:
    """Return every active override by target, read from the state Redis now."""
    return _read_all(state_redis())


def override_set(*, target: str, values: dict[str, Any], reason: str, user: str, seconds: float) -> Override:
    """Store an override of `target` for `seconds` (replacing any earlier one) and return it.
    `values` must already be validated by the target's owner. Raises ValueError for a duration out of
    (0, MAX_SECONDS]."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"an override lasts between 1 s and {MAX_SECONDS} s")
    now = time.time()
    override = Override(target, dict(values), reason, user, now, now + seconds)
    client = state_redis()
    client.hset(KEY, target, override.to_json())
    _prune(client)
    return override


def override_clear(*, target: str) -> bool:
    """Remove the override of `target`; return whether there was one."""
    client = state_redis()
    removed = bool(client.hdel(KEY, target))
    _prune(client)
    return removed


def _prune(client) -> None:
    """Drop expired entries and let the hash expire with its last entry."""
    active = _read_all(client)
    stale = [t.decode() for t in client.hkeys(KEY) if t.decode() not in active]
    pipe = client.pipeline(transaction=False)
    if stale:
        pipe.hdel(KEY, *stale)
    if active:
        pipe.pexpireat(KEY, math.ceil(max(o.expires_at for o in active.values()) * 1000))
    pipe.execute()


# --- the hot path: a per-process snapshot ---
@dataclass
class _Snapshot:
    entries: dict[str, Override] = field(default_factory=dict)  # as last read, expired ones included
    active: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> values, in force now
    checked_at: float = -math.inf  # monotonic
    version: int = 0


_snapshot = _Snapshot()
_lock = threading.Lock()
_pid = os.getpid()


def _refresh(snap: _Snapshot, now_mono: float) -> _Snapshot:
    entries = snap.entries
    if not outage.active():
        try:
            entries = {}
            for raw_target, raw in state_redis().hgetall(KEY).items():
                name = raw_target.decode()
                try:
                    entries[name] = Override.from_json(name, raw)
                except (ValueError, KeyError, TypeError):
                    logger.warning("ignoring an unreadable override of %s", name)
            outage.recovered()
        except UNAVAILABLE as exc:
            outage.failed(exc)
            entries = snap.entries
        except Exception:  # a bug here must not take requests down: keep what we had
            logger.exception("reading runtime overrides failed")
            entries = snap.entries
    now = time.time()
    active = {name: o.values for name, o in entries.items() if o.active(now)}
    version = snap.version if active == snap.active else snap.version + 1
    return _Snapshot(entries, active, now_mono, version)


def snapshot() -> _Snapshot:
    """This process's view of the overrides in force, refreshed when older than the refresh interval.
    Never raises; costs no Redis call unless the snapshot is stale, and then one HGETALL for one
    thread while the others keep the current snapshot."""
    global _snapshot, _lock, _pid
    snap = _snapshot
    now_mono = time.monotonic()
    if now_mono - snap.checked_at < settings.RESILIENCE_OVERRIDES_REFRESH_SECONDS:
        return snap
    if _pid != os.getpid():  # forked while another thread held the lock: it would never be released here
        _lock, _pid = threading.Lock(), os.getpid()
    if not _lock.acquire(blocking=False):
        return snap
    try:
        _snapshot = snap = _refresh(_snapshot, now_mono)
    finally:
        _lock.release()
    return snap


def values_for(target: str) -> dict[str, Any]:
    """The override values of `target` in force in this process now ({} for none)."""
    return snapshot().active.get(target, {})


def version() -> int:
    """A number that changes whenever the overrides in force in this process change (for caches)."""
    return snapshot().version


def forget() -> None:
    """Drop this process's snapshot: the next read goes to Redis (tests, and right after a change
    made by this process, so the admin sees its own change at once)."""
    global _snapshot
    with _lock:
        _snapshot = _Snapshot(version=_snapshot.version + 1)
    outage.clear()
