"""Fixed-window policies are enforced by django-ratelimit (its window, its counters, on the cache
RATELIMIT_USE_CACHE = "state"); this module only adapts its usage to our Decision, so one registry of
policies and one `check()` cover both django-ratelimit and our Lua algorithms.
"""

from types import SimpleNamespace

from django_ratelimit.core import _get_window, _make_cache_key, get_usage

from .policies import Policy

METHODS = ["POST"]  # what a fixed-window policy counts: form posts such as the admin login
_POST = SimpleNamespace(method="POST")


class Unavailable(Exception):
    """django-ratelimit could not read or write its counter."""


def _rate(policy: Policy) -> str:
    return f"{policy.limit}/{policy.period}s"


def evaluate_fixed(policy: Policy, key: str, *, cost: int) -> tuple[bool, int, int, int, int]:
    """Return (allowed, limit, remaining, reset, retry_after); raise Unavailable or a Redis error."""
    usage = get_usage(
        _POST,
        group=policy.name,
        key=lambda _group, _request: key,
        rate=_rate(policy),
        method=METHODS,
        increment=cost > 0,
    )
    if usage is None or usage["time_left"] == -1:
        raise Unavailable(policy.name)
    count, reset = int(usage["count"]), max(0, int(usage["time_left"]))
    # django-ratelimit's time_left is whole seconds rounded down: 0 in a window's last second. A denial
    # must still say "retry in 1 s", never "Retry-After: 0" (found by a CI run landing in that second).
    retry_after = max(1, reset)
    if cost == 0:  # a peek: would one more request pass?
        allowed = count < policy.limit
        return allowed, policy.limit, max(0, policy.limit - count), reset, 0 if allowed else retry_after
    allowed = not usage["should_limit"]
    return allowed, policy.limit, max(0, policy.limit - count), reset, 0 if allowed else retry_after


def counter_key(policy: Policy, key: str) -> str:
    """django-ratelimit's cache key of the current window of `key` (for reset)."""
    return _make_cache_key(policy.name, _get_window(key, policy.period), _rate(policy), key, METHODS)
