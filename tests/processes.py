"""Real Celery worker and beat processes for tests (no eager mode, no mocks)."""

import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

from project.worker import beat_argv, worker_argv

from .stack import ROOT


def _env(extra: dict) -> dict:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.test")
    env.update({k: str(v) for k, v in extra.items()})
    return env


@contextmanager
def celery_worker(*, env: dict | None = None, concurrency: int = 1, log_path: Path | None = None):
    """Run a real Celery worker (prefork) on the test broker; stop it afterwards."""
    log = open(log_path or os.devnull, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        worker_argv("--without-gossip", "--without-mingle", concurrency=concurrency),
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
