"""project/api_routing.py: a URL served by one API class per operation answers and is documented as one
class serving the whole URL was (/users/: register and list; /users/me/: read, edit, delete)."""

import pytest
from django.test import Client

from tests.users.conftest import Api

pytestmark = pytest.mark.usefixtures("real_db")

USERS, ME = "/api/v1/users/", "/api/v1/users/me/"
USERS_ALLOW, ME_ALLOW = "GET, POST, HEAD, OPTIONS", "GET, PATCH, DELETE, HEAD, OPTIONS"


def test_the_schema_documents_each_operation_from_its_own_class():
    paths = Client().get("/api/schema/", {"format": "json"}).json()["paths"]
    users, me = paths[USERS], paths[ME]
    assert {method: op["operationId"] for method, op in users.items()} == {
        "get": "users_list",
        "post": "v1_users_create",
    }
    assert {p["name"] for p in users["get"]["parameters"]} == {"username", "limit", "cursor"}
    assert {} in users["get"]["security"] and {} in users["post"]["security"]  # the lookup is anonymous too
    assert users["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RegisterInput")
    assert users["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/PrivateProfile"
    )
    assert {method: op["operationId"] for method, op in me.items()} == {
        "get": "v1_users_me_retrieve",
        "patch": "v1_users_me_partial_update",
        "delete": "v1_users_me_destroy",
    }
    assert me["patch"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PatchedPatchInput")
    assert {op["tags"][0] for op in (*users.values(), *me.values())} == {"v1"}


def test_every_answer_names_all_methods_of_the_url():
    anon = Api()
    registered = anon.register("routed")
    assert registered.status_code == 201 and registered["Allow"] == USERS_ALLOW
    lookup = anon.get(USERS, username="routed")
    assert lookup.status_code == 200 and lookup["Allow"] == USERS_ALLOW
    head = anon.client.head(USERS, {"username": "routed"})
    assert (head.status_code, head.content, head["Allow"]) == (200, b"", USERS_ALLOW)
    options = anon.client.options(USERS)
    assert options.status_code == 200 and options["Allow"] == USERS_ALLOW
    for method in ("put", "patch", "delete", "trace"):
        refused = getattr(anon.client, method)(USERS)
        assert (refused.status_code, refused["Allow"]) == (405, USERS_ALLOW), method
        assert refused.json()["code"] == "method_not_allowed"


def test_methods_no_class_serves_pass_the_first_classes_permissions_first():
    anon = Api()
    anon.register("owner")
    assert anon.client.put(ME).status_code == 401  # UserMeApi's IsProductUser, as before the split
    anon.login("owner")
    for method in ("put", "post", "trace"):
        refused = getattr(anon.client, method)(ME, headers=anon._headers({}))
        assert (refused.status_code, refused["Allow"]) == (405, ME_ALLOW), method
    for response in (anon.get(ME), anon.patch(ME, {"bio": "x"}), anon.client.options(ME, headers=anon._headers({}))):
        assert response.status_code == 200 and response["Allow"] == ME_ALLOW


def test_each_operation_keeps_its_rate_limit_policy_and_csrf_exemption():
    strict = Client(enforce_csrf_checks=True)  # no session: nothing for CSRF to protect, as before
    created = strict.post(
        USERS,
        {"username": "csrf", "email": "csrf@example.com", "password": "Correct-Horse-2026"},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    assert created["RateLimit-Policy"].endswith(";w=3600")  # users.register, not api.write
    assert strict.get(USERS, {"username": "csrf"})["RateLimit-Policy"].endswith(";w=60")  # api.read


def test_django_s_error_views_answer_in_the_api_s_compact_json(client):
    """A path no route takes (an escaped slash, a missing trailing slash) is answered by Django's
    handler404: the same compact JSON bytes as the API's own 404, not JsonResponse's spaced ones."""
    for path in ("/api/v1/users/1%2F/", "/api/v1/users/1", "/no/such/page"):
        response = client.get(path)
        assert response.status_code == 404 and response["Content-Type"] == "application/json", path
        assert response.content.startswith(b'{"detail":"Not found.","code":"not_found"'), response.content
