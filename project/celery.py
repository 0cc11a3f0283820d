"""The Celery app. Beat's schedule lives here, next to the tasks it names."""

import inspect
import logging
import os

from celery import Celery
from celery.signals import (
    beat_init,
    before_task_publish,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)
from celery.worker.consumer import Consumer
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

from resilience.sentinel import MasterRoleConnection

logger = logging.getLogger(__name__)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, which frees a message's prefetch slot even when its ack cannot reach the broker.

    kombu removes the message from the broker's unacked index first and only then from the channel's
    count of delivered messages; when the removal fails (the connection was killed: deploy/sentinel-reconfig's
    CLIENT KILL after a switchover, a broker restart), Celery logs "Couldn't ack" and goes on, and the slot
    stays taken for good. With a prefetch of one (project/settings/celery.py) the channel then never
    sends BRPOP again, so it never notices that its connection is gone and never reconnects: the worker
    logged "Connection to broker lost" and consumed nothing more (`make sentinel-demo`, after a planned
    switchover, one run in several). The message itself stays in the broker's unacked index and comes
    back after the visibility timeout (tasks are idempotent), as kombu intends for an unacknowledged one.
    """

    def ack(self, delivery_tag):
        try:
            super().ack(delivery_tag)
        except BaseException:
            kombu_virtual.QoS.ack(self, delivery_tag)  # the local half: the slot is free again
            raise

    def reject(self, delivery_tag, requeue=False):
        try:
            super().reject(delivery_tag, requeue=requeue)
        except BaseException:
            kombu_virtual.QoS.ack(self, delivery_tag)
            raise


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, connecting only to a server whose ROLE is master (resilience/sentinel.py).

    kombu connects to whatever a Sentinel names, after a PING. During a failover a Sentinel that lags
    behind names the old master, a replica by then: the worker's consumer reconnected there, BRPOPed
    a queue nobody pushes to any more and never received another task (`make sentinel-demo` stalled
    after the SENTINEL FAILOVER), and its tasks' writes failed on the replica.
    """

    connection_class = MasterRoleConnection
    QoS = QoS


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


# The scheme of the broker URL names the transport, again on each reconnection (kombu switches to the
# next URL of the list and parses it anew): the "sentinel" name itself must mean this transport. Its
# channel still reads every Sentinel from the URLs whose scheme is "sentinel".
TRANSPORT_ALIASES["sentinel"] = "project.celery:SentinelTransport"
TRANSPORT_ALIASES["redis"] = "project.celery:Transport"


class BrokerLossConsumer(Consumer):
    """Celery's consumer, made to survive losing the (Redis) broker while tasks are in flight.

    On a lost broker connection Celery 5.7.0 collects the connection, which detaches its transport
    (`transport.client = None`), then closes it. The Redis transport's channels still need that
    client: closing one restores the delivered but unacknowledged messages (acks_late: nearly always
    one), and a task finishing after the loss acknowledges on its old channel. Both then raise
    AttributeError, which Celery reports as "Unrecoverable error": the worker exits, and flushes and
    webhooks stop until someone restarts it (found by `make chaos`, state Redis killed). Keeping the
    client attached makes them what kombu expects, a redis ConnectionError while the broker is down
    (handled: the message comes back after the visibility timeout; tasks are idempotent) or a
    successful restore/ack once it is back.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        hub = self.hub
        if hub is not None:  # the prefork pool's event loop (the only pool Bulwark runs)
            reset = hub.reset

            def reset_after_partial_results():
                finish_partial_result_reads(self)
                reset()

            hub.reset = reset_after_partial_results  # this worker's hub only

    def on_connection_error_after_connected(self, exc):
        connection = self.connection
        if connection is not None:
            transport, close = connection.transport, connection.close

            def close_attached():
                transport.client = connection  # collect() has just detached it
                try:
                    close()
                finally:
                    transport.client = connection  # for acks of tasks still running on its channels

            connection.close = close_attached  # this broken connection only: Celery drops it next
        super().on_connection_error_after_connected(exc)


def finish_partial_result_reads(consumer) -> None:
    """Read to its end every task result the event loop has only partly read from a pool process.

    The event loop reads a result in turns as its bytes arrive; one larger than the pipe's buffer (64 KB:
    a failed task's, with its traceback, was at least 76 KB) takes several. On a lost broker connection
    Celery resets the loop (kombu's `Hub.reset`), which drops the half-read result; after the reconnection
    the pool reads the pipe afresh and takes the rest of that result for the next one's header (a size of
    1.6 GB was seen): it waits for ever, the process stays busy in the pool's eyes, and with one process
    and a prefetch of one no task ran again and the channel never sent BRPOP (`make sentinel-demo`, a
    flush failing on the master paused by a planned switchover as its connections were killed). The
    process has written the whole result, or is writing it: reading it now completes the task (its
    acknowledgement goes with the hub's pending callbacks) and leaves the pipe at a message boundary.
    """
    pool = getattr(consumer.pool, "_pool", None)  # celery's AsynPool, once the pool has started
    handler = getattr(pool, "_result_handler", None)
    hub = consumer.hub
    if handler is None or hub is None:
        return
    for fd, process in list(pool._fileno_to_outq.items()):
        registered = hub.readers.get(fd)
        if registered is not None and inspect.isgenerator(registered[0]):
            # Celery's own completion of a half-read result (it uses it at shutdown): it resumes the reader
            # until the message ends, and gives up if the process dies or stops writing for 10 s.
            if handler._finish_partial_read(fd, process):
                logger.warning("a pool process's result was left half read (process %s)", process.pid)
            else:
                logger.info("read the rest of a pool process's result before the event loop's reset")


app = Celery("bulwark")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.worker_consumer = "project.celery:BrokerLossConsumer"
app.autodiscover_tasks()


# The message header carrying the publisher's read-your-writes token (project/db/middleware.py's format).
READ_LSN_HEADER = "bulwark_read_lsn"


@before_task_publish.connect
def _carry_read_lsns(headers=None, **_kwargs):
    # A task queued right after a write (a request's, or another task's) may run before any replica
    # has replayed it: it gets its publisher's LSNs, as the client's next request would.
    from project.db import middleware, routing

    lsns = routing.handoff_lsns()
    if lsns and headers is not None:
        headers[READ_LSN_HEADER] = middleware.format_lsns(lsns)


@task_prerun.connect
def _fresh_read_context(task=None, **_kwargs):
    # A task reads its publisher's writes and its own (pinning after its first write), never a
    # previous task's. Celery hands custom message headers over as attributes of the request.
    from project.db import middleware, pinning

    token = getattr(getattr(task, "request", None), READ_LSN_HEADER, None)
    pinning.reset(lsns=middleware.parse_lsns(token if isinstance(token, str) else None))


@task_postrun.connect
def _drop_read_context(**_kwargs):
    # Whatever the worker process runs between tasks reads without the last task's pins.
    from project.db import pinning

    pinning.reset()


# The message header carrying the id of the request (or task) that queued a task: its log lines then
# name the request that caused it (resilience/request_id.py).
REQUEST_ID_HEADER = "bulwark_request_id"


@before_task_publish.connect
def _carry_request_id(headers=None, **_kwargs):
    from resilience import request_id

    value = request_id.current()
    if value and headers is not None:
        headers[REQUEST_ID_HEADER] = value


@task_prerun.connect
def _restore_request_id(task=None, **_kwargs):
    from resilience import request_id

    value = task.request.get(REQUEST_ID_HEADER) if task is not None else None
    # A worker process runs one task at a time: each task starts from its own id, or none.
    request_id.set_current(value if isinstance(value, str) and request_id.valid(value) else "")


@task_postrun.connect
def _forget_request_id(**_kwargs):
    from resilience import request_id

    request_id.set_current("")


@worker_init.connect
@beat_init.connect
def _announce_groups(**_kwargs):
    # Workers and beat announce the shard groups they know, like web processes (reshard checks them).
    from project.db.fleet import heartbeat

    heartbeat.ensure_started()


@worker_process_init.connect
def _start_tracing(**_kwargs):
    # In each pool process, after the fork: a span exporter's thread started before it would not run
    # in the child (project/tracing.py; a no-op unless OTEL_TRACING_ENABLED).
    from project import tracing

    tracing.setup()
