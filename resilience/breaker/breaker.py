"""The circuit breaker: permits, the call guard, forced states, listeners, and the Redis fallback.

Contract when the state Redis is down: the breaker switches to this process's in-process breaker
(same algorithm, MemoryStorage), logs a warning once, and reports `degraded`; calls are never failed
just because Redis is down. Outcomes of permits handed out by Redis before the outage are dropped.
When Redis answers again, the shared state is used again (the local state is not merged back).
"""

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, overload

from .options import BreakerOptions, State
from .redis_storage import UNAVAILABLE, RedisStorage, outage
from .storage import MemoryStorage, Outcome, Recorded, Snapshot, Storage, Transition

logger = logging.getLogger("resilience.breaker")

T = TypeVar("T")
Listener = Callable[[Transition], None]

listeners: list[Listener] = []
"""Called with every Transition this process causes (from any breaker); exceptions are logged."""

redis_storage = RedisStorage()
local_storage = MemoryStorage()


def add_listener(listener: Listener) -> None:
    if listener not in listeners:
        listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in listeners:
        listeners.remove(listener)


def _emit(transition: Transition | None) -> None:
    if transition is None:
        return
    level = logging.WARNING if transition.to_state in (State.OPEN, State.FORCED_OPEN) else logging.INFO
    logger.log(
        level,
        "circuit %s: %s -> %s (%s)%s",
        transition.name,
        transition.from_state,
        transition.to_state,
        transition.reason,
        " [local]" if transition.degraded else "",
    )
    for listener in list(listeners):
        try:
            listener(transition)
        except Exception:  # a metrics hook must never break the call it observes
            logger.exception("circuit breaker listener %r failed", listener)


class CircuitOpenError(Exception):
    """Raised instead of making a call: the breaker is open. `retry_after` is seconds (a hint)."""

    def __init__(self, name: str, state: State, retry_after: float) -> None:
        super().__init__(f"circuit {name} is {state}; retry after {retry_after:.1f}s")
        self.name, self.state, self.retry_after = name, state, retry_after


class Permit:
    """Leave to make one call. Report it once with `success`, `failure` or `release`; later reports are
    ignored. A half-open permit that is never reported is released after `permit_timeout_seconds`."""

    __slots__ = ("_breaker", "_storage", "_epoch", "_id", "_done", "state")

    def __init__(self, breaker: "CircuitBreaker", storage: Storage, epoch: int, permit_id: str, state: State) -> None:
        self._breaker, self._storage, self._epoch, self._id = breaker, storage, epoch, permit_id
        self._done = False
        self.state = state

    def success(self, duration: float | None = None) -> None:
        """Report a successful call; one that took at least `slow_call_seconds` counts as slow (bad)."""
        slow = self._breaker.options.slow_call_seconds
        self._report("l" if slow is not None and duration is not None and duration >= slow else "s", "")

    def failure(self, exc: BaseException | None = None, duration: float | None = None) -> None:
        """Report a failed call; an excluded exception (or a BaseException that is not an Exception,
        such as KeyboardInterrupt) releases the permit without counting."""
        if exc is not None and (
            not isinstance(exc, Exception) or isinstance(exc, self._breaker.options.excluded_exceptions)
        ):
            self._report("i", "")
            return
        error = "" if exc is None else f"{exc.__class__.__name__}: {exc}"[:500]
        self._report("f", error or "failure")

    def release(self) -> None:
        """Give the permit back without an outcome (the call was not made)."""
        self._report("i", "")

    def _report(self, outcome: Outcome, error: str) -> None:
        if self._done:
            return
        self._done = True
        self._breaker._record(self._storage, self._epoch, self._id, outcome, error)


class CircuitBreaker:
    """One named breaker. Cheap to create: its state lives in the storage, not in the object.

    With the default storage the state is shared through the state Redis and falls back to this
    process's memory while Redis is down. Passing `storage` pins one storage (no fallback).
    """

    def __init__(self, name: str, options: BreakerOptions | None = None, *, storage: Storage | None = None) -> None:
        self.name = name
        self.options = options or BreakerOptions()
        self._storage: Storage = storage or redis_storage
        self._fallback: Storage | None = local_storage if storage is None else None

    @property
    def degraded(self) -> bool:
        """True while this breaker's state is process-local: its fallback is in use because the state
        Redis is down (or it was built pinned to a MemoryStorage)."""
        return self._storage.local or (self._fallback is not None and outage.down)

    def _run(self, op: Callable[[Storage], T]) -> tuple[T, Storage]:
        if self._fallback is not None and not outage.active():
            try:
                result = op(self._storage)
            except UNAVAILABLE as exc:
                outage.failed(exc)
            else:
                outage.recovered()
                return result, self._storage
        if self._fallback is None:
            return op(self._storage), self._storage
        return op(self._fallback), self._fallback

    def allow(self) -> Permit:
        """Return a Permit for one call, or raise CircuitOpenError when the breaker rejects it."""
        permit_id = uuid.uuid4().hex
        acquired, storage = self._run(lambda s: s.acquire(self.name, self.options, permit_id))
        _emit(acquired.transition)
        if not acquired.admitted:
            raise CircuitOpenError(self.name, acquired.state, acquired.retry_after)
        return Permit(self, storage, acquired.epoch, permit_id, acquired.state)

    def _record(
        self, storage: Storage, epoch: int, permit_id: str, outcome: Outcome, error: str, count: int = 1
    ) -> Recorded | None:
        """Record an outcome in `storage`; return what it recorded, None if the state Redis is down."""
        try:
            recorded = storage.record(
                self.name, self.options, epoch=epoch, permit_id=permit_id, outcome=outcome, error=error, count=count
            )
        except UNAVAILABLE as exc:
            outage.failed(exc)  # the outcome is lost; an unreported probe permit expires by itself
            return None
        _emit(recorded.transition)
        return recorded

    @contextmanager
    def _guard(self) -> Iterator[Permit]:
        permit = self.allow()
        started = time.perf_counter()
        try:
            yield permit
        except BaseException as exc:
            permit.failure(exc, time.perf_counter() - started)
            raise
        else:
            permit.success(time.perf_counter() - started)

    @overload
    def call(self) -> Any: ...

    @overload
    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...

    def call(self, fn: Callable[..., T] | None = None, /, *args: Any, **kwargs: Any) -> Any:
        """Guard a call: `with breaker.call(): ...` or `breaker.call(fn, *args, **kwargs)`.

        Raise CircuitOpenError without calling when the breaker rejects; otherwise run the call,
        report its outcome and duration, and let its exception (if any) propagate unchanged.
        """
        if fn is None:
            return self._guard()
        with self._guard():
            return fn(*args, **kwargs)

    def _force(self, target: State, reason: str) -> Transition:
        transition, _ = self._run(lambda s: s.force(self.name, self.options, target, reason))
        _emit(transition)
        return transition

    def force_open(self, reason: str = "forced open") -> Transition:
        """Reject every call until force_close or reset. Acts on the local breaker only while degraded."""
        return self._force(State.FORCED_OPEN, reason)

    def force_close(self, reason: str = "forced closed") -> Transition:
        """Admit every call, counting nothing, until force_open or reset."""
        return self._force(State.FORCED_CLOSED, reason)

    def reset(self, reason: str = "reset") -> Transition:
        """Return to CLOSED with an empty window, no permits and no last error."""
        return self._force(State.CLOSED, reason)

    def snapshot(self) -> Snapshot:
        """Return the breaker's state, counts, last error and transition history (local while degraded)."""
        snap, _ = self._run(lambda s: s.snapshot(self.name, self.options))
        return snap

    @property
    def state(self) -> State:
        """The stored state (an OPEN breaker whose open period elapsed turns HALF_OPEN on its next call)."""
        return self.snapshot().state
