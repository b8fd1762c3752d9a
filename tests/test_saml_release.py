"""SAML attribute release and subjects for every route (issues 7 and 8), and `gateway rp
list/remove` for SAML SPs.

- Every released attribute is named one way: URI Name, NameFormat uri, FriendlyName = the
  neutral name registered with `--attribute` (gateway.idp.saml.attributes).
- eIDAS logins (route "eidas", attributes from the node) release the contract's neutral
  attributes per SP, never the PersonIdentifier; AuthnContextClassRef Smartcard for
  substantieel and SmartcardPKI for hoog (shared/INTERFACE.md).
- NameID: a --bsn SP gets `s00000000:<BSN>` for an eIDAS login linked to an account with a
  BSN, and Responder/RequestDenied for an unlinked one; other SPs a pairwise identifier.
- Artifacts name the IdP's ArtifactResolutionService index, and an ArtifactResponse carries
  each xs:ID once (both found with django-digid-eherkenning, tests/test_interop_digid.py).
"""

from __future__ import annotations

import base64
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask, redirect
from flask.testing import FlaskClient
from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from sqlalchemy import select

from gateway import clock
from gateway.db import get_db
from gateway.flows.types import AuthnError, AuthnResult, RpRequest
from gateway.idp.saml import assertions, attributes, registry, views
from gateway.levels import Level
from tests.test_saml_idp import (
    BSN,
    SP_ID,
    assert_status,
    consume,
    form_fields,
    register,
    sp_metadata,
    sp_settings,
    start_sso,
)

SAML_NS = views.SAML_NS
EIDAS_ATTRIBUTES = {
    "given_name": "Erika", "family_name": "Mustermann", "birthdate": "1964-08-12",
    "birth_name": "Gabler", "place_of_birth": "Berlin", "gender": "Female", "country": "DE",
    "address": "Heidestraße 17, 51147 Köln",
}
PERSON_ID = "DE/NL/T22000129"


class FakeRoute:
    """The login flow's adapter, answering with a configurable AuthnResult."""

    def __init__(self) -> None:
        self.requests: list[RpRequest] = []
        self.level = Level.SUBSTANTIEEL
        self.route = "eidas"
        self.account_id: str | None = None
        self.subject_key = "eidas:" + "ab" * 32
        self.attributes: dict[str, str] = dict(EIDAS_ATTRIBUTES)

    def start(self, rp_request: RpRequest) -> Any:
        self.requests.append(rp_request)
        return redirect(rp_request.resume_url + "?flow=fake-flow", code=303)

    def finish(self, flow_id: str) -> tuple[RpRequest, AuthnResult | AuthnError] | None:
        if flow_id != "fake-flow" or not self.requests:
            return None
        rp_request = self.requests.pop()
        return rp_request, AuthnResult(
            subject_key=self.subject_key, account_id=self.account_id, route=self.route,
            level=self.level, amr=(), auth_time=clock.now(), sso_session_id=None,
            attributes=self.attributes,
        )


@pytest.fixture
def route(monkeypatch: pytest.MonkeyPatch) -> FakeRoute:
    fake = FakeRoute()
    monkeypatch.setattr(views, "start_login", fake.start)
    monkeypatch.setattr(views, "finish_login", fake.finish)
    monkeypatch.setattr(views, "has_sso_session", lambda: True)
    monkeypatch.setattr(views, "reachable_levels", lambda: frozenset(Level))
    return fake


@pytest.fixture
def idp_meta(client: FlaskClient) -> str:
    return client.get("/saml/idp/metadata").get_data(as_text=True)


def _login(client: FlaskClient, settings: Any) -> tuple[bytes, Any]:
    request_id, page = start_sso(client, settings)
    assert page.status_code == 200, page.status_code
    _, fields = form_fields(page.get_data(as_text=True))
    return base64.b64decode(fields["SAMLResponse"]), consume(settings, fields, request_id)


def _context(xml: bytes) -> str | None:
    ref = etree.fromstring(xml).find(f".//{{{SAML_NS}}}AuthnContextClassRef")
    return None if ref is None else ref.text


@pytest.mark.parametrize(
    ("level", "class_ref"),
    [(Level.SUBSTANTIEEL, "urn:oasis:names:tc:SAML:2.0:ac:classes:Smartcard"),
     (Level.HOOG, "urn:oasis:names:tc:SAML:2.0:ac:classes:SmartcardPKI")],
)
def test_eidas_login_releases_registered_attributes_with_one_naming(
    app: Flask, client: FlaskClient, idp_meta: str, route: FakeRoute, level: Level,
    class_ref: str,
) -> None:
    route.level = level
    settings = sp_settings(idp_meta, contexts=[class_ref])
    register(app, sp_metadata(settings),
             attributes=("given_name", "family_name", "birthdate", "country", "gender"))
    xml, auth = _login(client, settings)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert _context(xml) == class_ref
    assert auth.get_nameid_format() == C.NAMEID_PERSISTENT
    assert auth.get_friendlyname_attributes() == {
        "given_name": ["Erika"], "family_name": ["Mustermann"], "birthdate": ["1964-08-12"],
        "gender": ["Female"], "country": ["DE"],
    }
    assert auth.get_attributes() == {
        "urn:oid:2.5.4.42": ["Erika"], "urn:oid:2.5.4.4": ["Mustermann"],
        "urn:oid:1.3.6.1.5.5.7.9.1": ["1964-08-12"],
        "http://eidas.europa.eu/attributes/naturalperson/Gender": ["Female"],
        "urn:oid:2.5.4.6": ["DE"],
    }
    for element in etree.fromstring(xml).iter(f"{{{SAML_NS}}}Attribute"):
        assert element.get("NameFormat") == attributes.NAME_FORMAT_URI
    # Not registered for this SP, so not released; the PersonIdentifier never is.
    assert b"Gabler" not in xml and b"Berlin" not in xml and PERSON_ID.encode() not in xml


def test_every_releasable_attribute_has_a_uri_name_and_a_value_type() -> None:
    names = [a.uri for a in attributes.ATTRIBUTES]
    assert len(set(names)) == len(names)
    assert all(n.startswith(("urn:oid:", attributes.EIDAS_NATURAL)) for n in names)
    assert set(registry.RELEASABLE_ATTRIBUTES) >= {
        "given_name", "family_name", "birthdate", "birth_name", "place_of_birth", "address",
        "gender", "country",
    }


def test_asserted_attributes_win_over_the_account_and_empty_ones_are_left_out() -> None:
    class Account:
        surname = "Jansen"
        given_names = "Jan"
        birth_date = date(1970, 1, 2)
        email = "jan@example.org"
        nationality = "NLD"

    names = ("surname", "given_name", "birthdate", "email", "place_of_birth")
    from_account = {a.neutral: v for a, v in attributes.released(names, Account(), {})}
    assert from_account == {"family_name": "Jansen", "given_name": "Jan",
                            "birthdate": "1970-01-02", "email": "jan@example.org"}
    linked = {a.neutral: v for a, v in attributes.released(
        names, Account(), {"family_name": "Mustermann", "place_of_birth": "", "junk": "x"})}
    assert linked["family_name"] == "Mustermann" and "place_of_birth" not in linked
    assert "junk" not in linked and attributes.attribute_statement([]) is None


def test_unlinked_eidas_login_to_a_bsn_sp_is_request_denied(
    app: Flask, client: FlaskClient, idp_meta: str, route: FakeRoute,
) -> None:
    settings = sp_settings(idp_meta)
    register(app, sp_metadata(settings), bsn=True)
    _request_id, page = start_sso(client, settings)
    _, fields = form_fields(page.get_data(as_text=True))
    xml = base64.b64decode(fields["SAMLResponse"])
    assert_status(xml, assertions.STATUS_REQUEST_DENIED)
    assert b"Assertion" not in xml.replace(b"EncryptedAssertion", b"")


def test_linked_eidas_login_gives_a_bsn_sp_the_bsn(
    app: Flask, client: FlaskClient, idp_meta: str, route: FakeRoute,
) -> None:
    from gateway.accounts.models import Account
    from tests.test_login_flow import make_account

    route.account_id = make_account(app)
    with get_db(app).begin() as db:
        db.scalars(select(Account)).one().bsn = BSN
    settings = sp_settings(idp_meta)
    register(app, sp_metadata(settings), bsn=True, attributes=("family_name",))
    xml, auth = _login(client, settings)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.get_nameid() == f"s00000000:{BSN}"
    assert _context(xml) == Level.SUBSTANTIEEL.context_class
    # The name the eID asserted, not the one on the desk account.
    assert auth.get_friendlyname_attributes() == {"family_name": ["Mustermann"]}


def test_pairwise_name_id_of_an_eidas_login_is_stable_and_not_the_desk_one(
    app: Flask, client: FlaskClient, idp_meta: str, route: FakeRoute,
) -> None:
    settings = sp_settings(idp_meta)
    register(app, sp_metadata(settings))
    _, first = _login(client, settings)
    _, again = _login(client, settings)
    assert first.get_nameid() == again.get_nameid()
    route.subject_key = "account:someone"
    _, desk = _login(client, settings)
    assert desk.get_nameid() != first.get_nameid()
    assert PERSON_ID not in str(first.get_nameid())


def test_registry_canonicalises_attribute_names(app: Flask, idp_meta: str) -> None:
    settings = sp_settings(idp_meta)
    with app.app_context(), get_db(app).begin() as db:
        row = registry.register(db, sp_metadata(settings),
                                attributes=("surname", "given_names", "birth_date", "gender"))
        assert row.attribute_names == ("family_name", "given_name", "birthdate", "gender")
        assert json.loads(row.attributes) == ["family_name", "given_name", "birthdate",
                                              "gender"]
        row.attributes = json.dumps(["surname", "unknown", "family_name"])  # stored earlier
        assert row.attribute_names == ("family_name",)
        with pytest.raises(registry.MetadataError, match="--attribute"):
            registry.register(db, sp_metadata(settings), attributes=("bsn",))


# --- gateway rp list / remove ---------------------------------------------------------------


def _cli(settings: Any, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    from gateway.cli import main

    for name, value in settings.environ.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(main, list(args))


def test_rp_list_and_remove_cover_saml_sps(
    app: Flask, settings: Any, idp_meta: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "sp.xml"
    path.write_bytes(sp_metadata(sp_settings(idp_meta, encrypted=True)))
    added = _cli(settings, monkeypatch, "rp", "add-saml", "--metadata", str(path), "--bsn",
                 "--attribute", "family_name", "--attribute", "surname")
    assert added.exit_code == 0, added.output
    oidc = _cli(settings, monkeypatch, "rp", "add-oidc", "--client-id", "portal",
                "--redirect-uri", "https://portal.example.org/cb")
    assert oidc.exit_code == 0, oidc.output

    listed = _cli(settings, monkeypatch, "rp", "list")
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert [r["protocol"] for r in rows] == ["oidc", "saml"]
    saml = rows[1]
    assert saml["entity_id"] == SP_ID and saml["bsn"] is True
    assert saml["attributes"] == ["family_name"] and saml["encrypted_assertions"] is True
    assert saml["acs"] and all(a["location"].startswith("https://") for a in saml["acs"])

    removed = _cli(settings, monkeypatch, "rp", "remove", SP_ID)
    assert removed.exit_code == 0, removed.output
    with app.app_context(), get_db(app).begin() as db:
        assert registry.get_sp(db, SP_ID) is None
        from gateway.audit import AuditEntry

        actions = [e.action for e in db.scalars(select(AuditEntry))]
        assert "saml.sp.remove" in actions
    again = _cli(settings, monkeypatch, "rp", "remove", SP_ID)
    assert again.exit_code == 1 and "no relying party" in again.output
    assert "Traceback" not in again.output
    # The OIDC client is still there, and removable the same way.
    assert _cli(settings, monkeypatch, "rp", "remove", "portal").exit_code == 0


def test_removed_sp_is_no_longer_answered(
    app: Flask, client: FlaskClient, idp_meta: str, route: FakeRoute,
) -> None:
    settings = sp_settings(idp_meta)
    register(app, sp_metadata(settings))
    _login(client, settings)
    with app.app_context(), get_db(app).begin() as db:
        assert registry.remove(db, SP_ID)
    from onelogin.saml2.auth import OneLogin_Saml2_Auth

    from tests.test_saml_idp import request_data

    url = OneLogin_Saml2_Auth(request_data("/login"), settings).login()
    answer = client.get(url[url.index("/saml/idp/sso"):])
    assert answer.status_code == 400  # an error page: nothing is sent to its ACS


def test_artifact_endpoint_index_names_the_idp_resolution_service(
    app: Flask, client: FlaskClient, idp_meta: str, route: FakeRoute,
) -> None:
    """Bindings 3.6.4: EndpointIndex is the index of the issuer's ArtifactResolutionService
    (django-digid-eherkenning looks the endpoint up by it), not the SP's ACS index."""
    from urllib.parse import parse_qs, urlsplit

    route.level = Level.BASIS
    settings = sp_settings(idp_meta, binding=registry.BINDING_ARTIFACT)
    metadata = sp_metadata(settings)
    assert b'index="1"' in metadata
    register(app, metadata.replace(b'index="1"', b'index="7"'))
    _, answer = start_sso(client, settings)
    assert answer.status_code == 303
    artifact = parse_qs(urlsplit(answer.headers["Location"]).query)["SAMLart"][0]
    md = "{urn:oasis:names:tc:SAML:2.0:metadata}"
    services = etree.fromstring(idp_meta.encode()).findall(
        f".//{md}IDPSSODescriptor/{md}ArtifactResolutionService")
    assert len(services) == 1
    index = int(base64.b64decode(artifact)[2:4].hex(), 16)
    assert index == int(services[0].get("index") or -1) != 7


def test_artifact_response_ids_are_unique(
    app: Flask, client: FlaskClient, idp_meta: str, route: FakeRoute,
) -> None:
    """Every ID/Id in an ArtifactResponse is an xs:ID and must occur once: schema-validating
    SPs (django-digid-eherkenning) refuse the document otherwise."""
    from urllib.parse import parse_qs, urlsplit

    from tests.test_saml_idp import artifact_resolve

    route.level = Level.BASIS
    settings = sp_settings(idp_meta, binding=registry.BINDING_ARTIFACT)
    register(app, sp_metadata(settings))
    _, answer = start_sso(client, settings)
    artifact = parse_qs(urlsplit(answer.headers["Location"]).query)["SAMLart"][0]
    soap = client.post("/saml/idp/artifact", data=artifact_resolve(artifact),
                       content_type="text/xml")
    assert soap.status_code == 200
    ids = [value for element in etree.fromstring(soap.data).iter()
           for name, value in element.attrib.items() if name in ("ID", "Id")]
    assert len(ids) >= 3 and len(ids) == len(set(ids)), ids
