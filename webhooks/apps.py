from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Outbound webhooks: consumes the users outbox, guarded by resilience's breakers."""

    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from resilience.breaker import declare_provider

        from . import checks  # noqa: F401  (registers system checks)
        from .deliver import breaker_name

        # One breaker per destination host, listed from the start for every active subscriber.
        declare_provider(breaker_name("*"), group="Webhooks", names=_subscriber_breakers)


def _subscriber_breakers() -> list[str]:
    from .deliver import breaker_name
    from .models import WebhookSubscriber
    from .transport import url_host

    urls = WebhookSubscriber.objects.using("default").filter(active=True).values_list("url", flat=True)
    return sorted({breaker_name(url_host(url)) for url in urls if url_host(url)})
