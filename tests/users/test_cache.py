"""Cache-aside and write-through on the real cache Redis: no stale sets, no stampedes, no 5xx when
the cache dies or hangs."""

import contextlib
import threading

import pytest
from django.conf import settings
from django.db import connections, transaction
from django.test import Client
from django_redis import get_redis_connection
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from project.db.pinning import use_primary
from users import cache, selectors, services
from users.cache import entry
from users.identity import identity_key
from users.sharding.access import group_for_user_id

from ..factories import UserFactory
from ..stack import run_together, stack, wait_for
from .conftest import PASSWORD

pytestmark = pytest.mark.usefixtures("real_db")


def new_user(name="cached"):
    return UserFactory(username=name)


def db_row(user_id):
    with use_primary():
        return selectors._row_by_id(user_id)


def cached_row(user_id):
    raw = get_redis_connection("default").get(cache.user_key(user_id))
    return entry.decode(raw) if entry.is_entry(raw) else None  # None: absent, or only a version floor


def counting_user_reads(fn, reads: list):
    """`fn`, counting into `reads` the queries of the users table it makes on any database alias, with
    Django's database instrumentation (connection.execute_wrapper): the real loads, nothing replaced.
    Wrappers are per thread: wrap what each thread runs."""

    def count(execute, sql, params, many, context):
        if "users_user" in sql:
            reads.append(sql)
        return execute(sql, params, many, context)

    def counted():
        with contextlib.ExitStack() as wrappers:
            for connection in connections.all():
                wrappers.enter_context(connection.execute_wrapper(count))
            return fn()

    return counted


@contextlib.contextmanager
def users_table_locked(group: str):
    """Hold an ACCESS EXCLUSIVE lock on the users table of `group`'s primary, in a transaction of this
    thread, until the block ends: a slow database. The lock is WAL-logged, so once each replica has
    replayed it (waited for here) reads there block on it too."""
    spec = settings.DATABASE_GROUPS[group]
    with transaction.atomic(using=spec["primary"]):
        with connections[spec["primary"]].cursor() as cursor:
            cursor.execute("LOCK TABLE users_user IN ACCESS EXCLUSIVE MODE")
            cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
            lsn = cursor.fetchone()[0]
        # A replica replays only flushed WAL, and an open transaction's records wait for a commit: commit
        # one elsewhere (a thread has its own connection).
        flusher = threading.Thread(target=commit_a_transaction, args=(spec["primary"],))
        flusher.start()
        flusher.join()

        def replayed(alias):
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn])
                return cursor.fetchone()[0]

        wait_for(lambda: all(replayed(alias) for alias in spec["replicas"]), message="replicas holding the lock")
        yield


def commit_a_transaction(alias: str) -> None:
    try:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_current_xact_id()")  # an xid: its commit writes and flushes WAL
    finally:
        connections.close_all()


def lock_waiters(group: str) -> int:
    """Sessions waiting for a lock on any server of `group` (the readers stuck behind the held lock)."""
    spec = settings.DATABASE_GROUPS[group]
    total = 0
    for alias in (spec["primary"], *spec["replicas"]):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            total += cursor.fetchone()[0]
    return total


def test_fifty_concurrent_cold_reads_cause_at_most_two_database_queries():
    user = new_user()
    get_redis_connection("default").flushdb()
    reads, results = [], []
    read = counting_user_reads(lambda: results.append(selectors.user_get_by_id(user_id=user["id"])["id"]), reads)
    run_together(read, 50)
    assert results == [user["id"]] * 50
    assert 1 <= len(reads) <= 2, len(reads)


def test_fifty_concurrent_cold_http_reads_cause_at_most_two_database_queries():
    """The same through GET /users/{id}/, whose cache read is a plain GET sent with the limiter's call
    (users/fastpath.py): a miss there still goes through the lease. The database is slow (its users
    table locked) until a load is seen waiting on it: without single-flight, every request would load."""
    user = new_user()
    get_redis_connection("default").flushdb()
    reads, lock, addresses, statuses = [], threading.Lock(), [], []

    def read():
        with lock:
            address = f"10.8.0.{len(addresses) + 1}"  # one client each: the limiter counts by address
            addresses.append(address)
        response = Client(REMOTE_ADDR=address).get(f"/api/v1/users/{user['id']}/")
        statuses.append(response.status_code)

    group = group_for_user_id(user["id"])
    readers = threading.Thread(target=run_together, args=(counting_user_reads(read, reads), 50))
    with users_table_locked(group):
        readers.start()
        wait_for(lambda: lock_waiters(group) >= 1, interval=0.005, message="a load waiting on the lock")
    readers.join()
    assert statuses.count(200) == 50
    assert 1 <= len(reads) <= 2, len(reads)


def test_an_http_read_never_serves_a_version_floor():
    from users.writebehind import buffer, flush

    user = new_user()
    path = f"/api/v1/users/{user['id']}/"
    assert Client().get(path).json()["view_count"] == 0  # cached
    buffer.views_add(user_id=user["id"], count=2)
    flush.flush()  # the row changes under the cache, which now holds a floor
    floor = get_redis_connection("default").get(cache.user_key(user["id"]))
    assert floor is not None and not entry.is_entry(floor)
    assert Client().get(path).json()["view_count"] == 2
    assert cached_row(user["id"]) == db_row(user["id"])


def test_a_slow_reader_never_overwrites_a_newer_cached_version():
    user = new_user()
    get_redis_connection("default").flushdb()

    def slow_loader():
        old = selectors._row_by_id(user["id"])  # the reader loads version 1 ...
        services.user_update(user_id=user["id"], changes={"bio": "newer"})  # ... a writer commits version 2 ...
        return old  # ... and the reader now tries to cache version 1

    stale = cache.get_or_load(cache.user_key(user["id"]), slow_loader, version_of=lambda r: r["rev"])
    assert stale["bio"] == ""  # the reader itself saw what it loaded
    assert cached_row(user["id"])["bio"] == "newer"
    assert cached_row(user["id"]) == db_row(user["id"])


def test_a_slow_reader_cannot_resurrect_a_deleted_user():
    user = new_user()
    get_redis_connection("default").flushdb()

    def slow_loader():
        old = selectors._row_by_id(user["id"])
        services.user_delete(user_id=user["id"])
        return old

    cache.get_or_load(cache.user_key(user["id"]), slow_loader, version_of=lambda r: r["rev"])
    assert selectors.user_get_by_id(user_id=user["id"]) is None


def test_a_slow_reader_cannot_store_a_row_older_than_a_write_behind_flush():
    from users.writebehind import buffer, flush

    user = new_user()
    get_redis_connection("default").flushdb()

    def slow_loader():
        old = selectors._row_by_id(user["id"])  # loaded before the flush ...
        buffer.views_add(user_id=user["id"], count=3)
        flush.flush()  # ... which bumps rev and leaves a version floor in the cache
        return old

    cache.get_or_load(cache.user_key(user["id"]), slow_loader, version_of=lambda r: r["rev"])
    assert cached_row(user["id"]) in (None, cache.NOT_FOUND) or cached_row(user["id"]) == db_row(user["id"])
    assert selectors.user_get_by_id(user_id=user["id"])["view_count"] == 3
    assert cached_row(user["id"]) == db_row(user["id"])


def test_not_found_is_cached_briefly_and_creation_replaces_it():
    assert selectors.user_get_by_username(username="later") is None
    assert get_redis_connection("default").get(cache.username_key("later")) is not None
    created = new_user("later")
    assert selectors.user_get_by_username(username="LATER")["id"] == created["id"]


@hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    ops=st.lists(
        st.sampled_from(["read", "update", "slow_read_update", "flush", "stale_fill"]), min_size=1, max_size=12
    )
)
def test_any_sequence_of_reads_and_writes_leaves_the_cache_equal_to_the_database(ops):
    get_redis_connection("default").flushdb()
    user = selectors.user_get_by_username(username="model") or new_user("model")
    uid = user["id"]
    for i, op in enumerate(ops):
        if op == "read":
            selectors.user_get_by_id(user_id=uid)
        elif op == "update":
            services.user_update(user_id=uid, changes={"bio": f"bio-{i}"})
        elif op == "slow_read_update":

            def slow(i=i):
                old = selectors._row_by_id(uid)
                services.user_update(user_id=uid, changes={"display_name": f"dn-{i}"})
                return old

            cache.get_or_load(cache.user_key(uid), slow, version_of=lambda r: r["rev"])
        elif op == "flush":
            get_redis_connection("default").delete(cache.user_key(uid))
        elif op == "stale_fill":  # a reader that loaded long ago fills late
            old = selectors._row_by_id(uid)
            services.user_update(user_id=uid, changes={"bio": f"late-{i}"})
            cache._set(cache.user_key(uid), old["rev"], __import__("json").dumps(old), 60)
    # Once quiet: whatever is cached equals the database, and a read returns the database row.
    cached = cached_row(uid)
    assert cached is None or cached == db_row(uid)
    assert selectors.user_get_by_id(user_id=uid) == db_row(uid)


@pytest.mark.parametrize("fault", ["stop", "pause"])
def test_every_endpoint_answers_from_the_database_when_the_cache_redis_dies_or_hangs(fault, restore_stack, make_api):
    api = make_api()
    profile = api.register("sturdy").json()
    api.login("sturdy")
    stack(fault, "cache")
    try:
        anon = Client()
        for _ in range(3):
            assert anon.get(f"/api/v1/users/{profile['id']}/").status_code == 200
            assert anon.get("/api/v1/users/", {"username": "sturdy"}).json()["results"][0]["id"] == profile["id"]
            assert api.get("/api/v1/users/me/").status_code == 200
        assert api.patch("/api/v1/users/me/", {"bio": "while down"}).status_code == 200
        assert make_api().register("newcomer").status_code == 201
        assert anon.post(f"/api/v1/users/{profile['id']}/views/").status_code == 202
    finally:
        stack("resume" if fault == "pause" else "start", "cache")

    # When the cache returns, caching resumes without a restart; the lost write-through was queued
    # and is replayed (beat does this every few seconds; the redis:cache breaker lets a probe through again).
    def caching_again():
        cache.replay_invalidations()
        selectors.user_get_by_id(user_id=int(profile["id"]))
        return cached_row(int(profile["id"])) is not None

    wait_for(caching_again, timeout=10, message="caching to resume")
    assert selectors.user_get_by_id(user_id=int(profile["id"]))["bio"] == "while down"


def _cached_version(key: str) -> int:
    return int(get_redis_connection("default").get(key).split(b":", 1)[0])


@hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    base=st.sampled_from([1 << 53, 1 << 59, 1 << 62, (1 << 63) - 4096]),
    offset=st.integers(min_value=-2048, max_value=2048),
    step=st.integers(min_value=1, max_value=3),
)
def test_versions_compare_exactly_near_2_59_and_2_62(base, offset, step):
    """The Lua scripts compare versions as integers of any size, not as doubles (53-bit mantissa), so
    one more than a 59-bit id (a username's tombstone after its user's id) is newer than the id."""
    version = base + offset
    key = f"test:version:{version}:{step}"
    get_redis_connection("default").delete(key)
    assert cache._set(key, version, '"row"', 60)
    assert not cache._set(key, version, '"same version"', 60)  # equal: refused
    assert not cache._set(key, version - step, '"older"', 60)
    assert cache._set(key, version + step, '"newer"', 60)
    assert _cached_version(key) == version + step
    cache.invalidate_many([(key, version + 2 * step)])  # a floor above what is cached
    assert _cached_version(key) == version + 2 * step
    assert not cache._set(key, version + 2 * step - 1, '"stale reader"', 60)
    assert cache._set(key, version + 2 * step, '"the floored version"', 60)
    get_redis_connection("default").delete(key)


def test_a_username_tombstone_beats_its_59_bit_id():
    user = new_user("tombed")
    key = cache.username_key(identity_key("tombed"))
    cache.write_through(key, user["id"], version=user["id"])
    services.user_delete(user_id=user["id"])
    assert _cached_version(key) == user["id"] + 1  # the tombstone, not the id it would equal as a double
    assert get_redis_connection("default").get(key).endswith(b":")  # an empty payload: deleted


def test_forcing_the_cache_breaker_open_serves_reads_from_the_database_without_asking_the_cache_redis(make_api):
    from resilience.breaker import get_breaker, guard

    api = make_api()
    profile = api.register("bypassed").json()
    api.login("bypassed")
    uid = int(profile["id"])
    anon = Client()
    assert anon.get(f"/api/v1/users/{uid}/").status_code == 200
    assert cached_row(uid) is not None

    get_breaker(cache.CACHE_BREAKER).force_open("drill")  # as the admin does, from any process
    wait_for(lambda: not guard(cache.CACHE_BREAKER).allows(), timeout=5, message="this process to see it")
    redis = get_redis_connection("default")

    def commands():
        # Every command but this test's INFO and the local cache's tracking keep-alive (PING).
        stats = redis.info("commandstats")
        return sum(v["calls"] for name, v in stats.items() if name not in ("cmdstat_info", "cmdstat_ping"))

    before = commands()
    assert api.patch("/api/v1/users/me/", {"bio": "written while bypassed"}).status_code == 200
    for _ in range(5):
        response = anon.get(f"/api/v1/users/{uid}/")
        assert response.status_code == 200 and response.json()["bio"] == "written while bypassed"
    # No request reached the cache Redis: no GET, no lease, no write-through.
    assert commands() == before
    assert cached_row(uid)["bio"] != "written while bypassed"  # the write-through was skipped (queued)

    get_breaker(cache.CACHE_BREAKER).reset("drill over")

    def caching_again():
        cache.replay_invalidations()
        anon.get(f"/api/v1/users/{uid}/")
        return (cached_row(uid) or {}).get("bio") == "written while bypassed"

    wait_for(caching_again, timeout=10, message="caching to resume with the new row")


def test_a_decoded_entry_is_the_callers_own_to_change():
    """entry.decode remembers hot rows; each call still returns a dict of its own, and a nested value
    (whose parts a shallow copy would share) is parsed afresh every time."""
    row = b'7:{"id": 1, "username": "a", "view_count": 3}'
    first = entry.decode(row)
    first["view_count"] += 100
    first["extra"] = True
    assert entry.decode(row) == {"id": 1, "username": "a", "view_count": 3}
    nested = b'8:{"id": 2, "tags": ["x"], "meta": {"k": 1}}'
    entry.decode(nested)["tags"].append("y")
    entry.decode(nested)["meta"]["k"] = 2
    assert entry.decode(nested) == {"id": 2, "tags": ["x"], "meta": {"k": 1}}
    assert entry.decode(b"9:") is entry.NOT_FOUND


def test_a_write_made_while_the_cache_breaker_refused_is_never_read_back_older_once_it_admits(make_api):
    """Found by a black-box run: a PATCH (or a DELETE) acknowledged while the breaker kept writes off the
    cache Redis left the row cached before it there; once the breaker admitted again, reads answered that
    older row (a deleted account came back) until beat replayed the queued invalidation, up to 5 s later.
    Now the breaker's Guard deletes the queued keys before this process uses the cache again: the very
    first read after it admits is the new row, with no replay run here."""
    from resilience.breaker import get_breaker, guard

    api = make_api()
    profile = api.register("refused").json()
    api.login("refused")
    uid = int(profile["id"])
    anon = Client()
    assert anon.get(f"/api/v1/users/{uid}/").json()["bio"] == ""
    assert cached_row(uid) is not None

    get_breaker(cache.CACHE_BREAKER).force_open("drill")
    wait_for(lambda: not guard(cache.CACHE_BREAKER).allows(), timeout=5, message="this process to see it")
    assert api.patch("/api/v1/users/me/", {"bio": "acknowledged"}).status_code == 200
    assert cached_row(uid)["bio"] == ""  # the older row is still in the cache Redis, its key queued

    get_breaker(cache.CACHE_BREAKER).reset("drill over")
    wait_for(lambda: guard(cache.CACHE_BREAKER).allows(), timeout=5, message="this process to admit again")
    for _ in range(3):
        assert anon.get(f"/api/v1/users/{uid}/").json()["bio"] == "acknowledged"
        assert api.get("/api/v1/users/me/").json()["bio"] == "acknowledged"
    assert (cached_row(uid) or {}).get("bio") in (None, "acknowledged")


def test_a_process_that_missed_the_outage_deletes_the_queued_keys_before_its_first_read():
    """A process that made no cache call while the breaker refused (it last synced before) learns the
    breaker's new epoch at its first sync and deletes the queued keys before that call goes ahead."""
    from resilience.breaker import get_breaker, guard

    user = new_user("missed")
    anon = Client()
    anon.get(f"/api/v1/users/{user['id']}/")
    assert cached_row(user["id"]) is not None
    get_breaker(cache.CACHE_BREAKER).force_open("drill")
    cache.queue_invalidation(cache.user_key(user["id"]))  # as a write the breaker kept off the cache queues it
    get_breaker(cache.CACHE_BREAKER).reset("drill over")
    guard(cache.CACHE_BREAKER).forget()  # this process knows nothing since before the drill
    assert guard(cache.CACHE_BREAKER).allows()
    assert get_redis_connection("default").get(cache.user_key(user["id"])) is None
    assert not get_redis_connection("state").sismember(cache.PENDING_INVALIDATIONS, cache.user_key(user["id"]))


def test_a_logout_and_a_deletion_made_while_both_redis_were_paused_stay_done_once_they_are_back(
    restore_stack, make_api
):
    """Found by a black-box pass: with the cache and the state Redis paused together, a log-out (and an
    account deletion) acknowledged while the cache breaker was open could be queued nowhere; once both
    were back the cached token entry authenticated again (and could write), and the deleted account was
    served until the entries' TTL. Now the process keeps such keys and deletes them before it uses the
    cache again."""
    api, doomed = make_api(), make_api()
    api.register("loggedout")
    api.login("loggedout")
    profile = doomed.register("doomed").json()
    doomed.login("doomed")
    anon = Client()
    for _ in range(2):  # cached: the token entry and both rows
        assert api.get("/api/v1/users/me/").status_code == 200
        assert anon.get(f"/api/v1/users/{profile['id']}/").status_code == 200
    assert cached_row(int(profile["id"])) is not None
    stack("pause", "cache")
    stack("pause", "state")
    try:
        from resilience.breaker import guard

        # Reads that time out on the cache Redis open its breaker (in-process: its shared state is out of reach).
        wait_for(
            lambda: anon.get(f"/api/v1/users/{profile['id']}/") and not guard(cache.CACHE_BREAKER).allows(),
            timeout=30,
            message="the cache breaker to open",
        )
        assert api.delete("/api/v1/auth/token/").status_code == 204
        assert doomed.delete("/api/v1/users/me/", {"current_password": PASSWORD}).status_code == 204
    finally:
        stack("resume", "state")
        stack("resume", "cache")
    wait_for(lambda: guard(cache.CACHE_BREAKER).allows(), timeout=15, message="the cache to be used again")
    for _ in range(3):
        assert api.get("/api/v1/users/me/").status_code == 401
        assert anon.get(f"/api/v1/users/{profile['id']}/").status_code == 404
    assert cached_row(int(profile["id"])) in (None, entry.NOT_FOUND)  # gone, or cached as not found
