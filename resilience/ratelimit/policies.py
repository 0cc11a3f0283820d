"""Named rate-limit policies: built-in defaults, overridden or extended by settings and at runtime.

`RESILIENCE_RATELIMIT_POLICIES` maps a policy name to a dict with the keys "rate" ("5/m", "10/h",
"100/30s"), "key", "algorithm", "fail" and "mode". It is merged over the built-in defaults name by
name and field by field, so a project that tunes one policy keeps the others. The setting is read at
call time.

A policy with "algorithm": "concurrency" limits requests in flight instead of a rate: "limit" is the
number a key may have in flight at once and "expiry" (seconds, default 60) how long a slot is held at
most, so a process killed mid-request cannot leak it (resilience/ratelimit/concurrency.py).

"mode" is "enforce" (the default), "shadow" (decide and count, refuse nothing: resilience/shadow.py)
or "off". Runtime overrides from the admin (resilience/overrides.py, target "ratelimit:<name>") lay
"rate", "limit" and "mode" over the settings until they expire.
"""

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .. import overrides
from ..shadow import MODES, Mode

KeyKind = Literal["ip", "user", "ip+username", "username", "token", "user_or_ip"]
Algorithm = Literal["sliding_window", "token_bucket", "fixed_window", "concurrency"]
FailMode = Literal["open", "closed"]

KEY_KINDS: tuple[str, ...] = get_args(KeyKind)
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
FAIL_MODES: tuple[str, ...] = get_args(FailMode)

OVERRIDE_KIND = "ratelimit"  # overrides of policy <name> have the target "ratelimit:<name>"
OVERRIDABLE = ("rate", "limit", "mode")  # what an operator may change at runtime
DEFAULT_CONCURRENCY_EXPIRY = 60

DEFAULT_POLICIES: dict[str, dict[str, Any]] = {
    "auth.token": {"rate": "5/m", "key": "ip+username", "algorithm": "sliding_window", "fail": "closed"},
    # One address spraying one password over many accounts, and many addresses guessing one account:
    "auth.token.ip": {"rate": "10/m", "key": "ip", "algorithm": "sliding_window", "fail": "closed"},
    "auth.token.username": {"rate": "30/h", "key": "username", "algorithm": "sliding_window", "fail": "closed"},
    # Failed token authentications per address, checked before a lookup can reach a shard.
    "auth.bad_token": {"rate": "30/m", "key": "ip", "algorithm": "sliding_window", "fail": "open"},
    "users.register": {"rate": "10/h", "key": "ip", "algorithm": "sliding_window", "fail": "closed"},
    "api.read": {"rate": "600/m", "key": "user_or_ip", "algorithm": "sliding_window", "fail": "open"},
    "api.write": {"rate": "120/m", "key": "user", "algorithm": "token_bucket", "fail": "open"},
    "users.views": {"rate": "300/m", "key": "user_or_ip", "algorithm": "token_bucket", "fail": "open"},
    "admin.login": {"rate": "10/m", "key": "ip", "algorithm": "fixed_window", "fail": "closed"},
    # Requests in flight per user on the authenticated endpoints (Stripe's concurrent-requests limiter):
    # one client cannot hold every worker with slow calls. Not on the anonymous cached profile read.
    "api.concurrent": {"limit": 20, "expiry": 60, "key": "user", "algorithm": "concurrency", "fail": "open"},
}

logger = logging.getLogger("resilience.ratelimit")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")


@dataclass(frozen=True)
class Policy:
    """One named limit: `limit` requests per `period` seconds per key of kind `key_kind`; for the
    "concurrency" algorithm, `limit` requests in flight per key, each slot held `period` seconds at most.

    `fail_mode` says what a check returns while the state Redis is unreachable: "open" admits the
    request, "closed" denies it. It is a decision made per policy, never an accident. `mode` says
    whether a denial is enforced, only recorded ("shadow") or not computed at all ("off").
    """

    name: str
    limit: int
    period: int
    key_kind: KeyKind
    algorithm: Algorithm = "sliding_window"
    fail_mode: FailMode = "open"
    mode: Mode = "enforce"


MAX_COUNT = 10**12
"""The largest count (requests per period, or in flight) a policy may allow. The Lua scripts compute in
doubles and hand back 64-bit integers: a count far above any real traffic but far below 2**53 keeps
their arithmetic exact and the RateLimit headers positive."""


def parse_rate(rate: str) -> tuple[int, int]:
    """Return (limit, period in seconds) for "5/m", "10/h", "100/30s"; raise ValueError otherwise.
    The count is 1 to MAX_COUNT: a rate of 0 would refuse every request for good (a 429 whose
    Retry-After can never come true); an operator who wants that switches the endpoint off instead."""
    match = _RATE.match(rate)
    if not match:
        raise ValueError(f"rate {rate!r} is not of the form '<count>/<unit>' with unit s, m, h or d")
    count, multiplier, unit = match.groups()
    period = int(multiplier or 1) * _UNITS[unit]
    if period <= 0:
        raise ValueError(f"rate {rate!r} has an empty period")
    if not 1 <= int(count) <= MAX_COUNT:
        raise ValueError(f"rate {rate!r}: the count must be 1 to {MAX_COUNT:,}")
    if period > 366 * 86400:
        raise ValueError(f"rate {rate!r}: the period must be at most a year")
    return int(count), period


def build_policy(name: str, spec: dict[str, Any]) -> Policy:
    """Validate one settings entry; raise ImproperlyConfigured with a hint when it is wrong."""
    if not name or "|" in name or any(c.isspace() for c in name):
        raise ImproperlyConfigured(f"rate-limit policy name {name!r} must be non-empty, without '|' or spaces")
    key_kind, algorithm, fail = spec.get("key", "ip"), spec.get("algorithm", "sliding_window"), spec.get("fail", "open")
    mode = spec.get("mode", "enforce")
    for label, value, allowed in (
        ("key", key_kind, KEY_KINDS),
        ("algorithm", algorithm, ALGORITHMS),
        ("fail", fail, FAIL_MODES),
        ("mode", mode, MODES),
    ):
        if value not in allowed:
            raise ImproperlyConfigured(f"rate-limit policy {name!r}: {label} {value!r} is not one of {allowed}")
    try:
        limit, period = _concurrency_limit(spec) if algorithm == "concurrency" else parse_rate(str(spec["rate"]))
    except (KeyError, ValueError) as exc:
        raise ImproperlyConfigured(f"rate-limit policy {name!r}: {exc}") from exc
    return Policy(
        name=name, limit=limit, period=period, key_kind=key_kind, algorithm=algorithm, fail_mode=fail, mode=mode
    )


def _positive_int(spec: dict[str, Any], field: str, default: int | None = None) -> int:
    value = spec.get(field, default)
    if value is None:
        raise ValueError(f"{field!r} is required")
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise ValueError(f"{field} {value!r} is not a whole number")
    if not 1 <= int(value) <= MAX_COUNT:
        raise ValueError(f"{field} must be 1 to {MAX_COUNT:,}")
    return int(value)


def _concurrency_limit(spec: dict[str, Any]) -> tuple[int, int]:
    """(limit in flight, slot expiry in seconds) of a concurrency policy; ValueError when invalid."""
    if "rate" in spec:
        raise ValueError("a concurrency policy takes 'limit' (requests in flight), not 'rate'")
    return _positive_int(spec, "limit"), _positive_int(spec, "expiry", DEFAULT_CONCURRENCY_EXPIRY)


def with_override(name: str, spec: dict[str, Any], values: dict[str, Any]) -> Policy:
    """The policy `name` of settings `spec` with the runtime override `values` laid over it; raise
    ImproperlyConfigured (a message for the operator) when the values are not a valid change."""
    unknown = sorted(set(values) - set(OVERRIDABLE))
    if unknown:
        raise ImproperlyConfigured(f"{', '.join(unknown)} cannot be overridden (only {', '.join(OVERRIDABLE)})")
    merged = {**spec, **values}
    if merged.get("algorithm") == "concurrency" and "rate" in values:
        raise ImproperlyConfigured(f"{name} is a concurrency policy: change its 'limit', not a rate")
    if merged.get("algorithm") != "concurrency":
        if "limit" in values:
            raise ImproperlyConfigured(f"{name} is a rate policy: change its 'rate' (e.g. '100/m'), not a limit")
        merged.pop("limit", None)
    return build_policy(name, merged)


def configured_specs() -> dict[str, dict[str, Any]]:
    """Return every policy's options by name: defaults merged with `RESILIENCE_RATELIMIT_POLICIES`
    (no runtime override). Raise ImproperlyConfigured when the setting is not a dict of dicts."""
    configured = settings.RESILIENCE_RATELIMIT_POLICIES
    if configured is not None and not isinstance(configured, dict):
        raise ImproperlyConfigured("RESILIENCE_RATELIMIT_POLICIES must be a dict of name -> options")
    merged = {name: dict(spec) for name, spec in DEFAULT_POLICIES.items()}
    for name, spec in (configured or {}).items():
        if not isinstance(spec, dict):
            raise ImproperlyConfigured(f"rate-limit policy {name!r} must be a dict, not {type(spec).__name__}")
        merged[name] = {**merged.get(name, {}), **spec}
    return merged


_cache: tuple[object, int, dict[str, Policy]] | None = None


def all_policies() -> dict[str, Policy]:
    """Return every policy by name: defaults merged with `RESILIENCE_RATELIMIT_POLICIES`, then with the
    runtime overrides in force in this process (resilience/overrides.py; no Redis call per request).

    Raise ImproperlyConfigured when the setting holds an invalid entry (system check resilience.E001
    reports the same at start-up). An override that no longer fits the settings (they changed under
    it) is ignored with a warning: the settings apply.
    """
    global _cache
    configured = settings.RESILIENCE_RATELIMIT_POLICIES
    snap = overrides.snapshot()
    if _cache is not None and _cache[0] is configured and _cache[1] == snap.version:
        return _cache[2]
    policies = {}
    for name, spec in configured_specs().items():
        policies[name] = build_policy(name, spec)
        values = snap.active.get(overrides.target(OVERRIDE_KIND, name))
        if values:
            try:
                policies[name] = with_override(name, spec, values)
            except ImproperlyConfigured as exc:
                logger.warning("ignoring the runtime override of rate-limit policy %s: %s", name, exc)
    # keyed on the setting object itself (override_settings swaps it) and on the overrides' version
    _cache = (configured, snap.version, policies)
    return policies


def get_policy(name: str) -> Policy:
    """Return the policy called `name`; raise LookupError for an unknown name (a programming error)."""
    try:
        return all_policies()[name]
    except KeyError:
        raise LookupError(f"no rate-limit policy named {name!r}; define it in RESILIENCE_RATELIMIT_POLICIES") from None
