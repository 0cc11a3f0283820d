"""Fixtures of the operations tests (dashboards, /metrics): the resilience tests' clean state Redis and
built-in policies, a day-long policy, and a breaker made to fail."""

import re

import pytest

from resilience.breaker import get_breaker
from tests.resilience.conftest import builtin_policies, state_down, state_redis_db  # noqa: F401 (fixtures)


@pytest.fixture
def daily(settings):
    """A policy whose window is a day, so no window boundary passes during a test (the built-in
    per-minute windows can roll over between a check and the page that shows it)."""
    settings.RESILIENCE_RATELIMIT_POLICIES = {
        "test.daily": {"rate": "5/d", "key": "ip+username", "algorithm": "sliding_window", "fail": "closed"}
    }
    return "test.daily"


def failing_breaker(name: str, failures: int = 5):
    breaker = get_breaker(name)
    for _ in range(failures):
        with pytest.raises(ConnectionError), breaker.call():
            raise ConnectionError("refused by the test")
    return breaker


def metric(body: str, metric_name: str, /, **labels) -> float | None:
    for line in body.splitlines():
        if not line.startswith(metric_name + "{") and not line.startswith(metric_name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None
