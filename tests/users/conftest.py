import json

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client

PASSWORD = "Correct-Horse-2026"


class Api:
    """A JSON client for the API, carrying a token once logged in."""

    def __init__(self):
        self.client = Client()
        self.token = None

    def _headers(self, headers):
        h = dict(headers or {})
        if self.token:
            h.setdefault("Authorization", f"Token {self.token}")
        return h

    def get(self, path, headers=None, **params):
        return self.client.get(path, params, headers=self._headers(headers))

    def post(self, path, body=None, headers=None):
        return self.client.post(
            path,
            json.dumps(body) if body is not None else "",
            content_type="application/json",
            headers=self._headers(headers),
        )

    def patch(self, path, body, headers=None):
        return self.client.patch(
            path, json.dumps(body), content_type="application/json", headers=self._headers(headers)
        )

    def delete(self, path, body=None, headers=None):
        data = json.dumps(body) if body is not None else ""
        return self.client.delete(path, data, content_type="application/json", headers=self._headers(headers))

    def register(self, username, email=None, password=PASSWORD, **extra):
        return self.post(
            "/api/v1/users/",
            {"username": username, "email": email or f"{username}@example.com", "password": password, **extra},
        )

    def login(self, username, password=PASSWORD):
        response = self.post("/api/v1/auth/token/", {"username": username, "password": password})
        assert response.status_code == 200, response.content
        self.token = response.json()["token"]
        return response.json()


@pytest.fixture
def api(real_db):
    return Api()


@pytest.fixture
def make_api(real_db):
    return Api


@pytest.fixture
def user(api):
    """A registered and logged-in user: (api client, profile)."""
    profile = api.register("alice").json()
    api.login("alice")
    return api, profile


@pytest.fixture
def shard_1_down():
    """Make shard_1 refuse connections (primary and, through replication, its replica)."""
    name = settings.DATABASES["shard_1"]["NAME"]
    with connections["default"].cursor() as cursor:
        cursor.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
    yield
    with connections["default"].cursor() as cursor:
        cursor.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
