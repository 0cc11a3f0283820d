"""The dashboards' URLs inside an admin site (under /admin/bulwark/), each behind `admin_view` (staff
only: others are redirected to the admin login)."""

from functools import partial, update_wrapper

from django.urls import path

from . import overrides, views

PAGES = [
    ("overview/", views.overview, "bulwark_overview"),
    ("overview.json", views.overview_json, "bulwark_overview_json"),
    ("breakers/", views.breakers, "bulwark_breakers"),
    ("breakers/action/", views.breaker_action, "bulwark_breaker_action"),
    ("ratelimits/", views.ratelimits, "bulwark_ratelimits"),
    ("ratelimits/reset/", views.ratelimit_reset, "bulwark_ratelimit_reset"),
    ("overrides/", overrides.overrides_page, "bulwark_overrides"),
    ("overrides/clear/", overrides.override_clear, "bulwark_override_clear"),
]


def dashboard_urls(site) -> list:
    """URL patterns for `site.get_urls()`; reversed as "<site name>:bulwark_*"."""
    patterns = []
    for route, view, name in PAGES:
        bound = update_wrapper(partial(view, site=site), view)
        patterns.append(path(f"bulwark/{route}", site.admin_view(bound), name=name))
    return patterns


def install(site) -> None:
    """Put the dashboards in front of `site`'s own URLs (once; the app index would not match them,
    but the admin's catch-all view would)."""
    if getattr(site, "_bulwark_dashboards", False):
        return
    original = site.get_urls

    def get_urls():
        return dashboard_urls(site) + original()

    site.get_urls = get_urls
    site._bulwark_dashboards = True
