"""Deliver due webhooks: claim one with a lease, POST it through its host's breaker, record the outcome.

Outcomes of one attempt (an attempt is counted when the delivery is claimed):
- 2xx                              delivered; a breaker success.
- 408, 429, 5xx, no response       retried with backoff; a breaker failure (the host is in trouble).
  (refused, timeout, TLS, DNS,     429/503's Retry-After (seconds) is honoured, up to the cap.
  the attempt's overall deadline)
- 410 Gone                         the receiver says the endpoint is gone for good: the subscriber is
                                   disabled (active=False, disabled_reason, disabled_at), this delivery
                                   is dead, and its other deliveries wait like any inactive subscriber's
                                   (staff re-activate it in the admin). Not a breaker failure.
- any other status (3xx, 4xx)      retried with backoff, but NOT a breaker failure: the host answered,
                                   so it must not shed the other subscribers' deliveries to that host.
                                   Retrying (rather than dead-lettering at once) rides out a receiver's
                                   bad deploy or rotated secret; a permanent refusal ends dead.
- destination refused              the host resolves to an address egress.py refuses (loopback, private,
                                   metadata... not in WEBHOOK_ALLOWED_PRIVATE_NETWORKS): dead at once,
                                   nothing sent. Retrying would resolve the same name to the same place;
                                   staff fix the URL or the allowlist, then use the admin's "retry".
- breaker open                     not sent; the attempt is given back and the delivery (with every
                                   due delivery to that host) waits until the breaker's retry time.
                                   Deliveries wait while a host is down; they are never dropped.
- retry over budget                a retry (any attempt after the first) to a host whose retries
                                   already use their budget (retry_budget.py: a share of its first
                                   attempts) is not sent: the attempt is given back and the delivery
                                   stays pending, deferred by about one budget window. Never dropped.
After the WEBHOOK_MAX_ATTEMPTS-th failed attempt a delivery is dead: visible and retryable in the admin.

Backoff after the n-th failed attempt: min(cap, base * 2**(n-1)), jittered to 50-100 % (defaults
30 s doubling to a 1 h cap: ~1 h of retries over 8 attempts, plus any time spent waiting on the breaker).

A worker that dies mid-attempt holds its claim until the lease expires; the delivery is then claimed
again (the receiver may see the event twice and dedups by the webhook-id header). A late outcome from
the dead claim is ignored: outcomes are written only WHERE claim_token matches. A live worker never
holds an attempt past the lease: the attempt's overall deadline is capped at it.
"""

import logging
import random
import time
import uuid
from datetime import timedelta
from http.client import HTTPException

from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from project.db import routing
from resilience.breaker import CircuitOpenError, get_breaker
from resilience.request_id import HEADER as REQUEST_ID_HEADER
from webhooks.models import WebhookDelivery, WebhookSubscriber

from . import retry_budget, transport
from .conf import WebhookSettings, webhook_settings
from .egress import DestinationRefused
from .signing import webhook_body, webhook_headers

logger = logging.getLogger("webhooks")

Status = WebhookDelivery.Status
HOST_FAILURE_STATUSES = frozenset({408, 429})
GONE = 410
GONE_REASON = "the receiver answered 410 Gone"

DELIVERED, RETRYING, DEAD, WAITING, STALE = "delivered", "retrying", "dead", "waiting", "stale"
DEFERRED = "deferred"


class WebhookHTTPError(Exception):
    """A receiver's answer that counts as a failure of its host (what the breaker records)."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


def breaker_name(host: str) -> str:
    return f"webhook:{host}"


def backoff_seconds(attempts: int, conf: WebhookSettings) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: exponential, capped, 50-100 % jitter."""
    delay = min(conf.backoff_cap, conf.backoff_base * 2 ** max(0, attempts - 1))
    return delay * random.uniform(0.5, 1.0)


def _alias() -> str:
    return routing.primary_alias("default")


def webhook_delivery_claim() -> WebhookDelivery | None:
    """Claim the most overdue pending delivery of an active subscriber, or return None if none is due.

    The claim counts an attempt and moves `next_attempt_at` one lease ahead, in a short transaction
    that skips rows other workers are claiming. The returned delivery carries its `claim_token`.
    """
    conf = webhook_settings()
    alias = _alias()
    now = timezone.now()
    with transaction.atomic(using=alias):
        delivery = (
            WebhookDelivery.objects.using(alias)
            .select_for_update(skip_locked=True, of=("self",))
            .select_related("subscriber")
            .filter(status=Status.PENDING, next_attempt_at__lte=now, subscriber__active=True)
            .order_by("next_attempt_at", "id")
            .first()
        )
        if delivery is None:
            return None
        delivery.claim_token = uuid.uuid4()
        delivery.attempts += 1
        delivery.last_attempt_at = now
        delivery.next_attempt_at = now + timedelta(seconds=conf.lease)
        delivery.save(using=alias, update_fields=["claim_token", "attempts", "last_attempt_at", "next_attempt_at"])
    return delivery


def _mine(delivery: WebhookDelivery):
    return WebhookDelivery.objects.using(_alias()).filter(
        id=delivery.id, claim_token=delivery.claim_token, status=Status.PENDING
    )


def _record_delivered(delivery: WebhookDelivery, status_code: int) -> str:
    now = timezone.now()
    updated = _mine(delivery).update(
        status=Status.DELIVERED, delivered_at=now, claim_token=None, last_status_code=status_code, last_error=""
    )
    return DELIVERED if updated else STALE


def _record_failure(
    delivery: WebhookDelivery,
    conf: WebhookSettings,
    *,
    status_code: int | None,
    error: str,
    retry_after: float | None = None,
    final: bool = False,
) -> str:
    fields = {"claim_token": None, "last_status_code": status_code, "last_error": error[:2000]}
    if final or delivery.attempts >= conf.max_attempts:
        fields["status"] = Status.DEAD
        outcome = DEAD
    else:
        delay = backoff_seconds(delivery.attempts, conf)
        if retry_after is not None:
            delay = max(delay, min(retry_after, conf.backoff_cap))
        fields["next_attempt_at"] = timezone.now() + timedelta(seconds=delay)
        outcome = RETRYING
    updated = _mine(delivery).update(**fields)
    if not updated:
        return STALE
    if outcome == DEAD:
        logger.warning(
            "webhook %s %s to %s dead-lettered after %d attempt(s): %s",
            delivery.event,
            delivery.event_id,
            delivery.subscriber.url,
            delivery.attempts,
            error,
        )
    return outcome


def _wait_for_breaker(delivery: WebhookDelivery, host: str, retry_after: float) -> str:
    """Give the attempt back and make this host's due deliveries wait until the breaker's retry time."""
    retry_at = timezone.now() + timedelta(seconds=retry_after + random.uniform(0, min(1.0, retry_after / 4)))
    updated = _mine(delivery).update(attempts=F("attempts") - 1, claim_token=None, next_attempt_at=retry_at)
    same_host = [
        s.id for s in WebhookSubscriber.objects.using(_alias()).only("id", "url") if transport.url_host(s.url) == host
    ]
    # Claimed rows are a lease ahead, so this never touches an attempt in flight.
    WebhookDelivery.objects.using(_alias()).filter(
        subscriber_id__in=same_host,
        status=Status.PENDING,
        next_attempt_at__lte=timezone.now(),
    ).update(next_attempt_at=retry_at)
    return WAITING if updated else STALE


def _defer_retry(delivery: WebhookDelivery, conf: WebhookSettings) -> str:
    """Give the attempt back: the retry did not fit the host's budget. The delivery stays pending and
    comes back after about one budget window (jittered, so deferred retries do not return in step)."""
    delay = conf.retry_budget_window * random.uniform(0.5, 1.0)
    updated = _mine(delivery).update(
        attempts=F("attempts") - 1, claim_token=None, next_attempt_at=timezone.now() + timedelta(seconds=delay)
    )
    return DEFERRED if updated else STALE


def _disable_gone(delivery: WebhookDelivery, conf: WebhookSettings, error: str) -> str:
    """The receiver answered 410 Gone: dead-letter this delivery and disable its subscriber, together."""
    with transaction.atomic(using=_alias()):
        outcome = _record_failure(delivery, conf, status_code=GONE, error=error, final=True)
        if outcome == STALE:
            return STALE  # a later attempt owns the delivery; it meets the 410 itself
        WebhookSubscriber.objects.using(_alias()).filter(id=delivery.subscriber_id, active=True).update(
            active=False, disabled_at=timezone.now(), disabled_reason=GONE_REASON
        )
    logger.warning("webhook subscriber %s (%s) disabled: 410 Gone", delivery.subscriber_id, delivery.subscriber.url)
    return outcome


def webhook_delivery_attempt(delivery: WebhookDelivery) -> str:
    """Make one attempt at a claimed delivery and record its outcome; return it: "delivered",
    "retrying", "dead", "waiting" (breaker open, no attempt counted), "deferred" (a retry over the
    host's retry budget, no attempt counted) or "stale" (the claim was lost, nothing recorded).
    Raises DatabaseError if the outcome cannot be written (the lease then expires and the delivery
    is attempted again)."""
    conf = webhook_settings()
    subscriber = delivery.subscriber
    host = transport.url_host(subscriber.url)
    breaker = get_breaker(breaker_name(host))
    try:
        permit = breaker.allow()
    except CircuitOpenError as exc:
        return _wait_for_breaker(delivery, host, exc.retry_after)
    if delivery.attempts <= 1:
        retry_budget.count_first_attempt(host, conf)
    elif not retry_budget.retry_admitted(host, conf):
        permit.release()
        return _defer_retry(delivery, conf)

    body = webhook_body(delivery.payload)
    started = time.perf_counter()
    try:
        # Inside the try: a secret that is not base64 (set outside the admin) fails the delivery and
        # gives the breaker's permit back, rather than crashing the run with the claim held.
        headers = webhook_headers(
            secrets=subscriber.signing_secrets(now=timezone.now()),
            event=delivery.event,
            event_id=str(delivery.event_id),
            body=body,
            attempt=delivery.attempts,
        )
        if delivery.request_id:  # the receiver can quote the request that caused the event
            headers[REQUEST_ID_HEADER] = delivery.request_id
        response = transport.post(
            subscriber.url,
            body,
            headers,
            connect_timeout=conf.connect_timeout,
            read_timeout=conf.read_timeout,
            deadline=conf.attempt_deadline,
            allowed_networks=conf.private_networks,
        )
    except DestinationRefused as exc:  # nothing was sent; the host did nothing wrong
        permit.release()
        return _record_failure(delivery, conf, status_code=None, error=f"refused: {exc}", final=True)
    except (OSError, HTTPException) as exc:
        permit.failure(exc, time.perf_counter() - started)
        return _record_failure(delivery, conf, status_code=None, error=f"{exc.__class__.__name__}: {exc}")
    except Exception as exc:  # a URL we cannot request says nothing about the host
        permit.release()
        return _record_failure(delivery, conf, status_code=None, error=f"{exc.__class__.__name__}: {exc}")
    duration = time.perf_counter() - started

    status = response.status
    if 200 <= status < 300:
        permit.success(duration)
        return _record_delivered(delivery, status)
    error = f"HTTP {status}: {response.body[:500].decode(errors='replace')}"
    if status == GONE:
        permit.release()
        return _disable_gone(delivery, conf, error)
    if status >= 500 or status in HOST_FAILURE_STATUSES:
        permit.failure(WebhookHTTPError(status), duration)
        return _record_failure(delivery, conf, status_code=status, error=error, retry_after=response.retry_after)
    permit.release()
    return _record_failure(delivery, conf, status_code=status, error=error)


def webhook_deliveries_deliver_due(*, time_budget: float | None = None) -> dict[str, int]:
    """Attempt due deliveries one by one until none is due or `time_budget` seconds (default
    WEBHOOK_DELIVER_TIME_BUDGET) have passed; return the count of each outcome. Safe to run in many
    workers at once. A database error ends the run (claimed deliveries are retried after their lease)."""
    budget = webhook_settings().deliver_time_budget if time_budget is None else time_budget
    deadline = time.monotonic() + budget
    outcomes: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            delivery = webhook_delivery_claim()
            if delivery is None:
                break
            outcome = webhook_delivery_attempt(delivery)
        except DatabaseError as exc:
            logger.warning("webhook delivery run stopped: %s", exc)
            break
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes
