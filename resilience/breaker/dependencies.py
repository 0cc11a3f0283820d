"""The dependencies an application declares, so their breakers exist (and are listed) from the start.

resilience knows no application: the apps declare what they depend on when they are ready
(`AppConfig.ready`), the generic breaker code reads the declarations.

    declare("redis:cache", group="Redis", description="cache Redis", options={"consecutive_failures": 3})
    declare_provider("webhook:*", group="Webhooks", names=lambda: [...])  # names known at run time

A declaration's options are defaults: RESILIENCE_BREAKERS (options.py) still overrides them.
"""

import fnmatch
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("resilience.breaker")

OTHER = "Other"


@dataclass(frozen=True)
class Dependency:
    name: str
    group: str
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Provider:
    pattern: str
    group: str
    names: Callable[[], Iterable[str]]


_declared: dict[str, Dependency] = {}
_providers: dict[str, Provider] = {}


def declare(name: str, *, group: str, description: str = "", options: dict[str, Any] | None = None) -> None:
    """Declare the breaker `name` (idempotent: a second declaration replaces the first)."""
    _declared[name] = Dependency(name, group, description, dict(options or {}))


def declare_provider(pattern: str, *, group: str, names: Callable[[], Iterable[str]]) -> None:
    """Declare breakers whose names are only known at run time (one per webhook host): `names()` lists
    the current ones when breakers are listed; every breaker matching `pattern` belongs to `group`."""
    _providers[pattern] = Provider(pattern, group, names)


def declared_options(name: str) -> dict[str, Any]:
    dependency = _declared.get(name)
    return dependency.options if dependency is not None else {}


def declared_names() -> set[str]:
    """Declared names and the providers' current ones. A provider that fails (its database is down)
    is logged and skipped: listing breakers must not fail with it."""
    names = set(_declared)
    for provider in list(_providers.values()):
        try:
            names.update(provider.names())
        except Exception as exc:  # a provider's own dependency may be the one that is down
            logger.warning("breaker provider %s failed: %s", provider.pattern, exc)
    return names


def describe(name: str) -> tuple[str, str]:
    """Return (group, description) of a breaker name; undeclared names are in the group "Other"."""
    dependency = _declared.get(name)
    if dependency is not None:
        return dependency.group, dependency.description
    for provider in _providers.values():
        if fnmatch.fnmatchcase(name, provider.pattern):
            return provider.group, ""
    return OTHER, ""
