"""What the Redis failover demos share (deploy/sentinel_demo.py, deploy/cluster_demo.py) and the Redis
Cluster the tests start (tests/resilience/test_redis_cluster.py): polling (tests/stack.py's) and the
processes a demo starts (tests/processes.py's), a Redis server's command line, a local Redis Cluster,
the app under test (users, web server, worker, views in the database), and the closed-loop HTTP load
with its report."""

import contextlib
import http.client
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import redis

from tests import processes, stack
from tests.processes import Processes

ROOT = Path(__file__).resolve().parent.parent


# The demos' databases (project.settings.bench on them) and cache Redis DB, created by scripts/stack: not
# the test suite's. A test run on the same stack truncates bulwark_test* and flushes Redis DB 1 before
# every test; it deleted a running sentinel-demo's users, whose views then answered 404, and the demo
# timed out waiting for a view buffered on the new master (or failed on User.DoesNotExist).
DEMO_DATABASES = {"DB_NAME_PREFIX": "bulwark_demo", "REDIS_DB": "2"}


def say(text=""):
    print(text, flush=True)


def wait_for(what, predicate, timeout=30.0, every=0.05):
    """tests/stack.py's wait_for, with what is awaited named first (as the demos read)."""
    return stack.wait_for(predicate, timeout=timeout, interval=every, message=what)


def client(port, db=0):
    return redis.Redis(host="127.0.0.1", port=port, db=db, socket_timeout=0.5, socket_connect_timeout=0.5)


def port_taken(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_demo(name, demo, *, ports, port_variables, logs):
    """Run `demo(procs)` in a new temporary directory after checking that none of `ports` is in use;
    stop every process it started whatever happens, and delete the directory unless the demo failed
    (then its `logs` are kept there)."""
    busy = [p for p in ports if port_taken(p)]
    if busy:
        raise SystemExit(f"{name}: ports {busy} are in use; set {port_variables}")
    workdir = Path(tempfile.mkdtemp(prefix=f"bulwark-{name}-"))
    procs = Processes(workdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = True
    try:
        demo(procs)
        failed = False
    finally:
        procs.stop_all()
        if failed:  # keep the logs of a failed run
            say(f"{name}: failed; logs kept in {workdir} ({logs})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def redis_command(port, workdir: Path, replica_of=None, extra: tuple[str, ...] = ()):
    """A state Redis as production runs it (AOF every second, noeviction), its files in workdir/redis-<port>."""
    data = workdir / f"redis-{port}"
    data.mkdir(exist_ok=True)
    cmd = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory",
        "256mb",
        "--maxmemory-policy",
        "noeviction",
        "--logfile",
        str(data / "redis.log"),
        *extra,
    ]
    if replica_of:
        cmd += ["--replicaof", "127.0.0.1", str(replica_of)]
    return cmd


# ---------------------------------------------------------------- Redis Cluster
def cluster_node_command(port, workdir: Path, *, bus_port: int, node_timeout_ms: int):
    """A Redis Cluster node: the state Redis' settings plus cluster mode (its nodes.conf beside its data).
    The bus port is explicit: the default, port + 10000, does not exist above 55535."""
    return redis_command(
        port,
        workdir,
        extra=(
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(workdir / f"redis-{port}" / "nodes.conf"),
            "--cluster-node-timeout",
            str(node_timeout_ms),
            "--cluster-port",
            str(bus_port),
        ),
    )


class Cluster:
    """A local Redis Cluster of len(ports) // 2 masters, each with one replica, run by `procs`."""

    def __init__(self, procs: Processes, ports: list[int], bus_ports: list[int], *, node_timeout_ms: int):
        self.procs, self.ports, self.node_timeout_ms = procs, ports, node_timeout_ms
        self.bus_ports = dict(zip(ports, bus_ports, strict=True))

    def start_node(self, port):
        command = cluster_node_command(
            port, self.procs.workdir, bus_port=self.bus_ports[port], node_timeout_ms=self.node_timeout_ms
        )
        self.procs.start_redis(port, command)

    def create(self):
        """Start every node, join them (`redis-cli --cluster create ... --cluster-replicas 1`) and wait
        until every node sees every slot served and every replica is in sync."""
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "1"]
            + ["--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
        self.wait_healthy()

    def wait_healthy(self, timeout=60):
        """Wait until every running node says cluster_state:ok and every master has a replica in sync."""
        wait_for("the cluster to be ok on every node", lambda: all(cluster_ok(p) for p in self.live()), timeout, 0.1)
        wait_for(
            "every replica to sync", lambda: len(replicas_in_sync(self.live())) == len(self.ports) // 2, timeout, 0.1
        )

    def live(self) -> list[int]:
        return [p for p in self.ports if f"redis-{p}" in self.procs.running]

    def nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.ports]

    def masters(self) -> list[int]:
        return masters_of(self.live())

    def master_of_slot(self, slot: int) -> int:
        return master_of_slot(self.live(), slot)

    def kill(self, port):
        """SIGKILL the node on `port`, as a crash would."""
        self.procs.kill(f"redis-{port}")

    def wait_failed_over(self, slot: int, old_port: int, timeout=60) -> int:
        """Wait until a live node serves `slot` as master in place of `old_port` and the cluster is ok
        again; return its port."""

        def promoted():
            port = master_of_slot(self.live(), slot)
            return port if port != old_port and all(cluster_ok(p) for p in self.live()) else None

        return wait_for(f"the cluster to promote a replica of :{old_port}", promoted, timeout, 0.05)


def cluster_ok(port) -> bool:
    return client(port).execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") >= 0


def masters_of(ports) -> list[int]:
    """The ports of the nodes that are masters now (asked of each live node in `ports`)."""
    found = []
    for port in ports:
        with contextlib.suppress(redis.RedisError, OSError):
            if client(port).info("replication")["role"] == "master":
                found.append(port)
    return found


def replicas_in_sync(ports) -> list[int]:
    """The replicas among `ports` whose link to their master is up."""
    found = []
    for port in ports:
        with contextlib.suppress(redis.RedisError, OSError):
            info = client(port).info("replication")
            if info["role"] == "slave" and info.get("master_link_status") == "up":
                found.append(port)
    return found


def master_of_slot(ports, slot: int) -> int:
    """The port of the master serving `slot`, as the first live node in `ports` tells it."""
    for port in ports:
        with contextlib.suppress(redis.RedisError, OSError):
            for start, end, master, *_replicas in client(port).execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
    raise RuntimeError(f"no live node knows who serves slot {slot}")


# ---------------------------------------------------------------- the app (after django.setup())
def create_users(prefix, count) -> list[int]:
    """Migrate every database and create `count` throwaway users; return their ids."""
    from django.core.management import call_command
    from django.db import connections

    from users import services

    call_command("migrate_all", verbosity=0)
    run = uuid.uuid4().hex[:8]
    user_ids = [
        services.user_create(
            username=f"{prefix}{run}u{i}",
            email=f"{prefix}{run}u{i}@example.com",
            password="failover-demo-2026",  # noqa: S106 - throwaway users
        )["id"]
        for i in range(count)
    ]
    connections.close_all()
    return user_ids


def start_app(procs: Processes, *, web_port, env, user_id) -> int:
    """Start granian (project.wsgi) and a Celery worker with embedded beat with `env`, wait until the
    web server is ready, and POST one view of `user_id`; return 1 if it was acknowledged (202), else 0."""
    from project.server import granian_argv
    from project.worker import worker_argv

    procs.start("web", granian_argv(web_port, workers=2, threads=4), env=env)
    procs.start(
        "worker",
        worker_argv("-B", "-s", str(procs.workdir / "beat-schedule"), concurrency=1, loglevel="WARNING"),
        env=env,
    )

    ready = f"http://127.0.0.1:{web_port}/health/ready"
    wait_for("the web server", lambda: procs.check_alive("web", "worker") or processes.answers(ready), 60, 0.2)
    # One view through the buffer, flushed by the worker: beat and the worker reach the broker.
    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=5)
    conn.request("POST", f"/api/v1/users/{user_id}/views/", body=b"")
    response = conn.getresponse()
    response.read()
    conn.close()
    return int(response.status == 202)


def nothing_pending(state) -> bool:
    """Whether no shard group's buffer holds a view and no batch is claimed (`state`: the state Redis'
    client): the database has them all."""
    from django.conf import settings

    from users.writebehind.keys import COUNT_FIELD, group_keys

    return all(
        int(state.hget(k.buffer, COUNT_FIELD) or 0) == 0 and state.zcard(k.batches) == 0
        for k in (group_keys(g) for g in settings.SHARD_GROUPS)
    )


def views_in_database(user_ids) -> int:
    """The sum of the users' view counts on their shard primaries."""
    from django.db import connections

    from project.db import routing
    from users.models import User
    from users.sharding.access import group_for_user_id

    total = 0
    for user_id in user_ids:
        alias = routing.primary_alias(group_for_user_id(user_id))
        total += User.objects.using(alias).filter(id=user_id).values_list("view_count", flat=True).get()
    connections.close_all()
    return total


# ---------------------------------------------------------------- load
class Load:
    """Closed-loop HTTP load from a few threads on 127.0.0.1:`port`: views (each with a new
    Idempotency-Key) and reads in turn; every request is recorded with its start and end.

    `forwarded_for`, when set, picks an X-Forwarded-For address per request (the app must trust
    127.0.0.1 as a proxy), so that the limiter counts many keys."""

    def __init__(self, user_ids, *, port, threads=4, pace=0.005, forwarded_for=None):
        self.user_ids = user_ids
        self.port = port
        self.pace = pace
        self.forwarded_for = forwarded_for
        self.records = []  # (start, end, kind, status, detail)
        # Each view's (start, end, wall-clock end, user id, Idempotency-Key, status, detail): which views
        # a failover lost, by their markers (sentinel-demo), and when they were answered.
        self.views = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _run(self, index):
        conn = None
        n = index
        while not self.done.is_set():
            n += 1
            user_id = random.choice(self.user_ids)
            kind = "view" if n % 2 else "read"
            headers = {"X-Forwarded-For": self.forwarded_for()} if self.forwarded_for else {}
            key = None
            started = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                if kind == "view":
                    headers["Idempotency-Key"] = key = uuid.uuid4().hex
                    conn.request("POST", f"/api/v1/users/{user_id}/views/", body=b"", headers=headers)
                else:
                    conn.request("GET", f"/api/v1/users/{user_id}/", headers=headers)
                response = conn.getresponse()
                body = response.read()
                status = response.status
                try:
                    parsed = json.loads(body) if body else {}
                except ValueError:
                    parsed = {}
                detail = parsed.get("status") if status == 202 else parsed.get("code", "") if status >= 400 else ""
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                conn, status, detail = None, 0, type(exc).__name__
            ended = time.monotonic()
            with self.lock:
                self.records.append((started, ended, kind, status, detail))
                if key is not None:
                    self.views.append((started, ended, time.time(), user_id, key, status, detail))
            time.sleep(self.pace)

    def between(self, start, end):
        with self.lock:
            return [r for r in self.records if start <= r[0] < end]

    def first_buffered_view_after(self, moment):
        with self.lock:
            starts = [r[0] for r in self.records if r[0] >= moment and r[2] == "view" and r[4] == "buffered"]
        return min(starts, default=None)


PHASE_HEADER = (
    f"  {'phase':<10} {'seconds':>8} {'requests':>9} {'2xx':>7} {'503':>6} {'other':>7} {'p50 ms':>8} {'max ms':>8}"
)


def phase_row(name, records, seconds):
    statuses = Counter(r[3] for r in records)
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    unavailable = statuses[503]
    other = len(records) - ok - unavailable
    took = sorted((r[1] - r[0]) * 1000 for r in records) or [0.0]
    return (
        f"  {name:<10} {seconds:>8.2f} {len(records):>9} {ok:>7} {unavailable:>6} {other:>7} "
        f"{took[len(took) // 2]:>8.1f} {took[-1]:>8.1f}"
    )


def describe(records):
    """One line saying what the non-2xx answers and the views were."""
    kinds = Counter()
    for _start, _end, kind, status, detail in records:
        if kind == "view" and status == 202:
            kinds[f"view {detail}"] += 1
        elif not 200 <= status < 300:
            kinds[f"{kind} {status or 'no answer'}{' ' + detail if detail else ''}"] += 1
    return ", ".join(f"{n} {what}" for what, n in sorted(kinds.items())) or "none"
