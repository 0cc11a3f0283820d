"""`make bench`: the test stack and databases, production-like server settings, the bench URLs."""

from resilience.ratelimit.policies import DEFAULT_POLICIES

from .env import env
from .test import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "ERROR"}}
# The limiter runs on every request (its cost is measured); the limits are high enough never to deny.
RESILIENCE_RATELIMIT_POLICIES = {
    name: {"limit": 100000000} if spec.get("algorithm") == "concurrency" else {"rate": "100000000/m"}
    for name, spec in DEFAULT_POLICIES.items()
}
# The baseline of the concurrent-requests limit's cost (bench section "concurrency"): not checked at all.
if env("BENCH_CONCURRENCY_OFF", False, bool):
    RESILIENCE_RATELIMIT_POLICIES["api.concurrent"]["mode"] = "off"
