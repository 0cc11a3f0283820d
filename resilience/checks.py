"""System checks of settings that span the resilience package (registered from apps.py's `ready()`)."""

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from .overload.options import build_options

# Django settings that make it believe headers a reverse proxy writes.
PROXY_HEADER_SETTINGS = ("SECURE_PROXY_SSL_HEADER", "USE_X_FORWARDED_HOST", "USE_X_FORWARDED_PORT")


@register("resilience", "security")
def check_trusted_proxies(app_configs=None, **kwargs) -> list[CheckMessage]:
    """resilience.W030: a proxy header is trusted while RESILIENCE_TRUSTED_PROXIES is empty.

    Trusting X-Forwarded-Proto (or -Host, -Port) says a proxy stands in front. If it is not listed in
    RESILIENCE_TRUSTED_PROXIES, every request seems to come from the proxy: all clients share its rate
    limits, idempotency-key quota and key space, and behind a proxy on the same host every request is
    loopback, which METRICS_ALLOWED_IPS admits by default to /metrics and /health/ready's details.
    """
    trusting = [name for name in PROXY_HEADER_SETTINGS if getattr(settings, name, None)]
    if not trusting or settings.RESILIENCE_TRUSTED_PROXIES:
        return []
    return [
        Warning(
            f"Django trusts a reverse proxy's headers ({', '.join(trusting)}), but RESILIENCE_TRUSTED_PROXIES is "
            "empty: "
            "every client gets the proxy's address (one shared rate-limit bucket), and behind a proxy on the "
            "same host every request looks local to /metrics and /health/ready.",
            hint="Set RESILIENCE_TRUSTED_PROXIES to the proxy's addresses or networks (e.g. 10.0.0.0/8 or "
            "127.0.0.1); see docs/operations.md, 'Behind a proxy'.",
            id="resilience.W030",
        )
    ]


@register("resilience")
def check_idempotency_settings(app_configs=None, **kwargs) -> list[CheckMessage]:
    """resilience.E031: RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER is not a positive integer."""
    cap = settings.RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER
    if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
        return []
    return [
        Error(
            f"RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER is {cap!r}",
            hint="Set it to the number of new Idempotency-Keys one caller may use per 24 h, e.g. 1000.",
            id="resilience.E031",
        )
    ]


@register("resilience")
def check_override_settings(app_configs=None, **kwargs) -> list[CheckMessage]:
    """resilience.E032: RESILIENCE_OVERRIDES_REFRESH_SECONDS or RESILIENCE_OVERRIDE_DEFAULT_SECONDS is out of range."""
    from .overrides import MAX_SECONDS

    refresh, default = settings.RESILIENCE_OVERRIDES_REFRESH_SECONDS, settings.RESILIENCE_OVERRIDE_DEFAULT_SECONDS
    if (
        isinstance(refresh, int | float)
        and 0 < refresh <= 60
        and isinstance(default, int)
        and 0 < default <= MAX_SECONDS
    ):
        return []
    return [
        Error(
            f"RESILIENCE_OVERRIDES_REFRESH_SECONDS is {refresh!r}, RESILIENCE_OVERRIDE_DEFAULT_SECONDS is {default!r}",
            hint=f"The refresh interval is in (0, 60] seconds (1.0 keeps overrides within 2 s of every process); "
            f"the default duration is a whole number of seconds in (0, {MAX_SECONDS}].",
            id="resilience.E032",
        )
    ]


@register("resilience")
def check_adaptive_limit_settings(app_configs=None, **kwargs) -> list[CheckMessage]:
    """resilience.E040: a RESILIENCE_ADAPTIVE_* setting is invalid (floor above ceiling, shares out of order)."""
    try:
        build_options()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), hint="See docs/operations.md, 'Overload'.", id="resilience.E040")]
    return []
