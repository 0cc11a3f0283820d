"""Create a staff superuser (Django's auth user, default database) if none exists.

Uses DJANGO_SUPERUSER_USERNAME / _PASSWORD / _EMAIL when set; otherwise generates a password and
prints it once.
"""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from project.settings.env import env


class Command(BaseCommand):
    help = "Create a superuser if there is none."

    def handle(self, *args, **options):
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        # Read when the command runs (not settings: they are `make run`'s bootstrap inputs, not config).
        username = env("DJANGO_SUPERUSER_USERNAME", "admin")
        email = env("DJANGO_SUPERUSER_EMAIL", "admin@example.com")
        password = env("DJANGO_SUPERUSER_PASSWORD", "")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email=email, password=password)
        if generated:
            self.stdout.write(
                self.style.WARNING(
                    f"Created superuser '{username}' with password: {password}  (shown once; change it in /admin/)"
                )
            )
        else:
            self.stdout.write(f"Created superuser '{username}'.")
