"""The issue's baselines for `make bench`: a minimal Django project on the same cache Redis.

No middleware, no authentication, no permission classes, no database: what a team writing a naive
DRF + django-redis view would serve. bench/bare_urls.py holds its two views. Served by the same server
command, processes and threads as the project (bench/__main__.py), so the ratios price the protection.
"""

import os

os.environ.setdefault("REDIS_DB", "1")  # the test stack's Redis database, as project.settings.bench

from project.settings.caches import build_caches  # noqa: E402
from project.settings.env import env  # noqa: E402

SECRET_KEY = "bench-only-not-secret-0123456789abcdefghijklmnopqrstuvwxyz"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["rest_framework"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.bare_urls"
DATABASES: dict = {}
CACHES, _cache_url, _state_url = build_caches(redis_db=env("REDIS_DB", 0, int))
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
}
USE_TZ = True
OTEL_TRACING_ENABLED = False  # project/wsgi.py asks
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "ERROR"}}
