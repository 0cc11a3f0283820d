"""Production: every secret from the environment; refuses to start when misconfigured."""

import copy

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .env import env

# The example value in .env.example (tests/project/test_settings.py checks they agree). It is long and varied
# enough for Django's security.W009, so only this comparison stops a copied example from signing every
# session and token digest with a key anyone can read.
PLACEHOLDER_SECRET_KEY = "change-me-to-a-random-string-of-at-least-fifty-characters-xxxxxxxx"  # noqa: S105 (refused)
GENERATE_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(50))'"

SECRET_KEY = env("DJANGO_SECRET_KEY", "")
if len(SECRET_KEY) < 50:
    raise ImproperlyConfigured(
        f"DJANGO_SECRET_KEY must be set to a random string of at least 50 characters in production ({GENERATE_KEY})."
    )
if SECRET_KEY == PLACEHOLDER_SECRET_KEY or SECRET_KEY.lower().startswith("change-me"):
    raise ImproperlyConfigured(
        f"DJANGO_SECRET_KEY is the placeholder of .env.example; set a random one ({GENERATE_KEY})."
    )
if env("DJANGO_DEBUG", False, bool):
    raise ImproperlyConfigured("DJANGO_DEBUG must be off in production.")
DEBUG = False

# Behind a TLS-terminating proxy that sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env("DJANGO_SECURE_SSL_REDIRECT", True, bool)
SECURE_REDIRECT_EXEMPT = [r"^health/"]
SECURE_HSTS_SECONDS = env("DJANGO_SECURE_HSTS_SECONDS", 31536000, int)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

# Static files (the admin, the dashboards' script, Swagger UI) are served by the app itself through
# WhiteNoise, from STATIC_ROOT filled by `manage.py collectstatic` at deploy time (docs/operations.md,
# "Static files"): every app server then answers /static/ the same way, behind nginx or without it, and
# the proxy needs no shared directory. Hashed names let clients cache them for a year; right after the
# security middleware so a static file costs no session, database or limiter work.
STATIC_ROOT = env("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles"))  # noqa: F405
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
_after = MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1  # noqa: F405
MIDDLEWARE = [*MIDDLEWARE[:_after], "whitenoise.middleware.WhiteNoiseMiddleware", *MIDDLEWARE[_after:]]  # noqa: F405

# One JSON object per line (for a log shipper), every line with its request id. The stdlib's logging
# with python-json-logger's formatter rather than structlog: Django, Celery, redis-py and our modules all
# log through the stdlib already, so one formatter on the one handler makes every line structured
# without changing a call site, and `extra={...}` fields (the limiter's policy and key) become keys.
LOGGING = copy.deepcopy(LOGGING)  # noqa: F405
LOGGING["formatters"]["json"] = {
    "()": "pythonjsonlogger.json.JsonFormatter",
    "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
    "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
}
LOGGING["handlers"]["console"]["formatter"] = "json"
LOGGING_CONFIG = "project.logconfig.configure"  # also routes Python's warnings into the JSON lines
