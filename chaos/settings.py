"""`make chaos`: the test databases (bulwark_test*) on the stack the BULWARK_* ports name, the real
URLs, limits that never deny the load, and webhook timers scaled down from minutes to seconds so that
a scenario recovers within the run. Every process of the suite (server, worker, beat, the runner)
uses this module."""

import os

os.environ.setdefault("REDIS_DB", "3")  # not the test suite's Redis DB (1)

from project.settings.test import *  # noqa: E402, F403
from resilience.ratelimit.policies import DEFAULT_POLICIES  # noqa: E402

ROOT_URLCONF = "project.urls"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

# High enough never to deny the load; each policy keeps its built-in fail mode (users.register and
# auth.token fail closed: 429 while the state Redis is out).
RESILIENCE_RATELIMIT_POLICIES = {
    name: {"limit": 100000000} if spec.get("algorithm") == "concurrency" else {"rate": "100000000/m"}
    for name, spec in DEFAULT_POLICIES.items()
}

# Production retries a webhook after 30 s doubling to 1 h and opens a host's breaker for 10 s; here
# seconds, so that "delivered after the receiver returns" is observed within a scenario.
WEBHOOK_BACKOFF_BASE = 1.0
WEBHOOK_BACKOFF_CAP = 4.0
WEBHOOK_CONNECT_TIMEOUT = 1.0
WEBHOOK_READ_TIMEOUT = 2.0
WEBHOOK_LEASE_SECONDS = 8.0
RESILIENCE_BREAKERS = {
    "webhook:*": {
        "open_seconds": 2.0,
        "consecutive_failures": 3,
        "minimum_calls": 3,
        "window_size": 10,
        "half_open_max_calls": 1,
        "success_threshold": 1,
    }
}
