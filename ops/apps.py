from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Operations: the admin dashboards and /metrics, the one layer that reads every app."""

    name = "ops"
    default_auto_field = "django.db.models.BigAutoField"
