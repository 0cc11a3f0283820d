"""Run Redis commands on several servers with every request in flight at once.

A cached profile read needs the state Redis (the rate limiter, the pending views) and the cache Redis
(the row). Sent one after the other they cost two network waits; here every server's commands are
written before any reply is read, so the request waits once, for the slowest server. Calls to the
same server share one pipelined write. redis-py pipelines batch one server; this overlaps servers.

A call is a plain command (`command(client, "GET", key)`) or a Lua script (`script_call(...)`):
plain commands where they do the job, since every EVALSHA costs the server several times a GET.
Several scripts for one server run as one EVALSHA of a script composed of them (`_composed`): one
script invocation instead of several (a cached profile read's limiter check and pending-views read),
in order and atomically, as a MULTI of them would run. Each script's reply, or its error, is still
its own call's result.

A Redis Cluster client (the state Redis in cluster mode) is not a connection pool: its calls go through
the cluster client itself, which follows MOVED and refreshes its slot table after a failover, while the
other servers' calls are in flight.

Each call's outcome is its own: a server that is down or hung (the socket timeout applies) turns
into an exception in that call's slot, never into a failure of the calls on other servers.
"""

import threading
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
        client = calls[indexes[0]].client
        pool = client.connection_pool
        folded = _fold(client, [calls[index] for index in indexes]) if len(indexes) > 1 else None
        connection = None
        try:
            connection = pool.get_connection()
            sent = [folded.args] if folded is not None else [calls[index].args for index in indexes]
            connection.send_packed_command(connection.pack_commands(sent))
        except (RedisError, OSError) as exc:
            _fail(results, indexes, exc)
            if connection is not None:
                connection.disconnect()
                pool.release(connection)
            continue
        in_flight.append((pool, connection, indexes, folded))

    for index in clustered:  # while the single servers' calls are in flight
        try:
            results[index] = calls[index].client.execute_command(*calls[index].args)
        except (RedisError, RedisClusterException, OSError) as exc:
            results[index] = exc

    for pool, connection, indexes, folded in in_flight:
        try:
            if folded is not None:
                _unfold(results, indexes, _reply(connection, folded))
            for index in indexes if folded is None else ():
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


# The scripts of one composition run as functions of one script: each gets its own KEYS and ARGV (the
# composition's ARGV starts with each one's number of keys and of arguments), and its reply goes into a
# table of one element (none for nil, so a nil reply cannot shorten the list of replies). pcall keeps an
# error (a failed redis.call, a Lua error) that script's own reply, as it was when each ran alone.
_FOLD_RUN = """
local out, k, a = {}, 0, 2 * #F
for i = 1, #F do
  local nk, na = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = KEYS[k + j] end
  for j = 1, na do args[j] = ARGV[a + j] end
  k, a = k + nk, a + na
  local ok, reply = pcall(F[i], keys, args)
  if not ok and type(reply) ~= 'table' then reply = redis.error_reply(tostring(reply)) end
  out[i] = {reply}
end
return out
"""
_composed: dict[tuple[str, ...], Script] = {}  # one per combination of scripts the code sends together
_composed_lock = threading.Lock()


def _composed_script(client, scripts: list[Script]) -> Script:
    shas = tuple(script.sha for script in scripts)
    composed = _composed.get(shas)
    if composed is None:
        # As chain.lua's algorithms: Redis runs a script as a function body, so each runs unchanged as one.
        functions = "".join(f"function(KEYS, ARGV)\n{script.script}\nend,\n" for script in scripts)
        with _composed_lock:
            composed = _composed.setdefault(shas, Script(client, f"local F = {{\n{functions}}}\n{_FOLD_RUN}"))
    return composed


def _fold(client, calls: list[Call]) -> Call | None:
    """One EVALSHA running `calls` (EVALSHAs of one server) in order; None unless every call is a script."""
    if not all(call.script is not None for call in calls):
        return None
    counts, keys, args = [], [], []
    for call in calls:
        numkeys = call.args[2]
        counts += (numkeys, len(call.args) - 3 - numkeys)
        keys += call.args[3 : 3 + numkeys]
        args += call.args[3 + numkeys :]
    return script_call(client, _composed_script(client, [call.script for call in calls]), keys, counts + args)


def _reply(connection, folded: Call):
    """The composition's reply; loaded and run again (once) when the server does not know it."""
    try:
        return connection.read_response()
    except NoScriptError:  # the server was restarted or flushed its scripts: the connection is in step
        try:
            folded.client.script_load(folded.script.script)
            return folded.client.execute_command(*folded.args)
        except ResponseError as exc:
            return exc
    except ResponseError as exc:
        return exc


def _unfold(results: list, indexes: list[int], reply) -> None:
    for position, index in enumerate(indexes):
        if isinstance(reply, Exception):
            results[index] = reply
        else:
            results[index] = reply[position][0] if reply[position] else None


def _fail(results: list, indexes: list[int], exc: Exception) -> None:
    for index in indexes:
        if results[index] is _PENDING:
            results[index] = exc
