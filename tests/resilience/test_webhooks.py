"""Outbound webhooks over the real stack: PostgreSQL (default + shards), the state Redis (breakers,
broker), a real local HTTP receiver that verifies signatures and dedups by event id, and real Celery
worker and beat processes for the end-to-end run (one of them SIGKILLed mid-delivery)."""

import json
import os
import signal
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User as StaffUser

from resilience.breaker import State, get_breaker
from resilience.models import WebhookDelivery, WebhookSubscriber
from resilience.webhooks import deliver, dispatch
from resilience.webhooks.signing import (
    EVENT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
    webhook_signature,
)
from users.models import OutboxEvent
from users.outbox import EVENTS
from users.services import user_create, user_delete, user_update

from ..processes import celery_beat, celery_worker
from ..stack import ROOT, run_together, wait_for

pytestmark = pytest.mark.usefixtures("real_db")

FAST_BREAKER = {
    "open_seconds": 1.0,
    "consecutive_failures": 3,
    "minimum_calls": 3,
    "window_size": 10,
    "half_open_max_calls": 1,
    "success_threshold": 1,
}


class Receiver:
    """A real HTTP server on a loopback address. It answers `status` (200 = accept), verifies every
    request's signature with `secret` (401 if it fails) and processes each event id at most once."""

    def __init__(self, host: str = "127.0.0.1"):
        self.secret = ""
        self.status = 200
        self.hang_next = False  # the next request blocks until `release` is set
        self.release = threading.Event()
        self.hanging = threading.Event()
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # every request: headers, body, verified, answered status
        self.processed: list[str] = []  # event ids acted upon, in order (each at most once)
        self.duplicates: Counter[str] = Counter()  # accepted again and ignored
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.handle(self, body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/hooks/bulwark?x=1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = dict(request.headers)
        event_id = headers.get(EVENT_ID_HEADER, "")
        verified = verify_signature(self.secret, headers.get(TIMESTAMP_HEADER), body, headers.get(SIGNATURE_HEADER))
        with self.lock:
            hang, self.hang_next = self.hang_next, False
            status = 401 if not verified else self.status
        if hang:
            self.hanging.set()
            self.release.wait(30)
        with self.lock:
            self.requests.append(
                {"headers": headers, "body": body, "verified": verified, "status": status, "path": request.path}
            )
            if status == 200:
                if event_id in self.processed:
                    self.duplicates[event_id] += 1
                else:
                    self.processed.append(event_id)
        try:
            request.send_response(status)
            request.send_header("Content-Length", "2")
            request.end_headers()
            request.wfile.write(b"ok")
        except OSError:
            pass  # the sender is gone (killed mid-request)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(host: str = "127.0.0.1") -> Receiver:
        made.append(Receiver(host))
        return made[-1]

    yield make
    for receiver in made:
        receiver.stop()


@pytest.fixture
def fast(settings):
    """Backoff in tens of milliseconds and a breaker that opens after 3 failures for 1 s."""
    settings.WEBHOOK_BACKOFF_BASE = 0.05
    settings.WEBHOOK_BACKOFF_CAP = 0.2
    settings.WEBHOOK_CONNECT_TIMEOUT = 1.0
    settings.WEBHOOK_READ_TIMEOUT = 2.0
    settings.RESILIENCE_BREAKERS = {"webhook:*": FAST_BREAKER}
    return settings


def subscribe(receiver: Receiver, events=EVENTS, **fields) -> WebhookSubscriber:
    subscriber = WebhookSubscriber.objects.create(url=receiver.url, events=list(events), **fields)
    receiver.secret = subscriber.secret
    return subscriber


def make_users(n: int, prefix: str = "hook") -> list[int]:
    return [
        user_create(username=f"{prefix}{i}", email=f"{prefix}{i}@example.com", password="pw-0123456789")["id"]
        for i in range(n)
    ]


def outbox() -> list[OutboxEvent]:
    return [e for group in django_settings.SHARD_GROUPS for e in OutboxEvent.objects.using(group).order_by("id")]


def event_ids() -> set[str]:
    return {str(e.event_id) for e in outbox()}


def deliveries(**filters):
    return WebhookDelivery.objects.using("default").filter(**filters)


def deliver_until(predicate, *, timeout: float = 15.0, message: str = "deliveries"):
    def step():
        deliver.webhook_deliveries_deliver_due(time_budget=2.0)
        return predicate()

    return wait_for(step, timeout=timeout, interval=0.05, message=message)


def breaker_state(receiver: Receiver) -> State:
    return get_breaker(deliver.breaker_name(receiver.server.server_address[0])).state


def test_each_event_is_posted_once_signed_with_the_subscribers_secret(receivers, fast):
    receiver = receivers()
    subscriber = subscribe(receiver)
    (user_id,) = make_users(1)
    user_update(user_id=user_id, changes={"display_name": "Ada"})
    user_delete(user_id=user_id)

    assert sum(dispatch.webhook_outbox_dispatch().values()) == 3
    assert all(e.dispatched_at is not None for e in outbox())
    assert deliver.webhook_deliveries_deliver_due() == {"delivered": 3}

    assert [r["headers"][EVENT_HEADER] for r in receiver.requests] == list(EVENTS)
    assert set(receiver.processed) == event_ids() and not receiver.duplicates
    first = receiver.requests[0]
    body, headers = first["body"], first["headers"]
    payload = json.loads(body)
    assert first["verified"] and first["path"] == "/hooks/bulwark?x=1"
    assert headers["Content-Type"] == "application/json"
    assert payload["id"] == headers[EVENT_ID_HEADER] and payload["event"] == "user.created"
    assert payload["data"] == {"id": user_id, "username": "hook0", "display_name": ""}
    assert receiver.requests[1]["body"].count(b'"display_name":"Ada"') == 1
    # The signature binds the secret, the timestamp and the exact body.
    timestamp, signature = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
    assert signature == webhook_signature(subscriber.secret, timestamp, body) and signature.startswith("sha256=")
    assert not verify_signature("whsec_other", timestamp, body, signature)
    assert not verify_signature(subscriber.secret, timestamp, body.replace(b"hook0", b"hook1"), signature)
    assert not verify_signature(subscriber.secret, int(timestamp) - 1, body, signature)
    assert not verify_signature(subscriber.secret, timestamp, body, signature, now=int(timestamp) + 301)
    assert not verify_signature(subscriber.secret, "junk", body, signature)
    rows = list(deliveries().order_by("id"))
    assert [(d.status, d.attempts, d.last_status_code) for d in rows] == [("delivered", 1, 200)] * 3
    assert all(d.delivered_at is not None and d.claim_token is None for d in rows)


def test_subscribers_get_only_their_events_and_inactive_ones_keep_theirs_waiting(receivers, fast):
    deletions, everything = receivers(), receivers("127.0.0.2")
    subscribe(deletions, events=["user.deleted"])
    paused = subscribe(everything)
    (user_id,) = make_users(1)
    user_delete(user_id=user_id)
    dispatch.webhook_outbox_dispatch()
    WebhookSubscriber.objects.filter(id=paused.id).update(active=False)

    deliver.webhook_deliveries_deliver_due()
    assert [r["headers"][EVENT_HEADER] for r in deletions.requests] == ["user.deleted"]
    assert everything.requests == []
    assert sorted(deliveries(subscriber=paused).values_list("status", "attempts")) == [("pending", 0)] * 2

    WebhookSubscriber.objects.filter(id=paused.id).update(active=True)
    deliver.webhook_deliveries_deliver_due()
    assert set(everything.processed) == event_ids()


def test_failing_receiver_opens_its_breaker_deliveries_wait_without_burning_attempts_then_all_arrive_once(
    receivers, fast
):
    down, healthy = receivers(), receivers("127.0.0.2")
    subscribe(down)
    subscribe(healthy)
    down.status = 500
    fast.RESILIENCE_BREAKERS = {"webhook:*": {**FAST_BREAKER, "open_seconds": 2.0}}
    make_users(6)
    dispatch.webhook_outbox_dispatch()

    outcomes = deliver.webhook_deliveries_deliver_due()
    # Three 500s open the host's breaker; its other deliveries wait, the other host is unaffected.
    assert breaker_state(down) == State.OPEN
    assert outcomes["delivered"] == 6 and outcomes["retrying"] == 3 and outcomes["waiting"] >= 1
    assert set(healthy.processed) == event_ids()
    waiting = deliveries(subscriber__url=down.url)
    assert sorted(waiting.values_list("attempts", flat=True)) == [0, 0, 0, 1, 1, 1]
    # While it stays open, runs only push the host's deliveries back: no request, no attempt, none dead.
    requests_before = len(down.requests)
    for _ in range(5):
        deliver.webhook_deliveries_deliver_due()
    assert len(down.requests) == requests_before == 3
    assert sum(waiting.values_list("attempts", flat=True)) == 3
    assert not deliveries(status="dead").exists()

    down.status = 200
    deliver_until(lambda: deliveries(status="delivered").count() == 12, message="every delivery")
    assert breaker_state(down) == State.CLOSED
    assert sorted(down.processed) == sorted(event_ids()) and not down.duplicates
    assert all(r["verified"] for r in down.requests)
    assert max(waiting.values_list("attempts", flat=True)) <= 3


def test_dead_letter_after_max_attempts_then_the_admin_action_retries_it(receivers, fast, client):
    fast.WEBHOOK_MAX_ATTEMPTS = 3
    receiver = receivers()
    subscribe(receiver, events=["user.created"])
    receiver.status = 400  # the receiver refuses: retried, dead-lettered, never a failure of the host
    make_users(1)
    dispatch.webhook_outbox_dispatch()

    deliver_until(lambda: deliveries(status="dead").count() == 1, message="the dead letter")
    dead = deliveries().get()
    assert (dead.attempts, dead.last_status_code, dead.last_error) == (3, 400, "HTTP 400: ok")
    assert len(receiver.requests) == 3 and receiver.processed == []
    assert breaker_state(receiver) == State.CLOSED
    deliver.webhook_deliveries_deliver_due()
    assert len(receiver.requests) == 3  # dead means no more attempts

    staff = StaffUser.objects.create_superuser("staff", "staff@example.com", "pw-0123456789")
    client.force_login(staff)
    changelist = "/admin/resilience/webhookdelivery/"
    assert client.get(changelist).status_code == 200
    assert client.get(f"{changelist}{dead.id}/change/").status_code == 200
    assert client.get("/admin/resilience/webhooksubscriber/").status_code == 200
    add = "/admin/resilience/webhooksubscriber/add/"
    assert client.get(add).status_code == 200
    refused = client.post(add, {"name": "ftp", "url": "ftp://example.com/x", "events": ["user.created"]})
    assert refused.status_code == 200 and not WebhookSubscriber.objects.filter(name="ftp").exists()
    created = client.post(
        add, {"name": "crm", "url": "https://crm.example.com/hook", "events": ["user.deleted"], "active": "on"}
    )
    assert created.status_code == 302
    crm = WebhookSubscriber.objects.using("default").get(name="crm")
    assert crm.events == ["user.deleted"] and crm.secret.startswith("whsec_") and len(crm.secret) > 40
    assert crm.secret.encode() in client.get(f"/admin/resilience/webhooksubscriber/{crm.id}/change/").content
    response = client.post(changelist, {"action": "retry_dead", "_selected_action": [dead.id]}, follow=True)
    assert response.status_code == 200
    assert b"1 dead-lettered deliveries queued again" in response.content
    retried = deliveries().get()
    assert (retried.status, retried.attempts) == ("pending", 0)

    receiver.status = 200
    deliver.webhook_deliveries_deliver_due()
    assert deliveries().get().status == "delivered"
    assert receiver.processed == [str(dead.event_id)]


def test_a_crash_between_creating_deliveries_and_marking_the_outbox_duplicates_nothing(receivers, fast):
    first, second = receivers(), receivers("127.0.0.2")
    subscribe(first)
    subscribe(second)
    make_users(3)
    events = outbox()

    # The dispatcher created the deliveries and died before the shard committed "dispatched": twice.
    assert dispatch.webhook_deliveries_create(events=events) == 6
    assert dispatch.webhook_deliveries_create(events=events) == 6
    assert all(e.dispatched_at is None for e in outbox())
    assert sum(dispatch.webhook_outbox_dispatch().values()) == 3  # the next run: same deliveries, then marked
    assert deliveries().count() == 6
    assert sum(dispatch.webhook_outbox_dispatch().values()) == 0

    # Redelivered dispatch tasks running at once: SKIP LOCKED splits the rows, the unique key catches the rest.
    make_users(20, prefix="more")

    run_together(dispatch.webhook_outbox_dispatch, 4)
    assert deliveries().count() == 46
    assert all(e.dispatched_at is not None for e in outbox())

    deliver.webhook_deliveries_deliver_due()
    for receiver in (first, second):
        assert sorted(receiver.processed) == sorted(event_ids()) and not receiver.duplicates


def test_a_worker_that_outlived_its_lease_cannot_overwrite_the_attempt_that_replaced_it(receivers, fast):
    fast.WEBHOOK_LEASE_SECONDS = 0.3
    receiver = receivers()
    subscribe(receiver, events=["user.created"])
    make_users(1)
    dispatch.webhook_outbox_dispatch()

    lost = deliver.webhook_delivery_claim()  # a worker claims it, then stalls (or dies)
    assert lost is not None
    assert deliver.webhook_deliveries_deliver_due() == {}  # leased: nobody else takes it meanwhile
    deliver_until(lambda: deliveries(status="delivered").count() == 1, message="the lease to expire")
    receiver.status = 500
    assert deliver.webhook_delivery_attempt(lost) == "stale"  # it comes back: its failure is not recorded
    row = deliveries().get()
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 2, 200)
    assert receiver.processed == [str(row.event_id)] and len(receiver.requests) == 2


def test_end_to_end_with_real_celery_worker_and_beat_including_a_worker_sigkilled_mid_post(receivers, tmp_path):
    receiver = receivers()
    subscribe(receiver)
    breaker = {**FAST_BREAKER, "permit_timeout_seconds": 3.0}  # the killed worker's probe permit comes back
    (tmp_path / "webhook_e2e_settings.py").write_text(
        "from project.settings.test import *  # noqa\n"
        "CELERY_BEAT_SCHEDULE = {\n"
        "    'webhooks-dispatch': {'task': 'resilience.webhooks_dispatch', 'schedule': 1.0,\n"
        "                          'options': {'expires': 5}},\n"
        "    'webhooks-deliver': {'task': 'resilience.webhooks_deliver', 'schedule': 1.0,\n"
        "                         'options': {'expires': 5}},\n"
        "}\n"
        "WEBHOOK_BACKOFF_BASE = 0.1\n"
        "WEBHOOK_BACKOFF_CAP = 0.5\n"
        "WEBHOOK_LEASE_SECONDS = 2.0\n"
        "WEBHOOK_DELIVER_TIME_BUDGET = 2.0\n"
        f"RESILIENCE_BREAKERS = {{'webhook:*': {breaker!r}}}\n"
    )
    env = {
        "DJANGO_SETTINGS_MODULE": "webhook_e2e_settings",
        "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    receiver.status = 503
    make_users(3)

    with celery_beat(schedule_path=tmp_path / "beat-schedule", env=env):
        with celery_worker(env=env, log_path=tmp_path / "worker-1.log") as worker:
            wait_for(lambda: breaker_state(receiver) == State.OPEN, timeout=60, message="the breaker to open")
            assert not deliveries(status="dead").exists()
            assert all(e.dispatched_at is not None for e in outbox())
            # The receiver is back, but the first probe's answer never reaches the worker: SIGKILL.
            with receiver.lock:
                receiver.hang_next, receiver.status = True, 200
            wait_for(receiver.hanging.is_set, timeout=30, message="a POST in flight")
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=15)
        receiver.release.set()
        with celery_worker(env=env, log_path=tmp_path / "worker-2.log"):
            wait_for(lambda: deliveries(status="delivered").count() == 3, timeout=60, message="3 deliveries")
            make_users(2, prefix="late")
            wait_for(lambda: deliveries(status="delivered").count() == 5, timeout=30, message="5 deliveries")

    assert deliveries().count() == 5 and len(event_ids()) == 5
    assert sorted(receiver.processed) == sorted(event_ids())  # each event acted upon once...
    assert sum(receiver.duplicates.values()) == 1  # ...though the killed POST's event was sent again
    assert all(r["verified"] for r in receiver.requests)


def test_settings_are_validated_by_a_system_check(settings):
    from resilience.webhooks.checks import check_webhook_settings

    assert check_webhook_settings() == []
    settings.WEBHOOK_BACKOFF_BASE = 0
    settings.WEBHOOK_MAX_ATTEMPTS = 0
    (error,) = check_webhook_settings()
    assert error.id == "resilience.E020" and "WEBHOOK_MAX_ATTEMPTS" in error.msg
