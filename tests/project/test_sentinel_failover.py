"""A state Redis behind Sentinel (real redis-server and Sentinel processes, tests/sentinel.py, with
deploy/sentinel-notify and deploy/sentinel-reconfig): a planned switchover (manage.py state_switchover) leaves
one master at every moment and gives up cleanly when a replica lags, and
the Celery worker keeps consuming across failovers, a crash of the master and SENTINEL FAILOVER."""

import io
import signal
import threading
import time
import uuid

import pytest
import redis
from django.core.management import CommandError, call_command
from django.db import connections

from project.celery import app
from project.settings.celery import build_celery
from project.worker import DEFAULT_QUEUE
from resilience.sentinel import SwitchoverFailed, switchover
from users import services
from users.models import User
from users.sharding.access import group_for_user_id

from ..processes import Processes, celery_worker
from ..sentinel import MASTER_NAME, NOTIFY_SCRIPT, Topology, client
from ..stack import free_port, wait_for
from .test_celery import _worker_settings

pytestmark = [pytest.mark.usefixtures("real_db"), pytest.mark.slow]


@pytest.fixture
def topology(tmp_path):
    """A master, two replicas and three Sentinels under tmp_path, on free ports; stopped afterwards."""
    procs = Processes(tmp_path)
    made = Topology(procs, redis_ports=[free_port() for _ in range(3)], sentinel_ports=[free_port() for _ in range(3)])
    try:
        made.start()
        yield made
    finally:
        procs.stop_all()


def test_the_worker_keeps_consuming_and_flushing_across_sentinel_failovers(topology, tmp_path, monkeypatch):
    # After a SENTINEL FAILOVER the worker's consumer reconnected to the old master, named by a
    # Sentinel that had not yet heard of the failover (a replica by then), and never received another
    # task; or a task's state connection stayed on that replica and its writes failed seconds later
    # (resilience/sentinel.py, project/celery.py). Each round: a task queued after the failover (it
    # buffers a view on the new master) runs, and beat's flush, through the same broker, applies it.
    monkeypatch.setenv("REDIS_STATE_SENTINELS", topology.sentinels)
    monkeypatch.setenv("REDIS_STATE_SENTINEL_MASTER", MASTER_NAME)
    broker = build_celery(state_url="redis://unused/1")  # the URL and options the app derives from them
    env = _worker_settings(
        tmp_path,
        "WRITE_BEHIND_INTERVAL = 0.5\n"
        "CELERY_BEAT_SCHEDULE = {'writebehind-flush': {'task': 'users.writebehind_flush', 'schedule': 0.5,"
        " 'options': {'expires': 5}}}\n"
        "CELERY_IMPORTS = ['tests.project.broker_probe_tasks']\n",
    )
    env.update(REDIS_STATE_SENTINELS=topology.sentinels, REDIS_STATE_SENTINEL_MASTER=MASTER_NAME)
    user = services.user_create(username="failover", email="failover@example.com", password="a-long-pass-2026")
    log = tmp_path / "worker.log"

    def views_buffered_by_a_task_are_flushed(total):
        with app.connection_for_write(
            broker["CELERY_BROKER_URL"], transport_options=broker["CELERY_BROKER_TRANSPORT_OPTIONS"]
        ) as connection:
            app.send_task("tests.buffer_views", args=[user["id"], 1], connection=connection, queue=DEFAULT_QUEUE)
        wait_for(
            lambda: User.objects.using(group_for_user_id(user["id"])).get(id=user["id"]).view_count == total,
            timeout=60,
            interval=0.2,
            message=f"the task to run and its view to be flushed ({total} in all)",
        )

    with celery_worker(env=env, log_path=log, extra_args=("-B", "-s", str(tmp_path / "beat-schedule"))) as worker:
        views_buffered_by_a_task_are_flushed(1)
        for round_, fault in enumerate((topology.kill_master, topology.sentinel_failover, topology.sentinel_failover)):
            fault()
            topology.settle()
            views_buffered_by_a_task_are_flushed(2 + round_)
            assert worker.poll() is None, log.read_text()[-3000:]
    assert "Unrecoverable error" not in log.read_text()


@pytest.fixture
def late_notify_topology(tmp_path):
    """The topology of `topology`, its Sentinels' notification-script run 0.5 s late, as a machine at load
    15-20 delays it: the bare SENTINEL FAILOVER promoted the replica before the pause of
    deploy/sentinel-notify reached the old master, in every run, and acknowledged writes were lost."""
    late = tmp_path / "late-sentinel-notify"
    late.write_text(f'#!/bin/sh\nsleep 0.5\nexec {NOTIFY_SCRIPT} "$@"\n')
    late.chmod(0o755)
    procs = Processes(tmp_path)
    made = Topology(
        procs,
        redis_ports=[free_port() for _ in range(3)],
        sentinel_ports=[free_port() for _ in range(3)],
        notify_script=late,
    )
    try:
        made.start()
        yield made
    finally:
        procs.stop_all()


def test_a_planned_switchover_leaves_no_moment_with_two_masters(late_notify_topology):
    # A bare SENTINEL FAILOVER left the old master, still up, taking writes after the replica's
    # promotion until deploy/sentinel-reconfig demoted it: writes it acknowledged that the new master
    # never had (the demo's views lost, and views flushed there and again on the new master).
    # deploy/sentinel-notify's pause only races the promotion (Sentinel does not wait for its scripts):
    # this test lost writes in 2 of ~22 runs on a machine at load 15-20, and in every run with the
    # script 0.5 s late. The switchover (resilience/sentinel.py) pauses first, waits for the replicas,
    # then fails over, so nothing depends on when the script runs.
    topology = late_notify_topology
    old = topology.master
    writer = client(old)
    writer.connection_pool.connection_kwargs["socket_timeout"] = 30  # a paused write waits, it does not fail
    acknowledged, stop = [0], threading.Event()

    def write():
        while not stop.is_set():
            try:
                acknowledged[0] = writer.incr("counter")
            except redis.RedisError:  # killed by deploy/sentinel-reconfig, or READONLY once demoted
                return

    thread = threading.Thread(target=write)
    thread.start()
    try:
        wait_for(lambda: acknowledged[0] > 100, timeout=10, message="writes on the master")
        topology.switchover()
        topology.settle()
        thread.join(timeout=30)
    finally:
        stop.set()
        thread.join()
    events = [
        line
        for log in sorted(topology.procs.workdir.glob("sentinel-*/sentinel.log"))
        for line in log.read_text().splitlines()
        if any(e in line for e in ("+try-failover", "+selected-slave", "+promoted-slave", "+switch-master"))
    ]
    kept = int(client(topology.master).get("counter"))
    assert kept >= acknowledged[0], f"{acknowledged[0] - kept} acknowledged writes lost; " + " | ".join(events)


def test_a_switchover_whose_replica_cannot_catch_up_changes_nothing_and_unpauses(topology):
    # A replica that does not reach the paused master's offset may be the one Sentinel promotes: the
    # switchover gives up before SENTINEL FAILOVER, and the writes it paused go on on the same master.
    lagging = topology.others()[0]
    topology.procs.running[f"redis-{lagging}"].signal(signal.SIGSTOP, group=False)
    try:
        client(topology.master).set("written-after-the-replica-stopped", 1)
        with pytest.raises(SwitchoverFailed, match=f"127.0.0.1:{lagging} did not reach offset"):
            switchover([("127.0.0.1", p) for p in topology.sentinel_ports], MASTER_NAME, timeout=1.0)
        assert client(topology.master).incr("counter") == 1  # unpaused: it would wait 10 s, then time out
        assert topology.masters_named() == [topology.master] * len(topology.sentinel_ports)
    finally:
        topology.procs.running[f"redis-{lagging}"].signal(signal.SIGCONT, group=False)


def test_manage_state_switchover_promotes_a_replica_through_the_configured_sentinels(topology, settings):
    state = settings.CACHES["state"]
    options = {**state["OPTIONS"], "SENTINELS": [("127.0.0.1", p) for p in topology.sentinel_ports]}
    settings.CACHES = {**settings.CACHES, "state": {**state, "OPTIONS": options}}
    settings.REDIS_STATE_URL = f"redis://{MASTER_NAME}/0"  # the master's name, as the Sentinel mode spells it
    out = io.StringIO()
    call_command("state_switchover", stdout=out)
    old = topology.master
    topology.settle()
    assert out.getvalue().strip() == f"{MASTER_NAME}: 127.0.0.1:{old} -> 127.0.0.1:{topology.master}"


def test_manage_state_switchover_refuses_without_sentinels():
    with pytest.raises(CommandError, match="not behind Sentinel"):
        call_command("state_switchover")


def test_views_confirmed_by_every_replica_survive_a_bare_sentinel_failover(late_notify_topology, settings):
    # SENTINEL FAILOVER with the old master's pause late (deploy/sentinel-notify races the promotion;
    # `make sentinel-demo` lost 2 acknowledged views so once with WRITE_BEHIND_WAIT_REPLICAS=1): the
    # old master takes writes after one replica's promotion, and its other replica, not yet pointed at
    # the new master, confirms them. Both then resync from the new master: views acknowledged after
    # WAIT 1 are gone from its buffer, and claims confirmed there were applied, then applied again from
    # the new master's buffer. WAIT for every replica (2 here) cannot be met by the old master once one
    # of them is promoted: those views answer 503 unconfirmed and those claims are not applied.
    # With 1 here this test failed (views acknowledged and lost).
    from project.settings.caches import build_caches
    from users.writebehind import buffer, flush
    from users.writebehind.keys import group_keys

    topology = late_notify_topology
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_STATE_SENTINELS", topology.sentinels)
        patch.setenv("REDIS_STATE_SENTINEL_MASTER", MASTER_NAME)
        caches, _, _ = build_caches(redis_db=settings.REDIS_DB)
    settings.CACHES = {**settings.CACHES, "state": caches["state"]}
    settings.WRITE_BEHIND_WAIT_REPLICAS = len(topology.others())  # every replica
    settings.WRITE_BEHIND_WAIT_TIMEOUT_MS = 200
    settings.WRITE_BEHIND_RECLAIM_AFTER = 1.0  # a claim left unconfirmed on the new master: re-claimed soon
    user = services.user_create(username="waitall", email="waitall@example.com", password="a-long-pass-2026")
    keys = group_keys(group_for_user_id(user["id"]))
    acknowledged, answered = [], {"direct": 0, "unconfirmed": 0, "other": 0}
    stop = threading.Event()

    def add_views():
        while not stop.is_set():
            view_id = uuid.uuid4().hex
            try:
                how = buffer.views_add(user_id=user["id"], view_id=view_id)
            except buffer.BufferUncertain:
                answered["unconfirmed"] += 1
                continue
            except Exception:  # noqa: BLE001 - counted, the assertions tell
                answered["other"] += 1
                continue
            if how == "buffered":
                acknowledged.append(view_id)
            else:
                answered[how] += 1

    def flush_often():
        while not stop.is_set():
            try:
                flush.flush()
            except Exception:  # noqa: BLE001 - the state Redis changes hands under it; the next one retries
                pass
            time.sleep(0.05)
        connections.close_all()

    threads = [threading.Thread(target=add_views), threading.Thread(target=flush_often)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(acknowledged) > 50, timeout=30, message="views acknowledged on the first master")
        topology.sentinel_failover()
        topology.settle()
        promoted_at = len(acknowledged)
        wait_for(lambda: len(acknowledged) > promoted_at + 50, timeout=30, message="views on the new master")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    connections.close_all()
    new = client(topology.master, settings.REDIS_DB)
    lost = [v for v in acknowledged if not new.exists(keys.marker(v))]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged views lost ({answered})"
    wait_for(
        lambda: flush.flush() is not None and buffer.stats()["pending_views_users"] == 0,
        timeout=60,
        interval=0.2,
        message="the last flush",
    )
    stored = User.objects.using(group_for_user_id(user["id"])).get(id=user["id"]).view_count
    # Every acknowledged view once; an unconfirmed one may count, a view counted twice may not.
    assert len(acknowledged) + answered["direct"] <= stored <= len(acknowledged) + sum(answered.values()), answered
