"""Parse PostgreSQL URLs into Django DATABASES entries.

Unlike dj-database-url this keeps libpq multi-host URLs
(`postgresql://h1:5432,h2:5432/db?target_session_attrs=read-write`), so that a promoted replica is
found after a failover: the hosts and ports are passed to libpq as comma-separated lists.
"""

from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

# libpq parameters passed through from the query string into OPTIONS.
_PASSTHROUGH = {
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "target_session_attrs",
    "application_name",
    "connect_timeout",
    "options",
    "keepalives",
    "keepalives_idle",
}


def parse_database_url(url: str, *, conn_max_age: int = 60, connect_timeout: int = 2) -> dict:
    """Return a Django database settings dict for a postgres:// or postgresql:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(f"Unsupported database URL scheme {parts.scheme!r} in {url!r}.")
    netloc = parts.netloc
    userinfo, _, hostlist = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    hosts, ports = [], []
    for hostport in hostlist.split(","):
        host, _, port = hostport.partition(":")
        hosts.append(unquote(host) or "127.0.0.1")
        ports.append(port or "5432")
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ImproperlyConfigured(f"The database URL {url!r} names no database.")
    options = {"connect_timeout": connect_timeout}
    for key, value in parse_qsl(parts.query):
        if key not in _PASSTHROUGH:
            raise ImproperlyConfigured(f"Unknown parameter {key!r} in database URL {url!r}.")
        options[key] = value
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(user),
        "PASSWORD": unquote(password),
        "HOST": ",".join(hosts),
        "PORT": ",".join(ports),
        "CONN_MAX_AGE": conn_max_age,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": options,
    }
