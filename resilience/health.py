"""Health probes: one entry per dependency, each with status and latency.

django-health-check was considered; it has no notion of a *degraded* but serving dependency (a
replica down while reads fall back to the primary) nor of per-alias replica lag, which this endpoint
must report, so these ~80 lines are our own.

`/health/ready` answers from the last probe of this process. A probe opens a connection to every
database and Redis, so a caller must not be able to trigger one per request: a result younger than
RESILIENCE_HEALTH_PROBE_INTERVAL (1 s) is served as it is, concurrent callers share one probe, and
while a probe runs the others are answered from the previous result. Anonymous callers get only the
overall status and the HTTP code; the entries (names, hosts, ports, errors, latencies) and the
warnings (a Celery queue with messages and no consumer, project/queues.py) are for the
callers /metrics admits (staff sessions, METRICS_TOKEN, METRICS_ALLOWED_IPS; resilience.access.operator_allowed).

Which dependency is `required` (down: 503, and a load balancer takes the instance out) is decided by
what the API does without it, not by whether it is used. The database primaries are: without the
default one there are no sessions, claims (registration, email changes) or staff; without a shard's,
none of its accounts can log in or be written. The Redis servers and a separate broker are not (down:
200 "degraded", the check named in `degraded`): without the cache Redis every read goes to the
databases; without the state Redis the limiter fails open (logins and registrations, whose policies fail
closed, get 429 + Retry-After), views are written straight to the database and a request with an
Idempotency-Key is refused (503, its record cannot be kept); without the broker only background work
(view flushes, webhooks) waits. Every instance shares them, so taking every instance out during a
Redis blip would turn a slower service into none. docs/operations.md has the table.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import redis
import redis.sentinel
from django.conf import settings
from django.http import JsonResponse
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from project import queues
from project.db.replicas import monitor, probe_connect

from .access import operator_allowed as sees_details

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


def _check_redis_cluster(nodes: list) -> dict:
    # Every master must answer: a key's slot may be on any of them.
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping(target_nodes=RedisCluster.PRIMARIES)
        return {"masters": len(client.get_primaries())}
    finally:
        client.close()


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
    # Not required (see the module docstring): the API answers without either Redis, or the broker.
    checks.append(("redis-cache", "redis", False, _check_redis, settings.REDIS_CACHE_URL))
    state_options = settings.CACHES.get("state", {}).get("OPTIONS", {})
    sentinels = state_options.get("SENTINELS")
    if state_options.get("CLUSTER_NODES"):
        checks.append(("redis-state", "redis", False, _check_redis_cluster, state_options["CLUSTER_NODES"]))
    elif sentinels:
        master_name = urlsplit(settings.REDIS_STATE_URL).hostname
        checks.append(("redis-state", "redis", False, _check_redis_sentinel, sentinels, master_name))
    else:
        checks.append(("redis-state", "redis", False, _check_redis, settings.REDIS_STATE_URL))
    broker = settings.CELERY_BROKER_URL
    if broker.startswith("redis") and broker != settings.REDIS_STATE_URL:
        checks.append(("broker", "redis", False, _check_redis, broker))
    elif broker.startswith("amqp"):
        checks.append(("broker", "amqp", False, _check_amqp, broker))
    return checks


def _check_amqp(url: str) -> dict:
    from kombu import Connection

    with Connection(url, connect_timeout=TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1)
    return {}


def live(request):
    return JsonResponse({"status": "live"})


def probe() -> dict:
    """Check every dependency now (in parallel) and return the full result: status, HTTP code,
    failed and degraded names and one entry per check. Never raises for a failing dependency."""
    checks = dependency_checks()
    with ThreadPoolExecutor(max_workers=len(checks) + 1) as pool:
        # Alongside the checks, not after them: asking the workers waits for their replies.
        queue_check = pool.submit(_queue_warnings)
        entries = list(pool.map(lambda c: _timed(*c), checks))
        warnings = queue_check.result()
    replicas = {s.alias: s for s in monitor.states()}
    for entry in entries:
        if entry["kind"] == "postgres-replica" and (state := replicas.get(entry["name"])) is not None:
            entry["replay_lag_s"] = None if state.lag == float("inf") else round(state.lag, 3)
            entry["wal_receiver"] = state.receiver or None
            # Answering is not serving: a replica the router skips (lagging, cut off from its primary)
            # is reported as such, with the monitor's reason, so "up, lag 0" never hides a stale one.
            if entry["status"] == "up" and not monitor.usable([state.alias]):
                entry["status"] = "skipped"
                entry["reason"] = state.reason or "its circuit breaker is open (forced from the admin?)"
    failed = [e["name"] for e in entries if e["required"] and e["status"] != "up"]
    degraded = [e["name"] for e in entries if not e["required"] and e["status"] != "up"]
    if failed:
        status, code = "down", 503
    elif degraded:
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    return {
        "status": status,
        "code": code,
        "failed": failed,
        "degraded": degraded,
        "checks": entries,
        "warnings": warnings,
    }


def _queue_warnings() -> list[str]:
    """ "queue webhooks: 3 waiting, no consumer": the ops overview's check (project/queues.py, cached
    and time-boxed there). A warning, not a failure: this process still serves, and restarting it would
    not start the missing worker. Empty when the broker cannot be asked (its own entry is down then)."""
    try:
        return queues.current_warnings()
    except Exception:  # the broker (state Redis) is down: the checks above report it
        return []


_lock = threading.Lock()
_last: dict | None = None
_last_at = 0.0  # time.monotonic() when the last probe ended
probes = 0  # probes run by this process (tests count them)


def _interval() -> float:
    return float(settings.RESILIENCE_HEALTH_PROBE_INTERVAL)


def last_result() -> tuple[dict, float]:
    """Return (the latest probe result of this process, its age in seconds), probing first when it
    is older than the interval.

    At most one probe runs at a time in a process, and the next starts no sooner than an interval
    after the last one ended. A caller that finds a probe running gets the previous result rather
    than waiting; only the very first callers of a process, with nothing to serve yet, wait for it.
    """
    global _last, _last_at, probes
    result, at = _last, _last_at
    if result is not None and time.monotonic() - at < _interval():
        return result, time.monotonic() - at
    if not _lock.acquire(blocking=result is None):
        return result, time.monotonic() - at
    try:
        # Another caller may have probed while this one waited for the lock.
        if _last is not None and time.monotonic() - _last_at < _interval():
            return _last, time.monotonic() - _last_at
        fresh = probe()
        _last, _last_at = fresh, time.monotonic()
        probes += 1
        return fresh, 0.0
    finally:
        _lock.release()


def forget() -> None:
    """Drop this process's last result, so the next call probes (for tests and after a reconfiguration)."""
    global _last, _last_at
    with _lock:
        _last, _last_at = None, 0.0


def ready(request):
    result, age = last_result()
    code = result["code"]
    if sees_details(request):
        body = {key: value for key, value in result.items() if key != "code"}
        body["age_s"] = round(age, 3)
    else:
        # The entries name hosts, ports and the errors of unreachable dependencies: not for strangers.
        body = {"status": result["status"]}
    response = JsonResponse(body, status=code)
    if code == 503:
        response["Retry-After"] = "5"
    response["Cache-Control"] = "no-store"
    return response
