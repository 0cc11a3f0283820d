"""Crash points for the fault tests, one mechanism for every module that has them.

`point(name)` SIGKILLs the calling process when the FAULT_POINT setting names that point, and does
nothing otherwise: FAULT_POINT is empty in every real deployment, so a point costs one string compare.
With FAULT_POINT_MARKER set, the point fires once: the first process to reach it creates that file
(atomically, O_EXCL) and dies; later ones see the file and go on (a redelivered task must be able to
finish). Point names say where they are: "flush.after_commit", "reshard.verified".
"""

import os
import signal

from django.conf import settings


def point(name: str) -> None:
    if settings.FAULT_POINT != name:
        return
    marker = settings.FAULT_POINT_MARKER
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
