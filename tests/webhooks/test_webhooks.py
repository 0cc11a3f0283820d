"""Outbound webhooks over the real stack: PostgreSQL (default + shards), the state Redis (breakers,
broker), a real local HTTP receiver that verifies signatures and dedups by event id, and real Celery
worker and beat processes for the end-to-end run (one of them SIGKILLed mid-delivery)."""

import http.client
import json
import os
import signal
import socket
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User as StaffUser
from django.utils import timezone

from resilience.breaker import State, get_breaker
from users.models import OutboxEvent
from users.outbox import EVENTS
from users.services import user_delete, user_update
from webhooks import deliver, dispatch, egress, services
from webhooks.models import WebhookDelivery, WebhookSubscriber
from webhooks.signing import (
    EVENT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    new_secret,
    sign,
    verify,
)

from ..factories import SubscriberFactory, UserFactory
from ..processes import celery_beat, celery_worker
from ..stack import ROOT, run_together, wait_for
from .conftest import FAST_BREAKER
from .receiver import Receiver

pytestmark = pytest.mark.usefixtures("real_db")


def subscribe(receiver: Receiver, events=EVENTS, **fields) -> WebhookSubscriber:
    subscriber = SubscriberFactory(url=receiver.url, events=list(events), **fields)
    receiver.secret = subscriber.secret
    return subscriber


def make_users(n: int, prefix: str = "hook") -> list[int]:
    return [UserFactory(username=f"{prefix}{i}")["id"] for i in range(n)]


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
    assert payload["id"] == headers[ID_HEADER] and payload["event"] == "user.created"
    assert payload["data"] == {"id": user_id, "username": "hook0", "display_name": ""}
    assert receiver.requests[1]["body"].count(b'"display_name":"Ada"') == 1
    # The signature binds the secret, the id, the timestamp and the exact body.
    timestamp, signature = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
    assert signature == sign(subscriber.secret, headers[ID_HEADER], timestamp, body) and signature.startswith("v1,")
    assert verify(subscriber.secret, headers, body)
    assert verify(subscriber.secret, {k.upper(): v for k, v in headers.items()}, body)  # names: any case
    assert not verify(new_secret(), headers, body)
    assert not verify(subscriber.secret, headers, body.replace(b"hook0", b"hook1"))
    assert not verify(subscriber.secret, {**headers, TIMESTAMP_HEADER: str(int(timestamp) - 1)}, body)
    assert not verify(subscriber.secret, headers, body, now=int(timestamp) + 301)
    assert not verify(subscriber.secret, {**headers, TIMESTAMP_HEADER: "junk"}, body)
    assert not verify(subscriber.secret, {**headers, SIGNATURE_HEADER: signature.replace("v1,", "v2,")}, body)
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
    changelist = "/admin/webhooks/webhookdelivery/"
    assert client.get(changelist).status_code == 200
    assert client.get(f"{changelist}{dead.id}/change/").status_code == 200
    assert client.get("/admin/webhooks/webhooksubscriber/").status_code == 200
    add = "/admin/webhooks/webhooksubscriber/add/"
    assert client.get(add).status_code == 200
    refused = client.post(add, {"name": "ftp", "url": "ftp://example.com/x", "events": ["user.created"]})
    assert refused.status_code == 200 and not WebhookSubscriber.objects.filter(name="ftp").exists()
    created = client.post(
        add, {"name": "crm", "url": "https://crm.example.com/hook", "events": ["user.deleted"], "active": "on"}
    )
    assert created.status_code == 302
    crm = WebhookSubscriber.objects.using("default").get(name="crm")
    assert crm.events == ["user.deleted"] and crm.secret.startswith("whsec_") and len(crm.secret) > 40
    assert crm.secret.encode() in client.get(f"/admin/webhooks/webhooksubscriber/{crm.id}/change/").content
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
        "    'webhooks-dispatch': {'task': 'webhooks.dispatch', 'schedule': 1.0,\n"
        "                          'options': {'expires': 5}},\n"
        "    'webhooks-deliver': {'task': 'webhooks.deliver', 'schedule': 1.0,\n"
        "                         'options': {'expires': 5}},\n"
        "}\n"
        "WEBHOOK_BACKOFF_BASE = 0.1\n"
        "WEBHOOK_BACKOFF_CAP = 0.5\n"
        "WEBHOOK_LEASE_SECONDS = 2.0\n"
        "WEBHOOK_DELIVER_TIME_BUDGET = 2.0\n"
        "WEBHOOK_RETRY_BUDGET_MIN = 1000\n"  # about leases and breakers: the retry budget has its own test
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
    from webhooks.checks import check_webhook_settings

    assert check_webhook_settings() == []
    settings.WEBHOOK_BACKOFF_BASE = 0
    settings.WEBHOOK_MAX_ATTEMPTS = 0
    (error,) = check_webhook_settings()
    assert error.id == "webhooks.E001" and "WEBHOOK_MAX_ATTEMPTS" in error.msg
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    settings.WEBHOOK_BACKOFF_BASE = 1.0
    settings.WEBHOOK_ALLOWED_PRIVATE_NETWORKS = ["10.0.0.1/8"]  # host bits set: a typo, not a network
    (error,) = check_webhook_settings()
    assert "WEBHOOK_ALLOWED_PRIVATE_NETWORKS" in error.msg
    settings.WEBHOOK_ALLOWED_PRIVATE_NETWORKS = ["10.0.0.0/8"]
    settings.WEBHOOK_DELIVERY_DEADLINE = 0
    (error,) = check_webhook_settings()
    assert "WEBHOOK_DELIVERY_DEADLINE" in error.msg


def test_signatures_match_the_standard_webhooks_reference_vector():
    # The example of the Standard Webhooks reference libraries: a receiver using one of them verifies us.
    secret, msg_id, timestamp, body = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, msg_id, timestamp, body) == expected
    headers = {
        "Webhook-Id": msg_id,
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": f"v1,bm9wZQ== {expected}",
    }
    assert verify(secret, headers, body, now=timestamp + 10)
    assert verify(["whsec_" + "A" * 44, secret], headers, body, now=timestamp + 10)  # any of several secrets
    assert not verify(secret, headers, body, now=timestamp + 301)
    assert not verify("whsec_not base64!", headers, body, now=timestamp)  # a malformed secret verifies nothing


def test_a_captured_delivery_replayed_with_a_new_id_fails_verification(receivers, fast):
    receiver = receivers()
    subscribe(receiver, events=["user.created"])
    make_users(1)
    dispatch.webhook_outbox_dispatch()
    assert deliver.webhook_deliveries_deliver_due() == {"delivered": 1}
    (captured,) = receiver.requests

    # An attacker who captured the request sends it again at once (well within the tolerance) under a
    # fresh id, so that the receiver's duplicate filter does not recognise it.
    replayed = {**captured["headers"], ID_HEADER: str(uuid.uuid4())}
    assert not verify(receiver.secret, replayed, captured["body"])
    conn = http.client.HTTPConnection(*receiver.server.server_address, timeout=5)
    conn.request("POST", "/hooks/bulwark?x=1", body=captured["body"], headers=replayed)
    assert conn.getresponse().status == 401
    conn.close()
    assert receiver.processed == [captured["headers"][ID_HEADER]]  # acted upon once, the replay refused


def test_after_a_secret_rotation_both_secrets_sign_until_the_window_ends_then_only_the_new_one(receivers, fast):
    fast.WEBHOOK_SECRET_ROTATION_WINDOW = 3600
    receiver = receivers()
    subscriber = subscribe(receiver, events=["user.created"])
    old = subscriber.secret
    new = services.webhook_subscriber_rotate_secret(subscriber_id=subscriber.id)
    assert new != old and new.startswith("whsec_")
    receiver.secret = old  # the receiver has not switched yet...
    make_users(1, prefix="during")
    dispatch.webhook_outbox_dispatch()
    assert deliver.webhook_deliveries_deliver_due() == {"delivered": 1}
    during = receiver.requests[-1]
    assert during["verified"] and len(during["headers"][SIGNATURE_HEADER].split()) == 2
    assert verify(new, during["headers"], during["body"])  # ...and may switch at any moment of the window

    # The window ends: only the new secret signs, and a receiver still on the old one refuses.
    WebhookSubscriber.objects.filter(id=subscriber.id).update(
        previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )
    make_users(1, prefix="after")
    dispatch.webhook_outbox_dispatch()
    deliver.webhook_deliveries_deliver_due()
    after = receiver.requests[-1]
    assert not after["verified"] and len(after["headers"][SIGNATURE_HEADER].split()) == 1
    assert verify(new, after["headers"], after["body"]) and not verify(old, after["headers"], after["body"])


@pytest.mark.parametrize(
    ("address", "refused_as"),
    [
        ("127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.1.1", "link-local"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 (an address under test, not a bind)
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not public"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::7f00:1", "loopback"),
        ("169.254.169.254", "cloud metadata, never allowed"),
        ("fd00:ec2::254", "cloud metadata, never allowed"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_egress_refuses_every_non_public_address(address, refused_as):
    assert egress.refusal(address) == refused_as


def test_the_allowlist_opens_a_private_network_but_never_the_metadata_service():
    allowed = [egress.ipaddress.ip_network(n) for n in ("127.0.0.0/8", "169.254.0.0/16", "fd00::/8")]
    assert egress.refusal("127.0.0.2", allowed) is None and egress.refusal("169.254.1.1", allowed) is None
    assert egress.refusal("10.0.0.1", allowed) == "private"
    assert egress.refusal("169.254.169.254", allowed) == "cloud metadata, never allowed"
    assert egress.refusal("fd00:ec2::254", allowed) == "cloud metadata, never allowed"


@pytest.mark.parametrize("hostname", ["127.0.0.2", "localhost"])
def test_a_subscriber_resolving_to_a_private_address_is_refused_at_delivery_unless_allowed(receivers, fast, hostname):
    receiver = receivers("127.0.0.2" if hostname == "127.0.0.2" else "127.0.0.1")
    port = receiver.server.server_address[1]
    subscriber = WebhookSubscriber.objects.create(url=f"http://{hostname}:{port}/hook", events=["user.created"])
    receiver.secret = subscriber.secret
    fast.WEBHOOK_ALLOWED_PRIVATE_NETWORKS = []  # production's default
    make_users(1)
    dispatch.webhook_outbox_dispatch()

    assert deliver.webhook_deliveries_deliver_due() == {"dead": 1}  # dead at once: nothing to retry
    refused = deliveries().get()
    assert refused.last_error.startswith(f"refused: {hostname} resolves to ") and "(loopback)" in refused.last_error
    assert (refused.attempts, refused.last_status_code) == (1, None)
    assert receiver.requests == [] and breaker_state(receiver) == State.CLOSED

    fast.WEBHOOK_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.0/8", "::1/128"]
    assert services.webhook_deliveries_retry(delivery_ids=[refused.id]) == 1
    assert deliver.webhook_deliveries_deliver_due() == {"delivered": 1}
    assert [r["verified"] for r in receiver.requests] == [True]


def test_the_address_checked_is_the_address_connected_to_so_dns_rebinding_gets_nowhere(receivers, fast, monkeypatch):
    public, internal = receivers("127.0.0.1"), receivers("127.0.0.2")
    port = public.server.server_address[1]
    internal.server.server_close()  # the internal service listens on the same port, another address
    internal.server = type(internal.server)(("127.0.0.2", port), internal.server.RequestHandlerClass)
    internal.thread = threading.Thread(target=internal.server.serve_forever, daemon=True)
    internal.thread.start()
    fast.WEBHOOK_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]  # stands for "a public address"
    # A rebinding name server: the first answer passes the check, every later one points inside.
    answers = iter(["127.0.0.1"])
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def rebinding_getaddrinfo(host, *args, **kwargs):
        if host != "rebind.example":
            return real_getaddrinfo(host, *args, **kwargs)
        lookups.append(host)
        return real_getaddrinfo(next(answers, "127.0.0.2"), *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_getaddrinfo)
    subscriber = WebhookSubscriber.objects.create(url=f"http://rebind.example:{port}/hook", events=["user.created"])
    public.secret = internal.secret = subscriber.secret
    make_users(1)
    dispatch.webhook_outbox_dispatch()

    assert deliver.webhook_deliveries_deliver_due() == {"delivered": 1}
    assert lookups == ["rebind.example"]  # resolved once; the connection used that answer
    assert internal.requests == [] and len(public.requests) == 1
    assert public.requests[0]["headers"]["Host"] == f"rebind.example:{port}"


def test_the_admin_refuses_a_subscriber_url_that_resolves_to_a_private_address(client, settings):
    settings.WEBHOOK_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32", "169.254.0.0/16"]
    staff = StaffUser.objects.create_superuser("staff", "staff@example.com", "pw-0123456789")
    client.force_login(staff)
    add = "/admin/webhooks/webhooksubscriber/add/"
    for name, url, reason in [
        ("lo2", "http://127.0.0.2:8080/hook", b"(loopback)"),
        ("lh", "http://localhost:8080/hook", b"(loopback)"),
        ("meta", "http://169.254.169.254/latest/meta-data/", b"(cloud metadata, never allowed)"),
        ("lan", "https://10.0.0.7/hook", b"(private)"),
    ]:
        settings.WEBHOOK_ALLOWED_PRIVATE_NETWORKS = [] if name == "lh" else settings.WEBHOOK_ALLOWED_PRIVATE_NETWORKS
        response = client.post(add, {"name": name, "url": url, "events": ["user.created"], "active": "on"})
        assert response.status_code == 200 and b"Webhooks are not sent there" in response.content, name
        assert reason in response.content and not WebhookSubscriber.objects.filter(name=name).exists()
    settings.WEBHOOK_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    allowed = client.post(add, {"name": "ok", "url": "http://127.0.0.1:8080/h", "events": ["user.created"]})
    assert allowed.status_code == 302 and WebhookSubscriber.objects.filter(name="ok").exists()


def test_a_receiver_dripping_its_answer_is_cut_off_at_the_delivery_deadline(receivers, fast):
    fast.WEBHOOK_DELIVERY_DEADLINE = 1.5
    receiver = receivers()
    subscribe(receiver, events=["user.created"])
    # Each byte comes well within the 2 s read timeout; the whole answer would take about 25 s.
    receiver.drip = 0.2
    make_users(1)
    dispatch.webhook_outbox_dispatch()

    started = time.monotonic()
    assert deliver.webhook_deliveries_deliver_due() == {"retrying": 1}
    elapsed = time.monotonic() - started
    row = deliveries().get()
    assert "deadline of 1.5 s exceeded" in row.last_error and row.status == "pending"
    assert elapsed < 1.5 + 5 and not receiver.drip_finished.is_set()  # generous: it did not wait for the drip


def test_a_receiver_answering_410_disables_its_subscriber_and_gets_nothing_more(receivers, fast, client):
    gone, other = receivers(), receivers("127.0.0.2")
    subscriber = subscribe(gone, events=["user.created"])
    subscribe(other, events=["user.created"])
    gone.status = 410
    make_users(2)
    dispatch.webhook_outbox_dispatch()

    outcomes = deliver.webhook_deliveries_deliver_due()
    assert outcomes == {"dead": 1, "delivered": 2}
    assert len(gone.requests) == 1 and breaker_state(gone) == State.CLOSED  # not a failure of the host
    disabled = WebhookSubscriber.objects.get(id=subscriber.id)
    assert not disabled.active and disabled.disabled_at is not None
    assert disabled.disabled_reason == "the receiver answered 410 Gone"
    dead = deliveries(subscriber=subscriber, status="dead").get()
    assert dead.last_status_code == 410
    # No more deliveries or retries: its other delivery waits, new events are not queued for it.
    assert deliveries(subscriber=subscriber, status="pending").count() == 1
    make_users(1, prefix="later")
    dispatch.webhook_outbox_dispatch()
    deliver.webhook_deliveries_deliver_due()
    assert len(gone.requests) == 1 and deliveries(subscriber=subscriber).count() == 2
    assert len(other.processed) == 3

    staff = StaffUser.objects.create_superuser("staff", "staff@example.com", "pw-0123456789")
    client.force_login(staff)
    changelist = "/admin/webhooks/webhooksubscriber/"
    listed = client.get(changelist, {"gone": "yes"}).content
    assert b"the receiver answered 410 Gone" in listed and gone.url.encode() in listed
    assert other.url.encode() not in listed
    assert gone.url.encode() not in client.get(changelist, {"gone": "no"}).content
    # Staff turn it back on: the 410 no longer describes it, and its waiting delivery goes out.
    gone.status = 200
    change = f"{changelist}{subscriber.id}/change/"
    response = client.post(change, {"name": "", "url": gone.url, "events": ["user.created"], "active": "on"})
    assert response.status_code == 302
    enabled = WebhookSubscriber.objects.get(id=subscriber.id)
    assert enabled.active and (enabled.disabled_reason, enabled.disabled_at) == ("", None)
    deliver.webhook_deliveries_deliver_due()
    assert len(gone.processed) == 1


def test_a_secret_that_is_not_base64_fails_its_delivery_instead_of_the_run(receivers, fast):
    receiver = receivers()
    subscribe(receiver, events=["user.created"], secret="whsec_not base64!")  # only possible outside the admin
    make_users(1)
    dispatch.webhook_outbox_dispatch()

    assert deliver.webhook_deliveries_deliver_due() == {"retrying": 1}
    row = deliveries().get()
    assert row.last_error.startswith("ValueError: a webhook secret is 'whsec_' followed by standard base64")
    assert receiver.requests == [] and breaker_state(receiver) == State.CLOSED
