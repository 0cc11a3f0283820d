"""Read-your-writes: which replicas a context may read from, after its own writes.

State is per execution context (contextvars), so threads and requests never share it:
- `forced`: the client asked for a strong read, or code is inside `use_primary()`;
- `lsns`: per database group written, the primary's WAL position after the write (LSN) and whether it
  was committed with `synchronous_commit = remote_apply` (then the group's synchronous standbys have
  applied it already). A read of that group may use a replica that has replayed at least that LSN, as
  the lag probe last saw it (project/db/replicas.py; no query per request), otherwise the primary.
  While a write's LSN is not known yet (the request is still running) only a synchronous standby
  that applied it, or the primary, will do;
- `pinned_until`: the upper bound of those requirements (READ_YOUR_WRITES_WINDOW after the last write).
  After it, every usable replica is within MAX_REPLICA_LAG, far less than the window. A client that
  sends only the deadline (no LSNs, the previous protocol) reads every group from primaries until it.
"""

import contextlib
import contextvars
import math
import time

from django.conf import settings

UNKNOWN = math.inf  # the LSN of a write whose commit position has not been read yet

_forced = contextvars.ContextVar("bulwark_force_primary", default=0)
_pinned_until = contextvars.ContextVar("bulwark_pinned_until", default=0.0)
_wrote = contextvars.ContextVar("bulwark_wrote", default=False)
_lsns = contextvars.ContextVar("bulwark_lsns", default=None)  # {group: (lsn, synced)}
_legacy = contextvars.ContextVar("bulwark_pin_all", default=False)


def reset(*, pinned_until: float = 0.0, strong: bool = False, lsns: dict | None = None) -> None:
    """Start a fresh context (a request or a Celery task), with what the client carried in."""
    if lsns and not pinned_until:
        # An LSN alone is enough: it constrains only replicas that have not replayed it yet, so an
        # old one echoed late costs nothing.
        pinned_until = time.time() + settings.READ_YOUR_WRITES_WINDOW
    _pinned_until.set(pinned_until)
    _forced.set(1 if strong else 0)
    _wrote.set(False)
    _lsns.set(dict(lsns or {}))
    # A deadline without LSNs comes from a client of the time-window protocol: pin every group.
    _legacy.set(pinned_until > time.time() and not lsns)


def note_write(group: str | None = None, *, synced: bool = False) -> None:
    """Record a write on `group` (its LSN is read later, by `record_lsn`)."""
    _wrote.set(True)
    _pinned_until.set(time.time() + settings.READ_YOUR_WRITES_WINDOW)
    if group is None:
        _legacy.set(True)
        return
    lsns = dict(_lsns.get() or {})
    previous = lsns.get(group)
    # Several writes: the position is read after the last one, and the synchronous standby is known to
    # have them only if every one was committed with remote_apply.
    lsns[group] = (UNKNOWN, synced if previous is None else (synced and previous[1]))
    _lsns.set(lsns)


def record_lsn(group: str, lsn: int) -> None:
    lsns = dict(_lsns.get() or {})
    old, synced = lsns.get(group, (0, False))
    lsns[group] = (lsn if old == UNKNOWN else max(old, lsn), synced)
    _lsns.set(lsns)


def pending_groups() -> list[str]:
    """Groups written in this context whose commit LSN is not known yet."""
    return [g for g, (lsn, _) in (_lsns.get() or {}).items() if lsn == UNKNOWN]


def lsns() -> dict:
    return dict(_lsns.get() or {})


def wrote() -> bool:
    return _wrote.get()


def pinned_until() -> float:
    return _pinned_until.get()


def strong() -> bool:
    """The context asked for a strongly consistent read (Consistency: strong / use_primary())."""
    return _forced.get() > 0


def requirement(group: str):
    """What a read of `group` needs now: None (any usable replica), "primary", or (lsn, synced)."""
    if _forced.get() > 0:
        return "primary"
    if _pinned_until.get() <= time.time():
        return None
    if _legacy.get():
        return "primary"
    return (_lsns.get() or {}).get(group)


def must_use_primary() -> bool:
    """True when every read must go to primaries (a strong read, or a time-window pin)."""
    return _forced.get() > 0 or (_legacy.get() and _pinned_until.get() > time.time())


@contextlib.contextmanager
def use_primary():
    """Force every read inside the block to the primaries (usable as a decorator too)."""
    token = _forced.set(_forced.get() + 1)
    try:
        yield
    finally:
        _forced.reset(token)
