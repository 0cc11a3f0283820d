"""Connections to the master that Redis Sentinel names, checked to be a master (redis-py does not check).

For a while after a failover, a Sentinel that has not yet heard of it (Sentinels learn the new
configuration from each other, every 2 s) still names the old master; after SENTINEL FAILOVER that
server is up, and a replica within about a second (deploy/sentinel-reconfig). redis-py connects to
the address it is given and only PINGs it, which a replica answers, and asks the same Sentinel first
next time (the first one that answered moves to the head of its list). What a client then holds is a
connection to a replica that stays in its pool: reads and read-only scripts go on answering from it
(a Celery worker BRPOPs there and never receives a task again: the publishers push to the new
master), and each write fails later with "The previous master is now a slave" (a 503 of the app, or a
failed task) long after the Sentinels agree.

Redis' Sentinel client guidelines ask for a ROLE check after connecting: `MasterRoleConnection` makes
it; when the server is not a master it drops the connection, moves the Sentinel that named it to the end
of the list and asks the next one. When no Sentinel names a real master yet, the connection is refused
with MasterNotFoundError, as when no Sentinel names any master: the "state Redis unavailable" that
callers already handle (a view written to the database directly, a task retried by the next beat).
The state alias (django-redis, `SentinelConnectionPool` below) and the Celery broker (kombu's sentinel
transport, project/celery.py) both connect this way.
"""

import redis.sentinel
from redis.utils import str_if_bytes


class MasterRoleConnection(redis.sentinel.SentinelManagedConnection):
    """A Sentinel-managed connection that accepts, for a master pool, only a server whose ROLE is master.

    Connecting asks the Sentinels for the master, connects, and asks the server ROLE; a server that is
    not a master is dropped and the Sentinel that named it moved to the end of the list, and the next
    Sentinel is asked, up to once each. Raise MasterNotFoundError (a ConnectionError) when none named a
    master that says it is one.
    """

    def _connect_retry(self):
        pool = self.connection_pool  # redis-py's proxy of the pool: is_master, sentinel_manager
        if self._sock or not pool.is_master:
            return super()._connect_retry()
        sentinels = pool.sentinel_manager.sentinels
        for _ in range(len(sentinels)):
            address = pool.get_master_address()  # moves the Sentinel that answered to the head
            self.connect_to(address)
            self.send_command("ROLE")
            role = str_if_bytes(self.read_response()[0])
            if role == "master":
                return None
            self.disconnect()
            sentinels.append(sentinels.pop(0))  # it lags behind a failover: ask the others first
        # Nothing was sent: MasterNotFoundError, as when no Sentinel names a master, tells callers so.
        raise redis.sentinel.MasterNotFoundError(
            f"No master found for {pool.service_name!r}: {address[0]}:{address[1]}, named by the Sentinels, is a {role}"
        )


class SentinelConnectionPool(redis.sentinel.SentinelConnectionPool):
    """redis-py's Sentinel pool whose connections check the master's role (django-redis'
    CONNECTION_POOL_CLASS for the state alias)."""

    def __init__(self, service_name, sentinel_manager, **kwargs):
        kwargs.setdefault("connection_class", MasterRoleConnection)
        super().__init__(service_name, sentinel_manager, **kwargs)
