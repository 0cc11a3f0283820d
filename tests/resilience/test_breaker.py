"""Circuit breaker: one behaviour suite against both storages (the state Redis and in-process), then
what only the shared storage can do (several processes), fallback while Redis is down, and settings."""

import multiprocessing
import threading

import pytest

from resilience.breaker import (
    BreakerOptions,
    CircuitBreaker,
    CircuitOpenError,
    MemoryStorage,
    State,
    add_listener,
    all_breakers,
    describe,
    get_breaker,
    guard,
    options_for,
)
from resilience.breaker.checks import check_breaker_settings
from resilience.breaker.dependencies import declared_names
from resilience.breaker.redis_storage import RedisStorage
from tests.stack import wait_for

FAST = {"open_seconds": 0.3, "minimum_calls": 4, "window_size": 10, "consecutive_failures": 0}


@pytest.fixture(params=["redis", "memory"])
def make_breaker(request):
    """Build breakers pinned to one storage (no fallback), so each run tests exactly that storage."""
    storage = RedisStorage() if request.param == "redis" else MemoryStorage()

    def make(name: str = "dep", **options) -> CircuitBreaker:
        return CircuitBreaker(name, BreakerOptions(**{**FAST, **options}), storage=storage)

    return make


def _fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)


def _succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        assert breaker.call(lambda: "ok") == "ok"


def _probe(breaker: CircuitBreaker):
    """Return a permit once the open period has elapsed (None while the breaker still rejects)."""
    try:
        return breaker.allow()
    except CircuitOpenError:
        return None


def _open(breaker: CircuitBreaker) -> None:
    _fail(breaker, breaker.options.minimum_calls)
    assert breaker.state == State.OPEN


def test_opens_when_failure_rate_reaches_threshold_after_minimum_calls(make_breaker):
    breaker = make_breaker()
    _succeed(breaker)
    _fail(breaker)
    _succeed(breaker)
    assert breaker.state == State.CLOSED  # 1 of 3 failed, and 3 calls are below minimum_calls
    _fail(breaker)  # 2 of 4: 50 %
    snapshot = breaker.snapshot()
    assert snapshot.state == State.OPEN
    assert snapshot.transitions[0]["reason"] == "failure rate 50% of last 4 calls"
    assert (snapshot.window_calls, snapshot.window_failures, snapshot.failure_rate) == (4, 2, 50.0)
    assert snapshot.last_error == "ZeroDivisionError: division by zero"
    assert snapshot.next_probe_at == pytest.approx(snapshot.opened_at + 0.3)


def test_opens_after_consecutive_failures_below_minimum_calls(make_breaker):
    breaker = make_breaker(minimum_calls=10, consecutive_failures=3)
    _fail(breaker, 2)
    _succeed(breaker)
    _fail(breaker, 2)
    assert breaker.state == State.CLOSED
    _fail(breaker)
    assert breaker.state == State.OPEN
    assert breaker.snapshot().transitions[0]["reason"] == "3 consecutive failures"


def test_rejects_fast_without_calling_while_open(make_breaker):
    breaker = make_breaker(open_seconds=60)
    _open(breaker)
    called = []
    with pytest.raises(CircuitOpenError) as error:
        breaker.call(called.append, 1)
    assert called == []
    assert error.value.state == State.OPEN
    assert 0 < error.value.retry_after <= 60


def test_half_open_admits_exactly_k_concurrent_probes(make_breaker):
    breaker = make_breaker(half_open_max_calls=3, success_threshold=3)
    _open(breaker)
    first = wait_for(lambda: _probe(breaker), timeout=10, message="the open period to elapse")
    assert breaker.state == State.HALF_OPEN
    start, admitted, rejected = threading.Barrier(12), [], []

    def contend():
        start.wait(timeout=10)
        try:
            admitted.append(breaker.allow())
        except CircuitOpenError as exc:
            rejected.append(exc.state)

    threads = [threading.Thread(target=contend) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(admitted) == 2  # with `first`, exactly K = 3 probes in flight
    assert rejected == [State.HALF_OPEN] * 10
    assert breaker.snapshot().half_open_in_flight == 3
    first.success()
    assert breaker.state == State.HALF_OPEN


def test_closes_after_s_successful_probes(make_breaker):
    breaker = make_breaker(half_open_max_calls=3, success_threshold=2)
    _open(breaker)
    first = wait_for(lambda: _probe(breaker), timeout=10, message="the open period to elapse")
    second, third = breaker.allow(), breaker.allow()
    first.success()
    assert breaker.state == State.HALF_OPEN
    second.success()
    snapshot = breaker.snapshot()
    assert snapshot.state == State.CLOSED
    assert [(t["from"], t["to"]) for t in snapshot.transitions] == [
        ("HALF_OPEN", "CLOSED"),
        ("OPEN", "HALF_OPEN"),
        ("CLOSED", "OPEN"),
    ]
    assert snapshot.window_calls == 0
    third.failure(RuntimeError("late"))  # a probe of a finished half-open period changes nothing
    assert breaker.state == State.CLOSED


def test_reopens_when_a_probe_fails(make_breaker):
    breaker = make_breaker()
    _open(breaker)
    probe = wait_for(lambda: _probe(breaker), timeout=10, message="the open period to elapse")
    probe.failure(TimeoutError("still down"))
    snapshot = breaker.snapshot()
    assert snapshot.state == State.OPEN
    assert snapshot.transitions[0]["reason"] == "probe failed"
    assert snapshot.last_error == "TimeoutError: still down"
    with pytest.raises(CircuitOpenError):
        breaker.allow()


def test_a_probe_never_reported_is_released_after_the_permit_timeout(make_breaker):
    breaker = make_breaker(half_open_max_calls=1, success_threshold=1, permit_timeout_seconds=0.3)
    _open(breaker)
    wait_for(lambda: _probe(breaker), timeout=10, message="the open period to elapse")  # lost, never reported
    with pytest.raises(CircuitOpenError):
        breaker.allow()
    replacement = wait_for(lambda: _probe(breaker), timeout=10, message="the lost permit to expire")
    replacement.success()
    assert breaker.state == State.CLOSED


def test_excluded_exceptions_and_interrupts_do_not_count(make_breaker):
    breaker = make_breaker(consecutive_failures=2, excluded_exceptions=(KeyError,))
    for _ in range(5):
        with pytest.raises(KeyError), breaker.call():
            raise KeyError("not found is an answer, not an outage")
    breaker.allow().failure(KeyboardInterrupt())
    breaker.allow().release()
    assert breaker.state == State.CLOSED
    assert breaker.snapshot().window_calls == 0


def test_slow_successes_count_as_failures(make_breaker):
    breaker = make_breaker(consecutive_failures=2, slow_call_seconds=1.0)
    breaker.allow().success(duration=0.5)
    breaker.allow().success(duration=1.5)
    assert breaker.state == State.CLOSED
    breaker.allow().success(duration=2.0)
    snapshot = breaker.snapshot()
    assert snapshot.state == State.OPEN
    assert snapshot.window_slow == 2


def test_outcome_of_a_permit_from_before_a_transition_is_ignored(make_breaker):
    breaker = make_breaker(open_seconds=60)
    early = breaker.allow()
    _open(breaker)
    early.success()
    early.failure(RuntimeError("reported twice"))  # the second report of a permit is ignored too
    snapshot = breaker.snapshot()
    assert snapshot.state == State.OPEN
    assert snapshot.last_error == "ZeroDivisionError: division by zero"


def test_forced_states_and_reset_are_recorded_transitions(make_breaker):
    breaker = make_breaker()
    breaker.force_open("maintenance window")
    with pytest.raises(CircuitOpenError) as error:
        breaker.allow()
    assert error.value.state == State.FORCED_OPEN
    breaker.force_close("vendor says it is fine")
    _fail(breaker, 10)  # forced closed: admitted, and not counted
    assert breaker.state == State.FORCED_CLOSED
    breaker.reset("operator reset")
    snapshot = breaker.snapshot()
    assert snapshot.state == State.CLOSED
    assert snapshot.last_error is None
    assert [(t["from"], t["to"], t["reason"]) for t in snapshot.transitions] == [
        ("FORCED_CLOSED", "CLOSED", "operator reset"),
        ("FORCED_OPEN", "FORCED_CLOSED", "vendor says it is fine"),
        ("CLOSED", "FORCED_OPEN", "maintenance window"),
    ]


def test_transition_history_is_capped(make_breaker):
    breaker = make_breaker(transitions_kept=3)
    for i in range(5):
        breaker.reset(f"reset {i}")
    assert [t["reason"] for t in breaker.snapshot().transitions] == ["reset 4", "reset 3", "reset 2"]


def test_listeners_see_every_transition_and_cannot_break_calls(make_breaker):
    seen = []
    add_listener(lambda t: seen.append((t.name, t.from_state, t.to_state)))
    add_listener(lambda t: 1 / 0)
    breaker = make_breaker("listened")
    _open(breaker)
    breaker.reset()
    assert seen == [("listened", State.CLOSED, State.OPEN), ("listened", State.OPEN, State.CLOSED)]


def _fail_calls(name: str, options: BreakerOptions, times: int, done) -> None:
    breaker = CircuitBreaker(name, options)
    for _ in range(times):
        try:
            breaker.call(lambda: 1 / 0)
        except ZeroDivisionError:
            pass
    done.put((breaker.degraded, str(breaker.state)))


def test_state_is_shared_between_processes():
    options = BreakerOptions(**{**FAST, "open_seconds": 60})
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()
    child = ctx.Process(target=_fail_calls, args=("shared", options, 4, done))
    child.start()
    assert done.get(timeout=60) == (False, "OPEN")
    child.join(timeout=30)
    breaker = CircuitBreaker("shared", options)
    with pytest.raises(CircuitOpenError):
        breaker.allow()
    assert not breaker.degraded
    assert "shared" in all_breakers()


def _contend(name: str, options: BreakerOptions, barrier, results) -> None:
    try:
        import django

        django.setup()  # a spawned child starts from scratch (fork could inherit a held lock from a thread)
        barrier.wait(timeout=60)
        CircuitBreaker(name, options).allow()  # held, never reported
        results.put("admitted")
    except CircuitOpenError:
        results.put("rejected")
    except BaseException as exc:  # report, so the parent fails with the reason instead of a timeout
        results.put(f"error: {exc!r}")


def test_half_open_admits_exactly_k_probes_across_processes():
    options = BreakerOptions(**{**FAST, "half_open_max_calls": 3, "permit_timeout_seconds": 60})
    breaker = CircuitBreaker("fleet", options)
    _open(breaker)
    wait_for(lambda: _probe(breaker), timeout=10, message="the open period to elapse").release()
    assert breaker.state == State.HALF_OPEN
    assert breaker.snapshot().half_open_in_flight == 0
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    workers = [ctx.Process(target=_contend, args=("fleet", options, barrier, results)) for _ in range(6)]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
    assert outcomes == ["admitted"] * 3 + ["rejected"] * 3


def test_falls_back_to_an_in_process_breaker_while_the_state_redis_is_down(state_down):
    transitions = []
    add_listener(transitions.append)
    breaker = CircuitBreaker("payments", BreakerOptions(**{**FAST, "consecutive_failures": 2, "open_seconds": 60}))
    _succeed(breaker)  # Redis is down: the call is still made
    assert breaker.degraded
    _fail(breaker, 2)
    with pytest.raises(CircuitOpenError):
        breaker.allow()
    assert breaker.snapshot().degraded
    assert [(t.to_state, t.degraded) for t in transitions] == [(State.OPEN, True)]
    assert "payments" in all_breakers()
    state_down()  # start it again: the shared state is used once the back-off has passed

    def shared_permit():
        permit = breaker.allow()  # the shared breaker never saw the failures: it is CLOSED
        return None if breaker.degraded else permit

    wait_for(shared_permit, timeout=10, message="the breaker to use Redis again")
    assert not breaker.snapshot().degraded


def test_options_come_from_patterns_then_exact_names(settings):
    settings.RESILIENCE_BREAKERS = {
        "*": {"open_seconds": 30},
        "webhook:*": {"failure_rate_threshold": 25, "excluded_exceptions": ["builtins.LookupError"]},
        "webhook:slow.example": {"open_seconds": 120},
    }
    assert options_for("payments") == BreakerOptions(open_seconds=30)
    assert options_for("webhook:example.com") == BreakerOptions(
        open_seconds=30, failure_rate_threshold=25, excluded_exceptions=(LookupError,)
    )
    assert get_breaker("webhook:slow.example").options.open_seconds == 120
    assert set(all_breakers()) - declared_names() == {"webhook:slow.example"}
    assert check_breaker_settings() == []
    settings.RESILIENCE_BREAKERS = {"bad": {"success_threshold": 5, "half_open_max_calls": 3}}
    assert [e.id for e in check_breaker_settings()] == ["resilience.E010"]


# --- guards: the hot-path view of a shared breaker (resilience/breaker/guard.py) ---
GUARDED = {"consecutive_failures": 3, "open_seconds": 0.5, "half_open_max_calls": 1, "success_threshold": 1}


@pytest.fixture
def guarded(settings):
    settings.RESILIENCE_BREAKERS = {"dep:guarded": GUARDED}
    settings.RESILIENCE_BREAKER_SYNC_SECONDS = 0.2
    return guard("dep:guarded")


def test_guard_learns_a_forced_state_within_one_sync_interval_without_a_redis_call_per_call(guarded):
    from bench.roundtrips import counting

    assert guarded.allows()
    get_breaker("dep:guarded").force_open("drill")  # another process, say the admin's
    wait_for(lambda: not guarded.allows(), timeout=5, message="the guard to see the forced state")
    with counting() as counts:
        refused = sum(1 for _ in range(2000) if not guarded.allows())
    assert refused == 2000
    # At most one HMGET per sync interval (plus the replica monitor's own, if it runs in this process).
    assert counts.total() < 50
    get_breaker("dep:guarded").reset("drill over")
    wait_for(guarded.allows, timeout=5, message="the guard to see the reset")


def test_guard_records_failures_at_once_and_successes_only_while_they_matter(guarded):
    breaker = get_breaker("dep:guarded")
    for _ in range(1000):
        assert guarded.allows()
        guarded.success()
    assert breaker.snapshot().window_calls == 0  # no bad outcome: successes were not sent
    guarded.allows()
    guarded.failure(ConnectionError("refused"))
    snap = breaker.snapshot()
    assert (snap.window_failures, snap.last_error) == (1, "ConnectionError: refused")
    for _ in range(5):
        guarded.allows()
        guarded.success()
    # Sent with the next sync, which a later call makes once the interval has passed.
    wait_for(
        lambda: guarded.allows() and breaker.snapshot().window_calls >= 6,
        timeout=5,
        message="the successes to be sent in a batch",
    )
    assert breaker.snapshot().consecutive_failures == 0
    for _ in range(3):
        assert guarded.allows()
        guarded.failure(ConnectionError("refused"))
    assert breaker.state == State.OPEN and not guarded.allows()  # this process knows at once
    # After the open period one probe goes through; its success closes the breaker for everyone.
    wait_for(guarded.allows, timeout=5, message="a probe")
    assert breaker.state == State.HALF_OPEN
    guarded.success()
    assert breaker.state == State.CLOSED and guarded.allows()


def test_guard_falls_back_to_this_process_breaker_while_the_state_redis_is_down(guarded, state_down):
    for _ in range(3):
        assert guarded.allows()
        guarded.failure(ConnectionError("refused"))
    wait_for(lambda: not guarded.allows(), timeout=5, message="the local breaker to open")
    assert guarded.breaker.degraded
    state_down()  # back: the shared state (never told of the failures) is CLOSED
    wait_for(guarded.allows, timeout=10, message="the guard to use the shared state again")


def test_declared_dependencies_are_listed_before_their_first_use_with_their_group():
    names = all_breakers()
    for name in ("redis:cache", "db:default", "db:default_r0", "db:shard_0", "db:shard_0_r1", "db:shard_1_r0"):
        assert name in names, name
    assert describe("db:shard_0") == ("Databases", "shard_0 primary")
    assert describe("db:shard_0_r1")[0] == "Databases"
    assert describe("redis:cache") == ("Redis", "cache Redis")
    assert describe("webhook:example.com")[0] == "Webhooks"
    assert options_for("redis:cache").consecutive_failures == 3  # the declaration's defaults
