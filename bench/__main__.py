"""`make bench`: every figure as a ratio against its baseline measured in the same run.

Sections: baselines (the cached read and /me against a bare DRF and a bare Django view doing one
django-redis GET in a minimal project, bench/bare_settings.py; p99/p50 at 16 connections; granian
--backpressure), local cache (hot read and a Zipf mix with it on vs off, RSS per process, invalidation
delay), data layer (routing overhead, replica share), read-your-writes (write latency with and
without `synchronous_commit = remote_apply`; the replica share of reads with LSN pinning vs the time
window, same mix), HTTP (gunicorn vs granian; cached, uncached,
/me vs a bare django-redis view; Redis round trips per request), rate limiting (on vs off, round trips
per check, breaker overhead), dependency breakers (the cached read with them on vs off), tracing (the
cached read with OpenTelemetry on, spans exported to a local OTLP/HTTP sink, vs off), write-behind
(buffered vs direct views; buffered views with and without WRITE_BEHIND_WAIT_REPLICAS=1 against a
temporary state replica; flush rows/s vs raw COPY + UPDATE),
idempotency keys (state Redis memory of the records one client can make, with the per-caller cap),
overload (the adaptive concurrency limit's cost on the cached read; an open-loop mix at 0.5x, 2x and 3x
capacity straight to granian, with the in-process limit, and through nginx's per-class limits: goodput,
p50/p99 of accepted requests, refusals per class).
Results are printed and written to artifacts/bench.json. This machine is shared and noisy: read the
ratios, not the absolute numbers; every HTTP row also gives the serving processes' CPU time per request,
which moves far less with the neighbours' load than requests/s does.
"""

import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.bench")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django_redis import get_redis_connection  # noqa: E402

from bench import openloop, roundtrips  # noqa: E402
from project.db import pinning, routing  # noqa: E402
from project.db.replicas import monitor  # noqa: E402
from project.server import granian_argv  # noqa: E402
from tests.processes import Process, running, state_replica  # noqa: E402
from tests.stack import free_port  # noqa: E402
from users import selectors, services  # noqa: E402
from users.models import User  # noqa: E402
from users.sharding.access import group_for_user_id  # noqa: E402
from users.writebehind import buffer, flush  # noqa: E402
from users.writebehind.keys import COUNT_FIELD, group_keys, views_field  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
RESULTS: dict = {}
# Server processes and threads per process, the same for every server in a run (see docs/operations.md):
# on 2 cores, 4 × 2 served the cached read 5-10 % faster than 2 × 4 (less contention for each GIL).
WORKERS, THREADS = os.environ.get("BENCH_WORKERS", "4"), os.environ.get("BENCH_THREADS", "2")


def report(section, name, value, unit="", target=None):
    RESULTS.setdefault(section, {})[name] = {"value": value, "unit": unit, "target": target}
    shown = f"{value:,.3f}" if isinstance(value, float) else f"{value}"
    print(f"  {name:<58} {shown:>14} {unit:<8} {'target ' + target if target else ''}", flush=True)


# ---------------------------------------------------------------- data
def reset_data():
    from tests.conftest import truncate_everything

    call_command("migrate_all", verbosity=0)
    truncate_everything()


def make_users(n, prefix):
    return [
        services.user_create(username=f"{prefix}{i}", email=f"{prefix}{i}@example.com", password="bench-pass-2026")
        for i in range(n)
    ]


def timed(fn, n):
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - started)


def bench_data_layer(users):
    print("data layer", flush=True)
    monitor.refresh_now()
    pinning.reset()
    user = users[0]
    uid, group = user["id"], group_for_user_id(user["id"])
    replica = settings.DATABASE_GROUPS[group]["replicas"][0]
    fixed = lambda: User.objects.using(replica).filter(id=uid).values(*selectors.FIELDS).first()  # noqa: E731
    routed = lambda: selectors._row_by_id(uid)  # noqa: E731
    for fn in (fixed, routed):
        timed(fn, 300)
    rounds = [(timed(fixed, 1000), timed(routed, 1000)) for _ in range(3)]
    fixed_rate = max(r[0] for r in rounds)
    routed_rate = max(r[1] for r in rounds)
    report("data", "read by id, fixed connection (reads/s)", fixed_rate, "1/s")
    report("data", "read by id, through the router (reads/s)", routed_rate, "1/s")
    report("data", "routing overhead: routed / fixed", routed_rate / fixed_rate, "x", ">= 0.95")

    # A read-heavy mix: 90 % reads, 10 % writes, each request a fresh client context.
    replica_reads = reads = 0
    for i in range(2000):
        pinning.reset()
        u = users[i % len(users)]
        if i % 10 == 0:
            services.user_update(user_id=u["id"], changes={"bio": f"mix {i}"})
            continue
        alias = routing.read_alias(group_for_user_id(u["id"]))
        selectors._row_by_id(u["id"])
        reads += 1
        replica_reads += alias != routing.primary_alias(group_for_user_id(u["id"]))
    report("data", "share of reads served by replicas (90/10 mix)", replica_reads / reads, "", ">= 0.90")


# ---------------------------------------------------------------- read-your-writes
def bench_consistency(users):
    """Read-your-writes: what remote_apply costs a write, and what LSN pinning saves the primaries.

    Both in process (the same code as a request), on the stack's primary, asynchronous standby and
    synchronous standby. The mix is the same for every mode: a seeded sequence of clients, 10 % of
    whose operations update their own profile and 90 % read a profile, each client echoing the token
    its last write gave it, as the middleware's cookie does.
    """
    print("read-your-writes", flush=True)
    monitor.refresh_now()
    group = group_for_user_id(users[0]["id"])
    sync = settings.DATABASE_GROUPS[group].get("sync_replicas") or []
    if not sync or not monitor.usable(sync):
        print("  (no usable synchronous standby: section skipped)", flush=True)
        return

    def write_latencies(sync_apply, n=200):
        samples = []
        with override_settings(READ_YOUR_WRITES_SYNC_APPLY=sync_apply):
            for i in range(n):
                pinning.reset()
                u = users[i % len(users)]
                started = time.perf_counter()
                services.user_update(user_id=u["id"], changes={"bio": f"lat {sync_apply} {i}"})
                samples.append((time.perf_counter() - started) * 1000)
        samples.sort()
        return samples[len(samples) // 2], samples[int(len(samples) * 0.99) - 1]

    write_latencies(False, 50)
    write_latencies(True, 50)  # warm both paths
    # Alternate, so both modes see the same neighbours on this shared machine; keep the median round.
    rounds = sorted(
        ((write_latencies(False), write_latencies(True)) for _ in range(3)), key=lambda r: r[1][0] / r[0][0]
    )
    plain, synced = rounds[1]
    report(
        "consistency",
        "write (PATCH-equivalent update), async commit: p50 / p99",
        f"{plain[0]:.2f} / {plain[1]:.2f}",
        "ms",
    )
    report(
        "consistency", "write, synchronous_commit = remote_apply: p50 / p99", f"{synced[0]:.2f} / {synced[1]:.2f}", "ms"
    )
    report("consistency", "remote_apply write latency p50: sync / async", synced[0] / plain[0], "x")

    rng = random.Random(15)
    ops = [(rng.randrange(len(users)), rng.random() < 0.1, rng.randrange(len(users))) for _ in range(1500)]
    think = 0.004  # seconds between two operations: a client's next request is not instantaneous

    def replica_share(mode):
        tokens = {}  # client -> what it echoes: the LSN token, or the deadline of the time window
        reads = on_replica = 0
        with override_settings(READ_YOUR_WRITES_SYNC_APPLY=mode == "lsn+remote_apply"):
            for client, writes, target in ops:
                if mode == "window":
                    pinning.reset(pinned_until=tokens.get(client, 0.0))
                else:
                    pinning.reset(lsns=tokens.get(client))
                if writes:
                    services.user_update(user_id=users[client]["id"], changes={"bio": f"mix {mode}"})
                    routing.record_commit_lsns()
                    tokens[client] = pinning.pinned_until() if mode == "window" else pinning.lsns()
                else:
                    uid = users[target]["id"]
                    alias = routing.read_alias(group_for_user_id(uid))
                    User.objects.using(alias).filter(id=uid).values(*selectors.FIELDS).first()
                    reads += 1
                    on_replica += alias != routing.primary_alias(group_for_user_id(uid))
                time.sleep(think)
        return on_replica / reads

    window = replica_share("window")
    lsn = replica_share("lsn")
    lsn_sync = replica_share("lsn+remote_apply")
    print(f"  (mix: 10 % writes, 90 % reads, {len(users)} clients, {think * 1000:.0f} ms apart)", flush=True)
    report("consistency", f"replica share of reads, time window {settings.READ_YOUR_WRITES_WINDOW:.0f} s", window)
    report("consistency", "replica share of reads, LSN pinning (async commit)", lsn)
    report("consistency", "replica share of reads, LSN pinning + remote_apply", lsn_sync)
    report("consistency", "replica share: LSN pinning / time window", lsn / window if window else float("inf"), "x")
    report(
        "consistency",
        "replica share: LSN + remote_apply / time window",
        lsn_sync / window if window else float("inf"),
        "x",
    )
    pinning.reset()


# ---------------------------------------------------------------- http
@contextlib.contextmanager
def server(kind, port=None, threads=None, workers=None, cpus=None, **env_extra):
    """Serve the bench settings with `kind` on a free loopback port (several engineers' benches and
    stacks share this machine, so no fixed port); `threads` per process instead of BENCH_THREADS,
    `workers` processes instead of BENCH_WORKERS (granian only); pinned to the CPUs `cpus` ("0") if given."""
    port = port or free_port()
    threads = str(threads or THREADS)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.bench", **env_extra}
    if kind == "gunicorn":
        cmd = [
            str(VENV_BIN / "gunicorn"),
            "project.wsgi:application",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            WORKERS,
            "-k",
            "gthread",
            "--threads",
            threads,
            "--log-level",
            "error",
        ]
    else:
        cmd = granian_argv(port, workers=int(workers or WORKERS), threads=int(threads))
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    process = Process(kind, cmd, log_path=Path(os.devnull), env=env, stop_timeout=30)
    with running(process, serving=f"http://127.0.0.1:{port}/health/live", timeout=60):
        yield f"http://127.0.0.1:{port}"


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url, *, method="GET", headers=None, paths=None, connections=16):
    """Run wrk; return (requests/s, p50 ms, p99 ms, non-2xx count, server CPU µs per request). The last
    is the CPU time the processes serving `url` spent per request during the run (user + system, from
    /proc): unlike requests/s it hardly moves with what else runs on a shared machine."""
    lines = [f'wrk.method = "{method}"']
    for name, value in (headers or {}).items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    if paths:
        lines.append("local paths = {" + ",".join(f'"{p}"' for p in paths) + "}")
        lines.append("local i = 0")
        lines.append("request = function() i = i + 1; return wrk.format(nil, paths[(i % #paths) + 1]) end")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    subprocess.run(["wrk", "-t2", "-c4", "-d1s", "-s", script.name, url], capture_output=True, check=True)  # warm-up
    serving = server_workers(url)
    cpu_before = cpu_seconds(serving)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{int(SECONDS)}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_seconds(serving) - cpu_before
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * _UNITS[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    served = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, pct(50), pct(99), int(errors.group(1)) if errors else 0, cpu / max(served, 1) * 1e6


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes `pids` have used."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def server_workers(url: str) -> list[int]:
    """The pids of the processes serving `url`: the server's process group (every server here is
    started in its own session), the listening process found with `ss`."""
    port = urlsplit(url).port
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    listening = re.findall(r"pid=(\d+)", out)
    if not listening:
        return []
    group = os.getpgid(int(listening[0]))
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry)) == group:
                    pids.append(int(entry))
    return pids


def http_row(section, label, result, baseline=None, target=None):
    rps, p50, p99, errors, cpu = result
    report(section, f"{label}: requests/s", rps, "1/s")
    report(section, f"{label}: p50 / p99", f"{p50:.2f} / {p99:.2f}", "ms")
    report(section, f"{label}: server CPU per request", cpu, "us")
    if errors:
        report(section, f"{label}: non-2xx responses", errors)
    if baseline:
        report(section, f"{label}: ratio to baseline", rps / baseline[0], "x", target)
        report(section, f"{label}: server CPU per request / baseline's", cpu / baseline[4], "x")


def alternate(baseline, subject, rounds=3):
    """Run baseline then subject, `rounds` times, and return the pair whose subject/baseline ratio is
    the median. The machine is shared and noisy: a pair run back to back sees the same neighbours, and
    the median pair is neither the luckiest nor the unluckiest."""
    pairs = []
    for _ in range(rounds):
        pairs.append((baseline(), subject()))
    pairs.sort(key=lambda pair: pair[1][0] / pair[0][0])
    return pairs[len(pairs) // 2]


def bench_http(users, tokens):
    print("http", flush=True)
    from django.core.cache import cache

    cache.set("bench:bare", "x", None)
    uid = users[0]["id"]
    Client().get(f"/api/v1/users/{uid}/")  # warm the cache
    results = {}
    for kind in ("gunicorn", "granian"):
        with server(kind) as url:
            results[kind] = alternate(
                lambda url=url: wrk(f"{url}/bench/bare"), lambda url=url: wrk(f"{url}/api/v1/users/{uid}/")
            )
        http_row("http", f"{kind}: bare view (one django-redis GET)", results[kind][0])
        http_row("http", f"{kind}: cached GET /api/v1/users/{{id}}/", results[kind][1], results[kind][0], ">= 0.6")
    chosen = max(results, key=lambda k: results[k][1][0])
    report("http", "faster server (chosen)", chosen)
    hot = [f"/api/v1/users/{u['id']}/views/" for u in users[:5]]
    with (
        server(chosen) as url,
        server(chosen, RESILIENCE_RATELIMIT_ENABLED="false") as unlimited_url,
        server(chosen, WRITE_BEHIND_ENABLED="false") as direct_url,
        server(chosen, USERS_FAST_READ="false") as drf_url,
    ):
        bare, cached = alternate(lambda: wrk(f"{url}/bench/bare"), lambda: wrk(f"{url}/api/v1/users/{uid}/"))
        http_row("http", "bare view", bare)
        http_row("http", "cached GET /users/{id}/", cached, bare, ">= 0.6")
        through_drf, fast = alternate(
            lambda: wrk(f"{drf_url}/api/v1/users/{uid}/"), lambda: wrk(f"{url}/api/v1/users/{uid}/")
        )
        http_row("http", "cached GET /users/{id}/ through DRF (USERS_FAST_READ=false)", through_drf)
        http_row("http", "cached GET /users/{id}/, users/fastpath.py", fast, through_drf)
        http_row(
            "http",
            "uncached GET /users/{id}/ (Consistency: strong)",
            wrk(f"{url}/api/v1/users/{uid}/", headers={"Consistency": "strong"}),
            bare,
        )
        http_row(
            "http",
            "GET /users/me/ with a token",
            wrk(f"{url}/api/v1/users/me/", headers={"Authorization": f"Token {tokens[0]}"}),
            bare,
        )
        print("rate limiting", flush=True)
        unlimited, limited = alternate(
            lambda: wrk(f"{unlimited_url}/api/v1/users/{uid}/"), lambda: wrk(f"{url}/api/v1/users/{uid}/")
        )
        http_row("ratelimit", "cached GET, limiting off", unlimited)
        http_row("ratelimit", "cached GET, limiter on", limited, unlimited, ">= 0.9")
        print("write-behind", flush=True)
        direct, buffered = alternate(
            lambda: wrk(direct_url, method="POST", paths=hot), lambda: wrk(url, method="POST", paths=hot)
        )
        http_row("writebehind", "POST /views/ direct UPDATE per request (5 hot users)", direct)
        http_row("writebehind", "POST /views/ through the buffer (5 hot users)", buffered, direct, ">= 3")
    flush.flush()


# ---------------------------------------------------------------- concurrent-requests limit
def bench_concurrency(tokens):
    """GET /auth/tokens/ (an authenticated read under api.concurrent; GET /users/me/ is a cached read
    and takes no slot) with the limit on vs off, same run, the median of alternating pairs: what taking
    and giving back a slot costs."""
    print("concurrency limit", flush=True)
    headers = {"Authorization": f"Token {tokens[0]}"}
    with server("granian", BENCH_CONCURRENCY_OFF="true") as off_url, server("granian") as on_url:
        off, on = alternate(
            lambda: wrk(f"{off_url}/api/v1/auth/tokens/", headers=headers),
            lambda: wrk(f"{on_url}/api/v1/auth/tokens/", headers=headers),
        )
    http_row("concurrency", "GET /auth/tokens/, api.concurrent off", off)
    http_row("concurrency", "GET /auth/tokens/, api.concurrent on (slot taken, given back)", on, off, ">= 0.9")


# ---------------------------------------------------------------- the baselines
def bench_baselines(users, tokens):
    """The protected reads against a naive DRF (and plain Django) view doing one django-redis GET in a
    minimal project (bench/bare_settings.py: no middleware, no auth), same server command, processes
    and threads, alternating pairs, median of three, this run."""
    print("baselines (bare DRF / bare Django + django-redis)", flush=True)
    from django.core.cache import cache

    from bench.bare_urls import BARE_KEY

    uid = users[0]["id"]
    client = Client()
    body = json.loads(client.get(f"/api/v1/users/{uid}/").content)  # warms the cache too
    cache.set(BARE_KEY.format(uid), body, None)  # the same body, so both sides send as many bytes
    me_headers = {"Authorization": f"Token {tokens[0]}"}
    client.get("/api/v1/users/me/", headers=me_headers)
    with (
        server("granian") as url,
        server("granian", DJANGO_SETTINGS_MODULE="bench.bare_settings") as bare_url,
    ):
        cached_url, me_url = f"{url}/api/v1/users/{uid}/", f"{url}/api/v1/users/me/"
        drf, cached = alternate(lambda: wrk(f"{bare_url}/bare/drf/{uid}"), lambda: wrk(cached_url))
        plain, cached_vs_plain = alternate(lambda: wrk(f"{bare_url}/bare/django/{uid}"), lambda: wrk(cached_url))
        drf_me, me = alternate(lambda: wrk(f"{bare_url}/bare/drf/{uid}"), lambda: wrk(me_url, headers=me_headers))
    http_row("baselines", "bare DRF @api_view, one django-redis GET", drf)
    http_row("baselines", "cached GET /users/{id}/ / bare DRF", cached, drf, ">= 0.9")
    http_row("baselines", "bare Django view, one django-redis GET", plain)
    http_row("baselines", "cached GET /users/{id}/ / bare Django", cached_vs_plain, plain)
    http_row("baselines", "bare DRF (paired with /me)", drf_me)
    http_row("baselines", "GET /users/me/ with a token / bare DRF", me, drf_me, ">= 0.8")
    for label, (_rps, p50, p99, _errors, _cpu) in (("bare DRF", drf), ("cached GET", cached), ("/me", me)):
        report("baselines", f"{label}: p99 / p50 at 16 connections", p99 / p50, "x", "<= 5")
    for label, path, headers in (
        ("cached GET", f"/api/v1/users/{uid}/", {}),
        ("/me", "/api/v1/users/me/", me_headers),
    ):
        with roundtrips.counting() as counts:
            for _ in range(100):
                client.get(path, headers=headers)
        report("baselines", f"{label}: Redis round trips per request", counts.total() / 100)
        report("baselines", f"{label}:   of which state Redis", counts.by_port(settings.REDIS_STATE_URL) / 100)
    report("baselines", "bare views: Redis round trips per request", 1)
    # Server setting: granian's --backpressure (requests a worker takes on at once) at its thread count,
    # so a busy worker leaves new connections' requests to the idle ones, vs granian's default (backlog/workers).
    with (
        server("granian") as url,
        server("granian", GRANIAN_BACKPRESSURE=THREADS) as bounded_url,
    ):
        default, bounded = alternate(
            lambda: wrk(f"{url}/api/v1/users/{uid}/"), lambda: wrk(f"{bounded_url}/api/v1/users/{uid}/")
        )
    http_row("baselines", "cached GET, granian default backpressure", default)
    http_row("baselines", f"cached GET, --backpressure {THREADS}", bounded, default)
    for label, (_rps, p50, p99, _errors, _cpu) in (("default", default), (f"--backpressure {THREADS}", bounded)):
        report("baselines", f"cached GET, {label}: p99 / p50 at 16 connections", p99 / p50, "x", "<= 5")


# ---------------------------------------------------------------- the tracked local cache
def zipf_paths(user_ids, n=2000, s=1.1, seed=7):
    """`n` GET paths over `user_ids`, ranks drawn with probability proportional to 1 / rank**s (hot keys)."""
    weights = [1 / (rank + 1) ** s for rank in range(len(user_ids))]
    picks = random.Random(seed).choices(user_ids, weights=weights, k=n)
    return [f"/api/v1/users/{user_id}/" for user_id in picks]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_local_cache():
    """The tracked per-process cache (resilience/client_cache.py): memory per server process under a Zipf
    read mix over many users (entries and bytes are bounded by USERS_LOCAL_CACHE_*), against the same
    servers with it off; and the invalidation delay, from a write to the last of several tracking
    clients dropping the key (the bound is client_cache.INVALIDATION_BOUND)."""
    print("local cache (tracked)", flush=True)
    from resilience.client_cache import INVALIDATION_BOUND, LocalCache

    many = bulk_users(1000, "zipf")  # per shard group: 2,000 users
    paths = zipf_paths(many)
    client = Client()
    for path in set(paths):  # the cache Redis warm for both sides: the figures compare hits
        client.get(path)
    with server("granian") as on_url, server("granian", USERS_LOCAL_CACHE_ENTRIES="0") as off_url:
        hot = paths[0]  # the hottest user
        hot_off, hot_on = alternate(lambda: wrk(f"{off_url}{hot}"), lambda: wrk(f"{on_url}{hot}"))
        off, on = alternate(lambda: wrk(off_url, paths=paths), lambda: wrk(on_url, paths=paths))
        rss_on = [rss_kib(pid) for pid in server_workers(on_url)]
        rss_off = [rss_kib(pid) for pid in server_workers(off_url)]
    http_row("localcache", "cached GET of one user, local cache off", hot_off)
    http_row("localcache", "cached GET of one user, local cache on", hot_on, hot_off)
    http_row("localcache", "Zipf GET mix over 2,000 users, local cache off", off)
    http_row("localcache", "Zipf GET mix over 2,000 users, local cache on", on, off)
    report("localcache", "RSS per server process, local cache on (max)", max(rss_on, default=0) / 1024, "MiB")
    report("localcache", "RSS per server process, local cache off (max)", max(rss_off, default=0) / 1024, "MiB")
    report("localcache", "bound per process (USERS_LOCAL_CACHE_BYTES)", settings.USERS_LOCAL_CACHE_BYTES / 2**20, "MiB")

    client = get_redis_connection("default")
    trackers = [
        LocalCache(
            name=f"bench{i}",
            connection_kwargs=client.connection_pool.connection_kwargs,
            prefixes=("bench:inval:",),
            max_entries=10,
            max_bytes=10000,
        )
        for i in range(4)
    ]
    delays = []
    try:
        for tracker in trackers:
            while tracker.begin() is None:
                time.sleep(0.01)
        for i in range(300):
            key = f"bench:inval:{i % 5}"
            for tracker in trackers:
                tracker.fill(key, b"old", tracker.begin())
            written = time.perf_counter()
            client.set(key, b"new")
            while any(tracker.get(key) is not None for tracker in trackers):
                time.sleep(0.0002)
            delays.append((time.perf_counter() - written) * 1000)
    finally:
        for tracker in trackers:
            tracker.stop()
    delays.sort()
    report("localcache", "invalidation delay p50 (write -> last of 4 trackers dropped)", delays[len(delays) // 2], "ms")
    report(
        "localcache",
        "invalidation delay p99",
        delays[int(len(delays) * 0.99)],
        "ms",
        f"<= {INVALIDATION_BOUND * 1000:.0f}",
    )


# ---------------------------------------------------------------- dependency breakers on the hot read
def bench_breakers(users):
    """The cached read with the dependency breakers (cache Redis, databases) on vs off, same run, the
    median of alternating pairs; and the state-Redis round trips the breakers add per cached read."""
    print("dependency breakers", flush=True)
    uid = users[0]["id"]
    Client().get(f"/api/v1/users/{uid}/")  # warm the cache
    with (
        server("granian", RESILIENCE_DEPENDENCY_BREAKERS="false") as off_url,
        server("granian") as on_url,
    ):
        off, on = alternate(lambda: wrk(f"{off_url}/api/v1/users/{uid}/"), lambda: wrk(f"{on_url}/api/v1/users/{uid}/"))
    http_row("breakers", "cached GET, dependency breakers off", off)
    http_row("breakers", "cached GET, dependency breakers on", on, off, ">= 0.95")
    client = Client()
    client.get(f"/api/v1/users/{uid}/")
    with roundtrips.counting() as counts:
        for _ in range(200):
            client.get(f"/api/v1/users/{uid}/")
    state = counts.by_port(settings.REDIS_STATE_URL)
    # The limiter's call is 1 per request; anything above that is the breakers' (a sync per interval).
    report("breakers", "state-Redis round trips per cached read (limiter's 1 included)", state / 200)


@contextlib.contextmanager
def span_sink():
    """A local OTLP/HTTP trace endpoint that takes every export and answers 200 (what a Collector on
    the same host costs the app: the spans are built, batched, serialized and sent). Yields its URL
    and a function returning the number of exports received."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            received[0] += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    sink = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.daemon_threads = True
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sink.server_address[1]}/v1/traces", lambda: received[0]
    finally:
        sink.shutdown()
        sink.server_close()


def bench_tracing(users):
    """The cached read with OpenTelemetry tracing on (every span exported over OTLP/HTTP to a local
    sink) vs off, same run, the median of alternating pairs."""
    print("tracing", flush=True)
    uid = users[0]["id"]
    Client().get(f"/api/v1/users/{uid}/")  # warm the cache
    with (
        span_sink() as (endpoint, exports),
        server("granian") as off_url,
        server("granian", OTEL_TRACING_ENABLED="true", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint) as on_url,
    ):
        off, on = alternate(lambda: wrk(f"{off_url}/api/v1/users/{uid}/"), lambda: wrk(f"{on_url}/api/v1/users/{uid}/"))
        received = exports()
    http_row("tracing", "cached GET, tracing off", off)
    http_row("tracing", "cached GET, tracing on (OTLP/HTTP to a local sink)", on, off)
    report("tracing", "OTLP exports the sink received (tracing on was really on)", received)


# ---------------------------------------------------------------- round trips, breaker
def bench_roundtrips(users, tokens):
    print("redis round trips (in-process, same code as the server)", flush=True)
    uid = users[1]["id"]
    client = Client()
    client.get(f"/api/v1/users/{uid}/")
    with roundtrips.counting() as counts:
        for _ in range(100):
            client.get(f"/api/v1/users/{uid}/")
    report("http", "Redis round trips per cached GET (cache + state)", counts.total() / 100, "", "<= 2")
    report("http", "  of which cache Redis", counts.by_port(settings.REDIS_CACHE_URL) / 100)
    report("http", "  of which state Redis (limiter, pending views)", counts.by_port(settings.REDIS_STATE_URL) / 100)
    from resilience.ratelimit import check

    with roundtrips.counting() as counts:
        for i in range(100):
            check("api.read", f"ip:10.0.0.{i % 50}")
    report("ratelimit", "Redis round trips per limiter check", counts.total() / 100, "", "== 1")

    me = Client(HTTP_AUTHORIZATION=f"Token {tokens[0]}")
    me.get("/api/v1/users/me/")
    with roundtrips.counting() as counts:
        for _ in range(100):
            me.get("/api/v1/users/me/")
    report(
        "ratelimit",
        "Redis round trips per GET /users/me/ (token and row from the local cache, rate check)",
        counts.total() / 100,
    )
    report(
        "ratelimit",
        "  of which state Redis (api.read, the row riding along: 1)",
        counts.by_port(settings.REDIS_STATE_URL) / 100,
    )
    from resilience.ratelimit import get_policy

    with roundtrips.counting() as counts:
        for _ in range(1000):
            get_policy("api.read")
    # Runtime overrides come from a per-process snapshot refreshed at most every second: no call per lookup.
    report(
        "ratelimit", "Redis round trips per 1000 policy lookups (with runtime overrides)", counts.total(), "", "<= 1"
    )
    report(
        "ratelimit",
        "policy lookup (overrides snapshot checked)",
        1e6 / timed(lambda: get_policy("api.read"), 20000),
        "us",
    )

    from resilience.breaker import get_breaker

    breaker = get_breaker("bench:noop")
    breaker.reset("bench")

    def bare():
        return 1

    def wrapped():
        with breaker.call():
            return 1

    bare_rate, wrapped_rate = timed(bare, 20000), timed(wrapped, 2000)
    report("ratelimit", "breaker-wrapped call: calls/s", wrapped_rate, "1/s")
    report("ratelimit", "breaker overhead per call", (1 / wrapped_rate - 1 / bare_rate) * 1e6, "us")
    with roundtrips.counting() as counts:
        for _ in range(100):
            wrapped()
    report("ratelimit", "Redis round trips per breaker-wrapped call", counts.total() / 100)


# ---------------------------------------------------------------- flush throughput
def bulk_users(n, prefix="bulk"):
    """Insert n users per mapped shard with SQL (fast), ids on the shard's own logical shards."""
    from users.sharding.shardmap import shard_map

    table = shard_map.table()
    ids = []
    for group in sorted(set(table)):
        logicals = [ls for ls, g in enumerate(table) if g == group]
        with connections[group].cursor() as cursor:
            cursor.execute(
                """INSERT INTO users_user (id, logical_shard, username, username_key, email, password,
                       display_name, bio, created_at, updated_at, version, rev, view_count)
                   SELECT users_next_id(ls), ls, %s || g || %s, lower(%s || g || %s),
                          %s || g || %s || '@example.com', '!', '', '', now(), now(), 1, 1, 0
                     FROM (SELECT g, (%s::int[])[1 + g %% %s] AS ls FROM generate_series(1, %s) g) s
                   RETURNING id""",
                # username_key: identity_key() of these ASCII names is their lower case.
                [prefix, group, prefix, group, prefix, group, logicals, len(logicals), n],
            )
            ids += [r[0] for r in cursor.fetchall()]
    return ids


def bench_flush():
    print("flush throughput", flush=True)
    ids = bulk_users(10_000)
    state = get_redis_connection("state")
    ingest = buffer.script("ingest")
    for start in range(0, len(ids), 1000):
        pipe = state.pipeline(transaction=False)
        for uid in ids[start : start + 1000]:
            k = group_keys(group_for_user_id(uid))
            ingest(
                keys=[k.buffer, k.since, k.batches],
                args=["views", uid, views_field(uid), 3, 0, 0, COUNT_FIELD, 0],
                client=pipe,
            )
        pipe.execute()
    started = time.perf_counter()
    result = flush.flush()
    flush_rate = result["rows"] / (time.perf_counter() - started)
    report("writebehind", f"flush: {result['rows']} rows, rows/s (claim, SQL, cache, ack)", flush_rate, "1/s")

    by_group = {}
    for uid in ids:
        by_group.setdefault(group_for_user_id(uid), []).append(uid)
    started = time.perf_counter()
    for group, group_ids in by_group.items():
        with connections[group].cursor() as cursor, connections[group].connection.transaction():
            cursor.execute("CREATE TEMP TABLE bench_delta (id bigint, n bigint) ON COMMIT DROP")
            with cursor.connection.cursor().copy("COPY bench_delta (id, n) FROM STDIN") as copy:
                for uid in group_ids:
                    copy.write_row((uid, 3))
            cursor.execute(
                "UPDATE users_user u SET view_count = u.view_count + d.n FROM bench_delta d WHERE u.id = d.id"
            )
    raw_rate = len(ids) / (time.perf_counter() - started)
    report("writebehind", "raw COPY into temp + one UPDATE ... FROM, rows/s", raw_rate, "1/s")
    report("writebehind", "flush rows/s / raw set-based SQL", flush_rate / raw_rate, "x", ">= 0.5")


def bench_idempotency(users):
    """State Redis memory held by the Idempotency-Key records one client can make: 100,000 distinct keys
    (BENCH_IDEMPOTENCY_KEYS) from one address, with the default cap and with the cap raised above them.

    In process through the real API (Django's test client, the views endpoint), so no server or wrk is
    involved: what is measured is memory, not speed.
    """
    count = int(os.environ.get("BENCH_IDEMPOTENCY_KEYS", "100000"))
    cap = settings.RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER
    print(f"idempotency keys: {count:,} new keys from one client", flush=True)
    state = get_redis_connection("state")
    url = f"/api/v1/users/{users[0]['id']}/views/"

    def send(address, prefix):
        client, codes = Client(REMOTE_ADDR=address), {}
        state.execute_command("MEMORY", "PURGE")  # allocator slack left by earlier sections is not ours
        before = state.info("memory")["used_memory"]
        for i in range(count):
            code = client.post(url, headers={"Idempotency-Key": f"{prefix}-{i:08d}"}).status_code
            codes[code] = codes.get(code, 0) + 1
        return state.info("memory")["used_memory"] - before, codes

    delta, codes = send("198.51.100.1", "capped")
    stored = codes.get(202, 0)
    report("idempotency", f"cap (RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER) {cap:,}: keys accepted", stored)
    report("idempotency", "refused 429 idempotency_keys_exhausted", codes.get(429, 0))
    report("idempotency", "state Redis used_memory delta with the cap", delta / 1024, "KiB")

    with override_settings(RESILIENCE_IDEMPOTENCY_MAX_KEYS_PER_CALLER=count):
        uncapped, uncapped_codes = send("198.51.100.2", "uncapped")
    per_record = uncapped / max(1, uncapped_codes.get(202, 0))
    report("idempotency", f"cap raised to {count:,}: keys accepted", uncapped_codes.get(202, 0))
    report("idempotency", "state Redis used_memory delta without an effective cap", uncapped / 1024**2, "MiB")
    report("idempotency", "bytes per record (views endpoint; bigger bodies store more)", per_record, "B")
    callers = 10_000
    report(
        "idempotency",
        f"sizing: bytes per record x cap x callers ({callers:,} active callers in 24 h)",
        per_record * cap * callers / 1024**3,
        "GiB",
    )


def bench_wait(users):
    """Buffered views acknowledged at once vs after WAIT 1 and WAIT 2 (one, then both replicas confirmed
    them; 2 is what two replicas need to lose nothing in a SENTINEL FAILOVER, docs/operations.md), same
    run, the same two replicas attached to the state Redis throughout (only the WAIT differs)."""
    print("write-behind WAIT", flush=True)
    hot = [f"/api/v1/users/{u['id']}/views/" for u in users[:5]]
    with (
        state_replica(Path(tempfile.mkdtemp(prefix="bulwark-bench-replica-"))),
        state_replica(Path(tempfile.mkdtemp(prefix="bulwark-bench-replica-"))),
        server("granian") as url,
    ):
        for replicas in ("1", "2"):
            with server("granian", WRITE_BEHIND_WAIT_REPLICAS=replicas) as wait_url:
                plain, waited = alternate(
                    lambda: wrk(url, method="POST", paths=hot), lambda u=wait_url: wrk(u, method="POST", paths=hot)
                )
            http_row("writebehind", "POST /views/ buffered, acknowledged at once (2 replicas attached)", plain)
            http_row("writebehind", f"POST /views/ buffered, WRITE_BEHIND_WAIT_REPLICAS={replicas}", waited, plain)
    flush.flush()


def bench_reshard():
    """Move about a third of 10,000 users onto the spare shard while a client keeps updating them."""
    print("resharding", flush=True)
    from users.sharding import resharding
    from users.sharding.access import ShardUnavailable

    ids = bulk_users(5_000, prefix="move")
    stop, refusals, current = False, [], {"since": None}

    def writer():
        rng = random.Random(3)
        while not stop:
            uid = rng.choice(ids)
            try:
                services.user_update(user_id=uid, changes={"bio": "w"})
                if current["since"] is not None:
                    refusals.append(time.monotonic() - current["since"])
                    current["since"] = None
            except ShardUnavailable:
                current["since"] = current["since"] or time.monotonic()
                time.sleep(0.02)
        connections.close_all()

    thread = threading.Thread(target=writer)
    thread.start()
    started, moved = time.perf_counter(), 0
    for logical, _source in resharding.plan(target="shard_2"):
        move = resharding.move_run(resharding.move_create(logical_shards=logical, target="shard_2"))
        moved += move.detail.get("users", 0)
    elapsed = time.perf_counter() - started
    stop = True
    thread.join()
    report("reshard", "users moved onto the new shard", moved)
    report("reshard", "users moved per second (whole move incl. map-TTL waits)", moved / elapsed, "1/s")
    report("reshard", "longest write refusal a client saw", max(refusals, default=0.0) * 1000, "ms")


# ---------------------------------------------------------------- overload
def bench_overload(users, tokens):
    """The adaptive limit's cost on the cached read (closed loop, on vs off), then the open-loop overload
    rows (open_loop_overload): no shedding, the in-process adaptive limit, nginx's per-class limits."""
    print("overload (adaptive concurrency limit; nginx's per-class in-flight limits)", flush=True)
    uid = users[0]["id"]
    Client().get(f"/api/v1/users/{uid}/")  # warm the cache
    read_path = f"/api/v1/users/{uid}/"
    with (
        server("granian", RESILIENCE_ADAPTIVE_ENABLED="false") as off_url,
        server("granian", RESILIENCE_ADAPTIVE_SHADOW="false") as on_url,
    ):
        off, on = alternate(lambda: wrk(f"{off_url}{read_path}"), lambda: wrk(f"{on_url}{read_path}"))
    http_row("overload", "cached GET, adaptive limit off", off)
    http_row("overload", "cached GET, adaptive limit on", on, off, ">= 0.97")
    # The same in process, CPU time per request (no server, no wrk): less noisy than a served run on a
    # shared machine, and exactly the middleware's work (classify, two locks) against none of it.
    import io

    from django.core.handlers.wsgi import WSGIHandler

    handler = WSGIHandler()
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": read_path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_ACCEPT": "application/json",
        "wsgi.url_scheme": "http",
    }

    def cpu_per_request(enabled, n=2000):
        with override_settings(RESILIENCE_ADAPTIVE_ENABLED=enabled, RESILIENCE_ADAPTIVE_SHADOW=False):
            started = time.process_time()
            for _ in range(n):
                b"".join(handler(dict(environ, **{"wsgi.input": io.BytesIO()}), lambda status, headers: None))
            return (time.process_time() - started) / n

    cpu_per_request(True, 200)
    pairs = sorted(((cpu_per_request(False), cpu_per_request(True)) for _ in range(5)), key=lambda p: p[0] / p[1])
    cpu_off, cpu_on = pairs[2]
    report("overload", "cached GET in process, CPU per request: limit off", cpu_off * 1e6, "us")
    report("overload", "cached GET in process, CPU per request: limit on", cpu_on * 1e6, "us")
    report("overload", "cached GET in process: throughput on / off (CPU)", cpu_off / cpu_on, "x", ">= 0.97")

    open_loop_overload(users, tokens)


def pin_stack(cpus: set[int], restore: contextlib.ExitStack) -> None:
    """Run the stack's PostgreSQL and Redis servers (every process and thread, backends forked later
    included) on `cpus` until `restore` closes, then put them back where they were allowed to run. The
    overload rows give the app a core of its own: in a deployment the databases are other hosts, and
    sharing the app's core makes a shedding path's goodput and tail the scheduler's, not its own."""
    ports = {int(db["PORT"]) for db in settings.DATABASES.values() if db.get("PORT")}
    ports |= {urlsplit(url).port for url in (settings.REDIS_CACHE_URL, settings.REDIS_STATE_URL)}
    servers = set()
    for port in ports:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
        servers |= {int(pid) for pid in re.findall(r"pid=(\d+)", out)}

    def family() -> set[int]:  # the servers and their children (PostgreSQL's backends)
        pids = set(servers)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    if int(stat[1]) in servers:  # the parent pid
                        pids.add(int(entry))
        return pids

    def threads() -> list[int]:
        tids = []
        for pid in family():
            with contextlib.suppress(OSError):
                tids += [int(task) for task in os.listdir(f"/proc/{pid}/task")]
        return tids

    before = {}
    for tid in threads():
        with contextlib.suppress(OSError):
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)

    def put_back():
        everywhere = set(range(os.cpu_count() or 1))  # a backend or thread started meanwhile had no "before"
        for tid in threads():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before.get(tid, everywhere))

    restore.callback(put_back)


# Where the open-loop rows send their load: (a) granian alone, no shedding; (b) granian with the
# in-process adaptive limit enforced; (c) nginx with the per-class in-flight limits in front of (a)'s server.
OVERLOAD_PATHS = ("a granian", "b in-process", "c nginx")
OVERLOAD_LOADS = (0.5, 2.0, 3.0)


def open_loop_overload(users, tokens):
    """The same open-loop mix at 0.5x, 2x and 3x capacity along three paths (OVERLOAD_PATHS).

    Capacity is measured for each path the same way and through that path: the generator's closed loop
    (bench/openloop.py, the same mix and client code) with BENCH_OVERLOAD_CAPACITY_CONNECTIONS (4)
    connections, the best of three; a row's loads are multiples of its own path's capacity and its
    goodput is divided by it. "Unloaded" is the path's 0.5x row. The app runs BENCH_OVERLOAD_WORKERS
    process (default 1) pinned to CPU 0, so that its capacity is at most one core's whatever the load
    side does; BENCH_OVERLOAD_CPUS="APP:LOAD", default "0:1": this process, its forked generators
    (BENCH_OVERLOAD_GENERATORS, default 2) and nginx on CPU 1 ("0:" leaves them on any CPU, ":" pins
    nothing); with a LOAD CPU the stack's PostgreSQL and Redis servers are moved there too for the
    rows (pin_stack; BENCH_OVERLOAD_PIN_STACK=0 leaves them), so that the app's core is the app's.
    "0:1" by measurement: at 2-3x through nginx the load side takes about half a core (the
    generators 0.2-0.3 of a core, nginx 0.2), and left on any CPU the scheduler puts part of it on the
    app's. Switching the pinning on the fly, three rounds taking turns on a busy machine (load average
    4), through nginx at 2x/3x: goodput 0.97/0.98, 0.79/0.74, 0.67/0.65 of capacity with "0:1" against
    0.89/0.75, 0.66/0.53, 0.65/0.69 with "0:", p99 accepted 1.4-1.7x the unloaded p99 at 2x against
    2.1-3.5x, the app using 0.75-0.96 of its core against 0.60-0.95. (Earlier, with 2 app processes
    on both cores, the load side took its share from the app: four development runs through nginx gave
    0.53-1.04 of capacity at 2-3x, mostly below 0.8.) Neighbours on this shared machine still use
    both cores. Each row prints the send rate achieved
    (sent/asked), the generator's p99 lateness and the cores the app, nginx and the generators used
    while it lasted, so that a generator falling behind, or a starved app, shows; without shedding
    the send rate also falls when every connection of the generator's pool waits for an answer. (a)
    and (c) run BENCH_THREADS threads a process; (b) BENCH_OVERLOAD_THREADS (16): with 2 threads a process never
    has more than 2 requests to limit, the queue forms in granian, out of any in-process limiter's
    sight. Refusals are per priority class: the cached read and views are sheddable, the bare view
    (unregistered) default, GET /me with a token critical.
    """
    from tests.processes import NGINX_LIMITS, nginx_front, running

    uid = users[0]["id"]
    read_path = f"/api/v1/users/{uid}/"
    workers = int(os.environ.get("BENCH_OVERLOAD_WORKERS", "1"))
    app_cpus, _, load_cpus = os.environ.get("BENCH_OVERLOAD_CPUS", "0:1").partition(":")
    if os.cpu_count() < 2:
        app_cpus = load_cpus = ""
    threads = int(os.environ.get("BENCH_OVERLOAD_THREADS", "16"))
    generators = int(os.environ.get("BENCH_OVERLOAD_GENERATORS", "2"))
    capacity_connections = int(os.environ.get("BENCH_OVERLOAD_CAPACITY_CONNECTIONS", "4"))
    limits = dict(NGINX_LIMITS)
    for name in limits:  # e.g. BENCH_NGINX_LIMIT_SHEDDABLE=8
        limits[name] = int(os.environ.get(f"BENCH_NGINX_{name}", limits[name]))
    token = ("Authorization", f"Token {tokens[0]}")
    mix = [
        (0.65, openloop.Request("read", "GET", read_path)),
        (0.15, openloop.Request("view", "POST", f"/api/v1/users/{users[1]['id']}/views/")),
        (0.10, openloop.Request("bare", "GET", "/bench/bare")),
        (0.10, openloop.Request("me", "GET", "/api/v1/users/me/", (token,))),
    ]
    classes = {"read": "sheddable", "view": "sheddable", "bare": "default", "me": "critical"}
    nginx_port = free_port()
    prefix = Path(tempfile.mkdtemp(prefix="bulwark-bench-nginx-"))
    prefix.chmod(0o755)  # started by root, nginx's workers run as nobody
    rows, capacities, sizing = {}, {}, {}
    affinity = os.sched_getaffinity(0)
    with (
        server("granian", workers=workers, cpus=app_cpus, RESILIENCE_ADAPTIVE_ENABLED="false") as plain_url,
        server(
            "granian", workers=workers, threads=threads, cpus=app_cpus, RESILIENCE_ADAPTIVE_SHADOW="false"
        ) as adaptive_url,
    ):
        plain_port = int(plain_url.rsplit(":", 1)[1])
        front = nginx_front(prefix, listen_port=nginx_port, app_ports=(plain_port, plain_port), limits=limits)
        if load_cpus:
            front.argv = ["taskset", "-c", load_cpus, *front.argv]
        with (
            running(front, serving=f"http://127.0.0.1:{nginx_port}/health/live", timeout=30),
            contextlib.ExitStack() as restore,
        ):
            if load_cpus:  # this process and the generators it forks
                os.sched_setaffinity(0, {int(cpu) for cpu in load_cpus.split(",")})
                restore.callback(os.sched_setaffinity, 0, affinity)
            if load_cpus and os.environ.get("BENCH_OVERLOAD_PIN_STACK", "1") == "1":
                pin_stack({int(cpu) for cpu in load_cpus.split(",")}, restore)
            adaptive_port = int(adaptive_url.rsplit(":", 1)[1])
            ports = dict(zip(OVERLOAD_PATHS, (plain_port, adaptive_port, nginx_port), strict=True))
            # The processes whose CPU each row reports: the app server behind the path, and nginx.
            app_pids = {port: server_workers(f"http://127.0.0.1:{port}") for port in (plain_port, adaptive_port)}
            nginx_pids = server_workers(f"http://127.0.0.1:{nginx_port}")
            Client().get(read_path)  # warm the cache
            # The best of three rounds, the paths taking turns in each: a neighbour's burst on this
            # shared machine must not halve one path's loads, nor a quiet spell favour one path.
            for _ in range(3):
                for path, port in ports.items():
                    measured = openloop.closed_loop("127.0.0.1", port, mix, connections=capacity_connections)
                    capacities[path] = max(capacities.get(path, 0.0), measured)
            # How many requests in flight the app needs to be kept busy (sizing nginx's limits): the
            # closed loop straight to granian at a few concurrencies.
            for connections in (1, 2, 3, 4, 6, 8):
                sizing[connections] = openloop.closed_loop("127.0.0.1", plain_port, mix, connections=connections)
            # Each load along the three paths back to back, so that they see the same neighbours.
            for load in OVERLOAD_LOADS:
                for path, port in ports.items():
                    stats = {}
                    app = app_pids[adaptive_port if port == adaptive_port else plain_port]
                    cpu_before = cpu_seconds(app), cpu_seconds(nginx_pids)
                    results = openloop.run(
                        "127.0.0.1",
                        port,
                        mix,
                        rate=load * capacities[path],
                        seconds=SECONDS,
                        processes=generators,
                        stats=stats,
                    )
                    cpu_app, cpu_nginx = cpu_seconds(app) - cpu_before[0], cpu_seconds(nginx_pids) - cpu_before[1]
                    # Cores used while the run lasted: the schedule, and past it until the last answer.
                    lasted = max([SECONDS, *(r.done_at for r in results)])
                    rows[path, load] = openloop.summarise(results, SECONDS)
                    rows[path, load]["app_cores"] = cpu_app / lasted
                    rows[path, load]["nginx_cores"] = cpu_nginx / lasted
                    rows[path, load]["generator_cpu_us"] = stats["cpu_s"] / max(stats["requests"], 1) * 1e6
                    rows[path, load]["generator_cores"] = stats["cpu_s"] / lasted
    print(
        f"  app: granian {workers} x {THREADS} (b: x {threads}) on CPU {app_cpus or 'any'}; load, nginx"
        f"{', PostgreSQL and Redis' if load_cpus and os.environ.get('BENCH_OVERLOAD_PIN_STACK', '1') == '1' else ''}"
        f" on CPU {load_cpus or 'any'}; {generators} generator processes",
        flush=True,
    )
    print(
        "  the mix straight to granian, closed loop, 2xx/s by connections: "
        + ", ".join(f"{c}: {rate:.0f}" for c, rate in sizing.items()),
        flush=True,
    )
    print(
        f"  nginx in-flight limits: all {limits['LIMIT_ALL']}, default+sheddable {limits['LIMIT_NONCRITICAL']}, "
        f"sheddable {limits['LIMIT_SHEDDABLE']}",
        flush=True,
    )
    for path, capacity in capacities.items():
        report("overload", f"capacity of {path}: the mix, closed loop, {capacity_connections} conns", capacity, "1/s")
    print(
        f"  {'path':<13}{'load':>5}{'sent/asked':>11}{'lag p99':>8}{'CPU: app':>9}{'nginx':>6}{'gen':>5}"
        f"{'goodput/cap':>12}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'p99/unl':>8}"
        "  refused (503) critical/default/sheddable; sheddable admitted; no answer",
        flush=True,
    )
    for path, load in sorted(rows, key=lambda key: (OVERLOAD_PATHS.index(key[0]), key[1])):
        row = rows[path, load]
        capacity = capacities[path]
        unloaded = rows[path, 0.5]["p99_ms"]
        refused = dict.fromkeys(("critical", "default", "sheddable"), 0)
        admitted_sheddable = no_answer = 0
        for kind, statuses in row["by_kind"].items():
            refused[classes[kind]] += statuses.get(503, 0)
            no_answer += statuses.get(0, 0)
            if classes[kind] == "sheddable":
                admitted_sheddable += sum(n for status, n in statuses.items() if 200 <= status < 300)
        row.update(
            refused=refused,
            admitted_sheddable=admitted_sheddable,
            no_answer=no_answer,
            capacity=capacity,
            goodput_ratio=row["goodput"] / capacity,
            p99_ratio=row["p99_ms"] / unloaded,
            send_ratio=row["send_rate"] / (load * capacity),
        )
        print(
            f"  {path:<13}{load:>4.1f}x{row['send_ratio']:>11.2f}{row['send_lag_p99_ms']:>8.1f}"
            f"{row['app_cores']:>9.2f}{row['nginx_cores']:>6.2f}{row['generator_cores']:>5.2f}"
            f"{row['goodput_ratio']:>12.2f}{row['p50_ms']:>8.1f}"
            f"{row['p99_ms']:>8.1f}{row['p99_ratio']:>8.2f}  {refused['critical']}/{refused['default']}/"
            f"{refused['sheddable']}; {admitted_sheddable}; {no_answer}",
            flush=True,
        )
        RESULTS.setdefault("overload", {})[f"{path} {load}x"] = row
    print(
        "  p99 ms of accepted requests by kind (read, view sheddable; bare default; me critical): "
        + "; ".join(
            f"{path.split()[0]} {load:.1f}x "
            + ", ".join(f"{kind} {rows[path, load]['p99_ms_by_kind'].get(kind, float('nan')):.1f}" for kind in classes)
            for path, load in sorted(rows, key=lambda key: (OVERLOAD_PATHS.index(key[0]), key[1]))
            if load > 1
        ),
        flush=True,
    )
    for path in OVERLOAD_PATHS[1:]:
        for load in (2.0, 3.0):
            row = rows[path, load]
            report("overload", f"{path}, {load:.0f}x: goodput / capacity", row["goodput_ratio"], "x", ">= 0.9")
            report("overload", f"{path}, {load:.0f}x: p99 accepted / unloaded p99", row["p99_ratio"], "x", "<= 2")
        row = rows[path, 3.0]
        report(
            "overload",
            f"{path}, 3x: critical refused (sheddable admitted)",
            f"{row['refused']['critical']} ({row['admitted_sheddable']})",
            "",
            "0 (> 0)",
        )
    for load in (2.0, 3.0):
        ratio = rows["a granian", load]["goodput_ratio"]
        report("overload", f"a granian (no shedding), {load:.0f}x: goodput / capacity", ratio, "x")
    # Independent of how capacity was measured: each shedding path's goodput against no shedding's at the
    # same load, in the same run (the loads differ by the paths' capacities, a few percent).
    for path in OVERLOAD_PATHS[1:]:
        for load in (2.0, 3.0):
            ratio = rows[path, load]["goodput"] / rows["a granian", load]["goodput"]
            report("overload", f"{path}, {load:.0f}x: goodput / no shedding's goodput", ratio, "x")


def main():
    print(
        f"Bulwark benchmark: {SECONDS:.0f} s per load run; ratios are against a baseline of the same run\n", flush=True
    )
    reset_data()
    users = make_users(20, "bench")
    tokens = [services.token_create(username=u["username"], password="bench-pass-2026")[0] for u in users[:2]]
    only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
    sections = (
        ("data", lambda: bench_data_layer(users)),
        ("consistency", lambda: bench_consistency(users)),
        ("roundtrips", lambda: bench_roundtrips(users, tokens)),
        ("baselines", lambda: bench_baselines(users, tokens)),
        ("localcache", bench_local_cache),
        ("http", lambda: bench_http(users, tokens)),
        ("breakers", lambda: bench_breakers(users)),
        ("concurrency", lambda: bench_concurrency(tokens)),
        ("tracing", lambda: bench_tracing(users)),
        ("flush", bench_flush),
        ("idempotency", lambda: bench_idempotency(users)),
        ("wait", lambda: bench_wait(users)),
        ("reshard", bench_reshard),
        ("overload", lambda: bench_overload(users, tokens)),
    )
    for name, section in sections:
        if not only or name in only:
            section()
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "bench.json").write_text(json.dumps(RESULTS, indent=2, default=str))
    print(f"\nwritten to {out / 'bench.json'}")


if __name__ == "__main__":
    main()
