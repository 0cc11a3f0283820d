"""Properties of the algorithms for random request sequences, checked against the real Lua scripts.

The clock is injected (`now_ms`) so that hypothesis can explore minutes of traffic in milliseconds;
everything else — Redis, the scripts, the round trips — is real.

What the sliding-window counter guarantees: it is Cloudflare's approximation, so its promise is about
the weighted estimate, not about every arbitrary interval. Checked here: no aligned window ever admits
more than `limit`; at every admission prev * (1 - elapsed / window) + curr stays within `limit`; any
interval of one window length admits fewer than 2 * limit; and a denied client that waits the
Retry-After it was given is admitted.
"""

import uuid
from bisect import bisect_left, bisect_right
from collections import Counter

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from resilience.ratelimit import Policy, evaluate

WINDOW_MS = 1000
START_MS = 1_700_000_000_000  # a multiple of the window
EPSILON = 1e-9

requests = st.lists(st.integers(min_value=0, max_value=1500), min_size=1, max_size=40)
property_settings = hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _run(policy: Policy, gaps: list[int]) -> list[int]:
    """Send one request after each gap; return the admission times. Check every denial's Retry-After."""
    key, now, admitted = uuid.uuid4().hex, START_MS, []
    for gap in gaps:
        now += gap
        decision = evaluate(policy, key, now_ms=now)
        assert not decision.degraded
        if decision.allowed:
            admitted.append(now)
        else:
            assert decision.retry_after >= 1
            assert evaluate(policy, key, cost=0, now_ms=now + decision.retry_after * 1000).allowed
    return admitted


@property_settings
@given(limit=st.integers(min_value=1, max_value=6), gaps=requests)
def test_sliding_window_never_admits_more_than_its_estimate_allows(limit, gaps):
    admitted = _run(Policy("prop.sliding", limit, WINDOW_MS // 1000, "ip"), gaps)

    per_window = Counter(t // WINDOW_MS for t in admitted)
    assert max(per_window.values(), default=0) <= limit
    seen: Counter[int] = Counter()
    for t in admitted:
        index = t // WINDOW_MS
        seen[index] += 1
        weight = 1 - (t - index * WINDOW_MS) / WINDOW_MS
        assert per_window[index - 1] * weight + seen[index] <= limit + EPSILON
    for t in admitted:
        assert bisect_left(admitted, t + WINDOW_MS) - bisect_left(admitted, t) < 2 * limit


@property_settings
@given(limit=st.integers(min_value=1, max_value=6), gaps=requests)
def test_token_bucket_admits_at_most_its_capacity_plus_refill(limit, gaps):
    admitted = _run(Policy("prop.bucket", limit, WINDOW_MS // 1000, "ip", "token_bucket"), gaps)

    for i, start in enumerate(admitted):
        for end in admitted[i:]:
            count = bisect_right(admitted, end) - i
            assert count <= limit + (end - start) * limit / WINDOW_MS + EPSILON
