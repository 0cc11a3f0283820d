"""Settings shared by every environment. Integration modules build the databases, caches and Celery."""

from pathlib import Path

from .caches import build_caches
from .celery import build_celery
from .databases import build_databases
from .env import env

BASE_DIR = Path(__file__).resolve().parent.parent.parent

SECRET_KEY = env("DJANGO_SECRET_KEY", "")  # production.py refuses an empty one
DEBUG = env("DJANGO_DEBUG", False, bool)
ALLOWED_HOSTS = env("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"], list)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "resilience",
    "users",
    "webhooks",
    "ops",
]

MIDDLEWARE = [
    "resilience.request_id.RequestIdMiddleware",  # first: every later line and answer carries the id
    "resilience.nul.RefuseNulQueryMiddleware",  # PostgreSQL text cannot hold a NUL: a 400, not a 500
    # next: its latency samples cover all of Django's work, and a refusal skips all of it
    "resilience.overload.middleware.AdaptiveLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "project.db.middleware.ReadYourWritesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "ops.metrics.MetricsMiddleware",
    "resilience.lazy_messages.LazyMessageMiddleware",  # Django's, its storage built on first use
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
CSRF_FAILURE_VIEW = "resilience.errors.csrf_failure"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- databases: a default group and shard groups, each a primary plus replicas ---
DB_NAME_PREFIX = env("DB_NAME_PREFIX", "bulwark")
DATABASES, DATABASE_GROUPS, SHARD_GROUPS = build_databases(db_prefix=DB_NAME_PREFIX)
DATABASE_ROUTERS = ["project.routers.GroupRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Replica routing (project/db/): a replica lagging more than this is skipped until it catches up.
MAX_REPLICA_LAG = env("MAX_REPLICA_LAG", 2.0, float)  # seconds
REPLICA_CHECK_INTERVAL = env("REPLICA_CHECK_INTERVAL", 0.5, float)  # seconds between lag probes
# seconds a client's own writes constrain its reads (by LSN; the old time-window clients: to primaries)
READ_YOUR_WRITES_WINDOW = env("READ_YOUR_WRITES_WINDOW", 5.0, float)
# commit with remote_apply where a group has a usable synchronous standby (its authors read it there)
READ_YOUR_WRITES_SYNC_APPLY = env("READ_YOUR_WRITES_SYNC_APPLY", True, bool)

# --- sharding (users/sharding/) ---
SHARDING_LOGICAL_SHARDS = env("SHARDING_LOGICAL_SHARDS", 1024, int)
SHARDING_INITIAL_MAP = env("SHARDING_INITIAL_MAP", "")  # e.g. "0-511:shard_0 512-1023:shard_1"; empty = even
SHARDING_MAP_TTL = env("SHARDING_MAP_TTL", 2.0, float)  # seconds a process trusts its copy of the map
# seconds between a process's fleet heartbeats (the groups it knows; project/db/fleet.py); expiry: 3x
SHARDING_HEARTBEAT_INTERVAL = env("SHARDING_HEARTBEAT_INTERVAL", 2.0, float)

# Crash tests only (resilience/faults.py): SIGKILL the process at this named point, once if a marker
# file is named. Empty in every real deployment.
FAULT_POINT = env("FAULT_POINT", "")
FAULT_POINT_MARKER = env("FAULT_POINT_MARKER", "")

# --- the users API (users/) ---
# Anonymous JSON reads of GET /api/v1/users/{id}/ skip DRF's dispatch (users/fastpath.py); off = all through DRF.
USERS_FAST_READ = env("USERS_FAST_READ", True, bool)
# Those reads also skip the middleware that does nothing to them (project/front.py); off = Django's handler for all.
FRONT_ENABLED = env("FRONT_ENABLED", True, bool)
# Each process keeps hot user rows and tokens in a local cache that the cache Redis invalidates through
# client tracking (users/cache/store.py, resilience/client_cache.py): at most this many entries and bytes.
# 0 entries turns it off (every read asks the cache Redis).
USERS_LOCAL_CACHE_ENTRIES = env("USERS_LOCAL_CACHE_ENTRIES", 10000, int)
USERS_LOCAL_CACHE_BYTES = env("USERS_LOCAL_CACHE_BYTES", 8 * 1024 * 1024, int)
# Usernames product accounts may not take (compared by identity: case and width do not matter), besides
# the names of staff accounts.
USERS_RESERVED_USERNAMES = env(
    "USERS_RESERVED_USERNAMES",
    ["admin", "administrator", "root", "superuser", "staff", "support", "security", "system", "bulwark"],
    list,
)
# API tokens end USERS_TOKEN_MAX_AGE seconds after issue, or USERS_TOKEN_IDLE_TIMEOUT after their last use.
USERS_TOKEN_MAX_AGE = env("USERS_TOKEN_MAX_AGE", 30 * 86400, int)
USERS_TOKEN_IDLE_TIMEOUT = env("USERS_TOKEN_IDLE_TIMEOUT", 7 * 86400, int)

# --- Redis: cache (evictable) and state (noeviction, AOF) ---
REDIS_DB = env("REDIS_DB", 0, int)
CACHES, REDIS_CACHE_URL, REDIS_STATE_URL = build_caches(redis_db=REDIS_DB)
SESSION_ENGINE = "django.contrib.sessions.backends.db"

# --- Celery ---
for _name, _value in build_celery(state_url=REDIS_STATE_URL).items():
    globals()[_name] = _value

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024  # bodies above 64 KiB get 413

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["resilience.parsers.BoundedJSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "users.authentication.TokenAuthentication",
        "project.api.SessionAuthentication",  # staff, through the admin session
    ],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "project.api.JsonContentNegotiation",
    "EXCEPTION_HANDLER": "resilience.errors.exception_handler",
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Bulwark API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "resilience.schema.add_common_errors"],
    # Documents each operation of a URL served by one API class per operation (project.api.by_method).
    "DEFAULT_GENERATOR_CLASS": "project.api_routing.SchemaGenerator",
}

# Human-readable lines (production.py switches the formatter to JSON). Every line names the request (or
# the task, which carries its publisher's id) it was written for: resilience/request_id.py.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "resilience.request_id.RequestIdFilter"},
        "brief": {"()": "resilience.log_filters.Brief"},
    },
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["request_id"]}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    # What any client can make Django log at will (resilience/log_filters.py): one short line each.
    "loggers": {
        f"django.security.{name}": {"filters": ["brief"]}
        for name in ("DisallowedHost", "RequestDataTooBig", "TooManyFieldsSent", "TooManyFilesSent")
    },
}

# OpenTelemetry tracing (project/tracing.py): off by default; on, spans go to an OTLP/HTTP collector.
OTEL_TRACING_ENABLED = env("OTEL_TRACING_ENABLED", False, bool)
OTEL_SERVICE_NAME = env("OTEL_SERVICE_NAME", "bulwark")
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://localhost:4318/v1/traces")

# --- write-behind (users/writebehind/) ---
WRITE_BEHIND_ENABLED = env("WRITE_BEHIND_ENABLED", True, bool)  # off = an UPDATE per view (baseline)
WRITE_BEHIND_INTERVAL = env("WRITE_BEHIND_INTERVAL", 2.0, float)  # seconds between beat flushes
# Users with pending views (buffered or in a claimed batch), over all shard groups: then 503. Each
# group holds at most WRITE_BEHIND_MAX_PENDING_PER_SHARD of them (0: an even share of the total), so a
# shard that is down sheds its own views only.
WRITE_BEHIND_MAX_PENDING = env("WRITE_BEHIND_MAX_PENDING", 100_000, int)
WRITE_BEHIND_MAX_PENDING_PER_SHARD = env("WRITE_BEHIND_MAX_PENDING_PER_SHARD", 0, int)
WRITE_BEHIND_RECLAIM_AFTER = env("WRITE_BEHIND_RECLAIM_AFTER", 10.0, float)  # seconds before a batch is re-claimed
# Hours the shards keep write-behind ledger rows; never less than the oldest claimed batch's age (prune checks).
WRITE_BEHIND_LEDGER_RETENTION = env("WRITE_BEHIND_LEDGER_RETENTION", 24.0, float)
# Replicas of the state Redis that must confirm a buffered view before it is acknowledged (0 = off):
# WAIT after the add, in the same round trip; no confirmation within the timeout -> 503 "unconfirmed".
WRITE_BEHIND_WAIT_REPLICAS = env("WRITE_BEHIND_WAIT_REPLICAS", 0, int)
WRITE_BEHIND_WAIT_TIMEOUT_MS = env("WRITE_BEHIND_WAIT_TIMEOUT_MS", 100, int)
# Crash tests only: SIGKILL the flushing process once at this point (after_claim, before_commit,
# after_commit, before_ack); the marker file records that it fired. Empty in every real deployment.

CELERY_BEAT_SCHEDULE = {
    "writebehind-flush": {
        "task": "users.writebehind_flush",
        "schedule": WRITE_BEHIND_INTERVAL,
        # A flush nobody picked up in time is superseded by the next one: don't let them pile up.
        "options": {"expires": WRITE_BEHIND_INTERVAL * 5},
    },
    "writebehind-prune-ledger": {"task": "users.writebehind_prune_ledger", "schedule": 3600.0},
    "cache-replay-invalidations": {
        "task": "users.cache_replay_invalidations",
        "schedule": 5.0,
        "options": {"expires": 25},
    },
    "webhooks-dispatch": {"task": "webhooks.dispatch", "schedule": 1.0, "options": {"expires": 5}},
    "webhooks-deliver": {"task": "webhooks.deliver", "schedule": 1.0, "options": {"expires": 5}},
    "webhooks-prune": {"task": "webhooks.prune", "schedule": 3600.0},
}

# --- rate limiting and circuit breakers (resilience/) ---
# Policies: resilience/ratelimit/policies.py has the defaults; RESILIENCE_RATELIMIT_POLICIES overrides them.
RESILIENCE_RATELIMIT_POLICIES: dict = {}  # name -> options, merged over the built-in policies
RESILIENCE_BREAKERS: dict = {}  # name -> options, merged over resilience/breaker/options.py's defaults
RESILIENCE_TRUSTED_PROXIES = env("RESILIENCE_TRUSTED_PROXIES", [], list)  # IPs/CIDRs whose X-Forwarded-For we trust
RESILIENCE_RATELIMIT_ENABLED = env("RESILIENCE_RATELIMIT_ENABLED", True, bool)
RESILIENCE_RATELIMIT_STATS_MINUTES = 60  # how long denial statistics are kept (the rate-limits page)
RESILIENCE_STATE_RETRY_SECONDS = 1.0  # after a failed call, the state Redis is not asked again for this long
# Runtime overrides from the admin (resilience/overrides.py): each process re-reads them at most this often (s),
# so an override reaches every process within it; it lasts RESILIENCE_OVERRIDE_DEFAULT_SECONDS unless given.
RESILIENCE_OVERRIDES_REFRESH_SECONDS = env("RESILIENCE_OVERRIDES_REFRESH_SECONDS", 1.0, float)
RESILIENCE_OVERRIDE_DEFAULT_SECONDS = 3600
# Who may read /metrics and /health/ready's details besides staff (resilience/access.py).
METRICS_TOKEN = env("METRICS_TOKEN", "")  # a bearer token for the scraper; empty = none
METRICS_ALLOWED_IPS = env("METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"], list)
# /health/ready serves a process's last probe until it is this old (s): callers cannot make it probe more.
RESILIENCE_HEALTH_PROBE_INTERVAL = env("RESILIENCE_HEALTH_PROBE_INTERVAL", 1.0, float)
# New Idempotency-Keys one caller (user, else client address) may use per 24 h: each keeps a record in
# the state Redis for 24 h, so this bounds that memory (docs/operations.md, "Idempotency keys").
RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER = env("RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER", 1000, int)
# A breaker per dependency (cache Redis, every database alias, webhook hosts): off = always admit, record
# nothing (the benchmark's baseline). Each process re-reads a breaker's shared state at most this often
# (s), so forcing one from the admin reaches every process within it (resilience/breaker/guard.py).
RESILIENCE_DEPENDENCY_BREAKERS = env("RESILIENCE_DEPENDENCY_BREAKERS", True, bool)
RESILIENCE_BREAKER_SYNC_SECONDS = env("RESILIENCE_BREAKER_SYNC_SECONDS", 0.5, float)
# The adaptive concurrency limit per endpoint group in each process (resilience/overload/,
# docs/architecture.md "Overload"): off = no limit, no cost; shadow = count "would have refused", refuse none.
# Shadow by default: on this project's bench, refusing in-process lowered goodput (docs/operations.md).
RESILIENCE_ADAPTIVE_ENABLED = env("RESILIENCE_ADAPTIVE_ENABLED", True, bool)
RESILIENCE_ADAPTIVE_SHADOW = env("RESILIENCE_ADAPTIVE_SHADOW", True, bool)
RESILIENCE_ADAPTIVE_INITIAL_LIMIT = env("RESILIENCE_ADAPTIVE_INITIAL_LIMIT", 20, int)  # requests in flight
RESILIENCE_ADAPTIVE_MIN_LIMIT = env("RESILIENCE_ADAPTIVE_MIN_LIMIT", 4, int)  # the floor
RESILIENCE_ADAPTIVE_MAX_LIMIT = env("RESILIENCE_ADAPTIVE_MAX_LIMIT", 200, int)  # the ceiling
# A window of latency samples closes after this long and at least this many requests (then the limit moves).
RESILIENCE_ADAPTIVE_WINDOW_SECONDS = env("RESILIENCE_ADAPTIVE_WINDOW_SECONDS", 0.1, float)
RESILIENCE_ADAPTIVE_WINDOW_SAMPLES = env("RESILIENCE_ADAPTIVE_WINDOW_SAMPLES", 10, int)
RESILIENCE_ADAPTIVE_MIN_RTT_SECONDS = env("RESILIENCE_ADAPTIVE_MIN_RTT_SECONDS", 30.0, float)  # re-learn period
# Critical and default requests over their share may wait this many at once, this long (s), for a slot.
RESILIENCE_ADAPTIVE_QUEUE_SIZE = env("RESILIENCE_ADAPTIVE_QUEUE_SIZE", 8, int)
RESILIENCE_ADAPTIVE_QUEUE_TIMEOUT = env("RESILIENCE_ADAPTIVE_QUEUE_TIMEOUT", 0.02, float)
# The share of the limit each class may fill (critical: all of it), so sheddable is refused first.
RESILIENCE_ADAPTIVE_SHARES = {"sheddable": 0.5, "default": 0.9}
RESILIENCE_ADAPTIVE_RETRY_AFTER = env("RESILIENCE_ADAPTIVE_RETRY_AFTER", 1, int)  # seconds, on the 503
RATELIMIT_USE_CACHE = "state"  # django-ratelimit (fixed-window policies) counts on the state Redis
