"""Django's MessageMiddleware, building a request's message storage only when something uses it.

Django's builds the storage (a cookie storage with its signer, and a session storage) for every
request, about 4 % of the CPU of a cached API read that never shows a message; the admin's pages do.
A storage nothing read nor added to saves nothing in Django's `update()`, so skipping it then is
the same answer.
"""

from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.messages.storage import default_storage
from django.utils.functional import SimpleLazyObject, empty


class LazyMessageMiddleware(MessageMiddleware):
    def process_request(self, request):
        request._messages = SimpleLazyObject(lambda: default_storage(request))

    def process_response(self, request, response):
        messages = request.__dict__.get("_messages")
        if type(messages) is SimpleLazyObject and messages._wrapped is empty:
            return response  # never built: nothing was read or added
        return super().process_response(request, response)
