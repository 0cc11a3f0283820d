"""Sharded user storage against the real shard databases."""

import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_redis import get_redis_connection

from users import selectors, services
from users.models import UniqueClaim, User
from users.sharding.access import ShardUnavailable, group_for_user_id
from users.sharding.hashing import logical_shard_for_username
from users.sharding.ids import logical_shard_of_id, make_id
from users.sharding.shardmap import shard_map

from ..factories import UserFactory
from ..stack import ROOT

pytestmark = pytest.mark.usefixtures("real_db")


def make_user(name: str, **extra) -> dict:
    return UserFactory(username=name, **extra)


def test_ten_thousand_usernames_spread_evenly_and_real_users_land_where_predicted():
    names = [f"user{i}" for i in range(10_000)]
    counts = Counter(shard_map.group_for_logical(logical_shard_for_username(n)) for n in names)
    mapped = set(shard_map.table())  # the groups holding logical shards (an added shard may hold none yet)
    mean = 10_000 / len(mapped)
    assert set(counts) == mapped
    for group, count in counts.items():
        assert abs(count - mean) <= 0.1 * mean, (group, count)

    created = [make_user(f"real{i}") for i in range(200)]
    predicted = Counter(shard_map.group_for_logical(logical_shard_for_username(u["username"])) for u in created)
    assert selectors.user_count_per_shard() == {g: predicted.get(g, 0) for g in settings.SHARD_GROUPS}
    for u in created:  # the id carries the logical shard the username hashed to
        assert logical_shard_of_id(u["id"]) == logical_shard_for_username(u["username"])


def test_ids_are_unique_and_time_ordered_per_shard():
    ids = [make_user(f"ordered{i}")["id"] for i in range(30)]
    assert len(set(ids)) == 30
    by_shard = {}
    for i in ids:
        by_shard.setdefault(group_for_user_id(i), []).append(i)
    for shard_ids in by_shard.values():
        assert shard_ids == sorted(shard_ids)


def _queries_per_alias(fn):
    contexts = {alias: CaptureQueriesContext(connections[alias]) for alias in settings.DATABASES}
    for ctx in contexts.values():
        ctx.__enter__()
    try:
        result = fn()
    finally:
        for ctx in contexts.values():
            ctx.__exit__(None, None, None)
    return result, {alias: len(ctx.captured_queries) for alias, ctx in contexts.items() if ctx.captured_queries}


@pytest.mark.parametrize("access", ["id", "username", "email"])
def test_a_read_touches_exactly_one_shard_database(access):
    users = [make_user(f"one{i}") for i in range(6)]
    shard_map.table()  # warm the map so its periodic reload is not counted
    get_redis_connection("default").flushdb()  # force the database path
    for u in users:
        group = group_for_user_id(u["id"])
        lookups = {
            "id": lambda u=u: selectors.user_get_by_id(user_id=u["id"]),
            "username": lambda u=u: selectors.user_get_by_username(username=u["username"].upper()),
            "email": lambda u=u: selectors.user_get_by_email(email=u["email"].upper()),
        }
        row, counts = _queries_per_alias(lookups[access])
        assert row["id"] == u["id"]
        shard_aliases = [a for a in counts if a != "default" and not a.startswith("default_")]
        assert len(shard_aliases) == 1, counts
        assert counts[shard_aliases[0]] == 1, counts
        assert shard_aliases[0] in (group, *settings.DATABASE_GROUPS[group]["replicas"])
        if access == "email":  # the email claim names the user; it lives in the default database
            assert counts.get("default") == 1, counts
        else:
            assert "default" not in counts, counts


def test_shard_assignment_is_identical_across_processes_with_different_hash_seeds():
    code = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'project.settings.test'); "
        "django.setup(); from users.sharding.hashing import logical_shard_for_username as f; "
        "print([f(f'name{i}') for i in range(200)], hash('name1'))"
    )
    outputs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, DJANGO_SETTINGS_MODULE="project.settings.test")
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60
        ).stdout
        placement, _, python_hash = out.strip().rpartition(" ")
        outputs.append((placement, python_hash))
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][1] != outputs[1][1]  # the seeds really differed


def _register_concurrently(usernames_emails):
    results, barrier = [], threading.Barrier(len(usernames_emails))

    def register(username, email):
        barrier.wait()
        try:
            services.user_create(username=username, email=email, password="a-long-pass-2026")
            results.append("ok")
        except services.Conflict as exc:
            results.append(tuple(exc.fields))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=register, args=pair) for pair in usernames_emails]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_duplicate_usernames_in_mixed_case_exactly_one_wins():
    names = ["Racer", "racer", "RACER", "rAcEr", "raCER", "RaCeR"]
    results = _register_concurrently([(n, f"racer{i}@example.com") for i, n in enumerate(names)])
    assert results.count("ok") == 1, results
    assert all(r == ("username",) for r in results if r != "ok")
    assert sum(selectors.user_count_per_shard().values()) == 1
    assert UniqueClaim.objects.using("default").count() == 2


def test_concurrent_duplicate_emails_exactly_one_wins():
    emails = ["Same@Example.com", "same@example.com", "SAME@EXAMPLE.COM", "same@EXAMPLE.com"]
    results = _register_concurrently([(f"mailer{i}", e) for i, e in enumerate(emails)])
    assert results.count("ok") == 1, results
    assert sum(selectors.user_count_per_shard().values()) == 1


GHOST_ID = make_id(ms=1767225600000, logical_shard=7, seq=1)


def test_a_claim_left_by_a_crash_is_repaired_when_it_blocks_a_registration():
    # A registration that claimed its username and email, then died before writing the user row.
    UniqueClaim.objects.using("default").bulk_create(
        [
            UniqueClaim(
                kind="username", value="ghost", user_id=GHOST_ID, created_at=timezone.now() - timedelta(minutes=5)
            ),
            UniqueClaim(
                kind="email",
                value="ghost@example.com",
                user_id=GHOST_ID,
                created_at=timezone.now() - timedelta(minutes=5),
            ),
        ]
    )
    user = make_user("ghost")
    assert selectors.user_get_by_username(username="ghost")["id"] == user["id"]
    assert set(UniqueClaim.objects.using("default").values_list("user_id", flat=True)) == {user["id"]}


def test_a_young_unconfirmed_claim_still_blocks_a_duplicate():
    UniqueClaim.objects.using("default").create(kind="username", value="inflight", user_id=42)
    with pytest.raises(services.Conflict):
        make_user("inflight")


def test_delete_frees_the_username_and_email_for_a_new_account():
    first = make_user("reuse")
    services.user_delete(user_id=first["id"])
    assert selectors.user_get_by_username(username="reuse") is None
    second = make_user("REUSE")
    assert second["id"] != first["id"]
    assert selectors.user_get_by_username(username="reuse")["id"] == second["id"]
    assert selectors.user_get_by_id(user_id=first["id"]) is None


def test_cross_shard_listing_is_ordered_by_id_with_a_cursor():
    ids = sorted(make_user(f"lister{i}")["id"] for i in range(25))
    seen, after = [], 0
    while True:
        rows, after = selectors.user_list(limit=7, after_id=after)
        seen += [r["id"] for r in rows]
        if after is None:
            break
    assert seen == ids


def test_shard_down_other_shards_keep_serving(request):
    by_group = {}
    i = 0
    while len(by_group) < 2:
        u = make_user(f"sd{i}")
        by_group.setdefault(group_for_user_id(u["id"]), u)
        i += 1
    request.getfixturevalue("shard_1_down")
    get_redis_connection("default").flushdb()
    for conn in connections.all():
        conn.close()
    assert selectors.user_get_by_id(user_id=by_group["shard_0"]["id"])["id"] == by_group["shard_0"]["id"]
    with pytest.raises(ShardUnavailable):
        selectors.user_get_by_id(user_id=by_group["shard_1"]["id"])
    assert User.objects.using("shard_0").count() >= 1
