"""`make chaos`: fault injection under a steady mixed load, each scenario's guarantee checked.

For each scenario: start the load (reads, updates, registrations, views; every write emits a webhook),
inject the fault, hold it CHAOS_SECONDS (default 5) under load, heal it, measure the time until
requests of every kind succeed again and the backlog is back to steady (buffer flushed, no batch left
claimed, invalidations replayed, webhooks delivered), stop the load, let the backlog drain, then
compare every acknowledged write with the primaries. CHAOS_ONLY=name,name picks scenarios.

Runs on the stack the BULWARK_* variables name (the default one, like `make bench`), on the test
databases; do not run it beside `make test`. Results: a table, artifacts/chaos.json, and the logs of
every process in artifacts/chaos/. Exits 1 if a scenario lost or duplicated an acknowledged write,
answered a 500 or nothing at all, refused (503/429) where it documents no refusal, served stale data
once quiet, or did not recover.
"""

import json
import logging
import os
import shutil
import sys
import time
import urllib.request
from datetime import UTC, datetime

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chaos.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from tests.processes import beat, granian, worker  # noqa: E402
from tests.stack import ROOT, free_port, stack, wait_for  # noqa: E402
from users import services  # noqa: E402
from users.outbox import EVENTS  # noqa: E402
from users.sharding.access import group_for_username  # noqa: E402
from webhooks.models import WebhookSubscriber  # noqa: E402

from . import checks  # noqa: E402
from .load import PASSWORD, Load  # noqa: E402
from .receiver import Receiver  # noqa: E402
from .scenarios import (  # noqa: E402
    SCENARIOS,
    Scenario,
    Suite,
    child_env,
    replay,
    replica_cut,
    replicas_usable,
    shard_allow,
)

SECONDS = float(os.environ.get("CHAOS_SECONDS", "5"))
WARM_SECONDS = 3.0
RECOVER_TIMEOUT = 60.0
DRAIN_TIMEOUT = 45.0
USERS_PER_SHARD = 6
# How far behind the primaries another client's read may be (docs/architecture.md, failure table): a
# replica is skipped once it lags MAX_REPLICA_LAG, seen by the next probe; the lag itself is measured
# against primary positions sampled once a probe, hence the second interval.
STALE_BOUND = settings.MAX_REPLICA_LAG + 2 * settings.REPLICA_CHECK_INTERVAL
COLUMNS = (
    "scenario",
    "requests",
    "503",
    "500",
    "429",
    "no answer",
    "lost",
    "dup",
    "redelivered",
    "recover s",
    "result",
)


def setup_data() -> None:
    from tests.conftest import truncate_everything

    call_command("migrate_all", verbosity=0)
    truncate_everything()


def seed_users(prefix: str) -> list[dict]:
    """USERS_PER_SHARD users on each shard group the map uses, each with a token."""
    groups = sorted({group_for_username(f"{prefix}u{i}") for i in range(64)})
    per_group: dict[str, list[str]] = {g: [] for g in groups}
    i = 0
    while any(len(names) < USERS_PER_SHARD for names in per_group.values()):
        name = f"{prefix}u{i}"
        names = per_group[group_for_username(name)]
        if len(names) < USERS_PER_SHARD:
            names.append(name)
        i += 1
    users = []
    for name in sorted(n for names in per_group.values() for n in names):
        row = services.user_create(username=name, email=f"{name}@example.com", password=PASSWORD)
        token, _ = services.token_create(username=name, password=PASSWORD)
        users.append({"id": row["id"], "token": token, "username": name})
    return users


def ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health/ready", timeout=5) as response:  # noqa: S310
            return json.load(response)["status"] == "ok"
    except OSError:
        return False


def ensure_healthy(suite: Suite, base_url: str) -> None:
    """Bring everything back to normal, whatever the previous scenario left behind."""
    for component in ("cache", "state", "primary", "replica"):
        try:
            stack("resume", component)
        except RuntimeError:
            pass
    stack("up")
    for repair in (lambda: shard_allow(True), lambda: replay(False), lambda: replica_cut(False)):
        try:
            repair()
        except Exception as exc:  # noqa: BLE001 (reported, the readiness wait below decides)
            print(f"  (repair failed: {exc})", flush=True)
    for proc, ready_text in ((suite.worker, "ready."), (suite.beat, "beat: Starting")):
        if proc.pid is None:
            proc.start()
            proc.wait_log(ready_text, timeout=60)
    if suite.receiver.server is None:
        suite.receiver.start()
    checks.close_connections()
    wait_for(lambda: ready(base_url), timeout=60, interval=0.5, message="/health/ready to say ok")
    wait_for(replicas_usable, timeout=30, interval=0.5, message="every replica to be usable")


def probe(since: datetime, receiver: Receiver, *, settled: bool = True) -> dict | None:
    try:
        return checks.backlog(since, receiver, settled=settled)
    except Exception:  # a store is down: the backlog is unknown
        checks.close_connections()
        return None


def run(scenario: Scenario, suite: Suite, port: int) -> dict:
    base_url = f"http://127.0.0.1:{port}"
    ensure_healthy(suite, base_url)
    since = datetime.now(UTC)
    users = seed_users(scenario.name.replace("-", ""))
    load = Load(port, users, prefix=f"{scenario.name.replace('-', '')}r", stale_bound=STALE_BOUND)
    ledger = load.ledger
    load.start()
    time.sleep(WARM_SECONDS)
    failures_before = len(ledger.failures)

    t_inject = time.time()
    scenario.inject(suite)
    time.sleep(SECONDS)
    t_heal = time.time()
    scenario.heal(suite)

    recovered_at, ok_since, last, trace = None, None, None, []
    while time.time() < t_heal + RECOVER_TIMEOUT:
        now = time.time()
        last = probe(since, suite.receiver)
        steady = last is not None and checks.backlog_steady(last) and scenario.recovered(suite)
        ok_since = (ok_since or now) if steady else None
        healthy = ledger.healthy(now=now)
        trace.append({"t": round(now - t_heal, 2), "requests_ok": healthy, "backlog": last, "steady": steady})
        if steady and healthy:
            recovered_at = max(ok_since, ledger.last_failure() or t_heal, t_heal)
            break
        time.sleep(0.5)
    time.sleep(1.0)
    load.stop()
    t_stop = time.time()

    def drained_backlog():
        b = probe(since, suite.receiver, settled=False)  # the load stopped: every event is owed
        return b if b is not None and checks.backlog_empty(b) else None

    try:
        drained = wait_for(drained_backlog, timeout=DRAIN_TIMEOUT, interval=0.5, message="the backlog to drain")
    except TimeoutError:
        drained = None
    result = checks.verify(ledger, users, suite.receiver, since, port)
    n503 = ledger.count(lambda s: s == 503)
    n500 = ledger.count(lambda s: isinstance(s, int) and s >= 500 and s != 503)
    n429 = ledger.count(lambda s: s == 429)
    silent = ledger.count(lambda s: s == "none")
    lost, dup = sum(result["lost"].values()), sum(result["duplicates"].values())
    reasons = []
    if lost:
        reasons.append(f"lost {result['lost']}")
    if dup:
        reasons.append(f"duplicated {result['duplicates']}")
    if n500:
        reasons.append(f"{n500} answers 5xx other than 503")
    if silent:
        reasons.append(f"{silent} requests got no answer")
    if (n503 or n429) and not scenario.refusals:
        reasons.append(f"{n503} x 503 and {n429} x 429 in a scenario that documents no refusal")
    if failures_before:
        reasons.append(f"{failures_before} failures before the fault was injected")
    if recovered_at is None:
        reasons.append(f"not recovered {RECOVER_TIMEOUT:.0f} s after healing (backlog {last})")
    if drained is None:
        reasons.append(f"backlog not drained {DRAIN_TIMEOUT:.0f} s after the load stopped")
    for name in ("stale_reads", "ryw_violations", "bad_signatures"):
        if result[name]:
            reasons.append(f"{result[name]} {name.replace('_', ' ')}")
    if scenario.bounded_staleness and result["reads_stale"]:
        reasons.append(
            f"{result['reads_stale']} reads older than {STALE_BOUND:.1f} s: {result['reads_stale_examples'][:2]}"
        )
    if scenario.exact_reads and result["reads_above_acknowledged"]:
        reasons.append(
            f"{result['reads_above_acknowledged']} reads above acknowledged views: {result['reads_above_examples'][:2]}"
        )
    if result["unexpected"]:
        reasons.append(f"unexpected answers: {result['unexpected'][:3]}")
    latencies = sorted(ledger.latencies) or [0.0]
    return {
        "scenario": scenario.name,
        "title": scenario.title,
        "guarantee": scenario.guarantee,
        "documented_refusals": scenario.refusals or None,
        "requests": ledger.requests(),
        "503": n503,
        "500": n500,
        "429": n429,
        "no answer": silent,
        "lost": lost,
        "dup": dup,
        "redelivered": result["redelivered"],
        "recover s": None if recovered_at is None else round(recovered_at - t_heal, 1),
        "result": "FAIL" if reasons else "ok",
        "reasons": reasons,
        "fault_held_s": round(t_heal - t_inject, 1),
        "load_s": round(t_stop - ledger.started, 1),
        "statuses": {kind: {str(s): n for s, n in c.items()} for kind, c in ledger.statuses.items()},
        "acknowledged": {
            "registrations": sum(1 for o in ledger.registered.values() if o.get("acked")),
            "updates": sum(ledger.patch_acked_count.values()),
            "views": sum(ledger.views_acked.values()),
            "views_direct": ledger.views_direct,
            "views_unconfirmed": sum(ledger.views_unsure.values()),
        },
        "latency_ms": {
            "p50": round(latencies[len(latencies) // 2] * 1000, 1),
            "p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
            "max": round(latencies[-1] * 1000, 1),
        },
        "samples_5xx": ledger.samples_500,
        "verify": result,
        "backlog_after_drain": drained,
        "recovery": {
            "last_failure_s": None if ledger.last_failure() is None else round(ledger.last_failure() - t_heal, 2),
            "backlog_steady_s": None if ok_since is None else round(ok_since - t_heal, 2),
            "trace": trace,
        },
    }


def table(rows: list[dict]) -> str:
    cells = [[str(r[c]) if r[c] is not None else "-" for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join([line, rule, *body])


def main() -> int:
    only = [n for n in os.environ.get("CHAOS_ONLY", "").split(",") if n]
    unknown = set(only) - {s.name for s in SCENARIOS}
    if unknown:
        print(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(s.name for s in SCENARIOS)}")
        return 2
    selected = [s for s in SCENARIOS if not only or s.name in only]
    log_dir = ROOT / "artifacts" / "chaos"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    root_logger = logging.getLogger()
    root_logger.handlers = [logging.FileHandler(log_dir / "runner.log")]

    db = settings.DATABASES["default"]
    print(
        f"Bulwark chaos suite: {len(selected)} scenario(s), faults held {SECONDS:.0f} s under load; "
        f"stack on port {db['PORT']} ({db['NAME']}*), logs in {log_dir}\n",
        flush=True,
    )
    started = time.time()
    stack("up")
    setup_data()
    receiver = Receiver(free_port())
    receiver.start()
    receiver.secret = (
        WebhookSubscriber.objects.using("default")
        .create(name="chaos receiver", url=receiver.url, events=list(EVENTS))
        .secret
    )
    port = int(os.environ.get("CHAOS_PORT") or free_port())
    env = child_env()
    suite = Suite(
        # granian as `make bench` runs it: 2 processes, 4 threads each.
        server=granian(port, log_dir / "server.log", name="server", env=env, stop_timeout=20, log_level="warning"),
        # Two pool processes: a webhook run waiting on a dead receiver never delays a flush.
        worker=worker(log_dir / "worker.log", "--without-heartbeat", concurrency=2, env=env, stop_timeout=20),
        beat=beat(log_dir / "beat.log", log_dir / "beat-schedule", env=env, stop_timeout=20),
        receiver=receiver,
        log_dir=log_dir,
    )
    rows = []
    try:
        suite.server.start().wait_serving(f"http://127.0.0.1:{port}/health/live")
        for scenario in selected:
            print(f"{scenario.name}: {scenario.title}", flush=True)
            row = run(scenario, suite, port)
            rows.append(row)
            print(
                f"  {row['requests']} requests, {row['503']} x 503, {row['500']} x 500, {row['429']} x 429, "
                f"lost {row['lost']}, dup {row['dup']}, recovered in {row['recover s']} s: {row['result']}"
                + "".join(f"\n    - {r}" for r in row["reasons"]),
                flush=True,
            )
    finally:
        for proc in (suite.beat, suite.worker, suite.server):
            proc.stop()
        receiver.stop()
        ensure_stack_normal()
    print("\n" + table(rows))
    refusing = [r for r in rows if r["documented_refusals"]]
    if refusing:
        print("\nDocumented refusals:" + "".join(f"\n  {r['scenario']}: {r['documented_refusals']}" for r in refusing))
    out = ROOT / "artifacts" / "chaos.json"
    out.write_text(
        json.dumps(
            {"seconds": SECONDS, "elapsed_s": round(time.time() - started, 1), "scenarios": rows}, indent=2, default=str
        )
    )
    failed = [r["scenario"] for r in rows if r["result"] != "ok"]
    print(
        f"\n{len(rows) - len(failed)}/{len(rows)} scenarios held their guarantees in "
        f"{time.time() - started:.0f} s; written to {out}"
    )
    return 1 if failed else 0


def ensure_stack_normal() -> None:
    """Leave the stack as it was found: every component running, replay going, the shard open."""
    for component in ("cache", "state", "primary", "replica"):
        try:
            stack("resume", component)
        except RuntimeError:
            pass
    try:
        stack("up")
        shard_allow(True)
        replay(False)
        replica_cut(False)
    except Exception as exc:  # noqa: BLE001 (reported; the operator can run `scripts/stack up`)
        print(f"could not restore the stack: {exc}")


if __name__ == "__main__":
    sys.exit(main())
