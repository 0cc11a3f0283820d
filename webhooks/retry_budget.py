"""Retry budget per webhook host: retries are at most a share of first attempts, so a brownout of a
receiver is not doubled by our own retries (Envoy's retry budgets; what Resilience4j and Polly lack).

Every first attempt to a host is counted; a retry (an attempt after the first) is admitted while the
host's retries stay under max(WEBHOOK_RETRY_BUDGET_MIN, WEBHOOK_RETRY_BUDGET_RATIO x first attempts),
counted over the current WEBHOOK_RETRY_BUDGET_WINDOW and the one before, in the state Redis (one Lua
call, webhooks/retry_budget.lua) so that every worker shares one budget.

A retry over budget is deferred, not dropped: deliver.py gives the attempt back and the delivery
stays pending until a later window (the minimum guarantees a host's backlog keeps draining).
When the state Redis is unavailable the budget fails open: retries go out as before the budget
existed, limited by the host's breaker and the backoff.
"""

import logging
import math
import time
from pathlib import Path

from resilience.outage import Outage
from resilience.redis_state import UNAVAILABLE, lua_script

from .conf import WebhookSettings

logger = logging.getLogger("webhooks")

KEY_VERSION = "v1"
outage = Outage("webhook retry budget")
_SCRIPT = Path(__file__).resolve().parent / "retry_budget.lua"


def budget_key(host: str, window: int) -> str:
    """Hash of first attempts (f) and admitted retries (r) to `host` during window number `window`."""
    return f"wh:retry_budget:{KEY_VERSION}:{host}:{window}"


def _call(kind: str, host: str, conf: WebhookSettings) -> bool:
    if outage.active():
        return True
    window = int(time.time() // conf.retry_budget_window)
    try:
        admitted, retries, allowance = lua_script(_SCRIPT)(
            keys=[budget_key(host, window), budget_key(host, window - 1)],
            args=[kind, conf.retry_budget_ratio, conf.retry_budget_min, math.ceil(2 * conf.retry_budget_window)],
        )
    except UNAVAILABLE as exc:
        outage.failed(exc)
        return True
    except Exception:  # a bug must not stop deliveries: fail open, loudly
        logger.exception("webhook retry budget of %s failed", host)
        return True
    outage.recovered()
    if not admitted:
        logger.info("webhook retry to %s deferred: %d of %d retries used", host, retries, allowance)
    return bool(admitted)


def count_first_attempt(host: str, conf: WebhookSettings) -> None:
    """Count a first attempt to `host` (it earns the host retry budget). Never raises."""
    _call("first", host, conf)


def retry_admitted(host: str, conf: WebhookSettings) -> bool:
    """Whether a retry to `host` fits its budget now (and count it if so). Never raises; True while
    the state Redis is unavailable."""
    return _call("retry", host, conf)
