"""Prometheus instruments of the resilience machinery, counted where things happen in every process:
rate-limit decisions (resilience/ratelimit/drf.py calls `count_decision`) and breaker transitions (a
breaker listener). /metrics itself is served by ops/metrics.py, which reads every app.
"""

import logging

from prometheus_client import Counter

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
        RATELIMIT_DECISIONS.labels(decision.policy.name, outcome, "true" if decision.degraded else "false").inc()
    except Exception:  # metrics must never break the request they observe
        logger.exception("counting a rate-limit decision failed")


def _on_transition(transition) -> None:
    BREAKER_TRANSITIONS.labels(transition.name, str(transition.to_state)).inc()


def install_listener() -> None:
    """Count breaker transitions of this process (idempotent)."""
    add_listener(_on_transition)


install_listener()
