"""Run Redis commands on several servers with every request in flight at once.

A cached profile read needs the state Redis (the rate limiter, the pending views) and the cache Redis
(the row). Sent one after the other they cost two network waits; here every server's commands are
written before any reply is read, so the request waits once, for the slowest server. Calls to the
same server share one pipelined write. redis-py pipelines batch one server; this overlaps servers.

A call is a plain command (`command(client, "GET", key)`) or a Lua script (`script_call(...)`):
plain commands where they do the job, since every EVALSHA costs the server several times a GET.

A Redis Cluster client (the state Redis in cluster mode) is not a connection pool: its calls go through
the cluster client itself, which follows MOVED and refreshes its slot table after a failover, while the
other servers' calls are in flight.

Each call's outcome is its own: a server that is down or hung (the socket timeout applies) turns
into an exception in that call's slot, never into a failure of the calls on other servers.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

_PENDING = object()


class Call(NamedTuple):
    """One command for `run_all`: `args` as sent; `script` set for an EVALSHA of that script;
    `on_reply(reply)`, when set, turns a reply (not an exception) into the call's result. A call
    whose client is None is already answered: `args[0]` is its result and nothing is sent."""

    client: Any
    args: tuple
    script: Script | None = None
    on_reply: Callable[[Any], Any] | None = None


def command(client, *args, on_reply=None) -> Call:
    return Call(client, args, on_reply=on_reply)


def ready(result) -> Call:
    """A call answered without a server (a value from a local cache): `run_all` returns `result`."""
    return Call(None, (result,))


def script_call(client, script: Script, keys: list, args: list) -> Call:
    return Call(client, ("EVALSHA", script.sha, len(keys), *keys, *args), script)


def run_all(calls: list[Call]) -> list:
    """Run every call; return, in order, each call's reply or the exception its server raised (a
    RedisError or OSError). A script the server does not know (it was restarted) is loaded and run
    again, as redis-py's Script does."""
    results = [_PENDING] * len(calls)
    by_client: dict[int, list[int]] = {}
    for index, call in enumerate(calls):
        if call.client is None:
            results[index] = call.args[0]
        else:
            by_client.setdefault(id(call.client), []).append(index)

    in_flight, clustered = [], []
    for indexes in by_client.values():
        if isinstance(calls[indexes[0]].client, RedisCluster):
            clustered += indexes
            continue
        pool = calls[indexes[0]].client.connection_pool
        connection = None
        try:
            connection = pool.get_connection()
            connection.send_packed_command(connection.pack_commands([calls[index].args for index in indexes]))
        except (RedisError, OSError) as exc:
            _fail(results, indexes, exc)
            if connection is not None:
                connection.disconnect()
                pool.release(connection)
            continue
        in_flight.append((pool, connection, indexes))

    for index in clustered:  # while the single servers' calls are in flight
        try:
            results[index] = calls[index].client.execute_command(*calls[index].args)
        except (RedisError, RedisClusterException, OSError) as exc:
            results[index] = exc

    for pool, connection, indexes in in_flight:
        try:
            for index in indexes:
                try:
                    results[index] = connection.read_response()
                except ResponseError as exc:  # a whole error reply: the connection stays in step
                    results[index] = exc
        except (RedisError, OSError) as exc:  # a broken or timed-out reply
            # Drop the connection: its unread replies would answer the next caller's commands. A plain
            # Connection's read_response disconnects on its own; redis-py's SentinelManagedConnection
            # does not (its disconnect_on_error defaults to False).
            connection.disconnect()
            _fail(results, indexes, exc)
        finally:
            pool.release(connection)

    for index, result in enumerate(results):
        call = calls[index]
        if isinstance(result, NoScriptError) and call.script is not None:
            try:
                call.client.script_load(call.script.script)
                results[index] = call.client.execute_command(*call.args)
            except (RedisError, OSError) as exc:
                results[index] = exc
        if call.on_reply is not None and call.client is not None and not isinstance(results[index], Exception):
            results[index] = call.on_reply(results[index])
    return results


def _fail(results: list, indexes: list[int], exc: Exception) -> None:
    for index in indexes:
        if results[index] is _PENDING:
            results[index] = exc
