"""Concurrent-requests limiter over the real stack: slots in the real state Redis, requests held open by
a real row lock in PostgreSQL, served by real server processes (one of them SIGKILLed)."""

import json
import os
import signal
import threading
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack, contextmanager, suppress

import pytest
from django.db import connections, transaction
from django.http import StreamingHttpResponse
from django.test import RequestFactory
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from resilience.errors import ApiError
from resilience.ratelimit import concurrency, denied_counts, get_policy, peek
from resilience.ratelimit.drf import RateLimitedApiMixin
from resilience.ratelimit.limiter import state_key
from tests.factories import UserFactory
from tests.processes import web_server
from tests.stack import ROOT, free_port, wait_for
from users import services
from users.models import User
from users.sharding.access import group_for_user_id


# --- in-process views: release on error, on close, for streamed bodies; shadow mode ---
class HeldView(RateLimitedApiMixin, APIView):
    """Answers with whatever `self.outcome` says; takes a slot of "test.conc" per client address."""

    permission_classes = [AllowAny]
    concurrency_policy = "test.conc"
    rate_limits = {"GET": "test.rate"}
    outcome = "ok"

    def get(self, request):
        if self.outcome == "raise":
            raise RuntimeError("a bug in the view")
        if self.outcome == "api_error":
            raise ApiError(400, "bad input", "invalid")
        if self.outcome == "stream":
            return StreamingHttpResponse(iter([b"a", b"b"]))
        return Response({"ok": True})


@pytest.fixture
def conc(settings):
    settings.RESILIENCE_RATELIMIT_POLICIES = {
        "test.conc": {"algorithm": "concurrency", "limit": 1, "expiry": 60, "key": "ip"},
        "test.rate": {"rate": "1000/h", "key": "ip"},
    }
    return settings


def call(outcome: str = "ok"):
    return HeldView.as_view(outcome=outcome)(RequestFactory().get("/held/", REMOTE_ADDR="198.51.100.7"))


def held(state_redis) -> int:
    return state_redis.zcard(state_key(get_policy("test.conc"), "ip:198.51.100.7"))


def test_a_slot_is_held_until_the_response_is_closed_and_a_second_request_gets_429(conc, state_redis_db):
    first = call()
    assert first.status_code == 200 and held(state_redis_db) == 1

    second = call()
    assert second.status_code == 429
    assert second["Retry-After"] == "1"
    assert second["RateLimit"] == "limit=1, remaining=0, reset=60"
    assert json.loads(second.rendered_content)["code"] == "rate_limited"

    first.close()  # the server has sent the body
    assert held(state_redis_db) == 0
    assert call().status_code == 200
    assert denied_counts(minutes=1) == {"test.conc": 1}


def test_a_streamed_response_keeps_its_slot_until_its_body_is_sent(conc, state_redis_db):
    response = call("stream")
    assert held(state_redis_db) == 1
    assert b"".join(response.streaming_content) == b"ab"
    response.close()
    assert held(state_redis_db) == 0


@pytest.mark.parametrize("outcome", ["raise", "api_error"])
def test_a_request_that_fails_gives_its_slot_back(conc, state_redis_db, outcome):
    for _ in range(3):  # with a limit of 1, a leaked slot would answer the second call 429
        if outcome == "raise":
            with pytest.raises(RuntimeError):
                call("raise")
        else:
            response = call("api_error")
            assert response.status_code == 400
            response.close()
        assert held(state_redis_db) == 0


def test_shadow_mode_refuses_nothing_and_counts_exactly(conc, state_redis_db):
    conc.RESILIENCE_RATELIMIT_POLICIES = {
        "test.conc": {"algorithm": "concurrency", "limit": 2, "key": "ip", "mode": "shadow"},
        "test.rate": {"rate": "3/h", "key": "ip", "mode": "shadow"},
    }
    responses = [call() for _ in range(5)]  # all five in flight at once

    assert [r.status_code for r in responses] == [200] * 5
    assert not any(r.has_header("Retry-After") or r.has_header("RateLimit") for r in responses)
    # The rate policy would have denied 2 of 5 (3 per hour); the concurrency policy 3 of 5 (2 in flight).
    assert denied_counts(minutes=1, shadow=True) == {"test.rate": 2, "test.conc": 3}
    assert denied_counts(minutes=1) == {}  # nothing was refused
    for response in responses:
        response.close()
    assert held(state_redis_db) == 0


@contextmanager
def commands_received(state_redis):
    """The commands the state Redis server receives during the block, seen by MONITOR on a connection of
    its own (every client's: the caller filters), as its "EVALSHA <sha> <numkeys> <key>..." strings."""
    seen: list[str] = []
    end = f"end-of-block-{uuid.uuid4().hex}"
    with state_redis.monitor() as monitor:  # MONITOR is on once this returns (its OK was read)

        def collect():
            for received in monitor.listen():
                if end in received["command"]:
                    return
                seen.append(received["command"])

        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        yield seen
        state_redis.echo(end)
        collector.join(timeout=30)
        assert not collector.is_alive(), "MONITOR did not see the end of the block"


def limiter_calls(commands: list[str], *policies: str) -> list[str]:
    return [c for c in commands if c.startswith("EVALSHA ") and any(p in c for p in policies)]


def test_the_rate_checks_and_the_slot_go_to_the_state_redis_in_one_call(conc, state_redis_db):
    conc.RESILIENCE_RATELIMIT_POLICIES = {
        **conc.RESILIENCE_RATELIMIT_POLICIES,
        "test.conc": {"algorithm": "concurrency", "limit": 5, "expiry": 60, "key": "ip"},
    }
    call().close()  # the server learns the script (a first EVALSHA answers NOSCRIPT)
    with commands_received(state_redis_db) as commands:
        response = call()
    assert response.status_code == 200 and held(state_redis_db) == 1
    calls = limiter_calls(commands, "test.rate", "test.conc")
    assert len(calls) == 1, calls  # one EVALSHA, with both policies' keys: one network wait
    assert "test.rate" in calls[0] and "test.conc" in calls[0]
    response.close()
    assert held(state_redis_db) == 0


class TwoRatesView(HeldView):
    rate_limits = {"GET": ("test.rate", "test.burst")}  # test.burst is checked first, then test.rate


@pytest.mark.parametrize("denied_by", ["test.burst", "test.rate"])
def test_a_request_a_rate_policy_denies_takes_no_slot_and_later_checks_count_nothing(conc, state_redis_db, denied_by):
    conc.RESILIENCE_RATELIMIT_POLICIES = {
        "test.conc": {"algorithm": "concurrency", "limit": 5, "expiry": 60, "key": "ip"},
        "test.rate": {"rate": "1/h" if denied_by == "test.rate" else "1000/h", "key": "ip"},
        "test.burst": {
            "rate": "1/h" if denied_by == "test.burst" else "1000/h",
            "key": "ip",
            "algorithm": "token_bucket",
        },
    }
    view = TwoRatesView.as_view()
    first = view(RequestFactory().get("/held/", REMOTE_ADDR="198.51.100.7"))
    assert first.status_code == 200 and held(state_redis_db) == 1

    second = view(RequestFactory().get("/held/", REMOTE_ADDR="198.51.100.7"))
    assert second.status_code == 429
    assert second["RateLimit-Policy"] == "1;w=3600"  # the policy that denied
    assert held(state_redis_db) == 1  # only the first request's
    assert denied_counts(minutes=1) == {denied_by: 1}  # no concurrency denial recorded either
    if denied_by == "test.burst":  # checked first: test.rate did not count the denied request
        assert peek("test.rate", "ip:198.51.100.7").remaining == 999
    first.close()
    assert held(state_redis_db) == 0


def test_a_rate_policy_in_shadow_mode_does_not_stop_the_slot_being_taken(conc, state_redis_db):
    conc.RESILIENCE_RATELIMIT_POLICIES = {
        "test.conc": {"algorithm": "concurrency", "limit": 5, "expiry": 60, "key": "ip"},
        "test.rate": {"rate": "1/h", "key": "ip", "mode": "shadow"},
    }
    responses = [call(), call()]
    assert [r.status_code for r in responses] == [200, 200]
    assert held(state_redis_db) == 2
    assert denied_counts(minutes=1, shadow=True) == {"test.rate": 1}
    for response in responses:
        response.close()
    assert held(state_redis_db) == 0


def test_expired_slots_are_removed_by_the_next_acquire_even_while_others_are_held(conc, state_redis_db):
    """Deterministic, on a clock override: a slot taken at 0 ms expires at 3,000 ms; a slot taken at
    2,000 ms (a busy key, whose set never expires as a whole) is still held at 3,500 ms."""
    conc.RESILIENCE_RATELIMIT_POLICIES = {"test.conc": {"algorithm": "concurrency", "limit": 2, "expiry": 3}}
    policy = get_policy("test.conc")
    start = 1_900_000_000_000
    _, dead = concurrency.acquire(policy, "k", now_ms=start)  # its process is killed: never released
    _, live = concurrency.acquire(policy, "k", now_ms=start + 2000)
    denied, _ = concurrency.acquire(policy, "k", now_ms=start + 2999)
    assert not denied.allowed and denied.retry_after == 1
    admitted, taken = concurrency.acquire(policy, "k", now_ms=start + 3500)
    assert admitted.allowed and admitted.remaining == 0
    members = {m.decode() for m in state_redis_db.zrange(state_key(policy, "k"), 0, -1)}
    assert members == {live.token, taken.token}


def test_state_redis_down_a_fail_open_policy_admits_without_a_slot(conc, state_down):
    response = call()
    assert response.status_code == 200
    assert call().status_code == 200  # limit 1, but nothing is counted while Redis is out
    response.close()  # nothing to release: no error


# --- across real server processes ---
def server_settings(tmp_path, *, limit: int, expiry: int) -> dict:
    """Environment for a server process whose api.concurrent policy has `limit` and `expiry`."""
    (tmp_path / "conc_settings.py").write_text(
        "from project.settings.test import *  # noqa\n"
        "RESILIENCE_RATELIMIT_POLICIES = {**RESILIENCE_RATELIMIT_POLICIES, 'api.concurrent': "
        f"{{'limit': {limit}, 'expiry': {expiry}}}}}\n"
    )
    return {
        "DJANGO_SETTINGS_MODULE": "conc_settings",
        "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }


def request(port: int, method: str, token: str, body: dict | None = None, path: str = "/api/v1/users/me/") -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310 (a local test server)
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@contextmanager
def row_locked(user_id: int):
    """Hold the user's row lock on its shard: every PATCH of it waits in PostgreSQL until we leave."""
    alias = group_for_user_id(user_id)
    with transaction.atomic(using=alias):
        User.objects.using(alias).select_for_update().filter(id=user_id).first()
        yield alias


def waiting_on_locks(alias: str) -> int:
    """Server-side: sessions of the shard's database waiting for a lock now (the held requests)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def hold(port: int, token: str) -> None:
    """PATCH and wait; the server is killed mid-request, so no answer comes."""
    with suppress(OSError):
        request(port, "PATCH", token, {"display_name": "held"})


@pytest.fixture
def user_and_token(real_db):
    user = UserFactory()
    token, _ = services.token_create(username=user["username"], password="a-long-pass-2026")
    return user["id"], token


def test_five_in_flight_across_two_server_processes_the_other_45_get_429(tmp_path, user_and_token, state_redis_db):
    user_id, token = user_and_token
    env = server_settings(tmp_path, limit=5, expiry=120)
    ports = [free_port(), free_port()]
    slots = state_key(get_policy("api.concurrent"), f"user:{user_id}")
    statuses: list[int] = []
    most_in_flight = 0

    def patch(port: int) -> None:
        statuses.append(request(port, "PATCH", token, {"display_name": "held"}))

    with ExitStack() as servers:
        for i, port in enumerate(ports):
            servers.enter_context(web_server(port=port, env=env, log_path=tmp_path / f"server{i}.log"))
        with row_locked(user_id) as alias:
            threads = [threading.Thread(target=patch, args=(ports[i % 2],)) for i in range(50)]
            for thread in threads:
                thread.start()

            def all_refused_answered() -> bool:
                nonlocal most_in_flight
                most_in_flight = max(most_in_flight, state_redis_db.zcard(slots))
                return len(statuses) == 45

            wait_for(all_refused_answered, timeout=60, interval=0.01, message="45 answers")
            assert statuses == [429] * 45
            assert most_in_flight == 5
            assert state_redis_db.zcard(slots) == 5
            # Exactly five requests reach the database (a slot is taken before the view runs, so the
            # last of the five may still be on its way to the lock when the 45th refusal is answered).
            wait_for(lambda: waiting_on_locks(alias) >= 5, timeout=30, message="five requests waiting on the lock")
            assert waiting_on_locks(alias) == 5
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(statuses) == [200] * 5 + [429] * 45
        # A slot is given back when the server closes the response, just after the client has read it.
        wait_for(lambda: state_redis_db.zcard(slots) == 0, timeout=10, message="every slot given back")


TOKENS = "/api/v1/auth/tokens/"  # a read that takes an api.concurrent slot (GET /users/me/ is a cached read: none)


def test_a_slot_of_a_sigkilled_server_is_freed_once_it_expires(tmp_path, user_and_token, state_redis_db):
    user_id, token = user_and_token
    # The expiry leaves the survivor's first answers (a fresh process on a busy machine) well inside it.
    env = server_settings(tmp_path, limit=1, expiry=10)
    doomed_port, survivor_port = free_port(), free_port()
    slots = state_key(get_policy("api.concurrent"), f"user:{user_id}")

    with web_server(port=survivor_port, env=env, log_path=tmp_path / "survivor.log"):
        with row_locked(user_id):
            with web_server(port=doomed_port, env=env, log_path=tmp_path / "doomed.log") as doomed:
                holder = threading.Thread(target=hold, args=(doomed_port, token))
                holder.start()
                wait_for(lambda: state_redis_db.zcard(slots) == 1, timeout=30, message="the PATCH to hold its slot")
                assert request(survivor_port, "GET", token, path=TOKENS) == 429
                os.killpg(doomed.pid, signal.SIGKILL)
                doomed.wait(timeout=15)
            assert request(survivor_port, "GET", token, path=TOKENS) == 429  # the dead process never gave it back...
            # ...but it expires: within the policy's 10 s a request is admitted again.
            wait_for(
                lambda: request(survivor_port, "GET", token, path=TOKENS) == 200,
                timeout=30,
                message="the slot to expire",
            )
        holder.join(timeout=30)
    assert state_redis_db.zcard(slots) == 0


# --- where api.concurrent applies: every operation of the documented URLs, never the anonymous read ---
def test_every_operation_of_the_authenticated_urls_takes_an_api_concurrent_slot():
    """docs/architecture.md, "Limits in the request path": /users/ (both operations), the edits and
    deletion of /users/me/, the token URLs; not the two cached reads nor the views endpoint. One class
    per operation means a new class must name the policy again: this catches one that does not."""
    from django.urls import resolve

    def operations(path):
        callback = resolve(path).func
        classes = set(getattr(callback, "routes", {}).values()) or {callback}
        return {route.cls for route in classes}

    for path in ("/api/v1/users/", "/api/v1/auth/token/", "/api/v1/auth/tokens/", "/api/v1/auth/tokens/7/"):
        for api in operations(path):
            assert api.concurrency_policy == "api.concurrent", (path, api.__name__)
    me = {api.__name__: api.concurrency_policy for api in operations("/api/v1/users/me/")}
    assert me == {"UserMeApi": None, "UserMeUpdateApi": "api.concurrent", "UserMeDeleteApi": "api.concurrent"}
    for path in ("/api/v1/users/7/", "/api/v1/users/7/views/"):
        for api in operations(path):
            assert api.concurrency_policy is None, (path, api.__name__)
