"""A Vegas concurrency limit: how many requests a process may serve at once, learnt from latency.

TCP Vegas (and Netflix concurrency-limits' VegasLimit) estimates the queue a limit builds:

    queue = limit × (1 − min_rtt / sample_rtt)

If latency stays near the lowest seen (no queue), the limit grows; when requests start to wait on
each other (the GIL, a core, a connection), sample_rtt rises above min_rtt and the limit falls, by
steps of log10(limit) (fast when the limit is large, one at a time when it is small). Why Vegas rather
than Gradient2: docs/architecture.md, "Overload".

Pure arithmetic on the samples it is given, no clock, no lock: the caller (limiter.py) holds its lock
and decides when a window of samples is complete, so tests drive it with synthetic RTTs.
"""

import math
from dataclasses import dataclass


@dataclass
class VegasLimit:
    """The limit of one endpoint group in one process. `floor` and `ceiling` bound it."""

    limit: float
    floor: int
    ceiling: int
    min_rtt: float = 0.0  # seconds; 0 = nothing measured yet

    def update(self, sample_rtt: float, in_flight: int) -> int:
        """Fold one window's mean RTT (seconds) into the limit and return the new (integer) limit.

        `in_flight` is the highest number of requests served at once during the window: a limit that
        was not used (less than half of it) is not grown, or an idle process would reach the ceiling
        and admit a burst far beyond what it can serve (VegasLimit's "app limited" rule).
        """
        if sample_rtt <= 0:
            return self.current
        if self.min_rtt == 0.0 or sample_rtt < self.min_rtt:
            self.min_rtt = sample_rtt  # a new best: no queue by definition; learn, don't move
            return self.current
        limit = self.limit
        queue = limit * (1.0 - self.min_rtt / sample_rtt)
        step = max(1.0, math.log10(limit))
        alpha, beta = 3 * step, 6 * step  # Netflix's defaults: grow below 3 queued, shrink above 6
        if queue <= step:  # no queue at all: grow fast
            if in_flight * 2 < limit:
                return self.current
            limit += beta
        elif queue < alpha:
            if in_flight * 2 < limit:
                return self.current
            limit += step
        elif queue > beta:
            limit -= step
        self.limit = float(min(self.ceiling, max(self.floor, limit)))
        return self.current

    def relearn_min_rtt(self, sample_rtt: float) -> None:
        """Forget the lowest RTT and take `sample_rtt` as the new one.

        min_rtt only ever falls otherwise; when the baseline really rose (a slower dependency, a
        busier neighbour) the limit would shrink to the floor and stay there. Called every
        RESILIENCE_ADAPTIVE_MIN_RTT_SECONDS (limiter.py), as Envoy and Netflix re-measure theirs.
        """
        if sample_rtt > 0:
            self.min_rtt = sample_rtt

    @property
    def current(self) -> int:
        return int(self.limit)
