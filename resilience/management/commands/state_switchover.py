"""manage.py state_switchover: promote a replica of the state Redis on purpose (maintenance, a move),
through its Sentinels, losing no acknowledged write (resilience/sentinel.py's `switchover`).

Use it instead of a bare SENTINEL FAILOVER, which lets the old master take writes that are then lost
when the pause deploy/sentinel-notify sends loses its race with the promotion (docs/operations.md,
"Redis Sentinel").
"""

from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from resilience.sentinel import SwitchoverFailed, switchover


class Command(BaseCommand):
    help = "Promote a replica of the state Redis (behind Sentinel) with no acknowledged write lost."

    def add_arguments(self, parser):
        parser.add_argument(
            "--pause-ms", type=int, default=10_000, help="the longest writes wait (deploy/sentinel-reconfig unpauses)"
        )
        parser.add_argument("--timeout", type=float, default=5.0, help="seconds for the replicas to catch up")

    def handle(self, *args, pause_ms, timeout, **options):
        sentinels = settings.CACHES.get("state", {}).get("OPTIONS", {}).get("SENTINELS")
        if not sentinels:
            raise CommandError("The state Redis is not behind Sentinel (REDIS_STATE_SENTINELS is unset).")
        service_name = urlsplit(settings.REDIS_STATE_URL).hostname
        try:
            old, new = switchover(sentinels, service_name, pause_ms=pause_ms, timeout=timeout)
        except SwitchoverFailed as exc:
            raise CommandError(f"switchover failed: {exc}") from exc
        self.stdout.write(f"{service_name}: {old[0]}:{old[1]} -> {new[0]}:{new[1]}")
