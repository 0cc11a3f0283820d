"""The webhook tests run on the resilience tests' clean state Redis (breakers live there), with real
local receivers and fast timings."""

import pytest

from tests.resilience.conftest import builtin_policies, state_down, state_redis_db  # noqa: F401 (fixtures)

from .receiver import Receiver

FAST_BREAKER = {
    "open_seconds": 1.0,
    "consecutive_failures": 3,
    "minimum_calls": 3,
    "window_size": 10,
    "half_open_max_calls": 1,
    "success_threshold": 1,
}


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(host: str = "127.0.0.1") -> Receiver:
        made.append(Receiver(host))
        return made[-1]

    yield make
    for receiver in made:
        receiver.stop()


@pytest.fixture
def fast(settings):
    """Backoff in tens of milliseconds and a breaker that opens after 3 failures for 1 s; receivers on
    127.0.0.1 (allowed by the test settings) and 127.0.0.2 (allowed here)."""
    settings.WEBHOOK_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32", "127.0.0.2/32"]
    settings.WEBHOOK_BACKOFF_BASE = 0.05
    settings.WEBHOOK_BACKOFF_CAP = 0.2
    settings.WEBHOOK_CONNECT_TIMEOUT = 1.0
    settings.WEBHOOK_READ_TIMEOUT = 2.0
    settings.RESILIENCE_BREAKERS = {"webhook:*": FAST_BREAKER}
    settings.WEBHOOK_RETRY_BUDGET_MIN = 1000  # the retry budget has its own test (test_retry_budget.py)
    return settings
