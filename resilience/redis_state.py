"""The Redis servers as the code talks to them: one client accessor per role, one Lua script loader,
one definition of "the server cannot answer".

The state Redis (noeviction, AOF) holds what must not be lost: the limiter and breaker state, the
write-behind buffer, idempotency records (and, unless it is a cluster, the Celery broker). The cache
Redis (allkeys-lru, no persistence) holds what can be rebuilt. Both are django-redis aliases
("state", "default").

The state Redis is one server, a Sentinel-managed master, or a Redis Cluster
(project/settings/caches.py picks one from the environment). On a cluster `state_redis()` is redis-py's
RedisCluster: every key name used in one Lua script or one multi-key command carries the same hash tag
(`{...}`), so the call touches one slot; the module that owns each key spells its tag. Two things a
cluster client cannot do on its own are here: run a command and WAIT on the same master connection
(`run_and_wait`), and visit every master (`masters`, for SCAN).
"""

import functools
import os
import threading
from pathlib import Path

from django.core.signals import setting_changed
from django.dispatch import receiver
from django_redis import get_redis_connection
from django_redis.pool import ConnectionFactory
from redis import Redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import AskError, ClusterDownError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

STATE_ALIAS = "state"
CACHE_ALIAS = "default"
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError, TryAgainError, RedisClusterException)
"""Errors that mean "the server cannot answer", as opposed to a bug in a script or a call. The cluster
ones: CLUSTERDOWN (a master failed and no replica took over yet), TRYAGAIN (a slot is moving), and
redis-py's own RedisClusterException (no node reachable, no node known for a slot); none of them ran
the command. A CROSSSLOT reply from the server is a ResponseError: a bug, not an outage."""
NOT_RUN = (ClusterDownError, TryAgainError, AskError, RedisClusterException)
"""Cluster answers that say the command was not run (AskError covers MOVED): safe to run it elsewhere."""

_scripts: dict[tuple[str, Path, tuple[Path, ...], str], Script] = {}
_lock = threading.Lock()


_state_client: Redis | RedisCluster | None = None


def state_redis() -> Redis | RedisCluster:
    """The raw redis-py client of the state Redis (no key prefix is applied): a RedisCluster when
    REDIS_STATE_CLUSTER_NODES is set.

    One client for the process: django-redis builds one per thread (its cache objects are
    thread-local), all on the same connection pool, and a redis-py client is thread-safe; looking
    the thread's up costs more than a limiter check's own Python on the hottest read."""
    global _state_client
    client = _state_client
    if client is None:
        client = _state_client = get_redis_connection(STATE_ALIAS)
    return client


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)


@functools.cache
def lua_path(directory: Path, name: str) -> Path:
    """`directory`/`name`.lua, built once: scripts are looked up on every request, and building a Path
    costs more than the look-up."""
    return directory / f"{name}.lua"


def lua_script(path: Path, *, alias: str = STATE_ALIAS, include: tuple[Path, ...] = (), prelude: str = "") -> Script:
    """The script in `path`, preceded by `prelude` (Lua source the caller builds, e.g. constants whose one
    definition is in Python) and the files in `include` (shared Lua functions), registered with the
    `alias` server's client (read from disk once per process). redis-py runs it with EVALSHA and falls
    back to SCRIPT LOAD when the server forgot it (after a restart, say; on a cluster, SCRIPT LOAD goes
    to every master)."""
    key = (alias, path, include, prelude)
    script = _scripts.get(key)
    if script is None:
        with _lock:
            script = _scripts.get(key)
            if script is None:
                source = prelude + "".join(part.read_text() for part in (*include, path))
                script = get_redis_connection(alias).register_script(source)
                _scripts[key] = script
    return script


@receiver(setting_changed)
def _forget_clients(*, setting, **kwargs):
    # New CACHES (a test pointing "state" at a cluster) mean new clients, and a script is registered with one.
    global _state_client
    if setting == "CACHES":
        _scripts.clear()
        _state_client = None


def run_and_wait(client, script: Script, *, keys: list, args: list, replicas: int, timeout_ms: int) -> tuple:
    """Run `script` and then WAIT for `replicas` replicas on the same connection, in one round trip.
    Return (the script's reply, how many replicas confirmed).

    WAIT counts the writes of its own connection, so on a cluster both go to the master that owns
    `keys[0]`'s slot over one of that master's connections (WAIT there counts that master's replicas).
    A MOVED or ASK answer (the slot changed hands: nothing was run) refreshes the slot table and the
    call is made once more; a connection error refreshes it too (the next call finds the new master)
    and is raised."""
    for attempt in (1, 2):
        target = client
        if is_cluster(client):
            target = client.get_redis_connection(client.get_node_from_key(keys[0]))
        pipe = target.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        try:
            return tuple(pipe.execute())
        except AskError:
            if not is_cluster(client) or attempt == 2:
                raise
            client.nodes_manager.initialize()
        except (RedisConnectionError, RedisTimeoutError):
            if is_cluster(client):
                client.nodes_manager.initialize()
            raise
    raise AssertionError("unreachable")


def masters(client) -> list[Redis]:
    """A plain client per master: the one server, or every primary of a cluster (SCAN and KEYS see
    only the node they are sent to)."""
    if not is_cluster(client):
        return [client]
    return [client.get_redis_connection(node) for node in client.get_primaries()]


class ClusterConnectionFactory(ConnectionFactory):
    """django-redis connection factory for the "state" alias on a Redis Cluster (OPTIONS CLUSTER_NODES,
    [(host, port), ...]): one RedisCluster per process, whatever URL django-redis passes.

    No automatic retry (redis-py's cluster client retries a timed-out command by default, which could
    run a script twice): a connection error refreshes the slot table and is raised, and the caller's
    own "state Redis down" answer applies until the cluster has failed over. MOVED is still followed."""

    _clients: dict[tuple, RedisCluster] = {}

    def connect(self, url: str) -> RedisCluster:
        nodes = tuple(tuple(node) for node in self.options["CLUSTER_NODES"])
        key = (os.getpid(), nodes)
        client = self._clients.get(key)
        if client is None:
            client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                socket_timeout=self.options.get("SOCKET_TIMEOUT"),
                socket_connect_timeout=self.options.get("SOCKET_CONNECT_TIMEOUT"),
                retry=Retry(NoBackoff(), 0),
                max_connections=self.pool_cls_kwargs.get("max_connections", 100),
            )
            self._clients[key] = client
        return client

    def disconnect(self, connection: RedisCluster) -> None:
        connection.close()
