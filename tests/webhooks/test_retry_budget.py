"""Webhook retry budget over the real stack: a real local receiver answering 500s, the state Redis
counting first attempts and retries per host, PostgreSQL holding the deferred deliveries."""

import pytest
from django.utils import timezone

from webhooks import deliver, dispatch

from .test_webhooks import deliveries, make_users, subscribe

pytestmark = pytest.mark.usefixtures("real_db")


@pytest.fixture
def budget(fast):
    """A breaker that never opens (the budget, not the breaker, must be what holds retries back), a
    budget of 10 % of first attempts with a minimum of 3 per window, and a window and backoff longer than
    the test (it makes deliveries due itself)."""
    fast.RESILIENCE_BREAKERS = {"webhook:*": {"consecutive_failures": 0, "window_size": 1000, "minimum_calls": 1000}}
    fast.WEBHOOK_RETRY_BUDGET_RATIO = 0.1
    fast.WEBHOOK_RETRY_BUDGET_MIN = 3
    fast.WEBHOOK_RETRY_BUDGET_WINDOW = 3600.0
    fast.WEBHOOK_BACKOFF_BASE, fast.WEBHOOK_BACKOFF_CAP = 600.0, 600.0  # no retry comes due by itself
    return fast


def make_all_due() -> None:
    deliveries(status="pending").update(next_attempt_at=timezone.now())


def test_retries_to_a_failing_host_stay_within_the_budget_and_the_rest_are_deferred_not_dropped(receivers, budget):
    receiver = receivers()
    subscribe(receiver)
    receiver.status = 500
    make_users(20)
    dispatch.webhook_outbox_dispatch()

    first = deliver.webhook_deliveries_deliver_due()
    assert first == {"retrying": 20}  # 20 first attempts: a budget of max(3, 10 % of 20) = 3 retries

    make_all_due()
    second = deliver.webhook_deliveries_deliver_due()
    assert second == {"retrying": 3, "deferred": 17}
    assert len(receiver.requests) == 23  # the deferred retries sent nothing
    pending = deliveries(status="pending")
    assert pending.count() == 20 and not deliveries(status="dead").exists()
    # A deferred retry gave its attempt back and waits about a window (30-60 min here), not a backoff.
    assert sorted(pending.values_list("attempts", flat=True)) == [1] * 17 + [2] * 3
    deferred_until = min(d.next_attempt_at for d in pending.filter(attempts=1))
    assert (deferred_until - timezone.now()).total_seconds() > 1700

    # Twenty more first attempts earn one more retry: 10 % of 40 is 4, of which 3 are used.
    make_users(20, prefix="more")
    dispatch.webhook_outbox_dispatch()
    fresh = deliveries(status="pending", attempts=0)
    assert fresh.count() == 20
    assert deliver.webhook_deliveries_deliver_due() == {"retrying": 20}  # only the fresh ones were due
    assert len(receiver.requests) == 43
    make_all_due()
    assert deliver.webhook_deliveries_deliver_due() == {"retrying": 1, "deferred": 39}
    assert len(receiver.requests) == 44

    # The host recovers: deferred deliveries are still there and all arrive, once each.
    receiver.status = 200
    budget.WEBHOOK_RETRY_BUDGET_MIN = 1000
    make_all_due()
    deliver.webhook_deliveries_deliver_due()
    assert deliveries(status="delivered").count() == 40
    assert len(set(receiver.processed)) == 40 and not receiver.duplicates


def test_without_the_state_redis_retries_fail_open(receivers, budget, state_down):
    receiver = receivers()
    subscribe(receiver)
    receiver.status = 500
    budget.RESILIENCE_DEPENDENCY_BREAKERS = False  # breakers keep state in the same Redis
    make_users(5)
    dispatch.webhook_outbox_dispatch()
    assert deliver.webhook_deliveries_deliver_due() == {"retrying": 5}
    make_all_due()
    assert deliver.webhook_deliveries_deliver_due() == {"retrying": 5}  # over the minimum of 3, but sent
    assert len(receiver.requests) == 10
