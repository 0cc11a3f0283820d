"""RESILIENCE_ADAPTIVE_* settings as one validated Options, and the process's limiter per group.

Read at call time and cached: the cache (options and the limiters built from them) is dropped when a
RESILIENCE_ADAPTIVE_* setting changes (override_settings in tests), so the hot path reads two globals.
"""

import threading

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..metrics import adaptive_window_closed
from .limiter import GroupLimiter, Options, Priority, ShedState

PREFIX = "RESILIENCE_ADAPTIVE_"
GROUPS = ("reads", "writes", "admin")  # health and /metrics are in none (registry.EXCLUDED)

_lock = threading.Lock()
_options: Options | None = None
_limiters: dict[str, GroupLimiter] = {}
_shed = ShedState()  # shared by the groups' limiters


def build_options() -> Options:
    """Options from the settings; raise ImproperlyConfigured naming the bad one (check resilience.E040)."""
    s = settings
    shares = s.RESILIENCE_ADAPTIVE_SHARES
    if not isinstance(shares, dict):
        raise ImproperlyConfigured("RESILIENCE_ADAPTIVE_SHARES must be a dict of class -> share of the limit")
    try:
        parsed_shares = {Priority.parse(name): float(value) for name, value in shares.items()}
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"RESILIENCE_ADAPTIVE_SHARES: {exc}") from exc
    options = Options(
        enabled=s.RESILIENCE_ADAPTIVE_ENABLED,
        shadow=s.RESILIENCE_ADAPTIVE_SHADOW,
        initial_limit=s.RESILIENCE_ADAPTIVE_INITIAL_LIMIT,
        floor=s.RESILIENCE_ADAPTIVE_MIN_LIMIT,
        ceiling=s.RESILIENCE_ADAPTIVE_MAX_LIMIT,
        window_seconds=s.RESILIENCE_ADAPTIVE_WINDOW_SECONDS,
        window_samples=s.RESILIENCE_ADAPTIVE_WINDOW_SAMPLES,
        min_rtt_seconds=s.RESILIENCE_ADAPTIVE_MIN_RTT_SECONDS,
        queue_size=s.RESILIENCE_ADAPTIVE_QUEUE_SIZE,
        queue_timeout=s.RESILIENCE_ADAPTIVE_QUEUE_TIMEOUT,
        shares=parsed_shares,
        retry_after=s.RESILIENCE_ADAPTIVE_RETRY_AFTER,
    )
    validate(options)
    return options


def validate(options: Options) -> None:
    if not 1 <= options.floor <= options.ceiling:
        raise ImproperlyConfigured(
            f"RESILIENCE_ADAPTIVE_MIN_LIMIT ({options.floor}) must be >= 1 and <= "
            f"RESILIENCE_ADAPTIVE_MAX_LIMIT ({options.ceiling})"
        )
    if options.window_samples < 1 or options.window_seconds < 0 or options.min_rtt_seconds <= 0:
        raise ImproperlyConfigured(
            "RESILIENCE_ADAPTIVE_WINDOW_SAMPLES must be >= 1, _WINDOW_SECONDS >= 0, _MIN_RTT_SECONDS > 0"
        )
    if options.queue_size < 0 or options.queue_timeout < 0 or options.retry_after < 1:
        raise ImproperlyConfigured(
            "RESILIENCE_ADAPTIVE_QUEUE_SIZE and _QUEUE_TIMEOUT must be >= 0, _RETRY_AFTER >= 1 (seconds)"
        )
    sheddable = options.shares.get(Priority.SHEDDABLE, 1.0)
    default = options.shares.get(Priority.DEFAULT, 1.0)
    if Priority.CRITICAL in options.shares or not 0 < sheddable <= default <= 1:
        raise ImproperlyConfigured(
            "RESILIENCE_ADAPTIVE_SHARES: give sheddable and default shares with 0 < sheddable <= default <= 1 "
            "(critical always has the whole limit)"
        )


def options() -> Options:
    global _options
    current = _options
    if current is None:
        with _lock:
            if _options is None:
                _options = build_options()
            current = _options
    return current


def limiter(group: str) -> GroupLimiter:
    """This process's limiter of `group` (one of GROUPS), built on first use."""
    found = _limiters.get(group)
    if found is None:
        settings_now = options()  # before taking the lock: options() takes it too
        with _lock:
            found = _limiters.get(group)
            if found is None:
                found = GroupLimiter(group, settings_now, on_window=adaptive_window_closed, shed=_shed)
                _limiters[group] = found
    return found


def limiters() -> dict[str, GroupLimiter]:
    """Every group's limiter in this process (built if need be), in GROUPS order."""
    return {group: limiter(group) for group in GROUPS}


def reset() -> None:
    """Forget the options and every limiter (their learnt limits and counts): settings changed."""
    global _options, _shed
    with _lock:
        _options = None
        _limiters.clear()
        _shed = ShedState()


@receiver(setting_changed)
def _setting_changed(*, setting, **kwargs):
    if setting.startswith(PREFIX):
        reset()
