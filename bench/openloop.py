"""An open-loop HTTP load generator (wrk2's idea; wrk2 is not packaged in Debian).

Requests are sent on a fixed schedule, `rate` per second, whatever the server does: a slow server
does not slow the arrivals down (a closed-loop tool like wrk would wait for answers and so hide an
overload). Each request's latency is counted from its *scheduled* send time, so time spent waiting
for a free connection on this side is counted too (no coordinated omission).

asyncio on plain sockets, HTTP/1.1 keep-alive, a pool of connections per generator process. One
Python process keeps to the schedule up to about 3,000 requests a second on this machine (measured
against nginx's static answer: at 4,500 a second its p99 was 111 ms, two processes' 15 ms);
`processes` splits the schedule round-robin over several forked processes sharing one start time, so
the arrivals stay evenly spaced. Each result records when its request was actually written, so a run
reports the send rate it achieved (`summarise`'s "send_rate") and how late the sends were: a
generator that cannot keep up would otherwise pass for a server that is not overloaded. The
benchmark compares runs of this generator with each other, never with wrk.

`closed_loop` is the same client, each connection sending its next request when the last is answered:
the capacity the open-loop loads are multiples of, measured with the same mix and the same code.
"""

import asyncio
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


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _exchange(host, port, request, timeout, conn):
    """Send `request` on conn["rw"] (opened if None); return the status (0: no answer; the connection is
    dropped then)."""
    try:
        if conn["rw"] is None:
            conn["rw"] = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        reader, writer = conn["rw"]
        writer.write(request.encode())
        return await asyncio.wait_for(_read_response(reader), timeout)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        if conn["rw"] is not None:
            conn["rw"][1].close()
        conn["rw"] = None
        return 0


async def _run(host, port, schedule, connections, timeout, start_wall) -> list[Result]:
    queue: asyncio.Queue = asyncio.Queue()
    results: list[Result] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + (start_wall - time.time())  # the same instant in every generator process

    async def worker():
        conn = {"rw": None}
        while True:
            item = await queue.get()
            if item is None:
                break
            at, request = item
            sent = loop.time()
            status = await _exchange(host, port, request, timeout, conn)
            now = loop.time()
            results.append(Result(request.kind, status, now - (start + at), now - start, sent - start))
        if conn["rw"] is not None:
            conn["rw"][1].close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    for at, request in schedule:
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((at, request))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return results


def _generate(host, port, schedule, connections, timeout, start_wall) -> list[Result]:
    return asyncio.run(_run(host, port, schedule, connections, timeout, start_wall))


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
) -> list[Result]:
    """Send `rate` requests a second for `seconds`, each drawn from `mix` ((weight, Request) pairs)
    with a fixed seed, evenly spaced, from `processes` generator processes (forked; `connections`
    split between them); return one Result per request."""
    rng = random.Random(18)
    weights = [w for w, _ in mix]
    requests = [r for _, r in mix]
    count = int(rate * seconds)
    schedule = [(i / rate, rng.choices(requests, weights)[0]) for i in range(count)]
    start_wall = time.time() + 0.3  # let every process start and open its connections first
    if processes == 1:
        return _generate(host, port, schedule, connections, timeout, start_wall)
    per_process = max(1, connections // processes)
    args = [(host, port, schedule[i::processes], per_process, timeout, start_wall) for i in range(processes)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        parts = pool.starmap(_generate, args)
    return [result for part in parts for result in part]


async def _closed(host, port, requests, connections, seconds, timeout) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    counts = [0, 0]  # answered 2xx, answered at all

    async def client(offset):
        conn = {"rw": None}
        i = offset
        while loop.time() < end:
            status = await _exchange(host, port, requests[i % len(requests)], timeout, conn)
            i += 1
            counts[1] += status != 0
            counts[0] += 200 <= status < 300
        if conn["rw"] is not None:
            conn["rw"][1].close()

    await asyncio.gather(*(client(i * 7) for i in range(connections)))
    return counts[0], counts[1]


def closed_loop(
    host: str, port: int, mix: list[tuple[float, Request]], *, connections=8, seconds=3.0, timeout=10.0
) -> float:
    """Closed loop: `connections` clients each sending the mix's requests back to back; return the 2xx
    answers per second (the capacity of whatever serves `port` for this mix at this concurrency)."""
    rng = random.Random(18)
    requests = rng.choices([r for _, r in mix], [w for w, _ in mix], k=1000)
    ok, _ = asyncio.run(_closed(host, port, requests, connections, seconds, timeout))
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
    }
