"""OIDC through the real login flow (issue 6 "Done when", first half): a login at basis, then
step-up to midden with the SMS code from the outbox, each ending in tokens whose ID token
says the level reached; then RP-initiated logout ends the SSO session, so prompt=none answers
login_required."""

from __future__ import annotations

from typing import Any

from flask import Flask
from joserfc import jwt
from joserfc.jwk import KeySet

from gateway.levels import Level
from tests.oidc_helpers import RP, add_client, authorize, exchange, pkce, query
from tests.test_login_flow import PASSWORD, last_code, make_account, post_form


def _to_rp(web: Any, response: Any) -> dict[str, str]:
    """Follow the gateway's own redirects until the one that leaves for the relying party."""
    while response.status_code in (302, 303) and not response.location.startswith(RP):
        response = web.get(response.location)
    assert response.status_code == 303 and response.location.startswith(RP), response.status_code
    return query(response.location)


def _claims(web: Any, id_token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(web.get("/oidc/jwks").get_json())
    return dict(jwt.decode(id_token, keys, algorithms=["RS256"]).claims)


def test_basis_then_step_up_to_midden_then_logout(app: Flask) -> None:
    web = app.test_client()
    make_account(app)
    _client, secret = add_client(app, post_logout_redirect_uris=("https://rp.example.nl/bye",))
    assert secret

    # Basis: the password page, then back to the relying party with a code.
    verifier, challenge = pkce()
    response = authorize(web, challenge=challenge, acr_values=Level.BASIS.context_class)
    page = web.get(response.location)
    assert 'autocomplete="current-password"' in page.get_data(as_text=True)
    response = post_form(web, page, "/password", {"username": "jan.jansen",
                                                  "password": PASSWORD}, follow=False)
    args = _to_rp(web, response)
    assert args["state"] == "st-1"
    body = exchange(web, args["code"], verifier, secret=secret).get_json()
    basis = _claims(web, body["id_token"])
    assert basis["acr"] == Level.BASIS.context_class and basis["amr"] == ["pwd"]

    # Step-up: acr_values asks for midden; only the SMS code is asked for.
    verifier, challenge = pkce()
    response = authorize(web, challenge=challenge, acr_values=Level.MIDDEN.context_class)
    page = web.get(response.location, follow_redirects=True)
    assert 'name="password"' not in page.get_data(as_text=True)
    page = post_form(web, page, "/code", {"action": "send"})
    response = post_form(web, page, "/code", {"action": "verify", "code": last_code(app)},
                         follow=False)
    args = _to_rp(web, response)
    body = exchange(web, args["code"], verifier, secret=secret).get_json()
    midden = _claims(web, body["id_token"])
    assert midden["acr"] == Level.MIDDEN.context_class and midden["amr"] == ["pwd", "sms"]
    assert midden["sub"] == basis["sub"] and midden["sid"] == basis["sid"]

    # SSO: a second request at basis is answered without any page.
    verifier, challenge = pkce()
    response = authorize(web, challenge=challenge, prompt="none")
    assert "code" in _to_rp(web, response)

    # RP-initiated logout with the ID token as hint ends the SSO session at once.
    response = web.get("/oidc/logout", query_string={
        "id_token_hint": body["id_token"], "post_logout_redirect_uri": "https://rp.example.nl/bye"})
    assert response.status_code == 303 and response.location == "https://rp.example.nl/bye"
    bearer = {"Authorization": "Bearer " + body["access_token"]}
    assert web.get("/oidc/userinfo", headers=bearer).status_code == 401
    verifier, challenge = pkce()
    response = authorize(web, challenge=challenge, prompt="none")
    assert _to_rp(web, response)["error"] == "login_required"
