"""The Celery app. Beat's schedule lives here, next to the tasks it names."""

import os

from celery import Celery
from celery.signals import task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")

app = Celery("bulwark")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
def _fresh_read_context(**_kwargs):
    # A task reads its own writes (pinning after its first write), never a previous task's.
    from project.db import pinning

    pinning.reset()
