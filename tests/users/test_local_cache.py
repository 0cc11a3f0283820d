"""The per-process cache of hot rows and tokens (resilience/client_cache.py, users/cache/store.py), on the
real cache Redis and real server processes: bounded, invalidated by Redis' client tracking within
INVALIDATION_BOUND across processes, flushed when its tracking connection is lost."""

import json
import time
import urllib.error
import urllib.request

import pytest
from django_redis import get_redis_connection

from project.db import pinning
from resilience.client_cache import INVALIDATION_BOUND, LocalCache
from users import cache, selectors, services
from users.cache import entry

from ..processes import granian_server
from ..stack import free_port, wait_for
from .conftest import PASSWORD


def test_the_cache_holds_its_entry_and_byte_bounds(real_db):
    client = get_redis_connection("default")
    local = LocalCache(
        name="bounds",
        connection_kwargs=client.connection_pool.connection_kwargs,
        prefixes=("bounds:",),
        max_entries=10,
        max_bytes=1000,
    )
    try:
        wait_for(lambda: local.begin() is not None, message="tracking to start")
        for i in range(50):
            local.fill(f"bounds:{i}", b"x" * 50, local.begin())
            entries, size = local.size()
            assert entries <= 10 and size <= 1000
        assert local.get("bounds:49") is not None and local.get("bounds:0") is None  # oldest dropped first
        for i in range(50):
            local.fill(f"bounds:big{i}", b"y" * 200, local.begin())
            assert local.size()[1] <= 1000
        assert local.size()[0] == 4  # 4 x (len(key) + 200) fit in 1000 bytes, 5 do not
        local.fill("bounds:huge", b"z" * 2000, local.begin())  # bigger than the whole cache: not kept
        assert local.get("bounds:huge") is None
        local.fill("other:1", b"v", local.begin())  # not a tracked prefix: never kept
        assert local.get("other:1") is None
    finally:
        local.stop()


def test_a_fill_that_an_invalidation_overtook_is_refused(real_db):
    user = services.user_create(username="overtaken", email="overtaken@example.com", password=PASSWORD)
    key = cache.user_key(user["id"])
    local = cache.local_cache()
    wait_for(lambda: local.begin() is not None, message="tracking to start")
    token = local.begin()  # a reader sends its GET ...
    get_redis_connection("default").set(key, b"1:{}")  # ... a write lands, its invalidation arrives ...
    wait_for(lambda: local.begin() != token, message="the invalidation")
    local.fill(key, b"0:{}", token)  # ... and then the reader's (older) reply: not kept
    assert local.get(key) is None


def _get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 (a loopback test server)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def two_servers(real_db):
    """Two server processes (one granian worker each) sharing the stack: each has its own local cache."""
    ports = [free_port(), free_port()]
    with granian_server(port=ports[0]), granian_server(port=ports[1]):
        yield [f"http://127.0.0.1:{port}" for port in ports]


def test_a_write_reaches_every_process_cache_within_the_bound(two_servers):
    user = services.user_create(username="tracked", email="tracked@example.com", password=PASSWORD)
    paths = [f"{base}/api/v1/users/{user['id']}/" for base in two_servers]
    for path in paths:
        for _ in range(3):  # the first read fills Redis, the next ones this process's local cache
            assert _get(path)[1]["display_name"] == ""
    for round_ in range(5):
        services.user_update(user_id=user["id"], changes={"display_name": f"name {round_}"})
        time.sleep(INVALIDATION_BOUND)  # the documented bound from write to every process dropping it
        for path in paths:
            assert _get(path)[1]["display_name"] == f"name {round_}"


def test_a_revoked_token_stops_working_within_the_bound(two_servers):
    services.user_create(username="revoked", email="revoked@example.com", password=PASSWORD)
    token, _user_id = services.token_create(username="revoked", password=PASSWORD)
    headers = {"Authorization": f"Token {token}"}
    for base in two_servers:
        for _ in range(3):
            assert _get(f"{base}/api/v1/users/me/", headers)[0] == 200
    services.token_revoke(token=token)
    time.sleep(INVALIDATION_BOUND)
    for base in two_servers:
        assert _get(f"{base}/api/v1/users/me/", headers)[0] == 401


def test_losing_the_tracking_connection_flushes_the_cache_and_reads_fall_back(real_db):
    user = services.user_create(username="untracked", email="untracked@example.com", password=PASSWORD)
    pinning.reset()  # a later request: no read-your-writes state, so the local cache may answer
    key = cache.user_key(user["id"])
    local = cache.local_cache()
    wait_for(lambda: local.begin() is not None, message="tracking to start")
    for _ in range(2):
        assert selectors.user_get_by_id(user_id=user["id"])["display_name"] == ""
    assert local.get(key) is not None
    flushes = local.stats["flushes"]
    redis = get_redis_connection("default")
    redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # the tracking connection
    wait_for(lambda: local.stats["flushes"] > flushes, message="the loss to be noticed")
    assert local.get(key) is None
    # A change made while no invalidation could be heard is read from Redis, not from a stale copy.
    row = {**user, "display_name": "changed behind the cache", "rev": user["rev"] + 1}
    redis.set(key, f"{row['rev']}:{entry.encode(row)}")
    assert selectors.user_get_by_id(user_id=user["id"])["display_name"] == "changed behind the cache"
    wait_for(lambda: local.live, message="tracking to come back")
