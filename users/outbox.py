"""The transactional outbox: events recorded inside the shard transaction of the change."""

import uuid

from resilience.request_id import current as current_request_id

from .models import OutboxEvent

EVENTS = ("user.created", "user.updated", "user.deleted")


def outbox_record(*, alias: str, event: str, user_id: int, data: dict) -> OutboxEvent:
    """Record `event` on shard `alias`. Call inside the transaction that makes the change."""
    assert event in EVENTS, event
    return OutboxEvent.objects.using(alias).create(
        event_id=uuid.uuid4(), event=event, user_id=user_id, data=data, request_id=current_request_id()
    )
