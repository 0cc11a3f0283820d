"""Health probes: one entry per dependency, each with status and latency.

django-health-check was considered; it has no notion of a *degraded* but serving dependency (a
replica down while reads fall back to the primary) nor of per-alias replica lag, which this endpoint
must report, so these ~80 lines are our own.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import redis
import redis.sentinel
from django.conf import settings
from django.http import JsonResponse

from project.db.replicas import monitor, probe_connect

TIMEOUT = 1.5


def _check_postgres(alias: str) -> dict:
    with probe_connect(alias) as conn:
        conn.execute("SELECT 1").fetchone()
    return {}


def _check_redis(url: str) -> dict:
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    try:
        client.ping()
    finally:
        client.close()
    return {}


def _check_redis_sentinel(sentinels: list, master_name: str) -> dict:
    # REDIS_STATE_URL names the master, not a host: ask the Sentinels for it, then ping it.
    sentinel = redis.sentinel.Sentinel(
        sentinels,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        sentinel_kwargs={"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT, "retry": None},
    )  # no retries
    try:
        host, port = sentinel.discover_master(master_name)
        client = redis.Redis(host=host, port=port, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        try:
            client.ping()
        finally:
            client.close()
    finally:
        for s in sentinel.sentinels:
            s.close()
    return {"master": f"{host}:{port}"}


def _timed(name, kind, required, fn, *args):
    started = time.perf_counter()
    try:
        extra = fn(*args)
        status = "up"
        error = None
    except Exception as exc:  # any failure of a dependency is a finding, never a 500
        extra, status, error = {}, "down", f"{exc.__class__.__name__}: {str(exc).strip()[:200]}"
    entry = {
        "name": name,
        "kind": kind,
        "required": required,
        "status": status,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        **extra,
    }
    if error:
        entry["error"] = error
    return entry


def dependency_checks():
    checks = []
    for spec in settings.DATABASE_GROUPS.values():
        checks.append((spec["primary"], "postgres-primary", True, _check_postgres, spec["primary"]))
        for alias in spec["replicas"]:
            checks.append((alias, "postgres-replica", False, _check_postgres, alias))
    checks.append(("redis-cache", "redis", True, _check_redis, settings.REDIS_CACHE_URL))
    sentinels = settings.CACHES.get("state", {}).get("OPTIONS", {}).get("SENTINELS")
    if sentinels:
        master_name = urlsplit(settings.REDIS_STATE_URL).hostname
        checks.append(("redis-state", "redis", True, _check_redis_sentinel, sentinels, master_name))
    else:
        checks.append(("redis-state", "redis", True, _check_redis, settings.REDIS_STATE_URL))
    broker = settings.CELERY_BROKER_URL
    if broker.startswith("redis") and broker != settings.REDIS_STATE_URL:
        checks.append(("broker", "redis", True, _check_redis, broker))
    elif broker.startswith("amqp"):
        checks.append(("broker", "amqp", True, _check_amqp, broker))
    return checks


def _check_amqp(url: str) -> dict:
    from kombu import Connection

    with Connection(url, connect_timeout=TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1)
    return {}


def live(request):
    return JsonResponse({"status": "live"})


def ready(request):
    checks = dependency_checks()
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        entries = list(pool.map(lambda c: _timed(*c), checks))
    lag = {s.alias: s.lag for s in monitor.states()}
    for entry in entries:
        if entry["kind"] == "postgres-replica" and entry["name"] in lag:
            entry["replay_lag_s"] = None if lag[entry["name"]] == float("inf") else round(lag[entry["name"]], 3)
    failed = [e["name"] for e in entries if e["required"] and e["status"] != "up"]
    degraded = [e["name"] for e in entries if not e["required"] and e["status"] != "up"]
    if failed:
        status, code = "down", 503
    elif degraded:
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    body = {"status": status, "failed": failed, "degraded": degraded, "checks": entries}
    response = JsonResponse(body, status=code)
    if code == 503:
        response["Retry-After"] = "5"
    response["Cache-Control"] = "no-store"
    return response
