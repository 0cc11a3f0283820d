"""The per-caller cap on new Idempotency-Keys, through the real API against the real state Redis."""

import pytest
from django.test import Client

from project.db import pinning
from resilience import idempotency
from users import selectors

from ..stack import run_together

REGISTER = "/api/v1/users/"
PASSWORD = "Correct-Horse-2026"
ALICE, BOB = "203.0.113.7", "203.0.113.8"


@pytest.fixture
def capped(settings):
    settings.RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER = 5
    settings.RESILIENCE_RATELIMIT_POLICIES = {"users.register": {"rate": "10000/h"}}  # this test is not about it


def register(address: str, name: str, key: str | None):
    headers = {"Idempotency-Key": key} if key else {}
    body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
    return Client(REMOTE_ADDR=address).post(REGISTER, body, content_type="application/json", headers=headers)


def users() -> int:
    with pinning.use_primary():  # a replica may not have replayed the last registration yet
        return sum(selectors.user_count_per_shard().values())


def test_the_sixth_new_key_of_a_caller_gets_429_and_other_callers_are_unaffected(real_db, capped, state_redis_db):
    for n in range(5):
        assert register(ALICE, f"alice{n}", f"key-{n}").status_code == 201

    refused = register(ALICE, "alice5", "key-5")

    assert refused.status_code == 429
    assert refused.json()["code"] == "idempotency_keys_exhausted"
    assert set(refused.json()) == {"detail", "code", "request_id"}
    assert 0 < int(refused["Retry-After"]) <= idempotency.IDEMPOTENCY_TTL
    assert users() == 5  # refused, not run without the guarantee
    assert not state_redis_db.exists(f"idem:{{idem:ip:{BOB}}}:callers")

    replay = register(ALICE, "alice0", "key-0")  # a retry with a known key is still answered
    assert replay.status_code == 201 and replay["Idempotent-Replayed"] == "true"
    assert register(ALICE, "alice-nokey", None).status_code == 201  # no key: nothing is stored
    assert register(BOB, "bob0", "key-5").status_code == 201  # another caller has its own quota
    assert register(ALICE, "alice5", "key-5").status_code == 429
    assert users() == 7
    assert int(state_redis_db.get(f"idem:{{idem:ip:{ALICE}}}:callers")) == 5


def test_concurrent_new_keys_cannot_take_a_caller_past_the_cap(real_db, capped):
    codes = []
    names = iter(range(20))

    def one():
        n = next(names)
        codes.append(register(ALICE, f"racer{n}", f"race-{n}").status_code)

    run_together(one, 20)

    assert sorted(codes) == [201] * 5 + [429] * 15
    assert users() == 5


def test_a_keyed_request_is_refused_not_run_while_the_state_redis_is_down(real_db, state_down):
    """Found by the black-box pass: with the state Redis stopped, ten retries of one keyed view were
    counted ten times (written straight to the database without the key's record), and once more after
    the restart. A keyed request is now a 503 until the record can be kept; one without a key runs."""
    from tests.factories import UserFactory
    from users.writebehind import flush

    user = UserFactory()
    path = f"/api/v1/users/{user['id']}/views/"
    client = Client(REMOTE_ADDR="203.0.113.9")

    def views() -> int:
        response = client.get(f"/api/v1/users/{user['id']}/", headers={"Consistency": "strong"})
        return response.json()["view_count"]

    before = views()
    for _ in range(3):
        response = client.post(path, headers={"Idempotency-Key": "one-view"})
        assert response.status_code == 503, response.content
        assert response.json()["code"] == "idempotency_unavailable" and int(response["Retry-After"]) >= 1
    assert client.post(path).status_code == 202  # no key: written to the database directly
    assert views() == before + 1
    state_down()  # starts it again
    first = client.post(path, headers={"Idempotency-Key": "one-view"})
    again = client.post(path, headers={"Idempotency-Key": "one-view"})
    assert first.status_code == again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    flush.flush()
    assert views() == before + 2
