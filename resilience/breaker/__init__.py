"""Circuit breakers whose state lives in the state Redis, shared by every process.

    breaker = get_breaker("webhook:example.com")
    try:
        with breaker.call():
            deliver(...)
    except CircuitOpenError as exc:
        retry_later(countdown=exc.retry_after)

A dependency used on every request is guarded by a `guard(name)` instead (guard.py): the same shared
breaker, read from the state Redis at most every RESILIENCE_BREAKER_SYNC_SECONDS. Apps declare their
dependencies (dependencies.py) so their breakers are listed before first use.

While the state Redis is down, each process falls back to an in-process breaker with the same
algorithm and `breaker.degraded` is true; calls are not failed because Redis is down.
"""

from .breaker import CircuitBreaker, CircuitOpenError, Permit, add_listener, listeners, remove_listener
from .dependencies import declare, declare_provider, describe
from .guard import Guard, forget_guards, guard
from .options import BreakerOptions, State, options_for
from .registry import all_breakers, get_breaker
from .storage import MemoryStorage, Snapshot, Storage, Transition

__all__ = [
    "BreakerOptions",
    "CircuitBreaker",
    "CircuitOpenError",
    "Guard",
    "MemoryStorage",
    "Permit",
    "Snapshot",
    "State",
    "Storage",
    "Transition",
    "add_listener",
    "all_breakers",
    "declare",
    "declare_provider",
    "describe",
    "forget_guards",
    "get_breaker",
    "guard",
    "listeners",
    "options_for",
    "remove_listener",
]
