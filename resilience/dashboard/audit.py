"""Record dashboard actions in Django's admin log (LogEntry), with the staff user who took them.

Breakers and rate-limit keys are not database rows, so their entries carry a content type of their
own ("resilience | circuitbreaker", "resilience | ratelimitkey", created on first use) and the
breaker name or "policy|key" as the object id: the admin's "Recent actions" and any query on
LogEntry can tell them apart. Such a content type has no model class, so the log shows no link.
"""

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType

BREAKER = "circuitbreaker"
RATELIMIT_KEY = "ratelimitkey"


def pseudo_content_type(model: str) -> ContentType:
    """Return the content type resilience.<model> for a thing that is not a model, creating it once."""
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
