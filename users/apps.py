from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "users"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from project.db.breakers import declare_databases
        from resilience.breaker import declare

        from . import (
            cache,
            checks,  # noqa: F401  (registers system checks)
            errors,
        )

        errors.register()
        # The domain's dependencies, so their breakers are listed (and forcible) from the first start.
        declare_databases()
        declare(cache.CACHE_BREAKER, group="Redis", description="cache Redis", options=cache.CACHE_BREAKER_OPTIONS)
