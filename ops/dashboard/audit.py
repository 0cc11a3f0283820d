"""Record dashboard actions in Django's admin log (LogEntry), with the staff user who took them, and
read them back for the pages that show who did what.

Breakers, rate-limit keys and runtime overrides are not database rows. Their entries carry the content types of the
unmanaged models that hold the actions' permissions (resilience.models.CircuitBreaker and
RateLimitKey, RuntimeOverride: "resilience | circuitbreaker", "resilience | ratelimitkey",
"resilience | runtimeoverride") and the breaker name or
"policy|key" as the object id, so the admin's "Recent actions" and any query on LogEntry can tell
them apart. Neither model is registered in the admin, so the log shows no link.
"""

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType

from project.db import routing

BREAKER = "circuitbreaker"
RATELIMIT_KEY = "ratelimitkey"
OVERRIDE = "runtimeoverride"
RECENT = 10

# The permission each action needs ("<app label>.<codename>", see resilience/models.py).
FORCE_BREAKER = "resilience.change_breaker"
RESET_BREAKER = "resilience.reset_breaker"
RESET_RATELIMIT = "resilience.reset_ratelimit"
CHANGE_OVERRIDE = "resilience.change_override"


def pseudo_content_type(model: str) -> ContentType:
    """Return the content type resilience.<model>, creating it if migrations have not (yet)."""
    content_type, _ = ContentType.objects.get_or_create(app_label="resilience", model=model)
    return content_type


def log_change(*, user, content_type: ContentType, object_id: str, object_repr: str, message: str) -> LogEntry:
    """Write one CHANGE entry by `user` (a staff auth.User) and return it."""
    return LogEntry.objects.create(
        user_id=user.pk,
        content_type=content_type,
        object_id=str(object_id)[:255],
        object_repr=object_repr[:200],
        action_flag=CHANGE,
        change_message=message,
    )


def log_breaker(*, user, name: str, message: str) -> LogEntry:
    return log_change(
        user=user,
        content_type=pseudo_content_type(BREAKER),
        object_id=name,
        object_repr=f"circuit breaker {name}",
        message=message,
    )


def log_ratelimit_key(*, user, policy: str, key: str, message: str) -> LogEntry:
    return log_change(
        user=user,
        content_type=pseudo_content_type(RATELIMIT_KEY),
        object_id=f"{policy}|{key}",
        object_repr=f"rate-limit key {key} ({policy})",
        message=message,
    )


def log_override(*, user, target: str, message: str) -> LogEntry:
    return log_change(
        user=user,
        content_type=pseudo_content_type(OVERRIDE),
        object_id=target,
        object_repr=f"runtime override of {target}",
        message=message,
    )


def recent(model: str, *, limit: int = RECENT) -> list[LogEntry]:
    """Return the last `limit` entries for resilience.<model>, newest first, with their users.

    Read from the primary: the page shown right after an action must list it, and a replica may not
    have replayed the entry yet. Raises for database trouble (the pages show it as unavailable).
    """
    alias = routing.primary_alias("default")
    return list(
        LogEntry.objects.using(alias)
        .filter(content_type__app_label="resilience", content_type__model=model)
        .select_related("user")
        .order_by("-action_time", "-id")[:limit]
    )
