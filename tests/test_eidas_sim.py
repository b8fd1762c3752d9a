"""The eIDAS node simulator (`gateway eidas-sim`, issue 8 item 5): a real SAML peer.

A small fake connector (its own RSA key, SP metadata, AuthnRequests signed with the gateway's
in-process XML backend) drives the simulator: metadata signed and valid, Responses that verify
with the node's certificate and decrypt with the connector's key, forged or altered requests
refused, the person-choice page in Dutch and English, and the command over real HTTP.
The simulator keeps no database, so these tests are the same on every backend.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient
from lxml import etree
from saml2.sigver import SignatureError
from saml2.xml.schema import validate as validate_schema

from gateway import clock
from gateway.eidas_sim import node as sim
from gateway.eidas_sim.app import create_sim_app
from gateway.eidas_sim.persons import (
    COUNTRIES,
    LOA_HIGH,
    LOA_LOW,
    LOA_SUBSTANTIAL,
    PERSONS,
    persons_for,
)
from gateway.idp.saml.crypto import CryptoBackendXmlSecInProcess
from gateway.settings import Settings

BASE = "http://127.0.0.1:8002"
SP_ENTITY = "http://127.0.0.1:8000/eidas/metadata"
SP_ACS = "http://127.0.0.1:8000/eidas/acs"
NS = {
    "samlp": sim.SAMLP_NS, "saml": sim.SAML_NS, "md": sim.MD_NS, "ds": sim.DS_NS,
    "mdattr": sim.MDATTR_NS, "xenc": "http://www.w3.org/2001/04/xmlenc#",
}
ASSERTION = "urn:oasis:names:tc:SAML:2.0:assertion:Assertion"
RESPONSE = "urn:oasis:names:tc:SAML:2.0:protocol:Response"
ENTITY_DESCRIPTOR = "urn:oasis:names:tc:SAML:2.0:metadata:EntityDescriptor"


def _key_and_cert(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = clock.now()
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / f"{name}-key.pem", folder / f"{name}-cert.pem"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _b64_cert(cert_path: Path) -> str:
    return "".join(cert_path.read_text().strip().splitlines()[1:-1])


class FakeConnector:
    """A connector (eIDAS SP) with its own key, as the gateway's eIDAS route is one."""

    def __init__(self, folder: Path, name: str = "connector") -> None:
        self.key_path, self.cert_path = _key_and_cert(folder, name)
        self.crypto = CryptoBackendXmlSecInProcess()

    def metadata(self) -> bytes:
        cert = _b64_cert(self.cert_path)
        key_info = (f"<ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert}"
                    "</ds:X509Certificate></ds:X509Data></ds:KeyInfo>")
        return (
            f'<md:EntityDescriptor xmlns:md="{sim.MD_NS}" xmlns:ds="{sim.DS_NS}" '
            f'entityID="{SP_ENTITY}"><md:Extensions><eidas:SPType xmlns:eidas="{sim.EIDAS_NS}">'
            "public</eidas:SPType></md:Extensions>"
            f'<md:SPSSODescriptor AuthnRequestsSigned="true" WantAssertionsSigned="true" '
            f'protocolSupportEnumeration="{sim.SAMLP_NS}">'
            f'<md:KeyDescriptor use="signing">{key_info}</md:KeyDescriptor>'
            f'<md:KeyDescriptor use="encryption">{key_info}</md:KeyDescriptor>'
            f'<md:AssertionConsumerService Binding="{sim.BINDING_POST}" Location="{SP_ACS}" '
            'index="0" isDefault="true"/></md:SPSSODescriptor></md:EntityDescriptor>'
        ).encode()

    def request_xml(self, *, loa: str = LOA_SUBSTANTIAL, destination: str = BASE + "/sso",
                    acs: str = SP_ACS, extra: str = "") -> tuple[str, str]:
        request_id = "_" + os.urandom(16).hex()
        attributes = "".join(
            f'<eidas:RequestedAttribute Name="{sim.ATTRIBUTE_PREFIX}{name}" '
            f'NameFormat="{sim.ATTRNAME_URI}" isRequired="{str(required).lower()}"/>'
            for name, (_f, _t, required) in sim.ATTRIBUTES.items()
        )
        xml = (
            f'<samlp:AuthnRequest xmlns:samlp="{sim.SAMLP_NS}" xmlns:saml="{sim.SAML_NS}" '
            f'xmlns:eidas="{sim.EIDAS_NS}" ID="{request_id}" Version="2.0" '
            f'IssueInstant="{clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")}" '
            f'Destination="{destination}" ForceAuthn="true" IsPassive="false" '
            f'AssertionConsumerServiceURL="{acs}" ProtocolBinding="{sim.BINDING_POST}"{extra}>'
            f"<saml:Issuer Format=\"{sim.NAMEID_ENTITY}\">{SP_ENTITY}</saml:Issuer>"
            "<samlp:Extensions><eidas:SPType>public</eidas:SPType>"
            f"<eidas:RequestedAttributes>{attributes}</eidas:RequestedAttributes>"
            "</samlp:Extensions>"
            f'<samlp:NameIDPolicy AllowCreate="true" Format="{sim.NAMEID_PERSISTENT}"/>'
            '<samlp:RequestedAuthnContext Comparison="minimum">'
            f"<saml:AuthnContextClassRef>{loa}</saml:AuthnContextClassRef>"
            "</samlp:RequestedAuthnContext></samlp:AuthnRequest>"
        )
        return xml, request_id

    def sign(self, xml: str, request_id: str) -> str:
        root = etree.fromstring(xml.encode())
        issuer = root.find(f"{{{sim.SAML_NS}}}Issuer")
        assert issuer is not None
        issuer.addnext(sim.signature_template(request_id, _b64_cert(self.cert_path)))
        signed = self.crypto.sign_statement(
            etree.tostring(root, encoding="unicode"),
            "urn:oasis:names:tc:SAML:2.0:protocol:AuthnRequest", str(self.key_path), request_id,
        )
        return sim._strip_declaration(signed)

    def request(self, **kwargs: Any) -> tuple[str, str]:
        """A signed AuthnRequest in base64 (HTTP-POST binding) and its ID."""
        xml, request_id = self.request_xml(**kwargs)
        return sim.encode(self.sign(xml, request_id)), request_id


@pytest.fixture
def connector(tmp_path: Path) -> FakeConnector:
    return FakeConnector(tmp_path / "connector")


@pytest.fixture
def node(tmp_path: Path, connector: FakeConnector) -> sim.SimulatedNode:
    return sim.SimulatedNode(BASE, tmp_path / "node", connector.metadata())


def _verify(doc: str | bytes, cert: Path, node_name: str, node_id: str) -> bool:
    result: bool = CryptoBackendXmlSecInProcess().validate_signature(
        doc, str(cert), "pem", node_name, node_id
    )
    return result


def _decrypted_assertion(response_xml: str, key: Path) -> tuple[str, etree._Element]:
    """The document with the assertion decrypted in place, and the assertion."""
    decrypted = CryptoBackendXmlSecInProcess().decrypt(response_xml, str(key))
    root = sim.parse_xml(sim._strip_declaration(decrypted).encode())
    found = root.find("saml:EncryptedAssertion/saml:Assertion", NS)
    assert found is not None
    return decrypted, found


# --- keys and metadata ----------------------------------------------------------------------


def test_keys_are_made_once_and_private(tmp_path: Path) -> None:
    first = sim.ensure_keys(tmp_path / "keys")
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    for path in (first.key_path, first.cert_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(first.cert_path.read_bytes())
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == sim.RSA_BITS
    before = first.key_path.read_bytes()
    assert sim.ensure_keys(tmp_path / "keys") == first
    assert first.key_path.read_bytes() == before


def test_metadata_is_signed_and_valid(node: sim.SimulatedNode) -> None:
    document = node.metadata()
    root = sim.parse_xml(document)
    validate_schema(document.decode())
    assert root.get("entityID") == BASE + "/metadata"
    assert _verify(document, node.keys.cert_path, ENTITY_DESCRIPTOR, root.get("ID") or "")
    valid_until = sim._parse_instant(root.get("validUntil") or "")
    assert clock.now() < valid_until <= clock.now() + sim.METADATA_VALIDITY
    idp = root.find("md:IDPSSODescriptor", NS)
    assert idp is not None and idp.get("WantAuthnRequestsSigned") == "true"
    sso = idp.findall("md:SingleSignOnService", NS)
    assert [(e.get("Binding"), e.get("Location")) for e in sso] == [
        (sim.BINDING_POST, BASE + "/sso")
    ]
    certs = root.findall("md:IDPSSODescriptor/md:KeyDescriptor[@use='signing']//"
                         "ds:X509Certificate", NS)
    assert [c.text for c in certs] == [node.keys.cert_b64]
    loas = root.xpath(
        "md:Extensions/mdattr:EntityAttributes/saml:Attribute[@Name=$name]/saml:AttributeValue"
        "/text()", namespaces=NS, name=sim.ASSURANCE_CERTIFICATION,
    )
    assert loas == [LOA_LOW, LOA_SUBSTANTIAL, LOA_HIGH]
    supported = {a.get("Name") for a in idp.findall("saml:Attribute", NS)}
    assert sim.ATTRIBUTE_PREFIX + "PersonIdentifier" in supported

    # The signature covers the content: another SSO location no longer verifies.
    tampered = document.replace(b'Location="http://127.0.0.1:8002/sso"',
                                b'Location="http://evil.invalid/sso"')
    assert tampered != document
    with pytest.raises(SignatureError):
        _verify(tampered, node.keys.cert_path, ENTITY_DESCRIPTOR, root.get("ID") or "")


# --- responses ------------------------------------------------------------------------------


def test_response_verifies_with_the_node_cert_and_decrypts_with_the_sp_key(
    node: sim.SimulatedNode, connector: FakeConnector, tmp_path: Path
) -> None:
    saml_request, request_id = connector.request(loa=LOA_SUBSTANTIAL)
    saml_response, acs = node.response_for(saml_request, "de-high")
    assert acs == SP_ACS
    xml = base64.b64decode(saml_response).decode()
    validate_schema(xml)
    root = sim.parse_xml(xml.encode())
    assert root.get("InResponseTo") == request_id and root.get("Destination") == SP_ACS
    assert root.findtext("saml:Issuer", namespaces=NS) == BASE + "/metadata"
    assert root.find("samlp:Status/samlp:StatusCode", NS).get("Value") == sim.STATUS_SUCCESS
    assert root.find("saml:Assertion", NS) is None  # encrypted: no plain assertion
    encrypted = root.find("saml:EncryptedAssertion/xenc:EncryptedData", NS)
    assert encrypted is not None
    assert encrypted.find("xenc:EncryptionMethod", NS).get("Algorithm") == (
        "http://www.w3.org/2009/xmlenc11#aes256-gcm"
    )
    assert _verify(xml, node.keys.cert_path, RESPONSE, root.get("ID") or "")
    # Another key does not verify it: the check above means something.
    _other_key, other_cert = _key_and_cert(tmp_path / "other", "other")
    with pytest.raises(SignatureError):
        _verify(xml, other_cert, RESPONSE, root.get("ID") or "")

    decrypted, assertion = _decrypted_assertion(xml, connector.key_path)
    assert _verify(decrypted, node.keys.cert_path, ASSERTION, assertion.get("ID") or "")
    validate_schema(etree.tostring(assertion, encoding="unicode"))
    person = PERSONS["de-high"]
    assert assertion.findtext("saml:Subject/saml:NameID", namespaces=NS) == (
        person.person_identifier
    )
    confirmation = assertion.find("saml:Subject/saml:SubjectConfirmation", NS)
    assert confirmation is not None and confirmation.get("Method") == sim.CM_BEARER
    data = confirmation.find("saml:SubjectConfirmationData", NS)
    assert data.get("Recipient") == SP_ACS and data.get("InResponseTo") == request_id
    assert assertion.findtext("saml:Conditions/saml:AudienceRestriction/saml:Audience",
                              namespaces=NS) == SP_ENTITY
    assert assertion.findtext("saml:AuthnStatement/saml:AuthnContext/saml:AuthnContextClassRef",
                              namespaces=NS) == LOA_HIGH
    values = {
        a.get("Name", "")[len(sim.ATTRIBUTE_PREFIX):]: a.find("saml:AttributeValue", NS)
        for a in assertion.findall("saml:AttributeStatement/saml:Attribute", NS)
    }
    assert values["PersonIdentifier"].text == "DE/NL/" + person.identifier
    assert person.person_identifier.startswith("DE/NL/")
    assert values["CurrentFamilyName"].text == "Schröder"
    assert values["CurrentGivenName"].text == "Anna-Lena"
    assert values["DateOfBirth"].text == "1990-11-23"
    assert values["BirthName"].text == "Köhler"
    assert values["DateOfBirth"].get(f"{{{sim.XSI_NS}}}type") == "eidas-natural:DateOfBirthType"
    address = base64.b64decode(values["CurrentAddress"].text or "").decode()
    assert "Königsallee" in address and "Düsseldorf" in address


def test_response_options_make_the_answers_tests_need(
    node: sim.SimulatedNode, connector: FakeConnector
) -> None:
    saml_request, _ = connector.request(loa=LOA_LOW)

    response, _ = node.response_for(saml_request, "es-substantial", loa=LOA_LOW)
    _, assertion = _decrypted_assertion(base64.b64decode(response).decode(),
                                        connector.key_path)
    assert assertion.findtext(".//saml:AuthnContextClassRef", namespaces=NS) == LOA_LOW

    response, _ = node.response_for(saml_request, "es-low", status="RequestDenied")
    root = sim.parse_xml(base64.b64decode(response))
    top = root.find("samlp:Status/samlp:StatusCode", NS)
    assert top.get("Value") == sim.STATUS_RESPONDER
    assert top.find("samlp:StatusCode", NS).get("Value") == sim.STATUS_REQUEST_DENIED
    assert root.find("saml:Assertion", NS) is None
    assert root.find("saml:EncryptedAssertion", NS) is None
    assert _verify(base64.b64decode(response), node.keys.cert_path, RESPONSE,
                   root.get("ID") or "")

    response, _ = node.response_for(saml_request, "es-low", encrypt=False)
    root = sim.parse_xml(base64.b64decode(response))
    assertion = root.find("saml:Assertion", NS)
    assert assertion is not None and root.find("saml:EncryptedAssertion", NS) is None
    assert _verify(base64.b64decode(response), node.keys.cert_path, ASSERTION,
                   assertion.get("ID") or "")

    response, _ = node.response_for(saml_request, "es-low", encrypt=False,
                                    sign_assertion=False, sign_response=False)
    root = sim.parse_xml(base64.b64decode(response))
    assert root.find(".//ds:Signature", NS) is None

    with pytest.raises(KeyError):
        node.response_for(saml_request, "xx-nobody")


def test_release_sends_optional_attributes_only_when_requested(
    node: sim.SimulatedNode, connector: FakeConnector
) -> None:
    xml, request_id = connector.request_xml()
    # The same request asking only for the mandatory attributes.
    for name in ("BirthName", "PlaceOfBirth", "CurrentAddress", "Gender"):
        xml = xml.replace(f'<eidas:RequestedAttribute Name="{sim.ATTRIBUTE_PREFIX}{name}" '
                          f'NameFormat="{sim.ATTRNAME_URI}" isRequired="false"/>', "")
    info = node.parse_request(sim.encode(connector.sign(xml, request_id)))
    released = dict(sim.release(PERSONS["de-low"], info))
    assert set(released) == {"PersonIdentifier", "CurrentFamilyName", "CurrentGivenName",
                             "DateOfBirth"}


# --- requests -------------------------------------------------------------------------------


def test_a_tampered_request_signature_is_refused(
    node: sim.SimulatedNode, connector: FakeConnector, tmp_path: Path
) -> None:
    xml, request_id = connector.request_xml(loa=LOA_HIGH)
    signed = connector.sign(xml, request_id)
    assert node.parse_request(sim.encode(signed)).loa == LOA_HIGH

    # Lowering the level after signing breaks the signature.
    lowered = signed.replace(LOA_HIGH, LOA_LOW)
    assert lowered != signed
    with pytest.raises(sim.SignatureInvalid):
        node.parse_request(sim.encode(lowered))

    # A signature by another key, whose certificate the request carries, is not the SP's.
    forger = FakeConnector(tmp_path / "forger", "forger")
    with pytest.raises(sim.SignatureInvalid):
        node.parse_request(forger.request()[0])

    # No signature at all.
    with pytest.raises(sim.SignatureInvalid):
        node.parse_request(sim.encode(xml))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"destination": "http://127.0.0.1:9999/sso"}, "Destination"),
        ({"acs": "http://evil.invalid/acs"}, "AssertionConsumerServiceURL"),
        ({"loa": "urn:oasis:names:tc:SAML:2.0:ac:classes:Password"}, "eIDAS LoA"),
    ],
)
def test_requests_that_break_the_rules_are_refused(
    node: sim.SimulatedNode, connector: FakeConnector, change: dict[str, str], reason: str
) -> None:
    saml_request, _ = connector.request(**change)
    with pytest.raises(sim.RequestError, match=reason):
        node.parse_request(saml_request)


def test_hostile_request_documents_are_refused(node: sim.SimulatedNode) -> None:
    doctype = ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
               f'<samlp:AuthnRequest xmlns:samlp="{sim.SAMLP_NS}">&x;</samlp:AuthnRequest>')
    for bad in (sim.encode(doctype), "not base64 !", sim.encode("<unclosed"),
                "A" * (sim.MAX_REQUEST_BYTES + 4)):
        with pytest.raises(sim.RequestError):
            node.parse_request(bad)


# --- the web app ----------------------------------------------------------------------------


@pytest.fixture
def sim_settings(tmp_path: Path) -> Settings:
    return Settings.from_env({
        "GATEWAY_INSTANCE_DIR": str(tmp_path / "instance"),
        "GATEWAY_SECRET_KEY": "test-secret-" + "x" * 40,
    })


@pytest.fixture
def sim_app(sim_settings: Settings, connector: FakeConnector, tmp_path: Path) -> Flask:
    metadata_file = tmp_path / "sp-metadata.xml"
    metadata_file.write_bytes(connector.metadata())
    app = create_sim_app(sim_settings, base_url=BASE, key_dir=tmp_path / "sim-keys",
                         sp_metadata=str(metadata_file))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def sim_client(sim_app: Flask) -> FlaskClient:
    return sim_app.test_client()


def _start(client: FlaskClient, connector: FakeConnector, country: str, loa: str,
           lang: str = "en") -> tuple[str, str]:
    """POST the AuthnRequest; returns the person page's URL and its HTML."""
    saml_request, _ = connector.request(loa=loa)
    posted = client.post("/sso", data={"SAMLRequest": saml_request, "RelayState": "rs-1",
                                       "country": country})
    assert posted.status_code == 303, posted.get_data(as_text=True)
    location = posted.headers["Location"]
    page = client.get(location + f"&lang={lang}")
    assert page.status_code == 200
    return location, page.get_data(as_text=True)


def _form_fields(html: str) -> dict[str, str]:
    root = etree.HTML(html)
    return {i.get("name"): i.get("value") or "" for i in root.iter("input")
            if i.get("type") == "hidden"}


@pytest.mark.parametrize(
    ("lang", "heading"),
    [("en", "Log in with an eID from Germany"), ("nl", "Inloggen met een eID uit Duitsland")],
)
def test_page_lists_only_the_countrys_persons_at_or_above_the_level(
    sim_client: FlaskClient, connector: FakeConnector, lang: str, heading: str
) -> None:
    _, html = _start(sim_client, connector, "DE", LOA_SUBSTANTIAL, lang)
    assert f'<html lang="{lang}">' in html
    assert heading in html
    assert "Jürgen Weiß" in html and "Anna-Lena Schröder" in html
    assert "Erika Mustermann" not in html  # DE at low: below what was asked
    for person in PERSONS.values():
        if person.country != "DE":
            assert person.display_name not in html
    offered = {i.get("value") for i in etree.HTML(html).iter("input")
               if i.get("name") == "person"}
    assert offered == {p.id for p in persons_for("DE", LOA_SUBSTANTIAL)} == {
        "de-substantial", "de-high"
    }
    # Every radio button has a label (WCAG 1.3.1, 4.1.2).
    root = etree.HTML(html)
    labels = {label.get("for") for label in root.iter("label")}
    assert {f"person-{p}" for p in offered} <= labels


def test_page_for_an_unknown_country_offers_only_cancel(
    sim_client: FlaskClient, connector: FakeConnector
) -> None:
    _, html = _start(sim_client, connector, "XX", LOA_LOW, "nl")
    assert "De simulator heeft geen testpersonen voor het land XX" in html
    assert 'name="person"' not in html
    assert 'value="cancel"' in html


def test_choosing_a_person_posts_a_valid_response_to_the_acs_once(
    sim_app: Flask, sim_client: FlaskClient, connector: FakeConnector
) -> None:
    location, html = _start(sim_client, connector, "IT", LOA_SUBSTANTIAL)
    fields = _form_fields(html)
    answered = sim_client.post("/sso/answer", data={**fields, "person": "it-substantial",
                                                     "action": "login", "mode": "normal"})
    assert answered.status_code == 200
    page = answered.get_data(as_text=True)
    form = etree.HTML(page).find(".//form")
    assert form is not None and form.get("action") == SP_ACS
    assert "form-action 'self' http://127.0.0.1:8000" in answered.headers[
        "Content-Security-Policy"
    ]
    assert "<script" not in page.split("</head>")[1]  # no inline script in the body
    posted = _form_fields(page)
    assert posted["RelayState"] == "rs-1"
    xml = base64.b64decode(posted["SAMLResponse"]).decode()
    node = sim_app.extensions["gateway_eidas_sim"].node
    assert _verify(xml, node.keys.cert_path, RESPONSE, sim.parse_xml(xml.encode()).get("ID"))
    _, assertion = _decrypted_assertion(xml, connector.key_path)
    assert assertion.findtext(".//saml:NameID", namespaces=NS) == (
        PERSONS["it-substantial"].person_identifier
    )

    again = sim_client.post("/sso/answer", data={**fields, "person": "it-substantial",
                                                  "action": "login"})
    assert again.status_code == 404  # one answer per request
    assert sim_client.get(location).status_code == 404


@pytest.mark.parametrize(
    ("action", "second_level"),
    [("cancel", sim.STATUS_REQUEST_DENIED), ("fail", sim.STATUS_AUTHN_FAILED)],
)
def test_cancel_and_fail_answer_with_an_error_status(
    sim_client: FlaskClient, connector: FakeConnector, action: str, second_level: str
) -> None:
    _, html = _start(sim_client, connector, "ES", LOA_HIGH)
    answered = sim_client.post("/sso/answer", data={**_form_fields(html), "action": action})
    assert answered.status_code == 200
    root = sim.parse_xml(base64.b64decode(_form_fields(answered.get_data(as_text=True))[
        "SAMLResponse"]))
    top = root.find("samlp:Status/samlp:StatusCode", NS)
    assert top.get("Value") == sim.STATUS_RESPONDER
    assert top.find("samlp:StatusCode", NS).get("Value") == second_level


def test_a_person_below_the_level_or_from_elsewhere_cannot_be_forced(
    sim_client: FlaskClient, connector: FakeConnector
) -> None:
    for person in ("de-low", "es-high"):
        _, html = _start(sim_client, connector, "DE", LOA_SUBSTANTIAL)
        answered = sim_client.post("/sso/answer", data={**_form_fields(html),
                                                         "person": person, "action": "login"})
        assert answered.status_code == 400


def test_answer_needs_the_pages_csrf_token(
    sim_client: FlaskClient, connector: FakeConnector
) -> None:
    _, html = _start(sim_client, connector, "DE", LOA_LOW)
    fields = {**_form_fields(html), "csrf_token": "forged"}
    answered = sim_client.post("/sso/answer", data={**fields, "action": "cancel"})
    assert answered.status_code == 400


def test_the_test_mode_lower_loa_claims_less_than_asked(
    sim_client: FlaskClient, connector: FakeConnector
) -> None:
    _, html = _start(sim_client, connector, "PL", LOA_HIGH)
    answered = sim_client.post("/sso/answer", data={
        **_form_fields(html), "person": "pl-high", "action": "login", "mode": "lower_loa",
    })
    xml = base64.b64decode(_form_fields(answered.get_data(as_text=True))["SAMLResponse"])
    _, assertion = _decrypted_assertion(xml.decode(), connector.key_path)
    assert assertion.findtext(".//saml:AuthnContextClassRef", namespaces=NS) == (
        LOA_SUBSTANTIAL
    )


def test_a_tampered_request_gets_a_refusal_page_in_both_languages(
    sim_client: FlaskClient, connector: FakeConnector
) -> None:
    xml, request_id = connector.request_xml(loa=LOA_HIGH)
    tampered = connector.sign(xml, request_id).replace(LOA_HIGH, LOA_LOW)
    for lang, text in (("en", "did not pass the checks"), ("nl", "niet door de controles")):
        answer = sim_client.post(f"/sso?lang={lang}", data={
            "SAMLRequest": sim.encode(tampered), "country": "DE",
        })
        assert answer.status_code == 400
        assert text in answer.get_data(as_text=True)


def test_sp_metadata_is_read_again_when_the_connector_key_changed(
    sim_client: FlaskClient, connector: FakeConnector, tmp_path: Path
) -> None:
    _start(sim_client, connector, "AT", LOA_LOW)  # reads the metadata file
    rotated = FakeConnector(tmp_path / "rotated", "rotated")
    (tmp_path / "sp-metadata.xml").write_bytes(rotated.metadata())
    saml_request, _ = rotated.request(loa=LOA_LOW)
    posted = sim_client.post("/sso", data={"SAMLRequest": saml_request, "country": "AT"})
    assert posted.status_code == 303
    # ...and the old key is no longer trusted.
    old_request, _ = connector.request(loa=LOA_LOW)
    posted = sim_client.post("/sso", data={"SAMLRequest": old_request, "country": "AT"})
    assert posted.status_code == 400


def test_home_lists_every_country(sim_client: FlaskClient) -> None:
    html = sim_client.get("/?lang=en").get_data(as_text=True)
    for country in COUNTRIES:
        assert f"({country})" in html
    assert "Łukasz Wiśniewski" in html
    assert len({p.country for p in PERSONS.values()}) >= 6
    for country in ("DE", "ES", "IT"):
        assert {p.loa for p in PERSONS.values() if p.country == country} == {
            LOA_LOW, LOA_SUBSTANTIAL, LOA_HIGH
        }


# --- the command, over real HTTP ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = _free_port()
    key_dir = tmp_path / "cli-keys"
    env = {**os.environ, "GATEWAY_INSTANCE_DIR": str(tmp_path / "cli-instance"),
           "GATEWAY_SECRET_KEY": "test-secret-" + "x" * 40}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.eidas_sim.cli", "--port", str(port),
         "--key-dir", str(key_dir), "--sp-metadata", str(tmp_path / "none.xml")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        yield f"http://127.0.0.1:{port}", key_dir
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - stuck
            process.kill()
            process.wait()


def test_the_command_serves_signed_metadata_over_http(sim_process: tuple[str, Path]) -> None:
    base, key_dir = sim_process
    deadline = time.monotonic() + 60
    while True:
        try:
            answer = requests.get(base + "/metadata", timeout=5)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/samlmetadata+xml")
    root = sim.parse_xml(answer.content)
    assert root.get("entityID") == base + "/metadata"
    cert = key_dir / sim.CERT_FILE
    assert stat.S_IMODE((key_dir / sim.KEY_FILE).stat().st_mode) == 0o600
    assert _verify(answer.content, cert, ENTITY_DESCRIPTOR, root.get("ID") or "")


# --- beside `gateway demo` ------------------------------------------------------------------


def _policies_with_eidas(tmp_path: Path, enabled: bool) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(Path(__file__).resolve().parent.parent / "policies", folder)
    routes = folder / "routes.yaml"
    text = routes.read_text()
    start = text.index("\n  eidas:")
    # The first `enabled:` after the eidas key is the eidas block's own.
    tail = re.sub(r"enabled: (true|false)", f"enabled: {str(enabled).lower()}",
                  text[start:], count=1)
    routes.write_text(text[:start] + tail)
    return folder


def test_demo_runs_the_simulator_only_when_the_eidas_route_is_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.cli import Failure
    from gateway.eidas_sim import cli

    def settings_for(enabled: bool) -> Settings:
        return Settings.from_env({
            "GATEWAY_INSTANCE_DIR": str(tmp_path / "instance"),
            "GATEWAY_SECRET_KEY": "test-secret-" + "x" * 40,
            "GATEWAY_POLICIES": str(_policies_with_eidas(tmp_path / str(enabled), enabled)),
        })

    off = settings_for(False)
    assert cli.demo_sim_lines(off, "127.0.0.1", taken=(8000, 8001)) == []
    assert cli.start_demo_sim(off, "127.0.0.1") is None

    on = settings_for(True)
    lines = cli.demo_sim_lines(on, "127.0.0.1", taken=(8000, 8001))
    assert lines[0].startswith("eIDAS node (sim):   http://127.0.0.1:8002/")
    assert "test persons" in lines[0]
    with pytest.raises(Failure):
        cli.demo_sim_lines(on, "127.0.0.1", taken=(8002, 8001))

    port = _free_port()
    monkeypatch.setattr(cli, "DEFAULT_PORT", port)
    process = cli.start_demo_sim(on, "127.0.0.1")
    assert process is not None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/metadata", timeout=5)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert answer.status_code == 200
        assert sim.parse_xml(answer.content).get("entityID") == (
            f"http://127.0.0.1:{port}/metadata"
        )
    finally:
        process.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/metadata", timeout=5)


# --- options --------------------------------------------------------------------------------


def test_delay_holds_every_answer_back(
    sim_settings: Settings, connector: FakeConnector, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.eidas_sim import app as sim_app_module

    slept: list[float] = []
    monkeypatch.setattr(sim_app_module, "_sleep", slept.append)
    app = create_sim_app(sim_settings, base_url=BASE, key_dir=tmp_path / "slow-keys",
                         sp_metadata=connector.metadata(), delay=2.5)
    client = app.test_client()
    assert client.get("/metadata").status_code == 200
    assert slept == [2.5]
    client.get("/static/sim.css")
    assert slept == [2.5]  # static files are not held back
    with pytest.raises(ValueError, match="delay"):
        create_sim_app(sim_settings, base_url=BASE, key_dir=tmp_path / "slow-keys", delay=-1)


def test_sp_metadata_is_fetched_over_http(connector: FakeConnector) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from gateway.eidas_sim.app import SpMetadataSource

    body = connector.metadata()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/eidas/metadata":
                self.send_response(200)
                self.send_header("Content-Type", "application/samlmetadata+xml")
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert SpMetadataSource(base + "/eidas/metadata").load() == body
        with pytest.raises(sim.MetadataError):
            SpMetadataSource(base + "/missing").load()
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(sim.MetadataError):
        SpMetadataSource("/nonexistent/metadata.xml").load()


def test_expired_or_unusable_sp_metadata_is_refused(connector: FakeConnector) -> None:
    good = connector.metadata()
    expired = good.replace(b"<md:EntityDescriptor ",
                           b'<md:EntityDescriptor validUntil="2000-01-01T00:00:00Z" ', 1)
    assert expired != good
    with pytest.raises(sim.MetadataError, match="expired"):
        sim.SpMetadata.parse(expired)
    no_acs = good.replace(sim.BINDING_POST.encode(), sim.BINDING_REDIRECT.encode())
    with pytest.raises(sim.MetadataError, match="AssertionConsumerService"):
        sim.SpMetadata.parse(no_acs)
    with pytest.raises(sim.MetadataError):
        sim.SpMetadata.parse(b"<!DOCTYPE x []><x/>")
    parsed = sim.SpMetadata.parse(good)
    assert (parsed.entity_id, parsed.acs_urls, parsed.sp_type) == (SP_ENTITY, (SP_ACS,), "public")
