"""The stack is real: every database answers and replication streams."""

import uuid

import pytest
from django.conf import settings
from django.db import connections

from .stack import wait_for

pytestmark = pytest.mark.usefixtures("real_db")


def test_every_configured_database_answers_and_replicas_are_in_recovery():
    for group, spec in settings.DATABASE_GROUPS.items():
        with connections[spec["primary"]].cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery()")
            assert cursor.fetchone() == (False,), group
        assert spec["replicas"], f"group {group} has no replica"
        for alias in spec["replicas"]:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT pg_is_in_recovery()")
                assert cursor.fetchone() == (True,), alias


def test_a_row_written_on_the_primary_streams_to_the_replica():
    marker = f"stream-{uuid.uuid4().hex}"
    with connections["shard_0"].cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS stream_probe (v text)")
        cursor.execute("INSERT INTO stream_probe VALUES (%s)", [marker])

    def seen_on_replica():
        with connections["shard_0_r0"].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM stream_probe WHERE v = %s", [marker])
            return cursor.fetchone()[0] == 1

    wait_for(seen_on_replica, timeout=10, message="the row on the replica")
    with connections["shard_0"].cursor() as cursor:
        cursor.execute("DROP TABLE stream_probe")
