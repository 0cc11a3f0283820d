"""Prometheus /metrics: who may read it, what it counts, and every process adding up in multiprocess
mode."""

import os
import subprocess
import sys
import textwrap

from django.conf import settings as django_settings
from django.contrib.auth.models import User as StaffUser
from django.test import Client

from ..stack import ROOT
from ..staff import caught_up
from .conftest import failing_breaker, metric


# --- metrics ---
def test_metrics_are_served_to_staff_a_bearer_token_and_allowed_addresses_only(real_db, settings):
    staff = StaffUser.objects.create_superuser("ops", "ops@example.com", "pw-ops-0123456789")
    outsider = {"REMOTE_ADDR": "203.0.113.9"}

    assert Client().get("/metrics").status_code == 200  # loopback is allowed by default
    assert Client().get("/metrics", **outsider).status_code == 403
    settings.METRICS_TOKEN = "s3cret-token-for-tests"
    assert (
        Client().get("/metrics", headers={"Authorization": "Bearer s3cret-token-for-tests"}, **outsider).status_code
        == 200
    )
    assert Client().get("/metrics", headers={"Authorization": "Bearer wrong"}, **outsider).status_code == 403
    settings.METRICS_ALLOWED_IPS = ["203.0.113.0/24"]
    assert Client().get("/metrics", **outsider).status_code == 200
    settings.METRICS_ALLOWED_IPS = []
    assert Client().get("/metrics").status_code == 403
    signed_in = Client()
    signed_in.force_login(staff)
    caught_up()
    assert signed_in.get("/metrics", **outsider).status_code == 200


def test_metrics_count_requests_limits_cache_and_expose_breakers_backlog_and_lag(real_db, settings):
    from resilience import metrics

    metrics.install_listener()  # the tests' conftest clears listeners between tests
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "ops.metrics.MetricsMiddleware"]
    failing_breaker("payments")
    client = Client()
    before = client.get("/metrics").content.decode()
    client.get("/health/live")
    client.post("/admin/login/", {"username": "nobody", "password": "x"})  # counted by admin.login
    from users import cache

    cache.stats["hits"] += 2  # what users/cache/store.py does on hits in this process

    body = client.get("/metrics").content.decode()

    def grew(metric_name, /, by=1.0, **labels):
        return (metric(body, metric_name, **labels) or 0) - (metric(before, metric_name, **labels) or 0) >= by

    assert grew("bulwark_http_requests_total", method="GET", status="200", view="health-live")
    assert grew("bulwark_ratelimit_decisions_total", policy="admin.login", decision="allowed", degraded="false")
    assert grew("bulwark_user_cache_events_total", by=2, event="hits")
    assert metric(body, "bulwark_circuit_breaker_state", name="payments", state="OPEN") == 1
    assert metric(body, "bulwark_circuit_breaker_state", name="payments", state="CLOSED") == 0
    assert metric(body, "bulwark_circuit_breaker_transitions_total", name="payments", to_state="OPEN") >= 1
    assert metric(body, "bulwark_writebehind_pending_views_users") == 0
    for spec in django_settings.DATABASE_GROUPS.values():
        for alias in spec["replicas"]:
            assert metric(body, "bulwark_replica_reachable", alias=alias) == 1
            assert metric(body, "bulwark_replica_lag_seconds", alias=alias) is not None
    assert metric(body, "bulwark_metrics_source_up", source="write_behind") == 1


def test_metrics_report_the_local_cache(real_db):
    """The tracked per-process cache (#20): its hits, size and tracking state on /metrics."""
    from project.db import pinning
    from users import cache, selectors, services
    from users.cache.store import local_cache

    from ..stack import wait_for

    user = services.user_create(username="metered", email="metered@example.com", password="pw-metered-2026")
    pinning.reset()  # a later request: no read-your-writes state, so the local cache may answer
    local = local_cache()
    wait_for(lambda: local.begin() is not None, message="tracking to start")
    client = Client()
    before = client.get("/metrics").content.decode()
    for _ in range(3):
        selectors.user_get_by_id(user_id=user["id"])
    assert local.get(cache.user_key(user["id"])) is not None
    body = client.get("/metrics").content.decode()
    hits = (metric(body, "bulwark_local_cache_events_total", event="hits") or 0) - (
        metric(before, "bulwark_local_cache_events_total", event="hits") or 0
    )
    assert hits >= 2
    assert metric(body, "bulwark_local_cache_size", unit="entries") >= 1
    assert metric(body, "bulwark_local_cache_size", unit="bytes") > 0
    assert metric(body, "bulwark_local_cache_tracking_processes") == 1


def test_metrics_add_up_every_process_in_multiprocess_mode(real_db, tmp_path):
    """Two processes count; a third one, answering the scrape, reports the sum of both."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "project.settings.test"}
    count = textwrap.dedent("""
        import sys, django
        django.setup()
        from resilience import metrics
        metrics.RATELIMIT_DECISIONS.labels("api.read", "denied", "false").inc(int(sys.argv[1]))
    """)
    scrape = textwrap.dedent("""
        import django
        django.setup()
        from prometheus_client import generate_latest
        from ops import metrics
        print(generate_latest(metrics.registry()).decode())
    """)
    for n in ("3", "4"):
        subprocess.run([sys.executable, "-c", count, n], cwd=ROOT, env=env, check=True, timeout=120)
    out = subprocess.run(
        [sys.executable, "-c", scrape], cwd=ROOT, env=env, check=True, timeout=120, capture_output=True, text=True
    ).stdout

    assert metric(out, "bulwark_ratelimit_decisions_total", policy="api.read", decision="denied") == 7
    assert metric(out, "bulwark_writebehind_pending_views_users") == 0  # scrape-time gauges as well
