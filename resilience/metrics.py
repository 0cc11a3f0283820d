"""Prometheus instruments of the resilience machinery, counted where things happen in every process:
rate-limit decisions (resilience/ratelimit/drf.py calls `count_decision`), breaker transitions (a
breaker listener) and the adaptive concurrency limit's windows and refusals (resilience/overload/).
/metrics itself is served by ops/metrics.py, which reads every app.
"""

import functools
import logging

from prometheus_client import Counter, Gauge

from .breaker import add_listener

logger = logging.getLogger(__name__)

RATELIMIT_DECISIONS = Counter(
    "bulwark_ratelimit_decisions",
    "Rate-limit checks by policy and outcome (allowed, denied, or would_deny: a policy in shadow mode "
    "admitted it); degraded means the state Redis was unavailable.",
    ["policy", "decision", "degraded"],
)
BREAKER_TRANSITIONS = Counter(
    "bulwark_circuit_breaker_transitions", "Circuit breaker state changes caused by this process.", ["name", "to_state"]
)


# --- hooks, called where things happen ---
def count_decision(decision) -> None:
    """Count one rate-limit Decision (allowed or denied). Never raises."""
    try:
        if decision.allowed:
            outcome = "allowed"
        else:
            outcome = "would_deny" if decision.policy.mode == "shadow" else "denied"
        _decisions(decision.policy.name, outcome, decision.degraded).inc()
    except Exception:  # metrics must never break the request they observe
        logger.exception("counting a rate-limit decision failed")


@functools.lru_cache(maxsize=1024)
def _decisions(policy: str, outcome: str, degraded: bool):
    """The series of RATELIMIT_DECISIONS for these labels: `labels()` costs a lock and a tuple build on
    every limited request; policies and outcomes are few."""
    return RATELIMIT_DECISIONS.labels(policy, outcome, "true" if degraded else "false")


def _on_transition(transition) -> None:
    BREAKER_TRANSITIONS.labels(transition.name, str(transition.to_state)).inc()


def install_listener() -> None:
    """Count breaker transitions of this process (idempotent)."""
    add_listener(_on_transition)


install_listener()


# --- the adaptive concurrency limit (resilience/overload/) ---
# Per process: in multiprocess mode each live process reports its own series (a `pid` label), since each
# learns its own limit. Set when a window closes (about every 100 ms under load), never per request.
ADAPTIVE_LIMIT = Gauge(
    "bulwark_adaptive_concurrency_limit",
    "The adaptive concurrency limit of an endpoint group in this process.",
    ["group"],
    multiprocess_mode="liveall",
)
ADAPTIVE_MIN_RTT = Gauge(
    "bulwark_adaptive_min_rtt_seconds",
    "The lowest window latency the adaptive limit compares against (seconds).",
    ["group"],
    multiprocess_mode="liveall",
)
ADAPTIVE_IN_FLIGHT = Gauge(
    "bulwark_adaptive_in_flight_peak",
    "The most requests of the group in flight at once during the last window.",
    ["group"],
    multiprocess_mode="liveall",
)
ADAPTIVE_REFUSALS = Counter(
    "bulwark_adaptive_refusals",
    "Requests over the adaptive limit, by group and priority class; mode shadow = admitted, would have been refused.",
    ["group", "priority", "mode"],
)


def adaptive_window_closed(window) -> None:
    """Publish one closed window of an adaptive limiter (resilience/overload/limiter.Window). Never raises."""
    try:
        ADAPTIVE_LIMIT.labels(window.group).set(window.limit)
        ADAPTIVE_MIN_RTT.labels(window.group).set(window.min_rtt)
        ADAPTIVE_IN_FLIGHT.labels(window.group).set(window.peak_in_flight)
        if window.refused:
            logger.warning("adaptive limit %s: refused %d (limit %d)", window.group, window.refused, window.limit)
        if window.shadowed:
            logger.info("adaptive limit %s: would have refused %d (shadow mode)", window.group, window.shadowed)
    except Exception:  # metrics must never break the request they observe
        logger.exception("publishing an adaptive-limit window failed")


def count_adaptive_refusal(group: str, priority: str, *, shadow: bool) -> None:
    """Count one request over the adaptive limit: refused, or admitted in shadow mode. Never raises."""
    try:
        ADAPTIVE_REFUSALS.labels(group, priority, "shadow" if shadow else "refused").inc()
    except Exception:
        logger.exception("counting an adaptive-limit refusal failed")
