"""How the app is served in production shape: one place for the granian command line.

`make bench` measured granian faster than gunicorn on this app (docs/operations.md); the benchmark,
the chaos suite, the fuzz test and the deploy demos all start it through `granian_argv`.
"""

import sys
from pathlib import Path


def granian_argv(
    port: int, *, host: str = "127.0.0.1", workers: int = 2, threads: int = 4, log_level: str = "error"
) -> list[str]:
    """The granian command serving project.wsgi on host:port with `workers` processes of `threads` threads."""
    return [
        str(Path(sys.executable).with_name("granian")),
        "--interface",
        "wsgi",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--blocking-threads",
        str(threads),
        "--log-level",
        log_level,
        "project.wsgi:application",
    ]
