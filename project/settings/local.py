"""Local development against the project's own stack (scripts/stack)."""

from .base import *  # noqa: F403
from .env import env

DEBUG = env("DJANGO_DEBUG", True, bool)
# Local only: a fixed key so `make run` needs no configuration. production.py has no default.
SECRET_KEY = env("DJANGO_SECRET_KEY", "local-dev-only-not-secret-0123456789abcdefghijklmnopqrstuvwxyz")

# Local receivers run on this machine; production allows no private network (webhooks/egress.py).
WEBHOOK_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32", "::1/128"]
