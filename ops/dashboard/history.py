"""A short history of overview figures for the sparklines, kept in the state Redis.

Samples are taken when the overview's JSON endpoint is polled, at most one per SAMPLE_EVERY seconds
whoever polls (a SET NX lock), and kept in a capped list (LPUSH + LTRIM): HISTORY_LENGTH samples,
about five minutes at one sample every two seconds. Nothing is sampled while nobody watches, which
is fine: the sparklines show what was seen, not a monitoring archive (Prometheus is for that).

When the state Redis is down, sampling is skipped and `read` returns no samples; neither raises.
"""

import json
import time

from django_redis import get_redis_connection

KEY = "dash:v1:samples"
LOCK_KEY = "dash:v1:sample-lock"
HISTORY_LENGTH = 150
SAMPLE_EVERY = 1.8  # seconds; a little under the page's 2 s polling interval
SERIES = {
    "replica_lag": "max replica lag (s)",
    "pending": "write-behind users pending",
    "queued": "Celery tasks queued",
    "cache_ops": "cache Redis ops/s",
    "state_ops": "state Redis ops/s",
    "denied": "429s (last 5 min)",
    "open_breakers": "breakers not closed",
}


def _data(panels: dict, name: str):
    panel = panels.get(name) or {}
    return panel.get("data") if panel.get("ok") else None


def sample_from(panels: dict) -> dict:
    """Reduce the collected panels to one sample: numbers, or None where a panel was unavailable."""
    databases, celery = _data(panels, "databases"), _data(panels, "celery")
    lags = [r["lag"] for g in (databases or {}).get("groups", []) for r in g["replicas"] if r["lag"] is not None]
    write_behind, limits, breakers = (
        _data(panels, "write_behind"),
        _data(panels, "rate_limits"),
        _data(panels, "breakers"),
    )
    cache, state = _data(panels, "redis_cache"), _data(panels, "redis_state")
    return {
        "t": round(time.time(), 3),
        "replica_lag": max(lags) if lags else None,
        "pending": write_behind["pending_views_users"] if write_behind else None,
        "queued": sum(celery["queues"].values()) if celery else None,
        "cache_ops": cache["ops_per_sec"] if cache else None,
        "state_ops": state["ops_per_sec"] if state else None,
        "denied": sum(limits["by_policy"].values()) if limits else None,
        "open_breakers": len(breakers) if breakers is not None else None,
    }


def record(sample: dict) -> bool:
    """Append `sample` unless one was taken less than SAMPLE_EVERY seconds ago; return whether it was.
    Never raises (a state Redis that is down means no history)."""
    try:
        client = get_redis_connection("state")
        if not client.set(LOCK_KEY, "1", nx=True, px=int(SAMPLE_EVERY * 1000)):
            return False
        pipe = client.pipeline(transaction=False)
        pipe.lpush(KEY, json.dumps(sample))
        pipe.ltrim(KEY, 0, HISTORY_LENGTH - 1)
        pipe.execute()
        return True
    except Exception:  # the history is a nicety; the panels report the outage
        return False


def read() -> list[dict]:
    """Return the kept samples, oldest first; [] when there are none or the state Redis is down."""
    try:
        raw = get_redis_connection("state").lrange(KEY, 0, HISTORY_LENGTH - 1)
    except Exception:
        return []
    samples = []
    for item in reversed(raw):
        try:
            samples.append(json.loads(item))
        except ValueError:
            continue
    return samples
