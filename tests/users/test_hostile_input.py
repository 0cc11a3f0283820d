"""Hostile input gets a clean 4xx with the JSON error shape, never a 500: every value that reaches SQL,
a Lua script, an id parser or a key builder is bounded first. Through HTTP, on the real stack."""

import json
import secrets
from urllib.parse import quote

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from users.identity import identity_key, username_problem
from users.sharding.ids import MAX_ID, parse_id, user_id_parse
from users.tokens import token_user_id

from .conftest import PASSWORD
from .test_api import ME, REGISTER, TOKEN, assert_error

NESTED = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("path", [TOKEN, REGISTER])
def test_deeply_nested_json_is_a_400(api, path):
    response = api.client.post(path, NESTED, content_type="application/json")
    assert_error(response, 400, "parse_error")
    shallow_but_deep_enough = "[" * 40 + "]" * 40  # parses, yet deeper than any API body
    assert_error(api.client.post(path, shallow_but_deep_enough, content_type="application/json"), 400, "parse_error")


def test_nested_json_on_the_token_endpoint_is_counted_by_the_limiter(api, settings):
    settings.RESILIENCE_RATELIMIT_POLICIES = {"auth.token": {"rate": "2/m"}}
    answers = [api.client.post(TOKEN, NESTED, content_type="application/json").status_code for _ in range(3)]
    assert answers == [400, 400, 429]


def test_a_token_naming_a_logical_shard_beyond_the_configured_ones_is_a_401(api):
    assert user_id_parse(1048576) is None  # logical shard 1024 of 1024
    header = f"Token 1048576.{secrets.token_urlsafe(32)}"
    assert_error(api.get(ME, headers={"Authorization": header}), 401)
    assert_error(api.delete(TOKEN, headers={"Authorization": header}), 401)


def test_a_username_longer_than_its_column_once_case_folded_is_a_400_naming_the_field(api):
    body = assert_error(api.register("ß" * 150, email="long@example.com"), 400, "invalid")
    assert "username" in body["fields"]


def test_an_email_longer_than_its_claim_once_case_folded_is_a_400_naming_the_field(api):
    email = "a@" + ".".join(["ß" * 60] * 4) + ".de"  # 250 characters; 490 once "ß" folds to "ss"
    assert len(email) <= 254
    body = assert_error(api.register("longmail", email=email), 400, "invalid")
    assert "email" in body["fields"]


def test_lone_surrogates_in_a_login_are_a_400(api):
    body = '{"username": "\\ud800abc", "password": "\\udfffxyz-password"}'
    response = api.client.post(TOKEN, body, content_type="application/json")
    assert response.status_code in (400, 401), response.content
    assert response.json()["code"] in ("invalid", "invalid_credentials", "parse_error")


@pytest.mark.parametrize(
    "body",
    [
        '{"\\ud800": 1}',
        '{"bio": {"\\udfff": "x"}}',
        '{"bio": 1e999}',
        '{"bio": [-1e400]}',
        '{"bio": "a", "bio": "b"}',  # a key twice: json keeps the last value, a reader may keep the first
        '{"bio": [{"k": 1, "k": 2}]}',  # nested
        '{"\\ud800": 1, "\\ud800": 2}',  # the key the 400 names must not crash the renderer
    ],
)
def test_lone_surrogate_keys_and_overflowing_numbers_are_a_400_on_every_write(user, body):
    """Found by the black-box pass: a lone surrogate as a key was echoed into the 400's `fields` and
    crashed the renderer (a 500 after 10-20 s); 1e999 parsed to infinity and was stored as "inf"; a
    key named twice was taken with its last value."""
    api, _ = user
    for method, path in (("patch", ME), ("post", REGISTER), ("post", TOKEN), ("delete", ME)):
        response = getattr(api.client, method)(path, body, content_type="application/json", headers=api._headers(None))
        assert_error(response, 400, "parse_error")
    assert api.get(ME).json()["bio"] == ""


@pytest.mark.parametrize("number", ["1" * 4301, "-" + "9" * 5000, "1" * 60000])
def test_a_number_too_long_for_python_is_a_plain_400(user, number):
    """Found by the black-box pass: more than 4,300 digits got a 400 whose detail named Python's
    internals ("use sys.set_int_max_str_digits()")."""
    api, _ = user
    body = f'{{"bio": {number}}}'
    response = api.client.patch(ME, body, content_type="application/json", headers=api._headers(None))
    detail = assert_error(response, 400, "parse_error")["detail"]
    assert detail == "JSON parse error - number too long"
    assert api.get(ME).json()["bio"] == ""
    assert_error(api.client.post(REGISTER, body, content_type="application/json"), 400, "parse_error")


def test_a_duplicated_key_is_named_in_the_parse_error(user):
    api, _ = user
    for body in ('{"bio": "a", "bio": "b"}', '{"display_name": "x", "bio": {"deep": [{"bio": 1, "bio": 2}]}}'):
        response = api.client.patch(ME, body, content_type="application/json", headers=api._headers(None))
        assert "duplicate key 'bio'" in assert_error(response, 400, "parse_error")["detail"]
    assert api.patch(ME, {"bio": "a", "display_name": "a"}).status_code == 200  # distinct keys still pass


STRING_FIELDS = [
    ("post", REGISTER, "username"),
    ("post", REGISTER, "email"),
    ("post", REGISTER, "password"),
    ("post", REGISTER, "display_name"),
    ("post", TOKEN, "username"),
    ("post", TOKEN, "password"),
    ("patch", ME, "bio"),
    ("patch", ME, "display_name"),
    ("patch", ME, "email"),
    ("patch", ME, "password"),
    ("patch", ME, "current_password"),
    ("delete", ME, "current_password"),
]


@pytest.mark.parametrize(("method", "path", "field"), STRING_FIELDS)
@pytest.mark.parametrize("value", [1, 12345678901234, 1.5, -0.0])
def test_a_number_for_a_string_field_is_a_400_naming_the_field(user, method, path, field, value):
    """Found by the black-box pass: DRF's CharField turned `{"bio": 1}` into the text "1" and stored it."""
    api, _ = user
    valid = {
        REGISTER: {"username": "numbers", "email": "numbers@example.com", "password": "Numbers-Pass-2026"},
        TOKEN: {"username": "alice", "password": PASSWORD},
        ME: {"current_password": PASSWORD} if method == "delete" else {},
    }[path]
    body = assert_error(getattr(api, method)(path, {**valid, field: value}), 400, "invalid")
    assert body["fields"] == {field: ["Not a valid string."]}
    profile = api.get(ME).json()
    assert (profile["bio"], profile["display_name"], profile["version"]) == ("", "", 1)


def test_if_match_with_non_ascii_digits_is_a_412(user):
    api, _ = user
    assert_error(api.patch(ME, {"bio": "x"}, headers={"If-Match": '"v²"'}), 412, "precondition_failed")
    assert_error(api.patch(ME, {"bio": "x"}, headers={"If-Match": '"v' + "9" * 40 + '"'}), 412)


@pytest.mark.parametrize("cursor", ["9999999999999999999", "-1", "1e3"])
def test_a_listing_cursor_outside_64_bits_is_a_400(admin_client, cursor):
    # Staff: the list refuses anyone else before reading its parameters (IsStaffUnlessLookup).
    body = assert_error(admin_client.get(REGISTER, {"cursor": cursor}), 400, "invalid")
    assert "cursor" in body["fields"]


# --- properties: the parsers refuse cleanly whatever they are fed ---
def test_an_id_with_a_leading_zero_is_no_alias(user):
    """One user, one URL: `/users/0<id>/` (or `%30<id>`) was the same profile."""
    _api, profile = user
    assert Client().get(f"/api/v1/users/{profile['id']}/").status_code == 200
    for alias in (f"0{profile['id']}", f"%30{profile['id']}", f"00{profile['id']}"):
        assert Client().get(f"/api/v1/users/{alias}/").status_code == 404, alias
        assert Client().post(f"/api/v1/users/{alias}/views/").status_code == 404, alias
    assert parse_id("0" + str(profile["id"])) is None and parse_id("0") is None


@given(st.one_of(st.text(), st.integers(), st.integers(min_value=MAX_ID - 10, max_value=MAX_ID + 10)))
def test_id_parsers_return_an_id_in_range_or_none(raw):
    for parse in (parse_id, user_id_parse):
        value = parse(raw)
        assert value is None or 0 < value <= MAX_ID


@given(st.text())
def test_token_parser_returns_a_usable_id_or_none(raw):
    user_id = token_user_id(raw)
    assert user_id is None or user_id_parse(user_id) == user_id


@given(st.text(max_size=400))
def test_username_checks_accept_only_what_fits_the_column(raw):
    problem = username_problem(raw)
    key = identity_key(raw)
    assert identity_key(key) == key  # idempotent: a stored key looks itself up
    if problem is None:
        assert 0 < len(key) <= 150
        key.encode("utf-8")  # storable: no lone surrogates


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    # What a server hands over: header values are Latin-1 (WSGI decodes them so), path ids any text.
    header=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=120),
    user_id=st.one_of(
        st.integers(min_value=0, max_value=(1 << 64)),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=25),
    ),
)
def test_any_token_header_and_any_path_id_get_a_4xx_never_a_5xx(real_db, header, user_id):
    client = Client()
    for headers in ({"Authorization": f"Token {header}"}, {"Authorization": f"Token {user_id}.{header}"}):
        response = client.get(ME, headers=headers)
        assert response.status_code in (401, 429), response.content
        assert set(response.json()) <= {"detail", "code", "fields", "request_id"}
    response = client.get(f"/api/v1/users/{quote(str(user_id), safe='')}/")
    assert response.status_code < 500, response.content


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(username=st.text(max_size=200), password=st.text(max_size=60))
def test_any_login_body_gets_a_4xx_never_a_5xx(real_db, username, password):
    response = Client().post(
        TOKEN, json.dumps({"username": username, "password": password}), content_type="application/json"
    )
    assert response.status_code in (400, 401, 429), response.content


# --- found by the black-box review of a served fresh clone ---
@pytest.mark.parametrize("path", ["/api/v1/nope/", "/api/v1/auth/tokens/a%2fb/", "/api/v1/auth/tokens/..%2f/"])
def test_any_method_on_an_unknown_api_path_is_a_json_404_not_a_csrf_page(api, path):
    for method in (api.client.delete, api.client.post, api.client.put):
        assert_error(method(path), 404, "not_found")


def test_a_csrf_failure_answers_in_the_json_error_shape(real_db):
    response = Client(enforce_csrf_checks=True).post("/admin/login/", {"username": "x", "password": "y"})
    assert_error(response, 403, "csrf_failed")


def test_an_unknown_format_is_a_404_with_a_message(user):
    _, profile = user
    body = assert_error(Client().get(f"/api/v1/users/{profile['id']}/", {"format": "api"}), 404, "not_found")
    assert body["detail"] == "Not found."


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate"])
def test_a_compressed_body_is_a_415(api, encoding):
    body = json.dumps({"username": "zipped", "password": "whatever-pass"})
    response = api.client.post(TOKEN, body, content_type="application/json", headers={"Content-Encoding": encoding})
    assert_error(response, 415)


@pytest.mark.parametrize("through_drf", [False, True])  # the fast path, and DRF's (a token holder)
def test_if_none_match_uses_the_weak_comparison_and_star(user, through_drf):
    api, profile = user
    url = f"/api/v1/users/{profile['id']}/"
    headers = {"Authorization": f"Token {api.token}"} if through_drf else {}
    etag = Client().get(url, headers=headers)["ETag"]
    for tag in (etag, f"W/{etag}", "*", f'"other", W/{etag}'):
        assert Client().get(url, headers={**headers, "If-None-Match": tag}).status_code == 304, tag
    assert Client().get(url, headers={**headers, "If-None-Match": '"1.0.0"'}).status_code == 200


@pytest.mark.parametrize(
    "display_name",
    [
        "\u202egnp.exe",  # RIGHT-TO-LEFT OVERRIDE: shows as "exe.png"
        "a\u2066b\u2069",  # isolates
        "safe\u200f",  # RIGHT-TO-LEFT MARK
        "e" + "\u0301" * 20,  # "Zalgo": marks stacked over the text around them
    ],
)
def test_a_display_name_that_reorders_or_overdraws_text_is_a_400_on_register_and_edit(user, display_name):
    api, _ = user
    body = assert_error(api.register("spoofer", display_name=display_name), 400)
    assert "display_name" in body["fields"]
    body = assert_error(api.patch(ME, {"display_name": display_name}), 400)
    assert "display_name" in body["fields"]


@pytest.mark.parametrize("display_name", ["Zoë Ångström", "Nguyễn Văn A", "שָׁלוֹם", "مرحبا", "👩\u200d💻 dev"])
def test_real_names_in_any_script_stay_valid_display_names(user, display_name):
    api, _ = user
    response = api.patch(ME, {"display_name": display_name})
    assert response.status_code == 200, response.content
    assert response.json()["display_name"] == display_name


@pytest.mark.parametrize("charset", ["rot13", "base64", "hex", "zlib", "latin-1", "cp500"])
def test_a_charset_json_cannot_be_in_is_a_415(real_db, charset):
    """Found by reading the parser: Python's codecs include rot13 and base64, which are no text
    encodings; a JSON body said to be in one of them was read with it and failed with a TypeError (500)."""
    body = b'{"username": "someone", "password": "x"}'
    response = Client().generic("POST", TOKEN, body, content_type=f"application/json; charset={charset}")
    assert_error(response, 415, "unsupported_media_type")
    assert "UTF-8" in response.json()["detail"]
    # An unknown name is not taken (Django ignores it): the default, UTF-8, reads the body.
    response = Client().generic("POST", TOKEN, body, content_type="application/json; charset=no-such-codec")
    assert response.status_code == 401
