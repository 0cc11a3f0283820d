"""One URL served by one API class per operation (HackSoft's style: `UserRegisterApi` and `UserListApi`
both at /users/), and the schema generator that documents each operation from its own class.

Apart from project/api.py, which DRF's settings import: DRF's views import those settings.
"""

from django.views.decorators.csrf import csrf_exempt
from drf_spectacular import generators
from rest_framework.views import APIView


def by_method(*apis: type[APIView]):
    """One URL served by one API class per operation: `by_method(UserRegisterApi, UserListApi)` sends
    each request to the class that has its method (HEAD to the one with GET).

    The first class answers what no class serves: OPTIONS and the 405 of any other method, after its
    own authentication, permissions and rate limit, as one class serving the whole URL did; so the
    classes of one URL should share their permissions. Every answer's Allow names all the URL's methods.
    Each class keeps its own CSRF exemption (DRF's, as for every API view), permissions and rate limits;
    SchemaGenerator below documents each operation from its own class.
    """
    routes = {}
    for api in apis:
        for method in api().allowed_methods:  # not set up: HEAD and OPTIONS are added below
            if method not in ("HEAD", "OPTIONS"):
                routes.setdefault(method, api.as_view())
    if "GET" in routes:
        routes["HEAD"] = routes["GET"]  # as View.setup does: HEAD is allowed where GET is
    fallback = apis[0].as_view()
    allow = ", ".join(m.upper() for m in APIView.http_method_names if m.upper() in routes or m == "options")

    @csrf_exempt  # each route is: DRF's SessionAuthentication enforces CSRF itself
    def view(request, *args, **kwargs):
        response = routes.get(request.method, fallback)(request, *args, **kwargs)
        response["Allow"] = allow
        return response

    view.cls, view.initkwargs, view.routes = apis[0], {}, routes  # for the schema generator (and is_api_view)
    view.allow = allow  # for a view answering some requests of the URL itself (users/fastpath.py)
    return view


class EndpointEnumerator(generators.EndpointEnumerator):
    """Lists a `by_method` URL's operations by the methods its classes serve."""

    def get_allowed_methods(self, callback):
        if not hasattr(callback, "routes"):
            return super().get_allowed_methods(callback)
        return [method for method in callback.routes if method != "HEAD"]


class SchemaGenerator(generators.SchemaGenerator):
    """drf-spectacular's generator, documenting each operation of a `by_method` URL from the class that
    serves it (its serializers, operation id and tags, as if it served the URL alone)."""

    endpoint_inspector_cls = EndpointEnumerator

    def create_view(self, callback, method, request=None):
        return super().create_view(getattr(callback, "routes", {}).get(method, callback), method, request)
