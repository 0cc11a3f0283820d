#!/usr/bin/env python3
"""`make sentinel-demo`: fail the state Redis over under load through Redis Sentinel; the service goes on.

It never touches the stack's state Redis. It starts its own topology in a temporary directory
(tests/sentinel.py, shared with the failover tests): a master and two replicas configured like the
stack's state Redis (noeviction, AOF everysec) and three Sentinels (quorum 2). With
WRITE_BEHIND_WAIT_REPLICAS=2 (taken from the environment and passed to the app: both replicas) a view
is acknowledged only once both replicas have it, so whichever is promoted has it; with 1, the replica
left behind can confirm views on an old master still taking writes after the promotion, which its resync
then drops (docs/operations.md, "Redis Sentinel"). With 2, a killed master is restarted as soon as the
Sentinels agree on the new one: until it rejoins, the new master has one replica and no view is confirmed.
The app runs against it — granian with project.settings.bench (on the demo databases, bulwark_demo*, limits
too high to deny) and a Celery worker with beat, all with REDIS_STATE_SENTINELS naming the demo's
Sentinels — under a steady load of GET /api/v1/users/<id>/ (rate limiter and pending views on the
state Redis) and POST /api/v1/users/<id>/views/ (write-behind buffer, with an Idempotency-Key).

Three failovers, each reported as requests / 2xx / 503 / other before, during and after it. The
Sentinels choose the replica to promote (the same replica-priority for all, so the one that has
replicated the most); the demo follows their choice:
1. the master is SIGKILLed; Sentinel promotes a replica and points the other one at it; the killed
   server is restarted and rejoins as a replica of the new master;
2. SENTINEL FAILOVER while every server is up; deploy/sentinel-notify (the Sentinels'
   notification-script) pauses the master's writes when the failover starts, deploy/sentinel-reconfig
   (their client-reconfig-script) demotes it as soon as the failover ends;
3. a planned switchover: CLIENT PAUSE WRITE on the master, wait for the replicas to have everything,
   then SENTINEL FAILOVER.

After each it checks that every Sentinel names the new master and that the app's writes land there
(limiter and buffer scripts, the worker's flushes through the broker), waits for the last flush and
compares the views acknowledged with the views in the database. It fails on an answer other than 2xx
or 503, on a view counted that no client was answered for (202 or 503), and, with
WRITE_BEHIND_WAIT_REPLICAS, on an acknowledged view lost. Every process it started is stopped on exit,
and its directory deleted (kept, with the logs, when the demo fails).

Run it with `make sentinel-demo` (or `.venv/bin/python deploy/sentinel_demo.py` with the stack up).
`WRITE_BEHIND_WAIT_REPLICAS=2 make sentinel-demo` runs it with the app waiting for both replicas'
confirmation (docs/operations.md, "Redis Sentinel", has the figures). Lost views are counted twice over:
by the count in the database, and by each acknowledged view's marker on the new master (an old master's
flushes can make up for lost views in the count alone); the lost ones are listed next to the servers'
and Sentinels' log lines. BULWARK_SENTINEL_DEMO_NOTIFY_DELAY (seconds, default 0) runs
deploy/sentinel-notify that much later, as a loaded machine does: the bare SENTINEL FAILOVER then
promotes a replica while the old master still takes writes.
Ports: BULWARK_SENTINEL_DEMO_REDIS_PORTS (the first master, then the two replicas),
BULWARK_SENTINEL_DEMO_SENTINEL_PORTS, BULWARK_SENTINEL_DEMO_WEB_PORT.
"""

import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.demo_support import (  # noqa: E402
    DEMO_DATABASES,
    PHASE_HEADER,
    Load,
    client,
    create_users,
    describe,
    nothing_pending,
    phase_row,
    run_demo,
    say,
    start_app,
    views_in_database,
    wait_for,
)
from project.settings.env import env  # noqa: E402
from project.worker import DEFAULT_QUEUE  # noqa: E402
from tests.sentinel import MASTER_NAME, Topology, role  # noqa: E402

VENV_BIN = Path(sys.executable).parent
# Below Linux's ephemeral range (32768-60999): an outgoing connection can hold such a port for a while,
# and a server then cannot bind it.
REDIS_PORTS = [int(p) for p in env("BULWARK_SENTINEL_DEMO_REDIS_PORTS", ["16390", "16391", "16392"], list)]
SENTINEL_PORTS = [int(p) for p in env("BULWARK_SENTINEL_DEMO_SENTINEL_PORTS", ["26390", "26391", "26392"], list)]
WEB_PORT = env("BULWARK_SENTINEL_DEMO_WEB_PORT", 18090, int)
USERS = 20
LOAD_THREADS = 4
PACE = 0.005  # seconds each load thread waits between requests: steady load, CPU left for the rest
STEADY = 3.0  # seconds of load before each fault and after each recovery

APP_ENV = {
    "DJANGO_SETTINGS_MODULE": "project.settings.bench",
    **DEMO_DATABASES,
    "REDIS_STATE_SENTINELS": " ".join(f"127.0.0.1:{p}" for p in SENTINEL_PORTS),
    "REDIS_STATE_SENTINEL_MASTER": MASTER_NAME,
    "WRITE_BEHIND_INTERVAL": "1.0",
    # Every view carries a new Idempotency-Key, all from one address: far more than a caller's daily cap.
    "RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER": "100000000",
}
NOTIFY_DELAY = env("BULWARK_SENTINEL_DEMO_NOTIFY_DELAY", 0.0, float)
WAIT_REPLICAS = env("WRITE_BEHIND_WAIT_REPLICAS", 0, int)  # the app's setting, from the environment


def run_failover(procs, topo, load, *, title, old_port, fault):
    """Apply `fault`, watch the promotion, and print the phases. Return the new master's port (the
    Sentinels' choice) and the moment it was first named.

    A killed master is restarted as soon as the Sentinels agree on the new one (as a supervisor would)
    when WRITE_BEHIND_WAIT_REPLICAS asks for both replicas: until it rejoins, the new master has one,
    no view is confirmed and no flush applied."""
    say(f"\n{title}")
    time.sleep(STEADY)
    for port in REDIS_PORTS:  # the promoted one's EVALSHA count then starts at its promotion (a replica runs none)
        if port != old_port and f"redis-{port}" in procs.running:
            client(port).config_resetstat()
    t_fault = fault()
    moments = {}

    def switched():
        answers = topo.masters_named()
        promoted = next((a for a in answers if a not in (None, old_port)), None)
        if "named" not in moments and promoted is not None:
            moments["named"], moments["port"] = time.monotonic(), promoted
        return promoted is not None and all(a == promoted for a in answers)

    wait_for("every Sentinel to name the same new master", switched, timeout=60, every=0.02)
    t_all = time.monotonic()
    new_port = moments["port"]
    killed = f"redis-{old_port}" not in procs.running
    if killed and WAIT_REPLICAS >= len(REDIS_PORTS) - 1:
        procs.start_redis(old_port, topo.redis_command(old_port))
        say(f"  :{old_port} restarted {time.monotonic() - t_fault:.2f} s after the fault (WAIT needs both replicas)")
    if not killed:  # a planned failover: the old master is still up
        wait_for(
            f"127.0.0.1:{old_port} to become a replica",
            lambda: role(old_port)["role"] == "slave",
            timeout=60,
            every=0.02,
        )
        t_demoted = time.monotonic()
    else:
        t_demoted = t_fault
    # Buffered after this moment means written on the new master: the old one is dead or read-only.
    t_switch = max(t_demoted, moments["named"])
    try:
        t_back = wait_for(
            "a view buffered on the new master", lambda: load.first_buffered_view_after(t_switch), timeout=60
        )
    except TimeoutError:
        say(explain_no_buffered_view(procs, topo, load, since=t_switch))
        raise
    time.sleep(STEADY)
    t_end = time.monotonic()
    procs.check_alive("web", "worker")

    phases = [("before", t_fault - STEADY, t_fault), ("failover", t_fault, t_back), ("after", t_back, t_end)]
    say(PHASE_HEADER)
    for name, start, end in phases:
        say(phase_row(name, load.between(start, end), end - start))
    say(f"  during the failover: {describe(load.between(t_fault, t_back))}")
    say(
        f"  first Sentinel named 127.0.0.1:{new_port} {moments['named'] - t_fault:.2f} s after the fault, "
        f"all {len(SENTINEL_PORTS)} {t_all - t_fault:.2f} s after"
    )
    if t_demoted != t_fault:
        say(
            f"  old master 127.0.0.1:{old_port} read-only (a replica) {t_demoted - t_fault:.2f} s after the fault "
            f"(deploy/sentinel-reconfig, Sentinel's client-reconfig-script)"
        )
    say(f"  views buffered again, on the new master, {t_back - t_fault:.2f} s after the fault")
    if other := [r for r in load.between(t_fault - STEADY, t_end) if not (200 <= r[3] < 300 or r[3] == 503)]:
        say(f"  !! {len(other)} answers other than 2xx/503: {describe(other)} (see {procs.workdir}/web.out)")
    return new_port, time.time() - (time.monotonic() - moments["named"])


def explain_no_buffered_view(procs, topo, load, *, since):
    """What the views were answered since `since`, then `topology_state`: what a timeout waiting for a
    buffered view needs to explain itself."""
    views = describe(load.between(since, 1e12))
    head = f"  !! no view buffered since the switch; views answered since: {views}"
    return "\n".join([head, *topology_state(procs, topo)])


def explain_no_flush(procs, topo, new_port, db):
    """The broker's queues on the new master (tasks published and not consumed, or none published),
    the end of the worker's log, then `topology_state`: what a timeout waiting for a flush needs."""
    new = client(new_port, db)
    try:
        queues = {q: new.llen(q) for q in (DEFAULT_QUEUE, "webhooks")}
        unacked = new.zcard("unacked_index")
    except Exception as exc:  # noqa: BLE001 - a diagnostic: say what failed and go on
        queues, unacked = f"{type(exc).__name__}: {exc}", "?"
    tail = [line[:200] for line in procs.running["worker"].log_tail(200) if line.startswith("[")][-5:]
    return "\n".join(
        [
            f"  !! no flush on :{new_port}; its queue lengths {queues}, {unacked} delivered and not acknowledged",
            *topology_state(procs, topo),
            "  worker's last log lines:",
            *(f"    {line}" for line in tail),
            f"  worker's processes (pid state wchan: command): {group_processes(procs.running['worker'].pid)}",
        ]
    )


def group_processes(pgid) -> str:
    """The processes of group `pgid` (the worker, its pool processes, beat) with their state and the
    kernel function they sleep in: which of them waits, and on what (a socket read, a futex)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
            if int(fields[2]) != pgid:
                continue
            wchan = (stat.parent / "wchan").read_text()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:60]
        except (OSError, ValueError, IndexError):
            continue
        found.append(f"{stat.parent.name} {fields[0]} {wchan}: {command}")
    return "; ".join(found) or "none"


def topology_state(procs, topo) -> list[str]:
    """What each Sentinel names and, for each server, its role and the clients connected to it by last
    command (where the web processes' and the worker's state and broker connections point)."""
    lines = [
        "  Sentinels name: "
        + ", ".join(f":{s} -> :{a}" for s, a in zip(SENTINEL_PORTS, topo.masters_named(), strict=True))
    ]
    pids = {name: p.pid for name, p in procs.running.items() if name in ("web", "worker")}
    for port in REDIS_PORTS:
        if f"redis-{port}" not in procs.running:
            lines.append(f"  :{port}: not running")
            continue
        try:
            info = role(port)
            clients = client(port).client_list(_type="normal")
        except Exception as exc:  # noqa: BLE001 - a diagnostic: say what failed and go on
            lines.append(f"  :{port}: {type(exc).__name__}: {exc}")
            continue
        last_commands = Counter(c.get("cmd") for c in clients)  # evalsha: web/worker state calls, brpop: consumer
        link = ""
        if info["role"] == "slave":
            link = f" of :{info.get('master_port')} link {info.get('master_link_status')}"
        lines.append(
            f"  :{port}: role {info['role']}{link}, {info.get('connected_slaves', 0)} replica(s), "
            f"{len(clients)} normal client(s)" + (f", by last command {dict(last_commands)}" if clients else "")
        )
    lines.append(f"  web and worker pids: {pids}; their logs: {procs.workdir}/web.out, worker.out")
    return lines


def view_marker(user_id, key) -> str:
    """The write-behind marker key of the view posted anonymously from 127.0.0.1 with Idempotency-Key
    `key` (resilience/idempotency.py's record digest is the view's id)."""
    import hashlib

    from users.sharding.access import group_for_user_id
    from users.writebehind.keys import group_keys

    digest = hashlib.sha256(f"ip127.0.0.1:/api/v1/users/{user_id}/views/:{key}".encode()).hexdigest()
    return group_keys(group_for_user_id(user_id)).marker(digest)


def missing_views(load, port, db):
    """The acknowledged views (202 buffered) whose markers `port` lacks: the views a failover lost."""
    new = client(port, db)
    acked = [v for v in load.views if v[5] == 202 and v[6] == "buffered"]
    pipe = new.pipeline(transaction=False)
    for v in acked:
        pipe.exists(view_marker(v[3], v[4]))
    return [v for v, found in zip(acked, pipe.execute(), strict=True) if not found], len(acked)


def stamp(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall % 1 * 1000):03d}"


def explain_lost(procs, lost, since_wall):
    """The lost views' answer times next to the Sentinels' failover events, the notify script's runs and
    each server's replication log lines since `since_wall`."""
    lines = ["  lost views answered (start .. end, wall clock):"]
    for started, ended, wall_end, user_id, key, _status, _detail in lost:
        lines.append(f"    {stamp(wall_end - (ended - started))} .. {stamp(wall_end)} user {user_id} key {key}")
    since = time.strftime("%H:%M:%S", time.localtime(since_wall))
    for log in sorted(procs.workdir.glob("*/*.log")) + sorted(procs.workdir.glob("notify.log")):
        picked = [line.rstrip() for line in log.read_text(errors="replace").splitlines() if _after(line, since)]
        lines.append(f"  {log.relative_to(procs.workdir)}:")
        lines += [f"    {line[:220]}" for line in picked[-60:]]
    return "\n".join(lines)


def _after(line, since):
    import re

    m = re.search(r"(\d\d:\d\d:\d\d)\.\d+", line)
    return bool(m) and m.group(1) >= since


def verify_new_master(procs, topo, new_port, db, promoted_at):
    """Print evidence that the Sentinels agree on `new_port` and that the app's writes land there."""
    answers = topo.masters_named()
    say(
        f"  SENTINEL get-master-addr-by-name {MASTER_NAME}: "
        + ", ".join(f":{s} -> :{a}" for s, a in zip(SENTINEL_PORTS, answers, strict=True))
    )
    new = client(new_port, db)
    info = new.info("replication")
    if info["role"] != "master" or answers.count(new_port) != len(SENTINEL_PORTS):
        raise RuntimeError("the Sentinels do not agree on the new master")
    calls = new.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    limiter_keys = sum(1 for _ in new.scan_iter(match="rl:v2:*", count=1000))
    if not calls or not limiter_keys:
        raise RuntimeError("the app's writes did not reach the new master")
    # The flush stamp replicated from the old master predates the promotion: wait for a newer one.
    try:
        flushed_at = wait_for(
            "a write-behind flush on the new master",
            lambda: max(0.0, float(new.hget("wb:stats", "last_flush_at") or 0) - promoted_at),
            timeout=60,
            every=0.2,
        )
    except TimeoutError:
        say(explain_no_flush(procs, topo, new_port, db))
        raise
    say(
        f"  new master :{new_port}: role {info['role']}, {calls} EVALSHA from the app since its promotion "
        f"(limiter, buffer), {limiter_keys} limiter key(s) there; first write-behind flush on it "
        f"{flushed_at:.2f} s after the promotion (beat and the worker find the broker through the Sentinels)"
    )


# ---------------------------------------------------------------- main
def main():
    run_demo(
        "sentinel-demo",
        demo,
        ports=[*REDIS_PORTS, *SENTINEL_PORTS, WEB_PORT],
        port_variables="BULWARK_SENTINEL_DEMO_*_PORT(S)",
        logs="web.out, worker.out, */redis.log, */sentinel.log",
    )


def demo(procs):
    if len(REDIS_PORTS) != 3:
        raise SystemExit("sentinel-demo: BULWARK_SENTINEL_DEMO_REDIS_PORTS needs three ports (a master, two replicas)")
    first, *replicas = REDIS_PORTS
    workdir = procs.workdir
    notify = workdir / "notify-logged"
    notify.write_text(
        "#!/usr/bin/env bash\n"
        f'[ "$1" = +try-failover ] && sleep {NOTIFY_DELAY}\n'
        f'{ROOT / "deploy" / "sentinel-notify"} "$@"\n'
        f'echo "$(date +%H:%M:%S.%N) notify done: $*" >> {workdir / "notify.log"}\n'
    )
    notify.chmod(0o755)
    topo = Topology(procs, redis_ports=REDIS_PORTS, sentinel_ports=SENTINEL_PORTS, notify_script=notify)
    say(
        f"sentinel-demo: master :{first}, replicas {', '.join(f':{p}' for p in replicas)}, Sentinels "
        f"{SENTINEL_PORTS} (quorum {topo.quorum}), down-after {topo.down_after_ms} ms, "
        f"WRITE_BEHIND_WAIT_REPLICAS={WAIT_REPLICAS}, in {workdir}"
    )
    topo.start()
    say("  topology up: the Sentinels see the master, both replicas and each other")

    os.environ.update(APP_ENV, WRITE_BEHIND_WAIT_REPLICAS=str(WAIT_REPLICAS))
    import django

    django.setup()
    from django.conf import settings

    db = settings.REDIS_DB
    user_ids = create_users("sentineldemo", USERS)
    app_env = dict(os.environ)
    for name in ("REDIS_STATE_URL", "CELERY_BROKER_URL"):
        app_env.pop(name, None)
    warmup_views = start_app(procs, web_port=WEB_PORT, env=app_env, user_id=user_ids[0])
    wait_for(
        "the worker's first flush", lambda: client(first, db).hget("wb:stats", "last_flush_at"), timeout=60, every=0.2
    )
    say(
        f"  app up: granian :{WEB_PORT} and a Celery worker with beat, settings project.settings.bench, "
        f"REDIS_STATE_SENTINELS={APP_ENV['REDIS_STATE_SENTINELS']!r}, WRITE_BEHIND_WAIT_REPLICAS={WAIT_REPLICAS}; "
        f"{USERS} users created"
    )

    master = {"port": first}  # the current master: the Sentinels choose each new one

    def others():
        return [p for p in REDIS_PORTS if p != master["port"]]

    def kill_master():
        procs.kill(f"redis-{master['port']}")
        return time.monotonic()

    def sentinel_failover():
        client(SENTINEL_PORTS[0]).execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        return time.monotonic()

    def planned_switchover():
        # manage.py state_switchover's steps: stop writes on the master, let the replicas catch up, then
        # fail over: nothing is acknowledged that the new master lacks. Paused writes wait (up to the
        # client's timeout), then go to the new master when deploy/sentinel-reconfig drops the old
        # master's clients.
        paused_at = time.monotonic()  # the failover phase starts here: writes wait from now on
        topo.switchover()
        return paused_at

    scenarios = [
        ("1. SIGKILL the master :{old}", kill_master),
        ("2. SENTINEL FAILOVER {name} (master :{old})", sentinel_failover),
        (
            "3. planned switchover (manage.py state_switchover): CLIENT PAUSE WRITE on :{old}, replicas caught up,"
            " SENTINEL FAILOVER",
            planned_switchover,
        ),
    ]
    statuses = Counter()
    lost_total = over_total = 0
    # The users are new: every view in the database since the warm-up is one of the demo's. Measured
    # from there, not from each scenario's start, or the warm-up view (acknowledged, counted in the first
    # scenario) would be flushed before the first baseline and show as lost.
    counted = 0
    for title, fault in scenarios:
        old_port = master["port"]
        scenario_wall = time.time()
        killed = fault is kill_master
        with Load(user_ids, port=WEB_PORT, threads=LOAD_THREADS, pace=PACE) as load:
            new_port, promoted_at = run_failover(
                procs, topo, load, title=title.format(old=old_port, name=MASTER_NAME), old_port=old_port, fault=fault
            )
            master["port"] = new_port
            say(f"  the Sentinels promoted :{new_port}")
            verify_new_master(procs, topo, new_port, db, promoted_at)
        if f"redis-{old_port}" in procs.running:
            client(old_port).execute_command("CLIENT", "UNPAUSE")
        wait_for("the last flush", lambda p=new_port: nothing_pending(client(p, db)), timeout=60, every=0.2)
        views = [r for r in load.records if r[2] == "view"]
        acknowledged = warmup_views + sum(1 for r in views if r[3] == 202)
        uncertain = sum(1 for r in views if r[3] == 503 and r[4] == "unconfirmed" or r[3] == 0)
        total = views_in_database(user_ids)
        stored, counted = total - counted, total
        warmup_views = 0
        # Lost by the count, or by the markers: views flushed on an old master that still took writes
        # can make up for acknowledged views gone from the new master's buffer in the count alone.
        gone, checked = missing_views(load, new_port, db)
        lost = max(0, acknowledged - stored, len(gone))
        lost_total += lost
        say(f"  markers: {checked - len(gone)} of {checked} views acknowledged as buffered have theirs on :{new_port}")
        if gone:
            say(explain_lost(procs, gone, scenario_wall - 1))
        say(
            f"  views: {acknowledged} acknowledged (202), {uncertain} unconfirmed (503, may or may not count), "
            f"{stored} in the database after the last flush: acknowledged views lost "
            f"{'at least ' if uncertain and lost else ''}{lost}"
        )
        over = max(0, stored - acknowledged - uncertain)
        over_total += over
        if over:
            say(f"  !! {over} views counted that nobody was told about")
        statuses.update(r[3] for r in load.records)
        if killed:  # restart it (unless run_failover did), wait for it to rejoin
            if f"redis-{old_port}" not in procs.running:
                procs.start_redis(old_port, topo.redis_command(old_port))
            wait_for(
                f":{old_port} to rejoin as a replica of :{new_port}",
                lambda o=old_port, n=new_port: (
                    role(o)["role"] == "slave"
                    and role(o).get("master_port") == n
                    and role(o).get("master_link_status") == "up"
                    and topo.ready(n, others())
                ),
                timeout=90,
                every=0.2,
            )
            say(
                f"  :{old_port} restarted from its AOF, rejoined as a replica of :{new_port} (Sentinel reconfigured it)"
            )
        else:
            wait_for("the Sentinels to settle", lambda n=new_port: topo.ready(n, others()), timeout=90, every=0.2)

    say(
        f"\nall {sum(statuses.values())} requests: "
        + ", ".join(f"{n} x {s or 'no answer'}" for s, n in sorted(statuses.items()))
    )
    errors = sum(n for s, n in statuses.items() if not (200 <= s < 300 or s == 503))
    if errors:
        raise SystemExit(f"sentinel-demo: {errors} answers were neither 2xx nor 503")
    # A view counted that no client was told about (202) or warned of (503 unconfirmed) is a count too
    # many; a view lost while each was confirmed by a replica is a broken promise. Either fails the demo.
    if over_total:
        raise SystemExit(f"sentinel-demo: {over_total} views counted over (more in the database than answered)")
    if WAIT_REPLICAS and lost_total:
        raise SystemExit(f"sentinel-demo: {lost_total} acknowledged views lost with WRITE_BEHIND_WAIT_REPLICAS")
    why = (
        f"each acknowledged only once {WAIT_REPLICAS} replica(s) had it"
        if WAIT_REPLICAS
        else "replication being asynchronous; WRITE_BEHIND_WAIT_REPLICAS=1 waits for a replica"
    )
    say(
        f"sentinel-demo: ok (no answer other than 2xx/503; WRITE_BEHIND_WAIT_REPLICAS={WAIT_REPLICAS}: "
        f"{lost_total} acknowledged views lost in all, {why}; 0 counted over)"
    )


if __name__ == "__main__":
    main()
