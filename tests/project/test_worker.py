"""The production worker command, exactly as docs/operations.md states it, delivers a webhook: it
consumes the webhooks queue as well as the default one (a worker started with `-Q bulwark` alone
never would)."""

import re
import sys

import pytest

from webhooks.models import WebhookDelivery, WebhookSubscriber
from webhooks.tasks import webhooks_dispatch

from ..processes import Process, app_env
from ..stack import ROOT, wait_for
from ..webhooks.receiver import Receiver

pytestmark = pytest.mark.usefixtures("real_db")
TRACE_ID = "edge-worker-test-0001"


def documented_worker_command() -> list[str]:
    """The worker command of docs/operations.md's "Run" section, run with this virtualenv's python."""
    run = (ROOT / "docs" / "operations.md").read_text().split("## Run", 1)[1].split("\n## ", 1)[0]
    (command,) = set(re.findall(r"`(python -m project\.worker)`", run))
    return [sys.executable, *command.split()[1:]]


def test_the_documented_worker_command_delivers_a_webhook_with_its_request_id(client, settings, tmp_path):
    settings.RESILIENCE_TRUSTED_PROXIES = ["127.0.0.1"]
    receiver = Receiver()
    worker = Process("worker", documented_worker_command(), log_path=tmp_path / "worker.log", env=app_env({})).start()
    try:
        subscriber = WebhookSubscriber.objects.create(url=receiver.url, events=["user.created"])
        receiver.secret = subscriber.secret
        response = client.post(
            "/api/v1/users/",
            data={"username": "worked", "email": "worked@example.com", "password": "pw-worked-0123456789"},
            content_type="application/json",
            HTTP_X_REQUEST_ID=TRACE_ID,
        )
        assert response.status_code == 201
        webhooks_dispatch.delay()  # what beat does every second; it queues the delivery run
        wait_for(
            lambda: WebhookDelivery.objects.filter(status="delivered").exists(),
            timeout=90,
            interval=0.25,
            message=f"the documented worker to deliver (log: {tmp_path / 'worker.log'})",
        )
        assert worker.pid is not None  # still running
        (sent,) = receiver.requests
        assert sent["verified"] and sent["headers"]["X-Request-ID"] == TRACE_ID
    finally:
        worker.stop()
        receiver.stop()


def test_the_overview_and_readiness_warn_of_a_queue_with_messages_and_no_consumer(tmp_path):
    from django.test import Client
    from django_redis import get_redis_connection

    from ops.dashboard import panels
    from project import queues
    from project.worker import DEFAULT_QUEUE, WEBHOOKS_QUEUE
    from resilience import health

    from ..processes import celery_worker

    queues.forget()
    # A worker that consumes only the default queue, as docs once told production to start it.
    with celery_worker(extra_args=("-Q", DEFAULT_QUEUE)) as _worker:
        webhooks_dispatch.delay()
        wait_for(
            lambda: (queues.forget(), panels.celery()["workers"])[1],
            timeout=60,
            message="the worker to answer",
        )
        data = panels.celery()
        assert data["queues"][WEBHOOKS_QUEUE] >= 1
        warning = f"queue {WEBHOOKS_QUEUE}: {data['queues'][WEBHOOKS_QUEUE]} waiting, no consumer"
        assert warning in data["queue_warnings"]

        # /health/ready's details say it too, from the same cached check (no second ask of the workers).
        health.forget()
        before = queues._cache
        details = Client().get("/health/ready")  # loopback: admitted to the details
        assert warning in details.json()["warnings"], details.json()
        assert queues._cache is before
        # Anonymous callers still get the status alone.
        anonymous = Client(REMOTE_ADDR="203.0.113.9").get("/health/ready")
        assert anonymous.json() == {"status": details.json()["status"]}
        health.forget()
    get_redis_connection("state").delete(WEBHOOKS_QUEUE)
