"""Find breakers by name: configured ones and ones created on the fly (e.g. "webhook:<host>")."""

from .breaker import CircuitBreaker, local_storage, redis_storage
from .dependencies import declared_names
from .options import BreakerOptions, configured_breakers, options_for
from .redis_storage import UNAVAILABLE


def get_breaker(name: str, *, options: BreakerOptions | None = None) -> CircuitBreaker:
    """Return the breaker `name` with its options from RESILIENCE_BREAKERS (read now) unless `options`
    is given. Any name works; state is created on first use. Raises ImproperlyConfigured for invalid
    settings; never touches Redis itself."""
    return CircuitBreaker(name, options or options_for(name))


def all_breakers() -> list[str]:
    """Return every known breaker name, sorted: declared ones (dependencies.py: listed before their
    first use), used ones (the Redis set, or this process's local ones while Redis is down) and
    configured ones (patterns excluded). Never raises for Redis trouble."""
    names = {name for name in configured_breakers() if "*" not in name and "?" not in name and "[" not in name}
    names |= declared_names()
    names |= local_storage.names()
    try:
        names |= redis_storage.names()
    except UNAVAILABLE:
        pass
    return sorted(names)
