"""Concurrent-requests limiter: at most `limit` requests of one key in flight across every process.

    decision, slot = acquire(policy, key)  # one Lua call (concurrency.lua): a Decision and a Slot
    try:
        ...                            # the request
    finally:
        slot.release()                 # one ZREM; never raises

A view's slot is taken in the same call as its rate checks and only if they admit (drf.py,
limiter.evaluate_all), so a rate-limited request never holds one, even for an instant.

Slots live in the state Redis, a sorted set per (policy, key) scored by expiry: a process killed
mid-request holds its slot until `policy.period` seconds after it took it, never longer (the next
acquire removes expired slots in the same call). A request that outlives the expiry loses its slot:
wrong in the safe direction (one more request is admitted), never a leak.

When the state Redis is unavailable, `acquire` behaves like the rate limiter's `check`: a policy that
fails open admits without a slot, one that fails closed denies with a short Retry-After; the Decision
is `degraded`. `release` of a slot that could not be given back (Redis down) leaves it to expire.
"""

import logging
import uuid
from dataclasses import dataclass

from .limiter import Check, Decision, evaluate_with, state_key
from .policies import Policy
from .scripts import UNAVAILABLE, outage, state_redis

logger = logging.getLogger("resilience.ratelimit")


@dataclass
class Slot:
    """One request's place under a concurrency policy; `token` is None when no slot is held (denied,
    degraded, or a shadow-mode request admitted over the limit)."""

    policy: Policy
    key: str
    token: str | None

    def release(self) -> None:
        """Give the slot back (once; later calls do nothing). Never raises."""
        token, self.token = self.token, None
        if token is None or outage.active():
            return  # nothing held, or Redis is known to be down: the slot expires on its own
        try:
            state_redis().zrem(state_key(self.policy, self.key), token)
        except UNAVAILABLE as exc:
            outage.failed(exc)
        except Exception:  # a bug must not fail the request that is ending
            logger.exception("concurrency limiter: release under policy %s failed", self.policy.name)
        else:
            outage.recovered()


def acquire(policy: Policy, key: str, *, now_ms: int | None = None) -> tuple[Decision, Slot]:
    """Take a slot of `key` under the concurrency `policy`; return the Decision and the Slot (holding
    nothing unless the Decision admits and is not degraded). Never raises for Redis trouble.
    limiter.evaluate_all takes one together with a request's rate checks (`check` and `slot`)."""
    wanted = check(policy, key)
    decision, _ = evaluate_with(policy, key, token=wanted.token, now_ms=now_ms)
    return decision, slot(wanted, decision)


def check(policy: Policy, key: str) -> Check:
    """The limiter check that takes a new slot of `key` under `policy` (for limiter.evaluate_all)."""
    return Check(policy, key, token=uuid.uuid4().hex)


def slot(taken: Check, decision: Decision) -> Slot:
    """The Slot the check `taken` holds after `decision`: nothing unless admitted and not degraded."""
    held = decision.allowed and not decision.degraded
    return Slot(taken.policy, taken.key, taken.token if held else None)
