"""Starting, waiting for and stopping the real processes the tests, the bench, the chaos suite and the deploy
demos run: one place for how a child is started (its own session, so a signal reaches the workers it
forks; its output in a log file), how a wait notices that it died, and how it is stopped (a signal to its
whole process group, SIGKILL after a timeout). The app's command lines come from project/worker.py
(Celery worker and beat) and project/server.py (granian); Redis servers and Sentinels are started and
waited for here too (their command lines are the demos' and tests/sentinel.py's).

Imports nothing but the standard library and those two modules: `python deploy/lb_demo.py` imports it from
a fresh clone without Django set up.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from project.server import granian_argv
from project.worker import beat_argv, worker_argv

from .stack import ROOT, ProcessExited, free_port, wait_for


class Process:
    """One child process in its own session, its output appended to `log_path` (None: this process's own
    stdout and stderr). `start` may be called again after a stop, with the same command line.

    `stop_signal` and `stop_timeout` say how it is stopped by default (nginx stops gracefully on SIGQUIT;
    Celery may take a while to finish its tasks)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path | None = None,
        env: dict | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 15,
    ):
        self.name, self.argv, self.log_path, self.env = name, argv, log_path, env
        self.stop_signal, self.stop_timeout = stop_signal, stop_timeout
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0

    def start(self, env: dict | None = None) -> "Process":
        """Start the command with `env` (default: the one given at construction; None: this process's)."""
        env = env if env is not None else self.env
        if self.log_path is None:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            return self
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "a") as log:  # the child keeps its own copy of the descriptor
            # The variables it gets that this process does not have (e.g. chaos's armed fault point).
            differ = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}
            log.write(f"===== {time.strftime('%H:%M:%S')} start {' '.join(map(str, self.argv))} {differ or ''}\n")
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        """The process id while it runs, else None."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def check_alive(self) -> None:
        """Raise ProcessExited (with the end of its log) if it is not running."""
        if self.pid is None:
            code = self.proc.returncode if self.proc is not None else "never started"
            raise ProcessExited(f"{self.name} exited ({code}): " + " | ".join(self.log_tail()))

    def log_tail(self, lines: int = 5) -> list[str]:
        if self.log_path is None or not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines()[-lines:]

    def signal(self, sig: int, *, group: bool = True) -> None:
        """Send `sig` to its whole process group (the children it forked too), or to the process alone."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.proc.pid, sig)
            elif self.proc.poll() is None:
                self.proc.send_signal(sig)

    def kill(self, *, group: bool = True) -> None:
        """SIGKILL it at once, as a crash would (`group=False`: the process alone, its children live on)."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL, group=group)
            self.proc.wait(timeout=15)

    def stop(self, sig: int | None = None, timeout: float | None = None) -> None:
        """Send `sig` (default: its stop signal) to its process group and wait for it; SIGKILL the group
        if it outlives `timeout` (default: its stop timeout). Then SIGKILL whatever of the group is left:
        granian's workers outlive a SIGKILLed parent and keep serving (measured)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(self.stop_signal if sig is None else sig)
            try:
                self.proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.signal(signal.SIGKILL)

    def wait_log(self, text: str, *, timeout: float) -> None:
        """Wait until this run of the process has logged `text` (e.g. Celery's "ready.")."""

        def logged():
            self.check_alive()
            with open(self.log_path, errors="replace") as log:
                log.seek(self._log_offset)
                return text in log.read()

        wait_for(logged, timeout=timeout, interval=0.2, message=f"{self.name} to log {text!r} (log: {self.log_path})")

    def wait_serving(self, url: str, *, timeout: float = 60) -> None:
        """Wait until `url` (on this server) answers 200; give up at once if the process exits."""
        wait_for(
            lambda: self.check_alive() or answers(url),
            timeout=timeout,
            interval=0.2,
            message=f"{self.name} to serve {url} (log: {self.log_path})",
        )


def answers(url: str) -> bool:
    """Whether a GET of `url` answers 200 (an error status or no answer raises)."""
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a loopback URL we built
        return response.status == 200


class Processes:
    """Named processes, their output in `workdir`/<name><suffix>, stopped together (last started first):
    what the demos and the Redis topologies of the tests start."""

    def __init__(self, workdir: Path, *, suffix: str = ".out"):
        self.workdir, self.suffix = workdir, suffix
        self.running: dict[str, Process] = {}

    def start(self, name: str, argv: list[str], env: dict | None = None, **options) -> Process:
        """Start `argv` as `name` with `env` (None: this process's); `options` are Process's (a
        `log_path` of None: no log file, the output goes where this process's goes)."""
        options.setdefault("log_path", self.workdir / f"{name}{self.suffix}")
        self.running[name] = Process(name, argv, env=env, **options)
        return self.running[name].start()

    def start_redis(self, port: int, argv: list[str], attempts: int = 5) -> str:
        """Start a Redis server or Sentinel and wait until it answers PING; return its name.

        A port in Linux's ephemeral range (32768-60999) can be held for a moment by some process's
        outgoing connection; a server that could not bind it is started again, up to `attempts` times."""
        import redis

        name = f"redis-{port}" if "--sentinel" not in argv else f"sentinel-{port}"
        ping = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5).ping
        for attempt in range(1, attempts + 1):
            self.start(name, argv)
            try:
                wait_for(lambda: self.check_alive(name) or ping(), timeout=15, message=f"{name} to answer")
                return name
            except ProcessExited as exc:
                if "Address already in use" not in str(exc) or attempt == attempts:
                    raise
                self.running.pop(name)
                time.sleep(1)
        return name

    def check_alive(self, *names: str) -> None:
        """Raise ProcessExited if one of `names` is not running, with the end of its output and of the
        log a Redis server or Sentinel keeps in `workdir`/<name>/."""
        for name in names:
            try:
                self.running[name].check_alive()
            except ProcessExited as exc:
                logs = list((self.workdir / name).glob("*.log"))
                tail = logs[0].read_text(errors="replace").splitlines()[-3:] if logs else []
                raise ProcessExited(" | ".join([str(exc), *tail])) from None

    def stop(self, name: str, sig: int | None = None, timeout: float | None = None) -> None:
        """Stop `name` (see Process.stop) and forget it."""
        proc = self.running.pop(name, None)
        if proc is not None:
            proc.stop(sig, timeout)

    def kill(self, name: str) -> None:
        """SIGKILL `name`, the process only (as a crash of that process would), and forget it."""
        self.running.pop(name).kill(group=False)

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)


# ---------------------------------------------------------------- the app's processes
def app_env(extra: dict, settings: str = "project.settings.test") -> dict:
    """This process's environment with `extra`'s variables set, or removed where their value is None;
    DJANGO_SETTINGS_MODULE defaults to `settings`."""
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", settings)
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    return {k: v for k, v in env.items() if extra.get(k, "") is not None}


def worker(log_path: Path | None, *extra: str, concurrency: int = 1, loglevel: str = "INFO", **options) -> Process:
    """A Celery worker consuming every queue (project/worker.py), without gossip and mingle (they only
    slow a lone worker's start); `extra` options go last (a `-Q` there replaces the queues). `options`
    are Process's (env, stop_timeout...)."""
    argv = worker_argv("--without-gossip", "--without-mingle", *extra, concurrency=concurrency, loglevel=loglevel)
    return Process("worker", argv, log_path=log_path, **options)


def beat(log_path: Path | None, schedule_path: Path, **options) -> Process:
    """Celery beat, checking its schedule every second (the flush and dispatch tasks run every second)."""
    return Process("beat", beat_argv(schedule_path, "--max-interval=1"), log_path=log_path, **options)


def granian(
    port: int,
    log_path: Path | None,
    *,
    name: str = "granian",
    env: dict | None = None,
    stop_timeout: float = 15,
    **argv_options,
) -> Process:
    """granian serving the app on `port` as production does (project/server.py's granian_argv, given
    `argv_options`)."""
    return Process(name, granian_argv(port, **argv_options), log_path=log_path, env=env, stop_timeout=stop_timeout)


def live_url(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}/health/live"


# ---------------------------------------------------------------- for tests
@contextmanager
def running(process: Process, *, serving: str | None = None, timeout: float = 90):
    """Start `process`, wait until `serving` (a URL) answers 200 if given, yield its Popen; stop it afterwards."""
    process.start()
    try:
        if serving:
            process.wait_serving(serving, timeout=timeout)
        yield process.proc
    finally:
        process.stop()


def _log(log_path: Path | None) -> Path:
    return log_path or Path(os.devnull)


def celery_worker(
    *, env: dict | None = None, concurrency: int = 1, log_path: Path | None = None, extra_args: tuple[str, ...] = ()
):
    """Run a real Celery worker (prefork) on the test broker; stop it afterwards. `extra_args` go
    last (a `-Q` there replaces the queues)."""
    return running(worker(_log(log_path), *extra_args, concurrency=concurrency, env=app_env(env or {})))


def celery_beat(*, schedule_path: Path, env: dict | None = None):
    return running(beat(Path(os.devnull), schedule_path, env=app_env(env or {})))


def web_server(*, port: int, env: dict | None = None, log_path: Path | None = None, insecure: bool = False):
    """Serve the app on 127.0.0.1:`port` in its own process (runserver, as `make run` does) until it answers
    /health/live; stop it afterwards. `insecure` serves the static files too, with DEBUG off."""
    argv = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", *(["--insecure"] * insecure)]
    server = Process("the web server", argv, log_path=_log(log_path), env=app_env(env or {}))
    return running(server, serving=live_url(port))


def granian_server(*, port: int, env: dict | None = None, workers: int = 1, log_path: Path | None = None):
    """Serve the app on 127.0.0.1:`port` with granian, as production does (project/server.py), until it
    answers /health/live; stop it afterwards."""
    server = granian(port, _log(log_path), env=app_env(env or {}), workers=workers, threads=2, log_level="info")
    return running(server, serving=live_url(port))


@contextmanager
def state_replica(workdir: Path):
    """A real redis-server replicating the stack's state Redis, on a free port, its files under
    `workdir`; yielded once the master's WAIT is answered by it; killed afterwards."""
    import redis
    from django_redis import get_redis_connection

    port = free_port()
    master = get_redis_connection("state")
    workdir.mkdir(parents=True, exist_ok=True)
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    argv += ["--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1"]
    argv.append(str(master.connection_pool.connection_kwargs["port"]))
    replica = redis.Redis(host="127.0.0.1", port=port)
    with running(Process("state replica", argv, log_path=Path(os.devnull), stop_signal=signal.SIGKILL)) as proc:
        wait_for(
            lambda: replica.info("replication").get("master_link_status") == "up",
            timeout=60,
            message="the temporary replica to sync",
        )

        # Synced is not yet acknowledging: wait until a WAIT on the master is answered by it.
        # Every replica attached (bench: two), or a WAIT for all of them still times out on this one.
        def acked():
            attached = master.info("replication")["connected_slaves"]
            return master.execute_command("WAIT", attached, 200) >= attached

        wait_for(acked, timeout=30, message="the replica's acks")
        yield proc


# ---------------------------------------------------------------- nginx in front
# The in-flight limits deploy/nginx.conf gets unless told otherwise: all limited requests / default and
# sheddable ones / sheddable ones. Sized in `make bench` "overload" for the one granian process of 2
# threads it puts behind nginx (docs/operations.md, "Sizing the proxy's in-flight limits"): 4 requests in
# flight keep it busy, default traffic gets 2 more, critical traffic the rest of 128.
NGINX_LIMITS = {"LIMIT_ALL": 128, "LIMIT_NONCRITICAL": 6, "LIMIT_SHEDDABLE": 4}


def nginx_binary() -> str:
    import shutil

    return shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_front(
    prefix: Path,
    *,
    listen_port: int,
    app_ports: tuple[int, int],
    limits: dict | None = None,
    trusted_callers: tuple[str, ...] = (),
    log_path: Path | None = None,
    stop_timeout: float = 5,
) -> Process:
    """nginx from deploy/nginx.conf under `prefix` (its config, logs and temp files go there), in front
    of the app servers on `app_ports` (give the same port twice for one server), with the in-flight
    `limits` (NGINX_LIMITS' keys) and the addresses or CIDRs whose X-Bulwark-Priority may lower a
    request's class (`trusted_callers`, none by default); checked with `nginx -t`, not started. SIGQUIT
    is its graceful stop.
    Started by root, nginx's workers run as nobody: `prefix` must be reachable by them for temp files
    (large bodies), not only by this user."""
    import re
    import shutil

    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    values = {
        "PREFIX": str(prefix),
        "LISTEN_PORT": listen_port,
        "APP1_PORT": app_ports[0],
        "APP2_PORT": app_ports[1],
        "TRUSTED_CALLERS": "\n        ".join(f"{caller} 1;" for caller in trusted_callers),  # the geo block's lines
        **NGINX_LIMITS,
        **(limits or {}),
    }
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    conf = re.sub(r"\{\{([A-Z0-9_]+)\}\}", lambda m: str(values[m[1]]), conf)  # KeyError: an unknown one
    (prefix / "nginx.conf").write_text(conf)
    shutil.copy(ROOT / "deploy" / "nginx-priority.conf", prefix / "nginx-priority.conf")
    cmd = [nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    subprocess.run([*cmd, "-t", "-q"], check=True)
    return Process(
        "nginx", [*cmd, "-g", "daemon off;"], log_path=log_path, stop_signal=signal.SIGQUIT, stop_timeout=stop_timeout
    )
