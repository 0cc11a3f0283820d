"""Real Celery worker and beat processes for tests (no eager mode, no mocks)."""

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from project.worker import beat_argv, worker_argv

from .stack import ROOT


def _env(extra: dict) -> dict:
    """This process's environment with `extra`'s variables set, or removed where their value is None."""
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.test")
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    return {k: v for k, v in env.items() if extra.get(k, "") is not None}


@contextmanager
def celery_worker(
    *, env: dict | None = None, concurrency: int = 1, log_path: Path | None = None, extra_args: tuple[str, ...] = ()
):
    """Run a real Celery worker (prefork) on the test broker; stop it afterwards. `extra_args` go
    last (a `-Q` there replaces the queues)."""
    log = open(log_path or os.devnull, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        worker_argv("--without-gossip", "--without-mingle", *extra_args, concurrency=concurrency),
        cwd=ROOT,
        env=_env(env or {}),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        _stop(proc)
        log.close()


@contextmanager
def celery_beat(*, schedule_path: Path, env: dict | None = None):
    proc = subprocess.Popen(
        beat_argv(schedule_path, "--max-interval=1"),
        cwd=ROOT,
        env=_env(env or {}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@contextmanager
def _served(argv: list[str], *, port: int, env: dict | None, log_path: Path | None, what: str):
    """Run `argv` (a server of the app on 127.0.0.1:`port`) in its own process group until it answers
    /health/live; stop it afterwards."""
    import urllib.request

    from .stack import wait_for

    log = open(log_path or os.devnull, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=_env(env or {}), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )

    def answers():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=2) as response:  # noqa: S310
            return proc.poll() is None and response.status == 200

    try:
        wait_for(answers, timeout=90, interval=0.2, message=f"{what} on port {port} (log: {log_path})")
        yield proc
    finally:
        _stop(proc)
        log.close()


def web_server(*, port: int, env: dict | None = None, log_path: Path | None = None, insecure: bool = False):
    """Serve the app on 127.0.0.1:`port` in its own process (runserver, as `make run` does); `insecure`
    serves the static files too, with DEBUG off."""
    argv = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", *(["--insecure"] * insecure)]
    return _served(argv, port=port, env=env, log_path=log_path, what="the web server")


def granian_server(*, port: int, env: dict | None = None, workers: int = 1, log_path: Path | None = None):
    """Serve the app on 127.0.0.1:`port` with granian, as production does (project/server.py)."""
    from project.server import granian_argv

    argv = granian_argv(port, workers=workers, threads=2, log_level="info")
    return _served(argv, port=port, env=env, log_path=log_path, what="granian")


@contextmanager
def state_replica(workdir: Path):
    """A real redis-server replicating the stack's state Redis, on a free port, its files under
    `workdir`; yielded once the master's WAIT is answered by it; killed afterwards."""
    import redis
    from django_redis import get_redis_connection

    from .stack import free_port, wait_for

    port = free_port()
    master = get_redis_connection("state")
    workdir.mkdir(parents=True, exist_ok=True)
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    argv += ["--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1"]
    argv.append(str(master.connection_pool.connection_kwargs["port"]))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    replica = redis.Redis(host="127.0.0.1", port=port)
    try:
        wait_for(
            lambda: replica.info("replication").get("master_link_status") == "up",
            timeout=60,
            message="the temporary replica to sync",
        )
        # Synced is not yet acknowledging: wait until a WAIT on the master is answered by it.
        wait_for(lambda: master.execute_command("WAIT", 1, 200) >= 1, timeout=30, message="the replica's acks")
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
