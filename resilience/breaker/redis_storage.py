"""Breaker state in the state Redis: every transition is one atomic Lua script, shared by every process.

Methods raise redis' ConnectionError or TimeoutError when the state Redis is unavailable; the breaker
catches them and falls back to its in-process storage (see breaker.py).
"""

import logging
import time
from pathlib import Path

from redis.commands.core import Script

from resilience.outage import Outage
from resilience.redis_state import UNAVAILABLE, lua_path, lua_script, state_redis

from .options import BreakerOptions, State
from .storage import Acquired, Outcome, Peek, Recorded, Snapshot, Transition, build_snapshot

logger = logging.getLogger("resilience.breaker")

__all__ = ["UNAVAILABLE", "RedisStorage", "outage", "state_redis"]
KEY_VERSION = "v2"  # v2: hash-tagged for Redis Cluster
# Every breaker script also adds to the set of names, so every breaker key carries one hash tag: on a
# Redis Cluster all breakers live in one slot (a few small keys per dependency, a few dozen in all).
TAG = "{cb}"
NAMES_KEY = f"cb:{KEY_VERSION}:{TAG}:names"
_DIR = Path(__file__).resolve().parent


def _script(name: str) -> Script:
    return lua_script(lua_path(_DIR, name))


def breaker_keys(name: str) -> list[str]:
    """KEYS of every breaker script: state hash, half-open permits, transitions, the set of names."""
    base = f"cb:{KEY_VERSION}:{TAG}:{name}"
    return [f"{base}:state", f"{base}:permits", f"{base}:transitions", NAMES_KEY]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _transition(name: str, from_state: bytes, to_state: bytes, reason: bytes) -> Transition | None:
    if not from_state:
        return None
    return Transition(name, State(_text(from_state)), State(_text(to_state)), _text(reason), time.time())


class RedisStorage:
    local = False

    def acquire(self, name: str, options: BreakerOptions, permit_id: str) -> Acquired:
        admitted, state, epoch, retry_ms, *transition = _script("acquire")(
            keys=breaker_keys(name),
            args=[
                name,
                permit_id,
                int(options.open_seconds * 1000),
                options.half_open_max_calls,
                int(options.permit_timeout_seconds * 1000),
                options.transitions_kept,
            ],
            client=state_redis(),
        )
        return Acquired(
            bool(admitted), State(_text(state)), int(epoch), int(retry_ms) / 1000, _transition(name, *transition)
        )

    def record(
        self,
        name: str,
        options: BreakerOptions,
        *,
        epoch: int,
        permit_id: str,
        outcome: Outcome,
        error: str,
        count: int = 1,
    ) -> Recorded:
        state, *transition = _script("record")(
            keys=breaker_keys(name),
            args=[
                name,
                epoch,
                permit_id,
                outcome,
                error,
                options.window_size,
                options.minimum_calls,
                options.failure_rate_threshold,
                options.consecutive_failures,
                options.success_threshold,
                int(options.open_seconds * 1000),
                options.transitions_kept,
                count,
            ],
            client=state_redis(),
        )
        return Recorded(State(_text(state)), _transition(name, *transition))

    def force(self, name: str, options: BreakerOptions, target: State, reason: str) -> Transition:
        from_state, to_state = _script("force")(
            keys=breaker_keys(name),
            args=[name, str(target), reason, options.transitions_kept],
            client=state_redis(),
        )
        return Transition(name, State(_text(from_state)), State(_text(to_state)), reason, time.time())

    def peek(self, name: str, options: BreakerOptions) -> Peek:
        """One HMGET (no script, nothing written): a breaker never used reads as CLOSED."""
        state, epoch, due, window, consecutive = state_redis().hmget(
            breaker_keys(name)[0], "state", "epoch", "next_probe_at", "window", "consecutive"
        )
        state = State(_text(state)) if state else State.CLOSED
        retry = max(int(due) / 1000 - time.time(), 0.0) if state == State.OPEN and due else 0.0
        window = _text(window or b"")
        bad = int(consecutive or 0) > 0 or "f" in window or "l" in window
        return Peek(state, int(epoch or 0), retry, bad)

    def snapshot(self, name: str, options: BreakerOptions) -> Snapshot:
        state_key, permits_key, transitions_key, _ = breaker_keys(name)
        pipe = state_redis().pipeline(transaction=True)
        pipe.hgetall(state_key)
        pipe.lrange(transitions_key, 0, -1)
        pipe.zcount(permits_key, int(time.time() * 1000), "+inf")
        raw, transitions, in_flight = pipe.execute()
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return build_snapshot(name, options, fields, [_text(t) for t in transitions], int(in_flight), degraded=False)

    def names(self) -> set[str]:
        return {_text(name) for name in state_redis().smembers(NAMES_KEY)}


outage = Outage("circuit breakers (falling back to in-process breakers)")
