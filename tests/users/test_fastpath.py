"""users/fastpath.py: GET /users/{id}/ and GET /users/me/ answered without DRF give exactly
UserDetailApi's and UserMeApi's answers, and hand every request they do not fully understand to DRF."""

from unittest import mock

import pytest
from django.db import connections
from django.test import Client
from django_redis import get_redis_connection

from users import services
from users.apis import UserDetailApi, UserMeApi
from users.sharding.access import group_for_user_id

from ..factories import TokenFactory
from .conftest import PASSWORD

# Headers whose values move from one request to the next (the limiter's remaining quota and reset).
MOVING = {"RateLimit", "X-Request-ID"}  # differ per request; the id is compared as a placeholder


ME = "/api/v1/users/me/"


def detail(user_id):
    return f"/api/v1/users/{user_id}/"


@pytest.fixture
def dispatches():
    """Count UserDetailApi dispatches: a spy on our own view, the real one still answers."""
    with mock.patch.object(UserDetailApi, "dispatch", autospec=True, side_effect=UserDetailApi.dispatch) as spy:
        yield spy


@pytest.fixture
def me_dispatches():
    """Count UserMeApi dispatches (the GET of /users/me/)."""
    with mock.patch.object(UserMeApi, "dispatch", autospec=True, side_effect=UserMeApi.dispatch) as spy:
        yield spy


def answer(settings, fast: bool, path: str, ip: str, **headers):
    settings.USERS_FAST_READ = fast
    response = Client(REMOTE_ADDR=ip).get(path, headers=headers)
    kept = {name: value for name, value in response.headers.items() if name not in MOVING}
    # Each request has its own id, named in error bodies: the same answer names its own request.
    body = response.content.replace(response["X-Request-ID"].encode(), b"<request id>")
    return response.status_code, kept, body


def assert_same_answer(settings, path, **headers):
    """The fast path and DRF answer alike; each mode gets its own client address, so neither one's
    limiter count shifts the other's."""
    fast = answer(settings, True, path, "10.9.0.1", **headers)
    drf = answer(settings, False, path, "10.9.0.2", **headers)
    assert fast == drf
    return fast


@pytest.fixture
def user(real_db):
    return services.user_create(username="fasty", email="fasty@example.com", password=PASSWORD)


def test_plain_reads_answer_like_drf_without_dispatching_it(settings, user, dispatches):
    status, headers, body = assert_same_answer(settings, detail(user["id"]))  # cold, then warm
    assert status == 200 and b'"username":"fasty"' in body
    assert headers["Allow"] == "GET, HEAD, OPTIONS" and "RateLimit-Policy" in headers
    assert "Vary" not in headers  # the session was not touched
    status, headers, body = assert_same_answer(settings, detail(user["id"]), **{"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"") and "Content-Type" not in headers
    assert assert_same_answer(settings, detail(user["id"]), **{"If-None-Match": '"r0.0"'})[0] == 200
    for unknown in ("12", "abc", "9" * 30, user["id"] + 1):
        status, _headers, body = assert_same_answer(settings, detail(unknown))
        assert (status, body) == (404, b'{"detail":"Not found.","code":"not_found","request_id":"<request id>"}')
    # Each assert_same_answer dispatched UserDetailApi once, for its DRF half only.
    assert dispatches.call_count == 7


def test_if_match_is_judged_alike_on_both_paths(settings, user):
    """A false If-Match is the same 412 from the fast path and from DRF, on both URLs (before
    If-None-Match: never a 304); a true one the same 200 or 304."""
    token = TokenFactory(username="fasty", password=PASSWORD)
    for path, auth in ((detail(user["id"]), {}), (ME, {"Authorization": f"Token {token}"})):
        tag = assert_same_answer(settings, path, **auth)[1]["ETag"]
        for false in ('"nope"', '"999.1.0"', f"W/{tag}"):
            status, _headers, body = assert_same_answer(settings, path, **{"If-Match": false}, **auth)
            assert status == 412 and b'"code":"precondition_failed"' in body
            assert assert_same_answer(settings, path, **{"If-Match": false, "If-None-Match": tag}, **auth)[0] == 412
        assert assert_same_answer(settings, path, **{"If-Match": tag}, **auth)[0] == 200
        assert assert_same_answer(settings, path, **{"If-Match": "*", "If-None-Match": tag}, **auth)[0] == 304


def test_pending_views_count_in_both(settings, user):
    assert Client().post(detail(user["id"]) + "views/").status_code == 202
    status, _headers, body = assert_same_answer(settings, detail(user["id"]))
    assert status == 200 and b'"view_count":1' in body


@pytest.mark.parametrize(
    ("path_suffix", "headers"),
    [
        ("", {"Accept": "text/html"}),  # DRF's 406
        ("", {"Accept": "application/json; q=0.9"}),
        ("", {"Accept": "application/json;q=0"}),  # refused: DRF's 406
        ("?format=json", {}),
        ("", {"Authorization": "Token not-a-token"}),  # DRF's 401
    ],
)
def test_requests_it_does_not_fully_understand_go_to_drf(settings, user, dispatches, path_suffix, headers):
    settings.USERS_FAST_READ = True
    Client().get(detail(user["id"]) + path_suffix, headers=headers)
    assert dispatches.call_count == 1


def test_a_token_holder_goes_to_drf_and_is_counted_by_user(settings, user, dispatches):
    settings.USERS_FAST_READ = True
    settings.RESILIENCE_RATELIMIT_POLICIES = {"api.read": {"rate": "1/m", "key": "user_or_ip"}}
    token = TokenFactory(username="fasty", password=PASSWORD)
    as_user = {"Authorization": f"Token {token}"}
    assert Client(REMOTE_ADDR="10.9.2.1").get(detail(user["id"]), headers=as_user).status_code == 200
    # Another address, the same user: the one allowed read is spent.
    assert Client(REMOTE_ADDR="10.9.2.2").get(detail(user["id"]), headers=as_user).status_code == 429
    # An anonymous caller from a third address is counted by its own address, on the fast path.
    assert Client(REMOTE_ADDR="10.9.2.3").get(detail(user["id"])).status_code == 200
    assert dispatches.call_count == 2


def test_head_goes_to_drf(settings, user, dispatches):
    settings.USERS_FAST_READ = True
    response = Client().head(detail(user["id"]))
    assert response.status_code == 200 and response.content == b"" and dispatches.call_count == 1


def test_a_denied_read_gets_the_same_429(settings, user):
    settings.RESILIENCE_RATELIMIT_POLICIES = {"api.read": {"rate": "1/m", "key": "user_or_ip"}}
    for fast, ip in ((True, "10.9.1.1"), (False, "10.9.1.2")):
        assert answer(settings, fast, detail(user["id"]), ip)[0] == 200
    fast = answer(settings, True, detail(user["id"]), "10.9.1.1")
    drf = answer(settings, False, detail(user["id"]), "10.9.1.2")
    assert fast[0] == 429 and fast[2] == drf[2]
    assert {"Retry-After", "RateLimit-Policy"} <= set(fast[1])
    assert set(fast[1]) == set(drf[1])


def test_limiting_off_still_answers(settings, user):
    settings.RESILIENCE_RATELIMIT_ENABLED = False
    status, headers, _body = assert_same_answer(settings, detail(user["id"]))
    assert status == 200 and "RateLimit-Policy" not in headers


def test_a_shard_that_refuses_connections_is_the_same_503(settings, request, real_db):
    for i in range(50):
        user = services.user_create(username=f"down{i}", email=f"down{i}@example.com", password=PASSWORD)
        if group_for_user_id(user["id"]) == "shard_1":
            break
    request.getfixturevalue("shard_1_down")
    get_redis_connection("default").flushdb()  # a cache miss: the shard must be asked
    for connection in connections.all():
        connection.close()
    status, headers, body = assert_same_answer(settings, detail(user["id"]))
    assert status == 503 and headers["Retry-After"] == "5" and b'"code":"shard_unavailable"' in body


def test_me_with_a_token_answers_like_drf_without_dispatching_it(settings, user, me_dispatches):
    token = TokenFactory(username="fasty", password=PASSWORD)
    status, headers, body = assert_same_answer(settings, ME, Authorization=f"Token {token}")
    assert status == 200 and b'"email":"fasty@example.com"' in body and headers["ETag"].startswith('"')
    assert headers["Allow"] == "GET, PATCH, DELETE, HEAD, OPTIONS" and "RateLimit-Policy" in headers
    assert "Vary" not in headers  # the session was not touched
    for bad in ("Token not-a-token", "Token a b", f"Token {token}x", "token"):
        status, headers, body = assert_same_answer(settings, ME, Authorization=bad)
        assert status == 401 and headers["WWW-Authenticate"] == "Token" and b'"request_id"' in body
    services.token_revoke(token=token)
    assert assert_same_answer(settings, ME, Authorization=f"Token {token}")[0] == 401
    # Each assert_same_answer dispatched UserMeApi once, for its DRF half only.
    assert me_dispatches.call_count == 6


def test_me_is_counted_by_user_and_denied_alike(settings, user):
    settings.RESILIENCE_RATELIMIT_POLICIES = {"api.read": {"rate": "1/m", "key": "user_or_ip"}}
    as_user = {"Authorization": f"Token {TokenFactory(username='fasty', password=PASSWORD)}"}
    assert answer(settings, True, ME, "10.9.3.1", **as_user)[0] == 200
    # Another address, the same user: the one allowed read is spent, on either path.
    fast = answer(settings, True, ME, "10.9.3.2", **as_user)
    drf = answer(settings, False, ME, "10.9.3.3", **as_user)
    assert fast[0] == 429 and fast[2] == drf[2] and set(fast[1]) == set(drf[1])
    assert {"Retry-After", "RateLimit-Policy"} <= set(fast[1])


TOKEN = "<token>"  # replaced by a valid token


@pytest.mark.parametrize(
    ("path_suffix", "headers"),
    [
        ("", {"Authorization": TOKEN, "Accept": "text/html"}),  # DRF's 406
        ("?format=json", {"Authorization": TOKEN}),
        ("", {"Authorization": TOKEN, "Cookie": "sessionid=x"}),  # a session: DRF's authentication and CSRF
        ("", {"Authorization": "Bearer abc"}),  # not the Token scheme: DRF's other authenticators
        ("", {}),  # no credentials: DRF's 401
    ],
)
def test_me_requests_it_does_not_fully_understand_go_to_drf(settings, user, me_dispatches, path_suffix, headers):
    settings.USERS_FAST_READ = True
    token = f"Token {TokenFactory(username='fasty', password=PASSWORD)}"
    headers = {name: token if value == TOKEN else value for name, value in headers.items()}
    Client().get(ME + path_suffix, headers=headers)
    Client().head(ME, headers={"Authorization": token})
    assert me_dispatches.call_count == 2


def test_me_with_a_username_keyed_read_policy_goes_to_drf(settings, user, me_dispatches):
    settings.USERS_FAST_READ = True
    settings.RESILIENCE_RATELIMIT_POLICIES = {"api.read": {"rate": "100/m", "key": "ip+username"}}
    token = TokenFactory(username="fasty", password=PASSWORD)
    assert Client().get(ME, headers={"Authorization": f"Token {token}"}).status_code == 200
    assert me_dispatches.call_count == 1


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/json;q=0", 406),
        ("*/*; q=0.0", 406),
        ("application/json;q=0, */*;q=0", 406),
        ("text/html, application/json;q=0", 406),
        ("application/json;q=0, */*;q=0.5", 200),  # */* still takes JSON
        ("application/json;q=0.001", 200),
        ("application/json;q=zero", 200),  # a malformed weight is DRF's to read
    ],
)
def test_a_media_range_with_q_0_is_refused(settings, user, accept, status):
    """Found by a black-box pass: `Accept: application/json;q=0` was answered with JSON."""
    response = Client().get(detail(user["id"]), headers={"Accept": accept})
    assert response.status_code == status, accept
    assert response["Content-Type"].startswith("application/json")
