"""The storage interface of a breaker, and its in-process implementation.

Both storages run the same algorithm (described in acquire.lua, record.lua and force.lua); the Redis
one is shared by every process, the in-process one by the threads of one process. The in-process
storage holds its lock only for the bookkeeping, never around the protected call (pybreaker #55).
"""

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .options import BreakerOptions, State

Outcome = Literal["s", "f", "l", "i"]
"""success, failure, slow success, ignored (excluded exception or released permit)"""


@dataclass(frozen=True)
class Transition:
    """One change of state: `at` is epoch seconds; `degraded` if it happened in a process-local breaker."""

    name: str
    from_state: State
    to_state: State
    reason: str
    at: float
    degraded: bool = False


@dataclass(frozen=True)
class Acquired:
    admitted: bool
    state: State
    epoch: int
    retry_after: float
    transition: Transition | None = None


@dataclass(frozen=True)
class Recorded:
    state: State
    transition: Transition | None = None


@dataclass(frozen=True)
class Peek:
    """What a hot path needs to decide locally: the state, its epoch, seconds until an OPEN breaker
    lets probes through (0 otherwise), and whether the window holds bad outcomes (successes only
    matter then, so a caller may skip reporting them while it holds none)."""

    state: State
    epoch: int
    retry_after: float
    bad_in_window: bool


@dataclass(frozen=True)
class Snapshot:
    """Everything an admin page shows about one breaker. Times are epoch seconds or None."""

    name: str
    state: State
    degraded: bool
    epoch: int
    changed_at: float | None
    opened_at: float | None
    next_probe_at: float | None
    last_error: str | None
    last_error_at: float | None
    window_calls: int
    window_failures: int
    window_slow: int
    failure_rate: float | None
    consecutive_failures: int
    half_open_in_flight: int
    half_open_successes: int
    transitions: list[dict]
    options: dict


class Storage(Protocol):
    """Where a breaker's state lives. Every method is atomic with respect to every other caller that
    shares the storage. RedisStorage raises redis' ConnectionError/TimeoutError when Redis is down."""

    local: bool

    def acquire(self, name: str, options: BreakerOptions, permit_id: str) -> Acquired: ...

    def record(
        self,
        name: str,
        options: BreakerOptions,
        *,
        epoch: int,
        permit_id: str,
        outcome: Outcome,
        error: str,
        count: int = 1,
    ) -> Recorded: ...

    def peek(self, name: str, options: BreakerOptions) -> Peek: ...

    def force(self, name: str, options: BreakerOptions, target: State, reason: str) -> Transition: ...

    def snapshot(self, name: str, options: BreakerOptions) -> Snapshot: ...

    def names(self) -> set[str]: ...


def _seconds(ms: object) -> float | None:
    return None if ms in (None, "") else int(float(str(ms))) / 1000


def build_snapshot(
    name: str,
    options: BreakerOptions,
    fields: dict[str, str],
    transitions: list[str],
    in_flight: int,
    *,
    degraded: bool,
) -> Snapshot:
    """Turn the stored fields (the Redis hash layout, strings) into a Snapshot."""
    window = fields.get("window", "")
    bad = sum(1 for outcome in window if outcome in "fl")
    state = State(fields.get("state", State.CLOSED))
    return Snapshot(
        name=name,
        state=state,
        degraded=degraded,
        epoch=int(fields.get("epoch", 0)),
        changed_at=_seconds(fields.get("changed_at")),
        opened_at=_seconds(fields.get("opened_at")),
        next_probe_at=_seconds(fields.get("next_probe_at")) if state == State.OPEN else None,
        last_error=fields.get("last_error"),
        last_error_at=_seconds(fields.get("last_error_at")),
        window_calls=len(window),
        window_failures=window.count("f"),
        window_slow=window.count("l"),
        failure_rate=round(bad * 100 / len(window), 1) if window else None,
        consecutive_failures=int(fields.get("consecutive", 0)),
        half_open_in_flight=in_flight if state == State.HALF_OPEN else 0,
        half_open_successes=int(fields.get("successes", 0)) if state == State.HALF_OPEN else 0,
        transitions=[json.loads(entry) for entry in transitions],
        options=options.as_dict(),
    )


@dataclass
class _Breaker:
    state: State
    created_at: int
    changed_at: int
    epoch: int = 0
    window: str = ""
    consecutive: int = 0
    successes: int = 0
    opened_at: int | None = None
    next_probe_at: int | None = None
    last_error: str | None = None
    last_error_at: int | None = None
    permits: dict[str, int] = field(default_factory=dict)
    transitions: deque[str] = field(default_factory=deque)


class MemoryStorage:
    """In-process storage: the same algorithm as the Lua scripts, for one process. Never raises for
    availability: it is the fallback when the state Redis is down."""

    local = True

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[str, _Breaker] = {}

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _get(self, name: str, now: int) -> _Breaker:
        if name not in self._breakers:
            self._breakers[name] = _Breaker(state=State.CLOSED, created_at=now, changed_at=now)
        return self._breakers[name]

    def _transition(
        self, name: str, b: _Breaker, to: State, reason: str, now: int, options: BreakerOptions, *, reset: bool = False
    ) -> Transition:
        from_state = b.state
        b.state, b.epoch, b.changed_at, b.successes = to, b.epoch + 1, now, 0
        b.permits.clear()
        if to == State.OPEN:
            b.opened_at, b.next_probe_at = now, now + int(options.open_seconds * 1000)
        elif to != State.HALF_OPEN:
            b.window, b.consecutive = "", 0
        if reset:
            b.last_error = b.last_error_at = b.opened_at = b.next_probe_at = None
        entry = {"at": now, "from": str(from_state), "to": str(to), "reason": reason}
        b.transitions.appendleft(json.dumps(entry))
        while len(b.transitions) > options.transitions_kept:
            b.transitions.pop()
        return Transition(name, from_state, to, reason, now / 1000, degraded=True)

    def acquire(self, name: str, options: BreakerOptions, permit_id: str) -> Acquired:
        with self._lock:
            now = self._now()
            b = self._get(name, now)
            if b.state in (State.CLOSED, State.FORCED_CLOSED):
                return Acquired(True, b.state, b.epoch, 0.0)
            if b.state == State.FORCED_OPEN:
                return Acquired(False, b.state, b.epoch, options.open_seconds)
            transition = None
            if b.state == State.OPEN:
                if now < (b.next_probe_at or 0):
                    return Acquired(False, b.state, b.epoch, ((b.next_probe_at or 0) - now) / 1000)
                transition = self._transition(name, b, State.HALF_OPEN, "open period elapsed", now, options)
            b.permits = {pid: expiry for pid, expiry in b.permits.items() if expiry > now}
            if len(b.permits) < options.half_open_max_calls:
                b.permits[permit_id] = now + int(options.permit_timeout_seconds * 1000)
                return Acquired(True, b.state, b.epoch, 0.0, transition)
            retry = min(options.open_seconds * 1000, max(1, min(b.permits.values()) - now))
            return Acquired(False, b.state, b.epoch, retry / 1000, transition)

    def record(
        self,
        name: str,
        options: BreakerOptions,
        *,
        epoch: int,
        permit_id: str,
        outcome: Outcome,
        error: str,
        count: int = 1,
    ) -> Recorded:
        with self._lock:
            now = self._now()
            b = self._breakers.get(name)
            if b is None:
                if epoch != 0:  # as record.lua: only a first-epoch outcome creates the breaker
                    return Recorded(State.CLOSED)
                b = self._get(name, now)
            if error:
                b.last_error, b.last_error_at = error, now
            if epoch != b.epoch:
                return Recorded(b.state)
            if b.state == State.CLOSED and outcome != "i":
                count = min(max(count, 1), options.window_size)
                b.window = (b.window + outcome * count)[-options.window_size :]
                b.consecutive = 0 if outcome == "s" else b.consecutive + count
                if options.consecutive_failures and b.consecutive >= options.consecutive_failures:
                    reason = f"{b.consecutive} consecutive failures"
                    return Recorded(State.OPEN, self._transition(name, b, State.OPEN, reason, now, options))
                calls, bad = len(b.window), sum(1 for o in b.window if o in "fl")
                if calls >= options.minimum_calls and bad * 100 >= options.failure_rate_threshold * calls:
                    reason = f"failure rate {bad * 100 // calls}% of last {calls} calls"
                    return Recorded(State.OPEN, self._transition(name, b, State.OPEN, reason, now, options))
            elif b.state == State.HALF_OPEN and b.permits.pop(permit_id, None) is not None and outcome != "i":
                if outcome == "s":
                    b.successes += 1
                    if b.successes >= options.success_threshold:
                        reason = f"{b.successes} successful probes"
                        return Recorded(State.CLOSED, self._transition(name, b, State.CLOSED, reason, now, options))
                else:
                    reason = "probe failed" if outcome == "f" else "probe was slow"
                    return Recorded(State.OPEN, self._transition(name, b, State.OPEN, reason, now, options))
            return Recorded(b.state)

    def peek(self, name: str, options: BreakerOptions) -> Peek:
        with self._lock:
            now = self._now()
            b = self._get(name, now)
            due = (b.next_probe_at or 0) - now if b.state == State.OPEN else 0
            return Peek(b.state, b.epoch, max(due, 0) / 1000, b.consecutive > 0 or any(o in "fl" for o in b.window))

    def force(self, name: str, options: BreakerOptions, target: State, reason: str) -> Transition:
        with self._lock:
            now = self._now()
            b = self._get(name, now)
            b.window, b.consecutive = "", 0
            return self._transition(name, b, target, reason, now, options, reset=target == State.CLOSED)

    def snapshot(self, name: str, options: BreakerOptions) -> Snapshot:
        with self._lock:
            now = self._now()
            b = self._get(name, now)
            fields = {
                key: str(value)
                for key, value in vars(b).items()
                if value is not None and key not in ("permits", "transitions")
            }
            in_flight = sum(1 for expiry in b.permits.values() if expiry > now)
            transitions = list(b.transitions)
        return build_snapshot(name, options, fields, transitions, in_flight, degraded=True)

    def names(self) -> set[str]:
        with self._lock:
            return set(self._breakers)

    def clear(self) -> None:
        """Forget every local breaker (tests)."""
        with self._lock:
            self._breakers.clear()
