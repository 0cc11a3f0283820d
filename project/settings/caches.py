"""Two Redis roles: an evictable cache, and a state Redis (noeviction, AOF) for the Celery broker,
the write-behind buffer, rate-limit and circuit state. Eviction in the cache can never drop work.

Timeouts are short on purpose: a hung Redis must cost a request a fraction of a second, not hang it.
"""

from .env import env


def build_caches(*, redis_db: int):
    cache_url = env("REDIS_CACHE_URL", f"redis://127.0.0.1:{env('BULWARK_REDIS_CACHE_PORT', 56379, int)}/{redis_db}")
    state_url = env("REDIS_STATE_URL", f"redis://127.0.0.1:{env('BULWARK_REDIS_STATE_PORT', 56380, int)}/{redis_db}")
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
    return caches, cache_url, state_url
