"""Request ids: generated or taken from a trusted proxy, echoed in X-Request-ID and every JSON error
body, on every log line of the request, carried to the Celery tasks it queues and to its webhooks."""

import io
import json
import logging
from contextlib import contextmanager

import pytest
from django.conf import settings as django_settings
from django.db import connections

from resilience import request_id
from resilience.request_id import RequestIdFilter
from users.models import OutboxEvent
from webhooks import deliver, dispatch
from webhooks.models import WebhookSubscriber
from webhooks.tasks import webhooks_prune

from ..processes import celery_worker
from ..stack import wait_for
from ..webhooks.receiver import Receiver

pytestmark = pytest.mark.usefixtures("real_db")
PROXY_ID = "edge-4f1c2a9e-0001"


@contextmanager
def console_log():
    """What the configured console handler (project/settings/base.py's LOGGING) writes meanwhile."""
    handler = next(h for h in logging.getLogger().handlers if any(isinstance(f, RequestIdFilter) for f in h.filters))
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.setStream(previous)


def test_every_response_carries_an_id_and_every_json_error_body_names_it(client):
    ids = set()
    for response in (
        client.get("/api/v1/users/12345/"),  # the fast path's 404
        client.get("/api/v1/users/12345/", HTTP_ACCEPT="application/json; indent=2"),  # DRF's 404
        client.post("/api/v1/users/", data="{", content_type="application/json"),  # DRF's 400
        client.get("/no/such/path"),  # Django's handler404
        client.get("/health/live"),
    ):
        value = response["X-Request-ID"]
        assert request_id.valid(value)
        if response.status_code >= 400:
            assert json.loads(response.content)["request_id"] == value, response.content
        ids.add(value)
    assert len(ids) == 5


def test_the_id_of_a_trusted_proxy_is_kept_anyone_elses_is_replaced(client, settings):
    assert client.get("/health/live", HTTP_X_REQUEST_ID=PROXY_ID)["X-Request-ID"] != PROXY_ID
    settings.RESILIENCE_TRUSTED_PROXIES = ["127.0.0.1"]
    response = client.get("/api/v1/users/777/", HTTP_X_REQUEST_ID=PROXY_ID)
    assert response["X-Request-ID"] == PROXY_ID
    assert response.json()["request_id"] == PROXY_ID
    # Even from the proxy, an id that could break a header or a log line is replaced.
    assert client.get("/health/live", HTTP_X_REQUEST_ID='a"b c')["X-Request-ID"] != 'a"b c'


def test_a_rate_limit_denial_is_logged_with_its_policy_key_and_request_id(client, settings):
    settings.RESILIENCE_RATELIMIT_POLICIES = {"api.read": {"rate": "1/m", "algorithm": "fixed_window"}}
    client.get("/api/v1/users/1/")
    with console_log() as log:
        denied = client.get("/api/v1/users/1/")
    assert denied.status_code == 429
    lines = [line for line in log.getvalue().splitlines() if "rate limited" in line]
    assert len(lines) == 1, log.getvalue()
    assert f"[{denied['X-Request-ID']}]" in lines[0]
    assert "policy=api.read" in lines[0] and "key=ip:127.0.0.1" in lines[0]


def test_a_task_queued_for_a_request_runs_under_that_requests_id(tmp_path):
    log = tmp_path / "worker.log"
    with celery_worker(log_path=log):
        with request_id.bound("req-for-a-task-0042"):
            webhooks_prune.delay()
        wait_for(
            lambda: any(
                "webhooks.prune" in line and "succeeded" in line and "[req-for-a-task-0042]" in line
                for line in log.read_text().splitlines()
            ),
            timeout=60,
            message=f"the task's log line with the request id (log: {log})",
        )
        webhooks_prune.delay()  # queued outside any request: no id, and none left over from the last task
        wait_for(
            lambda: sum("webhooks.prune" in line and "succeeded" in line for line in log.read_text().splitlines()) == 2,
            timeout=60,
            message="the second task",
        )
    last = [line for line in log.read_text().splitlines() if "webhooks.prune" in line and "succeeded" in line][-1]
    assert "[-]" in last


def test_a_webhook_delivery_carries_the_id_of_the_request_that_caused_its_event(client, settings):
    settings.RESILIENCE_TRUSTED_PROXIES = ["127.0.0.1"]
    receiver = Receiver()
    try:
        subscriber = WebhookSubscriber.objects.create(url=receiver.url, events=["user.created"])
        receiver.secret = subscriber.secret
        response = client.post(
            "/api/v1/users/",
            data={"username": "traced", "email": "traced@example.com", "password": "pw-traced-0123456789"},
            content_type="application/json",
            HTTP_X_REQUEST_ID=PROXY_ID,
        )
        assert response.status_code == 201, response.content
        events = [e for g in django_settings.SHARD_GROUPS for e in OutboxEvent.objects.using(g).all()]
        assert [e.request_id for e in events] == [PROXY_ID]
        dispatch.webhook_outbox_dispatch()
        deliver.webhook_deliveries_deliver_due(time_budget=5.0)
        (sent,) = receiver.requests
        assert sent["verified"] and sent["headers"]["X-Request-ID"] == PROXY_ID
    finally:
        receiver.stop()
        connections.close_all()
