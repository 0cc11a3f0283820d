"""The adaptive concurrency limit of one endpoint group in one process, shared by priority classes.

`GroupLimiter.acquire(priority)` admits a request while fewer than its class's share of the limit
are in flight (sheddable up to SHARES["sheddable"] of it, default up to SHARES["default"], critical the
whole limit), so under overload sheddable requests are refused first, then default ones, and critical
ones only when the limit is full. While a more important class is pressed (had to wait, or was
refused, in the last window), less important classes are shed outright in every group (`ShedState`). A
critical or default request over its share may wait in a short queue (bounded length and wait) for a
slot; a sheddable one is refused at once (it is the cheapest thing to drop, and a waiting thread is
a thread not serving). `release(rtt)` ends the request, feeds
its latency to the Gradient2 controller (gradient.py) once per window, and wakes the waiters.

Cost per request: one lock acquisition in `acquire`, one in `release`, a few comparisons and
additions; nothing leaves the process. Thread-safe: granian serves several threads per process.

Shadow mode (RESILIENCE_ADAPTIVE_SHADOW): a request that would have been refused is admitted and
counted as "shadow" instead; the limit is still learnt, so turning shadow off enforces what was seen.
"""

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from .gradient import Gradient2Limit

logger = logging.getLogger(__name__)


CALM_WINDOWS = 10  # windows without pressure before a shed class is admitted again (about 1 s)

# What `acquire` answers. SHADOWED: admitted, but it would have been refused outside shadow mode.
ADMITTED, SHADOWED, REFUSED = "admitted", "shadowed", "refused"


class Priority(IntEnum):
    """Lower value = more important. A request's class may be lowered (a larger value), never raised."""

    CRITICAL = 0
    DEFAULT = 1
    SHEDDABLE = 2

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: "str | Priority") -> "Priority":
        """Return the class named `value` ("critical", "default", "sheddable"); raise ValueError otherwise."""
        if isinstance(value, Priority):
            return value
        try:
            return cls[str(value).upper()]
        except KeyError:
            raise ValueError(f"{value!r} is not a priority class (critical, default, sheddable)") from None


@dataclass(frozen=True)
class Options:
    """The adaptive limit's settings (options.py builds them from RESILIENCE_ADAPTIVE_*)."""

    enabled: bool = True
    shadow: bool = False
    initial_limit: int = 20
    floor: int = 4
    ceiling: int = 200
    window_seconds: float = 0.1  # a window closes after this long...
    window_samples: int = 10  # ...and at least this many finished requests
    min_rtt_seconds: float = 30.0  # re-learn the lowest RTT this often (±10 % jitter)
    queue_size: int = 8  # requests that may wait for a slot, per group and process
    queue_timeout: float = 0.02  # seconds one may wait before it is refused
    shares: dict = field(default_factory=lambda: {Priority.SHEDDABLE: 0.5, Priority.DEFAULT: 0.9})
    retry_after: int = 1  # seconds, in the 503's Retry-After


@dataclass(frozen=True)
class Window:
    """What one closed window measured: handed to the metrics hook, outside the lock."""

    group: str
    limit: int
    min_rtt: float
    sample_rtt: float
    peak_in_flight: int
    refused: int
    shadowed: int


class ShedState:
    """Which classes are shed outright in this process, shared by its groups' limiters (the groups share
    its CPU: a critical `reads` request pressed sheds sheddable `writes` too). Stripe's
    worker-utilisation shedder: test traffic, then GET, then POST, then critical.

    The shares alone admit a sheddable request whenever in-flight dips below half the limit, even in a
    window where a critical one had to wait or was refused. So: a window where a critical request was
    pressed sheds one more class (up to sheddable and default); one where only a default request was
    pressed sheds at least sheddable; the level comes down one class after CALM_WINDOWS windows in a
    row (of any group) without pressure, so it does not flap.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.level = 0  # 0: none, only the shares apply; 1: sheddable; 2: sheddable and default
        self._calm_windows = 0

    def update(self, *, critical_pressed: bool, default_pressed: bool) -> int:
        """Fold one closed window's pressure in; return the level."""
        with self._lock:
            if critical_pressed:
                self.level = min(2, self.level + 1)
                self._calm_windows = 0
            elif default_pressed:
                self.level = max(1, self.level)
                self._calm_windows = 0
            elif self.level:
                self._calm_windows += 1
                if self._calm_windows >= CALM_WINDOWS:
                    self.level -= 1
                    self._calm_windows = 0
            return self.level


class GroupLimiter:
    """One endpoint group's limit in this process. `clock` is injectable so tests need no sleeping."""

    def __init__(
        self,
        group: str,
        options: Options,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_window: Callable[[Window], None] | None = None,
        shed: ShedState | None = None,
    ):
        self.group = group
        self.options = options
        self._clock = clock
        self._on_window = on_window
        self._cond = threading.Condition(threading.Lock())
        self._controller = Gradient2Limit(
            limit=float(min(options.ceiling, max(options.floor, options.initial_limit))),
            floor=options.floor,
            ceiling=options.ceiling,
        )
        self.in_flight = 0
        self._waiting = 0
        self._caps: dict[Priority, int] = {}
        self._shed = shed or ShedState()
        self.shed_level = self._shed.level  # the level this limiter's caps were last set with
        self._pressed = dict.fromkeys(Priority, False)  # a request of this class waited or was refused
        self._set_caps(self._controller.current)
        now = clock()
        self._window_start = now
        self._rtt_sum = 0.0
        self._rtt_count = 0
        self._peak = 0
        self._refused_in_window = 0
        self._shadowed_in_window = 0
        self._relearn_at = now + self._jittered(options.min_rtt_seconds)
        # Totals since start, per class: the overview page shows them next to the limit.
        self.refused = dict.fromkeys(Priority, 0)
        self.shadowed = dict.fromkeys(Priority, 0)

    # --- the two calls every request makes ---
    def acquire(self, priority: Priority) -> str:
        """Take a slot for a request of class `priority`: ADMITTED, SHADOWED (admitted in shadow mode,
        would have been refused) or REFUSED. ADMITTED and SHADOWED must be paired with one `release`."""
        with self._cond:
            cap = self._caps[priority]
            if self.in_flight < cap:
                self._admit()
                return ADMITTED
            if self.options.shadow:
                self.shadowed[priority] += 1
                self._shadowed_in_window += 1
                self._admit()
                return SHADOWED
            # A class being shed (cap 0) is neither "pressed" (it would keep itself shed for ever) nor
            # queued (no slot can come for it within the wait).
            if cap:
                self._pressed[priority] = True
            if cap and priority != Priority.SHEDDABLE and self._waiting < self.options.queue_size:
                if self._wait_for_slot(priority):
                    self._admit()
                    return ADMITTED
            self.refused[priority] += 1
            self._refused_in_window += 1
            return REFUSED

    def release(self, rtt: float) -> None:
        """End an admitted request that took `rtt` seconds (from admission to its response)."""
        closed = None
        with self._cond:
            self.in_flight -= 1
            self._rtt_sum += rtt
            self._rtt_count += 1
            now = self._clock()
            options = self.options
            if self._rtt_count >= options.window_samples and now - self._window_start >= options.window_seconds:
                closed = self._close_window(now)
            if self._waiting:
                # Waiters of different classes have different caps: wake all, each re-checks its own.
                self._cond.notify_all()
        if closed is not None and self._on_window is not None:
            self._on_window(closed)

    # --- reading ---
    @property
    def limit(self) -> int:
        return self._controller.current

    @property
    def min_rtt(self) -> float:
        return self._controller.min_rtt

    def cap(self, priority: Priority) -> int:
        """How many requests may be in flight when one of class `priority` arrives and is admitted."""
        return self._caps[priority]

    def snapshot(self) -> dict:
        with self._cond:
            return {
                "group": self.group,
                "limit": self._controller.current,
                "min_rtt_ms": round(self._controller.min_rtt * 1000, 2),
                "in_flight": self.in_flight,
                "waiting": self._waiting,
                "caps": {str(p): c for p, c in self._caps.items()},
                "shed_level": self.shed_level,
                "refused": {str(p): n for p, n in self.refused.items()},
                "shadowed": {str(p): n for p, n in self.shadowed.items()},
            }

    # --- inside the lock ---
    def _admit(self) -> None:
        self.in_flight += 1
        if self.in_flight > self._peak:
            self._peak = self.in_flight

    def _wait_for_slot(self, priority: Priority) -> bool:
        deadline = self._clock() + self.options.queue_timeout
        self._waiting += 1
        try:
            while self.in_flight >= self._caps[priority]:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True
        finally:
            self._waiting -= 1

    def _close_window(self, now: float) -> Window:
        sample = self._rtt_sum / self._rtt_count
        if now >= self._relearn_at and self._peak * 2 < self._controller.current:
            # Only from a window that did not use half its limit: an overloaded one would raise the
            # baseline the limit is anchored to (gradient.py).
            self._controller.relearn_min_rtt(sample)
            self._relearn_at = now + self._jittered(self.options.min_rtt_seconds)
        limit = self._controller.update(sample, self._peak)
        self._update_shed_level()
        self._set_caps(limit)
        window = Window(
            self.group,
            limit,
            self._controller.min_rtt,
            sample,
            self._peak,
            self._refused_in_window,
            self._shadowed_in_window,
        )
        self._window_start = now
        self._rtt_sum, self._rtt_count = 0.0, 0
        self._peak = self.in_flight
        self._refused_in_window = 0
        self._shadowed_in_window = 0
        return window

    def _update_shed_level(self) -> None:
        pressed = self._pressed
        self.shed_level = self._shed.update(
            critical_pressed=pressed[Priority.CRITICAL], default_pressed=pressed[Priority.DEFAULT]
        )
        self._pressed = dict.fromkeys(Priority, False)

    def _set_caps(self, limit: int) -> None:
        # Every class keeps at least one slot, so a floor of 1 still serves something of each; a shed
        # class has none.
        shed = (Priority.SHEDDABLE, Priority.DEFAULT)[: self.shed_level]
        self._caps = {p: 0 if p in shed else max(1, int(limit * self.options.shares.get(p, 1.0))) for p in Priority}

    @staticmethod
    def _jittered(seconds: float) -> float:
        # Processes started together would otherwise re-learn together, all admitting a burst at once.
        return seconds * (0.9 + 0.2 * random.random())  # noqa: S311  (not security)
