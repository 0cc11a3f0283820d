"""Named rate-limit policies: built-in defaults, overridden or extended by settings.

`RESILIENCE_RATELIMIT_POLICIES` maps a policy name to a dict with the keys "rate" ("5/m", "10/h",
"100/30s"), "key", "algorithm" and "fail". It is merged over the built-in defaults name by name and
field by field, so a project that tunes one policy keeps the others. The setting is read at call time.
"""

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

KeyKind = Literal["ip", "user", "ip+username", "username", "token", "user_or_ip"]
Algorithm = Literal["sliding_window", "token_bucket", "fixed_window"]
FailMode = Literal["open", "closed"]

KEY_KINDS: tuple[str, ...] = get_args(KeyKind)
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
FAIL_MODES: tuple[str, ...] = get_args(FailMode)

DEFAULT_POLICIES: dict[str, dict[str, str]] = {
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
}

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")


@dataclass(frozen=True)
class Policy:
    """One named limit: `limit` requests per `period` seconds per key of kind `key_kind`.

    `fail_mode` says what a check returns while the state Redis is unreachable: "open" admits the
    request, "closed" denies it. It is a decision made per policy, never an accident.
    """

    name: str
    limit: int
    period: int
    key_kind: KeyKind
    algorithm: Algorithm = "sliding_window"
    fail_mode: FailMode = "open"


def parse_rate(rate: str) -> tuple[int, int]:
    """Return (limit, period in seconds) for "5/m", "10/h", "100/30s"; raise ValueError otherwise."""
    match = _RATE.match(rate)
    if not match:
        raise ValueError(f"rate {rate!r} is not of the form '<count>/<unit>' with unit s, m, h or d")
    count, multiplier, unit = match.groups()
    period = int(multiplier or 1) * _UNITS[unit]
    if period <= 0:
        raise ValueError(f"rate {rate!r} has an empty period")
    return int(count), period


def build_policy(name: str, spec: dict[str, Any]) -> Policy:
    """Validate one settings entry; raise ImproperlyConfigured with a hint when it is wrong."""
    if not name or "|" in name or any(c.isspace() for c in name):
        raise ImproperlyConfigured(f"rate-limit policy name {name!r} must be non-empty, without '|' or spaces")
    try:
        limit, period = parse_rate(str(spec["rate"]))
    except (KeyError, ValueError) as exc:
        raise ImproperlyConfigured(f"rate-limit policy {name!r}: {exc}") from exc
    key_kind, algorithm, fail = spec.get("key", "ip"), spec.get("algorithm", "sliding_window"), spec.get("fail", "open")
    for label, value, allowed in (
        ("key", key_kind, KEY_KINDS),
        ("algorithm", algorithm, ALGORITHMS),
        ("fail", fail, FAIL_MODES),
    ):
        if value not in allowed:
            raise ImproperlyConfigured(f"rate-limit policy {name!r}: {label} {value!r} is not one of {allowed}")
    return Policy(name=name, limit=limit, period=period, key_kind=key_kind, algorithm=algorithm, fail_mode=fail)


_cache: tuple[object, dict[str, Policy]] | None = None


def all_policies() -> dict[str, Policy]:
    """Return every policy by name: defaults merged with `RESILIENCE_RATELIMIT_POLICIES`.

    Raise ImproperlyConfigured when the setting holds an invalid entry (system check resilience.E001
    reports the same at start-up).
    """
    global _cache
    configured = settings.RESILIENCE_RATELIMIT_POLICIES
    if _cache is not None and _cache[0] is configured:
        return _cache[1]
    if configured is not None and not isinstance(configured, dict):
        raise ImproperlyConfigured("RESILIENCE_RATELIMIT_POLICIES must be a dict of name -> options")
    merged = {name: dict(spec) for name, spec in DEFAULT_POLICIES.items()}
    for name, spec in (configured or {}).items():
        if not isinstance(spec, dict):
            raise ImproperlyConfigured(f"rate-limit policy {name!r} must be a dict, not {type(spec).__name__}")
        merged[name] = {**merged.get(name, {}), **spec}
    policies = {name: build_policy(name, spec) for name, spec in merged.items()}
    _cache = (configured, policies)  # keyed on the setting object itself: override_settings swaps it
    return policies


def get_policy(name: str) -> Policy:
    """Return the policy called `name`; raise LookupError for an unknown name (a programming error)."""
    try:
        return all_policies()[name]
    except KeyError:
        raise LookupError(f"no rate-limit policy named {name!r}; define it in RESILIENCE_RATELIMIT_POLICIES") from None
