"""Shadow mode: a limit that decides, counts and logs, but refuses nothing.

Every limit that can refuse a request (a rate policy, a concurrency policy, a load shedder) has a
mode: "enforce" refuses, "shadow" only records that it "would have denied", "off" does not decide at
all. A new limit is dark-launched in shadow first (Stripe ran every limiter "log only" before
enforcing it, Envoy's rate-limit service has `shadow_mode` per rule); an operator can also switch a
misbehaving limit to shadow at runtime (resilience/overrides.py). The switch is the same for every
kind of limit: the limit computes its decision, then asks `refuses` whether to act on it.
"""

import logging
from typing import Literal, get_args

from prometheus_client import Counter

Mode = Literal["enforce", "shadow", "off"]
MODES: tuple[str, ...] = get_args(Mode)

logger = logging.getLogger("resilience.shadow")

SHADOW_DENIALS = Counter(
    "bulwark_shadow_denials",
    "Requests a limit in shadow mode would have refused (and admitted), by kind of limit and name.",
    ["kind", "name"],
)


def refuses(*, kind: str, name: str, mode: str, denied: bool, key: str = "") -> bool:
    """Return whether a denial by the limit `name` (of `kind`: "ratelimit", "concurrency", ...) is
    acted on. In shadow mode a denial is counted (metric `bulwark_shadow_denials`) and logged as
    "would have denied", and False is returned. Never raises."""
    if not denied:
        return False
    if mode != "shadow":
        return True
    try:
        SHADOW_DENIALS.labels(kind, name).inc()
        logger.info("would have denied: %s=%s key=%s [shadow]", kind, name, key, extra={"policy": name, "key": key})
    except Exception:  # observing a decision must never break the request
        logger.exception("recording a shadow denial failed")
    return False
