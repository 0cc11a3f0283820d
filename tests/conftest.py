"""Fixtures over the real stack. Tests run in autocommit on real databases (no wrapping transaction),
so replicas, Celery workers and other processes see what a test writes, exactly as in production."""

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django_redis import get_redis_connection

from project.db import pinning
from project.db.replicas import monitor
from resilience import overrides
from resilience.breaker import forget_guards
from users import cache
from users.models import ShardMapEntry
from users.sharding.shardmap import initial_ranges, shard_map

from .stack import stack
from .staff import caught_up

SHARD_TABLES = ["users_token", "users_outboxevent", "users_writebehindbatch", "users_frozenlogicalshard", "users_user"]
DEFAULT_TABLES = [
    "users_uniqueclaim",
    "django_admin_log",
    "django_session",
    "auth_user_groups",
    "auth_user_user_permissions",
    "auth_user",
    "resilience_webhookdelivery",
    "resilience_webhooksubscriber",
]


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker):
    """Use the stack's bulwark_test* databases as they are; migrate them once per session."""
    stack("up")
    with django_db_blocker.unblock():
        call_command("migrate_all", verbosity=0)


def truncate_everything():
    with connections["default"].cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(DEFAULT_TABLES)} RESTART IDENTITY CASCADE")
        cursor.execute("TRUNCATE users_shardmove, users_shardmapentry")
    # Resharding tests move logical shards: every test starts from the initial map.
    ShardMapEntry.objects.using("default").bulk_create(
        [
            ShardMapEntry(logical_shard=ls, group=group)
            for start, end, group in initial_ranges()
            for ls in range(start, end + 1)
        ]
    )
    shard_map.invalidate()
    for group in settings.SHARD_GROUPS:
        with connections[group].cursor() as cursor:
            cursor.execute(f"TRUNCATE {', '.join(SHARD_TABLES)} CASCADE")
    for alias in ("default", "state"):
        try:
            get_redis_connection(alias).flushdb()
        except Exception:  # a previous test may have left a Redis down; the stack fixture restarts it
            stack("up")
            get_redis_connection(alias).flushdb()
    # Breakers and overrides live in the state Redis just flushed: no process-local copy survives.
    forget_guards()
    overrides.forget()
    # The flush reaches this process's local cache through tracking, asynchronously: drop it now.
    if (local := cache.local_cache()) is not None:
        local.clear()


@pytest.fixture
def real_db(django_db_setup, django_db_blocker):
    """Unblock the real databases for a test and start it from empty tables and empty Redis DBs."""
    with django_db_blocker.unblock():
        stack("up")
        truncate_everything()
        shard_map.invalidate()
        pinning.reset()
        monitor.refresh_now()
        yield
        pinning.reset()
        for conn in connections.all():
            conn.close()


@pytest.fixture
def restore_stack():
    """Bring every stack component back up after a fault test, whatever happened in it."""
    yield
    for component in ("primary", "replica", "sync-replica", "cache", "state"):
        try:
            stack("resume", component)
        except RuntimeError:
            pass
    stack("up")


@pytest.fixture
def staff(real_db):
    """A superuser of the admin (Django's auth user, default database)."""
    from django.contrib.auth.models import User as StaffUser

    return StaffUser.objects.create_superuser("ops", "ops@example.com", "pw-ops-0123456789")


@pytest.fixture
def admin_client(staff):
    """A test client logged in as `staff`, once the replicas have the session."""
    from django.test import Client

    client = Client()
    client.force_login(staff)
    caught_up()
    return client


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real local Redis Cluster, 3 masters each with a replica, started once for the session by the
    first test that asks for it (deploy/demo_support.py, as `make cluster-demo` starts it); stopped at
    the end. Ports are free loopback ports (the bus ports given explicitly), files under pytest's tmp."""
    from deploy.demo_support import Cluster

    from .processes import Processes
    from .stack import free_port

    ports: list[int] = []
    while len(ports) < 12:
        port = free_port()
        if port not in ports:
            ports.append(port)
    procs = Processes(tmp_path_factory.mktemp("redis-cluster"))
    cluster = Cluster(procs, ports[:6], ports[6:], node_timeout_ms=1000)
    try:
        cluster.create()
        yield cluster
    finally:
        procs.stop_all()


@pytest.fixture
def on_cluster(settings, redis_cluster):
    """Point the "state" alias at `redis_cluster` for the test (REDIS_STATE_CLUSTER_NODES's settings,
    built by project/settings/caches.py's own code), from an empty cluster; yield the cluster."""
    from project.settings.caches import build_caches
    from resilience.redis_state import state_redis

    nodes = " ".join(f"{host}:{port}" for host, port in redis_cluster.nodes())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_STATE_CLUSTER_NODES", nodes)
        caches, _, _ = build_caches(redis_db=settings.REDIS_DB)
    settings.CACHES = {**settings.CACHES, "state": caches["state"]}
    state_redis().flushall(target_nodes="primaries")
    forget_guards()
    return redis_cluster
