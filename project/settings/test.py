"""Tests: the same real stack, separate databases (bulwark_test*) and Redis database numbers."""

import os

os.environ.setdefault("DB_NAME_PREFIX", "bulwark_test")
os.environ.setdefault("REDIS_DB", "1")
# Three shard databases are configured, the map starts on two: shard_2 is the empty shard the
# resharding tests move logical shards onto (as an operator adding a shard would).
os.environ.setdefault("SHARD_COUNT", "3")
os.environ.setdefault("SHARDING_INITIAL_MAP", "0-511:shard_0 512-1023:shard_1")

from .base import *  # noqa: E402, F403
from .env import env  # noqa: E402

SECRET_KEY = env("DJANGO_SECRET_KEY", "test-only-not-secret-0123456789abcdefghijklmnopqrstuvwxyz")
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed; production uses PBKDF2
ALLOWED_HOSTS = ["*"]

# Tests register many users from one address; limiter tests set their own tight policies.
RESILIENCE_RATELIMIT_POLICIES = {
    name: {"rate": rate}
    for name, rate in (
        ("users.register", "10000/h"),
        ("auth.token", "1000/m"),
        ("auth.token.ip", "1000/m"),
        ("auth.token.username", "1000/m"),
        ("auth.bad_token", "1000/m"),
    )
}

# The tests' webhook receivers listen on 127.0.0.1 (tests that use a second loopback address allow it
# themselves); production allows no private network (webhooks/egress.py).
WEBHOOK_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32", "::1/128"]
