"""Webhook subscribers and deliveries, in the default database (not sharded).

Their tables keep the names they had when they lived in the resilience app (Meta.db_table): moving
the code did not move the data."""

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import models
from django.utils import timezone

from users.outbox import EVENTS

from .signing import new_secret


class WebhookSubscriber(models.Model):
    """A URL that receives the events it subscribes to, signed with its own secret."""

    name = models.CharField(max_length=100, blank=True)
    url = models.URLField(max_length=2000, validators=[URLValidator(schemes=["http", "https"])])
    # Stored in clear: signing needs it. Shown to staff once so they can give it to the receiver.
    secret = models.CharField(max_length=100, default=new_secret)
    # After a rotation the previous secret signs too (a second signature) until it expires, so a
    # receiver can switch to the new secret at any moment within the window without rejecting one.
    previous_secret = models.CharField(max_length=100, blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    events = models.JSONField(default=list, help_text=f"Any of: {', '.join(EVENTS)}")
    active = models.BooleanField(
        default=True,
        help_text="Inactive subscribers keep their pending deliveries waiting until they are active again.",
    )
    # Set when the receiver itself ended the subscription (410 Gone); cleared when staff re-activate it.
    disabled_reason = models.CharField(max_length=200, blank=True, default="")
    disabled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "resilience_webhooksubscriber"
        ordering = ["id"]

    def __str__(self):
        return self.name or self.url

    def clean(self):
        if not isinstance(self.events, list) or not self.events or set(self.events) - set(EVENTS):
            raise ValidationError({"events": f"Choose one or more of {', '.join(EVENTS)}."})

    def signing_secrets(self, *, now) -> list[str]:
        """Return the secrets a request sent at `now` is signed with: the current one, then the
        previous one while its rotation window lasts."""
        if self.previous_secret and self.previous_secret_expires_at and now < self.previous_secret_expires_at:
            return [self.secret, self.previous_secret]
        return [self.secret]


class WebhookDelivery(models.Model):
    """One event for one subscriber. Unique per (subscriber, event_id): creating it twice is a no-op.

    `next_attempt_at` is both the retry time and the claim lease: a worker claims a due delivery by
    moving it past the lease and setting `claim_token`; only the holder of the token records the
    outcome, so a worker that outlived its lease cannot overwrite a later attempt's result.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        DEAD = "dead"

    subscriber = models.ForeignKey(WebhookSubscriber, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.UUIDField()
    event = models.CharField(max_length=32)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # The id of the request whose change this delivers (the outbox event's), sent as X-Request-ID.
    request_id = models.CharField(max_length=128, blank=True, default="", db_default="")

    class Meta:
        db_table = "resilience_webhookdelivery"
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["subscriber", "event_id"], name="webhookdelivery_once_per_subscriber"),
        ]
        indexes = [
            # The claim query: due pending deliveries, oldest first.
            models.Index(
                fields=["next_attempt_at", "id"], name="webhookdelivery_due", condition=models.Q(status="pending")
            ),
            models.Index(fields=["status", "delivered_at"], name="webhookdelivery_status"),
        ]

    def __str__(self):
        return f"{self.event} {self.event_id} -> {self.subscriber_id} ({self.status})"
