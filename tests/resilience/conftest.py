"""Fixtures for the resilience tests: a flushed state Redis DB per test, and a state Redis that can be
stopped. Run with REDIS_DB=5 so these tests never share a Redis DB with other test runs."""

import pytest

from resilience import overrides
from resilience.breaker import breaker as breaker_module
from resilience.breaker import forget_guards
from resilience.breaker.redis_storage import outage as breaker_outage
from resilience.ratelimit.scripts import outage as ratelimit_outage
from resilience.ratelimit.scripts import state_redis
from tests.stack import stack, wait_for


def _forget_process_state() -> None:
    ratelimit_outage.clear()
    breaker_outage.clear()
    overrides.forget()  # the flushed Redis holds none: no process-local copy of an override survives
    breaker_module.local_storage.clear()
    breaker_module.listeners.clear()
    forget_guards()


@pytest.fixture(autouse=True)
def state_redis_db():
    """Start every test from an empty state Redis DB and no remembered outage."""
    client = state_redis()
    try:
        client.flushdb()
    except Exception:  # a previous fault test may have left the state Redis down
        stack("start", "state")
        wait_for(client.flushdb, timeout=15, message="state Redis to come back")
    _forget_process_state()
    yield client
    _forget_process_state()


@pytest.fixture
def state_down(settings):
    """Stop the real state Redis for the test; yield a function that starts it again (which also
    happens afterwards, whatever the test did).

    RESILIENCE_STATE_RETRY_SECONDS is shortened so the code under test notices the restart quickly.
    """
    settings.RESILIENCE_STATE_RETRY_SECONDS = 0.2

    def start() -> None:
        stack("start", "state")
        wait_for(state_redis().ping, timeout=15, message="state Redis to answer again")

    stack("stop", "state")
    try:
        yield start
    finally:
        start()


@pytest.fixture(autouse=True)
def builtin_policies(settings):
    """Limiter tests see the built-in policies, not the relaxed ones of the test settings."""
    settings.RESILIENCE_RATELIMIT_POLICIES = {}
