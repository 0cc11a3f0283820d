"""Acknowledgements that fail on a killed broker connection (a real worker on a Redis of its own)."""

import threading
import time

import pytest
import redis

from project.celery import app
from project.worker import DEFAULT_QUEUE

from ..processes import celery_worker
from ..sentinel import Processes
from ..stack import wait_for
from .test_celery import broker_worker_settings, own_broker

pytestmark = pytest.mark.slow


def test_the_worker_keeps_consuming_when_its_broker_connection_is_killed_as_it_acknowledges(tmp_path):
    # kombu's Redis QoS kept a message whose ack failed on a killed connection in its count of
    # delivered messages: with a prefetch of one the channel never sent BRPOP again, never noticed the
    # dead connection and the worker consumed nothing more (`make sentinel-demo`, after a planned
    # switchover whose CLIENT KILL came as a task finished; project/celery.py's QoS). Here the broker
    # kills the worker's connections while each task's result (large, so it takes a while) goes back
    # to the worker's main process, which then acknowledges; the next task must still run.
    procs = Processes(tmp_path)
    port, broker_url = own_broker(tmp_path, procs)
    env = broker_worker_settings(tmp_path, broker_url)
    admin = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    log = tmp_path / "worker.log"
    try:
        with celery_worker(env=env, log_path=log) as worker:
            for round_ in range(12):
                key = f"ran:{round_}"
                with app.connection_for_write(broker_url) as connection:
                    app.send_task(
                        "tests.large_result", args=[port, key, 32 << 20], connection=connection, queue=DEFAULT_QUEUE
                    )
                wait_for(
                    lambda k=key: admin.get(k), timeout=30, interval=0.005, message=f"task {round_} to run ({log})"
                )
                # The result (32 MB) is on its way through the pipe: break the broker connection meanwhile.
                stop = threading.Event()

                def kill(stop=stop):
                    while not stop.is_set():
                        admin.client_kill_filter(_type="normal", skipme=True)
                        time.sleep(0.01)

                killer = threading.Thread(target=kill)
                killer.start()
                time.sleep(0.5)
                stop.set()
                killer.join()
                assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        procs.stop_all()
