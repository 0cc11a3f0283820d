"""What the open-loop generator (bench/openloop.py) costs: its CPU per request and the highest rate one
generator process keeps to its schedule (p99 send lag under 5 ms), against nginx answering a fixed
2-byte body (so the target is never the limit). nginx runs one worker pinned to CPU 0, the generator
(one process, in this one) on CPU 1; on a machine with one CPU nothing is pinned.

    .venv/bin/python -m bench.openloop_cost [OTHER_OPENLOOP.py ...]

Each further argument is another version of openloop.py (a file, e.g. `git show REV:bench/openloop.py`)
run at the same rates, taking turns with this one at each rate, so that their numbers come from one
run. CPU is the generator process's user + system time (also printed apart) over the whole `run` call (schedule, sends,
parsing, results) divided by the requests sent. BENCH_OPENLOOP_RATES (comma-separated) and
BENCH_OPENLOOP_SECONDS (3) change the ladder; a version stops climbing after two rates in a row over
the lag limit.
"""

import contextlib
import importlib.util
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import openloop

LAG_LIMIT_MS = 5.0
CONF = """worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def static_nginx(cpu: str | None):
    prefix = Path(tempfile.mkdtemp(prefix="bulwark-openloop-cost-"))
    prefix.chmod(0o755)
    (prefix / "tmp").mkdir()
    port = free_port()
    (prefix / "nginx.conf").write_text(CONF.format(prefix=prefix, port=port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    argv = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    argv += ["-g", "daemon off;"]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    process = subprocess.Popen(argv)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        yield port
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(timeout=10)
        shutil.rmtree(prefix, ignore_errors=True)


def load(path: str):
    spec = importlib.util.spec_from_file_location(f"openloop_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    versions = {"this": openloop, **{path: load(path) for path in sys.argv[1:]}}
    rates = [
        int(r) for r in os.environ.get("BENCH_OPENLOOP_RATES", "1000,2000,3000,4000,6000,8000,10000,12000").split(",")
    ]
    seconds = float(os.environ.get("BENCH_OPENLOOP_SECONDS", "3"))
    two_cpus = (os.cpu_count() or 1) >= 2
    if two_cpus:
        os.sched_setaffinity(0, {1})
    with static_nginx("0" if two_cpus else None) as port:
        mix = [(1.0, openloop.Request("static", "GET", "/"))]
        for module in versions.values():  # warm up: imports, the first connections
            module.run("127.0.0.1", port, mix, rate=500, seconds=0.5)
        print(
            f"{'generator':<28}{'rate/s':>8}{'sent/asked':>11}{'CPU us/req':>11}{'user':>6}{'sys':>6}"
            f"{'lag p99 ms':>11}{'p99 ms':>8}"
        )
        best, misses = dict.fromkeys(versions, 0), dict.fromkeys(versions, 0)
        for rate in rates:
            for name, module in versions.items():
                if misses[name] >= 2:
                    continue
                before = resource.getrusage(resource.RUSAGE_SELF)
                results = module.run("127.0.0.1", port, mix, rate=rate, seconds=seconds)
                after = resource.getrusage(resource.RUSAGE_SELF)
                user = (after.ru_utime - before.ru_utime) / len(results) * 1e6
                system = (after.ru_stime - before.ru_stime) / len(results) * 1e6
                row = openloop.summarise(results, seconds)
                ok = row["send_lag_p99_ms"] < LAG_LIMIT_MS and all(r.status == 200 for r in results)
                if ok:
                    best[name], misses[name] = max(best[name], rate), 0
                else:
                    misses[name] += 1
                print(
                    f"{name[-28:]:<28}{rate:>8}{row['send_rate'] / rate:>11.2f}{user + system:>11.1f}{user:>6.1f}"
                    f"{system:>6.1f}{row['send_lag_p99_ms']:>11.2f}{row['p99_ms']:>8.2f}"
                    f"{'' if ok else '  over the limit'}",
                    flush=True,
                )
        for name, rate in best.items():
            print(f"{name}: highest rate with p99 send lag < {LAG_LIMIT_MS:.0f} ms: {rate}/s")


if __name__ == "__main__":
    main()
