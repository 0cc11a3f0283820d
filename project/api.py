"""DRF glue shared by every API view: cheap answers to questions whose answer cannot vary."""

from django.conf import settings
from drf_spectacular.authentication import SessionScheme
from rest_framework import authentication
from rest_framework.negotiation import DefaultContentNegotiation


class JsonContentNegotiation(DefaultContentNegotiation):
    """The API renders JSON only, so an absent, `*/*` or `application/json` Accept header needs no
    parsing; anything else (and `?format=`) goes through DRF's full negotiation, including its 406."""

    PLAIN = {"", "*/*", "application/json"}

    def select_renderer(self, request, renderers, format_suffix=None):
        if (
            len(renderers) == 1
            and not format_suffix
            and request.META.get("HTTP_ACCEPT", "") in self.PLAIN
            and "format=" not in request.META.get("QUERY_STRING", "")
        ):
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)

    def get_accept_list(self, request):
        """DRF's list without the media ranges the client refuses: `q=0` means "not acceptable" (RFC 9110
        12.4.2), which DRF's negotiation does not look at (it answered `application/json;q=0` with JSON).
        Refusing every range leaves nothing to match: DRF's 406."""
        return [entry for entry in super().get_accept_list(request) if not _refused(entry)]


def _refused(media_range: str) -> bool:
    for parameter in media_range.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip()) == 0
            except ValueError:
                return False  # a malformed weight: DRF's own reading applies
    return False


class SessionAuthentication(authentication.SessionAuthentication):
    """Staff through the admin session. A request without the session cookie cannot have one, so it is
    passed over without loading the session and the auth user."""

    def authenticate(self, request):
        if settings.SESSION_COOKIE_NAME not in request._request.COOKIES:
            return None
        return super().authenticate(request)


class SessionAuthenticationScheme(SessionScheme):
    """The OpenAPI security scheme of the session authentication above: the same as DRF's."""

    target_class = "project.api.SessionAuthentication"
