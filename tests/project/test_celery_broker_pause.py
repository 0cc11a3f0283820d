"""A worker whose broker pauses writes for longer than a task's socket timeout, then drops its clients
(a planned switchover: CLIENT PAUSE WRITE, SENTINEL FAILOVER, deploy/sentinel-reconfig's CLIENT KILL
and CLIENT UNPAUSE), on a real Redis of its own."""

import time

import pytest
import redis

from project.celery import app
from project.settings.celery import build_celery
from project.worker import DEFAULT_QUEUE

from ..processes import celery_worker
from ..sentinel import Processes
from ..stack import wait_for
from .test_celery import broker_worker_settings, own_broker

pytestmark = pytest.mark.slow


def test_the_worker_consumes_again_after_a_task_fails_on_a_paused_broker_that_then_drops_its_clients(tmp_path):
    # `make sentinel-demo` after a planned switchover: a flush failed on the paused master while the
    # worker's main process waited on the same pause (kombu's binding refresh, the heartbeat's PUBLISH),
    # so the failure's result (larger than the pipe) was still being read when the killed connections
    # broke the event loop. Celery's reset of the loop dropped the half-read result; the pool then took
    # the rest of it for a new message, its one process stayed busy, and no task ran again
    # (project/celery.py, finish_partial_result_reads).
    procs = Processes(tmp_path)
    port, broker_url = own_broker(tmp_path, procs)
    options = build_celery(state_url=broker_url)["CELERY_BROKER_TRANSPORT_OPTIONS"]  # the app's socket timeouts
    env = broker_worker_settings(tmp_path, broker_url, f"CELERY_BROKER_TRANSPORT_OPTIONS = {options!r}\n")
    admin = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
    log = tmp_path / "worker.log"

    def send(started_key, key, delay):
        with app.connection_for_write(broker_url) as connection:
            app.send_task(
                "tests.write_after", args=[port, started_key, key, delay], connection=connection, queue=DEFAULT_QUEUE
            )

    try:
        with celery_worker(env=env, log_path=log) as worker:
            send("started:0", "done:0", 0)
            wait_for(lambda: admin.get("done:0"), timeout=60, interval=0.05, message=f"the first task ({log})")
            send("started:1", "done:1", 1)
            wait_for(lambda: admin.get("started:1"), timeout=30, interval=0.005, message=f"task 1 to start ({log})")
            admin.execute_command("CLIENT", "PAUSE", 60000, "WRITE")
            try:
                wait_for(
                    lambda: "done:1 not written" in log.read_text(),
                    timeout=30,
                    interval=0.05,
                    message=f"task 1 to fail on the paused broker ({log})",
                )
                time.sleep(1)  # as in the demo: sentinel-reconfig came about 1 s after the flush failed
                admin.client_kill_filter(_type="normal", skipme=True)
                admin.client_kill_filter(_type="pubsub")
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
            send("started:2", "done:2", 0)
            wait_for(
                lambda: admin.get("done:2"), timeout=60, interval=0.05, message=f"a task after the switchover ({log})"
            )
            assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        procs.stop_all()
