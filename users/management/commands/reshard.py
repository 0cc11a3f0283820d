"""Move logical shards between shard groups online.

manage.py reshard plan --to shard_2            propose an even spread onto shard_2
manage.py reshard plan --to shard_2 --apply    ... and run the proposed moves
manage.py reshard move --logical 700-1023 --to shard_2
manage.py reshard status
manage.py reshard resume [MOVE_ID]             continue unfinished moves (all, or one)
manage.py reshard rollback MOVE_ID             undo a move that has not switched the map yet
"""

from django.core.management.base import BaseCommand, CommandError

from users.models import ShardMove
from users.sharding import resharding
from users.sharding.shardmap import shard_map


def _parse_logical(spec: str) -> list[int]:
    result = []
    for part in spec.split(","):
        start, _, end = part.partition("-")
        result += list(range(int(start), int(end or start) + 1))
    return result


class Command(BaseCommand):
    help = "Move logical shards between shard groups while the service runs."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        p = sub.add_parser("plan")
        p.add_argument("--to", required=True)
        p.add_argument("--apply", action="store_true")
        m = sub.add_parser("move")
        m.add_argument("--logical", required=True, help="e.g. 700-1023 or 1,5,9-12")
        m.add_argument("--to", required=True)
        sub.add_parser("status")
        r = sub.add_parser("resume")
        r.add_argument("move_id", nargs="?", type=int)
        b = sub.add_parser("rollback")
        b.add_argument("move_id", type=int)

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"_{action}")(**options)
        except resharding.MoveError as exc:
            raise CommandError(str(exc)) from exc

    def _run(self, move):
        self.stdout.write(f"running {move}")
        resharding.move_run(move)
        self.stdout.write(
            self.style.SUCCESS(
                f"{move}; {move.rows_copied} rows copied, writes refused for about {move.longest_fence_ms} ms"
            )
        )

    def _plan(self, *, to, apply, **_):
        proposal = resharding.plan(target=to)
        if not proposal:
            self.stdout.write(f"{to} already holds its share")
        for logical, source in proposal:
            self.stdout.write(f"move {len(logical)} logical shards {logical[0]}-{logical[-1]} from {source} to {to}")
        if apply:
            for logical, _source in proposal:
                self._run(resharding.move_create(logical_shards=logical, target=to))

    def _move(self, *, logical, to, **_):
        self._run(resharding.move_create(logical_shards=_parse_logical(logical), target=to))

    def _status(self, **_):
        table = shard_map.table()
        for group in sorted(set(table)):
            self.stdout.write(f"{group}: {table.count(group)} logical shards")
        for move in ShardMove.objects.using("default").order_by("-id")[:20]:
            self.stdout.write(str(move))

    def _resume(self, *, move_id=None, **_):
        moves = ShardMove.objects.using("default").exclude(state__in=[ShardMove.DONE, ShardMove.ROLLED_BACK])
        if move_id:
            moves = moves.filter(pk=move_id)
        for move in moves.order_by("id"):
            self._run(move)

    def _rollback(self, *, move_id, **_):
        move = ShardMove.objects.using("default").get(pk=move_id)
        resharding.move_rollback(move)
        self.stdout.write(self.style.SUCCESS(str(move)))
