from django.db import migrations

from users.sharding.fence_sql import forward_sql, reverse_sql


class Migration(migrations.Migration):
    dependencies = [("users", "0003_resharding")]

    operations = [migrations.RunSQL(forward_sql(), reverse_sql=reverse_sql(), hints={"sharded": True})]
