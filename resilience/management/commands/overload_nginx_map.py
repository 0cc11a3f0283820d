"""manage.py overload_nginx_map: write deploy/nginx-priority.conf, the nginx `map` blocks that put each
request in the priority class the app's registry gives it (resilience/overload/nginx.py).

Run it after changing a registration (users/apps.py, ops/apps.py); a test fails until the committed
file is regenerated. `--check` exits 1 if the file differs, writing nothing.
"""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from resilience.overload.nginx import render

DEFAULT_PATH = Path(settings.BASE_DIR) / "deploy" / "nginx-priority.conf"


class Command(BaseCommand):
    help = "Write deploy/nginx-priority.conf (nginx's priority classes) from the overload registry."

    def add_arguments(self, parser):
        parser.add_argument("--output", type=Path, default=DEFAULT_PATH)
        parser.add_argument("--check", action="store_true", help="exit 1 if the file is not up to date")

    def handle(self, *args, output, check, **options):
        text = render("project.urls")
        if check:
            if not output.exists() or output.read_text() != text:
                raise CommandError(f"{output} differs from the registry: run manage.py overload_nginx_map")
            return
        output.write_text(text)
        self.stdout.write(f"wrote {output}")
