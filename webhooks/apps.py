from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Outbound webhooks: consumes the users outbox, guarded by resilience's breakers."""

    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks  # noqa: F401  (registers system checks)
