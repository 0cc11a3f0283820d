"""The adaptive concurrency limit (resilience/overload/): the Gradient2 controller driven with synthetic
latencies, priority classes shed in order (the limiter's in-flight count driven by hand, then real
requests through the app), the priority header, the 503 answer, shadow mode, the off switch and the
exported metrics. No test depends on timing: in-flight requests are held by taking slots directly."""

import json
import threading

import pytest
from django.test import Client

from resilience import overload
from resilience.overload import ADMITTED, REFUSED, SHADOWED, GroupLimiter, Options, Priority
from resilience.overload.gradient import Gradient2Limit
from resilience.overload.limiter import CALM_WINDOWS, ShedState
from tests.factories import TokenFactory, UserFactory
from tests.stack import wait_for

MS = 0.001


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def fresh_limiters():
    """Every test starts from new limiters (learnt limits and counts are per process)."""
    overload.reset()
    yield
    overload.reset()


def fill(limiter: GroupLimiter, count: int) -> None:
    """Hold `count` slots of `limiter`, as requests in flight would."""
    for _ in range(count):
        assert limiter.acquire(Priority.CRITICAL) == ADMITTED


# --- the controller ---
def test_limit_grows_while_latency_holds_up_to_the_ceiling():
    controller = Gradient2Limit(limit=10, floor=4, ceiling=60)
    controller.update(5 * MS, in_flight=10)  # the first window only sets the averages
    assert controller.current == 10 and controller.min_rtt == 5 * MS
    seen = [controller.update(5.2 * MS, in_flight=controller.current) for _ in range(200)]
    assert seen == sorted(seen) and seen[5] > 10  # grows, window after window
    assert controller.current == 60  # and stops at the ceiling


def test_limit_shrinks_under_queueing_down_to_the_floor():
    controller = Gradient2Limit(limit=50, floor=12, ceiling=60)
    controller.update(5 * MS, in_flight=50)
    # Six times the usual latency, every window: requests wait on each other.
    seen = [controller.update(30 * MS, in_flight=controller.current) for _ in range(60)]
    assert seen == sorted(seen, reverse=True) and seen[0] < 50
    assert controller.current == 12  # not below the floor


def test_limit_settles_where_latency_grows_with_it_instead_of_drifting_to_the_ceiling():
    """A processor-sharing server: above 10 in flight, latency grows with the limit. Gradient2's long
    average would follow it up and the limit drift back to the ceiling; anchored to min_rtt it holds."""
    controller = Gradient2Limit(limit=100, floor=4, ceiling=200)
    controller.update(5 * MS, in_flight=100)
    seen = []
    for _ in range(400):
        limit = controller.current
        seen.append(controller.update(5 * MS * max(1.0, limit / 10), in_flight=limit))
    assert max(seen[-100:]) < 40 and min(seen[-100:]) > 10


def test_a_limit_half_unused_neither_grows_nor_shrinks():
    controller = Gradient2Limit(limit=40, floor=4, ceiling=60)
    controller.update(5 * MS, in_flight=40)
    assert controller.update(5 * MS, in_flight=10) == 40  # no queue, but 10 of 40 used: an idle process
    assert controller.update(50 * MS, in_flight=10) == 40  # slow, but not from its own concurrency


def test_min_rtt_is_relearnt_so_a_lasting_slowdown_does_not_pin_the_limit_to_the_floor():
    controller = Gradient2Limit(limit=20, floor=4, ceiling=60)
    controller.update(5 * MS, in_flight=20)
    controller.relearn_min_rtt(20 * MS)  # a dependency got slower for good
    for _ in range(80):
        controller.update(20 * MS, in_flight=controller.current)
    assert controller.current > 20  # 20 ms is now the usual latency: the limit grows again


def test_group_limiter_moves_its_limit_once_per_window_and_its_class_caps_with_it():
    clock = FakeClock()
    windows = []
    limiter = GroupLimiter(
        "reads",
        Options(initial_limit=20, floor=10, ceiling=100, window_seconds=0.1, window_samples=5),
        clock=clock,
        on_window=windows.append,
    )
    assert (limiter.cap(Priority.SHEDDABLE), limiter.cap(Priority.DEFAULT), limiter.cap(Priority.CRITICAL)) == (
        10,
        18,
        20,
    )

    def window(rtt: float, in_flight: int) -> None:
        fill(limiter, in_flight)
        clock.now += 0.1
        for _ in range(in_flight):
            limiter.release(rtt)

    for _ in range(5):  # the first learns the latency, the others grow the limit
        window(5 * MS, limiter.limit)
    assert limiter.limit > 20 and limiter.cap(Priority.CRITICAL) == limiter.limit
    assert limiter.cap(Priority.SHEDDABLE) == int(limiter.limit * 0.5)
    for _ in range(40):
        window(30 * MS, limiter.limit)
    assert limiter.limit == 10 and limiter.cap(Priority.SHEDDABLE) == 5
    assert windows[-1].limit == 10 and windows[-1].min_rtt == 5 * MS and windows[-1].peak_in_flight == 10
    fill(limiter, 3)
    clock.now += 0.01
    limiter.release(5 * MS)  # fewer samples than a window, too soon: no new window
    assert len(windows) == 45


# --- priority classes, in the limiter ---
def test_sheddable_is_refused_first_then_default_and_critical_only_when_the_limit_is_full():
    limiter = GroupLimiter("reads", Options(initial_limit=10, floor=10, ceiling=10, queue_size=0))
    fill(limiter, 5)
    assert limiter.acquire(Priority.SHEDDABLE) == REFUSED  # 5 of 10: sheddable's half is used
    assert [limiter.acquire(Priority.DEFAULT) for _ in range(5)] == [ADMITTED] * 4 + [REFUSED]  # up to 9
    assert limiter.acquire(Priority.CRITICAL) == ADMITTED  # the tenth
    assert limiter.acquire(Priority.CRITICAL) == REFUSED  # nothing left
    assert limiter.in_flight == 10
    assert limiter.refused == {Priority.CRITICAL: 1, Priority.DEFAULT: 1, Priority.SHEDDABLE: 1}


def test_a_request_over_its_share_waits_in_the_bounded_queue_for_a_released_slot():
    limiter = GroupLimiter("writes", Options(initial_limit=10, floor=10, ceiling=10, queue_size=1, queue_timeout=30.0))
    fill(limiter, 10)
    verdicts = []
    waiter = threading.Thread(target=lambda: verdicts.append(limiter.acquire(Priority.CRITICAL)))
    waiter.start()
    wait_for(lambda: limiter.snapshot()["waiting"] == 1, timeout=10, message="the request to queue")
    assert limiter.acquire(Priority.DEFAULT) == REFUSED  # the queue holds one: the next is refused at once
    assert limiter.acquire(Priority.SHEDDABLE) == REFUSED  # and sheddable never waits
    limiter.release(1 * MS)
    waiter.join(timeout=10)
    assert verdicts == [ADMITTED] and limiter.in_flight == 10


def test_a_queued_request_is_refused_when_its_wait_runs_out():
    limiter = GroupLimiter("writes", Options(initial_limit=10, floor=10, ceiling=10, queue_size=4, queue_timeout=0.01))
    fill(limiter, 10)
    assert limiter.acquire(Priority.CRITICAL) == REFUSED
    assert limiter.snapshot()["waiting"] == 0


def test_shadow_mode_admits_what_it_would_refuse_and_counts_it():
    limiter = GroupLimiter("reads", Options(initial_limit=10, floor=10, ceiling=10, shadow=True))
    fill(limiter, 10)
    assert limiter.acquire(Priority.SHEDDABLE) == SHADOWED
    assert limiter.acquire(Priority.CRITICAL) == SHADOWED
    assert limiter.in_flight == 12
    assert limiter.shadowed[Priority.SHEDDABLE] == 1 and sum(limiter.refused.values()) == 0


# --- through the app ---
@pytest.fixture
def fixed_limit(settings):
    """A limit of 10 in every group (floor = ceiling), no queue: shares are 5 / 9 / 10; enforced."""
    settings.RESILIENCE_ADAPTIVE_SHADOW = False
    settings.RESILIENCE_ADAPTIVE_INITIAL_LIMIT = 10
    settings.RESILIENCE_ADAPTIVE_MIN_LIMIT = 10
    settings.RESILIENCE_ADAPTIVE_MAX_LIMIT = 10
    settings.RESILIENCE_ADAPTIVE_QUEUE_SIZE = 0
    return settings


@pytest.fixture
def profile(real_db):
    user = UserFactory()
    return {"user": user, "token": TokenFactory(username=user["username"])}


def read_profile(client: Client, user_id, **headers):
    return client.get(f"/api/v1/users/{user_id}/", headers=headers)


def read_me(client: Client, token, **headers):
    return client.get("/api/v1/users/me/", headers={"Authorization": f"Token {token}", **headers})


def test_the_app_sheds_anonymous_reads_first_and_serves_token_calls_until_the_limit_is_full(
    fixed_limit, profile, client
):
    reads = overload.limiter("reads")
    uid, token = profile["user"]["id"], profile["token"]
    assert read_profile(client, uid).status_code == 200
    fill(reads, 5)
    assert read_profile(client, uid).status_code == 503  # sheddable: over half the limit
    assert read_me(client, token).status_code == 200  # critical
    fill(reads, 4)  # 9 in flight: default's share is used too
    assert client.get("/api/v1/no-such-endpoint/").status_code == 503  # unregistered: default
    assert read_me(client, token).status_code == 200  # critical takes the tenth slot
    fill(reads, 1)
    assert read_me(client, token).status_code == 503  # nothing left at all
    assert client.get("/health/live").status_code == 200  # health checks are never limited
    writes = overload.limiter("writes")
    assert writes.in_flight == 0  # each group has its own limit
    assert client.post(f"/api/v1/users/{uid}/views/").status_code == 202
    assert reads.refused == {Priority.CRITICAL: 1, Priority.DEFAULT: 1, Priority.SHEDDABLE: 1}


def test_an_idempotent_write_retry_is_critical_and_a_plain_view_is_sheddable(fixed_limit, profile, client):
    uid = profile["user"]["id"]
    fill(overload.limiter("writes"), 9)
    assert client.post(f"/api/v1/users/{uid}/views/").status_code == 503
    retried = client.post(f"/api/v1/users/{uid}/views/", headers={"Idempotency-Key": "retry-0001"})
    assert retried.status_code == 202


def test_a_trusted_proxy_may_lower_a_priority_never_raise_it(fixed_limit, profile, client):
    uid, token = profile["user"]["id"], profile["token"]
    fill(overload.limiter("reads"), 5)
    # Not from a trusted proxy: the header is ignored either way.
    assert read_me(client, token, **{"X-Bulwark-Priority": "sheddable"}).status_code == 200
    fixed_limit.RESILIENCE_TRUSTED_PROXIES = ["127.0.0.1"]  # the test client's address
    reads = overload.limiter("reads")  # still 5 in flight
    assert read_me(client, token, **{"X-Bulwark-Priority": "sheddable"}).status_code == 503  # lowered
    assert read_me(client, token, **{"X-Bulwark-Priority": "bogus"}).status_code == 200  # unknown: ignored
    assert read_profile(client, uid, **{"X-Bulwark-Priority": "critical"}).status_code == 503  # not raised
    assert reads.refused[Priority.SHEDDABLE] == 2


def test_a_refusal_is_a_503_with_retry_after_and_the_json_error_naming_the_request(fixed_limit, profile, client):
    fixed_limit.RESILIENCE_ADAPTIVE_RETRY_AFTER = 2
    fill(overload.limiter("reads"), 10)
    response = read_profile(client, profile["user"]["id"])
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body["code"] == "overloaded" and body["detail"]
    assert body["request_id"] == response["X-Request-ID"]


def test_shadow_mode_through_the_app_refuses_nothing_and_counts_would_have_refused(fixed_limit, profile, client):
    fixed_limit.RESILIENCE_ADAPTIVE_SHADOW = True
    reads = overload.limiter("reads")
    fill(reads, 10)
    assert read_profile(client, profile["user"]["id"]).status_code == 200
    assert read_me(client, profile["token"]).status_code == 200
    assert reads.shadowed == {Priority.CRITICAL: 1, Priority.DEFAULT: 0, Priority.SHEDDABLE: 1}
    assert sum(reads.refused.values()) == 0
    scrape = client.get("/metrics").content.decode()
    assert 'bulwark_adaptive_refusals_total{group="reads",mode="shadow",priority="sheddable"}' in scrape


def test_the_setting_turns_the_limit_off(fixed_limit, profile, client):
    fixed_limit.RESILIENCE_ADAPTIVE_ENABLED = False
    reads = overload.limiter("reads")
    fill(reads, 10)
    assert read_profile(client, profile["user"]["id"]).status_code == 200
    assert reads.in_flight == 10 and sum(reads.refused.values()) == 0  # not even consulted


def test_limit_min_rtt_in_flight_and_refusals_are_exported_per_group_and_class(fixed_limit, profile, client):
    fixed_limit.RESILIENCE_ADAPTIVE_WINDOW_SAMPLES = 1
    fixed_limit.RESILIENCE_ADAPTIVE_WINDOW_SECONDS = 0.0  # every finished request closes a window
    uid = profile["user"]["id"]
    for _ in range(2):
        assert read_profile(client, uid).status_code == 200
    fill(overload.limiter("reads"), 10)
    assert read_profile(client, uid).status_code == 503
    scrape = client.get("/metrics").content.decode()
    for line in (
        'bulwark_adaptive_concurrency_limit{group="reads"} 10.0',
        'bulwark_adaptive_min_rtt_seconds{group="reads"}',
        'bulwark_adaptive_in_flight_peak{group="reads"}',
        'bulwark_adaptive_refusals_total{group="reads",mode="refused",priority="sheddable"}',
    ):
        assert line in scrape, line


def test_the_overview_shows_each_groups_limit_and_refusals_per_class(fixed_limit, admin_client, profile):
    fill(overload.limiter("reads"), 10)
    Client().get(f"/api/v1/users/{profile['user']['id']}/")
    body = admin_client.get("/admin/bulwark/overview/").content.decode()
    assert "Adaptive concurrency (this process)" in body
    panel = body[body.index('id="panel-adaptive"') :]
    assert "<td>reads</td><td>10</td>" in panel and "<td>0 / 0 / 1</td>" in panel
    assert "<td>writes</td>" in panel and "<td>admin</td>" in panel


def test_invalid_settings_fail_the_system_check(settings):
    from resilience.checks import check_adaptive_limit_settings

    assert check_adaptive_limit_settings() == []
    settings.RESILIENCE_ADAPTIVE_MIN_LIMIT = 500  # above the ceiling
    assert [e.id for e in check_adaptive_limit_settings()] == ["resilience.E040"]
    settings.RESILIENCE_ADAPTIVE_MIN_LIMIT = 4
    settings.RESILIENCE_ADAPTIVE_SHARES = {"sheddable": 0.9, "default": 0.5}  # out of order
    assert [e.id for e in check_adaptive_limit_settings()] == ["resilience.E040"]


def test_while_critical_requests_are_pressed_less_important_classes_are_shed_outright_then_readmitted():
    clock = FakeClock()
    limiter = GroupLimiter(
        "reads",
        Options(initial_limit=10, floor=10, ceiling=10, queue_size=0, window_seconds=0.1, window_samples=1),
        clock=clock,
    )

    def close_window():
        assert limiter.acquire(Priority.CRITICAL) != REFUSED
        clock.now += 0.1
        limiter.release(5 * MS)

    fill(limiter, 10)
    assert limiter.acquire(Priority.CRITICAL) == REFUSED  # pressed
    for _ in range(10):
        limiter.release(5 * MS)  # all done: in-flight is back to 0
    close_window()
    assert limiter.shed_level == 1
    assert limiter.acquire(Priority.SHEDDABLE) == REFUSED  # nothing in flight, still shed
    assert limiter.acquire(Priority.DEFAULT) == ADMITTED
    limiter.release(5 * MS)
    fill(limiter, 10)
    assert limiter.acquire(Priority.CRITICAL) == REFUSED  # pressed again: default goes too
    for _ in range(10):
        limiter.release(5 * MS)
    close_window()
    assert limiter.shed_level == 2
    assert limiter.acquire(Priority.DEFAULT) == REFUSED and limiter.acquire(Priority.SHEDDABLE) == REFUSED
    assert limiter.acquire(Priority.CRITICAL) == ADMITTED
    limiter.release(5 * MS)
    for _ in range(CALM_WINDOWS):  # calm windows (the shed classes' refusals do not count as pressure)
        assert limiter.acquire(Priority.DEFAULT) == REFUSED
        close_window()
    assert limiter.shed_level == 1 and limiter.acquire(Priority.DEFAULT) == ADMITTED
    limiter.release(5 * MS)
    for _ in range(CALM_WINDOWS):
        close_window()
    assert limiter.shed_level == 0 and limiter.acquire(Priority.SHEDDABLE) == ADMITTED


def test_a_critical_request_pressed_in_one_group_sheds_sheddable_requests_of_the_others():
    clock = FakeClock()
    shed = ShedState()
    options = Options(initial_limit=10, floor=10, ceiling=10, queue_size=0, window_seconds=0.1, window_samples=1)
    reads = GroupLimiter("reads", options, clock=clock, shed=shed)
    writes = GroupLimiter("writes", options, clock=clock, shed=shed)
    fill(reads, 10)
    assert reads.acquire(Priority.CRITICAL) == REFUSED
    clock.now += 0.1
    reads.release(5 * MS)  # closes the reads window: the process sheds sheddable
    assert writes.acquire(Priority.SHEDDABLE) == ADMITTED  # writes has not closed a window since
    clock.now += 0.1
    writes.release(5 * MS)
    assert writes.acquire(Priority.SHEDDABLE) == REFUSED and writes.in_flight == 0
    assert writes.acquire(Priority.CRITICAL) == ADMITTED


def test_the_limit_ships_in_shadow_mode():
    """Dark launch: it learns and counts by default, and refuses only once an operator enforces it."""
    assert overload.options().enabled and overload.options().shadow


def test_a_shed_class_is_refused_at_once_without_taking_a_place_in_the_queue():
    clock = FakeClock()
    limiter = GroupLimiter(
        "reads",
        Options(
            initial_limit=10,
            floor=10,
            ceiling=10,
            queue_size=4,
            queue_timeout=30.0,
            window_seconds=0.1,
            window_samples=1,
        ),
        clock=clock,
    )
    for _ in range(2):  # two windows with a critical request refused: sheddable and default are shed
        fill(limiter, 10)
        limiter._waiting = limiter.options.queue_size  # the queue is full: refused at once
        assert limiter.acquire(Priority.CRITICAL) == REFUSED
        limiter._waiting = 0
        clock.now += 0.1
        for _ in range(10):
            limiter.release(5 * MS)
    assert limiter.shed_level == 2 and limiter.in_flight == 0
    # The fake clock never moves: a request that queued would wait for ever for a slot that cannot come.
    verdicts = []
    waiter = threading.Thread(target=lambda: verdicts.append(limiter.acquire(Priority.DEFAULT)), daemon=True)
    waiter.start()
    waiter.join(timeout=10)
    assert verdicts == [REFUSED], "a shed request queued"
