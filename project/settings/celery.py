"""Celery: the broker lives on the state Redis by default (RabbitMQ works by URL: amqp://...).

Late acknowledgement plus reject-on-worker-lost means a SIGKILLed worker's task is redelivered, so
every task must be idempotent (the write-behind flush is, by its batch ledger).
"""

from .env import env


def build_celery(*, state_url: str) -> dict:
    return {
        "CELERY_BROKER_URL": env("CELERY_BROKER_URL", state_url),
        "CELERY_RESULT_BACKEND": None,
        "CELERY_TASK_ACKS_LATE": True,
        "CELERY_TASK_REJECT_ON_WORKER_LOST": True,
        "CELERY_WORKER_PREFETCH_MULTIPLIER": 1,
        # Unacked tasks come back after this; keep it above the longest task, far below the 1 h default.
        "CELERY_BROKER_TRANSPORT_OPTIONS": {"visibility_timeout": 300},
        "CELERY_TASK_DEFAULT_QUEUE": "bulwark",
        "CELERY_TASK_IGNORE_RESULT": True,
        "CELERY_WORKER_HIJACK_ROOT_LOGGER": False,
        "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP": True,
    }
