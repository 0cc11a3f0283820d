"""resilience/lazy_messages.py: Django's messages, the storage built only when used."""

from django.contrib import messages
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpResponse
from django.test import RequestFactory
from django.utils.functional import empty

from resilience.lazy_messages import LazyMessageMiddleware


def _serve(view, cookies=None):
    request = RequestFactory().get("/")
    request.COOKIES.update(cookies or {})
    response = SessionMiddleware(LazyMessageMiddleware(view))(request)
    return request, response


def test_a_request_that_uses_no_message_builds_no_storage_and_sets_no_cookie():
    request, response = _serve(lambda request: HttpResponse("ok"))
    assert request._messages._wrapped is empty
    assert "messages" not in response.cookies


def test_a_message_added_is_stored_and_shown_on_the_next_request():
    def add(request):
        messages.info(request, "Saved.")
        return HttpResponse("ok")

    _request, response = _serve(add)
    stored = response.cookies["messages"].value

    def show(request):
        return HttpResponse(" ".join(str(m) for m in messages.get_messages(request)))

    _request, response = _serve(show, cookies={"messages": stored})
    assert response.content == b"Saved."
    assert response.cookies["messages"]["max-age"] == 0  # shown once: the cookie is deleted
