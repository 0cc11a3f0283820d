"""Rate limiting for DRF views and plain Django views, answering 429 with the project's error JSON,
Retry-After and the IETF RateLimit headers on every limited response; and the concurrent-requests
limit of DRF views (a slot taken after the rate checks, in the same state-Redis call, and given back
when the response is closed).

A policy in shadow mode decides and counts but refuses nothing (resilience/shadow.py); one that is
"off" is not asked at all."""

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from django.conf import settings
from django.http import JsonResponse
from rest_framework.exceptions import ParseError

from resilience.redis_fanout import run_all

from .. import shadow
from ..errors import ApiError, error_body
from ..metrics import count_decision
from . import concurrency
from .http import USERNAME_KINDS, headers, request_key
from .limiter import Check, check, evaluate_all, evaluate_with
from .policies import get_policy

READ_METHODS = {"GET", "HEAD", "OPTIONS"}
logger = logging.getLogger("resilience.ratelimit")


def log_denial(decision, key: str) -> None:
    """One line per denied request, naming the policy and the key (the log filter adds the request
    id): who was limited, and by what, without a Redis lookup. `key` is an address, a user id, a
    case-folded username or a token's hash, never a secret (resilience/ratelimit/http.py)."""
    logger.info(
        "rate limited: policy=%s key=%s retry_after=%ss%s",
        decision.policy.name,
        key,
        decision.retry_after,
        " [degraded]" if decision.degraded else "",
        extra={"policy": decision.policy.name, "key": key},
    )


@dataclass(frozen=True)
class CompanionResults:
    """What the companions sent with the limiter's call (see RateLimitedApiMixin) answered.

    `ran` is False when they were not run (the state Redis is out, or the policy's algorithm does not
    ask Redis): the view then fetches the usual way. Otherwise `get(name)` is that call's result, or the
    exception it raised, to be handed to the code that would have made the call.
    """

    results: Mapping[str, object] | None = None

    def __post_init__(self):
        if self.results is not None:  # read-only, like the rest of the object
            object.__setattr__(self, "results", MappingProxyType(self.results))

    @property
    def ran(self) -> bool:
        return self.results is not None

    def get(self, name: str, default=None):
        """The result (or exception) of the companion `name`; `default` when it did not run or was not sent."""
        return default if self.results is None else self.results.get(name, default)


NOT_RUN = CompanionResults()


class RateLimitedApiMixin:
    """Mix into an APIView. `rate_limits` maps an HTTP method to a policy name, or to a tuple of names
    when one request counts against several policies (the first one's headers go on the response);
    methods not listed use `api.read` (safe methods) or `api.write`. `rate_limit_username(request)`
    supplies the username for ip+username and username policies.

    `concurrency_policy` names a concurrency policy (e.g. "api.concurrent") every request of the view
    takes a slot of once its rate checks passed; the slot is given back when the response is closed
    (after a streamed body is sent), or when the view raises."""

    rate_limits: dict[str, str | tuple[str, ...]] = {}
    concurrency_policy: str | None = None
    _concurrency_slot: concurrency.Slot | None = None

    def rate_limit_policies(self, request) -> tuple[str, ...]:
        names = self.rate_limits.get(request.method) or ("api.read" if request.method in READ_METHODS else "api.write")
        return (names,) if isinstance(names, str) else tuple(names)

    def rate_limit_policy(self, request) -> str:
        return self.rate_limit_policies(request)[0]

    def rate_limit_username(self, request) -> str | None:
        data = request.data
        value = data.get("username") if isinstance(data, dict) else None
        return value if isinstance(value, str) else None

    def rate_limit_companions(self, request) -> dict:
        """Redis calls the view will need, name -> resilience.redis_fanout.Call: they go out
        together with the limiter's call (one network wait for all). The view finds their results in
        `request.companion_results`, a CompanionResults (`ran` False when they were not run: the state
        Redis is out; the view then fetches the usual way)."""
        return {}

    def check_throttles(self, request):
        super().check_throttles(request)
        names = self.rate_limit_policies(request)
        parse_error = None

        def key_for(name):
            nonlocal parse_error
            username = None
            if get_policy(name).key_kind in USERNAME_KINDS:
                try:
                    username = self.rate_limit_username(request)
                except ParseError as exc:
                    # An unparseable body is still counted (under no username) before it is refused:
                    # otherwise a malformed login is never rate limited.
                    parse_error = exc
            return request_key(name, request, username=username)

        # A denial raises here, its RateLimit headers on the error (a concurrency denial's: the limit that
        # refused); an admission's go on in finalize_response.
        request.rate_limit_decision, request.companion_results, self._concurrency_slot = admit_all(
            names, key_for, self.rate_limit_companions(request), concurrency_policy=self.concurrency_policy
        )
        if parse_error is not None:
            raise parse_error

    def dispatch(self, request, *args, **kwargs):
        try:
            response = super().dispatch(request, *args, **kwargs)
        except BaseException:
            self._release_slot()
            raise
        if self._concurrency_slot is not None:
            # Django calls these when the server has sent the whole body and closes the response:
            # a streamed response keeps its slot until its last byte (Django's own FileResponse uses it).
            response._resource_closers.append(self._release_slot)
        return response

    def _release_slot(self) -> None:
        slot, self._concurrency_slot = self._concurrency_slot, None
        if slot is not None:
            slot.release()

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        decision = getattr(request, "rate_limit_decision", None)
        if decision is not None:
            for name, value in headers(decision).items():
                response[name] = value
        return response


def admit(policy_name: str, key, companions: dict) -> tuple[object, CompanionResults]:
    """Count one request against the named policy, with `companions` (see RateLimitedApiMixin) in
    flight together. `key()` gives the key it counts under; it is not called when limiting is off.
    Return the Decision (None when limiting is off) and the companions' CompanionResults. Raise
    ApiError 429, with Retry-After and the RateLimit headers, when denied. A policy in shadow mode
    never raises and returns no Decision (its headers would tell the client about a limit that does
    not apply); one that is "off" is not asked."""
    policy = get_policy(policy_name)
    if not settings.RESILIENCE_RATELIMIT_ENABLED or policy.mode == "off":
        return None, CompanionResults(dict(zip(companions, run_all(list(companions.values())), strict=True)))
    counted_key = key()
    decision, results = evaluate_with(policy, counted_key, companions=companions)
    _enforce(decision, counted_key, *_RATE_DENIAL)
    return (decision if policy.mode == "enforce" else None), CompanionResults(results)


def admit_all(
    policy_names: tuple[str, ...], key, companions: dict, *, concurrency_policy: str | None = None
) -> tuple[object, CompanionResults, concurrency.Slot | None]:
    """Count one request against each named policy (`policy_names[1:]` first, then `policy_names[0]`,
    whose Decision is returned for the response's headers), then take a slot of `concurrency_policy`:
    each only once those before it admitted, as calling `admit` for each and then taking the slot would,
    but in one state-Redis call with `companions` (limiter.evaluate_all) — one network wait, and atomic,
    so a rate-limited request never holds a slot. `key(name)` gives the key counted under each policy;
    policies that are "off" are skipped (their key not asked). Return (that Decision or None as `admit`,
    the companions' CompanionResults, the Slot or None); the caller releases the Slot. Raise ApiError
    429, with Retry-After and the RateLimit headers of the policy that denied, for the first denial a
    policy enforces."""
    enabled = settings.RESILIENCE_RATELIMIT_ENABLED
    checks: list[Check] = []
    main = None  # the index of policy_names[0]'s check
    for name in (*policy_names[1:], policy_names[0]):
        policy = get_policy(name)
        if enabled and policy.mode != "off":
            main = len(checks) if name == policy_names[0] else main
            checks.append(Check(policy, key(name)))
    if concurrency_policy is not None and enabled and get_policy(concurrency_policy).mode != "off":
        checks.append(concurrency.check(get_policy(concurrency_policy), key(concurrency_policy)))
    if not checks:
        return None, CompanionResults(dict(zip(companions, run_all(list(companions.values())), strict=True))), None
    decisions, results = evaluate_all(checks, companions=companions)
    # Taken only if every check before it admitted: the last check, and it was made.
    slot = concurrency.slot(checks[-1], decisions[-1]) if checks[-1].token and len(decisions) == len(checks) else None
    try:
        for made, decision in zip(checks, decisions, strict=False):
            kind, message = _CONCURRENCY_DENIAL if made.token else _RATE_DENIAL
            _enforce(decision, made.key, kind, message)
    except BaseException:
        if slot is not None:  # not reached (a denial ends the checks before the slot), but never leak one
            slot.release()
        raise
    # Reached only when every check admitted (or denied in shadow mode): policy_names[0]'s was made.
    decision = None if main is None else decisions[main]
    return (
        (decision if decision is not None and decision.policy.mode == "enforce" else None),
        (CompanionResults(results)),
        slot,
    )


_RATE_DENIAL = ("ratelimit", "Too many requests; retry after the time in Retry-After.")
_CONCURRENCY_DENIAL = ("concurrency", "Too many requests in flight; retry after the time in Retry-After.")


def _enforce(decision, counted_key: str, kind: str, message: str) -> None:
    """Count `decision`; raise the 429 of a denial unless its policy is in shadow mode."""
    count_decision(decision)
    policy = decision.policy
    if shadow.refuses(kind=kind, name=policy.name, mode=policy.mode, denied=not decision.allowed, key=counted_key):
        log_denial(decision, counted_key)
        raise ApiError(429, message, "rate_limited", headers=headers(decision))


def rate_limited_view(policy_name: str, *, methods=("POST",)):
    """Decorate a Django view (e.g. the admin login): requests with `methods` count against the
    policy; a denied one gets 429 with Retry-After and the RateLimit headers."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            mode = get_policy(policy_name).mode
            if request.method not in methods or not settings.RESILIENCE_RATELIMIT_ENABLED or mode == "off":
                return view(request, *args, **kwargs)
            counted_key = request_key(policy_name, request)
            decision = check(policy_name, counted_key)
            count_decision(decision)
            denied = not decision.allowed
            if shadow.refuses(kind="ratelimit", name=policy_name, mode=mode, denied=denied, key=counted_key):
                log_denial(decision, counted_key)
                response = JsonResponse(error_body("Too many attempts; retry later.", "rate_limited"), status=429)
            else:
                response = view(request, *args, **kwargs)
                if mode == "shadow":
                    return response
            for name, value in headers(decision).items():
                response[name] = value
            return response

        return wrapper

    return decorator
