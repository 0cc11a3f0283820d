"""Write-behind: views and last-seen stamps through the state Redis, flushed exactly once, against
real Redis, PostgreSQL, and real Celery worker and beat processes."""

import os
import subprocess
import sys
import threading

import pytest
from django.db import connections
from django.test import Client
from django_redis import get_redis_connection

from users import services
from users.models import User
from users.sharding.access import group_for_user_id
from users.writebehind import buffer, flush

from ..processes import celery_beat, celery_worker
from ..stack import ROOT, run_together, stack, wait_for

pytestmark = pytest.mark.usefixtures("real_db")


def make_users(n, prefix="wb"):
    return [
        services.user_create(username=f"{prefix}{i}", email=f"{prefix}{i}@example.com", password="a-long-pass-2026")
        for i in range(n)
    ]


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
    assert get_redis_connection("state").hget(buffer.VIEWS, user["id"]) == b"25"  # one coalesced +25
    assert db_views([user["id"]]) == {user["id"]: 0}
    assert client.get(f"/api/v1/users/{user['id']}/").json()["view_count"] == 25
    assert client.post("/api/v1/users/424242424242/views/").status_code == 404


def test_flush_applies_one_statement_per_shard_and_is_exact():
    users = make_users(12)
    expected = buffer_views(users, 3)
    result = flush.flush()
    assert result["batches"] == 1 and result["acknowledged"] == 1 and result["rows"] == 12
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
    assert get_redis_connection("state").hexists(buffer.SEEN, uid)
    flush.flush()
    assert User.objects.using(group_for_user_id(uid)).get(id=uid).last_seen_at is not None


@pytest.mark.parametrize("point", ["after_claim", "before_commit", "after_commit", "before_ack"])
def test_a_flusher_sigkilled_at_any_point_loses_nothing_and_counts_nothing_twice(point, settings, tmp_path):
    users = make_users(6, prefix=f"k{point[:5]}")
    expected = buffer_views(users, 4)
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="project.settings.test",
        WRITE_BEHIND_FAULT=point,
        WRITE_BEHIND_FAULT_MARKER=str(tmp_path / "fired"),
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
    assert get_redis_connection("state").zcard(buffer.BATCHES) == 0


def test_overlapping_and_duplicate_flushes_apply_a_batch_once(settings):
    users = make_users(8, prefix="ov")
    expected = buffer_views(users, 5)
    # A flusher claims the batch and dies; then four flushers race to re-claim and apply it.
    buffer.script("claim")(
        keys=[buffer.VIEWS, buffer.SEEN, buffer.SINCE, buffer.BATCHES],
        args=["abandoned0000000000000000000000", 0, 10**12],
    )
    settings.WRITE_BEHIND_RECLAIM_AFTER = 0
    run_together(flush.flush, 4)
    flush.flush()
    assert db_views(expected) == expected


def test_a_shard_down_during_a_flush_keeps_its_items_pending_until_it_returns(settings):
    users = make_users(10, prefix="sd")
    assert {group_for_user_id(u["id"]) for u in users} == {"shard_0", "shard_1"}
    expected = buffer_views(users, 2)
    name = settings.DATABASES["shard_1"]["NAME"]
    with connections["default"].cursor() as cursor:
        cursor.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
    try:
        connections["shard_1"].close()
        result = flush.flush()
        assert result["acknowledged"] == 0
        on_0 = {uid: n for uid, n in expected.items() if group_for_user_id(uid) == "shard_0"}
        assert db_views(on_0) == on_0  # the healthy shard got its part
        assert buffer.pending_views(user_id=next(iter(set(expected) - set(on_0)))) > 0
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    settings.WRITE_BEHIND_RECLAIM_AFTER = 0
    flush.flush()
    assert db_views(expected) == expected


def test_views_go_straight_to_the_database_when_the_state_redis_is_down(restore_stack):
    (user,) = make_users(1, prefix="direct")
    stack("stop", "state")
    client = Client()
    statuses = [client.post(f"/api/v1/users/{user['id']}/views/").status_code for _ in range(5)]
    assert statuses == [202] * 5
    assert db_views([user["id"]]) == {user["id"]: 5}


def test_backpressure_answers_503_with_retry_after(settings):
    settings.WRITE_BEHIND_MAX_PENDING = 3
    users = make_users(4, prefix="bp")
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
        total = sum(db_views([u["id"] for u in users]).values()) + sum(
            buffer.pending_views(user_id=u["id"]) for u in users
        )
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
        "WRITE_BEHIND_FAULT": "after_commit",
        "WRITE_BEHIND_FAULT_MARKER": tmp_path / "fired",
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
