"""`make lb-demo`: nginx over two app servers; one is stopped under a steady GET load and no GET fails.

Starts two granian instances of the app (project.settings.bench: the test databases, limits high enough
never to deny) and nginx in front of them (deploy/nginx.conf), all on loopback, then runs a GET load
through nginx in four phases:

  both-up        both instances serve
  app1-SIGTERM   app1 is stopped gracefully, then started again (the load goes on meanwhile)
  app1-back      until nginx sends app1 requests again (passive checks: after fail_timeout)
  app2-SIGKILL   app2's whole process group is killed mid-request, a crash

and prints, per phase, the GETs sent, the ones that failed (non-2xx or no answer), the ones nginx
retried on the other instance, and which instance answered (from nginx's access log). A GET counts in
the phase it was sent in: one in flight when app2 is killed counts in app1-back. Exits 1 if any GET
failed. Every process it starts is stopped on exit, Ctrl-C included.

Environment: LB_DEMO_PORT (nginx, 18100), LB_DEMO_APP1_PORT / LB_DEMO_APP2_PORT (18101, 18102),
LB_DEMO_PHASE_SECONDS (3), LB_DEMO_CLIENTS (8 concurrent connections), LB_DEMO_WORKERS /
LB_DEMO_THREADS (granian processes and threads per instance, 1 and 4), LB_DEMO_DIR (nginx prefix
with its logs, default <tmp>/bulwark-lb-demo; emptied at start, kept afterwards for reading).
"""

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python deploy/lb_demo.py`: the project's modules are importable

from project.server import granian_argv  # noqa: E402
from tests.processes import Processes, nginx_front  # noqa: E402

HOST = "127.0.0.1"
LB_PORT = int(os.environ.get("LB_DEMO_PORT", "18100"))
APP_PORTS = {
    "app1": int(os.environ.get("LB_DEMO_APP1_PORT", "18101")),
    "app2": int(os.environ.get("LB_DEMO_APP2_PORT", "18102")),
}
PHASE_SECONDS = float(os.environ.get("LB_DEMO_PHASE_SECONDS", "3"))
CLIENTS = int(os.environ.get("LB_DEMO_CLIENTS", "8"))
WORKERS, THREADS = os.environ.get("LB_DEMO_WORKERS", "1"), os.environ.get("LB_DEMO_THREADS", "4")
PREFIX = Path(os.environ.get("LB_DEMO_DIR", Path(tempfile.gettempdir()) / "bulwark-lb-demo"))
APP_ENV = dict(
    os.environ,
    DJANGO_SETTINGS_MODULE="project.settings.bench",
    # The app sees nginx's address; believe its X-Forwarded-For so limits count the real client.
    RESILIENCE_TRUSTED_PROXIES=HOST,
)

# Every process the demo starts, each in its own process group (a group signal reaches every worker it
# forks, as systemd stopping a unit would), stopped on exit. granian stops in well under a second, except
# when the SIGTERM lands while it is still starting: then it never exits (measured), hence the 5 s before
# SIGKILL.
PROCESSES = Processes(PREFIX, suffix=".log")
STOP_TIMEOUT = 5
STOP_LOAD = threading.Event()


def start_app(name: str) -> None:
    port = APP_PORTS[name]
    argv = granian_argv(port, host=HOST, workers=int(WORKERS), threads=int(THREADS), log_level="warning")
    app = PROCESSES.start(name, argv, env=APP_ENV, stop_timeout=STOP_TIMEOUT)
    app.wait_serving(f"http://{HOST}:{port}/health/live")


def start_nginx() -> None:
    """deploy/nginx.conf filled in under PREFIX (tests/processes.py's nginx_front), run in the foreground."""
    # Its output stays on the terminal (its logs are under PREFIX). The overload limits are raised out
    # of the way: this demo is about failover, and its GETs must not be shed.
    limits = {"LIMIT_ALL": 1024, "LIMIT_NONCRITICAL": 1024, "LIMIT_SHEDDABLE": 1024}
    process = nginx_front(PREFIX, listen_port=LB_PORT, app_ports=(APP_PORTS["app1"], APP_PORTS["app2"]), limits=limits)
    PROCESSES.running["nginx"] = process.start()
    process.wait_serving(f"http://{HOST}:{LB_PORT}/health/live")


def create_user() -> str:
    """Register a user through nginx (a POST, with an Idempotency-Key); return its id."""
    tag = secrets.token_hex(4)
    body = json.dumps(
        {
            "username": f"lbdemo-{tag}",
            "email": f"lbdemo-{tag}@example.com",
            "password": f"lb-demo-{secrets.token_hex(8)}",
        }
    ).encode()
    request = urllib.request.Request(
        f"http://{HOST}:{LB_PORT}/api/v1/users/",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": tag},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.load(response)["id"]


class Load:
    """CLIENTS threads sending GETs through nginx on kept-alive connections, counted per phase.

    Each request carries its phase in the query string (the app ignores it), so nginx's access log can
    be split by phase exactly as the client's counts are.
    """

    def __init__(self, paths: list[str]):
        self.paths = paths
        self.phase = ""
        self.lock = threading.Lock()
        self.sent: Counter = Counter()
        self.failed: dict[str, Counter] = {}  # phase -> {status or error name: count}
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def start(self, phase: str) -> None:
        self.phase = phase
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        STOP_LOAD.set()
        for thread in self.threads:
            thread.join(10)

    def run(self, offset: int) -> None:
        connection = http.client.HTTPConnection(HOST, LB_PORT, timeout=30)
        i = offset
        while not STOP_LOAD.is_set():
            phase = self.phase
            path = f"{self.paths[i % len(self.paths)]}?phase={phase}"
            i += 1
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                outcome = None if 200 <= response.status < 300 else str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                connection.close()  # reconnects on the next request
            with self.lock:
                self.sent[phase] += 1
                if outcome:
                    self.failed.setdefault(phase, Counter())[outcome] += 1
        connection.close()


LOG_LINE = re.compile(r'"GET [^"?]*\?phase=(?P<phase>[\w-]+) [^"]*" (?P<status>\d+) .*? upstream="(?P<upstream>[^"]*)"')


def upstream_counts() -> dict[str, Counter]:
    """Per phase: which app server answered each GET, and how many GETs were retried (from access.log)."""
    ports = {f"{HOST}:{port}": name for name, port in APP_PORTS.items()}
    counts: dict[str, Counter] = {}
    for line in (PREFIX / "access.log").read_text().splitlines():
        match = LOG_LINE.search(line)
        if not match:
            continue
        # "a, b" when nginx tried a then b; " : " separates internal redirects (the error page), none here.
        tried = [addr.strip() for addr in re.split(r"[,:]\s", match["upstream"]) if addr.strip()]
        phase_counts = counts.setdefault(match["phase"], Counter())
        if tried:
            phase_counts[ports.get(tried[-1], tried[-1])] += 1
        phase_counts["retried"] += len(tried) > 1
    return counts


def print_table(phases: list[str], load: Load) -> int:
    counts = upstream_counts()
    header = f"{'phase':<14} {'requests':>9} {'failed':>7} {'retried':>8} " + " ".join(
        f"{f'{name} :{port}':>12}" for name, port in APP_PORTS.items()
    )
    print("\n" + header + "\n" + "-" * len(header))
    failed_total = 0
    for phase in phases:
        failed = sum(load.failed.get(phase, Counter()).values())
        failed_total += failed
        by_app = " ".join(f"{counts.get(phase, Counter())[name]:>12}" for name in APP_PORTS)
        print(f"{phase:<14} {load.sent[phase]:>9} {failed:>7} {counts.get(phase, Counter())['retried']:>8} {by_app}")
    for phase, outcomes in load.failed.items():
        print(f"  failures in {phase}: {dict(outcomes)}")
    if any("IncompleteRead" in outcomes for outcomes in load.failed.values()):
        # Rare (once in about 70 kills here): granian sends the head of a response before its body.
        print("  IncompleteRead: the app server died after nginx had begun forwarding the response; no proxy")
        print("  can retry a response it has started (error.log: 'prematurely closed ... while reading upstream')")
    print(f"\nfailed GETs: {failed_total} of {sum(load.sent.values())} (logs in {PREFIX})")
    return 1 if failed_total else 0


def served_again(phase: str, name: str) -> bool:
    return upstream_counts().get(phase, Counter())[name] > 0


def demo() -> int:
    shutil.rmtree(PREFIX, ignore_errors=True)
    PREFIX.mkdir(parents=True)
    PREFIX.chmod(0o755)  # nginx's workers run as nobody when started by root: they must reach tmp/
    print("migrating the bench databases", flush=True)
    subprocess.run([sys.executable, "manage.py", "migrate_all", "--verbosity", "0"], cwd=ROOT, env=APP_ENV, check=True)
    for name, port in APP_PORTS.items():
        print(f"starting {name} on {HOST}:{port}", flush=True)
        start_app(name)
    print(f"starting nginx on {HOST}:{LB_PORT}", flush=True)
    start_nginx()
    user_id = create_user()
    load = Load([f"/api/v1/users/{user_id}/", "/health/live"])
    phases = ["both-up", "app1-SIGTERM", "app1-back", "app2-SIGKILL"]
    print(f"GET load: {CLIENTS} connections, /api/v1/users/{user_id}/ and /health/live", flush=True)

    load.start(phases[0])
    time.sleep(PHASE_SECONDS)

    load.phase = phases[1]
    print("app1: SIGTERM", flush=True)
    PROCESSES.stop("app1", signal.SIGTERM)
    time.sleep(PHASE_SECONDS)
    print("app1: starting again", flush=True)
    start_app("app1")

    # nginx sends app1 requests again once fail_timeout has passed since its last failure: wait for that
    # (so the crash below leaves a live server), and at least a phase's length.
    load.phase = phases[2]
    started, deadline = time.monotonic(), time.monotonic() + 30
    while time.monotonic() < started + PHASE_SECONDS or not served_again(phases[2], "app1"):
        if time.monotonic() > deadline:
            raise RuntimeError("nginx did not send requests to app1 again within 30 s")
        time.sleep(0.2)

    load.phase = phases[3]
    print("app2: SIGKILL (the whole process group, mid-request)", flush=True)
    PROCESSES.stop("app2", signal.SIGKILL)
    time.sleep(PHASE_SECONDS)
    load.stop()
    return print_table(phases, load)


def cleanup() -> None:
    STOP_LOAD.set()  # first: a load still running would keep nginx busy while it drains
    PROCESSES.stop_all()


def main() -> int:
    # Ctrl-C even when started as a background job (which inherits SIGINT ignored), and `kill`: both
    # unwind through the `finally` below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return demo()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
