"""System checks for circuit breakers (import this module from the app's `ready()` to register them)."""

from django.core.checks import CheckMessage, Error, register
from django.core.exceptions import ImproperlyConfigured

from .options import configured_breakers, options_for


@register("resilience")
def check_breaker_settings(app_configs=None, **kwargs) -> list[CheckMessage]:
    """resilience.E010: RESILIENCE_BREAKERS or one of its entries is invalid."""
    try:
        for name in configured_breakers():
            options_for(name)
    except (ImproperlyConfigured, ImportError) as exc:
        return [
            Error(
                str(exc),
                hint="See resilience/breaker/options.py for the options and their ranges.",
                id="resilience.E010",
            )
        ]
    return []
