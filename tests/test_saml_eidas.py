"""A SAML relying party logs a simulated EU citizen in through the eIDAS route (issues 7 and 8).

python3-saml as the SP -> the gateway's SAML IdP -> the route choice (eIDAS, the citizen's
country) -> the simulated eIDAS node (gateway.eidas_sim) -> the gateway's eIDAS ACS -> the
SAML Response to the SP, validated by python3-saml: AuthnContextClassRef Smartcard
(substantieel), a pairwise NameID, the attributes registered for the SP in the gateway's one
naming, never the PersonIdentifier; a --bsn SP gets Responder/RequestDenied for an eIDAS
login that is not linked to an account with a BSN, and `s00000000:<BSN>` for a linked one.
The exchange runs through the Flask test client (the simulator is called in-process, as in
tests/test_eidas_route.py).
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import pytest
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C

from gateway.idp.saml import assertions
from gateway.levels import Level
from tests.eidas_helpers import (
    Env,
    continued,
    csrf,
    post_fields,
)
from tests.test_saml_idp import (
    ACS,
    assert_status,
    consume,
    form_fields,
    register,
    request_data,
    sp_metadata,
    sp_settings,
)

SMARTCARD = Level.SUBSTANTIEEL.context_class



def _sp(env: Env, **kwargs: Any) -> Any:
    idp_meta = env.client.get("/saml/idp/metadata").get_data(as_text=True)
    settings = sp_settings(idp_meta, contexts=[SMARTCARD])
    register(env.app, sp_metadata(settings), **kwargs)
    return settings


def _through_eidas(env: Env, settings: Any, person: str, country: str) -> tuple[str, Any]:
    """The SP's AuthnRequest (HTTP-Redirect), the eIDAS route at the simulated node, and the
    gateway's answer to the SP: (request ID, the page that posts to the ACS)."""
    auth = OneLogin_Saml2_Auth(request_data("/login"), settings)
    url = urlsplit(auth.login(return_to="rs-eidas"))
    page = env.client.get(url.path + "?" + url.query, follow_redirects=True)
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and 'name="country"' in body, body[:2000]
    flow_id = page.request.path.rsplit("/", 1)[-1]
    page = env.client.post(f"/login/{flow_id}/route", data={
        "csrf_token": csrf(body), "route": "eidas", "country": country,
    })
    _, fields = post_fields(page.get_data(as_text=True))
    saml_response, _ = env.node.response_for(fields["SAMLRequest"], person)
    answer = env.client.post("/eidas/acs", data={
        "SAMLResponse": saml_response, "RelayState": fields["RelayState"],
    })
    # A good answer ends on a page that moves on by itself (docs/eidas.md, "CSP").
    answer = env.client.get(continued(answer))
    for _ in range(10):
        if answer.status_code not in (302, 303):
            break
        answer = env.client.get(answer.headers["Location"])
    assert answer.status_code == 200, answer.get_data(as_text=True)[:2000]
    return auth.get_last_request_id(), answer


@pytest.mark.parametrize(("person", "country"), [
    ("de-substantial", "DE"), ("es-substantial", "ES"), ("it-substantial", "IT"),
])
def test_a_saml_sp_logs_an_eu_citizen_in_at_substantieel(
    env: Env, person: str, country: str
) -> None:
    settings = _sp(env, attributes=("given_name", "family_name", "birthdate", "country"))
    request_id, page = _through_eidas(env, settings, person, country)
    action, fields = form_fields(page.get_data(as_text=True))
    assert action == ACS and fields["RelayState"] == "rs-eidas"
    auth = consume(settings, fields, request_id)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.get_nameid_format() == C.NAMEID_PERSISTENT
    xml = base64.b64decode(fields["SAMLResponse"])
    assert SMARTCARD.encode() in xml
    released = auth.get_friendlyname_attributes()
    assert set(released) == {"given_name", "family_name", "birthdate", "country"}
    assert released["country"] == [country] and len(released["birthdate"][0]) == 10
    assert "urn:oid:2.5.4.4" in auth.get_attributes()
    assert b"/NL/" not in xml  # never the PersonIdentifier (XX/NL/...)


def test_a_bsn_sp_gets_request_denied_for_an_unlinked_eidas_login(env: Env) -> None:
    settings = _sp(env, bsn=True)
    _, page = _through_eidas(env, settings, "de-substantial", "DE")
    action, fields = form_fields(page.get_data(as_text=True))
    assert action == ACS
    assert_status(base64.b64decode(fields["SAMLResponse"]), assertions.STATUS_REQUEST_DENIED)


def test_a_linked_eu_citizen_reaches_a_bsn_sp_with_the_bsn(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The desk link itself is tested in tests/test_eidas_link.py; here the route's look-up
    answers "linked to this account", and the --bsn SP gets the account's BSN as NameID."""
    from sqlalchemy import select

    from gateway.accounts.models import Account
    from gateway.db import get_db
    from gateway.desks import eidas_links
    from tests.test_login_flow import make_account
    from tests.test_saml_idp import BSN

    account_id = make_account(env.app)
    with get_db(env.app).begin() as db:
        db.scalars(select(Account)).one().bsn = BSN
    seen: list[str] = []

    def linked(_db: Any, subject_key: str) -> str:
        seen.append(subject_key)
        return account_id

    monkeypatch.setattr(eidas_links, "linked_account_id", linked)
    settings = _sp(env, bsn=True, attributes=("family_name", "country"))
    request_id, page = _through_eidas(env, settings, "de-substantial", "DE")
    _, fields = form_fields(page.get_data(as_text=True))
    auth = consume(settings, fields, request_id)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert seen and seen[0].startswith("eidas:")
    assert auth.get_nameid() == f"s00000000:{BSN}"
    assert SMARTCARD.encode() in base64.b64decode(fields["SAMLResponse"])
    assert auth.get_friendlyname_attributes()["country"] == ["DE"]


@pytest.mark.parametrize(("bsn", "lang", "hint"), [
    (True, "en", "This service needs your BSN."),
    (True, "nl", "Deze dienst heeft uw BSN nodig."),
    (False, "en", None),
])
def test_the_choice_says_when_the_service_needs_a_bsn(
    env: Env, bsn: bool, lang: str, hint: str | None,
) -> None:
    """A --bsn SP gets a BSN from an eIDAS login only when the eID is linked to an account:
    the person learns that where they choose the route, not from an error afterwards."""
    settings = _sp(env, bsn=bsn)
    env.client.get(f"/?lang={lang}")
    auth = OneLogin_Saml2_Auth(request_data("/login"), settings)
    url = urlsplit(auth.login(return_to="rs-hint"))
    page = env.client.get(url.path + "?" + url.query, follow_redirects=True)
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and 'name="country"' in body
    if hint is None:
        assert 'id="eidas-bsn-hint"' not in body
        assert 'aria-describedby="eidas-country-hint"' in body
    else:
        assert hint in body
        assert 'aria-describedby="eidas-country-hint eidas-bsn-hint"' in body
