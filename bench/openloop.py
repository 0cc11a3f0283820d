"""An open-loop HTTP load generator (wrk2's idea; wrk2 is not packaged in Debian).

Requests are sent on a fixed schedule, `rate` per second, whatever the server does: a slow server
does not slow the arrivals down (a closed-loop tool like wrk would wait for answers and so hide an
overload). Each request's latency is counted from its *scheduled* send time, so time spent waiting
for a free connection on this side is counted too (no coordinated omission).

HTTP/1.1 keep-alive over a pool of connections per generator process, with no task, coroutine or
future per request: each connection is an asyncio.Protocol that parses the status line and
Content-Length (or chunked body) of what it receives and hands the answer to a callback; a request
waits in a FIFO for the next free connection (the one free the longest), its per-request timeout is
a deadline checked by one timer for the whole pool (no answer within `timeout` of the write, or of the
connect for a new connection: status 0, the connection dropped; checked every 0.1 s), the schedule is
walked by one timer that sends every request already due, and each Request's bytes are encoded once.
The garbage collector is off in a generator while it runs.

What it costs (bench/openloop_cost.py: one generator process on CPU 1, nginx answering a fixed body
from CPU 0, the rates taking turns with the first version of this module, which used asyncio streams,
a worker task per connection and asyncio.wait_for, a task per call in Python 3.11; one run, load
average about 2 from neighbours): user + system CPU per request 60/46/45/42 us at 2,000/4,000/6,000/
8,000 requests a second against 70/75/49/51 us, of which user (Python) 23/20/14/12 us against
49/44/34/36 us; above 8,000 a second its CPU per request fell to 20-25 us (more events handled per
wake-up, presumably; the first version 45 us at 10,000). The rest is system time, the kernel's
loopback TCP work: 10-37 us a request for both, noisy. The highest rate kept with a p99 send lag
under 5 ms: 16,000 a second (the top of the ladder; one miss at 6,000, 6 ms, in a neighbour's burst)
against 6,000 (11 ms at 8,000, 50 ms at 10,000).
In three `make bench` overload runs at 2-3x capacity (3,300-7,900 requests a second over 2
processes) the generators used 0.13-0.25 of a core in all.

`processes` splits the schedule round-robin over several forked processes sharing one start time, so
the arrivals stay evenly spaced. Each result records when its request was actually written, so a run
reports the send rate it achieved (`summarise`'s "send_rate") and how late the sends were: a
generator that cannot keep up would otherwise pass for a server that is not overloaded. The
benchmark compares runs of this generator with each other, never with wrk.

`closed_loop` is the same client, each connection sending its next request when the last is answered:
the capacity the open-loop loads are multiples of, measured with the same mix and the same code.
"""

import asyncio
import collections
import gc
import multiprocessing
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    kind: str  # the label results are grouped by ("read", "view", "me")
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", "Host: 127.0.0.1", "Accept: application/json"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass(frozen=True)
class Result:
    kind: str
    status: int  # 0: no answer (connection error or timeout)
    latency: float  # seconds from the scheduled send time to the end of the answer
    done_at: float  # seconds from the start of the schedule
    sent_at: float  # seconds from the start of the schedule to the request's write


def _response_end(buf) -> tuple[int, int] | None:
    """(status, length of the whole response) if `buf` holds a complete response, else None.
    ValueError or IndexError: not HTTP."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[:head_end])
    status = int(head.split(b"\r\n", 1)[0].split(b" ", 2)[1])
    lower = head.lower()
    body = head_end + 4
    if b"chunked" in _header(lower, b"\r\ntransfer-encoding:"):
        pos = body
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            pos = line_end + 2 + size + 2
            if len(buf) < pos:
                return None
            if size == 0:
                return status, pos
    length = _header(lower, b"\r\ncontent-length:")
    if length:
        end = body + int(length)
        return (status, end) if len(buf) >= end else None
    return status, body


def _header(head: bytes, name: bytes) -> bytes:
    """The value of the first header `name` ("\\r\\nname:", lower case) in `head`, b"" if absent."""
    at = head.find(name)
    if at < 0:
        return b""
    line_end = head.find(b"\r\n", at + 2)
    return head[at + len(name) : line_end if line_end >= 0 else None]


class _Protocol(asyncio.Protocol):
    """One TCP connection of a _Slot; detached (slot None) once the slot has dropped it."""

    def __init__(self, slot):
        self.slot = slot
        self.transport = None
        self.buffer = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        slot = self.slot
        if slot is None or slot.protocol is not self or not slot.busy:
            return
        buf = self.buffer + data if self.buffer else data
        try:
            end = _response_end(buf)
        except (ValueError, IndexError):
            slot.finish(0)
            return
        if end is None:
            self.buffer = buf
            return
        self.buffer = b""  # a server that sent more than one answer to one request: the rest is dropped
        slot.finish(end[0])

    def connection_lost(self, exc):
        slot = self.slot
        self.slot = None
        if slot is not None and slot.protocol is self:
            slot.protocol = None  # the next request opens a new connection
            if slot.busy:
                slot.finish(0)


class _Slot:
    """A connection of the pool, one request at a time (the old worker task's part): `send` writes a
    request (opening the connection first if there is none), `done(slot, status)` is called once per
    request: with the status, or 0 on a connection error, an unparsable answer or the timeout."""

    __slots__ = ("loop", "host", "port", "timeout", "done", "protocol", "busy", "deadline", "connecting", "pending")

    def __init__(self, loop, host, port, timeout, done):
        self.loop, self.host, self.port, self.timeout, self.done = loop, host, port, timeout, done
        self.protocol = None
        self.busy = False
        self.deadline = 0.0  # loop time after which the request in flight has timed out (_watch)
        self.connecting = None  # the connect task, while there is one
        self.pending = b""  # the request to write once connected

    def send(self, data: bytes):
        self.busy = True
        self.deadline = self.loop.time() + self.timeout
        if self.protocol is not None:
            self.protocol.transport.write(data)
        else:
            self.pending = data
            self.connecting = self.loop.create_task(self._connect())

    async def _connect(self):
        try:
            _, protocol = await self.loop.create_connection(lambda: _Protocol(self), self.host, self.port)
        except OSError:
            self.connecting = None
            self.finish(0)
            return
        self.connecting = None
        if protocol.slot is not self or protocol.transport.is_closing():  # closed before we got here
            protocol.slot = None
            self.finish(0)
            return
        self.protocol = protocol
        # asyncio.wait_for timed the connect and the answer separately: the answer gets `timeout` from the write.
        self.deadline = self.loop.time() + self.timeout
        protocol.transport.write(self.pending)
        self.pending = b""

    def timed_out(self):
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self.finish(0)

    def finish(self, status: int):
        if not self.busy:
            return
        self.busy = False
        if status == 0:
            self.close()
        self.done(self, status)

    def close(self):
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.slot = None
            protocol.transport.close()


def _watch(loop, slots, timeout) -> list:
    """Time out the requests in flight on `slots` that have had no answer for `timeout` (status 0, the
    connection dropped), checking every tenth of the timeout, at most every 0.1 s: one timer for the pool
    instead of a timer handle per request (a request times out between `timeout` and that much later).
    Returns a list whose first item is the pending check's handle (cancel it to stop)."""
    period = min(0.1, timeout / 10)
    handle = [None]

    def check():
        now = loop.time()
        for slot in slots:
            if slot.busy and slot.deadline <= now:
                slot.timed_out()
        handle[0] = loop.call_later(period, check)

    handle[0] = loop.call_later(period, check)
    return handle


async def _run(host, port, payloads, kinds, times, connections, timeout, start_wall) -> list[tuple]:
    """Send payloads[i] at times[i] (seconds from the start); return (kind, status, latency, done_at,
    sent_at) for each, in the order they were answered."""
    loop = asyncio.get_running_loop()
    start = loop.time() + (start_wall - time.time())  # the same instant in every generator process
    count = len(times)
    results: list[tuple] = []
    idle = collections.deque()  # free slots, the one free the longest first (the old queue's getters)
    waiting = collections.deque()  # requests due with no free connection, in schedule order
    current = {}  # slot -> (index, sent)
    finished = loop.create_future()

    def dispatch(slot, i):
        current[slot] = (i, loop.time())
        slot.send(payloads[i])

    def done(slot, status):
        now = loop.time()
        i, sent = current.pop(slot)
        results.append((kinds[i], status, now - (start + times[i]), now - start, sent - start))
        if waiting:
            dispatch(slot, waiting.popleft())
        else:
            idle.append(slot)
        if len(results) == count and not finished.done():
            finished.set_result(None)

    slots = [_Slot(loop, host, port, timeout, done) for _ in range(connections)]
    watch = _watch(loop, slots, timeout)
    idle.extend(slots)
    state = {"next": 0}

    def tick():
        i, now = state["next"], loop.time()
        while i < count and start + times[i] <= now:
            if idle:
                dispatch(idle.popleft(), i)
            else:
                waiting.append(i)
            i += 1
        state["next"] = i
        if i < count:
            loop.call_at(start + times[i], tick)

    if count:
        loop.call_at(start + times[0], tick)
        await finished
    watch[0].cancel()
    for slot in slots:
        slot.close()
    return results


def _generate(host, port, requests, indices, times, connections, timeout, start_wall) -> tuple[list[tuple], float]:
    """One generator process's part: its results and the CPU seconds it spent. The garbage collector is
    off for the run: what the run allocates is not cyclic, and a full collection over tens of thousands
    of results would hold the schedule up for milliseconds."""
    payloads = [requests[j].encode() for j in range(len(requests))]
    payloads = [payloads[j] for j in indices]
    kinds = [requests[j].kind for j in indices]
    enabled = gc.isenabled()
    gc.disable()
    cpu = time.process_time()
    try:
        results = asyncio.run(_run(host, port, payloads, kinds, times, connections, timeout, start_wall))
    finally:
        cpu = time.process_time() - cpu
        if enabled:
            gc.enable()
    return results, cpu


def run(
    host: str,
    port: int,
    mix: list[tuple[float, Request]],
    *,
    rate: float,
    seconds: float,
    connections=512,
    timeout=10.0,
    processes=1,
    stats: dict | None = None,
) -> list[Result]:
    """Send `rate` requests a second for `seconds`, each drawn from `mix` ((weight, Request) pairs)
    with a fixed seed, evenly spaced, from `processes` generator processes (forked; `connections`
    split between them); return one Result per request. `stats`, if given, gets "cpu_s": the CPU
    seconds the generator processes spent (user + system, summed), and "requests"."""
    rng = random.Random(18)
    weights = [w for w, _ in mix]
    requests = [r for _, r in mix]
    count = int(rate * seconds)
    indices = rng.choices(range(len(requests)), weights, k=count)
    times = [i / rate for i in range(count)]
    start_wall = time.time() + 0.3  # let every process start first
    if processes == 1:
        parts = [_generate(host, port, requests, indices, times, connections, timeout, start_wall)]
    else:
        per_process = max(1, connections // processes)
        args = [
            (host, port, requests, indices[i::processes], times[i::processes], per_process, timeout, start_wall)
            for i in range(processes)
        ]
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            parts = pool.starmap(_generate, args)
    if stats is not None:
        stats["cpu_s"] = sum(cpu for _, cpu in parts)
        stats["requests"] = count
    return [Result(*result) for part, _ in parts for result in part]


async def _closed(host, port, payloads, connections, seconds, timeout) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    counts = [0, 0]  # answered 2xx, answered at all
    position = {}  # slot -> index of its last request
    running = [connections]
    finished = loop.create_future()

    def done(slot, status):
        counts[1] += status != 0
        counts[0] += 200 <= status < 300
        if loop.time() < end:
            position[slot] += 1
            slot.send(payloads[position[slot] % len(payloads)])
            return
        running[0] -= 1
        if not running[0]:
            finished.set_result(None)

    slots = [_Slot(loop, host, port, timeout, done) for _ in range(connections)]
    watch = _watch(loop, slots, timeout)
    for i, slot in enumerate(slots):
        position[slot] = i * 7
        slot.send(payloads[position[slot] % len(payloads)])
    await finished
    watch[0].cancel()
    for slot in slots:
        slot.close()
    return counts[0], counts[1]


def closed_loop(
    host: str, port: int, mix: list[tuple[float, Request]], *, connections=8, seconds=3.0, timeout=10.0
) -> float:
    """Closed loop: `connections` clients each sending the mix's requests back to back; return the 2xx
    answers per second (the capacity of whatever serves `port` for this mix at this concurrency)."""
    rng = random.Random(18)
    requests = rng.choices([r for _, r in mix], [w for w, _ in mix], k=1000)
    encoded = {request: request.encode() for request in set(requests)}
    ok, _ = asyncio.run(_closed(host, port, [encoded[r] for r in requests], connections, seconds, timeout))
    return ok / seconds


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def summarise(results: list[Result], seconds: float) -> dict:
    """Goodput (2xx answered within the schedule's length, per second), p50/p99 of the 2xx, the count
    of each status per kind, and the send rate achieved (requests written per second of the schedule;
    below the asked rate when the generator, or a server holding every connection, fell behind)."""
    accepted = [r for r in results if 200 <= r.status < 300]
    in_time = [r for r in accepted if r.done_at <= seconds]
    by_kind: dict[str, dict[int, int]] = {}
    for r in results:
        by_kind.setdefault(r.kind, {}).setdefault(r.status, 0)
        by_kind[r.kind][r.status] += 1
    latencies = [r.latency for r in accepted]
    written_in_time = [r for r in results if r.sent_at <= seconds]
    # How late the generator wrote each request (scheduled -> written): a long lag is this side's (or a
    # pool with every connection waiting), not the server's, though it is in the latency too.
    lags = [r.sent_at - (r.done_at - r.latency) for r in results]
    return {
        "sent": len(results),
        "send_rate": len(written_in_time) / seconds,
        "goodput": len(in_time) / seconds,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "send_lag_p99_ms": percentile(lags, 99) * 1000,
        "by_kind": by_kind,
        # Where the tail is: each kind's p99 of its accepted requests.
        "p99_ms_by_kind": {
            kind: percentile([r.latency for r in accepted if r.kind == kind], 99) * 1000 for kind in by_kind
        },
    }
