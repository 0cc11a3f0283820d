"""A Gradient2 concurrency limit: how many requests a process may serve at once, learnt from latency.

Netflix concurrency-limits' Gradient2 compares the latency of the last window with its own long-run
average (an exponential moving average over about LONG_WINDOWS windows):

    gradient  = clamp(TOLERANCE × long_rtt / sample_rtt, 0.5, 1.0)
    new limit = limit × gradient + QUEUE        (then smoothed, and held between floor and ceiling)

While the window's latency stays within TOLERANCE (1.5×) of the average the gradient is 1 and the
limit grows by QUEUE a window (the queue the service is allowed); when requests start to wait on each
other (the GIL, a core, a connection) the window's latency rises above the average and the limit falls,
at most by half a window. A limit that was not used (less than half of it in flight) is neither grown
(an idle process would reach the ceiling and admit a burst far beyond what it can serve) nor shrunk
(the latency of a lightly loaded process says nothing about its concurrency).

One change to Netflix's: the long-run average may not rise above ANCHOR × the lowest window latency
(min_rtt). Without it the average follows a sustained overload up, the gradient returns to 1 and the
limit drifts back to the ceiling while every request queues (a simulation of a processor-sharing
server, where latency grows with the limit, drifts to the ceiling in ~200 windows). With it, the limit
settles where latency is about TOLERANCE × ANCHOR × min_rtt. min_rtt is re-learnt (limiter.py) only
from windows where the limit was not saturated, so an overload cannot raise the anchor.

Why Gradient2 rather than Vegas (docs/architecture.md, "Overload"): Vegas compares with the lowest
latency ever seen, and on a shared machine that minimum is a lucky window; the bench measured Vegas
pinning every process to its floor at half of capacity, refusing requests the server could serve.

Pure arithmetic on the samples it is given, no clock, no lock: the caller (limiter.py) holds its lock
and decides when a window of samples is complete, so tests drive it with synthetic RTTs.
"""

from dataclasses import dataclass

TOLERANCE = 1.5  # latency may rise this much over its average before the limit shrinks
ANCHOR = 1.5  # the average may not exceed this many times min_rtt
LONG_WINDOWS = 60  # windows in the long-run average (about 6 s at 100 ms windows)
QUEUE = 4.0  # growth per window while latency holds
SMOOTHING = 0.2  # share of the new value in each change


@dataclass
class Gradient2Limit:
    """The limit of one endpoint group in one process. `floor` and `ceiling` bound it."""

    limit: float
    floor: int
    ceiling: int
    long_rtt: float = 0.0  # seconds; 0 = nothing measured yet
    min_rtt: float = 0.0

    def update(self, sample_rtt: float, in_flight: int) -> int:
        """Fold one window's mean RTT (seconds) and its peak `in_flight` into the limit; return the new
        (integer) limit."""
        if sample_rtt <= 0:
            return self.current
        if self.min_rtt == 0.0 or sample_rtt < self.min_rtt:
            self.min_rtt = sample_rtt
        if self.long_rtt == 0.0:
            self.long_rtt = sample_rtt
            return self.current
        self.long_rtt += (sample_rtt - self.long_rtt) * 2 / (LONG_WINDOWS + 1)
        self.long_rtt = min(self.long_rtt, ANCHOR * self.min_rtt)
        if self.long_rtt / sample_rtt > 2:
            # Latency fell far below the average: an overload just ended. Let the average (inflated
            # by it) come down faster, or the limit would grow on stale evidence for a long time.
            self.long_rtt *= 0.95
        if in_flight * 2 < self.limit:
            return self.current
        gradient = max(0.5, min(1.0, TOLERANCE * self.long_rtt / sample_rtt))
        target = self.limit * gradient + QUEUE
        limit = self.limit * (1 - SMOOTHING) + target * SMOOTHING
        self.limit = float(min(self.ceiling, max(self.floor, limit)))
        return self.current

    def relearn_min_rtt(self, sample_rtt: float) -> None:
        """Forget the lowest window latency and start again from `sample_rtt`, a window's latency while
        the limit was not saturated. It only ever falls otherwise: a lucky window, or a dependency that
        became slower for good, would hold the limit low for the life of the process."""
        if sample_rtt > 0:
            self.min_rtt = sample_rtt

    @property
    def current(self) -> int:
        return int(self.limit)
