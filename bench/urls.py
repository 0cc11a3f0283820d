from django.core.cache import cache
from django.http import JsonResponse
from django.urls import path

from project.urls import handler400, handler403, handler404, handler500  # noqa: F401
from project.urls import urlpatterns as project_urlpatterns


def bare(request):
    """The baseline: a bare Django view doing one django-redis GET."""
    return JsonResponse({"value": cache.get("bench:bare")})


urlpatterns = [path("bench/bare", bare), *project_urlpatterns]
