"""The state Redis on a real Redis Cluster (3 masters, 3 replicas; the session fixture `redis_cluster`):
every Lua script's keys in one slot, the limiter exact per key, breakers, idempotency and the
write-behind buffer working through redis-py's cluster client, and a view acknowledged (WAIT-confirmed)
before its master is SIGKILLed flushed after the cluster fails over."""

import threading
import time
from collections import Counter

import pytest
from django.test import Client, RequestFactory
from redis.crc import key_slot

from project.db import fleet
from resilience import idempotency
from resilience.breaker import BreakerOptions, CircuitBreaker, State
from resilience.breaker.redis_storage import RedisStorage, breaker_keys
from resilience.ratelimit import concurrency, limiter
from resilience.ratelimit.policies import get_policy
from resilience.redis_state import is_cluster, state_redis
from users.models import User
from users.sharding.access import group_for_user_id
from users.writebehind import buffer, flush, keys

from ..factories import UserFactory
from ..stack import wait_for


def _slots(names) -> set[int]:
    return {key_slot(name.encode()) for name in names}


def test_every_lua_scripts_keys_hash_to_one_slot():
    """What a cluster refuses as CROSSSLOT, checked without one: the KEYS of each script call."""
    minute = int(time.time() // 60)
    for policy_name in ("api.read", "users.views", "auth.token"):
        policy = get_policy(policy_name)
        for key in ("ip:203.0.113.7", "u:42", "ip:2001:db8::/64", "{odd}key"):
            tag = limiter._tag(policy.name, key)
            script_keys = [limiter.state_key(policy, key), limiter.denied_key(minute, tag)]
            assert len(_slots([*script_keys, limiter.denied_by_policy_key(minute, tag)])) == 1, (policy_name, key)
    for name in ("redis-cache", "db:shard_1", "webhook:example.org:443"):
        assert len(_slots(breaker_keys(name))) == 1, name
    for user in (Anonymous(), Authenticated(7)):
        request = RequestFactory().post("/api/v1/users/1/views/", REMOTE_ADDR="198.51.100.4")
        request.user = user
        assert len(_slots([idempotency.record_key(request, "k-1"), idempotency.caller_key(request)])) == 1
    for group in ("shard_1", "shard_2"):
        k = keys.group_keys(group)
        assert len(_slots([k.buffer, k.since, k.batches, k.first, k.batch("b1"), k.marker("v1")])) == 1


class Anonymous:
    is_authenticated = False


class Authenticated:
    is_authenticated = True

    def __init__(self, user_id):
        self.id = user_id


def test_the_state_alias_is_a_cluster_client_whose_keys_spread_over_every_master(on_cluster):
    client = state_redis()
    assert is_cluster(client)
    policy = get_policy("api.read")
    masters = {client.get_node_from_key(limiter.state_key(policy, f"ip:10.0.0.{i}")).port for i in range(64)}
    assert masters == set(on_cluster.masters())


def test_limiter_is_exact_per_key_on_a_cluster(on_cluster, settings):
    settings.RESILIENCE_RATELIMIT_POLICIES = {
        "cluster.window": {"rate": "25/h", "key": "ip", "algorithm": "sliding_window"},
        "cluster.bucket": {"rate": "25/h", "key": "ip", "algorithm": "token_bucket"},
    }
    calls = [(name, f"ip:10.1.{i}.1") for name in ("cluster.window", "cluster.bucket") for i in range(24)] * 35
    allowed, degraded = Counter(), []
    lock = threading.Lock()

    def work(share):
        for name, key in share:
            decision = limiter.check(name, key)
            with lock:
                allowed[(name, key)] += decision.allowed
                if decision.degraded:
                    degraded.append(decision)

    threads = [threading.Thread(target=work, args=(calls[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not degraded  # a CROSSSLOT or a routing error would be a degraded decision
    assert set(allowed.values()) == {25}  # every key admitted exactly its limit, 35 asked
    assert len(allowed) == 48
    assert limiter.denied_counts(minutes=1) == {"cluster.window": 24 * 10, "cluster.bucket": 24 * 10}
    assert len(limiter.top_denied(minutes=1, count=100)) == 48


def test_a_requests_rate_check_and_slot_are_made_one_call_each_on_a_cluster(on_cluster, settings):
    """Their keys are in different slots (one call for both would be CROSSSLOT): limiter.evaluate_all makes
    one call per check there, in order, and a denied rate check still takes no slot."""
    settings.RESILIENCE_RATELIMIT_POLICIES = {
        "cluster.rate": {"rate": "2/h", "key": "ip"},
        "cluster.slots": {"algorithm": "concurrency", "limit": 5, "expiry": 60, "key": "ip"},
    }
    rate, conc, key = get_policy("cluster.rate"), get_policy("cluster.slots"), "ip:10.2.0.1"
    assert limiter._tag(rate.name, key) != limiter._tag(conc.name, key)
    made = []
    for _ in range(3):
        decisions, _ = limiter.evaluate_all([limiter.Check(rate, key), concurrency.check(conc, key)])
        assert not any(decision.degraded for decision in decisions)
        made.append([decision.allowed for decision in decisions])
    assert made == [[True, True], [True, True], [False]]
    assert state_redis().zcard(limiter.state_key(conc, key)) == 2


def test_breakers_run_their_scripts_on_a_cluster(on_cluster):
    breaker = CircuitBreaker("cluster-dep", BreakerOptions(minimum_calls=2, window_size=4), storage=RedisStorage())
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    assert breaker.state == State.OPEN
    breaker.force_close(reason="test")
    assert breaker.call(lambda: "ok") == "ok"
    snapshot = RedisStorage().snapshot("cluster-dep", breaker.options)
    assert snapshot.state == State.FORCED_CLOSED and not snapshot.degraded
    assert "cluster-dep" in RedisStorage().names()


@pytest.mark.usefixtures("real_db")
def test_idempotent_views_buffer_and_flush_through_a_cluster(on_cluster):
    users = [UserFactory(username=f"cl{i}") for i in range(6)]
    client = Client()
    for user in users:
        first = client.post(f"/api/v1/users/{user['id']}/views/", headers={"Idempotency-Key": f"k{user['id']}"})
        again = client.post(f"/api/v1/users/{user['id']}/views/", headers={"Idempotency-Key": f"k{user['id']}"})
        assert first.status_code == 202 and first.json()["status"] == "buffered"
        assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
        client.post(f"/api/v1/users/{user['id']}/views/")
        # The read rides the limiter's round trip (resilience/redis_fanout.py) with the pending views.
        assert client.get(f"/api/v1/users/{user['id']}/").json()["view_count"] == 2
    assert flush.flush()["rows"] == len(users)
    assert _db_views(users) == {user["id"]: 2 for user in users}


def test_fleet_scan_visits_every_master(on_cluster):
    client = state_redis()
    for i in range(30):  # heartbeats of 30 processes, spread over the masters' slots
        client.set(f"{fleet.PREFIX}host{i}:{i}", f'{{"role": "web", "pid": {i}, "host": "h", "groups": []}}', ex=60)
    assert len({client.get_node_from_key(f"{fleet.PREFIX}host{i}:{i}").port for i in range(30)}) == 3
    assert sorted(p.pid for p in fleet.live_processes()) == list(range(30))


def test_the_state_redis_panel_sums_every_master(on_cluster):
    from ops.dashboard import panels

    panel = panels.redis_role("state")
    assert len(panel["used_memory_human"].split(" + ")) == 3  # one figure per master
    assert panel["maxmemory_policy"] == "noeviction"


@pytest.mark.usefixtures("real_db")
def test_a_view_acknowledged_before_its_master_is_killed_is_flushed_after_failover(on_cluster, settings):
    settings.WRITE_BEHIND_WAIT_REPLICAS = 1  # WAIT on the group's master: its replica has the view
    users = [UserFactory(username=f"fo{i}") for i in range(8)]
    for user in users:
        for _ in range(3):
            assert buffer.views_add(user_id=user["id"]) == "buffered"  # acknowledged: confirmed by a replica
    group = group_for_user_id(users[0]["id"])
    probe = next(u for u in (UserFactory(username=f"fp{i}") for i in range(20)) if group_for_user_id(u["id"]) == group)
    slot = key_slot(keys.group_keys(group).buffer.encode())
    old = on_cluster.master_of_slot(slot)

    on_cluster.kill(old)
    restarted = False
    try:
        new = on_cluster.wait_failed_over(slot, old)
        assert new != old
        # The promoted replica has no replica of its own until the old master comes back: a claim there
        # cannot be confirmed (WAIT answers 0), so nothing is applied from it yet, and nothing is lost.
        state_redis().nodes_manager.initialize()  # as the first call to the dead master would
        with pytest.raises(buffer.BufferUncertain):
            buffer.views_add(user_id=probe["id"])
        on_cluster.start_node(old)  # it rejoins as the promoted node's replica
        restarted = True
        on_cluster.wait_healthy()

        def flushed():
            try:
                flush.flush()
            except Exception:  # the first calls after the failover may find the old master's address
                return False
            return _db_views(users) == {user["id"]: 3 for user in users}

        wait_for(flushed, timeout=30, message="every acknowledged view flushed after the failover")
        assert buffer.views_add(user_id=users[0]["id"]) == "buffered"  # the new master takes views again
    finally:
        if not restarted:
            on_cluster.start_node(old)
            on_cluster.wait_healthy()


def _db_views(users) -> dict[int, int]:
    return {
        user["id"]: User.objects.using(group_for_user_id(user["id"]))
        .values_list("view_count", flat=True)
        .get(id=user["id"])
        for user in users
    }
