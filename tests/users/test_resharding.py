"""Online resharding against the real shard databases, under concurrent reads, writes and views."""

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from django_redis import get_redis_connection

from project.db import fleet
from users import selectors, services
from users.models import ShardMapEntry, ShardMove
from users.sharding import resharding
from users.sharding.access import ShardUnavailable, group_for_user_id
from users.sharding.hashing import logical_shard_for_username
from users.sharding.ids import logical_shard_of_id
from users.sharding.shardmap import shard_map
from users.writebehind import buffer, flush

from ..processes import celery_beat, celery_worker, web_server
from ..stack import ROOT, wait_for

pytestmark = pytest.mark.usefixtures("real_db")
MAPPED = ["shard_0", "shard_1"]


def bulk_users(n: int, prefix: str) -> list[int]:
    """Insert n users fast with SQL, each on the shard its username hashes to."""
    table = shard_map.table()
    by_group: dict[str, tuple[list, list]] = {}
    for i in range(n):
        name = f"{prefix}{i}"
        assert name.isascii()  # lower() below is then the identity key
        ls = logical_shard_for_username(name)
        names, shards = by_group.setdefault(table[ls], ([], []))
        names.append(name)
        shards.append(ls)
    ids = []
    for group, (names, shards) in by_group.items():
        with connections[group].cursor() as cursor:
            cursor.execute(
                # username_key: identity_key() of these ASCII names is their lower case.
                """INSERT INTO users_user (id, logical_shard, username, username_key, email, password, display_name,
                       bio, created_at, updated_at, version, rev, view_count)
                   SELECT users_next_id(ls), ls, name, lower(name), name || '@example.com', '!', '', '', now(), now(),
                          1, 1, 0
                     FROM unnest(%s::text[], %s::int[]) AS t(name, ls) RETURNING id""",
                [names, shards],
            )
            ids += [r[0] for r in cursor.fetchall()]
    return ids


def all_ids() -> list[int]:
    ids = []
    for group in settings.SHARD_GROUPS:
        with connections[group].cursor() as cursor:
            cursor.execute("SELECT id FROM users_user")
            ids += [r[0] for r in cursor.fetchall()]
    return ids


def fingerprint() -> tuple[int, str]:
    ids = sorted(all_ids())
    return len(ids), hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


def views_in_db(ids) -> dict[int, int]:
    counts = {}
    for group in settings.SHARD_GROUPS:
        with connections[group].cursor() as cursor:
            cursor.execute("SELECT id, view_count FROM users_user WHERE id = ANY(%s)", [list(ids)])
            for uid, n in cursor.fetchall():
                assert uid not in counts, f"user {uid} on two shards"
                counts[uid] = n
    return counts


def test_the_plan_moves_about_a_third_of_the_logical_shards_onto_a_third_shard():
    proposal = resharding.plan(target="shard_2")
    moved = sum(len(logical) for logical, _ in proposal)
    assert 330 <= moved <= 345
    assert {source for _, source in proposal} == set(MAPPED)


def test_two_to_three_shards_with_ten_thousand_users_under_concurrent_load(settings):
    settings.WRITE_BEHIND_RECLAIM_AFTER = 1
    settings.RESILIENCE_RATELIMIT_ENABLED = False  # the readers are one IP hammering; limits are not under test
    ids = bulk_users(10_000, "rs")
    before = fingerprint()
    stop = threading.Event()
    failures, reads, flushes, acked_views, acked_updates, refused = [], [0], [0], {}, {}, [0]

    def reader():
        client = Client()
        while not stop.is_set():
            uid = random.choice(ids)
            response = client.get(f"/api/v1/users/{uid}/")
            reads[0] += 1
            if response.status_code != 200:
                failures.append((uid, response.status_code, response.content[:200]))
        connections.close_all()

    def writer():
        rng = random.Random(7)
        while not stop.is_set():
            uid = rng.choice(ids[:2000])
            try:
                services.user_update(user_id=uid, changes={"bio": f"b{time.monotonic()}"})
                acked_updates[uid] = acked_updates.get(uid, 0) + 1
            except ShardUnavailable:
                refused[0] += 1  # the fence: a clear, retryable refusal
                time.sleep(0.05)
        connections.close_all()

    def viewer():
        rng = random.Random(11)
        while not stop.is_set():
            uid = rng.choice(ids[:3000])
            buffer.views_add(user_id=uid)
            acked_views[uid] = acked_views.get(uid, 0) + 1
        connections.close_all()

    def flusher():
        while not stop.is_set():
            try:
                flush.flush()
            except Exception as exc:  # a flush failing is a finding only if views end up wrong
                failures.append(("flush", repr(exc)))
            flushes[0] += 1
            time.sleep(0.3)
        connections.close_all()

    def load_ran(since=(0, 0)):
        """Whether every kind of load made progress since `since` (reads, flushes)."""
        return reads[0] >= since[0] + 50 and flushes[0] >= since[1] + 2 and acked_updates and acked_views

    threads = [threading.Thread(target=f) for f in (reader, reader, writer, viewer, flusher)]
    for t in threads:
        t.start()
    try:
        wait_for(load_ran, timeout=60, message="the load running before the moves")
        moves = []
        for logical, _source in resharding.plan(target="shard_2"):
            move = resharding.move_run(resharding.move_create(logical_shards=logical, target="shard_2"))
            moves.append(move)
        since = (reads[0], flushes[0])
        wait_for(lambda: load_ran(since), timeout=60, message="the load running against the moved map")
    finally:
        stop.set()
        for t in threads:
            t.join()
    settings.WRITE_BEHIND_RECLAIM_AFTER = 0
    flush.flush()
    flush.flush()
    assert [f for f in failures if f[0] != "flush"] == [], failures[:5]
    assert reads[0] > 100
    assert all(m.state == ShardMove.DONE for m in moves)
    assert fingerprint() == before  # no user lost or duplicated
    counts = {g: n for g, n in selectors.user_count_per_shard().items()}
    assert 0.28 * 10_000 <= counts["shard_2"] <= 0.38 * 10_000, counts
    db = views_in_db(acked_views)
    assert db == acked_views  # every acknowledged view counted exactly once
    for uid in acked_updates:  # every user is readable where the map says
        assert selectors.user_get_by_id(user_id=uid)["id"] == uid
    print(
        f"\nreads {reads[0]}, updates {sum(acked_updates.values())}, refused {refused[0]}, "
        f"views {sum(acked_views.values())}, fence ms {[m.longest_fence_ms for m in moves]}"
    )


def _run_move_killed_at(state: str, logical: str) -> int:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="project.settings.test", FAULT_POINT=f"reshard.{state}")
    result = subprocess.run(
        [sys.executable, "manage.py", "reshard", "move", "--logical", logical, "--to", "shard_2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    return result.returncode


@pytest.mark.parametrize(
    ("state", "recovery"),
    [
        ("copied", "resume"),
        ("copied", "rollback"),
        ("fenced", "resume"),
        ("fenced", "rollback"),
        ("verified", "resume"),
        ("verified", "rollback"),
        # Killed inside the switch: the map entries were updated, the move's state not yet.
        ("map_switched", "resume"),
        ("map_switched", "rollback"),
        ("switched", "resume"),
    ],
)
def test_a_move_killed_after_any_step_resumes_or_rolls_back_with_nothing_lost(state, recovery):
    ids = bulk_users(600, f"k{state[:3]}{recovery[:2]}")
    for uid in ids[:50]:
        buffer.views_add(user_id=uid)
    before = fingerprint()
    assert _run_move_killed_at(state, "400-511") == -9
    move = ShardMove.objects.using("default").get()
    assert move.state == (ShardMove.VERIFIED if state == "map_switched" else state)
    if recovery == "resume":
        resharding.move_run(move)
        assert move.state == ShardMove.DONE
        expected_group = "shard_2"
    else:
        resharding.move_rollback(move)
        expected_group = "shard_0"
    shard_map.invalidate()
    assert fingerprint() == before
    assert {shard_map.group_for_logical(ls) for ls in range(400, 512)} == {expected_group}
    for uid in ids:
        assert selectors.user_get_by_id(user_id=uid)["id"] == uid
    flush.flush()
    assert sum(views_in_db(ids[:50]).values()) == 50
    with connections["shard_0"].cursor() as cursor:  # nothing left frozen
        cursor.execute("SELECT count(*) FROM users_frozenlogicalshard")
        assert cursor.fetchone()[0] == 0
    # Running the same move again does nothing harmful.
    if recovery == "resume":
        assert resharding.plan(target="shard_2")  # the rest could still move
        with pytest.raises(resharding.MoveError):
            resharding.move_create(logical_shards=list(range(400, 512)), target="shard_2")


def test_rollback_refuses_while_the_stored_map_points_at_the_target():
    ids = bulk_users(200, "rbmap")
    move = resharding.move_create(logical_shards=list(range(400, 512)), target="shard_2")
    resharding.move_run(move, until=ShardMove.VERIFIED)
    # The state a crash between two separate commits used to leave: the map switched, the move not.
    ShardMapEntry.objects.using("default").filter(logical_shard__in=move.logical_shards).update(group="shard_2")
    shard_map.invalidate()

    def on_target():
        with connections["shard_2"].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM users_user WHERE logical_shard = ANY(%s)", [move.logical_shards])
            return cursor.fetchone()[0]

    before = on_target()
    assert before > 0
    with pytest.raises(resharding.MoveError, match="points at shard_2"):
        resharding.move_rollback(move)
    move.refresh_from_db(using="default")
    assert move.state == ShardMove.VERIFIED
    assert on_target() == before  # the target's rows, now live, are all still there
    for uid in ids:
        assert selectors.user_get_by_id(user_id=uid)["id"] == uid


def test_writes_during_the_fence_are_refused_with_a_retryable_503():
    (uid,) = bulk_users(1, "fenced")
    ls = shard_map.table()
    group = group_for_user_id(uid)
    move = resharding.move_create(logical_shards=[logical_shard_of_id(uid)], target="shard_2")
    resharding.move_run(move, until=ShardMove.FENCED)
    assert ls[logical_shard_of_id(uid)] == group
    response = Client().post(f"/api/v1/users/{uid}/views/")  # buffered: fine during the fence
    assert response.status_code == 202
    with pytest.raises(ShardUnavailable):
        services.user_update(user_id=uid, changes={"bio": "x"})
    assert Client().get(f"/api/v1/users/{uid}/").status_code == 200  # reads never fail
    resharding.move_run(move)
    services.user_update(user_id=uid, changes={"bio": "after"})
    assert group_for_user_id(uid) == "shard_2"


def test_a_running_celery_worker_follows_the_new_map(tmp_path):
    ids = bulk_users(300, "cw")
    moving = sorted({logical_shard_of_id(uid) for uid in ids if group_for_user_id(uid) == "shard_1"})[:40]
    movers = [uid for uid in ids if logical_shard_of_id(uid) in moving]
    env = {"WRITE_BEHIND_INTERVAL": "0.5", "WRITE_BEHIND_RECLAIM_AFTER": "1"}
    with (
        celery_worker(env=env, log_path=tmp_path / "worker.log"),
        celery_beat(schedule_path=tmp_path / "beat", env=env),
    ):
        for uid in movers:
            buffer.views_add(user_id=uid)
        wait_for(lambda: sum(views_in_db(movers).values()) == len(movers), timeout=60, message="first views")
        resharding.move_run(resharding.move_create(logical_shards=moving, target="shard_2"))
        for uid in movers:
            buffer.views_add(user_id=uid)
        wait_for(
            lambda: views_in_db(movers) == {uid: 2 for uid in movers},
            timeout=60,
            message="the worker to flush to the new shard",
        )
    with connections["shard_2"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM users_user WHERE id = ANY(%s) AND view_count = 2", [movers])
        assert cursor.fetchone()[0] == len(movers)


def _get(port: int, uid: int) -> tuple[int, str, str | None]:
    """GET a profile from a served process: (status, error code, Retry-After)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/users/{uid}/", timeout=10) as response:  # noqa: S310
            return response.status, "", None
    except urllib.error.HTTPError as exc:
        body = exc.read()
        code = json.loads(body).get("code", "") if body.startswith(b"{") else ""
        return exc.code, code, exc.headers.get("Retry-After")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_move_beside_a_serving_process_that_lacks_the_target_never_answers_404(tmp_path):
    """A server started with two shard groups (SHARD_COUNT=2) is serving: the move refuses to start and
    to switch, naming it; once it is replaced by one that knows shard_2 the move completes under load;
    a process started later with the old configuration answers 503 shard_unavailable for moved users."""
    ids = bulk_users(300, "fleet")
    moving = sorted({logical_shard_of_id(uid) for uid in ids if group_for_user_id(uid) == "shard_1"})[:40]
    movers = [uid for uid in ids if logical_shard_of_id(uid) in moving]
    # One reader from one address: limits are not under test.
    common = {"SHARDING_HEARTBEAT_INTERVAL": "0.5", "RESILIENCE_RATELIMIT_ENABLED": "false"}
    old_config = {"SHARD_COUNT": "2", **common}
    new_config = {"SHARD_COUNT": "3", **common}
    ports, stop, answers, wrong = [], threading.Event(), {}, []

    def reader():
        rng = random.Random(3)
        while not stop.is_set():
            if not ports:
                time.sleep(0.05)
                continue
            uid = rng.choice(ids)
            try:
                status, code, _ = _get(ports[-1], uid)
            except OSError:  # between two servers: nobody listens, no answer to judge
                continue
            answers[status] = answers.get(status, 0) + 1
            if status != 200:
                wrong.append((uid, status, code))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        port = _free_port()
        with web_server(port=port, env=old_config, log_path=tmp_path / "old.log") as old:
            ports.append(port)
            wait_for(lambda: old.pid in {p.pid for p in fleet.live_processes()}, timeout=20, message="heartbeat")
            move = resharding.move_create(logical_shards=moving, target="shard_2")
            with pytest.raises(resharding.MoveError, match=f"pid {old.pid} "):
                resharding.move_run(move)
            assert move.state == ShardMove.PLANNED
            shard_map.invalidate()
            assert {shard_map.group_for_logical(ls) for ls in moving} == {"shard_1"}
        ports.clear()
        wait_for(lambda: old.pid not in {p.pid for p in fleet.live_processes()}, timeout=20, message="expiry")
        port = _free_port()
        with web_server(port=port, env=new_config, log_path=tmp_path / "new.log"):
            ports.append(port)
            resharding.move_run(move)
            assert move.state == ShardMove.DONE
            seen = sum(answers.values())  # let the reader run against the moved map too
            wait_for(lambda: sum(answers.values()) >= seen + 20, timeout=30, message="reads of the moved map")
        ports.clear()
        get_redis_connection("default").flushdb()  # cached profiles would be served (correctly) from Redis
        port = _free_port()
        with web_server(port=port, env=old_config, log_path=tmp_path / "late.log"):
            late = [_get(port, uid) for uid in movers]
            others = [_get(port, uid)[0] for uid in ids if uid not in movers][:50]
    finally:
        stop.set()
        thread.join()
    assert wrong == [], wrong[:5]
    assert answers.get(200, 0) > 50, answers
    # Started with the old configuration after the switch: the moved users exist, so never 404.
    assert {(status, code, retry) for status, code, retry in late} == {(503, "shard_unavailable", "5")}
    assert set(others) == {200}
