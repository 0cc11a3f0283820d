from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from resilience import health
from resilience.ratelimit.drf import rate_limited_view

urlpatterns = [
    # First: the API's hot reads are resolved without trying the patterns below (no prefix overlaps).
    path("api/v1/", include("users.urls")),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    # Before the admin's own URLs, so it is the login every link and redirect reaches: limited per
    # client IP (policy admin.login, django-ratelimit's fixed window).
    path("admin/login/", rate_limited_view("admin.login")(admin.site.login)),
    path("admin/", admin.site.urls),
    path("metrics", include("ops.metrics")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
]

handler400 = "resilience.errors.json_400"
handler403 = "resilience.errors.json_403"
handler404 = "resilience.errors.json_404"
handler500 = "resilience.errors.json_500"
