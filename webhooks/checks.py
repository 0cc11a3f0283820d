"""System checks for webhooks (import this module from the app's `ready()` to register them)."""

from django.core.checks import CheckMessage, Error, register
from django.core.exceptions import ImproperlyConfigured

from .conf import webhook_settings


@register("webhooks")
def check_webhook_settings(app_configs=None, **kwargs) -> list[CheckMessage]:
    """webhooks.E001: a WEBHOOK_* setting is invalid."""
    try:
        webhook_settings()
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint="See webhooks/conf.py for the settings and their ranges.",
                id="webhooks.E001",
            )
        ]
    return []
