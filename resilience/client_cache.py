"""A bounded per-process cache in front of a Redis, kept fresh by Redis server-assisted client-side
caching, so a hot read costs no round trip to that Redis.

Invalidation: one connection per process runs `CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX
...` and subscribes to `__redis__:invalidate` (RESP2 redirect mode, which redis-server 7.0 serves;
redis-py's own client-side cache needs RESP3 and a 7.4 server). From then on Redis sends it the name of
every key under those prefixes that any client writes or that expires or is evicted; the thread drops
that entry. A write reaches every process's cache within the invalidation delay (`make bench` measures
it; the bound is INVALIDATION_BOUND). The process that writes drops its own entry at once (`discard`).

Correctness rules:
- Nothing is served or stored unless the tracking connection is up: entries are only kept while an
  invalidation for them would arrive. When the connection drops (Redis restarted, CLIENT KILL, a
  timeout of the keep-alive PING) the whole cache is flushed, reads go to Redis, and the thread
  reconnects (flushing again: messages sent in between were lost).
- A reader that fetched a value from Redis stores it only if no invalidation or flush happened since it
  sent the read (`begin` gives it a token, `fill` checks it): an invalidation that overtook its reply
  must not be undone by a late store.
- Bounded: at most `max_entries` entries and `max_bytes` bytes (keys and values), least recently used
  dropped first.
"""

import logging
import os
import threading
import time
from collections import OrderedDict

import redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

INVALIDATION_CHANNEL = "__redis__:invalidate"
PING_INTERVAL = 0.5  # how often an idle tracking connection proves it is alive
PING_TIMEOUT = 1.0  # no PONG within this: the connection is treated as dropped and the cache flushed
RECONNECT_DELAY = (0.05, 2.0)  # first and longest wait between connection attempts
INVALIDATION_BOUND = 0.05  # seconds: the write-to-drop delay the tests and `make bench` hold it to


class LocalCache:
    """Raw values of keys under `prefixes` of the Redis at `connection_kwargs`, tracked (see above).

    `get` and `begin` answer None while tracking is not up, so callers fall back to Redis by themselves.
    """

    def __init__(
        self,
        *,
        name: str,
        connection_kwargs: dict,
        prefixes: tuple[str, ...],
        max_entries: int,
        max_bytes: int,
        on_connect=None,
    ):
        self.name = name
        self.on_connect = on_connect  # called (from the tracking thread) each time tracking is up again
        self.prefixes = prefixes
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._connection_kwargs = {**connection_kwargs, "protocol": 2}  # the redirect mode is RESP2's
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._epoch = 0  # bumped by every invalidation and flush: see fill()
        self._live = False
        self._pid = None
        self._stop = threading.Event()
        self._thread = None
        self.stats = {"hits": 0, "fills": 0, "invalidations": 0, "flushes": 0, "refused_fills": 0}

    # --- readers -------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        """The cached raw value of `key`, or None (not cached, or tracking is down)."""
        self._ensure_started()
        with self._lock:
            if not self._live:
                return None
            raw = self._entries.get(key)
            if raw is not None:
                self._entries.move_to_end(key)
                self.stats["hits"] += 1
            return raw

    def begin(self) -> int | None:
        """A token to pass to `fill` with the value read from Redis after this call; None when nothing
        may be stored (tracking is down)."""
        self._ensure_started()
        with self._lock:
            return self._epoch if self._live else None

    def fill(self, key: str, raw, token: int | None):
        """Store `raw` (bytes) for `key` if nothing was invalidated since `token` was taken; return `raw`
        (so it can post-process a reply). Values that are not bytes (None: absent) are not stored."""
        if token is None or not isinstance(raw, bytes) or not key.startswith(self.prefixes):
            return raw
        size = len(key) + len(raw)
        with self._lock:
            if not self._live or token != self._epoch or size > self.max_bytes or self.max_entries <= 0:
                self.stats["refused_fills"] += 1
                return raw
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(key) + len(old)
            self._entries[key] = raw
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                dropped_key, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped_key) + len(dropped)
            self.stats["fills"] += 1
        return raw

    def discard(self, key: str) -> None:
        """Drop `key` now (this process wrote it; the other processes hear it from Redis)."""
        with self._lock:
            self._epoch += 1
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._flush()

    def size(self) -> tuple[int, int]:
        """(entries, bytes) held now."""
        with self._lock:
            return len(self._entries), self._bytes

    @property
    def live(self) -> bool:
        return self._live

    # --- the tracking thread -------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._pid != os.getpid():  # first use, or a forked child: the parent's thread is not ours
            with self._lock:
                if self._pid != os.getpid():
                    self._pid = os.getpid()
                    self._live = False
                    self._flush()
                    self._stop = threading.Event()
                    self._thread = threading.Thread(target=self._run, name=f"client-cache:{self.name}", daemon=True)
                    self._thread.start()

    def stop(self) -> None:
        """Stop tracking (tests); the cache serves nothing afterwards."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._live = False
            self._flush()

    def _run(self) -> None:
        delay = RECONNECT_DELAY[0]
        while not self._stop.is_set():
            connection = redis.Connection(**self._connection_kwargs)
            try:
                self._track(connection)
                delay = RECONNECT_DELAY[0]
            except (RedisError, OSError) as exc:
                logger.warning("client cache %s: tracking connection lost (%s); local cache flushed", self.name, exc)
            finally:
                with self._lock:
                    self._live = False
                    self._flush()
                connection.disconnect()
            self._stop.wait(delay)
            delay = min(delay * 2, RECONNECT_DELAY[1])

    def _track(self, connection) -> None:
        connection.connect()
        connection.send_command("CLIENT", "ID")
        client_id = connection.read_response()
        prefixes = [part for prefix in self.prefixes for part in ("PREFIX", prefix)]
        connection.send_command("CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST", *prefixes)
        connection.read_response()
        connection.send_command("SUBSCRIBE", INVALIDATION_CHANNEL)
        connection.read_response()
        with self._lock:  # anything written before this point was not heard: start empty
            self._flush()
            self._live = True
        if self.on_connect is not None:
            try:
                self.on_connect()
            except Exception as exc:  # the owner's business; tracking goes on
                logger.warning("client cache %s: on_connect failed: %s", self.name, exc)
        ping_sent = None
        while not self._stop.is_set():
            if connection.can_read(timeout=PING_INTERVAL):
                message = connection.read_response()
                if message[0] == b"pong":
                    ping_sent = None
                elif message[0] == b"message":
                    self._invalidate(message[2])
            elif ping_sent is None:
                connection.send_command("PING")
                ping_sent = time.monotonic()
            if ping_sent is not None and time.monotonic() - ping_sent > PING_TIMEOUT:
                raise TimeoutError(f"no PONG within {PING_TIMEOUT} s")

    def _invalidate(self, keys) -> None:
        with self._lock:
            self.stats["invalidations"] += 1
            if keys is None:  # FLUSHDB / FLUSHALL: everything goes
                self._flush()
                return
            self._epoch += 1
            for key in keys:
                self._drop(key.decode())

    # --- under self._lock ----------------------------------------------------------------------
    def _drop(self, key: str) -> None:
        raw = self._entries.pop(key, None)
        if raw is not None:
            self._bytes -= len(key) + len(raw)

    def _flush(self) -> None:
        self._epoch += 1
        self._entries.clear()
        self._bytes = 0
        self.stats["flushes"] += 1
