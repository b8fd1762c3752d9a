"""The OIDC provider's endpoints (issue 6): discovery, JWKS, authorization, token, userinfo,
logout, and every negative case of the issue's "Bad input", driven through the test client
with the login flow replaced by `FakeLogin` (a real AuthnResult chosen per test)."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwe, jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from gateway import clock
from gateway.accounts.models import Account
from gateway.db import get_db
from gateway.flows.types import ErrorCode
from gateway.idp.oidc import views
from gateway.keys import PUBLISH_BEFORE_SIGN, get_keys
from gateway.levels import Level
from tests.oidc_helpers import (
    ATTACKER,
    RP,
    FakeLogin,
    add_client,
    authorize,
    basic,
    exchange,
    get_code,
    pkce,
    query,
)

ISSUER = "http://127.0.0.1:8000"
MIDDEN = Level.MIDDEN.context_class
BASIS = Level.BASIS.context_class


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
    _client, client_secret = add_client(
        app, post_logout_redirect_uris=("https://rp.example.nl/bye",)
    )
    assert client_secret
    return client_secret


def verify_id_token(web: FlaskClient, id_token: str, alg: str = "RS256") -> dict[str, object]:
    key_set = KeySet.import_key_set(web.get("/oidc/jwks").get_json())
    token = jwt.decode(id_token, key_set, algorithms=[alg])
    assert token.header["alg"] == alg and token.header["kid"]
    return dict(token.claims)


def is_error_page(response: object) -> bool:
    return (
        response.status_code == 400  # type: ignore[attr-defined]
        and response.mimetype == "text/html"  # type: ignore[attr-defined]
        and "Location" not in response.headers  # type: ignore[attr-defined]
    )


# --- discovery and keys -------------------------------------------------------------------


def test_discovery_document(web: FlaskClient) -> None:
    doc = web.get("/.well-known/openid-configuration").get_json()
    assert doc["issuer"] == ISSUER
    for name, path in (
        ("authorization_endpoint", "/oidc/authorize"), ("token_endpoint", "/oidc/token"),
        ("userinfo_endpoint", "/oidc/userinfo"), ("jwks_uri", "/oidc/jwks"),
        ("end_session_endpoint", "/oidc/logout"),
    ):
        assert doc[name] == ISSUER + path
    assert doc["response_types_supported"] == ["code"]
    assert doc["response_modes_supported"] == ["query", "form_post"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["subject_types_supported"] == ["pairwise"]
    assert doc["acr_values_supported"] == [lv.context_class for lv in Level]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert doc["id_token_encryption_alg_values_supported"] == ["RSA-OAEP-256"]
    assert doc["id_token_encryption_enc_values_supported"] == ["A256GCM"]
    assert "none" not in json.dumps(doc["token_endpoint_auth_signing_alg_values_supported"])
    assert "implicit" not in doc["grant_types_supported"]


def test_jwks_has_public_rs256_and_es256_keys_only(web: FlaskClient) -> None:
    response = web.get("/oidc/jwks")
    assert response.status_code == 200
    keys = response.get_json()["keys"]
    assert {k["alg"] for k in keys} >= {"RS256", "ES256"}
    for key in keys:
        assert key["kid"] and key["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)


def test_jwks_lists_a_new_key_before_it_signs(
    app: Flask, web: FlaskClient, fake: FakeLogin, secret: str, frozen_clock: None
) -> None:
    def jwks_kids() -> list[str]:
        return [k["kid"] for k in web.get("/oidc/jwks").get_json()["keys"] if k["alg"] == "RS256"]

    def id_token_kid() -> str:
        code, verifier = get_code(web)
        body = exchange(web, code, verifier, secret=secret).get_json()
        verify_id_token(web, body["id_token"])  # with the JWK Set as served at that moment
        kid = jwt.decode(body["id_token"], KeySet.import_key_set(
            web.get("/oidc/jwks").get_json())).header["kid"]
        assert isinstance(kid, str)
        return kid

    keys = get_keys(app)
    old = keys.active("RS256").kid
    result = keys.rotate(clock.now())
    (new,) = [i.kid for i in result.created if i.alg == "RS256"]
    # Published at once, after the active key; the old key signs until activate_at.
    clock.advance(PUBLISH_BEFORE_SIGN - timedelta(seconds=1))
    assert jwks_kids() == [old, new]
    assert id_token_kid() == old
    # From activate_at exactly the new key signs; the old one stays published.
    clock.advance(timedelta(seconds=1))
    assert jwks_kids() == [new, old]
    assert id_token_kid() == new


# --- happy paths --------------------------------------------------------------------------


def test_code_flow_with_client_secret_basic(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    code, verifier = get_code(web, acr_values=MIDDEN)
    assert fake.requests[-1].levels[0] is Level.MIDDEN
    response = exchange(web, code, verifier, secret=secret)
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "Bearer" and body["refresh_token"]
    claims = verify_id_token(web, body["id_token"])
    assert claims["iss"] == ISSUER and claims["aud"] == "rp1" and claims["nonce"] == "n-1"
    assert claims["acr"] == MIDDEN and claims["amr"] == ["pwd", "sms"]
    assert isinstance(claims["auth_time"], int) and claims["sid"] and claims["at_hash"]
    assert "bsn" not in claims
    info = web.get("/oidc/userinfo", headers={"Authorization": "Bearer " + body["access_token"]})
    assert info.status_code == 200 and info.get_json()["sub"] == claims["sub"]
    posted = web.post("/oidc/userinfo", data={"access_token": body["access_token"]})
    assert posted.status_code == 200 and posted.get_json()["sub"] == claims["sub"]


def test_authorization_response_carries_state_and_iss(web: FlaskClient, fake: FakeLogin,
                                                      secret: str) -> None:
    _verifier, challenge = pkce()
    response = authorize(web, challenge=challenge)
    args = query(response.location)
    assert response.location.startswith(RP + "?")
    assert args["state"] == "st-1" and args["iss"] == ISSUER and args["code"]


def test_authorize_by_post(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    _verifier, challenge = pkce()
    response = authorize(web, challenge=challenge, method="POST")
    assert response.status_code == 303 and "code" in query(response.location)


def test_client_secret_post(web: FlaskClient, fake: FakeLogin, app: Flask) -> None:
    _c, client_secret = add_client(app, "rp-post", auth_method="client_secret_post")
    assert client_secret
    code, verifier = get_code(web, "rp-post")
    ok = exchange(web, code, verifier, client_id="rp-post", secret=client_secret,
                  post_secret=True)
    assert ok.status_code == 200
    code, verifier = get_code(web, "rp-post")
    # The registered method is the only one: Basic is refused for this client.
    wrong = exchange(web, code, verifier, client_id="rp-post", secret=client_secret)
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "invalid_client"


def test_public_client_with_pkce(web: FlaskClient, fake: FakeLogin, app: Flask) -> None:
    add_client(app, "spa", public=True)
    code, verifier = get_code(web, "spa")
    assert exchange(web, code, verifier, client_id="spa").status_code == 200


def test_form_post_response_mode(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    _verifier, challenge = pkce()
    response = authorize(web, challenge=challenge, response_mode="form_post")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert f'action="{RP}"' in page and 'name="code"' in page
    assert f'name="iss" value="{ISSUER}"' in page and 'name="state" value="st-1"' in page
    assert "/oidc/static/form_post.js" in page and "<script>" not in page
    csp = response.headers["Content-Security-Policy"]
    assert "form-action 'self' https://rp.example.nl" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["Cache-Control"] == "no-store"
    assert web.get("/oidc/static/form_post.js").status_code == 200


def test_es256_and_encrypted_id_token(web: FlaskClient, fake: FakeLogin, app: Flask) -> None:
    private = RSAKey.import_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    public = private.as_dict(private=False, kid="enc-1", use="enc", alg="RSA-OAEP-256")
    _c, client_secret = add_client(app, "rp-enc", id_token_alg="ES256", encryption_jwk=public)
    assert client_secret
    code, verifier = get_code(web, "rp-enc")
    body = exchange(web, code, verifier, client_id="rp-enc", secret=client_secret).get_json()
    assert body["id_token"].count(".") == 4
    inner = jwe.decrypt_compact(body["id_token"], private,
                                algorithms=["RSA-OAEP-256", "A256GCM"])
    assert inner.headers()["cty"] == "JWT" and inner.headers()["kid"] == "enc-1"
    assert inner.plaintext is not None
    claims = verify_id_token(web, inner.plaintext.decode(), alg="ES256")
    assert claims["aud"] == "rp-enc"


def test_bsn_only_for_bsn_clients_and_accounts_with_one(
    web: FlaskClient, fake: FakeLogin, app: Flask
) -> None:
    now = clock.now()
    with get_db(app).begin() as db:
        account = Account(
            username="piet", username_key="piet", password_hash="x", bsn="999990019",
            surname="P", given_names="P", birth_date=now.date().replace(year=1970),
            nationality="NLD", status="active", created_at=now,
        )
        db.add(account)
        db.flush()
        fake.account_id = account.id
    _c, gov_secret = add_client(app, "gov", bsn=True)
    _c, shop_secret = add_client(app, "shop")
    assert gov_secret and shop_secret
    code, verifier = get_code(web, "gov")
    body = exchange(web, code, verifier, client_id="gov", secret=gov_secret).get_json()
    assert verify_id_token(web, body["id_token"])["bsn"] == "999990019"
    info = web.get("/oidc/userinfo", headers={"Authorization": "Bearer " + body["access_token"]})
    assert info.get_json()["bsn"] == "999990019"
    code, verifier = get_code(web, "shop")
    body = exchange(web, code, verifier, client_id="shop", secret=shop_secret).get_json()
    assert "bsn" not in verify_id_token(web, body["id_token"])


def test_pairwise_sub_per_sector(web: FlaskClient, fake: FakeLogin, app: Flask) -> None:
    subs = {}
    for cid, sector in (("a1", "org-a"), ("a2", "org-a"), ("b1", None)):
        _c, client_secret = add_client(app, cid, sector_identifier=sector)
        assert client_secret
        code, verifier = get_code(web, cid)
        body = exchange(web, code, verifier, client_id=cid, secret=client_secret).get_json()
        subs[cid] = verify_id_token(web, body["id_token"])["sub"]
    assert subs["a1"] == subs["a2"] != subs["b1"]
    assert "a-1" not in str(subs)


# --- levels, prompt and the flow's errors -------------------------------------------------


def test_acr_values_order_and_minimum_level(web: FlaskClient, fake: FakeLogin, app: Flask) -> None:
    add_client(app, "mid", min_level=Level.MIDDEN)
    _v, challenge = pkce()
    authorize(web, "mid", challenge=challenge, acr_values=f"{BASIS} {MIDDEN}")
    # basis is under the client's minimum: only midden (and higher) remain.
    assert fake.requests[-1].levels[0] is Level.MIDDEN
    assert Level.BASIS not in fake.requests[-1].levels
    fake.level = Level.BASIS  # the flow reached less than the client's minimum
    response = authorize(web, "mid", challenge=challenge)
    assert query(response.location)["error"] == "unmet_authentication_requirements"


def test_essential_acr_claim(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    claims = json.dumps({"id_token": {"acr": {"essential": True, "values": [MIDDEN]}}})
    _v, challenge = pkce()
    fake.level = Level.BASIS
    response = authorize(web, challenge=challenge, claims=claims)
    assert fake.requests[-1].essential and fake.requests[-1].levels == (Level.MIDDEN,)
    assert query(response.location)["error"] == "unmet_authentication_requirements"
    unknown = json.dumps({"id_token": {"acr": {"essential": True, "value": "urn:nope"}}})
    response = authorize(web, challenge=challenge, claims=unknown)
    assert query(response.location)["error"] == "unmet_authentication_requirements"
    response = authorize(web, challenge=challenge, claims="{not json")
    assert query(response.location)["error"] == "invalid_request"


def test_prompt_none_without_session(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    fake.error = ErrorCode.LOGIN_REQUIRED
    _v, challenge = pkce()
    response = authorize(web, challenge=challenge, prompt="none", max_age="0",
                         ui_locales="en-GB nl", login_hint="jan")
    request = fake.requests[-1]
    assert request.passive and request.max_age == 0 and request.ui_locale == "en"
    assert request.login_hint == "jan"
    args = query(response.location)
    assert args["error"] == "login_required" and args["state"] == "st-1" and args["iss"]
    response = authorize(web, challenge=challenge, prompt="none login")
    assert query(response.location)["error"] == "invalid_request"


def test_cancelled_login_is_access_denied(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    fake.error = ErrorCode.CANCELLED
    _v, challenge = pkce()
    assert query(authorize(web, challenge=challenge).location)["error"] == "access_denied"


# --- bad input: error pages, never a redirect ---------------------------------------------


def test_unknown_client_gets_an_error_page(web: FlaskClient, fake: FakeLogin) -> None:
    _v, challenge = pkce()
    assert is_error_page(authorize(web, "nobody", challenge=challenge))
    assert is_error_page(authorize(web, "x" * 5000, challenge=challenge))
    assert is_error_page(authorize(web, challenge=challenge, client_id=None))
    assert not fake.requests


@pytest.mark.parametrize(
    "redirect_uri",
    [
        RP + "/",  # trailing slash
        RP + "/extra",  # extra path
        RP + "?next=x",  # extra query
        "https://RP.example.nl/callback",  # other host case
        "https://user@rp.example.nl/callback",  # userinfo part
        RP + "#frag",  # fragment
        "http://rp.example.nl/callback",  # http scheme
        ATTACKER,
        "",
    ],
)
def test_redirect_uri_must_match_exactly(
    web: FlaskClient, fake: FakeLogin, secret: str, redirect_uri: str
) -> None:
    _v, challenge = pkce()
    assert is_error_page(authorize(web, challenge=challenge, redirect_uri=redirect_uri))
    assert not fake.requests


def test_missing_redirect_uri_is_an_error_page(web: FlaskClient, fake: FakeLogin,
                                               secret: str) -> None:
    _v, challenge = pkce()
    assert is_error_page(authorize(web, challenge=challenge, redirect_uri=None))


@pytest.mark.parametrize("response_type", ["token", "id_token", "code id_token", "none", ""])
def test_bad_response_type(web: FlaskClient, fake: FakeLogin, secret: str,
                           response_type: str) -> None:
    _v, challenge = pkce()
    # With an attacker's redirect URI: an error page, never a redirect there.
    assert is_error_page(authorize(web, challenge=challenge, response_type=response_type,
                                   redirect_uri=ATTACKER))
    response = authorize(web, challenge=challenge, response_type=response_type)
    assert response.status_code in (302, 303)
    args = query(response.location)
    assert args["error"] in ("unsupported_response_type", "invalid_request")
    assert args["iss"] == ISSUER and args["state"] == "st-1"
    assert not fake.requests


def test_duplicate_parameters_refused(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    _v, challenge = pkce()
    url = (f"/oidc/authorize?response_type=code&client_id=rp1&redirect_uri={RP}"
           f"&redirect_uri={ATTACKER}&scope=openid&code_challenge={challenge}"
           "&code_challenge_method=S256")
    assert is_error_page(web.get(url))


@pytest.mark.parametrize(
    "params",
    [
        {"code_challenge": None, "code_challenge_method": None},
        {"code_challenge_method": "plain"},
        {"code_challenge_method": None},
        {"code_challenge": "short"},
        {"scope": "profile"},
        {"response_mode": "fragment"},
        {"request": "eyJhbGciOiJub25lIn0.e30."},
        {"request_uri": "https://rp.example.nl/req"},
        {"max_age": "-1"},
        {"id_token_hint": "garbage"},
        {"id_token_hint": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."},
        {"state": "s" * 5000},
    ],
)
def test_bad_parameters_redirect_with_error(
    web: FlaskClient, fake: FakeLogin, secret: str, params: dict[str, str | None]
) -> None:
    _v, challenge = pkce()
    merged: dict[str, str | None] = {"code_challenge": challenge, "code_challenge_method": "S256"}
    merged.update(params)
    response = authorize(web, challenge=None, **merged)
    assert response.status_code in (302, 303), response.status_code
    assert response.location.startswith(RP + "?")
    args = query(response.location)
    assert args["error"] in (
        "invalid_request", "invalid_scope", "request_not_supported", "request_uri_not_supported",
    )
    assert args["iss"] == ISSUER
    assert not fake.requests


# --- token endpoint -----------------------------------------------------------------------


def test_wrong_client_secret(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    code, verifier = get_code(web)
    for headers in (
        basic("rp1", secret + "x"), basic("rp1", ""), basic("nobody", secret),
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()},
        {"Authorization": "Basic " + "A" * 100_000},
    ):
        response = web.post("/oidc/token", headers=headers, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": RP,
            "code_verifier": verifier})
        assert response.status_code in (400, 401, 413), response.status_code
        if response.status_code != 413:
            assert response.get_json()["error"] == "invalid_client"
    # The code was never consumed by the failed attempts.
    assert exchange(web, code, verifier, secret=secret).status_code == 200


def test_pkce_verifier_checks(web: FlaskClient, fake: FakeLogin, secret: str) -> None:
    code, _verifier = get_code(web)
    wrong = exchange(web, code, pkce()[0], secret=secret)
    assert wrong.status_code == 400 and wrong.get_json()["error"] == "invalid_grant"
    code, _verifier = get_code(web)
    missing = exchange(web, code, None, secret=secret)
    assert missing.status_code == 400 and missing.get_json()["error"] == "invalid_request"


def test_code_replay_revokes_what_the_first_use_issued(
    web: FlaskClient, fake: FakeLogin, secret: str
) -> None:
    code, verifier = get_code(web)
    first = exchange(web, code, verifier, secret=secret).get_json()
    bearer = {"Authorization": "Bearer " + first["access_token"]}
    assert web.get("/oidc/userinfo", headers=bearer).status_code == 200
    replay = exchange(web, code, verifier, secret=secret)
    assert replay.status_code == 400 and replay.get_json()["error"] == "invalid_grant"
    assert web.get("/oidc/userinfo", headers=bearer).status_code == 401
    refresh = web.post("/oidc/token", headers=basic("rp1", secret), data={
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert refresh.get_json()["error"] == "invalid_grant"


def test_code_bound_to_client_and_redirect_uri(web: FlaskClient, fake: FakeLogin, app: Flask,
                                               secret: str) -> None:
    _c, other_secret = add_client(app, "rp2")
    assert other_secret
    code, verifier = get_code(web)
    stolen = exchange(web, code, verifier, client_id="rp2", secret=other_secret)
    assert stolen.get_json()["error"] == "invalid_grant"
    code, verifier = get_code(web)
    moved = exchange(web, code, verifier, secret=secret, extra={"redirect_uri": RP + "/"})
    assert moved.get_json()["error"] == "invalid_grant"


def test_code_expires_after_60_seconds(web: FlaskClient, fake: FakeLogin, secret: str,
                                       frozen_clock: None) -> None:
    code, verifier = get_code(web)
    clock.advance(timedelta(seconds=61))
    assert exchange(web, code, verifier, secret=secret).get_json()["error"] == "invalid_grant"


@pytest.mark.parametrize("code", ["", "x" * 5000, "\u00e9\u00e9", "a' OR 1=1 --"])
def test_garbage_codes(web: FlaskClient, fake: FakeLogin, secret: str, code: str) -> None:
    response = exchange(web, code, pkce()[0], secret=secret)
    assert response.status_code == 400
    assert response.get_json()["error"] in ("invalid_grant", "invalid_request")


def test_unsupported_grant_types(web: FlaskClient, secret: str) -> None:
    for grant_type in ("password", "client_credentials", "implicit", ""):
        response = web.post("/oidc/token", headers=basic("rp1", secret),
                            data={"grant_type": grant_type, "username": "a", "password": "b"})
        assert response.status_code == 400
        assert response.get_json()["error"] in ("unsupported_grant_type", "invalid_request")


def test_refresh_rotation_and_reuse_revokes_family(
    web: FlaskClient, fake: FakeLogin, secret: str
) -> None:
    code, verifier = get_code(web)
    first = exchange(web, code, verifier, secret=secret).get_json()

    def refresh(token: str) -> dict[str, str]:
        response = web.post("/oidc/token", headers=basic("rp1", secret),
                            data={"grant_type": "refresh_token", "refresh_token": token})
        result: dict[str, str] = response.get_json()
        return result

    second = refresh(first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"] and second["id_token"]
    assert "nonce" not in verify_id_token(web, second["id_token"])
    reuse = refresh(first["refresh_token"])
    assert reuse["error"] == "invalid_grant"
    # The whole family is gone: the newest refresh and access tokens too.
    assert refresh(second["refresh_token"])["error"] == "invalid_grant"
    bearer = {"Authorization": "Bearer " + second["access_token"]}
    assert web.get("/oidc/userinfo", headers=bearer).status_code == 401


def test_refresh_family_absolute_lifetime(web: FlaskClient, fake: FakeLogin, secret: str,
                                          frozen_clock: None) -> None:
    code, verifier = get_code(web)
    token = exchange(web, code, verifier, secret=secret).get_json()["refresh_token"]
    start = clock.now()
    while True:  # refreshed every 29 minutes, it still ends with the family's 8 hours
        clock.advance(timedelta(minutes=29))
        response = web.post("/oidc/token", headers=basic("rp1", secret),
                            data={"grant_type": "refresh_token", "refresh_token": token})
        if response.status_code != 200:
            break
        token = response.get_json()["refresh_token"]
    assert response.get_json()["error"] == "invalid_grant"
    assert timedelta(hours=7, minutes=31) <= clock.now() - start <= timedelta(hours=8, minutes=29)


def test_refresh_token_of_another_client(web: FlaskClient, fake: FakeLogin, app: Flask,
                                         secret: str) -> None:
    _c, other = add_client(app, "rp2")
    assert other
    code, verifier = get_code(web)
    token = exchange(web, code, verifier, secret=secret).get_json()["refresh_token"]
    response = web.post("/oidc/token", headers=basic("rp2", other),
                        data={"grant_type": "refresh_token", "refresh_token": token})
    assert response.get_json()["error"] == "invalid_grant"


# --- private_key_jwt ----------------------------------------------------------------------


def _assertion(key: RSAKey, client_id: str, *, alg: str = "RS256", jti: str = "j-1",
               exp_in: int = 60, aud: str = ISSUER + "/oidc/token") -> str:
    now = int(time.time())
    return jwt.encode({"alg": alg, "kid": "k1"}, {
        "iss": client_id, "sub": client_id, "aud": aud, "jti": jti, "iat": now,
        "exp": now + exp_in}, key, algorithms=[alg])


def _jwt_exchange(web: FlaskClient, code: str, verifier: str, assertion: str) -> dict[str, str]:
    response = web.post("/oidc/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": RP,
        "code_verifier": verifier, "client_id": "rp-jwt",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion})
    assert response.status_code in (200, 400, 401), response.status_code
    result: dict[str, str] = response.get_json()
    return result


def test_private_key_jwt(web: FlaskClient, fake: FakeLogin, app: Flask) -> None:
    key = RSAKey.import_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    add_client(app, "rp-jwt", auth_method="private_key_jwt",
               jwks={"keys": [key.as_dict(private=False, kid="k1")]})
    code, verifier = get_code(web, "rp-jwt")
    assert "id_token" in _jwt_exchange(web, code, verifier, _assertion(key, "rp-jwt"))

    code, verifier = get_code(web, "rp-jwt")
    replayed = _jwt_exchange(web, code, verifier, _assertion(key, "rp-jwt"))
    assert replayed["error"] == "invalid_client"

    other = RSAKey.import_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    none_alg = (
        base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode() + "."
        + base64.urlsafe_b64encode(json.dumps({
            "iss": "rp-jwt", "sub": "rp-jwt", "aud": ISSUER, "jti": "j-n",
            "exp": int(time.time()) + 60}).encode()).rstrip(b"=").decode() + "."
    )
    hs256 = jwt.encode({"alg": "HS256"}, {"iss": "rp-jwt", "sub": "rp-jwt", "aud": ISSUER,
                                          "jti": "j-h", "exp": int(time.time()) + 60},
                       OctKey.import_key(b"k" * 32), algorithms=["HS256"])
    for bad in (
        _assertion(other, "rp-jwt", jti="j-2"),  # signed with a key that is not registered
        _assertion(key, "rp-jwt", jti="j-3", aud="https://elsewhere.example"),
        _assertion(key, "rp-jwt", jti="j-4", exp_in=-120),  # expired
        _assertion(key, "rp-jwt", jti="j-5", exp_in=3600 * 24),  # valid for too long
        _assertion(key, "nobody", jti="j-6"),
        none_alg, hs256, "garbage", "a.b.c", "e30.e30.e30", "x" * 20_000, "\u00e9.\u00e9.\u00e9",
    ):
        result = _jwt_exchange(web, code, verifier, bad)
        assert result["error"] == "invalid_client", (bad[:40], result)


# --- userinfo -----------------------------------------------------------------------------


def test_userinfo_refuses_missing_and_bad_tokens(web: FlaskClient, secret: str) -> None:
    missing = web.get("/oidc/userinfo")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    for header in ("Bearer garbage", "Bearer " + "x" * 5000, "Basic abc", "Bearer "):
        response = web.get("/oidc/userinfo", headers={"Authorization": header})
        assert response.status_code == 401
    # RFC 6750: never from the query string.
    assert web.get("/oidc/userinfo?access_token=abc").status_code == 401


def test_access_token_expires(web: FlaskClient, fake: FakeLogin, secret: str,
                              frozen_clock: None) -> None:
    code, verifier = get_code(web)
    body = exchange(web, code, verifier, secret=secret).get_json()
    clock.advance(timedelta(minutes=6))
    bearer = {"Authorization": "Bearer " + body["access_token"]}
    assert web.get("/oidc/userinfo", headers=bearer).status_code == 401


# --- logout -------------------------------------------------------------------------------


def test_logout_with_hint_and_registered_uri(web: FlaskClient, fake: FakeLogin,
                                             secret: str) -> None:
    code, verifier = get_code(web)
    id_token = exchange(web, code, verifier, secret=secret).get_json()["id_token"]
    response = web.get("/oidc/logout", query_string={
        "id_token_hint": id_token, "post_logout_redirect_uri": "https://rp.example.nl/bye",
        "state": "s-9"})
    assert response.status_code == 303
    assert response.location == "https://rp.example.nl/bye?state=s-9"


@pytest.mark.parametrize(
    "params",
    [
        {"post_logout_redirect_uri": ATTACKER, "client_id": "rp1"},
        {"post_logout_redirect_uri": "https://rp.example.nl/bye"},  # no client named
        {"post_logout_redirect_uri": "https://rp.example.nl/bye/", "client_id": "rp1"},
        {"id_token_hint": "garbage"},
        {"id_token_hint": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."},
        {"id_token_hint": "x" * 20_000},
        {"client_id": "nobody"},
    ],
)
def test_logout_bad_input_gets_error_page(web: FlaskClient, secret: str,
                                          params: dict[str, str]) -> None:
    assert is_error_page(web.get("/oidc/logout", query_string=params))


def test_logout_without_target_shows_page(web: FlaskClient) -> None:
    response = web.get("/oidc/logout")
    assert response.status_code == 200 and "Location" not in response.headers


def test_resume_with_unknown_flow_is_an_error_page(web: FlaskClient, fake: FakeLogin) -> None:
    assert is_error_page(web.get("/oidc/authorize/resume?flow=nope"))
    assert is_error_page(web.get("/oidc/authorize/resume"))
