"""Lag-aware replica routing and read-your-writes against the real primary and streaming replica."""

import threading

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User as StaffUser
from django.contrib.sessions.models import Session
from django.db import connections, transaction
from django.test import Client
from django_redis import get_redis_connection

from project.db import pinning, routing
from project.db.replicas import monitor, probe_connect
from resilience import health
from users import selectors, services
from users.models import ShardMapEntry, User
from users.sharding.access import group_for_user_id

from ..stack import stack, wait_for
from ..staff import caught_up

pytestmark = pytest.mark.usefixtures("real_db")


@pytest.fixture
def replay_paused():
    with connections["default_r0"].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    yield
    with connections["default_r0"].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_resume()")


def _fresh_client_context():
    pinning.reset()


def _reads(group: str, n: int = 8) -> set[str]:
    """The aliases `n` consecutive reads of `group` are routed to (replicas take turns)."""
    return {routing.read_alias(group) for _ in range(n)}


def test_reads_go_to_a_replica_by_default_and_writes_to_the_primary():
    _fresh_client_context()
    assert routing.read_alias("shard_0") in ("shard_0_r0", "shard_0_r1")
    assert routing.read_alias("default") in ("default_r0", "default_r1")
    assert ShardMapEntry.objects.all().db in ("default_r0", "default_r1")
    assert routing.write_alias("shard_0") == "shard_0"


def test_after_a_write_the_same_context_reads_the_primary(settings):
    _fresh_client_context()
    settings.READ_YOUR_WRITES_SYNC_APPLY = False  # no standby known to hold it: only the primary does yet
    user = services.user_create(username="pinned", email="pinned@example.com", password="a-long-pass-2026")
    group = group_for_user_id(user["id"])
    assert routing.read_alias(group) == group
    _fresh_client_context()
    assert routing.read_alias(group) in settings.DATABASE_GROUPS[group]["replicas"]


def test_reads_inside_atomic_and_use_primary_go_to_the_primary():
    _fresh_client_context()
    with transaction.atomic(using="default"):
        assert get_user_model().objects.all().db == "default"
    with pinning.use_primary():
        assert routing.read_alias("shard_0") == "shard_0"
    assert routing.read_alias("shard_0") != "shard_0"


def test_read_your_writes_holds_while_replay_is_paused(replay_paused):
    _fresh_client_context()
    user = services.user_create(username="ryw", email="ryw@example.com", password="a-long-pass-2026")
    get_redis_connection("default").flushdb()  # force the database path
    assert selectors.user_get_by_id(user_id=user["id"])["username"] == "ryw"
    # Another client, on the paused replica, does not see it yet: the replica really lags.
    _fresh_client_context()
    get_redis_connection("default").flushdb()
    group = group_for_user_id(user["id"])
    alias = f"{group}_r0"  # the asynchronous standby, the one replay_paused pauses (_r1 applies synchronously)
    if alias in _reads(group):  # the monitor may already have judged the lag too large
        assert not User.objects.using(alias).filter(id=user["id"]).exists()
        # ... yet a read never concludes "not found" from a replica: it confirms on the primary.
        assert selectors._row_by_id(user["id"])["id"] == user["id"]


def test_a_replica_lagging_beyond_max_lag_is_skipped_until_it_catches_up(settings, replay_paused):
    settings.MAX_REPLICA_LAG = 0.3
    services.user_create(username="lagmaker", email="lagmaker@example.com", password="a-long-pass-2026")

    def skipped():
        monitor.refresh_now()
        _fresh_client_context()
        return not monitor.usable(["shard_0_r0", "default_r0"]) and "shard_0_r0" not in _reads("shard_0")

    wait_for(skipped, timeout=10, message="the lagging replica to be skipped")
    with connections["default_r0"].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_resume()")

    def back():
        monitor.refresh_now()
        _fresh_client_context()
        return "shard_0_r0" in _reads("shard_0")

    wait_for(back, timeout=10, message="the replica to be used again")


def test_reads_still_succeed_when_the_replica_process_is_stopped(restore_stack):
    users = [
        services.user_create(username=f"rs{i}", email=f"rs{i}@example.com", password="a-long-pass-2026")
        for i in range(4)
    ]
    monitor.refresh_now()
    stack("stop", "replica")
    get_redis_connection("default").flushdb()
    for u in users:
        _fresh_client_context()
        assert selectors.user_get_by_id(user_id=u["id"])["id"] == u["id"]
    monitor.refresh_now()
    _fresh_client_context()
    assert "shard_0_r0" not in _reads("shard_0")
    stack("start", "replica")

    def back():
        monitor.refresh_now()
        return "shard_0_r0" in _reads("shard_0")

    wait_for(back, timeout=20, message="the restarted replica to be used again")


@pytest.mark.parametrize(("attrs", "expect_standby"), [("read-write", False), ("primary", False), ("standby", True)])
def test_a_multi_host_url_lets_libpq_pick_the_server_by_role(attrs, expect_standby):
    """After a failover the promoted server is whichever host is writable now: a multi-host URL with
    target_session_attrs=read-write finds it without a config change. Here the replica is listed
    first and libpq still lands on the primary (and on the standby when asked for one)."""
    from django.db.backends.postgresql.base import DatabaseWrapper

    from project.settings.dburl import parse_database_url

    primary = connections["default"].settings_dict
    replica = connections[settings.DATABASE_GROUPS["default"]["replicas"][0]].settings_dict
    url = (
        f"postgresql://{primary['USER']}@{replica['HOST']}:{replica['PORT']},{primary['HOST']}:{primary['PORT']}"
        f"/{primary['NAME']}?target_session_attrs={attrs}"
    )
    wrapper = DatabaseWrapper({**connections["default"].settings_dict, **parse_database_url(url)}, alias="multihost")
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery()")
            assert cursor.fetchone()[0] is expect_standby
    finally:
        wrapper.close()


def _receiver_streaming(alias: str) -> bool:
    with probe_connect(alias) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'").fetchone()[0] == 1


@pytest.fixture
def receiver_cut():
    """Point the replica's WAL receiver at a closed port (the replica stays up and answers queries,
    it just stops receiving WAL); restore the original conninfo afterwards."""
    alias = settings.DATABASE_GROUPS["default"]["replicas"][0]
    with probe_connect(alias) as conn:
        original = conn.execute("SHOW primary_conninfo").fetchone()[0]
        conn.execute("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 connect_timeout=1'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        wait_for(lambda: not _receiver_streaming(alias), timeout=20, message="the WAL receiver to stop")
        yield alias
    finally:
        with probe_connect(alias) as conn:
            conn.execute(f"ALTER SYSTEM SET primary_conninfo = '{original.replace(chr(39), chr(39) * 2)}'")
            conn.execute("SELECT pg_reload_conf()")
        wait_for(lambda: _receiver_streaming(alias), timeout=30, message="the WAL receiver to stream again")
        wait_for(lambda: monitor.refresh_now() or monitor.usable([alias]), timeout=30, message="replica usable")


def test_a_replica_cut_off_from_its_primary_is_skipped_and_the_health_page_says_why(settings, receiver_cut):
    settings.MAX_REPLICA_LAG = 1.0
    settings.READ_YOUR_WRITES_SYNC_APPLY = False  # the synchronous standby is not under test here
    settings.METRICS_TOKEN = "health-token-for-routing-tests-0123"
    user = services.user_create(username="cutoff", email="cutoff@example.com", password="a-long-pass-2026")
    services.user_update(user_id=user["id"], changes={"display_name": "after the cut"})
    group = group_for_user_id(user["id"])

    cut = f"{group}_r0"  # the cut-off server holds every group's _r0

    def skipped():  # the background monitor alone, as in a serving process
        _fresh_client_context()
        return cut not in _reads(group)

    # The replica has replayed everything it received, so it looked current forever before.
    wait_for(
        skipped,
        timeout=settings.MAX_REPLICA_LAG + settings.REPLICA_CHECK_INTERVAL + 2.0,
        message="the cut-off replica to be skipped",
    )
    _fresh_client_context()
    get_redis_connection("default").flushdb()
    assert selectors.user_get_by_id(user_id=user["id"])["display_name"] == "after the cut"
    health.forget()
    body = Client().get("/health/ready", headers={"Authorization": f"Bearer {settings.METRICS_TOKEN}"}).json()
    entry = next(c for c in body["checks"] if c["name"] == receiver_cut)
    assert entry["status"] == "skipped"
    assert "WAL receiver" in entry["reason"]
    assert entry["wal_receiver"] != "streaming"
    assert receiver_cut in body["degraded"]


def test_sessions_and_staff_accounts_are_read_from_the_primary(settings):
    settings.MAX_REPLICA_LAG = 3600  # the replica stays "usable": only the router can protect the session
    staff = StaffUser.objects.create_superuser("ops-rp", "ops-rp@example.com", "pw-ops-0123456789")
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200
    caught_up()
    with connections["default_r0"].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    try:
        StaffUser.objects.filter(pk=staff.pk).update(is_active=False)
        Session.objects.all().delete()
        _fresh_client_context()
        # Other default-group reads still use the paused replica (reads take turns over the replicas).
        assert "default_r0" in _reads("default")
        assert StaffUser.objects.all().db == "default" and Session.objects.all().db == "default"
        # The replica still has the session and the active account; the admin must not believe it.
        response = client.get("/admin/")
        assert response.status_code == 302 and "/login/" in response["Location"]
    finally:
        with connections["default_r0"].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_resume()")


@pytest.fixture
def async_replay_paused():
    """Replay paused on the asynchronous standby (every group's _r0); the synchronous one runs.

    Paused only where it holds no lock: replay takes a TRUNCATE's AccessExclusiveLock (an earlier test's
    clean-up) and releases it at the commit record, so a pause between the two blocked every query of
    that table on the standby (a full-suite run timed out after 300 s in the final check). Replay first
    catches up with the primary, then pauses, and resumes to try again while it holds such a lock."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()")
        target = cursor.fetchone()[0]

    def paused_without_locks() -> bool:
        with connections["default_r0"].cursor() as cursor:
            cursor.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target])
            if not cursor.fetchone()[0]:
                return False
            cursor.execute("SELECT pg_wal_replay_pause()")
            cursor.execute("SELECT pg_get_wal_replay_pause_state()")
            if cursor.fetchone()[0] != "paused":  # requested: replay stops at its next record
                return False
            cursor.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE a.backend_type = 'startup' AND l.mode = 'AccessExclusiveLock' AND l.granted"
            )
            if cursor.fetchone()[0]:
                cursor.execute("SELECT pg_wal_replay_resume()")
                return False
            return True

    wait_for(paused_without_locks, timeout=30, message="the async standby paused where it holds no lock")
    yield
    with connections["default_r0"].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_resume()")


class _Counter:
    """Count the queries run on one alias (Django's execute_wrapper, in this thread)."""

    def __init__(self):
        self.n = 0

    def __call__(self, execute, sql, params, many, context):
        self.n += 1
        return execute(sql, params, many, context)


def test_own_writes_are_read_from_the_synchronous_standby_never_stale_and_never_from_the_primary(
    settings, async_replay_paused
):
    settings.MAX_REPLICA_LAG = 3600  # the paused standby stays "usable": only the LSN rule protects reads
    monitor.refresh_now()
    client = Client()
    created = client.post(
        "/api/v1/users/",
        {"username": "lsnreader", "email": "lsnreader@example.com", "password": "a-long-pass-2026"},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    uid = created.json()["id"]
    group = group_for_user_id(int(uid))
    token = created["Bulwark-Read-Lsn"]
    assert f"{group}:" in token and ":s" in token  # committed with remote_apply
    token_client = Client(headers={"Bulwark-Read-Lsn": token})
    login = client.post(
        "/api/v1/auth/token/",
        {"username": "lsnreader", "password": "a-long-pass-2026"},
        content_type="application/json",
    )
    api = Client(headers={"Authorization": f"Token {login.json()['token']}"})
    for i in range(5):
        changed = api.patch("/api/v1/users/me/", {"display_name": f"name {i}"}, content_type="application/json")
        assert changed.status_code == 200, changed.content
        token = changed["Bulwark-Read-Lsn"]
        get_redis_connection("default").flushdb()  # the database decides, not the cache
        on_primary, on_async = _Counter(), _Counter()
        with connections[group].execute_wrapper(on_primary), connections[f"{group}_r0"].execute_wrapper(on_async):
            body = token_client.get(f"/api/v1/users/{uid}/", headers={"Bulwark-Read-Lsn": token}).json()
        assert body["display_name"] == f"name {i}"  # never stale
        assert (on_primary.n, on_async.n) == (0, 0)  # read from the synchronous standby
    # A client without the token reads the paused standby too, and sees the old name there.
    assert User.objects.using(f"{group}_r0").filter(id=uid).count() == 0


def test_an_lsn_pin_checks_the_replica_actually_chosen(settings, async_replay_paused):
    """GitLab 413203: stickiness ended when any replica caught up. Here the synchronous standby has
    replayed the write and the paused one has not: reads must never be routed to the paused one."""
    settings.MAX_REPLICA_LAG = 3600
    settings.READ_YOUR_WRITES_SYNC_APPLY = False  # a plain commit: only the LSN can vouch for a replica
    _fresh_client_context()
    user = services.user_create(username="chosen", email="chosen@example.com", password="a-long-pass-2026")
    group = group_for_user_id(user["id"])
    routing.record_commit_lsns()
    lsn, synced = pinning.lsns()[group]
    assert not synced
    assert _reads(group) == {group}  # nobody is known to have it yet

    def caught_up_sync():
        monitor.refresh_now()
        return monitor.replayed(f"{group}_r1") >= lsn

    wait_for(caught_up_sync, timeout=10, message="the synchronous standby to replay the write")
    assert monitor.replayed(f"{group}_r0") < lsn
    assert _reads(group, 20) == {f"{group}_r1"}


def test_a_replica_whose_breaker_is_forced_open_is_skipped_and_the_health_page_says_so():
    from project.db.breakers import alias_guard, breaker_name
    from resilience.breaker import get_breaker

    _fresh_client_context()
    group = "shard_0"
    replicas = settings.DATABASE_GROUPS[group]["replicas"]
    assert _reads(group) == set(replicas)
    first = replicas[0]
    get_breaker(breaker_name(first)).force_open("maintenance")
    wait_for(lambda: not alias_guard(first).admits(), timeout=5, message="this process to see it")
    assert _reads(group) == set(replicas[1:]) or {group}
    for alias in replicas[1:]:
        get_breaker(breaker_name(alias)).force_open("maintenance")
    wait_for(lambda: _reads(group) == {group}, timeout=5, message="every read of the group on its primary")
    entry = next(e for e in health.probe()["checks"] if e["name"] == first)
    assert entry["status"] == "skipped"
    # The monitor's probes do not close a forced breaker; a reset does.
    monitor.refresh_now()
    assert _reads(group) == {group}
    for alias in replicas:
        get_breaker(breaker_name(alias)).reset("done")
    wait_for(lambda: _reads(group) == set(replicas), timeout=5, message="the replicas to be read again")


def test_a_task_queued_inside_the_writing_transaction_is_handed_a_position_no_replica_reaches(settings):
    settings.READ_YOUR_WRITES_SYNC_APPLY = False
    _fresh_client_context()
    user = services.user_create(username="inside", email="inside@example.com", password="a-long-pass-2026")
    group = group_for_user_id(user["id"])
    _fresh_client_context()
    with transaction.atomic(using=group):
        routing.write_alias(group)
        # The commit has no position yet: reading one now would hand over an LSN before the commit.
        assert routing.handoff_lsns()[group] == (routing.NO_REPLICA_LSN, False)
    assert pinning.pending_groups() == [group]  # the request still reads its commit LSN at its end
    handed = routing.handoff_lsns()[group][0]  # queued after the commit: the position is read now
    assert handed < routing.NO_REPLICA_LSN and pinning.lsns()[group] == (handed, False)


def test_a_stopped_synchronous_standby_does_not_hold_the_writes_that_waited_for_it(settings, restore_stack):
    """Found by the black-box pass: a PATCH committing with remote_apply when the synchronous standby
    stopped waited for it, holding its row lock, for the whole outage, and every later write of that row
    (and the flush tasks) with it. The monitor now ends such waits once it finds the standby gone: the
    write stays committed on the primary, its author gets its answer, the row is free again."""
    settings.READ_YOUR_WRITES_SYNC_APPLY = True
    user = services.user_create(username="syncheld", email="syncheld@example.com", password="a-long-pass-2026")
    group = group_for_user_id(user["id"])
    monitor.refresh_now()
    assert routing.sync_apply(group)
    alias = settings.DATABASE_GROUPS[group]["primary"]
    holder, watcher = probe_connect(alias), probe_connect(alias)
    count = "SELECT count(*) FROM pg_stat_activity WHERE %s IN (wait_event, wait_event_type)"
    outcome = {}

    def edit():  # a request in flight: it asks for remote_apply while the standby still answers
        try:
            pinning.reset()
            outcome["row"] = services.user_update(user_id=user["id"], changes={"bio": "during the outage"})
        except Exception as exc:  # the assertion below names it
            outcome["error"] = exc
        finally:
            connections.close_all()

    writer = threading.Thread(target=edit)
    with holder.transaction():
        # The row locked, so the edit, remote_apply asked, waits here; the standby stops meanwhile, and
        # (once the lock is released) the edit's commit waits for it.
        holder.execute("SELECT 1 FROM users_user WHERE id = %s FOR UPDATE", [user["id"]])
        writer.start()
        wait_for(lambda: watcher.execute(count, ["Lock"]).fetchone()[0] > 0, timeout=30, message="the edit to wait")
        stack("stop", "sync-replica")
    # The serving processes' monitor thread may release the wait before this test looks: either way the
    # commit must end while the standby is down.
    wait_for(
        lambda: watcher.execute(count, ["SyncRep"]).fetchone()[0] > 0 or not writer.is_alive(),
        timeout=30,
        message="the commit to wait for the standby",
    )
    monitor.refresh_now()  # the probe finds the standby gone and releases the wait
    writer.join(timeout=60)
    assert not writer.is_alive() and "error" not in outcome, outcome
    assert outcome["row"]["bio"] == "during the outage"
    # The row is free: the next write of it does not wait for the standby (no longer asked for).
    assert not routing.sync_apply(group)
    pinning.reset()
    assert services.user_update(user_id=user["id"], changes={"bio": "after"})["bio"] == "after"
    assert watcher.execute(count, ["SyncRep"]).fetchone()[0] == 0
    stack("start", "sync-replica")
    holder.close()
    watcher.close()
