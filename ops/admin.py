"""The operations dashboards (ops/dashboard/) in the admin: they live under /admin/bulwark/ and are
linked from the admin index (templates/admin/index.html)."""

from django.contrib import admin

from .dashboard.urls import install as install_dashboards

install_dashboards(admin.site)
