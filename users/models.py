"""User accounts, sharded across the shard groups; uniqueness claims and the shard map in default.

Sharded models carry `sharded = True`: the router migrates them only onto shard primaries, and code
addresses them with an explicit `.using(alias)` chosen by users/sharding/access.py.
"""

from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


class User(models.Model):
    """A product user account. Lives on the shard its id names; `id` comes from users_next_id()."""

    sharded = True

    id = models.BigIntegerField(primary_key=True)
    logical_shard = models.SmallIntegerField(db_index=True)
    username = models.CharField(max_length=150)  # as shown: NFKC, letter case kept (users/identity.py)
    username_key = models.CharField(max_length=150)  # identity_key(username): what lookups and login compare
    email = models.EmailField(max_length=254)
    password = models.CharField(max_length=128)
    display_name = models.CharField(max_length=100, blank=True, default="")
    bio = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    version = models.PositiveIntegerField(default=1)  # profile edits only: ETag / If-Match
    rev = models.BigIntegerField(default=1)  # every write (edits, flushes): the cache's version
    last_seen_at = models.DateTimeField(null=True, blank=True)
    view_count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            # Per-shard backstops; global uniqueness is UniqueClaim's job.
            models.UniqueConstraint(fields=["username_key"], name="users_user_username_key"),
            models.UniqueConstraint(Lower("email"), name="users_user_email_ci"),
        ]

    def __str__(self):
        return f"{self.username} ({self.id})"


class Token(models.Model):
    """An API token: only the HMAC-SHA256 digest of its secret is stored, on the user's shard."""

    sharded = True

    CLIENT_IP_MAX, USER_AGENT_MAX = 45, 200

    digest = models.CharField(max_length=64, primary_key=True)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="tokens")
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)  # written at most once a minute
    client_ip = models.CharField(max_length=CLIENT_IP_MAX, blank=True, default="")  # of the last use (or issue)
    user_agent = models.CharField(max_length=USER_AGENT_MAX, blank=True, default="")

    def __str__(self):
        return f"token of {self.user_id}"


class UniqueClaim(models.Model):
    """Global uniqueness of a username or email across all shards (default database).

    A claim is taken before the user row is written; `confirmed` is set after. A claim whose user row
    does not hold the value (a crash between steps) is repaired when it gets in someone's way.
    """

    USERNAME, EMAIL = "username", "email"

    kind = models.CharField(max_length=16, choices=[(USERNAME, USERNAME), (EMAIL, EMAIL)])
    value = models.CharField(max_length=254)
    user_id = models.BigIntegerField(db_index=True)
    confirmed = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "value"], name="users_claim_kind_value")]

    def __str__(self):
        return f"{self.kind}={self.value} -> {self.user_id}"


class ShardMapEntry(models.Model):
    """Logical shard -> physical shard group (the shard map as data)."""

    logical_shard = models.IntegerField(primary_key=True)
    group = models.CharField(max_length=64)

    class Meta:
        verbose_name_plural = "shard map entries"

    def __str__(self):
        return f"{self.logical_shard} -> {self.group}"


class OutboxEvent(models.Model):
    """A user event written in the same shard transaction as the change it describes (an outbox), so
    a crash can neither lose nor invent one. Webhook delivery reads it from there."""

    sharded = True

    id = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField(unique=True)
    event = models.CharField(max_length=32)
    user_id = models.BigIntegerField()
    data = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # The request that made the change (resilience/request_id.py): its webhooks carry it to receivers.
    # db_default: processes of the previous release, still running during a roll-out, insert without it.
    request_id = models.CharField(max_length=128, blank=True, default="", db_default="")

    def __str__(self):
        return f"{self.event} {self.user_id}"


class WriteBehindBatch(models.Model):
    """Ledger of write-behind batches applied on this shard, per logical shard, written in the same
    statement as the batch's UPDATE: a batch is applied at most once per logical shard, whoever
    retries it — and the ledger rows of a logical shard move with it when it is resharded."""

    sharded = True

    batch_id = models.CharField(max_length=32)
    logical_shard = models.SmallIntegerField()
    applied_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch_id", "logical_shard"], name="users_wb_batch_ls")]

    def __str__(self):
        return f"{self.batch_id}/{self.logical_shard}"


class FrozenLogicalShard(models.Model):
    """A logical shard in the final switch of a move, on its source shard: triggers refuse every
    write to its rows (SQLSTATE BW001 -> 503 + Retry-After), so the last copy misses nothing."""

    sharded = True

    logical_shard = models.SmallIntegerField(primary_key=True)
    frozen_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return str(self.logical_shard)


class ShardMove(models.Model):
    """An online move of logical shards between shard groups (default database). Each step is
    idempotent and recorded, so a killed move is resumed or rolled back by `manage.py reshard`."""

    PLANNED, COPIED, FENCED, VERIFIED, SWITCHED, DONE, ROLLED_BACK = (
        "planned",
        "copied",
        "fenced",
        "verified",
        "switched",
        "done",
        "rolled_back",
    )
    STATES = [PLANNED, COPIED, FENCED, VERIFIED, SWITCHED, DONE, ROLLED_BACK]

    logical_shards = models.JSONField()
    source = models.CharField(max_length=64)
    target = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=[(s, s) for s in STATES], default=PLANNED)
    rows_copied = models.BigIntegerField(default=0)
    longest_fence_ms = models.FloatField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        count = len(self.logical_shards)
        return f"move {self.pk}: {count} logical shards {self.source} -> {self.target} ({self.state})"
