"""SAML SSO through the REAL login flow (issue 7 "Done when"): python3-saml as the SP, the
gateway's /login pages (password; the SMS code from the dev outbox for midden), responses over
HTTP-POST and HTTP-Artifact, with and without an encrypted assertion; attribute release per SP;
the legacy DigiD NameID for --bsn SPs; single logout over HTTP-Redirect and SOAP ends the SSO
session row, after which IsPassive gets NoPassive.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from lxml import etree
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from sqlalchemy import select

from gateway.accounts.models import Account
from gateway.db import get_db
from gateway.flows.sessions import SsoSession
from gateway.idp.saml import assertions, registry, views
from gateway.levels import Level
from tests.test_login_flow import PASSWORD, last_code, make_account, post_form
from tests.test_saml_idp import (
    ACS,
    BSN,
    SP_ID,
    artifact_resolve,
    assert_status,
    b64,
    consume,
    form_fields,
    register,
    request_data,
    sign,
    sp_metadata,
    sp_settings,
)

SAML_NS = views.SAML_NS


@pytest.fixture
def web(app: Flask) -> FlaskClient:
    make_account(app)
    return app.test_client()


@pytest.fixture
def idp_meta(web: FlaskClient) -> str:
    return web.get("/saml/idp/metadata").get_data(as_text=True)


def _to_sp(web: FlaskClient, response: Any) -> Any:
    """Follow the gateway's own redirects until the answer for the SP: the self-submitting
    POST form (200) or the artifact redirect to the ACS (303)."""
    for _ in range(10):
        if response.status_code in (302, 303) and not response.location.startswith(ACS):
            response = web.get(response.location)
            continue
        return response
    raise AssertionError("redirect loop")


def _redirect_request(web: FlaskClient, settings: Any, relay_state: str) -> tuple[str, Any]:
    """An AuthnRequest over HTTP-Redirect (signed in the query string), as python3-saml sends."""
    auth = OneLogin_Saml2_Auth(request_data("/login"), settings)
    url = urlsplit(auth.login(return_to=relay_state))
    return auth.get_last_request_id(), web.get(url.path + "?" + url.query)


def _post_request(web: FlaskClient, settings: Any, relay_state: str,
                  passive: bool = False) -> tuple[str, Any]:
    """An AuthnRequest over HTTP-POST, enveloped-signed, built by python3-saml."""
    request = OneLogin_Saml2_Authn_Request(settings, is_passive=passive)
    xml = request.get_xml()
    xml = xml.decode() if isinstance(xml, bytes) else xml
    data = {"SAMLRequest": b64(sign(xml)), "RelayState": relay_state}
    return request.get_id(), web.post("/saml/idp/sso", data=data)


def _page(web: FlaskClient, response: Any) -> Any:
    return web.get(response.location, follow_redirects=True) if response.status_code in (
        302, 303) else response


def _password(web: FlaskClient, response: Any) -> Any:
    page = _page(web, response)
    assert 'autocomplete="current-password"' in page.get_data(as_text=True)
    return post_form(web, page, "/password", {"username": "jan.jansen", "password": PASSWORD},
                     follow=False)


def _sms(app: Flask, web: FlaskClient, response: Any) -> Any:
    page = _page(web, response)
    if 'autocomplete="one-time-code"' not in page.get_data(as_text=True):
        page = post_form(web, page, "/code", {"action": "send"})
    assert 'autocomplete="one-time-code"' in page.get_data(as_text=True)
    return post_form(web, page, "/code", {"action": "verify", "code": last_code(app)},
                     follow=False)


def _posted(settings: Any, answer: Any, request_id: str, relay_state: str) -> Any:
    assert answer.status_code == 200, answer.status_code
    action, fields = form_fields(answer.get_data(as_text=True))
    assert action == ACS and fields["RelayState"] == relay_state
    return fields, consume(settings, fields, request_id)


def _resolved(web: FlaskClient, settings: Any, answer: Any, request_id: str,
              relay_state: str) -> tuple[dict[str, str], Any]:
    assert answer.status_code == 303 and answer.location.startswith(ACS)
    query = parse_qs(urlsplit(answer.location).query)
    assert query["RelayState"] == [relay_state]
    soap = web.post("/saml/idp/artifact", data=artifact_resolve(query["SAMLart"][0]),
                    content_type="text/xml")
    assert soap.status_code == 200
    inner = etree.fromstring(soap.data).find(
        f".//{{{views.SAMLP_NS}}}ArtifactResponse/{{{views.SAMLP_NS}}}Response")
    assert inner is not None
    fields = {"SAMLResponse": base64.b64encode(etree.tostring(inner)).decode()}
    return fields, consume(settings, fields, request_id)


def _context(auth: Any) -> str | None:
    root = etree.fromstring(auth.get_last_response_xml().encode())
    ref = root.find(f".//{{{SAML_NS}}}AuthnContextClassRef")
    return None if ref is None else ref.text


def _accepted(auth: Any, level: Level) -> None:
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.is_authenticated()
    assert _context(auth) == level.context_class


def _open_sessions(app: Flask) -> list[SsoSession]:
    with get_db(app).begin() as db:
        rows = db.scalars(select(SsoSession).where(SsoSession.ended_at.is_(None))).all()
        db.expunge_all()
        return list(rows)


@pytest.mark.parametrize("encrypted", [False, True])
def test_post_binding_basis_then_step_up_to_midden(
    app: Flask, web: FlaskClient, idp_meta: str, encrypted: bool
) -> None:
    settings = sp_settings(idp_meta, contexts=[Level.BASIS.context_class],
                           encrypted=encrypted)
    # "surname" is the older name of family_name, still accepted.
    register(app, sp_metadata(settings), attributes=("surname", "given_name"))

    # Basis over HTTP-Redirect: the password page, then a POST form to the ACS.
    request_id, response = _redirect_request(web, settings, "rs-basis")
    assert response.status_code == 303 and "/login/" in response.location
    fields, auth = _posted(settings, _to_sp(web, _password(web, response)), request_id,
                           "rs-basis")
    assert (b"EncryptedAssertion" in base64.b64decode(fields["SAMLResponse"])) is encrypted
    _accepted(auth, Level.BASIS)
    assert auth.get_nameid_format() == C.NAMEID_PERSISTENT
    basis_name_id = auth.get_nameid()
    # Released: what this SP was registered for, nothing more (no birth date, no e-mail),
    # every attribute named the same way: a URI Name, NameFormat uri, FriendlyName the
    # neutral name (docs/saml-idp.md).
    assert auth.get_attributes() == {"urn:oid:2.5.4.4": ["Jansen"],
                                     "urn:oid:2.5.4.42": ["Jan"]}
    assert auth.get_friendlyname_attributes() == {"family_name": ["Jansen"],
                                                  "given_name": ["Jan"]}
    formats = {a.get("NameFormat") for a in etree.fromstring(
        auth.get_last_response_xml().encode()).iter(f"{{{SAML_NS}}}Attribute")}
    assert formats == {"urn:oasis:names:tc:SAML:2.0:attrname-format:uri"}

    # Midden over HTTP-POST: the SSO session knows the password, only the SMS code is asked.
    midden = sp_settings(idp_meta, contexts=[Level.MIDDEN.context_class], encrypted=encrypted)
    request_id, response = _post_request(web, midden, "rs-midden")
    assert response.status_code == 303
    page = _page(web, response)
    assert 'name="password"' not in page.get_data(as_text=True)
    _, auth = _posted(midden, _to_sp(web, _sms(app, web, page)), request_id, "rs-midden")
    _accepted(auth, Level.MIDDEN)
    assert auth.get_nameid() == basis_name_id  # pairwise, stable for this SP

    # SSO: another basis request is answered at once, with the level the session holds.
    request_id, response = _redirect_request(web, settings, "rs-sso")
    _, auth = _posted(settings, _to_sp(web, response), request_id, "rs-sso")
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert _context(auth) in (Level.BASIS.context_class, Level.MIDDEN.context_class)


@pytest.mark.parametrize("encrypted", [False, True])
def test_artifact_binding_midden_for_a_bsn_sp(
    app: Flask, web: FlaskClient, idp_meta: str, encrypted: bool
) -> None:
    with get_db(app).begin() as db:
        account = db.scalars(select(Account)).one()
        account.bsn = BSN
    settings = sp_settings(idp_meta, binding=registry.BINDING_ARTIFACT,
                           contexts=[Level.MIDDEN.context_class], encrypted=encrypted)
    settings_unspecified = settings  # python3-saml accepts any NameID format it is given
    register(app, sp_metadata(settings), bsn=True, attributes=())

    request_id, response = _redirect_request(web, settings, "rs-art")
    response = _password(web, response)
    answer = _to_sp(web, _sms(app, web, _to_sp(web, response)))
    fields, auth = _resolved(web, settings_unspecified, answer, request_id, "rs-art")
    assert (b"EncryptedAssertion" in base64.b64decode(fields["SAMLResponse"])) is encrypted
    _accepted(auth, Level.MIDDEN)
    assert auth.get_nameid() == f"s00000000:{BSN}"
    assert auth.get_nameid_format() == "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"


def _login_basis(app: Flask, web: FlaskClient, settings: Any) -> Any:
    request_id, response = _redirect_request(web, settings, "rs-in")
    _, auth = _posted(settings, _to_sp(web, _password(web, response)), request_id, "rs-in")
    _accepted(auth, Level.BASIS)
    assert len(_open_sessions(app)) == 1
    return auth


def _passive_gets_no_passive(web: FlaskClient, settings: Any) -> None:
    request_id, response = _post_request(web, settings, "rs-passive", passive=True)
    fields, _ = _posted(settings, response, request_id, "rs-passive")
    assert_status(base64.b64decode(fields["SAMLResponse"]), assertions.STATUS_NO_PASSIVE)


def test_slo_redirect_ends_the_sso_session(app: Flask, web: FlaskClient, idp_meta: str) -> None:
    settings = sp_settings(idp_meta)
    register(app, sp_metadata(settings), attributes=())
    # Before any login, IsPassive already gets NoPassive (and with a session it does not).
    _passive_gets_no_passive(web, settings)
    auth = _login_basis(app, web, settings)
    request_id, response = _post_request(web, settings, "rs-p2", passive=True)
    _, passive = _posted(settings, _to_sp(web, response), request_id, "rs-p2")
    _accepted(passive, Level.BASIS)

    logout = OneLogin_Saml2_Auth(request_data("/logout"), settings)
    url = urlsplit(logout.logout(name_id=auth.get_nameid(), name_id_format=C.NAMEID_PERSISTENT,
                                 return_to="rs-out"))
    answer = web.get("/saml/idp/slo?" + url.query)
    assert answer.status_code == 303
    assert _open_sessions(app) == []
    _passive_gets_no_passive(web, settings)


def test_slo_soap_ends_the_session_the_name_id_was_issued_in(
    app: Flask, web: FlaskClient, idp_meta: str
) -> None:
    settings = sp_settings(idp_meta)
    register(app, sp_metadata(settings), attributes=())
    auth = _login_basis(app, web, settings)
    from gateway import clock
    from tests.test_saml_idp import _REQ_SEQ

    now = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    xml = (
        f'<samlp:LogoutRequest xmlns:samlp="{views.SAMLP_NS}" xmlns:saml="{SAML_NS}" '
        f'ID="_soapout{next(_REQ_SEQ)}" Version="2.0" IssueInstant="{now}">'
        f"<saml:Issuer>{SP_ID}</saml:Issuer>"
        f'<saml:NameID Format="{C.NAMEID_PERSISTENT}">{auth.get_nameid()}</saml:NameID>'
        f"</samlp:LogoutRequest>"
    )
    body = sign(xml).split("?>", 1)[-1]
    envelope = (f'<s:Envelope xmlns:s="{views.SOAP_NS}"><s:Body>{body}</s:Body></s:Envelope>')
    # A back channel: another client, without the browser's cookie.
    answer = app.test_client().post("/saml/idp/slo", data=envelope.encode(),
                                    content_type="text/xml")
    assert answer.status_code == 200
    assert_status(answer.data, "urn:oasis:names:tc:SAML:2.0:status:Success")
    ended = _open_sessions(app)
    assert ended == []
    with get_db(app).begin() as db:
        row = db.scalars(select(SsoSession)).one()
        assert row.ended_at is not None and row.end_reason == "logout"
    _passive_gets_no_passive(web, settings)
