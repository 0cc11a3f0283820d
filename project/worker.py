"""The Celery command lines, in one place: the queues a worker consumes and how beat runs.

Every task goes to `DEFAULT_QUEUE`, except webhook deliveries (`WEBHOOKS_QUEUE`): a slow receiver must
not delay write-behind flushes. A worker that does not consume both never delivers a webhook (the
queue then grows in a Redis that never evicts), so the Procfile, the docs, the tests, the chaos suite
and the demos all start workers through `worker_argv`, and production runs
`python -m project.worker [celery worker options]`.
"""

import os
import sys
from pathlib import Path

DEFAULT_QUEUE = "bulwark"
WEBHOOKS_QUEUE = "webhooks"
QUEUES = (DEFAULT_QUEUE, WEBHOOKS_QUEUE)
CELERY = str(Path(sys.executable).with_name("celery"))


def worker_argv(*extra: str, concurrency: int = 2, loglevel: str = "INFO") -> list[str]:
    """The `celery worker` command consuming every queue, with `extra` options appended."""
    return [
        CELERY,
        "-A",
        "project",
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency}",
        "-Q",
        ",".join(QUEUES),
        *extra,
    ]


def beat_argv(schedule_path: str | Path, *extra: str, loglevel: str = "INFO") -> list[str]:
    """The `celery beat` command (run exactly one) keeping its schedule state in `schedule_path`."""
    return [CELERY, "-A", "project", "beat", f"--loglevel={loglevel}", f"--schedule={schedule_path}", *extra]


if __name__ == "__main__":  # python -m project.worker [celery worker options]
    argv = worker_argv(*sys.argv[1:])
    os.execv(argv[0], argv)  # noqa: S606 - our own command line, no shell
