from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "users"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from project.db.breakers import declare_databases
        from resilience import overload
        from resilience.breaker import declare
        from resilience.ratelimit.http import register_username_identity

        from . import (
            cache,
            checks,  # noqa: F401  (registers system checks)
            errors,
        )
        from .identity import identity_key

        errors.register()
        register_username_identity(identity_key)  # limiter keys compare usernames as logins do
        # The domain's dependencies, so their breakers are listed (and forcible) from the first start.
        declare_databases()
        declare(cache.CACHE_BREAKER, group="Redis", description="cache Redis", options=cache.CACHE_BREAKER_OPTIONS)
        register_overload_classes(overload)


def register_overload_classes(overload) -> None:
    """The priority class of each users endpoint under overload (resilience/overload/registry.py):
    listings, anonymous profile reads and views are shed first; token-authenticated calls on one's own
    account and tokens are critical; the rest (sign-up, log-in) is default. A write carrying an
    Idempotency-Key is critical whatever its endpoint (it may retry an accepted write)."""
    overload.register("users", methods={"GET": "sheddable", "HEAD": "sheddable"}, priority="default")
    overload.register("user-detail", priority="sheddable", credentials="default")
    overload.register("user-views", priority="sheddable")
    overload.register("users-me", priority="default", credentials="critical")
    overload.register("auth-token", priority="default", credentials="critical")
    overload.register("auth-tokens", priority="default", credentials="critical")
    overload.register("auth-token-detail", priority="default", credentials="critical")
