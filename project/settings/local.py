"""Local development against the project's own stack (scripts/stack)."""

import os

# The stack creates three shard databases; every process is configured with all three from the start
# while the map seeds only two, so `make add-shard` can move logical shards onto shard_2 beside a
# serving `make run` (reshard refuses to switch while a running process lacks the target group).
os.environ.setdefault("SHARD_COUNT", "3")
os.environ.setdefault("SHARDING_INITIAL_MAP", "0-511:shard_0 512-1023:shard_1")

from .base import *  # noqa: E402, F403
from .env import env  # noqa: E402

# Off by default, as in production: a newcomer (or anyone on the network) gets the JSON errors, never a
# traceback page. DJANGO_DEBUG=true for Django's debug pages; `make run` serves the static files either way.
DEBUG = env("DJANGO_DEBUG", False, bool)
# Local only: a fixed key so `make run` needs no configuration. production.py has no default.
SECRET_KEY = env("DJANGO_SECRET_KEY", "local-dev-only-not-secret-0123456789abcdefghijklmnopqrstuvwxyz")

# Local receivers run on this machine; production allows no private network (webhooks/egress.py).
WEBHOOK_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32", "::1/128"]

# Static files through WhiteNoise, as in production (runserver's own static handler is off: `--nostatic`
# in the Procfile). That handler let SuspiciousFileOperation from a path such as /static/%2e%2e/x past
# every error handler, a bare 500 (found by the black-box pass); WhiteNoise answers it 404. Locally it
# serves straight from the apps' static folders (finders): no collectstatic to run.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
_after = MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1  # noqa: F405
MIDDLEWARE = [*MIDDLEWARE[:_after], "whitenoise.middleware.WhiteNoiseMiddleware", *MIDDLEWARE[_after:]]  # noqa: F405
