"""The baselines' views (bench/bare_settings.py): one django-redis GET each, of the value the bench
stores under BARE_KEY (a public profile, so the bodies match the cached read's in size)."""

from django.core.cache import cache
from django.http import HttpResponse, JsonResponse
from django.urls import path
from rest_framework.decorators import api_view
from rest_framework.response import Response

BARE_KEY = "bench:bare:{}"


@api_view(["GET"])
def bare_drf(request, user_id):
    return Response(cache.get(BARE_KEY.format(user_id)))


def bare_django(request, user_id):
    return JsonResponse(cache.get(BARE_KEY.format(user_id)))


def live(request):
    return HttpResponse(b"ok")  # what bench/__main__.py's server() waits for


urlpatterns = [
    path("bare/drf/<int:user_id>", bare_drf),
    path("bare/django/<int:user_id>", bare_django),
    path("health/live", live),
]
