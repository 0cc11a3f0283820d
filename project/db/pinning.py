"""Read-your-writes: when a context must read from primaries.

State is per execution context (contextvars), so threads and requests never share it:
- `forced`: the client asked for a strong read, or code is inside `use_primary()`;
- `pinned_until`: a monotonic wall-clock deadline set by the context's own last write, or carried in
  from a previous request (cookie or header), until which every read goes to the primary.
"""

import contextlib
import contextvars
import time

from django.conf import settings

_forced = contextvars.ContextVar("bulwark_force_primary", default=0)
_pinned_until = contextvars.ContextVar("bulwark_pinned_until", default=0.0)
_wrote = contextvars.ContextVar("bulwark_wrote", default=False)


def reset(*, pinned_until: float = 0.0, strong: bool = False) -> None:
    """Start a fresh context (a request or a Celery task)."""
    _pinned_until.set(pinned_until)
    _forced.set(1 if strong else 0)
    _wrote.set(False)


def note_write() -> None:
    """Record a write: reads from now until the window ends go to primaries."""
    _wrote.set(True)
    _pinned_until.set(time.time() + settings.READ_YOUR_WRITES_WINDOW)


def wrote() -> bool:
    return _wrote.get()


def pinned_until() -> float:
    return _pinned_until.get()


def strong() -> bool:
    """The context asked for a strongly consistent read (Consistency: strong / use_primary())."""
    return _forced.get() > 0


def must_use_primary() -> bool:
    return _forced.get() > 0 or _pinned_until.get() > time.time()


@contextlib.contextmanager
def use_primary():
    """Force every read inside the block to the primaries (usable as a decorator too)."""
    token = _forced.set(_forced.get() + 1)
    try:
        yield
    finally:
        _forced.reset(token)
