"""Move events from the shards' outboxes into deliveries: one per (active subscriber, event).

Per shard, in ONE shard transaction: lock a batch of undispatched outbox rows (SKIP LOCKED, so
concurrent dispatchers split the work), insert the deliveries into the default database (committed
at once, ON CONFLICT DO NOTHING on (subscriber, event_id)), then mark the rows dispatched and commit.
A crash after the deliveries committed but before the shard did leaves the rows undispatched; the
next run inserts the same deliveries again, which the unique key turns into nothing. No event is lost
(the outbox row is only marked after its deliveries exist) and none is duplicated.
"""

import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from project.db import routing
from users.models import OutboxEvent
from users.sharding.access import ShardUnavailable, write_on
from webhooks.models import WebhookDelivery, WebhookSubscriber

from .conf import webhook_settings

logger = logging.getLogger("webhooks")

MAX_BATCHES_PER_RUN = 10


def webhook_payload(event: OutboxEvent) -> dict:
    """Return the JSON body of `event` as receivers see it."""
    return {
        "id": str(event.event_id),
        "event": event.event,
        "created_at": event.created_at.isoformat(),
        "data": event.data,
    }


def webhook_subscribers_active() -> list[WebhookSubscriber]:
    """Return the active subscribers, read from the default primary (a new one counts at once)."""
    return list(WebhookSubscriber.objects.using(routing.primary_alias("default")).filter(active=True))


def webhook_deliveries_create(
    *, events: Iterable[OutboxEvent], subscribers: list[WebhookSubscriber] | None = None
) -> int:
    """Create a pending delivery for each subscriber listening to each event; return how many were
    asked for. Idempotent: an existing (subscriber, event_id) is left as it is. Raises DatabaseError."""
    subscribers = webhook_subscribers_active() if subscribers is None else subscribers
    now = timezone.now()
    rows = [
        WebhookDelivery(
            subscriber=subscriber,
            event_id=event.event_id,
            event=event.event,
            payload=webhook_payload(event),
            request_id=event.request_id,
            next_attempt_at=now,
            created_at=now,
        )
        for event in events
        for subscriber in subscribers
        if event.event in subscriber.events
    ]
    if rows:
        WebhookDelivery.objects.using(routing.primary_alias("default")).bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def webhook_outbox_dispatch_batch(*, group: str, batch_size: int) -> int:
    """Dispatch up to `batch_size` outbox events of shard group `group`; return how many. Raise
    ShardUnavailable or DatabaseError (nothing is marked dispatched then)."""
    subscribers = webhook_subscribers_active()

    def dispatch(alias: str) -> int:
        with transaction.atomic(using=alias):
            events = list(
                OutboxEvent.objects.using(alias)
                .select_for_update(skip_locked=True)
                .filter(dispatched_at__isnull=True)
                .order_by("id")[:batch_size]
            )
            if not events:
                return 0
            webhook_deliveries_create(events=events, subscribers=subscribers)
            OutboxEvent.objects.using(alias).filter(id__in=[e.id for e in events]).update(dispatched_at=timezone.now())
            return len(events)

    return write_on(group, dispatch)


def webhook_outbox_dispatch() -> dict[str, int]:
    """Dispatch every shard's outbox (a few batches per shard per run); return events per shard group.

    A shard that is down is logged and skipped: its events wait in its outbox for the next run.
    """
    batch_size = webhook_settings().dispatch_batch
    done: dict[str, int] = {}
    for group in settings.SHARD_GROUPS:
        done[group] = 0
        for _ in range(MAX_BATCHES_PER_RUN):
            try:
                n = webhook_outbox_dispatch_batch(group=group, batch_size=batch_size)
            except (ShardUnavailable, DatabaseError) as exc:
                logger.warning("webhook dispatch: shard %s skipped (%s); its events wait in the outbox", group, exc)
                break
            done[group] += n
            if n < batch_size:
                break
    return done
