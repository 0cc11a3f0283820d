from django.apps import AppConfig


class ResilienceConfig(AppConfig):
    name = "resilience"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import (
            checks,  # noqa: F401  (registers system checks)
            overload,
        )
        from .breaker import checks as breaker_checks  # noqa: F401
        from .ratelimit import checks as ratelimit_checks  # noqa: F401

        # Health checks answer for the process exactly when it is overloaded: never limited.
        overload.exclude("health-live")
        overload.exclude("health-ready")
