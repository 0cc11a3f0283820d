"""Webhook settings, read at call time (`WEBHOOK_*`), with their defaults and validation.

WEBHOOK_MAX_ATTEMPTS         8      attempts before a delivery is dead-lettered
WEBHOOK_BACKOFF_BASE         30.0   seconds before the 2nd attempt; doubles per attempt...
WEBHOOK_BACKOFF_CAP          3600.0 ...up to this; each delay is jittered to 50-100 %
WEBHOOK_CONNECT_TIMEOUT      2.0    seconds to connect (TCP + TLS)
WEBHOOK_READ_TIMEOUT         5.0    seconds the receiver may stay silent while answering
WEBHOOK_DELIVERY_DEADLINE    10.0   seconds one attempt may take in all (DNS, connect, TLS, send, read):
                                    a receiver dripping its answer is cut off here, never later
WEBHOOK_LEASE_SECONDS        None   a claimed delivery is retried after this if its worker died
                                    (None: delivery deadline + 30 s); an attempt's deadline is
                                    also capped at the lease, so a live worker never outlives its claim
WEBHOOK_DISPATCH_BATCH       500    outbox rows moved per shard per batch
WEBHOOK_DELIVER_TIME_BUDGET  10.0   seconds one deliver run keeps claiming deliveries
WEBHOOK_RETENTION_DAYS       7.0    delivered deliveries and dispatched outbox rows kept this long
WEBHOOK_SIGNATURE_TOLERANCE  300    seconds of clock skew signing.verify accepts by default
WEBHOOK_SECRET_ROTATION_WINDOW 86400.0 seconds the previous secret keeps signing after a rotation
WEBHOOK_RETRY_BUDGET_RATIO   0.1    retries to one host per window: at most this share of its first attempts...
WEBHOOK_RETRY_BUDGET_MIN     3      ...but always at least this many (a quiet host's deliveries still drain);
WEBHOOK_RETRY_BUDGET_WINDOW  60.0   over this many seconds (and the window before). A retry over budget
                                    is deferred, never dropped (webhooks/retry_budget.py)
WEBHOOK_ALLOWED_PRIVATE_NETWORKS ()  CIDRs a receiver may resolve to although not public (loopback,
                                    private, link-local...); empty in production, loopback in
                                    local and test settings. Cloud metadata addresses are never allowed.
"""

import ipaddress
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class WebhookSettings:
    max_attempts: int = 8
    backoff_base: float = 30.0
    backoff_cap: float = 3600.0
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    lease_seconds: float | None = None
    dispatch_batch: int = 500
    deliver_time_budget: float = 10.0
    retention_days: float = 7.0
    signature_tolerance: int = 300
    delivery_deadline: float = 10.0
    secret_rotation_window: float = 86400.0
    allowed_private_networks: tuple[str, ...] = ()
    retry_budget_ratio: float = 0.1
    retry_budget_min: int = 3
    retry_budget_window: float = 60.0

    def __post_init__(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append("WEBHOOK_MAX_ATTEMPTS must be >= 1")
        if not 0 < self.backoff_base <= self.backoff_cap:
            problems.append("WEBHOOK_BACKOFF_BASE must be > 0 and <= WEBHOOK_BACKOFF_CAP")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            problems.append("WEBHOOK_CONNECT_TIMEOUT and WEBHOOK_READ_TIMEOUT must be > 0")
        if self.lease_seconds is not None and self.lease_seconds <= 0:
            problems.append("WEBHOOK_LEASE_SECONDS must be > 0 (or None)")
        if self.dispatch_batch < 1 or self.deliver_time_budget <= 0 or self.retention_days <= 0:
            problems.append(
                "WEBHOOK_DISPATCH_BATCH, WEBHOOK_DELIVER_TIME_BUDGET and WEBHOOK_RETENTION_DAYS must be > 0"
            )
        if self.signature_tolerance < 1:
            problems.append("WEBHOOK_SIGNATURE_TOLERANCE must be >= 1")
        if self.delivery_deadline <= 0:
            problems.append("WEBHOOK_DELIVERY_DEADLINE must be > 0")
        if self.secret_rotation_window < 0:
            problems.append("WEBHOOK_SECRET_ROTATION_WINDOW must be >= 0")
        if not 0 <= self.retry_budget_ratio <= 100 or self.retry_budget_min < 1 or self.retry_budget_window <= 0:
            problems.append(
                "WEBHOOK_RETRY_BUDGET_RATIO must be in [0, 100], WEBHOOK_RETRY_BUDGET_MIN >= 1 (or deferred retries "
                "could wait forever) and WEBHOOK_RETRY_BUDGET_WINDOW > 0"
            )
        if isinstance(self.allowed_private_networks, str):
            problems.append("WEBHOOK_ALLOWED_PRIVATE_NETWORKS must be a list of CIDRs, not one string")
        else:
            for cidr in self.allowed_private_networks:
                try:
                    ipaddress.ip_network(cidr)  # strict: "10.0.0.1/8" is a typo, not a network
                except ValueError as exc:
                    problems.append(f"WEBHOOK_ALLOWED_PRIVATE_NETWORKS: {exc}")
        if problems:
            raise ImproperlyConfigured("; ".join(problems))

    @property
    def lease(self) -> float:
        """Seconds a claim lasts: longer than one attempt can take, so a live worker never loses it."""
        if self.lease_seconds is not None:
            return self.lease_seconds
        return self.delivery_deadline + 30.0

    @property
    def attempt_deadline(self) -> float:
        """Seconds one attempt may take in all: the delivery deadline, never past the lease."""
        return min(self.delivery_deadline, self.lease)

    @property
    def private_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The allowed non-public networks, parsed (validated in __post_init__)."""
        return tuple(ipaddress.ip_network(cidr) for cidr in self.allowed_private_networks)


_NAMES = {
    "max_attempts": "WEBHOOK_MAX_ATTEMPTS",
    "backoff_base": "WEBHOOK_BACKOFF_BASE",
    "backoff_cap": "WEBHOOK_BACKOFF_CAP",
    "connect_timeout": "WEBHOOK_CONNECT_TIMEOUT",
    "read_timeout": "WEBHOOK_READ_TIMEOUT",
    "lease_seconds": "WEBHOOK_LEASE_SECONDS",
    "dispatch_batch": "WEBHOOK_DISPATCH_BATCH",
    "deliver_time_budget": "WEBHOOK_DELIVER_TIME_BUDGET",
    "retention_days": "WEBHOOK_RETENTION_DAYS",
    "signature_tolerance": "WEBHOOK_SIGNATURE_TOLERANCE",
    "delivery_deadline": "WEBHOOK_DELIVERY_DEADLINE",
    "secret_rotation_window": "WEBHOOK_SECRET_ROTATION_WINDOW",
    "allowed_private_networks": "WEBHOOK_ALLOWED_PRIVATE_NETWORKS",
    "retry_budget_ratio": "WEBHOOK_RETRY_BUDGET_RATIO",
    "retry_budget_min": "WEBHOOK_RETRY_BUDGET_MIN",
    "retry_budget_window": "WEBHOOK_RETRY_BUDGET_WINDOW",
}


def webhook_settings() -> WebhookSettings:
    """Return the current settings; raise ImproperlyConfigured if one is invalid."""
    values = {field: getattr(settings, name) for field, name in _NAMES.items() if hasattr(settings, name)}
    if isinstance(values.get("allowed_private_networks"), list):
        values["allowed_private_networks"] = tuple(values["allowed_private_networks"])
    try:
        return WebhookSettings(**values)
    except TypeError as exc:  # a value of the wrong type compared with a number
        raise ImproperlyConfigured(f"invalid WEBHOOK_* setting: {exc}") from exc
