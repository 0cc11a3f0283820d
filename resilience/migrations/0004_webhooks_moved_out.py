"""The webhook models moved to the webhooks app (webhooks/migrations/0001_initial.py takes them over);
their tables stay where they are, so this only drops them from the resilience app's state."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("resilience", "0003_operation_permissions"),
        ("webhooks", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.DeleteModel(name="WebhookDelivery"),
                migrations.DeleteModel(name="WebhookSubscriber"),
            ],
        )
    ]
