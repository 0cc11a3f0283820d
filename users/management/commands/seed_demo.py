"""Seed a few demo users on an empty install (idempotent)."""

from django.core.management.base import BaseCommand

from users import selectors, services


class Command(BaseCommand):
    help = "Create demo users if they do not exist."

    def handle(self, *args, **options):
        for name in ("alice", "bob", "carol", "dave", "erin"):
            if selectors.user_get_by_username(username=name) is None:
                services.user_create(
                    username=name,
                    email=f"{name}@example.com",
                    password=f"demo-{name}-pass-2026",
                    display_name=name.title(),
                )
                self.stdout.write(f"created demo user {name}")
