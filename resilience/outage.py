"""Process-local memory of a state-Redis failure, shared by the rate limiter and the breakers.

While `active()`, callers do not ask Redis (a hung Redis then costs one socket timeout per
RESILIENCE_STATE_RETRY_SECONDS, default 1.0, not one per call). `down` stays true until Redis answers
again. Logs once per outage and once on recovery.
"""

import logging
import threading
import time

from django.conf import settings

logger = logging.getLogger("resilience")


class Outage:
    def __init__(self, what: str) -> None:
        self._what = what
        self._until = 0.0
        self.down = False
        self._lock = threading.Lock()

    def active(self) -> bool:
        """True while Redis is known to be down and should not be asked again yet."""
        return time.monotonic() < self._until

    def failed(self, exc: BaseException) -> None:
        backoff = float(settings.RESILIENCE_STATE_RETRY_SECONDS)
        with self._lock:
            self._until = time.monotonic() + backoff
            first, self.down = not self.down, True
        if first:
            logger.warning(
                "%s: state Redis unavailable (%s: %s); degraded until it answers again",
                self._what,
                exc.__class__.__name__,
                exc,
            )

    def recovered(self) -> None:
        if self.down:
            with self._lock:
                was, self.down, self._until = self.down, False, 0.0
            if was:
                logger.warning("%s: state Redis answers again; leaving degraded mode", self._what)

    def clear(self) -> None:
        """Forget any outage (tests, or an operator who knows Redis is back)."""
        with self._lock:
            self._until, self.down = 0.0, False
