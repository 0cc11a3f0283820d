"""Migrate the default database and every shard primary, then seed the shard map if it is empty.

Adding a shard to SHARD_DATABASE_URLS and running this prepares the new shard (its tables and id
function); moving logical shards onto it is `manage.py reshard`'s job.
"""

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction

from users.models import ShardMapEntry
from users.sharding.shardmap import initial_ranges, shard_map


class Command(BaseCommand):
    help = "Migrate the default database and every shard, and seed the shard map."

    def handle(self, *args, **options):
        verbosity = options["verbosity"]
        for alias in ["default", *settings.SHARD_GROUPS]:
            if verbosity:
                self.stdout.write(f"migrating {alias}")
            call_command("migrate", database=alias, interactive=False, verbosity=max(0, verbosity - 1))
        with transaction.atomic(using="default"):
            if not ShardMapEntry.objects.using("default").exists():
                entries = [
                    ShardMapEntry(logical_shard=ls, group=group)
                    for start, end, group in initial_ranges()
                    for ls in range(start, end + 1)
                ]
                ShardMapEntry.objects.using("default").bulk_create(entries)
                if verbosity:
                    self.stdout.write(f"seeded the shard map: {len(entries)} logical shards")
        shard_map.invalidate()
