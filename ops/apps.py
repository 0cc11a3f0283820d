from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Operations: the admin dashboards and /metrics, the one layer that reads every app."""

    name = "ops"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from resilience import overload

        # The admin and its dashboards are limited on their own (an operator's page must not queue
        # behind the API), and /metrics not at all: the scraper must see an overload while it lasts.
        overload.register_namespace("admin", group="admin", priority="default")
        overload.exclude("metrics")
