"""Cases of the OpenID Foundation's Basic OP plan (oidcc-basic-certification-test-plan) that
tests/test_oidc_endpoints.py did not already show, one test per conformance module, named
after it. docs/conformance.md maps every module of the Basic and Config OP plans to its test.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway import clock
from gateway.idp.oidc import views
from gateway.levels import Level
from tests.oidc_helpers import FakeLogin, add_client, authorize, exchange, get_code, pkce, query
from tests.test_oidc_endpoints import is_error_page, verify_id_token

ISSUER = "http://127.0.0.1:8000"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLogin:
    login = FakeLogin()
    monkeypatch.setattr(views, "start_login", login.start)
    monkeypatch.setattr(views, "finish_login", login.finish)
    return login


@pytest.fixture
def web(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def secret(app: Flask) -> str:
    _client, client_secret = add_client(app)
    assert client_secret
    return client_secret


def _login(web: FlaskClient, secret: str, **params: str | None) -> dict[str, object]:
    code, verifier = get_code(web, **params)
    response = exchange(web, code, verifier, secret=secret)
    assert response.status_code == 200, response.get_json()
    body: dict[str, object] = response.get_json()
    return body


def test_oidcc_response_type_missing(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    _v, challenge = pkce()
    response = authorize(web, challenge=challenge, response_type=None)
    assert response.status_code == 303
    args = query(response.location)
    assert args["error"] in ("invalid_request", "unsupported_response_type")
    assert args["iss"] == ISSUER and args["state"] == "st-1" and "code" not in args
    assert not fake.requests


def test_oidcc_ensure_request_without_nonce_succeeds_for_code_flow(
    web: FlaskClient, fake: FakeLogin, secret: str
) -> None:
    body = _login(web, secret, nonce=None)
    claims = verify_id_token(web, str(body["id_token"]))
    assert "nonce" not in claims and claims["aud"] == "rp1"


def test_oidcc_scope_profile_email_address_phone_all_and_other_order(
    web: FlaskClient, fake: FakeLogin, secret: str
) -> None:
    """Scopes the gateway does not offer are ignored (OIDC Core 3.1.2.1); the login succeeds,
    and nothing beyond `sub` (and the BSN for --bsn clients) is released."""
    for scope in ("openid profile", "openid email", "openid address", "openid phone",
                  "openid profile email address phone", "email openid", "phone openid profile"):
        body = _login(web, secret, scope=scope)
        assert body["scope"] == "openid"
        claims = verify_id_token(web, str(body["id_token"]))
        assert not {"name", "email", "address", "phone_number"} & set(claims)
        info = web.get("/oidc/userinfo",
                       headers={"Authorization": f"Bearer {body['access_token']}"}).get_json()
        assert set(info) == {"sub", "acr"}


def test_oidcc_display_page_and_popup(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    for display in ("page", "popup"):
        _login(web, secret, display=display)


def test_oidcc_prompt_login(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    _login(web, secret)
    assert fake.requests[-1].force_authn is False
    _login(web, secret, prompt="login")
    assert fake.requests[-1].force_authn is True


def test_oidcc_max_age_1_and_10000(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    """max_age reaches the login flow (which re-authenticates an older login: covered in
    tests/test_login_flow.py) and the ID token then carries auth_time (OIDC Core 3.1.2.1)."""
    with clock.frozen():
        fake.auth_time = clock.now()
        clock.advance(timedelta(seconds=2))
        for max_age in ("1", "10000"):
            body = _login(web, secret, max_age=max_age)
            assert fake.requests[-1].max_age == int(max_age)
            claims = verify_id_token(web, str(body["id_token"]))
            assert claims["auth_time"] == int(fake.auth_time.timestamp())


def test_oidcc_ensure_request_with_unknown_parameter_succeeds(
    web: FlaskClient, fake: FakeLogin, secret: str
) -> None:
    _login(web, secret, extra="foobar", claims_locales="nl-NL en", vtr="x")


def test_oidcc_id_token_hint(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    first = _login(web, secret)
    hint = str(first["id_token"])
    again = _login(web, secret, prompt="none", id_token_hint=hint)
    assert verify_id_token(web, str(again["id_token"]))["sub"] == \
        verify_id_token(web, hint)["sub"]
    # Someone else is logged in now: prompt=none with the old hint must not answer for them.
    fake.account_id = "someone-else"
    _v, challenge = pkce()
    response = authorize(web, challenge=challenge, prompt="none", id_token_hint=hint)
    assert query(response.location)["error"] == "login_required"


def test_oidcc_claims_essential(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    """An essential claim the gateway does not release is not an error (OIDC Core 5.5.1)."""
    body = _login(web, secret, claims='{"userinfo": {"name": {"essential": true}}}')
    info = web.get("/oidc/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.status_code == 200 and "name" not in info.get_json()


def test_oidcc_codereuse_30seconds(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    with clock.frozen():
        code, verifier = get_code(web)
        first = exchange(web, code, verifier, secret=secret).get_json()
        clock.advance(timedelta(seconds=30))
        replay = exchange(web, code, verifier, secret=secret)
        assert replay.status_code == 400 and replay.get_json()["error"] == "invalid_grant"
        bearer = {"Authorization": "Bearer " + first["access_token"]}
        assert web.get("/oidc/userinfo", headers=bearer).status_code == 401


def test_oidcc_userinfo_post_header(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    body = _login(web, secret, acr_values=Level.MIDDEN.context_class)
    info = web.post("/oidc/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.status_code == 200
    assert info.get_json() == {"sub": verify_id_token(web, str(body["id_token"]))["sub"],
                               "acr": Level.MIDDEN.context_class}
    # The token in the query string is never accepted (RFC 6750 2.3; RFC 9700 4.3.2).
    sneaky = web.post("/oidc/userinfo", query_string={"access_token": body["access_token"]})
    assert sneaky.status_code == 401


def test_oidcc_ensure_registered_redirect_uri_and_config_https(
    web: FlaskClient, fake: FakeLogin, secret: str
) -> None:
    _v, challenge = pkce()
    response = authorize(web, challenge=challenge,
                         redirect_uri="https://rp.example.nl/callback/unregistered")
    assert is_error_page(response)
    document = web.get("/.well-known/openid-configuration").get_json()
    assert "openid" in document["scopes_supported"]
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
                 "end_session_endpoint"):
        assert document[name].startswith(document["issuer"] + "/")
