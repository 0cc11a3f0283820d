"""Celery: the broker lives on the state Redis by default (RabbitMQ works by URL: amqp://...).

Late acknowledgement plus reject-on-worker-lost means a SIGKILLed worker's task is redelivered, so
every task must be idempotent (the write-behind flush is, by its batch ledger).

With REDIS_STATE_SENTINELS the default broker is kombu's sentinel:// transport on those Sentinels
(`sentinel://h1:p1/db;sentinel://h2:p2/db`), which follows the master through a failover. With
REDIS_STATE_CLUSTER_NODES there is no default: kombu has no Redis Cluster transport, so CELERY_BROKER_URL
must name a single Redis (redis://) or RabbitMQ (amqp://).
"""

from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from project.worker import DEFAULT_QUEUE, WEBHOOKS_QUEUE

from .caches import state_mode, state_sentinels
from .env import env


def build_celery(*, state_url: str) -> dict:
    sentinels, master_name = state_sentinels()
    default_broker = state_url
    if sentinels:
        db = urlsplit(state_url).path.lstrip("/") or "0"
        default_broker = ";".join(f"sentinel://{host}:{port}/{db}" for host, port in sentinels)
    broker_url = env("CELERY_BROKER_URL", default_broker)
    if state_mode() == "cluster" and broker_url == state_url:
        raise ImproperlyConfigured(
            "REDIS_STATE_CLUSTER_NODES: Celery's broker cannot be a Redis Cluster; set CELERY_BROKER_URL "
            "to a single Redis (redis://host:port/db) or RabbitMQ (amqp://...)."
        )
    # Unacked tasks come back after this; keep it above the longest task, far below the 1 h default.
    # kombu's Redis sockets have no timeout by default: a reply that never comes (a server paused for a
    # switchover, a half-open connection) blocked the worker's consumer for good while it closed the
    # lost connection (`make sentinel-demo` stalled once after a planned switchover). BRPOP waits 1 s
    # at a time, well under these.
    transport_options = {"visibility_timeout": 300, "socket_timeout": 5, "socket_connect_timeout": 5}
    if broker_url.startswith("sentinel://"):
        transport_options["master_name"] = master_name
    return {
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": None,
        "CELERY_TASK_ACKS_LATE": True,
        "CELERY_TASK_REJECT_ON_WORKER_LOST": True,
        "CELERY_WORKER_PREFETCH_MULTIPLIER": 1,
        "CELERY_BROKER_TRANSPORT_OPTIONS": transport_options,
        "CELERY_TASK_DEFAULT_QUEUE": DEFAULT_QUEUE,
        # A slow webhook receiver must not delay write-behind flushes: webhooks have their own queue.
        "CELERY_TASK_ROUTES": {"webhooks.*": {"queue": WEBHOOKS_QUEUE}},
        "CELERY_TASK_IGNORE_RESULT": True,
        "CELERY_WORKER_HIJACK_ROOT_LOGGER": False,
        "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP": True,
    }
