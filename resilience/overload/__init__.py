"""Overload protection inside one process: an adaptive concurrency limit per endpoint group, shared by
priority classes (docs/architecture.md, "Overload").

- gradient.py: the controller (Gradient2) (limit from measured latency, floor and ceiling);
- limiter.py: one group's limit: slots per priority class, a short bounded queue, shadow mode;
- options.py: RESILIENCE_ADAPTIVE_* settings and the process's limiter per group;
- registry.py: which group and class a request is in (apps register their URL names);
- middleware.py: AdaptiveLimitMiddleware, the 503 + Retry-After refusal.
"""

from .limiter import ADMITTED, REFUSED, SHADOWED, GroupLimiter, Options, Priority
from .options import GROUPS, limiter, limiters, options, reset
from .registry import PRIORITY_HEADER, classify, exclude, register, register_namespace

__all__ = [
    "ADMITTED",
    "GROUPS",
    "PRIORITY_HEADER",
    "REFUSED",
    "SHADOWED",
    "GroupLimiter",
    "Options",
    "Priority",
    "classify",
    "exclude",
    "limiter",
    "limiters",
    "options",
    "register",
    "register_namespace",
    "reset",
]
