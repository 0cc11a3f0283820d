"""Prometheus metrics, served at /metrics (project/urls.py includes this module's `urlpatterns`).

Counters are incremented where things happen, in every process: HTTP requests (MetricsMiddleware),
users-cache events (the middleware adds what `users.cache.stats` counted during the request), and
the resilience machinery's own (resilience/metrics.py: rate-limit decisions, breaker transitions).
Gauges of shared state (breaker states, the write-behind backlog, replica lag) and of configuration
(the adaptive limit's floor) are computed at scrape time by StateCollector, so they are right whichever
process answers the scrape.

With several server processes, set PROMETHEUS_MULTIPROC_DIR to an empty directory writable by all of
them before they start (prometheus_client then keeps counters in per-process files, and a scrape adds
up every process's); wipe it when the server restarts, and call
`prometheus_client.multiprocess.mark_process_dead(pid)` from the server's child-exit hook (gunicorn's
`child_exit`). Without it the default registry of the process that answers is used.

Access: resilience/access.py (staff, METRICS_TOKEN, METRICS_ALLOWED_IPS).
"""

import functools
import logging
import math
import os
import threading
import time

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import path
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from resilience import metrics as resilience_metrics  # noqa: F401  (its counters are scraped here)
from resilience import overload
from resilience.access import operator_allowed
from resilience.breaker import State
from resilience.errors import error_body

logger = logging.getLogger(__name__)

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

REQUESTS = Counter(
    "bulwark_http_requests", "HTTP requests answered, by method, status and view name.", ["method", "status", "view"]
)
# Per route (the resolved view name, as REQUESTS), never the raw path: one series per route and bucket.
# Buckets from the cached read (about a millisecond) to the 2 s database connect timeout and beyond.
LATENCY = Histogram(
    "bulwark_http_request_duration_seconds",
    "Time from the first middleware to the response, by method and view name.",
    ["method", "view"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CACHE_EVENTS = Counter(
    "bulwark_user_cache_events",
    "Users cache events (users.cache.stats): hits, misses, errors, refused_sets.",
    ["event"],
)


LOCAL_CACHE_EVENTS = Counter(
    "bulwark_local_cache_events",
    "The per-process tracked cache (resilience/client_cache.py): hits, fills, invalidations, flushes "
    "(the tracking connection lost), refused_fills (an invalidation overtook the read).",
    ["event"],
)
LOCAL_CACHE_SIZE = Gauge(
    "bulwark_local_cache_size",
    "Entries and bytes the per-process tracked caches hold (summed over live processes).",
    ["unit"],
    multiprocess_mode="livesum",
)
LOCAL_CACHE_TRACKING = Gauge(
    "bulwark_local_cache_tracking_processes",
    "Processes whose tracking connection is up (their local cache may answer).",
    multiprocess_mode="livesum",
)
COUNT_INTERVAL = 1.0  # seconds: how late a request's cache events may reach the counters

_cache_lock = threading.Lock()
_cache_seen: dict[str, int] = {}
_local_seen: dict[str, int] = {}
_next_count = 0.0


def count_cache_events(*, now: bool = False) -> None:
    """Add to CACHE_EVENTS and LOCAL_CACHE_EVENTS what users.cache.stats and the local cache counted since
    the last call in this process, and set the local cache's size; at most once per COUNT_INTERVAL unless
    `now` (a scrape).

    users/cache/store.py and resilience/client_cache.py keep plain per-process integers; taking the
    difference here keeps them free of Prometheus and is exact in multiprocess mode (each process
    reports its own deltas). Once a second rather than on every request: the lock and the walk over
    the counters cost the hot read more than a second's delay costs a dashboard.
    """
    global _next_count
    clock = time.monotonic()
    if not now and clock < _next_count:
        return
    from users.cache import stats
    from users.cache.store import local_cache_in_use

    with _cache_lock:
        _next_count = clock + COUNT_INTERVAL
        _add_deltas(CACHE_EVENTS, stats, _cache_seen)
        local = local_cache_in_use()
        if local is not None:
            _add_deltas(LOCAL_CACHE_EVENTS, local.stats, _local_seen)
            entries, size = local.size()
            LOCAL_CACHE_SIZE.labels("entries").set(entries)
            LOCAL_CACHE_SIZE.labels("bytes").set(size)
            LOCAL_CACHE_TRACKING.set(1 if local.live else 0)


def _add_deltas(counter: Counter, counts: dict, seen: dict) -> None:
    for event, value in list(counts.items()):
        delta = int(value) - seen.get(event, 0)
        if delta > 0:
            counter.labels(event).inc(delta)
        seen[event] = int(value)


@functools.lru_cache(maxsize=4096)
def _series(method: str, status: int, view: str):
    """The request counter's and the latency histogram's series for these labels. `labels()` costs a
    lock and a tuple build on every hot request; the label values are few (methods, statuses, route
    names), and the bound keeps a scan of odd statuses from growing the memo."""
    return REQUESTS.labels(method, str(status), view), LATENCY.labels(method, view)


class MetricsMiddleware:
    """Count every response by method, status and resolved view name (":unmatched" for none, so a
    scan of random URLs cannot blow up the label set). Add to MIDDLEWARE after the session and
    authentication middleware."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        try:
            elapsed = time.perf_counter() - started
            match = getattr(request, "resolver_match", None)
            view = (match.view_name or match._func_path) if match is not None else ":unmatched"
            method = request.method if request.method in METHODS else "other"
            requests, latency = _series(method, response.status_code, view)
            requests.inc()
            latency.observe(elapsed)
            count_cache_events()
        except Exception:  # never fail a request because of metrics
            logger.exception("counting a request failed")
        return response


# --- gauges computed at scrape time ---
class StateCollector:
    """Breaker states, the write-behind backlog, replica lag and the adaptive limit's floor, read when
    /metrics is scraped.

    A source that fails is left out and bulwark_metrics_source_up{source} says 0.
    """

    def collect(self):
        up = GaugeMetricFamily(
            "bulwark_metrics_source_up", "1 if the source of these gauges answered the scrape.", labels=["source"]
        )
        for source, gather in (
            ("breakers", self._breakers),
            ("write_behind", self._write_behind),
            ("replicas", self._replicas),
            ("adaptive_limit", self._adaptive_limit),
        ):
            try:
                families = list(gather())
            except Exception as exc:  # a scrape reports a down dependency, it does not fail with it
                logger.warning("metrics source %s failed: %s", source, exc)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from families
        yield up

    def _breakers(self):
        from resilience.breaker import all_breakers, get_breaker

        state = GaugeMetricFamily(
            "bulwark_circuit_breaker_state", "1 for the state each breaker is in.", labels=["name", "state"]
        )
        rate = GaugeMetricFamily(
            "bulwark_circuit_breaker_failure_rate_percent",
            "Bad calls in the breaker's window, percent.",
            labels=["name"],
        )
        for name in all_breakers():
            snap = get_breaker(name).snapshot()
            for candidate in State:
                state.add_metric([name, str(candidate)], 1 if snap.state == candidate else 0)
            if snap.failure_rate is not None:
                rate.add_metric([name], snap.failure_rate)
        yield state
        yield rate

    def _write_behind(self):
        from users.writebehind import buffer

        stats = buffer.stats()
        for key, help_text in (
            ("pending_views_users", "Users with views not yet flushed."),
            ("pending_seen_users", "Users with last-seen stamps not yet flushed."),
            ("claimed_batches", "Batches claimed by a flush and not yet acknowledged."),
        ):
            yield GaugeMetricFamily(f"bulwark_writebehind_{key}", help_text, value=stats[key])
        yield GaugeMetricFamily(
            "bulwark_writebehind_oldest_pending_seconds",
            "Age of the oldest pending item.",
            value=stats["oldest_pending_age_s"] or 0,
        )
        if stats["last_flush_at"] is not None:
            yield GaugeMetricFamily(
                "bulwark_writebehind_last_flush_timestamp_seconds",
                "When the last flush ended.",
                value=stats["last_flush_at"],
            )
        yield GaugeMetricFamily(
            "bulwark_writebehind_last_flush_duration_seconds",
            "How long the last flush took (0 before the first).",
            value=stats["last_flush_duration_ms"] / 1000,
        )
        # The configured period, so an alert can say "no flush for 3 intervals" without repeating it.
        yield GaugeMetricFamily(
            "bulwark_writebehind_flush_interval_seconds",
            "WRITE_BEHIND_INTERVAL: how often beat asks for a flush.",
            value=settings.WRITE_BEHIND_INTERVAL,
        )

    def _replicas(self):
        from project.db.replicas import monitor

        lag = GaugeMetricFamily(
            "bulwark_replica_lag_seconds", "Replay lag of each replica (NaN when unknown).", labels=["alias"]
        )
        reachable = GaugeMetricFamily(
            "bulwark_replica_reachable", "1 if the replica answered its last probe.", labels=["alias"]
        )
        for state in monitor.states():
            lag.add_metric([state.alias], math.nan if math.isinf(state.lag) else state.lag)
            reachable.add_metric([state.alias], 1 if state.reachable else 0)
        yield lag
        yield reachable
        yield GaugeMetricFamily(
            "bulwark_replica_max_lag_seconds",
            "MAX_REPLICA_LAG: a replica lagging more is skipped.",
            value=settings.MAX_REPLICA_LAG,
        )

    def _adaptive_limit(self):
        # The configured floor, so an alert can say "pinned at its floor" without repeating the setting.
        # The limits themselves are per process, set where they are learnt (resilience/metrics.py).
        yield GaugeMetricFamily(
            "bulwark_adaptive_concurrency_floor",
            "RESILIENCE_ADAPTIVE_MIN_LIMIT: the lowest an endpoint group's adaptive limit goes.",
            value=overload.options().floor,
        )


def multiprocess_dir() -> str | None:
    # prometheus_client itself decides multiprocess mode from this variable (at import), so it is read
    # here as well rather than through a setting that could disagree with it.
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def registry() -> CollectorRegistry:
    """The registry a scrape reads: every process's counters in multiprocess mode, else this process's."""
    if multiprocess_dir():
        scrape = CollectorRegistry()
        multiprocess.MultiProcessCollector(scrape)
        scrape.register(StateCollector())
        return scrape
    return REGISTRY


if not multiprocess_dir():
    REGISTRY.register(StateCollector())


# --- the endpoint ---
def metrics_view(request):
    """The Prometheus text exposition; 403 for a client that is not allowed."""
    if not operator_allowed(request):
        return JsonResponse(
            error_body("Metrics are for staff, a bearer token or allowed addresses.", "forbidden"), status=403
        )
    count_cache_events(now=True)
    response = HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


urlpatterns = [path("", metrics_view, name="metrics")]
