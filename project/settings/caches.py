"""Two Redis roles: an evictable cache, and a state Redis (noeviction, AOF) for the Celery broker,
the write-behind buffer, rate-limit and circuit state. Eviction in the cache can never drop work.

Timeouts are short on purpose: a hung Redis must cost a request a fraction of a second, not hang it.

The state Redis can be found through Redis Sentinel (REDIS_STATE_SENTINELS): the "state" alias then
asks the Sentinels for the current master on every new connection (django-redis'
SentinelConnectionFactory, set for that alias only), and the Celery broker uses kombu's sentinel://
transport. Every command goes to the master: the state must read its own writes, which an
asynchronously replicated replica cannot promise.

Or the state Redis is a Redis Cluster (REDIS_STATE_CLUSTER_NODES, a few of its nodes as host:port):
the "state" alias is then redis-py's RedisCluster (resilience/redis_state.py's connection factory),
which finds every master itself and follows failovers. Celery's broker cannot live on a cluster
(kombu has no cluster transport): CELERY_BROKER_URL must then name a single Redis or RabbitMQ.
The three modes are chosen here, in `state_mode`, and nowhere else.
"""

from django.core.exceptions import ImproperlyConfigured

from .env import env


def state_sentinels() -> tuple[list[tuple[str, int]], str]:
    """Return the state Redis' Sentinels as [(host, port), ...] and the master name they monitor.

    The list is empty when REDIS_STATE_SENTINELS is unset (the state Redis is REDIS_STATE_URL). Raise
    ImproperlyConfigured for an entry that is not host:port.
    """
    return _host_ports("REDIS_STATE_SENTINELS"), env("REDIS_STATE_SENTINEL_MASTER", "bulwark-state")


def state_cluster_nodes() -> list[tuple[str, int]]:
    """Return REDIS_STATE_CLUSTER_NODES as [(host, port), ...] (empty when unset)."""
    return _host_ports("REDIS_STATE_CLUSTER_NODES")


def state_mode() -> str:
    """ "single", "sentinel" or "cluster": how the state Redis is reached. Raise ImproperlyConfigured
    when both REDIS_STATE_SENTINELS and REDIS_STATE_CLUSTER_NODES are set."""
    sentinels, _ = state_sentinels()
    cluster = state_cluster_nodes()
    if sentinels and cluster:
        raise ImproperlyConfigured("Set REDIS_STATE_SENTINELS or REDIS_STATE_CLUSTER_NODES, not both.")
    return "sentinel" if sentinels else "cluster" if cluster else "single"


def _host_ports(name: str) -> list[tuple[str, int]]:
    pairs = []
    for entry in env(name, [], list):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise ImproperlyConfigured(f"{name}: {entry!r} is not host:port.")
        pairs.append((host, int(port)))
    return pairs


def build_caches(*, redis_db: int):
    cache_url = env("REDIS_CACHE_URL", f"redis://127.0.0.1:{env('BULWARK_REDIS_CACHE_PORT', 56379, int)}/{redis_db}")
    mode = state_mode()
    sentinels, master_name = state_sentinels()
    if mode == "sentinel":  # django-redis' Sentinel pool reads the master name from the URL's host part
        state_url = f"redis://{master_name}/{redis_db}"
    elif mode == "cluster":  # a cluster has one database; the URL only names a node (the factory ignores it)
        host, port = state_cluster_nodes()[0]
        state_url = f"redis://{host}:{port}/0"
    else:
        state_port = env("BULWARK_REDIS_STATE_PORT", 56380, int)
        state_url = env("REDIS_STATE_URL", f"redis://127.0.0.1:{state_port}/{redis_db}")
    socket_timeout = env("REDIS_SOCKET_TIMEOUT", 0.25, float)

    def redis_cache(url, key_prefix):
        return {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": key_prefix,
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": socket_timeout,
                "SOCKET_TIMEOUT": socket_timeout,
                "CONNECTION_POOL_KWARGS": {"max_connections": 100, "retry_on_timeout": False},
            },
        }

    caches = {"default": redis_cache(cache_url, "bw"), "state": redis_cache(state_url, "bws")}
    if mode == "cluster":
        caches["state"]["OPTIONS"].update(
            CONNECTION_FACTORY="resilience.redis_state.ClusterConnectionFactory", CLUSTER_NODES=state_cluster_nodes()
        )
    if mode == "sentinel":
        # Per alias, not DJANGO_REDIS_CONNECTION_FACTORY: the cache Redis has no Sentinel. DefaultClient
        # rather than django-redis' SentinelClient, which would send cache reads to a replica. The
        # Sentinels are asked with the same timeouts and without redis-py's default retries (10, with
        # backoff): with no Sentinel answering, those cost every state call about 4 s, not 0.25 s.
        caches["state"]["OPTIONS"].update(
            CONNECTION_FACTORY="django_redis.pool.SentinelConnectionFactory",
            # Connections that check that the server named master is one (resilience/sentinel.py).
            CONNECTION_POOL_CLASS="resilience.sentinel.SentinelConnectionPool",
            SENTINELS=sentinels,
            SENTINEL_KWARGS={"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout, "retry": None},
        )
    return caches, cache_url, state_url
