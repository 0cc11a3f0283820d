"""A task for tests only: it reads a user's display name from where the router sends it, several
times, and leaves what it saw in the state Redis (the tests' workers keep no results)."""

import json

from celery import shared_task
from django_redis import get_redis_connection

from project.db.replicas import monitor
from users.models import User
from users.sharding.access import group_for_user_id, read_on


@shared_task(name="tests.read_display_names", ignore_result=True)
def read_display_names(user_id: int, reads: int, key: str) -> None:
    # A worker that has run a while has probed its replicas; a fresh one would read primaries until
    # its first probe, which would hide what the router does with a paused replica.
    monitor.refresh_now()
    group = group_for_user_id(user_id)

    def fetch(alias):
        return alias, User.objects.using(alias).filter(id=user_id).values_list("display_name", flat=True).first()

    seen = [read_on(group, fetch) for _ in range(reads)]
    get_redis_connection("state").rpush(key, json.dumps(seen))
