#!/usr/bin/env python3
"""`make cluster-demo`: the state Redis as a Redis Cluster under load; one master is SIGKILLed.

It never touches the stack's state Redis. It starts, in a temporary directory, a Redis Cluster of three
masters each with one replica (configured like the stack's state Redis: noeviction, AOF everysec;
cluster-node-timeout 1 s) and a single Redis for Celery's broker (kombu has no cluster transport). The
app runs on them — granian with project.settings.bench (on the demo databases, bulwark_demo*; limits too high to deny)
and a Celery worker with beat, all with REDIS_STATE_CLUSTER_NODES naming the cluster and
WRITE_BEHIND_WAIT_REPLICAS=1 (from the environment, 1 unless set): a view is acknowledged (202) only
once its master's replica has it. The load is GET /api/v1/users/<id>/ (limiter and pending views) and
POST /api/v1/users/<id>/views/ (write-behind buffer, each with a new Idempotency-Key), every request
from another X-Forwarded-For address (127.0.0.1 is a trusted proxy), so limiter keys are on every master.

1. Limiter exactness on the cluster: 48 fresh keys (two policies of 25/hour, sliding window and
   token bucket: a bucket earns one more token in 144 s, so a slow run cannot admit a 26th) each
   checked 35 times from 8 threads: every key must be admitted exactly 25 times.
2. Under the load, SIGKILL the master that holds the first shard group's write-behind buffer. The
   cluster promotes its replica (no operator, no Sentinel); the killed node is restarted from its AOF
   and rejoins as the new master's replica. Reported: requests, 2xx, 503, other 5xx before, during,
   after; how long the promotion took.
3. After the last flush: views acknowledged vs views in the database (lost: acknowledged but not
   counted; over: counted but never acknowledged nor answered "unconfirmed").
4. Limiter exactness again, after the failover (keys on the promoted master included).

Run it with `make cluster-demo` (or `.venv/bin/python deploy/cluster_demo.py` with the stack up).
Ports: BULWARK_CLUSTER_DEMO_PORTS (six node ports), BULWARK_CLUSTER_DEMO_BUS_PORTS (six cluster-bus ports),
BULWARK_CLUSTER_DEMO_BROKER_PORT, BULWARK_CLUSTER_DEMO_WEB_PORT.
"""

import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.demo_support import (  # noqa: E402
    DEMO_DATABASES,
    PHASE_HEADER,
    Cluster,
    Load,
    create_users,
    describe,
    nothing_pending,
    phase_row,
    redis_command,
    run_demo,
    say,
    start_app,
    views_in_database,
    wait_for,
)
from project.settings.env import env  # noqa: E402

# Below Linux's ephemeral range (32768-60999), like the Sentinel demo's.
PORTS = [int(p) for p in env("BULWARK_CLUSTER_DEMO_PORTS", [str(p) for p in range(16400, 16406)], list)]
BUS_PORTS = [int(p) for p in env("BULWARK_CLUSTER_DEMO_BUS_PORTS", [str(p) for p in range(16410, 16416)], list)]
BROKER_PORT = env("BULWARK_CLUSTER_DEMO_BROKER_PORT", 16420, int)
WEB_PORT = env("BULWARK_CLUSTER_DEMO_WEB_PORT", 18095, int)
NODE_TIMEOUT_MS = 1000  # a master unreachable this long is failed over by its replica
WAIT_REPLICAS = env("WRITE_BEHIND_WAIT_REPLICAS", 1, int)
USERS = 20
LOAD_THREADS = 4
PACE = 0.005
STEADY = 3.0
EXACT_LIMIT, EXACT_TRIES, EXACT_KEYS, EXACT_THREADS = 25, 35, 24, 8

APP_ENV = {
    "DJANGO_SETTINGS_MODULE": "project.settings.bench",
    **DEMO_DATABASES,
    "REDIS_STATE_CLUSTER_NODES": " ".join(f"127.0.0.1:{p}" for p in PORTS),
    "CELERY_BROKER_URL": f"redis://127.0.0.1:{BROKER_PORT}/0",
    "WRITE_BEHIND_INTERVAL": "1.0",
    "WRITE_BEHIND_WAIT_REPLICAS": str(WAIT_REPLICAS),
    "RESILIENCE_TRUSTED_PROXIES": "127.0.0.1",
    # Every view carries a new Idempotency-Key: far more than a caller's daily cap.
    "RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER": "100000000",
}


def forwarded_for():
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def limiter_exactness(label):
    """Check EXACT_KEYS fresh keys per policy EXACT_TRIES times each from EXACT_THREADS threads, in this
    process (on the cluster); return a report line, raise when a key was not admitted exactly its limit."""
    from django.conf import settings

    from resilience.ratelimit import limiter

    settings.RESILIENCE_RATELIMIT_POLICIES = {
        **settings.RESILIENCE_RATELIMIT_POLICIES,
        "demo.window": {"rate": f"{EXACT_LIMIT}/h", "key": "ip", "algorithm": "sliding_window"},
        "demo.bucket": {"rate": f"{EXACT_LIMIT}/h", "key": "ip", "algorithm": "token_bucket"},
    }
    run = uuid.uuid4().hex[:6]
    calls = [(p, f"ip:{run}-{i}") for p in ("demo.window", "demo.bucket") for i in range(EXACT_KEYS)] * EXACT_TRIES
    random.shuffle(calls)
    allowed, degraded, lock = Counter(), Counter(), threading.Lock()

    def work(share):
        for name, key in share:
            decision = limiter.check(name, key)
            with lock:
                allowed[(name, key)] += decision.allowed
                degraded[name] += decision.degraded

    threads = [threading.Thread(target=work, args=(calls[i::EXACT_THREADS],)) for i in range(EXACT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    from resilience.redis_state import state_redis

    masters = {state_redis().get_node_from_key(limiter.state_key(limiter.get_policy(n), k)).port for n, k in allowed}
    counts = Counter(allowed.values())
    per_policy = {
        name: dict(sorted(Counter(n for (p, _), n in allowed.items() if p == name).items())) for name in degraded
    }
    line = (
        f"  limiter {label}: {len(allowed)} keys on {len(masters)} masters, {EXACT_TRIES} checks each from "
        f"{EXACT_THREADS} threads: admitted per key -> number of keys {per_policy} (limit {EXACT_LIMIT}), "
        f"degraded {sum(degraded.values())}"
    )
    say(line)
    if set(counts) != {EXACT_LIMIT} or sum(degraded.values()):
        raise SystemExit(f"cluster-demo: the limiter was not exact per key {label}")
    return counts


def main():
    if len(PORTS) != 6 or len(BUS_PORTS) != 6:
        raise SystemExit("cluster-demo: BULWARK_CLUSTER_DEMO_PORTS and _BUS_PORTS need six ports each")
    run_demo(
        "cluster-demo",
        demo,
        ports=[*PORTS, *BUS_PORTS, BROKER_PORT, WEB_PORT],
        port_variables="BULWARK_CLUSTER_DEMO_*_PORT(S)",
        logs="web.out, worker.out, redis-*/redis.log",
    )


def demo(procs):
    workdir = procs.workdir
    # The broker first: the cluster's own connections take ephemeral ports, which may be in this range.
    procs.start_redis(BROKER_PORT, redis_command(BROKER_PORT, workdir))
    cluster = Cluster(procs, PORTS, BUS_PORTS, node_timeout_ms=NODE_TIMEOUT_MS)
    cluster.create()
    say(
        f"cluster-demo: Redis Cluster on {PORTS} (masters {sorted(cluster.masters())}, one replica each, "
        f"node timeout {NODE_TIMEOUT_MS} ms), broker Redis :{BROKER_PORT}, in {workdir}"
    )

    os.environ.update(APP_ENV)
    for name in ("REDIS_STATE_URL", "REDIS_STATE_SENTINELS"):
        os.environ.pop(name, None)
    import django

    django.setup()
    from django.conf import settings
    from redis.crc import key_slot

    from resilience.redis_state import state_redis
    from users.writebehind.keys import STATS, group_keys

    user_ids = create_users("clusterdemo", USERS)
    warmup_views = start_app(procs, web_port=WEB_PORT, env=dict(os.environ), user_id=user_ids[0])
    state = state_redis()
    wait_for("the worker's first flush", lambda: state.hget(STATS, "last_flush_at"), timeout=60, every=0.2)
    say(
        f"  app up: granian :{WEB_PORT} and a Celery worker with beat (broker :{BROKER_PORT}), settings "
        f"project.settings.bench, WRITE_BEHIND_WAIT_REPLICAS={WAIT_REPLICAS}; {USERS} users created"
    )

    say("\n1. limiter exactness on the cluster")
    limiter_exactness("before the failover")

    group = settings.SHARD_GROUPS[0]
    slot = key_slot(group_keys(group).buffer.encode())
    victim = cluster.master_of_slot(slot)
    say(f"\n2. SIGKILL the master :{victim} (slot {slot}: shard group {group}'s write-behind buffer), under load")
    with Load(user_ids, port=WEB_PORT, threads=LOAD_THREADS, pace=PACE, forwarded_for=forwarded_for) as load:
        time.sleep(STEADY)
        t_fault = time.monotonic()
        cluster.kill(victim)
        promoted = cluster.wait_failed_over(slot, victim)
        t_promoted = time.monotonic()
        cluster.start_node(victim)  # restarted from its AOF; it rejoins as the promoted node's replica
        cluster.wait_healthy()
        t_rejoined = time.monotonic()
        t_back = wait_for(
            "a view buffered after the failover", lambda: load.first_buffered_view_after(t_rejoined), timeout=60
        )
        time.sleep(STEADY)
        t_end = time.monotonic()
    procs.check_alive("web", "worker")
    say(PHASE_HEADER)
    phases = [("before", t_fault - STEADY, t_fault), ("failover", t_fault, t_back), ("after", t_back, t_end)]
    for name, start, end in phases:
        say(phase_row(name, load.between(start, end), end - start))
    say(f"  during the failover: {describe(load.between(t_fault, t_back))}")
    bad = [r[1] for r in load.between(t_fault, t_end) if not 200 <= r[3] < 300]
    say(
        f"  the cluster promoted :{promoted} {t_promoted - t_fault:.2f} s after the kill; :{victim} restarted "
        f"and in sync as its replica {t_rejoined - t_fault:.2f} s after; last answer other than 2xx "
        + (f"{max(bad) - t_fault:.2f} s after the kill" if bad else "none")
    )

    wait_for("the last flush", lambda: nothing_pending(state), timeout=90, every=0.2)
    total = views_in_database(user_ids)
    views = [r for r in load.records if r[2] == "view"]
    acknowledged = warmup_views + sum(1 for r in views if r[3] == 202)
    uncertain = sum(1 for r in views if (r[3] == 503 and r[4] == "unconfirmed") or r[3] == 0)
    lost = max(0, acknowledged - total)
    over = max(0, total - acknowledged - uncertain)
    statuses = Counter(r[3] for r in load.records)
    errors = sum(n for s, n in statuses.items() if s >= 500 and s != 503)
    say(
        f"\n3. views: {acknowledged} acknowledged (202), {uncertain} unconfirmed (503, may or may not count), "
        f"{total} in the database after the last flush: lost {lost}, over {over}"
    )
    say("\n4. limiter exactness after the failover")
    limiter_exactness("after the failover")

    say(
        f"\nall {sum(statuses.values())} requests: "
        + ", ".join(f"{n} x {s or 'no answer'}" for s, n in sorted(statuses.items()))
        + f"; 5xx other than 503: {errors}"
    )
    if errors or lost or over:
        raise SystemExit(f"cluster-demo: {errors} 5xx other than 503, {lost} views lost, {over} views over")
    say(
        "cluster-demo: ok (failover by the cluster, no 5xx but 503, no acknowledged view lost, none over; "
        "limiter exact per key before and after)"
    )


if __name__ == "__main__":
    main()
