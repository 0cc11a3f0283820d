"""Database topology from the environment: a default group and N shard groups.

A group is a primary plus zero or more replicas. Aliases: `default`, `default_r0`, ...; shard groups
`shard_0`, `shard_0_r0`, ... The routing code reads DATABASE_GROUPS, never the aliases' names.

  DATABASE_URL            default primary
  DATABASE_REPLICA_URLS   default replicas, space-separated
  SHARD_DATABASE_URLS     one primary per shard, space-separated (libpq multi-host URLs keep commas)
  SHARD_REPLICA_URLS      one entry per shard, space-separated; '|' separates several replicas of a
                          shard, '-' means none
  DATABASE_SYNC_REPLICAS  host:port of the replica servers that are synchronous standbys of their
                          primary (listed in its synchronous_standby_names), space-separated: writes
                          then commit with remote_apply and their authors read them there at once

Locally each group has two replicas: `_r0` on the asynchronous standby, `_r1` on the synchronous one.
"""

from django.core.exceptions import ImproperlyConfigured

from .dburl import parse_database_url
from .env import env


def _local_url(port_var: str, default_port: int, name: str) -> str:
    port = env(port_var, default_port, int)
    return f"postgresql://bulwark@127.0.0.1:{port}/{name}"


def build_databases(*, db_prefix: str, shard_count_default: int = 2):
    """Return (DATABASES, DATABASE_GROUPS, SHARD_GROUPS).

    Without URLs in the environment the local stack's defaults are used (`db_prefix` names its
    databases), so `make run` and `make test` need no configuration.
    """
    local_shards = env("SHARD_COUNT", shard_count_default, int)
    primary_url = env("DATABASE_URL", _local_url("BULWARK_PG_PORT", 55432, db_prefix))
    local_replica_ports = [("BULWARK_PG_REPLICA_PORT", 55433), ("BULWARK_PG_SYNC_REPLICA_PORT", 55434)]
    replica_urls = env(
        "DATABASE_REPLICA_URLS",
        [_local_url(var, port, db_prefix) for var, port in local_replica_ports],
        list,
    )
    shard_urls = env(
        "SHARD_DATABASE_URLS",
        [_local_url("BULWARK_PG_PORT", 55432, f"{db_prefix}_shard_{i}") for i in range(local_shards)],
        list,
    )
    shard_replica_specs = env(
        "SHARD_REPLICA_URLS",
        [
            "|".join(_local_url(var, port, f"{db_prefix}_shard_{i}") for var, port in local_replica_ports)
            for i in range(len(shard_urls))
        ],
        list,
    )
    sync_servers = set(
        env("DATABASE_SYNC_REPLICAS", [f"127.0.0.1:{env('BULWARK_PG_SYNC_REPLICA_PORT', 55434, int)}"], list)
    )
    if len(shard_replica_specs) != len(shard_urls):
        raise ImproperlyConfigured(
            "SHARD_REPLICA_URLS must have one entry per shard in SHARD_DATABASE_URLS ('-' for none)."
        )
    if not shard_urls:
        raise ImproperlyConfigured("SHARD_DATABASE_URLS names no shard database.")

    databases, groups = {}, {}

    def add_group(name, url, replicas):
        databases[name] = parse_database_url(url)
        replica_aliases, sync_aliases = [], []
        for i, replica_url in enumerate(replicas):
            alias = f"{name}_r{i}"
            databases[alias] = parse_database_url(replica_url)
            # Tests never create or flush a replica: it receives what the primary writes.
            databases[alias]["TEST"] = {"MIRROR": name}
            replica_aliases.append(alias)
            if f"{databases[alias]['HOST']}:{databases[alias]['PORT']}" in sync_servers:
                sync_aliases.append(alias)
        groups[name] = {"primary": name, "replicas": replica_aliases, "sync_replicas": sync_aliases}

    add_group("default", primary_url, replica_urls)
    shard_groups = []
    for i, (url, spec) in enumerate(zip(shard_urls, shard_replica_specs, strict=True)):
        replicas = [] if spec == "-" else spec.split("|")
        add_group(f"shard_{i}", url, replicas)
        shard_groups.append(f"shard_{i}")
    return databases, groups, shard_groups
