"""resilience/nul.py: a NUL in the query string is a 400 with the JSON error shape, wherever it is sent
(found by the black-box pass: the admin's search and filters passed it to PostgreSQL, a 500)."""

import pytest


@pytest.mark.parametrize(
    "path",
    [
        "/admin/users/user/?q=%00",
        "/admin/users/user/?q=a%00b@example.com",
        "/admin/auth/user/?username__startswith=%00",
        "/admin/auth/user/?email__contains=%00",
        "/admin/webhooks/webhookdelivery/?status__exact=%00",
        "/api/v1/users/?username=a%00",
    ],
)
def test_a_nul_in_the_query_string_is_a_400(admin_client, path):
    response = admin_client.get(path)
    assert response.status_code == 400, response.content[:200]
    body = response.json()
    assert body["code"] == "bad_request" and body["request_id"] == response["X-Request-ID"]


def test_the_same_pages_without_a_nul_answer(admin_client):
    assert admin_client.get("/admin/users/user/?q=a0b@example.com").status_code == 200
    assert admin_client.get("/admin/auth/user/?username__startswith=%01").status_code == 200
