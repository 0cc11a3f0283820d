from django.db import migrations

from users.sharding.ids import NEXT_ID_SQL


class Migration(migrations.Migration):
    dependencies = [("users", "0001_initial")]

    operations = [
        migrations.RunSQL(
            NEXT_ID_SQL,
            reverse_sql="DROP FUNCTION IF EXISTS users_next_id(integer); DROP SEQUENCE IF EXISTS users_id_seq;",
            hints={"sharded": True},
        ),
    ]
