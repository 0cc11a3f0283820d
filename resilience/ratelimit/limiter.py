"""Check, peek and reset rate limits against the state Redis; one round trip per check, or one for all
the checks of a request (`evaluate_all`: its rate policies and its concurrency slot).

Contract when the state Redis is down or times out: `check` and `peek` never raise. A policy with
fail_mode "open" admits the request, "closed" denies it with a short Retry-After (1-5 s, jittered so
clients do not come back in step); either way the Decision says `degraded=True` and `remaining` is
None. The admin helpers (`reset_key`, `top_denied`, `denied_counts`) raise redis' ConnectionError or
TimeoutError instead: an operator must not be told an action succeeded when it did not.
"""

import logging
import random
import time
import zlib
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import caches
from django.core.signals import setting_changed
from django.dispatch import receiver
from django_redis.exceptions import ConnectionInterrupted

from resilience.redis_fanout import run_all, script_call
from resilience.redis_state import is_cluster

from .fixed_window import Unavailable, counter_key, evaluate_fixed
from .policies import Policy, get_policy
from .scripts import CHAINED, UNAVAILABLE, chain_script, outage, script, state_redis

logger = logging.getLogger("resilience.ratelimit")

KEY_VERSION = "v2"  # v2: hash-tagged for Redis Cluster
FAIL_CLOSED_RETRY_AFTER = (1, 5)


@dataclass(frozen=True)
class Decision:
    """The outcome of one check. `reset` and `retry_after` are whole seconds; `remaining` is None
    when it is unknown (degraded)."""

    allowed: bool
    limit: int
    remaining: int | None
    reset: int
    retry_after: int
    policy: Policy
    degraded: bool = False


STATS_SLOTS = 16
"""The denial statistics are split into this many parts, each under its own hash tag. A limiter script
touches one (policy, key)'s counters and its part's statistics, so one Redis Cluster slot; readers of
the statistics add the parts up. Changing it moves every key (bump KEY_VERSION with it)."""


def _tag(policy_name: str, key: str) -> str:
    """The hash tag of `key` under the policy: its statistics part, `{rl:<0..STATS_SLOTS-1>}`."""
    return f"{{rl:{zlib.crc32(f'{policy_name}|{key}'.encode()) % STATS_SLOTS}}}"


def _part_tags() -> list[str]:
    return [f"{{rl:{part}}}" for part in range(STATS_SLOTS)]


def state_key(policy: Policy, key: str) -> str:
    """Redis key of the counters of `key` under `policy` (the algorithm is part of it: a policy that
    changes algorithm must not read the other algorithm's hash)."""
    return f"rl:{KEY_VERSION}:{_tag(policy.name, key)}:{policy.name}:{policy.algorithm}:{key}"


def denied_key(minute: int, tag: str, *, shadow: bool = False) -> str:
    """Sorted set of "policy|key" members denied during `minute` (epoch seconds // 60), in part `tag`;
    with `shadow`, the ones a policy in shadow mode would have denied (and admitted)."""
    return f"rl:{KEY_VERSION}:{tag}:{'shadow_' if shadow else ''}denied:{minute}"


def denied_by_policy_key(minute: int, tag: str, *, shadow: bool = False) -> str:
    """Hash of policy name -> number of denials (429s) during `minute`, in part `tag`; with `shadow`,
    of requests a policy in shadow mode would have denied."""
    return f"rl:{KEY_VERSION}:{tag}:{'shadow_' if shadow else ''}denied_by_policy:{minute}"


def _stats_minutes() -> int:
    return int(settings.RESILIENCE_RATELIMIT_STATS_MINUTES)


def _degraded(policy: Policy) -> Decision:
    if policy.fail_mode == "open":
        return Decision(True, policy.limit, None, 0, 0, policy, degraded=True)
    retry_after = random.randint(*FAIL_CLOSED_RETRY_AFTER)
    return Decision(False, policy.limit, None, retry_after, retry_after, policy, degraded=True)


def evaluate(policy: Policy, key: str, *, cost: int = 1, now_ms: int | None = None) -> Decision:
    """Run `policy`'s algorithm for `key` in one Redis call and return the Decision; never raise.

    `cost` is the number of requests this one counts for; 0 peeks without writing anything.
    `now_ms` overrides the Redis server clock, for deterministic tests and replays only; production
    passes None so that every process shares the server's TIME. Raises ValueError for a negative cost.
    """
    return evaluate_with(policy, key, cost=cost, now_ms=now_ms)[0]


def evaluate_with(
    policy: Policy,
    key: str,
    *,
    cost: int = 1,
    now_ms: int | None = None,
    companions: dict | None = None,
    token: str = "",
) -> tuple[Decision, dict | None]:
    """Like `evaluate`, and run `companions` — name -> resilience.redis_fanout.Call, Redis reads the
    view needs anyway, on any server — with all requests in flight together (resilience/redis_fanout.py).
    Returns the Decision and name -> result (or the exception that call raised); None instead when
    the limiter did not ask Redis (state Redis out, fixed-window policy): callers then fetch the usual way.

    A concurrency policy takes a slot named `token` (resilience/ratelimit/concurrency.py, which
    releases it); without a token it peeks. A policy in shadow mode records its denials apart (the
    "would have denied" statistics); the Decision is the one an enforced policy would get."""
    if cost < 0:
        raise ValueError("cost must be >= 0")
    if policy.algorithm == "concurrency" and cost and not token:
        raise ValueError("a concurrency policy takes a slot with resilience.ratelimit.concurrency.acquire")
    if outage.active():
        return _degraded(policy), None
    minute = int(time.time() // 60)  # statistics buckets follow this host's clock; only the limits need Redis'
    if policy.algorithm == "fixed_window":
        return _evaluate_fixed(policy, key, cost=cost, minute=minute), None
    keys, args = _script_input(policy, key, cost=cost, token=token, now_ms=now_ms, minute=minute)
    companions = companions or {}
    results = run_all([script_call(state_redis(), script(policy.algorithm), keys, args), *companions.values()])
    try:
        if isinstance(results[0], Exception):
            raise results[0]
        decision = _parse(policy, results[0])
    except UNAVAILABLE as exc:
        outage.failed(exc)
        return _degraded(policy), None
    except Exception:  # a bug (a script error, say) must not take the request down with it
        logger.exception("rate limiter: check of policy %s failed", policy.name)
        return _degraded(policy), None
    outage.recovered()
    return decision, dict(zip(companions, results[1:], strict=True))


@dataclass(frozen=True)
class Check:
    """One limiter check of a request, for `evaluate_all`: `token` names the slot a concurrency policy
    takes (resilience/ratelimit/concurrency.py)."""

    policy: Policy
    key: str
    token: str = ""


def evaluate_all(
    checks: list[Check], *, companions: dict | None = None, now_ms: int | None = None
) -> tuple[list[Decision], dict | None]:
    """Make `checks` (each counting one request) in order, each only while every one before it admitted
    or denied under a policy in shadow mode; return the Decisions of the checks made (fewer than
    `checks` after an enforced denial, degraded ones included) and the companions' results, as
    `evaluate_with`. Never raises for Redis trouble.

    One Redis call makes them all, with the companions, when every check runs a Lua script and the state
    Redis is one server (chain.lua: atomic, so a check after a denial writes nothing, e.g. takes no
    slot). Otherwise (a fixed-window policy, a Redis Cluster, where the checks' keys are in different
    slots) one call per check, with the same rule; the companions go with the first."""
    if any(check.policy.algorithm == "concurrency" and not check.token for check in checks):
        raise ValueError("a concurrency policy takes a slot with resilience.ratelimit.concurrency.acquire")
    if len(checks) > 1 and not outage.active() and not is_cluster(state_redis()):
        if all(check.policy.algorithm in CHAINED for check in checks):
            return _evaluate_chain(checks, companions or {}, now_ms)
    decisions: list[Decision] = []
    results = None
    for i, check in enumerate(checks):
        decision, sent = evaluate_with(
            check.policy, check.key, token=check.token, now_ms=now_ms, companions=companions if i == 0 else None
        )
        results = sent if i == 0 else results
        decisions.append(decision)
        if _stops(decision):
            break
    return decisions, results


def _evaluate_chain(checks: list[Check], companions: dict, now_ms: int | None) -> tuple[list[Decision], dict | None]:
    minute = int(time.time() // 60)
    keys, args = [], []
    for check in checks:
        check_keys, check_args = _script_input(
            check.policy, check.key, cost=1, token=check.token, now_ms=now_ms, minute=minute
        )
        keys += check_keys
        args += [check.policy.algorithm, "1" if check.policy.mode == "enforce" else "0", *check_args]
    results = run_all([script_call(state_redis(), chain_script(), keys, args), *companions.values()])
    try:
        if isinstance(results[0], Exception):
            raise results[0]
        decisions = [_parse(check.policy, reply) for check, reply in zip(checks, results[0], strict=False)]
    except UNAVAILABLE as exc:
        outage.failed(exc)
    except Exception:  # a bug (a script error, say) must not take the request down with it
        logger.exception("rate limiter: checks of policies %s failed", ", ".join(c.policy.name for c in checks))
    else:
        outage.recovered()
        return decisions, dict(zip(companions, results[1:], strict=True))
    degraded: list[Decision] = []
    for check in checks:  # what one call per check would have answered: each degraded in turn
        degraded.append(_degraded(check.policy))
        if _stops(degraded[-1]):
            break
    return degraded, None


def _stops(decision: Decision) -> bool:
    """Whether `decision` ends a request's checks: a denial its policy enforces."""
    return not decision.allowed and decision.policy.mode == "enforce"


def _script_input(policy: Policy, key: str, *, cost: int, token: str, now_ms: int | None, minute: int):
    """KEYS and ARGV of `policy`'s limiter script for `key` (the header of each .lua file)."""
    if cost == 1 and not token and now_ms is None:  # a request's own check: the same for a key all minute
        memo_key = (policy, key, minute)
        memo = _inputs.get(memo_key)
        if memo is None:
            if len(_inputs) >= _INPUTS_MAX:
                _inputs.clear()
            memo = _inputs[memo_key] = _build_input(policy, key, cost=1, token="", now_ms=None, minute=minute)
        return memo
    return _build_input(policy, key, cost=cost, token=token, now_ms=now_ms, minute=minute)


_INPUTS_MAX = 4096
_inputs: dict[tuple, tuple[list, list]] = {}
"""The script inputs of recent (policy, key, minute): a hot client's checks build the same key names
and arguments (a hash tag, five strings) on every request. Bounded: emptied when full. Never changed
by a caller (run_all copies them into the command it sends)."""


@receiver(setting_changed)
def _forget_inputs(**kwargs):
    _inputs.clear()  # they hold a setting (RESILIENCE_RATELIMIT_STATS_MINUTES)


def _build_input(policy: Policy, key: str, *, cost: int, token: str, now_ms: int | None, minute: int):
    shadow = policy.mode == "shadow"
    tag = _tag(policy.name, key)
    keys = [
        state_key(policy, key),
        denied_key(minute, tag, shadow=shadow),
        denied_by_policy_key(minute, tag, shadow=shadow),
    ]
    args = [
        policy.limit,
        policy.period * 1000,
        (token if cost else "") if policy.algorithm == "concurrency" else cost,
        f"{policy.name}|{key}",
        policy.name,
        _stats_minutes() * 60,
        "" if now_ms is None else int(now_ms),
    ]
    return keys, args


def _parse(policy: Policy, reply) -> Decision:
    allowed, limit, remaining, reset, retry_after = reply
    return Decision(bool(allowed), int(limit), int(remaining), int(reset), int(retry_after), policy)


def _evaluate_fixed(policy: Policy, key: str, *, cost: int, minute: int) -> Decision:
    try:
        allowed, limit, remaining, reset, retry_after = evaluate_fixed(policy, key, cost=min(cost, 1))
        if not allowed and cost:
            # django-ratelimit keeps no statistics: record the denial like the Lua scripts do.
            shadow = policy.mode == "shadow"
            tag = _tag(policy.name, key)
            pipe = state_redis().pipeline(transaction=False)
            pipe.zincrby(denied_key(minute, tag, shadow=shadow), 1, f"{policy.name}|{key}")
            pipe.expire(denied_key(minute, tag, shadow=shadow), _stats_minutes() * 60)
            pipe.hincrby(denied_by_policy_key(minute, tag, shadow=shadow), policy.name, 1)
            pipe.expire(denied_by_policy_key(minute, tag, shadow=shadow), _stats_minutes() * 60)
            pipe.execute()
    except (*UNAVAILABLE, Unavailable, ConnectionInterrupted) as exc:
        outage.failed(exc)
        return _degraded(policy)
    outage.recovered()
    return Decision(allowed, limit, remaining, reset, retry_after, policy)


def check(policy_name: str, key: str, *, cost: int = 1) -> Decision:
    """Count one request (or `cost` requests) of `key` against the named policy and return the Decision.

    Never raises for Redis trouble (see the module docstring); raises LookupError for an unknown
    policy name, which is a programming error.
    """
    return evaluate(get_policy(policy_name), key, cost=cost)


def peek(policy_name: str, key: str) -> Decision:
    """Return what a request of `key` would get now, without counting it; degraded like `check`."""
    return evaluate(get_policy(policy_name), key, cost=0)


def reset_key(policy_name: str, key: str) -> bool:
    """Forget the counters of `key` under the policy; return whether there were any.

    Raises redis' ConnectionError/TimeoutError when the state Redis is unavailable.
    """
    policy = get_policy(policy_name)
    if policy.algorithm == "fixed_window":
        return bool(caches[settings.RATELIMIT_USE_CACHE].delete(counter_key(policy, key)))
    return bool(state_redis().delete(state_key(policy, key)))


def _recent_minutes(minutes: int) -> list[int]:
    now = int(time.time() // 60)
    return [now - i for i in range(max(1, minutes))]


def top_denied(*, minutes: int = 5, count: int = 20) -> list[tuple[str, str, int]]:
    """Return the most denied (policy, key, denials) of the last `minutes` minutes, most first.

    Raises redis' ConnectionError/TimeoutError when the state Redis is unavailable.
    """
    minutes_ = _recent_minutes(minutes)
    pipe = state_redis().pipeline(transaction=False)
    for tag in _part_tags():  # one ZUNION per part: a cluster refuses one over several slots
        pipe.zunion([denied_key(m, tag) for m in minutes_], withscores=True)
    totals: dict[bytes, float] = {}
    for rows in pipe.execute():
        for member, score in rows:
            totals[member] = totals.get(member, 0) + score
    top = sorted(totals.items(), key=lambda row: (-row[1], row[0]))[:count]  # ties: by member, as ZUNION
    result = []
    for member, score in top:
        policy, _, key = member.decode().partition("|")
        result.append((policy, key, int(score)))
    return result


def denied_per_minute(minutes: list[int], *, shadow: bool = False) -> list[dict[str, int]]:
    """Return, for each minute in `minutes` (epoch seconds // 60), policy name -> denials (429s); with
    `shadow`, the requests policies in shadow mode would have denied.

    Raises redis' ConnectionError/TimeoutError when the state Redis is unavailable.
    """
    pipe = state_redis().pipeline(transaction=False)
    for minute in minutes:
        for tag in _part_tags():
            pipe.hgetall(denied_by_policy_key(minute, tag, shadow=shadow))
    replies = pipe.execute()
    per_minute = []
    for i in range(len(minutes)):
        counts: dict[str, int] = {}
        for part in replies[i * STATS_SLOTS : (i + 1) * STATS_SLOTS]:
            for policy, denials in part.items():
                counts[policy.decode()] = counts.get(policy.decode(), 0) + int(denials)
        per_minute.append(counts)
    return per_minute


def denied_counts(*, minutes: int = 5, shadow: bool = False) -> dict[str, int]:
    """Return policy name -> denials (429s) over the last `minutes` minutes; with `shadow`, the
    requests policies in shadow mode would have denied.

    Raises redis' ConnectionError/TimeoutError when the state Redis is unavailable.
    """
    totals: dict[str, int] = {}
    for counts in denied_per_minute(_recent_minutes(minutes), shadow=shadow):
        for policy, denials in counts.items():
            totals[policy] = totals.get(policy, 0) + denials
    return totals
