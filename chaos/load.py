"""A light, steady mixed load over HTTP, and the ledger of what the service acknowledged.

Four threads (the machine has two cores, shared): reads `GET /users/{id}/`; profile updates
`PATCH /users/me/` (each followed by a read of /me echoing Bulwark-Read-Primary-Until, to check
read-your-writes); registrations `POST /users/` with an Idempotency-Key; views `POST /users/{id}/views/`
with an Idempotency-Key. Registrations and views are retried with the same key after a 503, 429,
5xx, no answer or an idempotency 409, after min(Retry-After, 2) seconds, for a bounded time — what
a careful client does. Updates are not retried: each writes a new, numbered value.

Acknowledged: a registration answered 201; an update answered 200 (the value it wrote); a view
answered 202 ("buffered" or "direct"). A view never acknowledged (given up after 503 "unconfirmed",
say) is "unsure": it may or may not have counted. Reads check what they show against that: never more
views than could have counted, never an update older than the staleness bound, never a 404.
"""

import http.client
import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

KINDS = ("read", "update", "me", "register", "view")
TIMEOUT = 10.0
MAX_RETRY_WAIT = 2.0
RETRY_BUDGET = {"register": 30.0, "view": 20.0}
MAX_IN_FLIGHT = 20  # requests awaiting a retry, per thread
PASSWORD = "chaos-pass-2026"  # noqa: S105 (a throwaway account on a local stack)


class Http:
    """One keep-alive connection per thread; reconnects after any failure."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, *, body: dict | None = None, headers: dict | None = None):
        """Return (status, headers, parsed JSON or None); raise OSError/HTTPException when no answer came."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        payload = None if body is None else json.dumps(body).encode()
        all_headers = {"Accept": "application/json", **(headers or {})}
        if payload is not None:
            all_headers["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=payload, headers=all_headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return response.status, response, data


@dataclass
class Ledger:
    """Everything one scenario's load sent and what the service acknowledged."""

    started: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: dict = field(default_factory=lambda: defaultdict(Counter))  # kind -> status ("none": no answer)
    failures: list = field(default_factory=list)  # (time, kind, status) of 5xx, 429 and no answer
    last_ok: dict = field(default_factory=dict)  # kind -> time of its last success
    samples_500: list = field(default_factory=list)  # (kind, path, status, body) of 5xx other than 503
    unexpected: list = field(default_factory=list)  # final answers the load never expects (a 404 for a view)
    registered: dict = field(default_factory=dict)  # username -> {"acked": id or None, "outcome": ...}
    patch_acked: dict = field(default_factory=dict)  # user id -> last acknowledged seq
    patch_sent: Counter = field(default_factory=Counter)  # user id -> PATCHes sent
    patch_last_sent: dict = field(default_factory=dict)  # user id -> last seq sent
    patch_acked_count: Counter = field(default_factory=Counter)
    views_acked: Counter = field(default_factory=Counter)  # user id -> views answered 202
    views_unsure: Counter = field(default_factory=Counter)  # user id -> views never acknowledged
    views_open: Counter = field(default_factory=Counter)  # user id -> views sent, not yet final
    reads_over: list = field(default_factory=list)  # reads showing more views than could have counted
    patch_acks: dict = field(default_factory=lambda: defaultdict(list))  # user id -> [(time acknowledged, seq)]
    reads_stale: list = field(default_factory=list)  # reads older than the staleness bound allows
    views_direct: int = 0
    ryw_violations: list = field(default_factory=list)
    latencies: list = field(default_factory=list)

    def record(self, kind: str, status: int | None, elapsed: float, *, path: str = "", body=None) -> None:
        now = time.time()
        with self.lock:
            self.statuses[kind][status if status is not None else "none"] += 1
            self.latencies.append(elapsed)
            if status is None or status >= 500 or status == 429:
                self.failures.append((now, kind, status))
                if (status is None or status >= 500 and status != 503) and len(self.samples_500) < 20:
                    self.samples_500.append(
                        {
                            "kind": kind,
                            "path": path,
                            "status": status,
                            "body": body,
                            "at": time.strftime("%H:%M:%S", time.localtime(now)),
                            "elapsed_s": round(elapsed, 3),
                        }
                    )
            elif status < 400:
                self.last_ok[kind] = now

    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())

    def count(self, predicate) -> int:
        return sum(n for c in self.statuses.values() for s, n in c.items() if predicate(s))

    def last_failure(self) -> float | None:
        with self.lock:
            return self.failures[-1][0] if self.failures else None

    def healthy(self, *, now: float, quiet: float = 1.5) -> bool:
        """No failure in the last `quiet` seconds, and every kind succeeded since the last failure."""
        with self.lock:
            last = self.failures[-1][0] if self.failures else 0.0
            return now - last >= quiet and all(self.last_ok.get(k, 0.0) > last for k in KINDS)


@dataclass
class Pending:
    """A request retried with the same Idempotency-Key until acknowledged or its budget runs out."""

    kind: str
    path: str
    body: dict | None
    key: str
    subject: object
    first_sent: float
    due: float = 0.0
    attempts: int = 0
    saw_failure: bool = False


class Load:
    """Run the mixed load against `port` over `users` ([{"id", "token"}]) until `stop()`."""

    def __init__(self, port: int, users: list[dict], *, prefix: str, stale_bound: float):
        self.port, self.users, self.prefix = port, users, prefix
        self.stale_bound = stale_bound
        self.ledger = Ledger()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._registered_ids: list[str] = []

    def start(self) -> None:
        for name, target in (
            ("read", self._reader),
            ("update", self._updater),
            ("register", self._registrar),
            ("view", self._viewer),
        ):
            thread = threading.Thread(target=self._guard(target), name=f"load-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT + 5)

    def _guard(self, target):
        def run():
            try:
                target()
            except Exception as exc:  # a bug in the load itself must show, not hang the run
                with self.ledger.lock:
                    self.ledger.unexpected.append({"kind": "load-bug", "error": repr(exc)})
                raise

        return run

    def _send(self, client: Http, kind: str, method: str, path: str, **kwargs):
        started = time.monotonic()
        try:
            status, response, data = client.request(method, path, **kwargs)
        except (OSError, http.client.HTTPException) as exc:
            self.ledger.record(kind, None, time.monotonic() - started, path=path, body=repr(exc))
            return None, None, None
        self.ledger.record(kind, status, time.monotonic() - started, path=path, body=data)
        return status, response, data

    # --- reads ---
    def _reader(self) -> None:
        client, rng = Http(self.port), random.Random(1)
        while not self._stop.is_set():
            ids = [u["id"] for u in self.users] + self._registered_ids[-20:]
            uid = rng.choice(ids)
            sent = time.time()
            status, _, data = self._send(client, "read", "GET", f"/api/v1/users/{uid}/")
            if status == 200 and isinstance(data, dict) and isinstance(uid, int):
                self._check_views_read(uid, data.get("view_count", 0))
                self._check_staleness(uid, data.get("bio") or "", sent)
            elif status == 404:  # every user read exists: a seeded one, or a registration answered 201
                with self.ledger.lock:
                    self.ledger.unexpected.append({"kind": "read", "path": f"/api/v1/users/{uid}/", "status": 404})
            self._stop.wait(0.06)

    def _check_views_read(self, uid: int, shown: int) -> None:
        """A read may show views acknowledged, or still in flight (sent, maybe counted, not yet
        answered), or given up unconfirmed; never more. Checked after the answer, when that bound
        can only have grown since the server computed the count."""
        with self.ledger.lock:
            bound = self.ledger.views_acked[uid] + self.ledger.views_open[uid] + self.ledger.views_unsure[uid]
            if shown > bound and len(self.ledger.reads_over) < 1000:
                self.ledger.reads_over.append(
                    {"user": uid, "shown": shown, "acknowledged": self.ledger.views_acked[uid], "bound": bound}
                )

    def _check_staleness(self, uid: int, bio: str, sent: float) -> None:
        """Another client's read may lag the primaries by at most `stale_bound` seconds: it must show at
        least every update acknowledged that long before the read was sent."""
        shown = int(bio[1:]) if bio.startswith("s") and bio[1:].isdigit() else 0
        with self.ledger.lock:
            owed = max((seq for at, seq in self.ledger.patch_acks[uid] if at <= sent - self.stale_bound), default=0)
            if shown < owed and len(self.ledger.reads_stale) < 1000:
                self.ledger.reads_stale.append(
                    {"user": uid, "shown": bio, "owed": f"s{owed}", "bound_s": self.stale_bound}
                )

    # --- updates, each followed by a read of /me that must show it ---
    def _updater(self) -> None:
        client, ledger = Http(self.port), self.ledger
        seq = 0
        while not self._stop.is_set():
            for user in self.users:
                if self._stop.is_set():
                    break
                seq += 1
                uid = user["id"]
                auth = {"Authorization": f"Token {user['token']}"}
                with ledger.lock:
                    ledger.patch_sent[uid] += 1
                    ledger.patch_last_sent[uid] = seq
                status, response, data = self._send(
                    client, "update", "PATCH", "/api/v1/users/me/", body={"bio": f"s{seq}"}, headers=auth
                )
                if status == 200:
                    with ledger.lock:
                        ledger.patch_acked[uid] = seq
                        ledger.patch_acked_count[uid] += 1
                        ledger.patch_acks[uid].append((time.time(), seq))
                    pin = response.getheader("Bulwark-Read-Primary-Until") or ""
                    status, _, data = self._send(
                        client, "me", "GET", "/api/v1/users/me/", headers={**auth, "Bulwark-Read-Primary-Until": pin}
                    )
                    if status == 200 and (data or {}).get("bio") != f"s{seq}":
                        with ledger.lock:
                            ledger.ryw_violations.append({"user": uid, "wrote": f"s{seq}", "read": data.get("bio")})
                self._stop.wait(0.15)

    # --- registrations and views: retried with the same Idempotency-Key ---
    def _retrying(self, kind: str, make_new, on_final, pause: float) -> None:
        client = Http(self.port)
        queue: list[Pending] = []
        while not self._stop.is_set():
            now = time.monotonic()
            due = next((p for p in queue if p.due <= now), None)
            if due is None and len(queue) >= MAX_IN_FLIGHT:  # a client population does not grow without bound
                self._stop.wait(min(0.2, max(0.01, min(p.due for p in queue) - now)))
                continue
            if due is None:
                due = make_new()
                queue.append(due)
            due.attempts += 1
            status, response, data = self._send(
                client, kind, "POST", due.path, body=due.body, headers={"Idempotency-Key": due.key}
            )
            code = data.get("code") if isinstance(data, dict) else None
            retry = (
                status is None or status >= 500 or status == 429 or (status == 409 and code == "idempotency_conflict")
            )
            if retry and time.monotonic() - due.first_sent < RETRY_BUDGET[kind]:
                due.saw_failure = True
                after = response.getheader("Retry-After") if response is not None else None
                wait = min(float(after), MAX_RETRY_WAIT) if after and after.isdigit() else 0.5
                due.due = time.monotonic() + wait
            else:
                queue.remove(due)
                on_final(due, status, data, gave_up=retry)
            self._stop.wait(pause)
        for pending in queue:  # stopped while still retrying: never acknowledged
            on_final(pending, None, None, gave_up=True)

    def _registrar(self) -> None:
        n = 0

        def new():
            nonlocal n
            n += 1
            name = f"{self.prefix}r{n}"
            return Pending(
                "register",
                "/api/v1/users/",
                {"username": name, "email": f"{name}@example.com", "password": PASSWORD},
                uuid.uuid4().hex,
                name,
                time.monotonic(),
            )

        def final(p: Pending, status, data, *, gave_up: bool):
            outcome = {"status": status, "attempts": p.attempts, "gave_up": gave_up, "retried": p.saw_failure}
            if status == 201:
                outcome["acked"] = data["id"]
                self._registered_ids.append(data["id"])
            with self.ledger.lock:
                self.ledger.registered[p.subject] = outcome

        self._retrying("register", new, final, pause=0.3)

    def _viewer(self) -> None:
        rng = random.Random(2)

        def new():
            uid = rng.choice(self.users)["id"]
            with self.ledger.lock:
                self.ledger.views_open[uid] += 1
            return Pending("view", f"/api/v1/users/{uid}/views/", None, uuid.uuid4().hex, uid, time.monotonic())

        def final(p: Pending, status, data, *, gave_up: bool):
            with self.ledger.lock:
                self.ledger.views_open[p.subject] -= 1
                if status == 202:
                    self.ledger.views_acked[p.subject] += 1
                    self.ledger.views_direct += (data or {}).get("status") == "direct"
                elif gave_up or p.saw_failure:
                    self.ledger.views_unsure[p.subject] += 1
                else:  # a final 4xx on a first attempt: nothing was applied, and nothing should be refused
                    self.ledger.unexpected.append({"kind": "view", "path": p.path, "status": status, "body": data})

        self._retrying("view", new, final, pause=0.06)
