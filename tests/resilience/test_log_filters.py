"""resilience/log_filters.py: what a client can make Django's security loggers write is one short line."""

import logging

from django.test import Client


def test_a_disallowed_host_is_logged_as_one_short_line_without_a_traceback(caplog, settings):
    settings.ALLOWED_HOSTS = ["testserver"]
    host = "h" + "x" * 5000 + ".evil.example"
    with caplog.at_level(logging.INFO, logger="django.security"):
        response = Client().get("/api/v1/users/1/", headers={"host": host})
    assert response.status_code == 400
    records = [r for r in caplog.records if r.name == "django.security.DisallowedHost"]
    assert records, "Django logs the refusal"
    for record in records:
        assert record.exc_info is None and record.exc_text is None
        assert len(record.getMessage()) <= 301 and "Invalid HTTP_HOST header" in record.getMessage()
