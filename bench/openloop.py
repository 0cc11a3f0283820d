"""An open-loop HTTP load generator (wrk2's idea; wrk2 is not packaged in Debian).

Requests are sent on a fixed schedule, `rate` per second, whatever the server does: a slow server
does not slow the arrivals down (a closed-loop tool like wrk would wait for answers and so hide an
overload). Each request's latency is counted from its *scheduled* send time, so time spent waiting
for a free connection on this side is counted too (no coordinated omission).

asyncio on plain sockets, HTTP/1.1 keep-alive, a pool of connections; one process. It needs a
fraction of a core at a few thousand requests per second, on the same machine as the server: the
benchmark compares runs of this generator with each other, never with wrk.
"""

import asyncio
import random
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


async def _run(host, port, schedule, connections, timeout) -> list[Result]:
    queue: asyncio.Queue = asyncio.Queue()
    results: list[Result] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2  # let the connections open first

    async def worker():
        reader = writer = None
        while True:
            item = await queue.get()
            if item is None:
                break
            at, request = item
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                writer.write(request.encode())
                status = await asyncio.wait_for(_read_response(reader), timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                status = 0
                if writer is not None:
                    writer.close()
                reader = writer = None
            now = loop.time()
            results.append(Result(request.kind, status, now - (start + at), now - start))
        if writer is not None:
            writer.close()

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


def run(
    host: str,
    port: int,
    mix: list[tuple[float, Request]],
    *,
    rate: float,
    seconds: float,
    connections=512,
    timeout=10.0,
) -> list[Result]:
    """Send `rate` requests a second for `seconds`, each drawn from `mix` ((weight, Request) pairs)
    with a fixed seed, evenly spaced; return one Result per request."""
    rng = random.Random(18)
    weights = [w for w, _ in mix]
    requests = [r for _, r in mix]
    count = int(rate * seconds)
    schedule = [(i / rate, rng.choices(requests, weights)[0]) for i in range(count)]
    return asyncio.run(_run(host, port, schedule, connections, timeout))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def summarise(results: list[Result], seconds: float) -> dict:
    """Goodput (2xx answered within the schedule's length, per second), p50/p99 of the 2xx, and the
    count of each status per kind."""
    accepted = [r for r in results if 200 <= r.status < 300]
    in_time = [r for r in accepted if r.done_at <= seconds]
    by_kind: dict[str, dict[int, int]] = {}
    for r in results:
        by_kind.setdefault(r.kind, {}).setdefault(r.status, 0)
        by_kind[r.kind][r.status] += 1
    latencies = [r.latency for r in accepted]
    return {
        "sent": len(results),
        "goodput": len(in_time) / seconds,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "by_kind": by_kind,
    }
