"""Write-behind: views and last-seen stamps through the state Redis, flushed exactly once, against
real Redis, PostgreSQL, and real Celery worker and beat processes."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from django.db import connections
from django.test import Client
from django_redis import get_redis_connection

from project.db import pinning
from project.db.breakers import PRIMARY_OPTIONS
from resilience.ratelimit.drf import CompanionResults
from resilience.redis_fanout import run_all
from users import cache, selectors, services
from users.apis import public_profile_answer, row_companions
from users.models import User
from users.sharding.access import group_for_user_id
from users.sharding.ids import logical_shard_of_id
from users.writebehind import buffer, flush, keys

from ..factories import UserFactory
from ..processes import celery_beat, celery_worker, state_replica
from ..stack import ROOT, run_together, stack, wait_for

pytestmark = pytest.mark.usefixtures("real_db")


def make_users(n, prefix="wb"):
    return [UserFactory(username=f"{prefix}{i}") for i in range(n)]


def db_views(user_ids):
    counts = {}
    for uid in user_ids:
        counts[uid] = User.objects.using(group_for_user_id(uid)).values_list("view_count", flat=True).get(id=uid)
    return counts


def buffer_views(users, per_user):
    expected = {}
    for i, u in enumerate(users):
        n = per_user + i
        for _ in range(n):
            assert buffer.views_add(user_id=u["id"]) == "buffered"
        expected[u["id"]] = n
    return expected


def test_views_are_coalesced_per_user_and_shown_at_once_with_no_database_write():
    (user,) = make_users(1)
    client = Client()
    for _ in range(25):
        response = client.post(f"/api/v1/users/{user['id']}/views/")
        assert response.status_code == 202
    k = keys.group_keys(group_for_user_id(user["id"]))
    assert get_redis_connection("state").hget(k.buffer, keys.views_field(user["id"])) == b"25"  # one coalesced +25
    assert db_views([user["id"]]) == {user["id"]: 0}
    assert client.get(f"/api/v1/users/{user['id']}/").json()["view_count"] == 25
    assert client.post("/api/v1/users/424242424242/views/").status_code == 404


def test_flush_applies_one_statement_per_shard_and_is_exact():
    users = make_users(12)
    expected = buffer_views(users, 3)
    result = flush.flush()
    groups = {group_for_user_id(u["id"]) for u in users}
    assert result["batches"] == len(groups) == 2  # one batch per shard group
    assert result["acknowledged"] == 2 and result["rows"] == 12
    assert db_views(expected) == expected
    assert flush.flush()["rows"] == 0  # nothing left, nothing applied twice
    assert db_views(expected) == expected
    for u in users:  # flushed + pending: the API shows the same number after the flush
        assert Client().get(f"/api/v1/users/{u['id']}/").json()["view_count"] == expected[u["id"]]


def test_last_seen_is_coalesced_and_flushed(make_api):
    api = make_api()
    api.register("seer")
    api.login("seer")
    assert api.get("/api/v1/users/me/").status_code == 200
    uid = int(api.get("/api/v1/users/me/").json()["id"])
    k = keys.group_keys(group_for_user_id(uid))
    assert get_redis_connection("state").hexists(k.buffer, keys.seen_field(uid))
    flush.flush()
    assert User.objects.using(group_for_user_id(uid)).get(id=uid).last_seen_at is not None


@pytest.mark.parametrize("point", ["after_claim", "before_commit", "after_commit", "before_ack"])
def test_a_flusher_sigkilled_at_any_point_loses_nothing_and_counts_nothing_twice(point, settings, tmp_path):
    users = make_users(6, prefix=f"k{point[:5]}")
    expected = buffer_views(users, 4)
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="project.settings.test",
        FAULT_POINT=f"flush.{point}",
        FAULT_POINT_MARKER=str(tmp_path / "fired"),
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from users.writebehind.flush import flush; flush()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == -9, result.stderr.decode()[-2000:]  # really SIGKILLed mid-flush
    settings.WRITE_BEHIND_RECLAIM_AFTER = 0  # the abandoned batch is re-claimed by the next flush
    flush.flush()
    flush.flush()
    assert db_views(expected) == expected
    assert buffer.stats()["claimed_batches"] == 0


def test_overlapping_and_duplicate_flushes_apply_a_batch_once(settings):
    users = make_users(8, prefix="ov")
    expected = buffer_views(users, 5)
    # A flusher claims the batches and dies; then four flushers race to re-claim and apply them.
    for group in settings.SHARD_GROUPS:
        flush._claim(keys.group_keys(group))
    settings.WRITE_BEHIND_RECLAIM_AFTER = 0
    run_together(flush.flush, 4)
    flush.flush()
    assert db_views(expected) == expected


def shown(user_id) -> int:
    """The view count a client reads (the public profile through the full API path)."""
    return Client().get(f"/api/v1/users/{user_id}/").json()["view_count"]


def shard_allow(settings, group: str, allow: bool) -> None:
    name = settings.DATABASES[group]["NAME"]
    with connections["default"].cursor() as cursor:
        cursor.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
    connections[group].close()


def test_a_shard_down_delays_only_its_own_users_and_healthy_reads_stay_exact(settings):
    users = make_users(10, prefix="sd")
    on_0 = [u["id"] for u in users if group_for_user_id(u["id"]) == "shard_0"]
    on_1 = [u["id"] for u in users if group_for_user_id(u["id"]) == "shard_1"]
    assert on_0 and on_1
    expected = buffer_views(users, 2)
    shard_allow(settings, "shard_1", False)
    try:
        result = flush.flush()
        assert result["acknowledged"] == 1  # shard_0's batch, at once, whatever shard_1 does
        for uid in on_0:  # applied, acknowledged, out of the pending view: read exactly once
            assert db_views([uid]) == {uid: expected[uid]}
            assert shown(uid) == expected[uid]
        for uid in on_1:
            assert buffer.pending_views(user_id=uid, rev=0) == expected[uid]
        for uid in on_0 + on_1:  # more views during the outage, and more flushes
            buffer.views_add(user_id=uid, count=3)
            expected[uid] += 3
        flush.flush()
        flush.flush()
        for uid in on_0:
            assert db_views([uid]) == {uid: expected[uid]}
            assert shown(uid) == expected[uid]
    finally:
        shard_allow(settings, "shard_1", True)
    # The shard's primary breaker (db:shard_1) opened during the outage and admits a trial call after
    # its open time: the first flush it lets through applies the released batch and what queued behind it.
    wait_for(lambda: flush.flush() is not None and db_views(expected) == expected, timeout=15, message="recovery")
    assert buffer.stats()["claimed_batches"] == 0
    assert {uid: shown(uid) for uid in expected} == expected


@pytest.mark.parametrize("point", ["after_commit", "before_ack"])
def test_reads_never_count_a_batch_committed_but_not_yet_acknowledged(point, settings, tmp_path):
    """A flusher SIGKILLed between its shard commit and the acknowledgement leaves the batch claimed
    for WRITE_BEHIND_RECLAIM_AFTER: the rows already hold its views, so reads must not add it again."""
    users = make_users(4, prefix=f"ra{point[:4]}")
    expected = buffer_views(users, 5)
    for u in users:  # cache the pre-flush rows: a read may find the old row or the new one
        assert shown(u["id"]) == expected[u["id"]]
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="project.settings.test",
        FAULT_POINT=f"flush.{point}",
        FAULT_POINT_MARKER=str(tmp_path / "fired"),
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from users.writebehind.flush import flush; flush()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert buffer.stats()["claimed_batches"] >= 1  # the batch is still claimed
    committed = {uid: n for uid, n in db_views(expected).items() if n}
    assert committed  # at least one shard committed its part
    for uid in expected:
        assert shown(uid) == expected[uid]  # cached old row + batch, or new row without it
        cache_key = f"/api/v1/users/{uid}/"
        assert Client().get(cache_key, headers={"Consistency": "strong"}).json()["view_count"] == expected[uid]
    settings.WRITE_BEHIND_RECLAIM_AFTER = 0
    flush.flush()
    assert db_views(expected) == expected
    assert {uid: shown(uid) for uid in expected} == expected


def test_a_shard_backlog_beyond_its_limit_refuses_that_shard_only_and_claimed_batches_count(settings):
    settings.WRITE_BEHIND_MAX_PENDING_PER_SHARD = 3
    users = make_users(24, prefix="bl")
    on_0 = [u["id"] for u in users if group_for_user_id(u["id"]) == "shard_0"]
    on_1 = [u["id"] for u in users if group_for_user_id(u["id"]) == "shard_1"]
    assert len(on_0) >= 4 and len(on_1) >= 4
    client = Client()
    shard_allow(settings, "shard_1", False)
    try:
        for uid in on_1[:3]:
            assert client.post(f"/api/v1/users/{uid}/views/").status_code == 202
        flush.flush()  # shard_1's batch stays claimed: its 3 users still count
        response = client.post(f"/api/v1/users/{on_1[3]}/views/")
        assert response.status_code == 503
        assert response.json()["code"] == "backpressure"
        assert response["Retry-After"]
        for uid in on_0[:3]:  # the healthy shard is not refused
            assert client.post(f"/api/v1/users/{uid}/views/").status_code == 202
    finally:
        shard_allow(settings, "shard_1", True)
    flush.flush()
    assert client.post(f"/api/v1/users/{on_1[3]}/views/").status_code == 202  # drained: accepted again


def test_the_ledger_is_never_pruned_below_a_batch_still_claimed(settings, tmp_path):
    users = make_users(4, prefix="pl")
    expected = buffer_views(users, 2)
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="project.settings.test", FAULT_POINT="flush.before_ack")
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from users.writebehind.flush import flush; flush()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == -9, result.stderr.decode()[-2000:]  # committed, never acknowledged
    flush.prune_ledger(older_than_hours=0)  # a retention shorter than the batch has been claimed
    settings.WRITE_BEHIND_RECLAIM_AFTER = 0
    flush.flush()  # the re-claimed batch must still hit its ledger rows
    assert db_views(expected) == expected
    assert flush.prune_ledger(older_than_hours=0) > 0  # once acknowledged, its rows may go


def test_a_flusher_with_a_stale_shard_map_never_acknowledges_views_it_did_not_apply(settings):
    from users.sharding import resharding
    from users.sharding.shardmap import shard_map

    users = make_users(8, prefix="mv")
    on_0 = [u for u in users if group_for_user_id(u["id"]) == "shard_0"]
    expected = buffer_views(on_0, 3)
    stale = shard_map.table()
    moving = sorted({logical_shard_of_id(u["id"]) for u in on_0})
    resharding.move_run(resharding.move_create(logical_shards=moving, target="shard_2"))
    # This flusher still holds the map from before the move (as one that cannot reach the default
    # database keeps its last copy): it sends the UPDATE to shard_0, where the rows no longer are.
    settings.SHARDING_MAP_TTL = 3600
    shard_map._table, shard_map._loaded_at = stale, time.monotonic()
    flush.flush()
    settings.SHARDING_MAP_TTL = 2.0
    shard_map.invalidate()
    assert {group_for_user_id(uid) for uid in expected} == {"shard_2"}
    assert db_views(expected) == expected
    assert buffer.stats()["claimed_batches"] == 0


def test_a_stale_flusher_that_cannot_reload_the_map_keeps_the_batch_claimed(settings):
    """Rows missing and the default database unreachable (the map cannot be checked): fenced, the
    batch stays claimed and is applied where the rows are once the map can be read again."""
    from users.sharding import resharding
    from users.sharding.shardmap import shard_map

    users = make_users(8, prefix="fence")
    on_0 = [u for u in users if group_for_user_id(u["id"]) == "shard_0"]
    expected = buffer_views(on_0, 2)
    stale = shard_map.table()
    moving = sorted({logical_shard_of_id(u["id"]) for u in on_0})
    resharding.move_run(resharding.move_create(logical_shards=moving, target="shard_2"))
    settings.SHARDING_MAP_TTL = 3600
    shard_map._table, shard_map._loaded_at = stale, time.monotonic()
    name = settings.DATABASES["default"]["NAME"]
    with connections["shard_0"].cursor() as cursor:  # same server, another database
        cursor.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
    try:
        connections["default"].close()
        result = flush.flush()
        assert result["acknowledged"] == 0
        assert buffer.stats()["claimed_batches"] == 1  # fenced: not acknowledged, not lost
    finally:
        with connections["shard_0"].cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    settings.SHARDING_MAP_TTL = 2.0
    flush.flush()  # the released batch: the map reloads, the rows are found on shard_2
    shard_map.invalidate()
    assert db_views(expected) == expected
    assert buffer.stats()["claimed_batches"] == 0


def test_write_behind_limits_are_checked_at_start_up(settings):
    from users.checks import check_write_behind

    assert check_write_behind(None) == []
    settings.WRITE_BEHIND_MAX_PENDING_PER_SHARD = settings.WRITE_BEHIND_MAX_PENDING
    settings.WRITE_BEHIND_LEDGER_RETENTION = 0.5
    settings.WRITE_BEHIND_WAIT_REPLICAS, settings.WRITE_BEHIND_WAIT_TIMEOUT_MS = 1, 1000
    assert [e.id for e in check_write_behind(None)] == ["users.E005", "users.E006", "users.E007"]


def test_views_of_a_deleted_user_are_dropped_not_kept_claimed():
    users = make_users(3, prefix="del")
    expected = buffer_views(users, 2)
    services.user_delete(user_id=users[0]["id"])
    del expected[users[0]["id"]]
    result = flush.flush()
    assert result["acknowledged"] == result["batches"]
    assert db_views(expected) == expected
    assert buffer.stats()["claimed_batches"] == 0


def test_views_go_straight_to_the_database_when_the_state_redis_is_down(restore_stack):
    (user,) = make_users(1, prefix="direct")
    stack("stop", "state")
    client = Client()
    statuses = [client.post(f"/api/v1/users/{user['id']}/views/").status_code for _ in range(5)]
    assert statuses == [202] * 5
    assert db_views([user["id"]]) == {user["id"]: 5}


def test_backpressure_answers_503_with_retry_after(settings):
    settings.WRITE_BEHIND_MAX_PENDING = 9  # an even share: 3 users with pending views per shard group
    users = [u for u in make_users(16, prefix="bp") if group_for_user_id(u["id"]) == "shard_0"][:4]
    assert len(users) == 4
    client = Client()
    for u in users[:3]:
        assert client.post(f"/api/v1/users/{u['id']}/views/").status_code == 202
    response = client.post(f"/api/v1/users/{users[3]['id']}/views/")
    assert response.status_code == 503
    assert response["Retry-After"]
    assert client.post(f"/api/v1/users/{users[0]['id']}/views/").status_code == 202  # already pending: coalesced


@pytest.mark.parametrize("appendfsync", ["always", "everysec", "no"])
def test_state_redis_sigkilled_during_ingestion_loses_no_acknowledged_view(restore_stack, appendfsync):
    """Measured for each AOF fsync mode: 0 lost in all three. Redis write()s the AOF buffer to the file
    before it sends the replies of that event-loop turn, so an acknowledged view is in the kernel's
    page cache when the process dies; fsync only matters if the machine itself crashes (then `everysec`
    can lose about the last second, `no` whatever the kernel had not written back). docs/architecture.md."""
    users = make_users(3, prefix="aof")
    state = get_redis_connection("state")
    state.config_set("appendfsync", appendfsync)
    acked, uncertain, stop = [], [], threading.Event()

    def ingest():
        i = 0
        while not stop.is_set():
            uid = users[i % 3]["id"]
            try:
                buffer.views_add(user_id=uid)
                acked.append(uid)
            except buffer.BufferUncertain:
                uncertain.append(uid)
            i += 1
        connections.close_all()

    thread = threading.Thread(target=ingest)
    thread.start()
    wait_for(lambda: len(acked) > 300, timeout=30, message="ingestion to get going")
    stack("kill", "state")
    wait_for(lambda: len(acked) > 350, timeout=30, message="ingestion to continue (direct fallback)")
    stack("start", "state")
    wait_for(lambda: len(acked) > 450, timeout=30, message="ingestion to continue after restart")
    stop.set()
    thread.join()
    try:
        flush.flush()
        flush.flush()
        rows = {
            u["id"]: User.objects.using(group_for_user_id(u["id"])).values("view_count", "rev").get(id=u["id"])
            for u in users
        }
        total = sum(r["view_count"] + buffer.pending_views(user_id=uid, rev=r["rev"]) for uid, r in rows.items())
        lost = max(0, len(acked) - total)
        print(f"appendfsync {appendfsync}: {len(acked)} acknowledged, {lost} lost, {len(uncertain)} unconfirmed")
        assert lost == 0, f"{lost} acknowledged views lost"
        assert total <= len(acked) + len(uncertain)  # nothing counted twice
    finally:
        get_redis_connection("state").config_set("appendfsync", "everysec")


def test_end_to_end_with_a_real_celery_worker_and_beat_including_a_sigkill_mid_flush(tmp_path):
    users = make_users(5, prefix="e2e")
    env = {
        "WRITE_BEHIND_INTERVAL": "0.5",
        "WRITE_BEHIND_RECLAIM_AFTER": "1",
        "FAULT_POINT": "flush.after_commit",
        "FAULT_POINT_MARKER": tmp_path / "fired",
    }
    client = Client()
    expected = {}
    with (
        celery_worker(env=env, log_path=tmp_path / "worker.log"),
        celery_beat(schedule_path=tmp_path / "beat-schedule", env=env),
    ):
        for i, u in enumerate(users):
            for _ in range(10 + i):
                assert client.post(f"/api/v1/users/{u['id']}/views/").status_code == 202
            expected[u["id"]] = 10 + i
        wait_for(lambda: (tmp_path / "fired").exists(), timeout=60, message="the worker to be killed mid-flush")
        wait_for(
            lambda: db_views(expected) == expected,
            timeout=60,
            interval=0.2,
            message=f"views to reach the database exactly: {expected}",
        )
        wait_for(lambda: buffer.stats()["claimed_batches"] == 0, timeout=30, message="the batch to be acknowledged")
    assert db_views(expected) == expected
    stats = buffer.stats()
    assert stats["last_flush_at"] is not None
    assert stats["total_rows_flushed"] >= 1  # the part committed before the kill is not counted again
    assert "signal 9" in (tmp_path / "worker.log").read_text()  # Celery saw its child SIGKILLed


def test_wait_acknowledges_a_view_only_once_a_replica_has_it_and_a_retry_counts_it_once(settings, tmp_path):
    """WRITE_BEHIND_WAIT_REPLICAS=1: with a replica, 202; without one the view reaches the master but
    is unconfirmed (503); the client's retry with the same Idempotency-Key, once a replica is back,
    is answered 202 and the view counted once (the key's record keeps the unknown outcome, the view's
    id tells that the first attempt was counted)."""
    settings.WRITE_BEHIND_WAIT_REPLICAS = 1
    settings.WRITE_BEHIND_WAIT_TIMEOUT_MS = 200
    (user,) = make_users(1, prefix="wait")
    path = f"/api/v1/users/{user['id']}/views/"
    client = Client()

    def post_until_acknowledged(key):
        # What a client does: retry an unconfirmed view with the same key (on a loaded machine a
        # replica's ack can miss the timeout). However many attempts, the view is counted once.
        for _ in range(5):
            response = client.post(path, headers={"Idempotency-Key": key})
            if response.status_code != 503:
                return response
        return response

    with state_replica(tmp_path / "r1"):
        first = post_until_acknowledged("first")
        assert first.status_code == 202, first.content
        assert shown(user["id"]) == 1
    wait_for(lambda: get_redis_connection("state").info("replication")["connected_slaves"] == 0, timeout=10)
    response = client.post(path, headers={"Idempotency-Key": "second"})
    assert response.status_code == 503
    assert response.json()["code"] == "unconfirmed"
    assert response["Retry-After"]
    assert shown(user["id"]) == 2  # the master has it: a failover now could lose it, so never acknowledged
    with state_replica(tmp_path / "r2"):
        retry = post_until_acknowledged("second")
        assert retry.status_code == 202, retry.content
        assert client.post(path, headers={"Idempotency-Key": "second"}).status_code == 202  # replayed
        assert shown(user["id"]) == 2
        # With WAIT a flush applies only claims a replica confirmed (the test below): flush while one is here.
        wait_for(
            lambda: flush.flush() is not None and db_views([user["id"]]) == {user["id"]: 2}, timeout=15, message="flush"
        )


def test_an_idempotent_view_is_counted_once_even_if_its_key_record_is_gone():
    (user,) = make_users(1, prefix="vid")
    assert buffer.views_add(user_id=user["id"], view_id="v1") == "buffered"
    assert buffer.views_add(user_id=user["id"], view_id="v1") == "buffered"
    assert buffer.views_add(user_id=user["id"], view_id="v2") == "buffered"
    assert buffer.pending_views(user_id=user["id"], rev=0) == 2


OUTAGE_S = 12.0
FLUSH_INTERVAL_S = 1.0


@pytest.mark.parametrize("kill_worker", [False, True], ids=["worker-up", "worker-sigkilled"])
def test_shard_down_under_view_load_healthy_reads_never_exceed_acknowledged(kill_worker, settings, tmp_path):
    """Views for users on shard_0 and shard_1 under load, through a real Celery worker and beat;
    shard_1 refuses connections for OUTAGE_S (as the shard_1_down fixture does; here the users must be
    created first and the shard brought back mid-test). Throughout, no client reads a view count above
    the views acknowledged to it; afterwards every acknowledged view is in the database, once, within
    two flush intervals of the shard's return. With `kill_worker` the worker is SIGKILLed (the whole
    process group) during the outage and a new one started."""
    settings.RESILIENCE_RATELIMIT_ENABLED = False  # one client IP hammering; limits are not under test
    users = make_users(12, prefix=f"load{int(kill_worker)}")
    groups = {g: [u["id"] for u in users if group_for_user_id(u["id"]) == g][:3] for g in ("shard_0", "shard_1")}
    assert all(len(ids) == 3 for ids in groups.values())
    acked = {uid: 0 for ids in groups.values() for uid in ids}
    over, exact_reads, stop = [], [0], threading.Event()

    def load(ids):
        client = Client()
        while not stop.is_set():
            for uid in ids:
                if client.post(f"/api/v1/users/{uid}/views/").status_code == 202:
                    acked[uid] += 1
                response = client.get(f"/api/v1/users/{uid}/")
                if response.status_code == 200:
                    shown_now = response.json()["view_count"]
                    if shown_now > acked[uid]:
                        over.append((uid, shown_now, acked[uid]))
                    exact_reads[0] += shown_now == acked[uid]
            time.sleep(0.01)
        connections.close_all()

    env = {"WRITE_BEHIND_INTERVAL": FLUSH_INTERVAL_S, "WRITE_BEHIND_RECLAIM_AFTER": 1}
    for uid in acked:  # cache every row: shard_1's stay readable (and their views accepted) while it is down
        assert shown(uid) == 0
    with contextlib.ExitStack() as procs:
        worker = procs.enter_context(celery_worker(env=env, log_path=tmp_path / "worker.log"))
        procs.enter_context(celery_beat(schedule_path=tmp_path / "beat-schedule", env=env))
        threads = [threading.Thread(target=load, args=(ids,)) for ids in groups.values()]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: exact_reads[0] > 0 and all(acked.values()), timeout=30, message="the load on every user")
            shard_allow(settings, "shard_1", False)
            try:
                if kill_worker:
                    time.sleep(OUTAGE_S / 2)
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait(timeout=10)
                    procs.enter_context(celery_worker(env=env, log_path=tmp_path / "worker2.log"))
                    time.sleep(OUTAGE_S / 2)
                else:
                    time.sleep(OUTAGE_S)
                # During the outage shard_0's views kept reaching its database.
                assert all(n > 0 for n in db_views(groups["shard_0"]).values())
            finally:
                stop.set()
                for t in threads:
                    t.join()
                shard_allow(settings, "shard_1", True)
            back = time.monotonic()
            wait_for(lambda: db_views(acked) == acked, timeout=60, interval=0.05, message="every view applied")
            recovery = time.monotonic() - back
        finally:
            stop.set()
    print(f"{sum(acked.values())} views acknowledged, {exact_reads[0]} exact reads, recovery {recovery:.2f}s")
    assert not over, f"reads above acknowledged views: {over[:5]}"
    assert db_views(acked) == acked
    # Two flush intervals after the shard's primary breaker (db:shard_1, opened by the outage) admits a
    # trial call again, plus a second for the task's trip through the broker on a shared machine.
    assert recovery <= PRIMARY_OPTIONS["open_seconds"] + 2 * FLUSH_INTERVAL_S + 1.0
    assert {uid: shown(uid) for uid in acked} == acked


def test_with_wait_a_flush_applies_no_claim_that_a_replica_does_not_have(settings, tmp_path):
    """WRITE_BEHIND_WAIT_REPLICAS=1: a claim is applied only once a replica has it. Applied before, a
    failover to a replica that never saw the claim would find the views still in its buffer and count
    them again (the Sentinel demo's 1-4 views over after a SENTINEL FAILOVER)."""
    settings.WRITE_BEHIND_WAIT_REPLICAS = 1
    settings.WRITE_BEHIND_WAIT_TIMEOUT_MS = 200
    settings.WRITE_BEHIND_RECLAIM_AFTER = 0.2
    (user,) = make_users(1, prefix="claimwait")
    with state_replica(tmp_path / "r1"):
        wait_for(lambda: buffer.views_add(user_id=user["id"]) == "buffered", timeout=10, message="a confirmed view")
    pending = shown(user["id"])  # 1, or more if an attempt timed out unconfirmed but reached the master
    assert pending >= 1
    wait_for(lambda: get_redis_connection("state").info("replication")["connected_slaves"] == 0, timeout=10)
    flush.flush()  # no replica: the claim is made on the master but not applied
    assert db_views([user["id"]]) == {user["id"]: 0}
    assert shown(user["id"]) == pending  # the claimed batch still counts, once
    with state_replica(tmp_path / "r2"):
        wait_for(
            lambda: flush.flush() is not None and db_views([user["id"]]) == {user["id"]: pending},
            timeout=15,
            message="the re-claimed batch to be applied once a replica confirms the claim",
        )
    assert shown(user["id"]) == pending


@pytest.mark.parametrize("row_read", ["probe_timed_out", "probe_missed", "probe_answered_late", "local_hit"])
def test_views_pending_when_sent_ahead_are_not_counted_again_in_a_row_read_after_a_flush(row_read, restore_stack):
    """The pending-views read goes out ahead, with the limiter's call; the row may be read after its
    answer: from the database when the cache probe timed out (the cache Redis paused: found under view
    load, one flush batch over the views ever sent) or missed, or from a cache reply that came late. A
    flush claiming and committing the buffered views in between puts them in that row too; the read
    must count them once (a row newer than the pending read is read against a fresh one). A row this
    process's local cache held when the probe was built is older than the pending read: counted with it."""
    (user,) = make_users(1, prefix=f"ahead{row_read[6]}")
    uid = user["id"]
    for _ in range(7):
        assert buffer.views_add(user_id=uid) == "buffered"
    if row_read == "probe_answered_late":
        # The state Redis answers first; the cache Redis answers after a flush and a reload.
        pending = run_all([buffer.pending_views_call(user_id=uid)])[0]
        flush.flush()
        assert selectors.user_get_by_id(user_id=uid)["view_count"] == 7  # the flushed row, cached again
        (probed,) = run_all([cache.probe(cache.user_key(uid), local=False)])
        sent = CompanionResults({"row": probed, "pending": pending})
    else:
        if row_read == "probe_timed_out":
            stack("pause", "cache")
        elif row_read == "probe_missed":
            get_redis_connection("default").delete(cache.user_key(uid))
        else:
            pinning.reset()  # a client without read-your-writes state: it may be answered locally
            wait_for(lambda: cache.local_cache().begin() is not None, message="tracking to start")
            assert selectors.user_get_by_id(user_id=uid)["view_count"] == 0  # kept in the local cache
        companions = row_companions(str(uid), pending=True)
        sent = CompanionResults(dict(zip(companions, run_all(list(companions.values())), strict=True)))
        assert cache.probed_before_sending(sent.get("row")) == (row_read == "local_hit")
        flush.flush()  # between the pending read and the row read (the probe's timeout or miss)
    assert db_views([uid]) == {uid: 7} and buffer.stats()["claimed_batches"] == 0
    status_code, body, _etag = public_profile_answer(str(uid), sent, "")
    assert status_code == 200 and body["view_count"] == 7  # 14 would be the batch counted twice
