"""Issue 8 "done when": a linked person's BSN reaches a BSN-entitled relying party, end to end
through the real eIDAS route and the simulated node (gateway.eidas_sim): the citizen gets a
link code at /eidas/link after an eID login, the desk links it (four-eyes), and an OIDC login
with the same eID then carries the BSN to a --bsn client and not to another; before the link
it carries none. The OIDC client asks for `profile` and gets the eID's name from userinfo.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask.testing import FlaskClient

from gateway import clock
from gateway.accounts.models import Account
from gateway.app import get_settings
from gateway.db import get_db
from gateway.desks import four_eyes
from gateway.levels import Level
from tests.eidas_helpers import (
    Env,
    continued,
    csrf,
    post_fields,
)
from tests.oidc_helpers import RP, add_client, exchange, pkce
from tests.test_desk_service import make_staff
from tests.test_oidc_endpoints import verify_id_token

PERSON = "de-substantial"
BSN = "999990019"



def _through_the_node(env: Env, client: FlaskClient, flow_page: Any) -> Any:
    """From the choose-route page: eIDAS (DE) -> node -> ACS; the first page after it."""
    body = flow_page.get_data(as_text=True)
    assert flow_page.status_code == 200 and 'name="country"' in body, body[:2000]
    flow_id = flow_page.request.path.rsplit("/", 1)[-1]
    posting = client.post(f"/login/{flow_id}/route?lang=en", data={
        "csrf_token": csrf(body), "route": "eidas", "country": "DE"})
    action, fields = post_fields(posting.get_data(as_text=True))
    assert action == env.node.sso_url
    saml_response, _acs = env.node.response_for(fields["SAMLRequest"], PERSON)
    answer = client.post("/eidas/acs?lang=en", data={
        "SAMLResponse": saml_response, "RelayState": fields["RelayState"]})
    # A good answer ends on a page that moves on by itself (docs/eidas.md, "CSP").
    return _follow(client, client.get(continued(answer)))


def _follow(client: FlaskClient, response: Any) -> Any:
    """Follow redirects within the gateway; stop at another origin (the relying party)."""
    for _ in range(10):
        location = response.headers.get("Location")
        if response.status_code not in (301, 302, 303, 307) or location is None:
            return response
        if location.startswith(RP):
            return response
        response = client.get(location)
    raise AssertionError("too many redirects")


def _oidc_login(env: Env, client_id: str, secret: str) -> dict[str, Any]:
    """A fresh browser logs in to `client_id` at substantieel with the eID; the token body."""
    browser = env.app.test_client()
    verifier, challenge = pkce()
    start = _follow(browser, browser.get("/oidc/authorize", query_string={
        "response_type": "code", "client_id": client_id, "redirect_uri": RP,
        "scope": "openid profile", "state": "s", "nonce": "n",
        "code_challenge": challenge, "code_challenge_method": "S256",
        "acr_values": Level.SUBSTANTIEEL.context_class, "ui_locales": "en",
    }))
    done = _through_the_node(env, browser, start)
    target = done.headers.get("Location", "")
    assert target.startswith(RP), (done.status_code, done.get_data(as_text=True)[:1000])
    code = parse_qs(urlsplit(target).query).get("code", [""])[0]
    assert code, target
    response = exchange(env.client, code, verifier, client_id=client_id, secret=secret)
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def test_a_linked_eid_brings_the_bsn_to_a_bsn_client(env: Env) -> None:
    app = env.app
    now = clock.now()
    with get_db(app).begin() as s:
        account = Account(
            username="erika", username_key="erika", password_hash="x", bsn=BSN,
            surname="Mustermann", given_names="Erika", birth_date=date(1964, 8, 12),
            nationality="DEU", status="active", created_at=now, email="erika@example.org",
            email_verified_at=now, email_confirmed_at=now)
        s.add(account)
        s.flush()
        account_id = account.id
    _c, gov = add_client(app, "gov", bsn=True, claims=("profile",))
    _c, shop = add_client(app, "shop")
    assert gov and shop

    # Before the link: no BSN, the eID's attributes for the profile scope.
    before = _oidc_login(env, "gov", gov)
    assert "bsn" not in verify_id_token(env.client, before["id_token"])
    info = env.client.get("/oidc/userinfo", headers={
        "Authorization": "Bearer " + before["access_token"]}).get_json()
    assert info["given_name"] and info["family_name"] and "bsn" not in info

    # The citizen asks for a link code after an eID login at /eidas/link.
    citizen = env.app.test_client()
    start = citizen.get("/eidas/link?lang=en")
    flow_page = _follow(citizen, citizen.post("/eidas/link/start", data={
        "csrf_token": csrf(start.get_data(as_text=True))}))
    request_page = _through_the_node(env, citizen, flow_page)
    body = request_page.get_data(as_text=True)
    assert request_page.status_code == 200, body[:2000]
    assert "Ask for a link code" in body
    shown = citizen.post("/eidas/link/code?lang=en", data={"csrf_token": csrf(body)})
    match = re.search(r'<strong class="code">(K[A-Z0-9]{4} [A-Z0-9]{4})</strong>',
                      shown.get_data(as_text=True))
    assert match
    code = match.group(1)

    # The desk: an officer asks, a supervisor of the same desk approves.
    with app.app_context():
        s = get_db(app).sessionmaker()
        officer = make_staff(s)
        supervisor = make_staff(s, role="supervisor")
        request = four_eyes.request_four_eyes(
            s, staff=officer, kind="link_eidas", object_ref=f"account:{account_id}",
            payload={"link_code": code}, reason="German ID card checked",
            settings=get_settings(app))
        outcome = four_eyes.decide_four_eyes(s, get_settings(app), app, supervisor=supervisor,
                                             request_id=request.id, approve=True)
        assert outcome.status == "approved"
        s.close()

    # After the link: the BSN for the --bsn client, not for the other.
    after = _oidc_login(env, "gov", gov)
    claims = verify_id_token(env.client, after["id_token"])
    assert claims["bsn"] == BSN and claims["acr"] == Level.SUBSTANTIEEL.context_class
    other = _oidc_login(env, "shop", shop)
    assert "bsn" not in verify_id_token(env.client, other["id_token"])
