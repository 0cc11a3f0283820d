"""A NUL character in the query string is a 400 before any view sees it.

No parameter of the API or the admin can hold one, and PostgreSQL text cannot store one: the admin's
changelist search and filters (`?q=%00`, `?username__startswith=%00`) passed it to a query, and
psycopg's "PostgreSQL text fields cannot contain NUL" became a 500 (found by the black-box pass). The
API's serializers already refuse NUL in the values they read; this covers every other reader at once.
"""

from django.http import JsonResponse

from .errors import error_body


class RefuseNulQueryMiddleware:
    """400 with the JSON error shape for a query string holding an encoded NUL (`%00`, any case)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if "%00" in request.META.get("QUERY_STRING", ""):  # percent-encoding digits: "0" has no case
            return JsonResponse(error_body("The query string holds a NUL character (%00).", "bad_request"), status=400)
        return self.get_response(request)
