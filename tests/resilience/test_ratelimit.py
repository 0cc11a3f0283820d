"""Rate limiter against the real state Redis: exactness across processes, headers, keys, outages."""

import multiprocessing

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory

from resilience.ratelimit import (
    Policy,
    all_policies,
    check,
    client_ip,
    denied_counts,
    evaluate,
    get_policy,
    headers,
    parse_rate,
    peek,
    request_key,
    reset_key,
    top_denied,
)
from resilience.ratelimit.checks import check_ratelimit_settings
from tests.stack import wait_for

ALGORITHMS = ["sliding_window", "token_bucket", "fixed_window"]
WINDOW_START_MS = 28_000_000 * 60_000  # a clock override aligned to a minute


class _User:
    is_authenticated = True
    pk = 42


def test_builtin_policies_apply_when_the_setting_is_absent():
    assert get_policy("auth.token") == Policy("auth.token", 5, 60, "ip+username", "sliding_window", "closed")
    assert get_policy("users.register") == Policy("users.register", 10, 3600, "ip", "sliding_window", "closed")
    assert get_policy("api.write") == Policy("api.write", 120, 60, "user", "token_bucket", "open")
    assert get_policy("admin.login") == Policy("admin.login", 10, 60, "ip", "fixed_window", "closed")
    assert get_policy("auth.token.ip") == Policy("auth.token.ip", 10, 60, "ip", "sliding_window", "closed")
    assert get_policy("auth.token.username") == Policy(
        "auth.token.username", 30, 3600, "username", "sliding_window", "closed"
    )
    assert get_policy("api.concurrent") == Policy("api.concurrent", 20, 60, "user", "concurrency", "open")
    assert set(all_policies()) == {
        "api.concurrent",
        "auth.token",
        "auth.token.ip",
        "auth.token.username",
        "auth.bad_token",
        "users.register",
        "api.read",
        "api.write",
        "users.views",
        "admin.login",
    }


def test_settings_override_defaults_field_by_field_and_add_policies(settings):
    settings.RESILIENCE_RATELIMIT_POLICIES = {
        "auth.token": {"rate": "3/m"},
        "reports": {"rate": "100/30s", "key": "user", "fail": "closed"},
    }
    assert get_policy("auth.token") == Policy("auth.token", 3, 60, "ip+username", "sliding_window", "closed")
    assert get_policy("reports") == Policy("reports", 100, 30, "user", "sliding_window", "closed")
    assert get_policy("api.read").limit == 600
    with pytest.raises(LookupError):
        get_policy("nope")


@pytest.mark.parametrize(
    ("rate", "expected"), [("5/m", (5, 60)), ("10/h", (10, 3600)), ("100/30s", (100, 30)), ("1/d", (1, 86400))]
)
def test_parse_rate(rate, expected):
    assert parse_rate(rate) == expected


def test_invalid_policy_fails_the_system_check(settings):
    settings.RESILIENCE_RATELIMIT_POLICIES = {"bad": {"rate": "5 per minute"}}
    assert [e.id for e in check_ratelimit_settings()] == ["resilience.E001"]
    settings.RESILIENCE_RATELIMIT_POLICIES = {"bad": {"rate": "5/m", "algorithm": "leaky"}}
    with pytest.raises(ImproperlyConfigured):
        get_policy("bad")
    settings.RESILIENCE_RATELIMIT_POLICIES = {"a|b": {"rate": "5/m"}}  # "|" separates policy and key in stats
    assert [e.id for e in check_ratelimit_settings()] == ["resilience.E001"]
    settings.RESILIENCE_RATELIMIT_POLICIES = {}
    settings.RESILIENCE_TRUSTED_PROXIES = ["10.0.0.0/33"]
    assert [e.id for e in check_ratelimit_settings()] == ["resilience.E002"]


def _fire(policy_name: str, key: str, count: int, barrier, results) -> None:
    barrier.wait(timeout=30)
    results.put(sum(check(policy_name, key).allowed for _ in range(count)))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_exactly_limit_requests_pass_when_four_processes_race(settings, algorithm):
    settings.RESILIENCE_RATELIMIT_POLICIES = {"race": {"rate": "10/h", "key": "ip", "algorithm": algorithm}}
    ctx = multiprocessing.get_context("fork")  # like gunicorn workers: forked after settings are loaded
    barrier, results = ctx.Barrier(4), ctx.Queue()
    workers = [ctx.Process(target=_fire, args=("race", "ip:198.51.100.1", 10, barrier, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    allowed = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert sum(allowed) == 10
    assert not peek("race", "ip:198.51.100.1").allowed


def test_sliding_window_headers_and_retry_after_are_exact():
    policy = Policy("login", 3, 60, "ip")
    now = WINDOW_START_MS + 30_000  # half-way through a window
    decisions = [evaluate(policy, "k", now_ms=now) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert headers(decisions[0]) == {"RateLimit-Policy": "3;w=60", "RateLimit": "limit=3, remaining=2, reset=30"}
    # 3 requests in this window: the next one fits once the window has turned and they weigh 2/3 less
    assert decisions[3].retry_after == 30 + 20
    assert headers(decisions[3]) == {
        "RateLimit-Policy": "3;w=60",
        "RateLimit": "limit=3, remaining=0, reset=50",
        "Retry-After": "50",
    }
    assert not evaluate(policy, "k", cost=0, now_ms=now + 49_999).allowed
    assert evaluate(policy, "k", now_ms=now + 50_000).allowed


def test_sliding_window_weighs_the_previous_window():
    policy = Policy("w", 10, 60, "ip")
    for _ in range(10):
        assert evaluate(policy, "k", now_ms=WINDOW_START_MS + 59_000).allowed
    # 15 s into the next window the previous 10 weigh 7.5: two more fit, a third does not
    later = WINDOW_START_MS + 75_000
    assert [evaluate(policy, "k", now_ms=later).allowed for _ in range(3)] == [True, True, False]


def test_sliding_window_counts_live_until_the_next_window_ends():
    """Only the first request of a window sets the hash's expiry (the end of the next window, the same
    moment for all of them); every later one keeps it, and a new window moves it on."""
    from resilience.ratelimit.limiter import state_key, state_redis

    policy = Policy("expiry", 100, 60, "ip")
    name = state_key(policy, "k")
    state_redis().delete(name)
    for offset in (1_000, 30_000, 59_000):  # one window: its end + 60 s is 119 s after its first request
        evaluate(policy, "k", now_ms=WINDOW_START_MS + offset)
        assert 118_000 < state_redis().pttl(name) <= 119_000
    evaluate(policy, "k", now_ms=WINDOW_START_MS + 61_000)  # the next window: 119 s after its start
    assert 118_000 < state_redis().pttl(name) <= 119_000
    state_redis().delete(name)


def test_token_bucket_refills_continuously():
    policy = Policy("tb", 3, 60, "ip", "token_bucket")
    decisions = [evaluate(policy, "k", now_ms=WINDOW_START_MS) for _ in range(4)]
    assert [(d.allowed, d.remaining) for d in decisions] == [(True, 2), (True, 1), (True, 0), (False, 0)]
    assert decisions[0].reset == 20  # one token missing, 20 s per token
    assert decisions[3].retry_after == 20
    assert headers(decisions[3])["Retry-After"] == "20"
    assert not evaluate(policy, "k", now_ms=WINDOW_START_MS + 19_999).allowed
    assert evaluate(policy, "k", now_ms=WINDOW_START_MS + 20_000).allowed


def test_fixed_window_policies_count_with_django_ratelimit():
    # django-ratelimit owns the fixed window (its own cache keys on the state Redis); we only adapt it.
    policy = Policy("fw", 2, 60, "ip", "fixed_window")
    decisions = [evaluate(policy, "k") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert [d.remaining for d in decisions] == [1, 0, 0]
    assert 0 < decisions[2].retry_after <= 60


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_peek_does_not_count_and_reset_key_forgets(settings, algorithm):
    settings.RESILIENCE_RATELIMIT_POLICIES = {"p": {"rate": "2/h", "algorithm": algorithm}}
    assert check("p", "k").remaining == 1
    assert peek("p", "k").remaining == 1
    assert peek("p", "k").remaining == 1
    assert check("p", "k").allowed
    assert not check("p", "k").allowed
    assert not peek("p", "k").allowed
    assert reset_key("p", "k") is True
    assert check("p", "k").remaining == 1
    assert reset_key("p", "other") is False


def test_denials_are_recorded_per_key_and_per_policy(settings):
    settings.RESILIENCE_RATELIMIT_POLICIES = {"a": {"rate": "1/h"}, "b": {"rate": "1/h", "algorithm": "token_bucket"}}
    for _ in range(4):
        check("a", "ip:203.0.113.1")
    for _ in range(2):
        check("a", "ip:203.0.113.2")
        check("b", "user:7")
    peek("a", "ip:203.0.113.1")  # a peek is not a denial
    assert top_denied(minutes=5) == [("a", "ip:203.0.113.1", 3), ("a", "ip:203.0.113.2", 1), ("b", "user:7", 1)]
    assert denied_counts(minutes=5) == {"a": 4, "b": 1}


def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies():
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="1.2.3.4")
    assert client_ip(request) == "203.0.113.9"


def test_right_most_untrusted_forwarded_address_is_the_client(settings):
    settings.RESILIENCE_TRUSTED_PROXIES = ["10.0.0.0/8", "192.0.2.1"]
    factory = RequestFactory()
    # the client sent "1.2.3.4" itself; our proxies appended 203.0.113.9 and 10.0.0.7
    request = factory.get("/", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.9, 192.0.2.1")
    assert client_ip(request) == "203.0.113.9"
    # a REMOTE_ADDR outside the trusted proxies is the client, whatever the header says
    assert client_ip(factory.get("/", REMOTE_ADDR="198.51.100.3", HTTP_X_FORWARDED_FOR="10.0.0.1")) == "198.51.100.3"
    # only proxies in the chain, or a malformed hop: the nearest trusted address, never the forged part
    assert client_ip(factory.get("/", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="10.1.1.1")) == "10.1.1.1"
    assert client_ip(factory.get("/", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="1.2.3.4, junk")) == "10.0.0.5"
    assert client_ip(factory.get("/", REMOTE_ADDR="10.0.0.5")) == "10.0.0.5"


def test_request_keys_follow_the_policy_key_kind(settings):
    settings.RESILIENCE_RATELIMIT_POLICIES = {"tok": {"rate": "1/m", "key": "token"}}
    factory = RequestFactory()
    anonymous = factory.get("/", REMOTE_ADDR="203.0.113.9")
    anonymous.user = AnonymousUser()
    assert request_key("api.read", anonymous) == "ip:203.0.113.9"
    signed_in = factory.get("/", REMOTE_ADDR="203.0.113.9")
    signed_in.user = _User()
    assert request_key("api.read", signed_in) == "user:42"
    assert request_key("auth.token", anonymous, username=" Alice ") == "ip:203.0.113.9|username:alice"
    v6 = factory.get("/", REMOTE_ADDR="2001:db8:1:2:3:4:5:6")
    assert request_key("users.register", v6) == "ip:2001:db8:1:2::/64"
    with_token = factory.get("/", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret")
    key = request_key("tok", with_token)
    assert key.startswith("token:")
    assert "s3cret" not in key
    assert request_key("tok", anonymous) == "ip:203.0.113.9"


def test_state_redis_down_open_policies_admit_closed_policies_deny(state_down):
    read = check("api.read", "ip:203.0.113.9")
    login = check("auth.token", "ip:203.0.113.9|username:alice")
    assert (read.allowed, read.degraded, read.remaining) == (True, True, None)
    assert (login.allowed, login.degraded, login.remaining) == (False, True, None)
    assert 1 <= login.retry_after <= 5
    assert headers(read) == {"RateLimit-Policy": "600;w=60"}
    assert headers(login) == {"RateLimit-Policy": "5;w=60", "Retry-After": str(login.retry_after)}
    assert peek("auth.token", "ip:203.0.113.9|username:alice").degraded
    state_down()  # start it again: checks use Redis again once the outage back-off has passed

    def shared_decision():
        decision = check("auth.token", "k")
        return None if decision.degraded else decision

    recovered = wait_for(shared_decision, timeout=10, message="checks to use Redis again")
    assert recovered.allowed
    assert recovered.remaining == 4
