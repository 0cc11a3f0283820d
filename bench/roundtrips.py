"""Count Redis round trips from this process: every packed command sent is one round trip (a
pipeline sends once). Instrumentation for the benchmark, not a stand-in for Redis."""

import contextlib
from collections import Counter
from urllib.parse import urlsplit

from redis.connection import AbstractConnection


class Counts:
    def __init__(self):
        self.sent = Counter()

    def total(self) -> int:
        return sum(self.sent.values())

    def by_port(self, url: str) -> int:
        return self.sent[urlsplit(url).port]


@contextlib.contextmanager
def counting():
    counts = Counts()
    original = AbstractConnection.send_packed_command

    def send_packed_command(self, command, check_health=True):
        counts.sent[self.port] += 1
        return original(self, command, check_health)

    AbstractConnection.send_packed_command = send_packed_command
    try:
        yield counts
    finally:
        AbstractConnection.send_packed_command = original
