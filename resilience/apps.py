from django.apps import AppConfig


class ResilienceConfig(AppConfig):
    name = "resilience"
    default_auto_field = "django.db.models.BigAutoField"
