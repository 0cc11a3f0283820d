"""Models of the resilience app: none with a table (breakers and limits live in the state Redis)."""

from django.db import models


# --- operations permissions (ops/dashboard/) ---
# Circuit breakers and rate-limit keys live in the state Redis, not in tables. These unmanaged models
# exist only to carry the permissions the dashboard actions require and to give their admin-log
# entries a content type (resilience.circuitbreaker, resilience.ratelimitkey: the ones
# ops/dashboard/audit.py has always written). No table is created or queried.
class CircuitBreaker(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("change_breaker", "Can force a circuit breaker open or closed"),
            ("reset_breaker", "Can reset a circuit breaker"),
        ]

    def __str__(self):
        return "circuit breakers"


class RateLimitKey(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("reset_ratelimit", "Can reset the counters of a rate-limit key")]

    def __str__(self):
        return "rate-limit keys"


class RuntimeOverride(models.Model):
    """Carries the permission to override a limit at runtime (resilience/overrides.py) and the content
    type of those actions' admin-log entries (resilience.runtimeoverride). No table."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("change_override", "Can override a rate limit or breaker threshold at runtime")]

    def __str__(self):
        return "runtime overrides"
