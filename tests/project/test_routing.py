"""Lag-aware replica routing and read-your-writes against the real primary and streaming replica."""

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

from ..resilience.test_admin import caught_up
from ..stack import stack, wait_for

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


def test_reads_go_to_a_replica_by_default_and_writes_to_the_primary():
    _fresh_client_context()
    assert routing.read_alias("shard_0") == "shard_0_r0"
    assert routing.read_alias("default") == "default_r0"
    assert ShardMapEntry.objects.all().db == "default_r0"
    assert routing.write_alias("shard_0") == "shard_0"


def test_after_a_write_the_same_context_reads_the_primary():
    _fresh_client_context()
    services.user_create(username="pinned", email="pinned@example.com", password="a-long-pass-2026")
    assert routing.read_alias("shard_1") == "shard_1"
    _fresh_client_context()
    assert routing.read_alias("shard_1") == "shard_1_r0"


def test_reads_inside_atomic_and_use_primary_go_to_the_primary():
    _fresh_client_context()
    with transaction.atomic(using="default"):
        assert get_user_model().objects.all().db == "default"
    with pinning.use_primary():
        assert routing.read_alias("shard_0") == "shard_0"
    assert routing.read_alias("shard_0") == "shard_0_r0"


def test_read_your_writes_holds_while_replay_is_paused(replay_paused):
    _fresh_client_context()
    user = services.user_create(username="ryw", email="ryw@example.com", password="a-long-pass-2026")
    get_redis_connection("default").flushdb()  # force the database path
    assert selectors.user_get_by_id(user_id=user["id"])["username"] == "ryw"
    # Another client, on the paused replica, does not see it yet: the replica really lags.
    _fresh_client_context()
    get_redis_connection("default").flushdb()
    group = group_for_user_id(user["id"])
    alias = routing.read_alias(group)
    if alias != group:  # the monitor may already have judged the lag too large
        assert not User.objects.using(alias).filter(id=user["id"]).exists()
        # ... yet a read never concludes "not found" from a replica: it confirms on the primary.
        assert selectors._row_by_id(user["id"])["id"] == user["id"]


def test_a_replica_lagging_beyond_max_lag_is_skipped_until_it_catches_up(settings, replay_paused):
    settings.MAX_REPLICA_LAG = 0.3
    services.user_create(username="lagmaker", email="lagmaker@example.com", password="a-long-pass-2026")

    def skipped():
        monitor.refresh_now()
        _fresh_client_context()
        return routing.read_alias("shard_0") == "shard_0" and routing.read_alias("default") == "default"

    wait_for(skipped, timeout=10, message="the lagging replica to be skipped")
    with connections["default_r0"].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_resume()")

    def back():
        monitor.refresh_now()
        _fresh_client_context()
        return routing.read_alias("shard_0") == "shard_0_r0"

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
    assert routing.read_alias("shard_0") == "shard_0"
    stack("start", "replica")

    def back():
        monitor.refresh_now()
        return routing.read_alias("shard_0") == "shard_0_r0"

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
    settings.METRICS_TOKEN = "health-token-for-routing-tests-0123"
    user = services.user_create(username="cutoff", email="cutoff@example.com", password="a-long-pass-2026")
    services.user_update(user_id=user["id"], changes={"display_name": "after the cut"})
    group = group_for_user_id(user["id"])

    def skipped():  # the background monitor alone, as in a serving process
        _fresh_client_context()
        return routing.read_alias(group) == group

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
        assert routing.read_alias("default") == "default_r0"  # other default-group reads still use it
        assert StaffUser.objects.all().db == "default" and Session.objects.all().db == "default"
        # The replica still has the session and the active account; the admin must not believe it.
        response = client.get("/admin/")
        assert response.status_code == 302 and "/login/" in response["Location"]
    finally:
        with connections["default_r0"].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_resume()")
