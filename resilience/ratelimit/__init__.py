"""Rate limiting on the state Redis: named policies, atomic Lua algorithms, one round trip per check (or
one for all of a view's checks and its concurrency slot: limiter.evaluate_all).

    decision = check("auth.token", request_key("auth.token", request, username=username))
    if not decision.allowed:
        return Response(status=429, headers=headers(decision))

When the state Redis is unavailable, `check` never raises: each policy fails open or closed as its
settings say, and the Decision is marked `degraded`.
"""

from .http import client_ip, headers, request_key
from .limiter import Decision, check, denied_counts, evaluate, peek, reset_key, top_denied
from .policies import DEFAULT_POLICIES, Policy, all_policies, get_policy, parse_rate

__all__ = [
    "DEFAULT_POLICIES",
    "Decision",
    "Policy",
    "all_policies",
    "check",
    "client_ip",
    "denied_counts",
    "evaluate",
    "get_policy",
    "headers",
    "parse_rate",
    "peek",
    "request_key",
    "reset_key",
    "top_denied",
]
