import os

from django.core.wsgi import get_wsgi_application

from project import front, tracing
from project.db import lifecycle

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")
# Before the handler reads MIDDLEWARE: Django's instrumentation adds its own (a no-op when tracing is off).
tracing.setup()
# The hottest reads take a short way through Django's handling (project/front.py).
application = front.application(get_wsgi_application())
# Django's per-request connection bookkeeping over the connections a thread opened, not every alias.
lifecycle.install()
