"""HTTP side of rate limiting: the client's address, the key a policy counts by, response headers."""

import hashlib
import ipaddress
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from .limiter import Decision
from .policies import get_policy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
USERNAME_MAX = 150
USERNAME_KINDS = ("ip+username", "username")  # key kinds that count a submitted username


@lru_cache(maxsize=8)
def _networks(trusted: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in trusted)
    except ValueError as exc:
        raise ImproperlyConfigured(f"RESILIENCE_TRUSTED_PROXIES: {exc}") from exc


def trusted_proxies() -> tuple[IPNetwork, ...]:
    """Return `RESILIENCE_TRUSTED_PROXIES` (IPs or CIDRs, default none) as networks, read at call time."""
    return _networks(tuple(settings.RESILIENCE_TRUSTED_PROXIES or ()))


@lru_cache(maxsize=4096)  # addresses repeat; ip_address() is costly next to a request
def _parse(value: str) -> IPAddress | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "203.0.113.7:51234"
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def from_trusted_proxy(request: HttpRequest) -> bool:
    """Whether `request` came straight from one of `RESILIENCE_TRUSTED_PROXIES` (whose headers we believe)."""
    remote = _parse(request.META.get("REMOTE_ADDR", ""))
    return remote is not None and any(remote in network for network in trusted_proxies())


def client_ip(request: HttpRequest) -> str:
    """Return the address of the client that sent `request`.

    REMOTE_ADDR is the answer unless it is one of `RESILIENCE_TRUSTED_PROXIES`; then the answer is the
    right-most address in X-Forwarded-For that is not a trusted proxy. Addresses left of it were
    written by the client and are ignored, so a client cannot choose its address by sending the
    header. A malformed hop stops the walk at the last trusted proxy (requests then share that
    proxy's limit: wrong in the safe direction).
    """
    remote_raw = request.META.get("REMOTE_ADDR", "")
    remote = _parse(remote_raw)
    if remote is None:
        return remote_raw
    networks = trusted_proxies()
    if not any(remote in network for network in networks):
        return _text(remote)
    nearest = remote
    for hop in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        if not hop.strip():
            continue
        address = _parse(hop)
        if address is None:
            break
        if not any(address in network for network in networks):
            return str(address)
        nearest = address
    return str(nearest)


@lru_cache(maxsize=4096)  # as _parse: formatting an address costs more than the look-up
def _text(address: IPAddress) -> str:
    return str(address)


@lru_cache(maxsize=4096)
def address_key(ip: str) -> str:
    """Key of a client address; an IPv6 client is keyed by its /64, which one host usually owns whole."""
    address = _parse(ip)
    if isinstance(address, ipaddress.IPv6Address):
        return f"ip:{ipaddress.ip_network(f'{address}/64', strict=False)}"
    return f"ip:{ip if address is None else address}"


def ip_key(request: HttpRequest) -> str:
    """Key of the client address of `request` (see `address_key`)."""
    return address_key(client_ip(request))


def _bearer_token(request: HttpRequest) -> str | None:
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() in ("bearer", "token") and token.strip():
        return token.strip()
    return None


def _case_folded(username: str) -> str:
    return username.strip().casefold()


# The identity a submitted username is counted under. The domain registers the one its accounts are
# compared by (users/apps.py), so that every spelling of one account's name (composed or decomposed
# accents, letter case, full-width letters) is one counter for the limiter and for the dashboard's
# lookup alike.
_username_identity: Callable[[str], str] = _case_folded


def register_username_identity(identity: Callable[[str], str]) -> None:
    """Count a submitted username under `identity(username)` (trimmed and case-folded until then)."""
    global _username_identity
    _username_identity = identity


def username_key(username: str | None) -> str:
    """Key part of a submitted username: its registered identity, bounded, and always encodable (a lone
    surrogate from a JSON body must not make the Redis client raise)."""
    folded = _username_identity(username or "")[:USERNAME_MAX]
    return "username:" + folded.encode("utf-8", "backslashreplace").decode("utf-8")


def request_key(policy_name: str, request: HttpRequest, *, username: str | None = None, anonymous=False) -> str:
    """Return the key `request` is counted by under the named policy's key kind.

        "ip": the client address. "user" and "user_or_ip": the authenticated user's id, else the address
        (an anonymous request is never unlimited). "ip+username": the address plus the submitted
        `username`, case-folded; "username": the submitted username alone (every address guessing one
    account shares it). "token": a hash of the Authorization bearer token (never the token
        itself), else the address. `anonymous`: the caller sent no credentials, so `request.user` (and
        with it the session) is not looked at.
    """
    kind = get_policy(policy_name).key_kind
    if kind in ("user", "user_or_ip"):
        user: Any = None if anonymous else getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return f"user:{user.pk}"
        return ip_key(request)
    if kind == "ip+username":
        return f"{ip_key(request)}|{username_key(username)}"
    if kind == "username":
        return username_key(username)
    if kind == "token":
        token = _bearer_token(request)
        if token:
            return token_key(token)
    return ip_key(request)


def token_key(token: str) -> str:
    """Key of a bearer token: a hash, never the token itself."""
    return f"token:{hashlib.sha256(token.encode()).hexdigest()[:32]}"


def keys_for(
    policy_name: str,
    *,
    ip: str | None,
    user_id: int | None = None,
    username: str | None = None,
    token: str | None = None,
) -> list[str]:
    """Every key a request from `ip`, by `user_id`, for `username` or with `token` may be counted by
    under the named policy: what `request_key` builds for such requests (the admin's lookup)."""
    kind = get_policy(policy_name).key_kind
    keys = []
    if kind in ("user", "user_or_ip") and user_id:
        keys.append(f"user:{user_id}")
    if kind == "token" and token:
        keys.append(token_key(token))
    if kind == "username" and username:
        keys.append(username_key(username))
    if ip and kind in ("ip", "user_or_ip", "token", "user"):
        keys.append(address_key(ip))
    if ip and kind == "ip+username":
        keys.append(f"{address_key(ip)}|{username_key(username)}")
    return keys


def headers(decision: Decision) -> dict[str, str]:
    """Return the IETF draft rate-limit headers for `decision`, plus Retry-After when it is a denial.

    `RateLimit` is left out when the state Redis is down and the remaining quota is unknown.
    """
    result = {"RateLimit-Policy": f"{decision.limit};w={decision.policy.period}"}
    if decision.remaining is not None:
        result["RateLimit"] = f"limit={decision.limit}, remaining={decision.remaining}, reset={decision.reset}"
    if not decision.allowed:
        result["Retry-After"] = str(max(1, decision.retry_after))
    return result
