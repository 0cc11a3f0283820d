"""Connections through Redis Sentinel reach a server that says it is the master (resilience/sentinel.py),
even when the first Sentinel asked lags behind a failover and names a replica. Real redis-server and
Sentinel processes (tests/sentinel.py); the lagging Sentinel monitors the replica as its master, as a
Sentinel that has not yet heard of a failover names the demoted old master."""

import pytest
import redis.sentinel
from kombu import Connection

import project.celery  # noqa: F401 - registers the broker's Sentinel transport
from resilience.sentinel import SentinelConnectionPool

from ..processes import Processes
from ..sentinel import MASTER_NAME, Topology, client
from ..stack import free_port


@pytest.fixture
def lagging(tmp_path):
    """A master, a replica and a Sentinel that knows them; a second Sentinel that names the replica as
    the master. Return (master port, [lagging Sentinel port, Sentinel port])."""
    procs = Processes(tmp_path)
    master, replica, good, lagging = (free_port() for _ in range(4))
    topology = Topology(procs, redis_ports=[master, replica], sentinel_ports=[good])
    # Down after a minute: it must not take its "master" (a replica) for down during the test.
    lagging_view = Topology(procs, redis_ports=[replica], sentinel_ports=[lagging], down_after_ms=60_000)
    try:
        topology.start()
        procs.start_redis(lagging, lagging_view.sentinel_command(lagging, replica))
        yield master, [lagging, good]
    finally:
        procs.stop_all()


def sentinels(ports):
    return redis.sentinel.Sentinel([("127.0.0.1", p) for p in ports], socket_timeout=0.5)


def test_the_state_pool_skips_a_sentinel_that_names_a_replica(lagging):
    master, ports = lagging
    stock = sentinels(ports).master_for(MASTER_NAME, socket_timeout=0.5)
    with pytest.raises(redis.ConnectionError, match="previous master is now a slave"):
        stock.set("written", "stock")  # redis-py alone: connected to the replica, refused the write
    checked = sentinels(ports).master_for(MASTER_NAME, connection_pool_class=SentinelConnectionPool, socket_timeout=0.5)
    assert checked.set("written", "checked")
    assert client(master).get("written") == b"checked"


def test_the_broker_publishes_to_the_master_when_a_sentinel_names_a_replica(lagging):
    master, ports = lagging
    url = ";".join(f"sentinel://127.0.0.1:{p}/0" for p in ports)
    with Connection(url, transport_options={"master_name": MASTER_NAME}) as connection:
        queue = connection.SimpleQueue("sentinel-probe")
        queue.put({"probe": 1})
        queue.close()
    assert client(master).llen("sentinel-probe") == 1
