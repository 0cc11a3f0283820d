"""The Celery worker against the real stack: a broker that dies (the state Redis, SIGKILLed with a task
in flight), and a task queued right after a write while a replica lags."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connections
from django_redis import get_redis_connection

from project.db import pinning
from users import services
from users.models import User
from users.sharding.access import group_for_user_id
from users.writebehind import buffer
from webhooks.models import WebhookDelivery, WebhookSubscriber

from ..processes import celery_beat, celery_worker
from ..stack import ROOT, free_port, stack, wait_for
from ..staff import caught_up
from .read_probe_tasks import read_display_names

pytestmark = pytest.mark.usefixtures("real_db")


class HangingReceiver:
    """A webhook receiver whose first request blocks until `release` is set; then every one gets 200."""

    def __init__(self):
        self.hanging, self.release = threading.Event(), threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                if not receiver.hanging.is_set():
                    receiver.hanging.set()
                    receiver.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = HangingReceiver()
    yield made
    made.stop()


def test_the_worker_survives_the_broker_dying_under_a_task_in_flight_and_keeps_flushing(
    receiver, tmp_path, restore_stack
):
    # Celery 5.7.0 exited ("Unrecoverable error") when the Redis broker went away while a task was
    # delivered but not acknowledged, and again when that task acknowledged afterwards; see
    # project/celery.py. Here a webhook POST holds a task in flight across the broker's death.
    (tmp_path / "broker_loss_settings.py").write_text(
        "from project.settings.test import *  # noqa\n"
        "WRITE_BEHIND_INTERVAL = 0.5\n"
        "CELERY_BEAT_SCHEDULE = {\n"
        "    'writebehind-flush': {'task': 'users.writebehind_flush', 'schedule': 0.5, 'options': {'expires': 5}},\n"
        "    'webhooks-dispatch': {'task': 'webhooks.dispatch', 'schedule': 1.0,\n"
        "                          'options': {'expires': 5}},\n"
        "}\n"
        "WEBHOOK_READ_TIMEOUT = 60.0\n"
    )
    env = {
        "DJANGO_SETTINGS_MODULE": "broker_loss_settings",
        "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    WebhookSubscriber.objects.create(url=receiver.url, events=["user.created"])
    user = services.user_create(username="survivor", email="survivor@example.com", password="a-long-pass-2026")
    log = tmp_path / "worker.log"

    with (
        celery_beat(schedule_path=tmp_path / "beat-schedule", env=env),
        celery_worker(env=env, concurrency=2, log_path=log) as worker,
    ):
        wait_for(receiver.hanging.is_set, timeout=60, message="a webhook POST in flight")
        stack("kill", "state")
        wait_for(lambda: "Connection to broker lost" in log.read_text(), timeout=30, message="the worker to notice")
        stack("start", "state")
        wait_for(get_redis_connection("state").ping, timeout=15, message="the state Redis to answer")
        receiver.release.set()  # the task in flight finishes and acknowledges on its lost channel
        wait_for(
            lambda: WebhookDelivery.objects.filter(status="delivered").exists(),
            timeout=60,
            message="the webhook to be delivered",
        )
        for _ in range(5):
            assert buffer.views_add(user_id=user["id"]) == "buffered"
        wait_for(
            lambda: User.objects.using(group_for_user_id(user["id"])).get(id=user["id"]).view_count == 5,
            timeout=30,
            message="the worker to flush after the broker came back",
        )
        assert worker.poll() is None
    assert "Unrecoverable error" not in log.read_text()


def _worker_settings(tmp_path, body: str) -> dict:
    """Env for a worker on the test settings plus `body` (a settings module written to tmp_path)."""
    (tmp_path / "worker_settings.py").write_text("from project.settings.test import *  # noqa\n" + body)
    return {
        "DJANGO_SETTINGS_MODULE": "worker_settings",
        "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }


def own_broker(tmp_path, procs) -> tuple[int, str]:
    """Start a Redis of this test's own (under `procs`, a tests.sentinel.Processes) for a worker's broker;
    return its port and URL."""
    port = free_port()
    procs.start_redis(
        port, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    )
    return port, f"redis://127.0.0.1:{port}/0"


def broker_worker_settings(tmp_path, broker_url: str, body: str = "") -> dict:
    """Env for a worker on the test settings whose broker is `broker_url`, running the broker probe
    tasks, plus `body`."""
    return _worker_settings(
        tmp_path,
        f"CELERY_BROKER_URL = {broker_url!r}\nCELERY_IMPORTS = ['tests.project.broker_probe_tasks']\n{body}",
    )


@pytest.mark.parametrize("sync_apply", [False, True], ids=["async-commit", "remote-apply"])
def test_a_task_queued_right_after_a_write_reads_it_while_replay_is_paused_on_the_async_replica(
    settings, tmp_path, sync_apply
):
    # The paused standby stays "usable" (MAX_REPLICA_LAG) in both processes: only the LSN the task
    # carries can keep its reads off it.
    settings.MAX_REPLICA_LAG = 3600
    settings.READ_YOUR_WRITES_SYNC_APPLY = sync_apply
    env = _worker_settings(
        tmp_path,
        f"MAX_REPLICA_LAG = 3600\nREAD_YOUR_WRITES_SYNC_APPLY = {sync_apply}\n"
        "CELERY_IMPORTS = ['tests.project.read_probe_tasks']\n",
    )
    user = services.user_create(username="queued", email="queued@example.com", password="a-long-pass-2026")
    group = group_for_user_id(user["id"])
    caught_up()  # every replica has the account: only the update below can be stale
    key = f"test:task-reads:{user['id']}"
    with celery_worker(env=env, log_path=tmp_path / "worker.log"):
        with connections["default_r0"].cursor() as cursor:  # the async standby's server holds every _r0
            cursor.execute("SELECT pg_wal_replay_pause()")
        try:
            pinning.reset()  # the request that writes, then queues the task
            services.user_update(user_id=user["id"], changes={"display_name": "after the write"})
            read_display_names.delay(user["id"], 12, key)
            raw = wait_for(lambda: get_redis_connection("state").lpop(key), timeout=60, message="the task's reads")
        finally:
            with connections["default_r0"].cursor() as cursor:
                cursor.execute("SELECT pg_wal_replay_resume()")
    seen = json.loads(raw)
    assert [name for _alias, name in seen] == ["after the write"] * 12, seen
    assert f"{group}_r0" not in {alias for alias, _name in seen}
