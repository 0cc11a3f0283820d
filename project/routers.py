"""Django database router: non-sharded models live in the default group, sharded ones on shards.

Sharded models (those with `sharded = True` on the class) are always addressed explicitly with
`.using(alias)` by users/selectors.py and users/services.py, which pick the shard; the router then has
no opinion on reads and writes, and only decides where their tables are migrated.
"""

from django.conf import settings

from project.db import routing

# Sessions and accounts decide who may act: a logged-out session or a deactivated staff user read from
# a lagging replica would live on for as long as the replica lags. They are small, hot only on admin
# requests, and always read from the default primary.
PRIMARY_READ_APPS = frozenset({"sessions", "auth"})


def is_sharded(model) -> bool:
    return getattr(model, "sharded", False)


class GroupRouter:
    def db_for_read(self, model, **hints):
        if is_sharded(model):
            return None
        if model._meta.app_label in PRIMARY_READ_APPS:
            return routing.primary_alias("default")
        return routing.read_alias("default")

    def db_for_write(self, model, **hints):
        if is_sharded(model):
            return None
        return routing.write_alias("default")

    def allow_relation(self, obj1, obj2, **hints):
        g1 = routing.group_of_alias(obj1._state.db or "default")
        g2 = routing.group_of_alias(obj2._state.db or "default")
        return g1 == g2 or None

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        # Migrations hand over historical models, which lack class attributes: ask the real one.
        model = None
        if model_name is not None:
            from django.apps import apps

            try:
                model = apps.get_model(app_label, model_name)
            except LookupError:
                model = None
        on_shard = db in settings.SHARD_GROUPS
        if (model is not None and is_sharded(model)) or hints.get("sharded"):
            return on_shard
        return db == "default"
