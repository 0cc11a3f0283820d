"""project/db/lifecycle.py: Django's per-request connection bookkeeping, over the connections a thread
opened (installed by project/wsgi.py in the serving processes)."""

import threading
import time

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import connections

from project.db import lifecycle

pytestmark = pytest.mark.usefixtures("real_db")


@pytest.fixture
def installed():
    lifecycle.install()
    yield
    lifecycle.uninstall()


def _in_new_thread(fn):
    """fn()'s result, run in a fresh thread (its own connections, as a server's request thread)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _request():
    request_started.send(sender=WSGIHandler, environ={})
    request_finished.send(sender=WSGIHandler)


def test_a_request_that_opens_no_connection_walks_no_database_alias(installed, monkeypatch):
    walks = []
    walk = connections.all
    monkeypatch.setattr(connections, "all", lambda *args, **kwargs: walks.append(1) or walk(*args, **kwargs))

    def scenario():
        _request()
        return len(walks)

    assert _in_new_thread(scenario) == 0


def test_an_opened_connection_gets_django_bookkeeping_at_each_request(installed):
    def scenario():
        conn = connections["shard_0"]
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        conn.queries_log.append({"sql": "SELECT 1", "time": "0.000"})
        conn.close_at = time.monotonic() + 60  # not yet past CONN_MAX_AGE
        request_started.send(sender=WSGIHandler, environ={})
        log_cleared, kept = len(conn.queries_log) == 0, conn.connection is not None
        conn.close_at = time.monotonic() - 1  # now past it
        request_finished.send(sender=WSGIHandler)
        untouched = connections["shard_1"].connection is None  # never opened here: not opened for it
        return log_cleared, kept, conn.connection is None, untouched

    assert _in_new_thread(scenario) == (True, True, True, True)


def test_a_connection_left_in_a_transaction_is_closed_at_the_end_of_the_request(installed):
    def scenario():
        conn = connections["default"]
        conn.ensure_connection()
        conn.set_autocommit(False)  # what Django's close_if_unusable_or_obsolete closes
        _request()
        return conn.connection is None

    assert _in_new_thread(scenario)


def test_a_receiver_connected_after_install_is_sent_the_requests_signals(installed):
    """install() caches each request signal's receivers; connecting one empties the cache (Django's
    own rule for cached signals), so a receiver added later (tracing, a test) still hears every request."""
    heard = []

    def receiver(sender, **kwargs):
        heard.append(sender)

    _request()  # fills the cache
    request_started.connect(receiver, dispatch_uid="test.lifecycle.late")
    try:
        _request()
    finally:
        request_started.disconnect(dispatch_uid="test.lifecycle.late")
    _request()
    assert heard == [WSGIHandler]
