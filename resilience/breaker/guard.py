"""A shared breaker for a hot path: decided in memory, synchronised with the state Redis at intervals.

`CircuitBreaker.allow()` costs a Lua call per call. A dependency used on every request (the cache
Redis, a database) cannot pay that, so a Guard keeps the breaker's last known state in this process:

- `allows()` reads the shared state (one HMGET, `peek`) at most every RESILIENCE_BREAKER_SYNC_SECONDS
  (default 0.5 s) and otherwise decides from memory: CLOSED and FORCED_CLOSED admit, FORCED_OPEN and
  an OPEN breaker still in its open period refuse. Only when a probe is due (OPEN elapsed, HALF_OPEN)
  does it ask the shared breaker for a permit, which is then reported by this thread's next
  `success`/`failure`. So forcing a breaker from the admin reaches every process within one interval.
- `failure()` is recorded at once (one Lua call): failures are rare and are what opens a breaker.
  `success()` only counts in memory; the count is sent with the next sync, and only while the shared
  window holds bad outcomes (then successes decide whether the failure rate reaches the threshold;
  otherwise they change nothing). The window's order is therefore approximate; its counts are not.
- While the state Redis is down, the breaker's own fallback applies: this process's in-process
  breaker, same algorithm (breaker.py). Nothing here ever raises for the state Redis.
- `before_use`, when its owner sets it, runs before this process uses the dependency again after the
  breaker changed state (its epoch moved: opened, forced, closed by another process's probe) and
  before a probe: the cache sets it to delete the entries that writes could not update while the
  breaker refused (users/cache/store.py), so a recovered cache never answers with a row older than an
  acknowledged write. Until it succeeds the Guard refuses, and it is tried again at the next sync.

`RESILIENCE_DEPENDENCY_BREAKERS = False` turns every Guard into "always admit, record nothing" (the
benchmark's baseline).
"""

import logging
import math
import os
import threading
import time
from collections.abc import Callable

from django.conf import settings

from .breaker import CircuitBreaker, CircuitOpenError, Permit
from .options import State, options_for
from .storage import Peek, Storage

logger = logging.getLogger("resilience.breaker")

_ADMITTING = (State.CLOSED, State.FORCED_CLOSED)


class Guard:
    """The hot-path view of the breaker `name` in this process (get one with `guard(name)`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._breaker: CircuitBreaker | None = None
        self._storage: Storage | None = None
        self.state = State.CLOSED
        self._epoch = 0
        self._refuse_until = 0.0  # monotonic: an OPEN breaker's open period, or a refused probe's wait
        self._synced_at = -math.inf
        self._bad_in_window = False
        self._successes = 0
        self._local = threading.local()  # a probe permit, reported by the same thread's outcome
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.before_use: Callable[[], None] | None = None
        self._unprepared = False  # before_use failed: refuse until a sync runs it successfully

    @property
    def breaker(self) -> CircuitBreaker:
        if self._breaker is None:
            self._breaker = CircuitBreaker(self.name, options_for(self.name))
        return self._breaker

    # --- the hot path ---
    def allows(self) -> bool:
        """Whether a call may go to the dependency now. A True taken as a half-open probe must be
        followed by `success` or `failure` in the same thread."""
        if not settings.RESILIENCE_DEPENDENCY_BREAKERS:
            return True
        now = time.monotonic()
        if now - self._synced_at >= settings.RESILIENCE_BREAKER_SYNC_SECONDS:
            self.sync(now)
        if self._unprepared:
            return False
        state = self.state
        if state in _ADMITTING:
            return True
        if state == State.FORCED_OPEN or now < self._refuse_until:
            return False
        return self._probe(now)

    def admits(self) -> bool:
        """Like `allows`, but never takes a probe: for a dependency probed by something else (a replica,
        probed by the replica monitor), so that requests only use it once it is CLOSED again."""
        if not settings.RESILIENCE_DEPENDENCY_BREAKERS:
            return True
        now = time.monotonic()
        if now - self._synced_at >= settings.RESILIENCE_BREAKER_SYNC_SECONDS:
            self.sync(now)
        return self.state in _ADMITTING and not self._unprepared

    def success(self) -> None:
        """The call succeeded (the dependency answered)."""
        permit: Permit | None = getattr(self._local, "permit", None)
        if permit is not None:
            self._local.permit = None
            permit.success()
            self._synced_at = -math.inf  # learn at once whether the probes closed it
        elif self._bad_in_window:
            self._successes += 1  # not atomic across threads: a lost count is harmless

    def failure(self, exc: BaseException | str | None = None) -> None:
        """The call failed because of the dependency: recorded in the shared breaker now."""
        if not settings.RESILIENCE_DEPENDENCY_BREAKERS:
            return
        permit: Permit | None = getattr(self._local, "permit", None)
        if permit is not None:
            self._local.permit = None
            permit.failure(RuntimeError(exc) if isinstance(exc, str) else exc)
            self._synced_at = -math.inf
            return
        if self._storage is None:  # a failure before the first sync
            self.sync()
        if self.state != State.CLOSED or self._storage is None:
            return  # only a CLOSED breaker counts outcomes (FORCED_CLOSED admitted the call, counts none)
        error = exc if isinstance(exc, str) else "failure" if exc is None else f"{exc.__class__.__name__}: {exc}"
        recorded = self.breaker._record(self._storage, self._epoch, "", "f", error[:500] or "failure")
        self._bad_in_window = True
        if recorded is None or recorded.state != State.CLOSED:
            self._synced_at = -math.inf  # opened (or Redis went away): the next call re-reads the state

    # --- synchronisation ---
    def sync(self, now: float | None = None) -> None:
        """Read the shared state now (sending the successes counted since the last sync when they
        matter). Concurrent callers do not wait: one syncs, the others use the state already known."""
        now = time.monotonic() if now is None else now
        if self._pid != os.getpid():  # a lock held at fork time would never be released in the child
            self._lock, self._local, self._pid = threading.Lock(), threading.local(), os.getpid()
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._synced_at = now
            self._breaker = CircuitBreaker(self.name, options_for(self.name))  # options read at call time
            successes, self._successes = self._successes, 0
            epoch, flush = self._epoch, successes and self._bad_in_window and self.state == State.CLOSED

            def read(storage: Storage) -> Peek:
                if flush:
                    storage.record(
                        self.name,
                        self.breaker.options,
                        epoch=epoch,
                        permit_id="",
                        outcome="s",
                        error="",
                        count=successes,
                    )
                return storage.peek(self.name, self.breaker.options)

            peeked, self._storage = self.breaker._run(read)
            if self.before_use is not None and peeked.state in _ADMITTING:
                if self._unprepared or peeked.epoch != self._epoch or self.state not in _ADMITTING:
                    self._unprepared = not self._prepare()  # before the state below lets calls through
            self.state, self._epoch, self._bad_in_window = peeked.state, peeked.epoch, peeked.bad_in_window
            self._refuse_until = now + peeked.retry_after if peeked.state == State.OPEN else 0.0
        except Exception:  # a breaker must never fail the call it guards
            logger.exception("circuit %s: reading the shared state failed; keeping %s", self.name, self.state)
        finally:
            self._lock.release()

    def _probe(self, now: float) -> bool:
        try:
            permit = self.breaker.allow()
        except CircuitOpenError as exc:
            # Refused (the probes are taken): don't ask again before the hint, nor later than a sync.
            self.state = exc.state
            self._refuse_until = now + min(exc.retry_after, settings.RESILIENCE_BREAKER_SYNC_SECONDS)
            return False
        except Exception:
            logger.exception("circuit %s: asking for a probe failed; admitting the call", self.name)
            return True
        self.state = permit.state
        if permit.state in _ADMITTING:
            permit.release()  # closed meanwhile: no probe to report
        elif self.before_use is not None and not self._prepare():
            permit.failure(RuntimeError(f"{self.name}: preparing for use failed"))  # the probe failed
            self._refuse_until = now + settings.RESILIENCE_BREAKER_SYNC_SECONDS
            return False
        else:
            self._local.permit = permit
        return True

    def require_preparation(self) -> None:
        """Refuse calls in this process until `before_use` has run successfully (at the next sync): its
        owner has something to do first (the cache: invalidations it could record nowhere else)."""
        self._unprepared = True
        self._synced_at = -math.inf  # the next call syncs, and so runs it

    def _prepare(self) -> bool:
        """Run `before_use`; whether it succeeded."""
        try:
            self.before_use()
        except Exception as exc:
            logger.warning("circuit %s: not used until it is prepared again: %s", self.name, exc)
            return False
        return True

    def forget(self) -> None:
        """Drop what this process knows (tests): the next call reads the shared state."""
        self.state, self._epoch, self._storage, self._breaker = State.CLOSED, 0, None, None
        self._refuse_until, self._synced_at, self._bad_in_window, self._successes = 0.0, -math.inf, False, 0
        self._unprepared = False
        self._local = threading.local()


_guards: dict[str, Guard] = {}
_guards_lock = threading.Lock()


def guard(name: str) -> Guard:
    """The one Guard of breaker `name` in this process."""
    found = _guards.get(name)
    if found is None:
        with _guards_lock:
            found = _guards.setdefault(name, Guard(name))
    return found


def forget_guards() -> None:
    """Make every Guard of this process forget its cached state (tests)."""
    for g in list(_guards.values()):
        g.forget()
