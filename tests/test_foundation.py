"""The stack is real: every database answers, replication streams, health reports faults."""

import os
import re
import subprocess
import sys
import uuid

import pytest
from django.conf import settings
from django.db import connections

from project.db.replicas import monitor
from resilience import health

from .stack import ROOT, stack, wait_for

pytestmark = pytest.mark.usefixtures("real_db")


@pytest.fixture(autouse=True)
def fresh_probe():
    """/health/ready serves a process's last probe for a second: each test probes the stack as it left it."""
    health.forget()


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


def test_ready_is_200_when_everything_answers(client):
    response = client.get("/health/ready")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    names = {c["name"] for c in body["checks"]}
    assert {
        "default",
        "default_r0",
        "shard_0",
        "shard_0_r0",
        "shard_1",
        "shard_1_r0",
        "redis-cache",
        "redis-state",
    } <= names
    assert all(c["status"] == "up" and c["latency_ms"] >= 0 for c in body["checks"])


def test_live_is_200(client):
    assert client.get("/health/live").status_code == 200


def test_ready_is_degraded_but_200_with_the_replica_stopped(client, restore_stack):
    stack("stop", "replica")
    response = client.get("/health/ready")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "degraded"
    assert set(body["degraded"]) == {f"{group}_r0" for group in settings.DATABASE_GROUPS}
    stack("start", "replica")
    wait_for(lambda: client.get("/health/ready").json()["status"] == "ok", timeout=20, message="replica back")
    monitor.refresh_now()


def test_ready_is_503_naming_the_state_redis_when_it_is_stopped(client, restore_stack):
    stack("stop", "state")
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["failed"] == ["redis-state"]
    assert response["Retry-After"]


def test_ready_is_503_naming_every_primary_when_postgres_is_stopped(client, restore_stack):
    stack("stop", "primary")
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert set(response.json()["failed"]) == {"default", *settings.SHARD_GROUPS}


def test_production_settings_refuse_to_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    env["DJANGO_SETTINGS_MODULE"] = "project.settings.production"
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_production_settings_refuse_debug():
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="project.settings.production",
        DJANGO_DEBUG="true",
        DJANGO_SECRET_KEY="x" * 60,
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be off" in result.stderr


def test_production_settings_refuse_the_placeholder_secret_key_of_env_example():
    example = (ROOT / ".env.example").read_text()
    placeholder = re.search(r"^DJANGO_SECRET_KEY=(.*)$", example, re.M).group(1).strip()
    assert len(placeholder) >= 50  # long enough to pass the length rule: only the comparison stops it
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="project.settings.production", DJANGO_SECRET_KEY=placeholder)
    env.pop("DJANGO_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is the placeholder of .env.example" in result.stderr


def check_deploy(**variables) -> subprocess.CompletedProcess:
    """`manage.py check --deploy --fail-level WARNING` under production settings with `variables` set
    (None: unset) over this process's environment."""
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="project.settings.production",
        DJANGO_ALLOWED_HOSTS="api.example.com",
        DJANGO_SECRET_KEY="Zq8" + "x7Lp2vN9" * 7,  # long and varied enough for security.W009
    )
    env.pop("DJANGO_DEBUG", None)
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_under_production_settings():
    result = check_deploy(RESILIENCE_TRUSTED_PROXIES="10.0.0.0/8")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_warns_when_production_trusts_a_proxy_header_without_trusted_proxies():
    result = check_deploy(RESILIENCE_TRUSTED_PROXIES=None)
    assert result.returncode != 0
    assert "(resilience.W030)" in result.stderr
    assert "SECURE_PROXY_SSL_HEADER" in result.stderr
