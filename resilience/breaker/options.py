"""Breaker states and options, and where a breaker's options come from.

`RESILIENCE_BREAKERS` maps a name or a glob pattern to options, read at call time:

    RESILIENCE_BREAKERS = {
        "*": {"open_seconds": 30},                      # every breaker
        "webhook:*": {"failure_rate_threshold": 25},    # dynamic breakers "webhook:<host>"
        "payments": {"excluded_exceptions": ["payments.errors.CardDeclined"]},
    }

A name's options are the defaults below, overlaid by the options its declaration gives (an app's
dependency, dependencies.py), then by every matching pattern from the shortest to the longest, then by
the exact entry. Unknown names work: they get the defaults. A runtime override from the admin
(resilience/overrides.py, target "breaker:<name>") lays its thresholds over all of that until it expires.

The window is count-based: the outcomes of the last `window_size` calls made while CLOSED.
"""

import enum
import fnmatch
import logging
from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .. import overrides
from .dependencies import declared_options

logger = logging.getLogger("resilience.breaker")

OVERRIDE_KIND = "breaker"
# The thresholds an operator may change at runtime (not the exception list or the history length).
OVERRIDABLE = (
    "failure_rate_threshold",
    "minimum_calls",
    "window_size",
    "consecutive_failures",
    "slow_call_seconds",
    "open_seconds",
    "half_open_max_calls",
    "success_threshold",
)


class State(enum.StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"
    FORCED_OPEN = "FORCED_OPEN"
    FORCED_CLOSED = "FORCED_CLOSED"


@dataclass(frozen=True)
class BreakerOptions:
    """How one breaker decides. Durations are seconds (floats allowed).

    failure_rate_threshold  percent of bad calls (failures and slow calls) in the window that opens
    minimum_calls           calls the window must hold before the failure rate is judged
    window_size             the window: outcomes of the last N calls made while CLOSED
    consecutive_failures    bad calls in a row that open regardless of the rate (0 disables)
    slow_call_seconds       a successful call at least this long counts as bad (None disables)
    open_seconds            how long OPEN rejects before letting probes through (HALF_OPEN)
    half_open_max_calls     concurrent probes admitted while HALF_OPEN (K)
    success_threshold       successful probes that close the breaker (S); one bad probe reopens it
    permit_timeout_seconds  a probe permit not reported within this is released
    excluded_exceptions     exception classes that count neither as success nor as failure
    transitions_kept        length of the transition history
    """

    failure_rate_threshold: float = 50.0
    minimum_calls: int = 10
    window_size: int = 20
    consecutive_failures: int = 5
    slow_call_seconds: float | None = None
    open_seconds: float = 10.0
    half_open_max_calls: int = 3
    success_threshold: int = 2
    permit_timeout_seconds: float = 30.0
    excluded_exceptions: tuple[type[BaseException], ...] = ()
    transitions_kept: int = 100

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.failure_rate_threshold <= 100:
            problems.append("failure_rate_threshold must be in (0, 100]")
        if self.window_size < 1 or not 1 <= self.minimum_calls <= self.window_size:
            problems.append("minimum_calls must be between 1 and window_size")
        if self.consecutive_failures < 0:
            problems.append("consecutive_failures must be >= 0 (0 disables)")
        if self.open_seconds <= 0 or self.permit_timeout_seconds <= 0:
            problems.append("open_seconds and permit_timeout_seconds must be > 0")
        if self.half_open_max_calls < 1 or not 1 <= self.success_threshold <= self.half_open_max_calls:
            problems.append("success_threshold must be between 1 and half_open_max_calls")
        if self.transitions_kept < 1:
            problems.append("transitions_kept must be >= 1")
        if problems:
            raise ImproperlyConfigured("; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for an admin page."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["excluded_exceptions"] = [f"{e.__module__}.{e.__qualname__}" for e in self.excluded_exceptions]
        return values


_FIELDS = {f.name for f in fields(BreakerOptions)}


def _build(name: str, overrides: dict[str, Any]) -> BreakerOptions:
    unknown = set(overrides) - _FIELDS
    if unknown:
        raise ImproperlyConfigured(f"breaker {name!r}: unknown options {sorted(unknown)}")
    values = dict(overrides)
    excluded = values.get("excluded_exceptions", ())
    values["excluded_exceptions"] = tuple(import_string(e) if isinstance(e, str) else e for e in excluded)
    try:
        return BreakerOptions(**values)
    except (ImproperlyConfigured, TypeError) as exc:
        raise ImproperlyConfigured(f"breaker {name!r}: {exc}") from exc


def configured_breakers() -> dict[str, dict[str, Any]]:
    """Return `RESILIENCE_BREAKERS` (default empty); raise ImproperlyConfigured if it is not a dict."""
    configured = settings.RESILIENCE_BREAKERS or {}
    if not isinstance(configured, dict) or not all(isinstance(v, dict) for v in configured.values()):
        raise ImproperlyConfigured("RESILIENCE_BREAKERS must be a dict of name or pattern -> dict of options")
    return configured


def configured_options(name: str) -> dict[str, Any]:
    """The options of the breaker `name` from its declaration and the settings, before any override."""
    configured = configured_breakers()
    patterns = sorted((p for p in configured if p != name and fnmatch.fnmatchcase(name, p)), key=len)
    merged: dict[str, Any] = dict(declared_options(name))
    for key in [*patterns, name]:
        merged.update(configured.get(key, {}))
    return merged


def with_override(name: str, values: dict[str, Any]) -> BreakerOptions:
    """The options of `name` with the runtime override `values` laid over them; raise
    ImproperlyConfigured (a message for the operator) when they are not a valid change."""
    unknown = sorted(set(values) - set(OVERRIDABLE))
    if unknown:
        raise ImproperlyConfigured(f"{', '.join(unknown)} cannot be overridden at runtime")
    return _build(name, {**configured_options(name), **values})


def options_for(name: str) -> BreakerOptions:
    """Return the options of the breaker `name`, with the runtime override in force in this process
    (no Redis call); raise ImproperlyConfigured for invalid settings. An override that no longer fits
    the settings is ignored with a warning."""
    values = overrides.values_for(overrides.target(OVERRIDE_KIND, name))
    if values:
        try:
            return with_override(name, values)
        except ImproperlyConfigured as exc:
            logger.warning("ignoring the runtime override of breaker %s: %s", name, exc)
    return _build(name, configured_options(name))
