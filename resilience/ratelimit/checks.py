"""System checks for the rate limiter (import this module from the app's `ready()` to register them)."""

from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.exceptions import ImproperlyConfigured

from .http import trusted_proxies
from .policies import all_policies


@register("resilience")
def check_ratelimit_settings(app_configs=None, **kwargs) -> list[CheckMessage]:
    """resilience.E001: a policy in RESILIENCE_RATELIMIT_POLICIES is invalid.
    resilience.E002: RESILIENCE_TRUSTED_PROXIES holds something that is not an IP or a CIDR.
    resilience.E003: the "state" cache, where limits live, is not a django-redis cache."""
    errors: list[CheckMessage] = []
    try:
        all_policies()
    except ImproperlyConfigured as exc:
        errors.append(Error(str(exc), hint="Rates look like '5/m', '10/h' or '100/30s'.", id="resilience.E001"))
    try:
        trusted_proxies()
    except ImproperlyConfigured as exc:
        errors.append(
            Error(str(exc), hint="List proxy addresses or networks, e.g. ['10.0.0.0/8'].", id="resilience.E002")
        )
    backend = settings.CACHES.get("state", {}).get("BACKEND", "")
    if backend != "django_redis.cache.RedisCache":
        errors.append(
            Error(
                f"the 'state' cache uses {backend or 'nothing'}; rate limits need the state Redis",
                hint="Configure CACHES['state'] with django_redis.cache.RedisCache.",
                id="resilience.E003",
            )
        )
    return errors
