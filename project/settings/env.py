"""The one place settings read the environment.

Every variable the project reads goes through `env()`, so the README's table of variables can be
checked against a single grep.
"""

import os

from django.core.exceptions import ImproperlyConfigured

_MISSING = object()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env(name: str, default=_MISSING, cast=str):
    """Return the environment variable `name` cast with `cast`.

    Raise ImproperlyConfigured naming the variable when it is unset and has no default, or when it
    cannot be cast.
    """
    raw = os.environ.get(name)
    if raw is None:
        if default is _MISSING:
            raise ImproperlyConfigured(f"Set the environment variable {name} (see README.md).")
        return default
    if cast is bool:
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false).")
    if cast is list:
        return raw.split()
    try:
        return cast(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is invalid: {exc}") from exc
