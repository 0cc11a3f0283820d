"""Staff operations on webhooks (the admin's actions) and housekeeping."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from project.db import routing
from users.models import OutboxEvent
from users.sharding.access import ShardUnavailable, write_on
from webhooks.models import WebhookDelivery, WebhookSubscriber

from .conf import webhook_settings
from .signing import new_secret

logger = logging.getLogger("webhooks")


def webhook_deliveries_retry(*, delivery_ids: list[int]) -> int:
    """Put the dead-lettered deliveries among `delivery_ids` back to pending, due now, with a fresh
    count of attempts; return how many. Deliveries that are not dead are left alone."""
    return (
        WebhookDelivery.objects.using(routing.primary_alias("default"))
        .filter(
            id__in=delivery_ids,
            status=WebhookDelivery.Status.DEAD,
        )
        .update(status=WebhookDelivery.Status.PENDING, attempts=0, next_attempt_at=timezone.now(), claim_token=None)
    )


def webhook_subscriber_rotate_secret(*, subscriber_id: int) -> str:
    """Give the subscriber a new secret and return it. From the next attempt on, requests are signed
    with the new secret and, for WEBHOOK_SECRET_ROTATION_WINDOW, also with the one it replaces (two
    signatures), so the receiver can switch at any moment of the window. Rotating again within the
    window drops the oldest secret: only the last two are ever signed with."""
    alias = routing.primary_alias("default")
    window = timedelta(seconds=webhook_settings().secret_rotation_window)
    with transaction.atomic(using=alias):
        # Locked: two rotations at once must not both keep the same "previous" secret.
        subscriber = WebhookSubscriber.objects.using(alias).select_for_update().get(id=subscriber_id)
        subscriber.previous_secret = subscriber.secret
        subscriber.previous_secret_expires_at = timezone.now() + window
        subscriber.secret = new_secret()
        subscriber.save(using=alias, update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
    return subscriber.secret


def webhook_prune() -> dict[str, int]:
    """Delete delivered deliveries and dispatched outbox rows older than WEBHOOK_RETENTION_DAYS; return
    rows deleted per database. Dead and pending deliveries are kept. A shard that is down is skipped."""
    cutoff = timezone.now() - timedelta(days=webhook_settings().retention_days)
    deleted, _ = (
        WebhookDelivery.objects.using(routing.primary_alias("default"))
        .filter(status=WebhookDelivery.Status.DELIVERED, delivered_at__lt=cutoff)
        .delete()
    )
    result = {"default": deleted}
    for group in settings.SHARD_GROUPS:
        try:
            result[group] = write_on(
                group, lambda alias: OutboxEvent.objects.using(alias).filter(dispatched_at__lt=cutoff).delete()[0]
            )
        except (ShardUnavailable, DatabaseError) as exc:
            logger.warning("webhook prune: shard %s skipped (%s)", group, exc)
    return result
