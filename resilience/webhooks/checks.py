"""System checks for webhooks (import this module from the app's `ready()` to register them)."""

from django.core.checks import CheckMessage, Error, register
from django.core.exceptions import ImproperlyConfigured

from .conf import webhook_settings


@register("resilience")
def check_webhook_settings(app_configs=None, **kwargs) -> list[CheckMessage]:
    """resilience.E020: a WEBHOOK_* setting is invalid."""
    try:
        webhook_settings()
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint="See resilience/webhooks/conf.py for the settings and their ranges.",
                id="resilience.E020",
            )
        ]
    return []
