"""The one place that decides which database alias serves a read or a write.

Pure functions of the group topology (settings.DATABASE_GROUPS), the context's pinning state and the
replica monitor's verdicts. Writes always go to the group's primary; reads go to a usable replica
unless the context must read its own writes, is inside a transaction on the primary, or no replica
is usable.
"""

import itertools
import logging

from django.conf import settings
from django.db import connections

from . import pinning
from .replicas import monitor

logger = logging.getLogger(__name__)
_round_robin = itertools.count()


def primary_alias(group: str) -> str:
    return settings.DATABASE_GROUPS[group]["primary"]


def write_alias(group: str) -> str:
    """Return the primary of `group` and pin the context's reads to primaries (read-your-writes)."""
    pinning.note_write()
    return primary_alias(group)


def read_alias(group: str) -> str:
    """Return the alias a read on `group` should use now."""
    spec = settings.DATABASE_GROUPS[group]
    primary = spec["primary"]
    if not spec["replicas"] or pinning.must_use_primary() or connections[primary].in_atomic_block:
        return primary
    usable = monitor.usable(spec["replicas"])
    if not usable:
        return primary
    return usable[next(_round_robin) % len(usable)]


def group_of_alias(alias: str) -> str:
    for name, spec in settings.DATABASE_GROUPS.items():
        if alias == spec["primary"] or alias in spec["replicas"]:
            return name
    raise KeyError(alias)
