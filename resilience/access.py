"""Who may read operational details (/metrics, /health/ready's details): staff sessions,
`Authorization: Bearer <METRICS_TOKEN>` when that setting is set, and clients whose address is in
METRICS_ALLOWED_IPS (addresses or networks; default loopback only). Behind a reverse proxy on the same
host, list the proxy in RESILIENCE_TRUSTED_PROXIES (or set METRICS_ALLOWED_IPS to []), or every
proxied request would look local."""

import hmac
import ipaddress
import logging

from django.conf import settings

from .ratelimit.http import client_ip

logger = logging.getLogger(__name__)


def _address_allowed(address: str) -> bool:
    allowed_ips = settings.METRICS_ALLOWED_IPS or []
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed_ips:
        try:
            if client in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            logger.warning("METRICS_ALLOWED_IPS: %r is not an address or network", entry)
    return False


def operator_allowed(request) -> bool:
    """Whether `request` may read operational details (metrics, health details): a matching bearer
    token, a staff session, or an allowed client address (resolved like the rate limiter does,
    honouring RESILIENCE_TRUSTED_PROXIES)."""
    token = settings.METRICS_TOKEN
    scheme, _, presented = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), str(token).encode()):
        return True
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True
    return _address_allowed(client_ip(request))
