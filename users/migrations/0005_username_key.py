"""Store the username's identity key (users/identity.py) and make it the per-shard uniqueness backstop,
replacing lower(username): PostgreSQL's lower() is not the identity the claims and the login use."""

from django.db import migrations, models

from users.identity import identity_key


def backfill(apps, schema_editor):
    User = apps.get_model("users", "User")
    alias = schema_editor.connection.alias
    batch = []
    for user in User.objects.using(alias).only("id", "username").iterator(chunk_size=1000):
        user.username_key = identity_key(user.username)
        batch.append(user)
        if len(batch) == 1000:
            User.objects.using(alias).bulk_update(batch, ["username_key"])
            batch = []
    User.objects.using(alias).bulk_update(batch, ["username_key"])


class Migration(migrations.Migration):
    dependencies = [("users", "0004_fence_triggers")]

    operations = [
        migrations.AddField(
            model_name="user",
            name="username_key",
            field=models.CharField(default="", max_length=150),
            preserve_default=False,
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop, hints={"sharded": True}),
        migrations.RemoveConstraint(model_name="user", name="users_user_username_ci"),
        migrations.AddConstraint(
            model_name="user",
            constraint=models.UniqueConstraint(fields=["username_key"], name="users_user_username_key"),
        ),
    ]
