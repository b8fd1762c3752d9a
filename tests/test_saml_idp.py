"""The SAML IdP (issue 7) against python3-saml, an SP library not built on pysaml2.

The login flow is replaced by an adapter (views.start_login / finish_login), so these tests
drive the protocol: metadata, SSO over Redirect and POST, responses over POST and Artifact,
bad input, and single logout.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from flask import Flask, redirect
from flask.testing import FlaskClient
from lxml import etree
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from gateway import clock
from gateway.db import get_db
from gateway.flows.types import AuthnError, AuthnResult, ErrorCode, RpRequest
from gateway.idp.saml import assertions, registry, views
from gateway.idp.saml.crypto import XENC_NS
from gateway.keys import PUBLISH_BEFORE_SIGN, get_keys
from gateway.levels import Level
from tests.conftest import TEST_REDIS

SP_HOST = "sp.example.org"
SP_ID = f"https://{SP_HOST}/saml/metadata"
ACS = f"https://{SP_HOST}/acs"
SLS = f"https://{SP_HOST}/sls"
IDP_META = "http://127.0.0.1:8000/saml/idp/metadata"
SSO_URL = "http://127.0.0.1:8000/saml/idp/sso"
BASIS = Level.BASIS.context_class
MIDDEN = Level.MIDDEN.context_class
BSN = "999990019"


def _key_pair(name: str) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem_key, cert.public_bytes(serialization.Encoding.PEM).decode()


SP_KEY, SP_CERT = _key_pair("sp")
OTHER_KEY, OTHER_CERT = _key_pair("attacker")


def sp_settings(
    idp_metadata: str, *, binding: str = C.BINDING_HTTP_POST, contexts: list[str] | None = None,
    comparison: str = "minimum", signed: bool = True, encrypted: bool = False,
) -> OneLogin_Saml2_Settings:
    idp_data = OneLogin_Saml2_IdPMetadataParser.parse(
        idp_metadata, required_sso_binding=C.BINDING_HTTP_REDIRECT,
        required_slo_binding=C.BINDING_HTTP_REDIRECT,
    )
    data = {
        "strict": True,
        "sp": {
            "entityId": SP_ID,
            "assertionConsumerService": {"url": ACS, "binding": binding},
            "singleLogoutService": {"url": SLS, "binding": C.BINDING_HTTP_REDIRECT},
            "NameIDFormat": C.NAMEID_PERSISTENT,
            "x509cert": SP_CERT,
            "privateKey": SP_KEY,
        },
        "idp": idp_data["idp"],
        "security": {
            "authnRequestsSigned": signed,
            "logoutRequestSigned": True,
            "logoutResponseSigned": True,
            "wantAssertionsSigned": True,
            "wantMessagesSigned": True,
            "wantAssertionsEncrypted": encrypted,
            "wantNameId": True,
            "wantAttributeStatement": False,
            "requestedAuthnContext": contexts or [BASIS],
            "requestedAuthnContextComparison": comparison,
            "signatureAlgorithm": C.RSA_SHA256,
            "digestAlgorithm": C.SHA256,
            "rejectDeprecatedAlgorithm": True,
        },
    }
    return OneLogin_Saml2_Settings(data, sp_validation_only=False)


def sp_metadata(settings: OneLogin_Saml2_Settings) -> bytes:
    meta = settings.get_sp_metadata()
    return meta if isinstance(meta, bytes) else meta.encode()


def request_data(path: str, *, get: dict[str, str] | None = None,
                 post: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "https": "on", "http_host": SP_HOST, "script_name": path, "server_port": "443",
        "get_data": get or {}, "post_data": post or {},
    }


class FakeLogin:
    """The login flow's adapter: remembers the RpRequest, answers with `outcome`."""

    def __init__(self) -> None:
        self.requests: list[RpRequest] = []
        self.level: Level | None = None
        self.error: ErrorCode | None = None
        self.sso = True

    def start(self, rp_request: RpRequest) -> Any:
        self.requests.append(rp_request)
        return redirect(rp_request.resume_url + "?flow=fake-flow", code=303)

    def finish(self, flow_id: str) -> tuple[RpRequest, AuthnResult | AuthnError] | None:
        if flow_id != "fake-flow" or not self.requests:
            return None
        rp_request = self.requests.pop()
        if self.error is not None:
            return rp_request, AuthnError(self.error, rp_request)
        return rp_request, AuthnResult(
            subject_key="account:test-1", account_id=None, route="desk_account",
            level=self.level or rp_request.levels[0], amr=("pwd",),
            auth_time=clock.now(), sso_session_id="sso-1",
        )


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLogin:
    login = FakeLogin()
    monkeypatch.setattr(views, "start_login", login.start)
    monkeypatch.setattr(views, "finish_login", login.finish)
    monkeypatch.setattr(views, "has_sso_session", lambda: login.sso)
    monkeypatch.setattr(views, "reachable_levels", lambda: frozenset({Level.BASIS, Level.MIDDEN}))
    return login


@pytest.fixture
def idp_metadata(client: FlaskClient) -> str:
    response = client.get("/saml/idp/metadata")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def register(app: Flask, metadata: bytes, **kwargs: Any) -> None:
    with app.app_context(), get_db(app).begin() as db:
        registry.register(db, metadata, **kwargs)


@pytest.fixture
def sp(app: Flask, idp_metadata: str) -> OneLogin_Saml2_Settings:
    settings = sp_settings(idp_metadata)
    register(app, sp_metadata(settings))
    return settings


def start_sso(client: FlaskClient, settings: OneLogin_Saml2_Settings,
              relay_state: str = "rs-1") -> tuple[str, Any]:
    """The SP's AuthnRequest over HTTP-Redirect, sent to the IdP; returns its ID and the
    IdP's answer after the (fake) login."""
    auth = OneLogin_Saml2_Auth(request_data("/login"), settings)
    url = auth.login(return_to=relay_state)
    parts = urlsplit(url)
    assert parts.path == "/saml/idp/sso"
    first = client.get(parts.path + "?" + parts.query)
    assert first.status_code == 303, first.get_data(as_text=True)[:500]
    return auth.get_last_request_id(), client.get(first.headers["Location"])


def form_fields(page: str) -> tuple[str, dict[str, str]]:
    root = etree.HTML(page)
    form = root.find(".//form")
    assert form is not None, page[:300]
    return form.get("action"), {i.get("name"): i.get("value") for i in form.iter("input")}


def consume(settings: OneLogin_Saml2_Settings, fields: dict[str, str],
            request_id: str) -> OneLogin_Saml2_Auth:
    auth = OneLogin_Saml2_Auth(request_data("/acs", post=fields), settings)
    auth.process_response(request_id=request_id)
    return auth


# --- metadata -----------------------------------------------------------------------------


def test_metadata_is_signed_with_endpoints_and_validity(app: Flask, idp_metadata: str) -> None:
    with app.app_context():
        cert = get_keys(app).active("RS256").certificate_pem()
    assert cert is not None
    assert OneLogin_Saml2_Utils.validate_metadata_sign(idp_metadata, cert.decode(),
                                                        validatecert=False)
    assert not OneLogin_Saml2_Utils.validate_metadata_sign(idp_metadata, OTHER_CERT)
    root = etree.fromstring(idp_metadata.encode())
    valid_until = datetime.strptime(root.get("validUntil"), "%Y-%m-%dT%H:%M:%SZ")
    days = (valid_until.replace(tzinfo=UTC) - clock.now()).total_seconds() / 86400
    assert 6.9 < days <= 7.0
    # SPs are asked to refetch well within the 2 days a new key is listed before it signs.
    assert root.get("cacheDuration") == "PT43200S"
    assert timedelta(seconds=43200) * 2 <= PUBLISH_BEFORE_SIGN
    ns = {"md": registry.MD_NS}
    bindings = {
        (e.tag.split("}")[1], e.get("Binding"))
        for e in root.iterfind(".//md:IDPSSODescriptor/*", ns) if e.get("Binding")
    }
    assert bindings == {
        ("SingleSignOnService", registry.BINDING_REDIRECT),
        ("SingleSignOnService", registry.BINDING_POST),
        ("SingleLogoutService", registry.BINDING_REDIRECT),
        ("SingleLogoutService", registry.BINDING_SOAP),
        ("ArtifactResolutionService", registry.BINDING_SOAP),
    }
    uses = [kd.get("use") for kd in root.iterfind(".//md:KeyDescriptor", ns)]
    assert uses == ["signing", "encryption"]


def test_metadata_lists_the_retiring_certificate_after_rotation(
    app: Flask, client: FlaskClient
) -> None:
    with app.app_context(), clock.frozen():
        keys = get_keys(app)
        old = keys.active("RS256").kid
        keys.rotate(clock.now())
        clock.advance(PUBLISH_BEFORE_SIGN)  # the new key signs from then on
        assert keys.active("RS256").kid != old
        new_cert = keys.active("RS256").certificate_pem()
        assert new_cert is not None
        metadata = client.get("/saml/idp/metadata").get_data(as_text=True)
    root = etree.fromstring(metadata.encode())
    certs = root.findall(f".//{{{registry.MD_NS}}}KeyDescriptor")
    assert len(certs) == 4  # active and retiring, each for signing and encryption
    # Signed with the new key: the server was rebuilt after the rotation.
    assert OneLogin_Saml2_Utils.validate_metadata_sign(metadata, new_cert.decode())


def test_metadata_lists_the_next_certificate_before_it_signs(
    app: Flask, client: FlaskClient
) -> None:
    def certificates(metadata: str) -> list[str]:
        root = etree.fromstring(metadata.encode())
        return [c.text or "" for c in root.iterfind(f".//{{{registry.MD_NS}}}KeyDescriptor"
                                                    f"//{{{C.NS_DS}}}X509Certificate")]

    def pem_body(pem: bytes | None) -> str:
        assert pem is not None
        return "".join(pem.decode().splitlines()[1:-1])

    with app.app_context(), clock.frozen():
        keys = get_keys(app)
        old_cert = keys.active("RS256").certificate_pem()
        assert old_cert is not None
        result = keys.rotate(clock.now())
        (new,) = [i for i in result.created if i.alg == "RS256"]
        assert new.activate_at == clock.now() + PUBLISH_BEFORE_SIGN
        new_cert = (keys.folder / f"{new.kid}.crt.pem").read_bytes()

        # Published at once, after the active certificate; the old key still signs.
        clock.advance(PUBLISH_BEFORE_SIGN - timedelta(seconds=1))
        metadata = client.get("/saml/idp/metadata").get_data(as_text=True)
        assert certificates(metadata) == [pem_body(old_cert)] * 2 + [pem_body(new_cert)] * 2
        assert OneLogin_Saml2_Utils.validate_metadata_sign(metadata, old_cert.decode())
        assert not OneLogin_Saml2_Utils.validate_metadata_sign(metadata, new_cert.decode())

        # At activate_at exactly, the new key signs; the old one is listed until it retires.
        clock.advance(timedelta(seconds=1))
        metadata = client.get("/saml/idp/metadata").get_data(as_text=True)
        assert certificates(metadata) == [pem_body(new_cert)] * 2 + [pem_body(old_cert)] * 2
        assert OneLogin_Saml2_Utils.validate_metadata_sign(metadata, new_cert.decode())
        assert not OneLogin_Saml2_Utils.validate_metadata_sign(metadata, old_cert.decode())


# --- registry and CLI ---------------------------------------------------------------------


def test_registry_rejects_bad_metadata(idp_metadata: str) -> None:
    good = sp_metadata(sp_settings(idp_metadata))
    assert registry.parse_metadata(good).entity_id == SP_ID
    bad = [
        b"<not-xml",
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + good.split(b"?>", 1)[-1],
        good.replace(ACS.encode(), b"http://sp.example.org/acs"),  # plain http
        # AuthnRequestsSigned="true" but no signing key left
        good.replace(b"<md:KeyDescriptor", b"<md:Nothing")
        .replace(b"</md:KeyDescriptor", b"</md:Nothing"),
        b"<x/>" * 70000,
    ]
    for data in bad:
        with pytest.raises(registry.MetadataError):
            registry.parse_metadata(data)


def test_cli_add_saml_prints_entity_id(
    app: Flask, settings: Any, idp_metadata: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from gateway.cli import main

    for name, value in settings.environ.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "sp.xml"
    path.write_bytes(sp_metadata(sp_settings(idp_metadata)))
    result = CliRunner().invoke(main, ["rp", "add-saml", "--metadata", str(path), "--bsn"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == SP_ID
    with app.app_context(), get_db(app).begin() as db:
        row = registry.get_sp(db, SP_ID)
        assert row is not None and row.bsn
    path.write_bytes(b"<broken")
    result = CliRunner().invoke(main, ["rp", "add-saml", "--metadata", str(path)])
    assert result.exit_code == 1
    assert "--metadata" in result.output and "Traceback" not in result.output


# --- SSO over HTTP-POST and HTTP-Artifact, at basis and midden ---------------------------


@pytest.mark.parametrize(
    ("level", "encrypted"),
    [(Level.BASIS, False), (Level.MIDDEN, False), (Level.BASIS, True), (Level.MIDDEN, True)],
)
def test_sso_post_with_python3_saml(
    app: Flask, client: FlaskClient, idp_metadata: str, fake: FakeLogin, level: Level,
    encrypted: bool,
) -> None:
    settings = sp_settings(idp_metadata, contexts=[level.context_class], encrypted=encrypted)
    register(app, sp_metadata(settings), attributes=())
    request_id, page = start_sso(client, settings)
    assert fake.requests == [] and page.status_code == 200
    assert f"form-action 'self' https://{SP_HOST}" in page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    action, fields = form_fields(page.get_data(as_text=True))
    assert action == ACS and fields["RelayState"] == "rs-1"
    assert (b"EncryptedAssertion" in base64.b64decode(fields["SAMLResponse"])) is encrypted
    auth = consume(settings, fields, request_id)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.is_authenticated()
    assert auth.get_nameid_format() == C.NAMEID_PERSISTENT
    assert auth.get_nameid() == assertions.pairwise_name_id(
        app.config["GATEWAY_SETTINGS"], SP_ID, "account:test-1")
    root = etree.fromstring(auth.get_last_response_xml().encode())
    ref = root.find(f".//{{{views.SAML_NS}}}AuthnContextClassRef")
    assert ref is not None and ref.text == level.context_class


def _decrypted_assertion(response_xml: bytes) -> tuple[etree._Element, etree._Element]:
    """The Response with its EncryptedAssertion decrypted by python3-saml with the SP's key,
    and the decrypted assertion parsed on its own."""
    doc = etree.fromstring(response_xml)
    encrypted = doc.find(f".//{{{XENC_NS}}}EncryptedData")
    assert encrypted is not None
    alone = OneLogin_Saml2_Utils.decrypt_element(encrypted, SP_KEY, inplace=False)
    return doc, etree.fromstring(etree.tostring(alone))


@pytest.mark.parametrize("fresh_prefixes", [False, True])
def test_encrypted_assertion_survives_being_put_back_into_the_response(
    app: Flask, client: FlaskClient, idp_metadata: str, fake: FakeLogin,
    monkeypatch: pytest.MonkeyPatch, fresh_prefixes: bool,
) -> None:
    """The regression behind issue 7's encrypted-assertion bug: the assertion's signature must
    hold both on its own and after an SP moves the decrypted node into the Response (lxml then
    re-maps prefixes by namespace URI). `fresh_prefixes` is a process whose ElementTree has no
    SAML prefixes registered yet, where pysaml2 would write `ns0:`."""
    from xml.etree import ElementTree

    if fresh_prefixes:
        bare = {uri: prefix for uri, prefix in ElementTree._namespace_map.items()  # type: ignore[attr-defined]
                if prefix in ("xml", "html", "rdf", "wsdl", "xs", "xsi", "dc")}
        monkeypatch.setattr(ElementTree, "_namespace_map", bare)
    settings = sp_settings(idp_metadata, encrypted=True)
    register(app, sp_metadata(settings), attributes=("surname", "birth_date"))
    _, page = start_sso(client, settings)
    _, fields = form_fields(page.get_data(as_text=True))
    xml = base64.b64decode(fields["SAMLResponse"])
    doc, alone = _decrypted_assertion(xml)
    with app.app_context():
        cert = get_keys(app).active("RS256").certificate_pem()
    assert cert is not None
    xpath = "/saml:Assertion/ds:Signature"
    assert OneLogin_Saml2_Utils.validate_sign(etree.tostring(alone), cert.decode(),
                                              xpath=xpath, raise_exceptions=False)
    # Every prefix the assertion uses means the same namespace on the Response around it.
    outer = doc.nsmap
    for element in alone.iter():
        if element.prefix is not None and element.prefix in outer:
            assert outer[element.prefix] == element.nsmap[element.prefix], element.prefix
    container = doc.find(f"{{{views.SAML_NS}}}EncryptedAssertion")
    assert container is not None
    doc.replace(container, alone)
    assert OneLogin_Saml2_Utils.validate_sign(etree.tostring(doc), cert.decode(),
                                              xpath=OneLogin_Saml2_Utils.ASSERTION_SIGNATURE_XPATH,
                                              raise_exceptions=False)
    # And a tampered assertion does not verify: the check above can fail.
    ref = doc.find(f".//{{{views.SAML_NS}}}AuthnContextClassRef")
    assert ref is not None
    ref.text = Level.HOOG.context_class
    assert not OneLogin_Saml2_Utils.validate_sign(
        etree.tostring(doc), cert.decode(), xpath=OneLogin_Saml2_Utils.ASSERTION_SIGNATURE_XPATH,
        raise_exceptions=False)


def test_encrypted_assertion_with_the_xmlsec1_backend(
    make_app: Callable[..., Flask], settings: Any, fake: FakeLogin
) -> None:
    """The stock backend stays selectable, and encrypts with AES-256-GCM, not 3DES."""
    app = make_app(environ={**settings.environ, "GATEWAY_SAML_CRYPTO": "xmlsec1"})
    client = app.test_client()
    idp_meta = client.get("/saml/idp/metadata").get_data(as_text=True)
    sp = sp_settings(idp_meta, encrypted=True)
    register(app, sp_metadata(sp), attributes=())
    request_id, page = start_sso(client, sp)
    _, fields = form_fields(page.get_data(as_text=True))
    xml = base64.b64decode(fields["SAMLResponse"])
    assert b"aes256-gcm" in xml and b"tripledes" not in xml
    auth = consume(sp, fields, request_id)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.is_authenticated()


def test_sso_artifact_with_python3_saml(
    app: Flask, client: FlaskClient, idp_metadata: str, fake: FakeLogin
) -> None:
    settings = sp_settings(idp_metadata, binding=C.BINDING_HTTP_ARTIFACT if hasattr(
        C, "BINDING_HTTP_ARTIFACT") else registry.BINDING_ARTIFACT, contexts=[MIDDEN])
    register(app, sp_metadata(settings))
    request_id, answer = start_sso(client, settings, relay_state="rs-art")
    assert answer.status_code == 303
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == ACS
    query = parse_qs(location.query)
    assert query["RelayState"] == ["rs-art"]
    artifact = query["SAMLart"][0]
    raw = base64.b64decode(artifact)
    assert raw[:2] == b"\x00\x04" and len(raw) == 44
    soap = client.post("/saml/idp/artifact", data=artifact_resolve(artifact),
                       content_type="text/xml")
    assert soap.status_code == 200
    envelope = etree.fromstring(soap.data)
    art_response = envelope.find(f".//{{{views.SAMLP_NS}}}ArtifactResponse")
    assert art_response is not None
    with app.app_context():
        cert = get_keys(app).active("RS256").certificate_pem()
    assert cert is not None
    assert OneLogin_Saml2_Utils.validate_sign(
        etree.tostring(art_response), cert.decode(), validatecert=False,
        xpath="/samlp:ArtifactResponse/ds:Signature")
    inner = art_response.find(f"{{{views.SAMLP_NS}}}Response")
    assert inner is not None
    fields = {"SAMLResponse": base64.b64encode(etree.tostring(inner)).decode()}
    auth = consume(settings, fields, request_id)
    assert auth.get_errors() == [], auth.get_last_error_reason()
    assert auth.is_authenticated()
    # Single use: the second resolve gets Requester/RequestDenied.
    again = client.post("/saml/idp/artifact", data=artifact_resolve(artifact),
                        content_type="text/xml")
    assert again.status_code == 200
    assert_status(again.data, assertions.STATUS_REQUEST_DENIED)


_REQ_SEQ = iter(range(10**6))


def artifact_resolve(artifact: str, *, key: str = SP_KEY, cert: str = SP_CERT,
                     issuer: str = SP_ID) -> bytes:
    message_id = f"_resolve{next(_REQ_SEQ)}x{datetime.now(UTC).timestamp()}".replace(".", "")
    now = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    xml = (
        f'<samlp:ArtifactResolve xmlns:samlp="{views.SAMLP_NS}" xmlns:saml="{views.SAML_NS}" '
        f'ID="{message_id}" Version="2.0" IssueInstant="{now}">'
        f"<saml:Issuer>{issuer}</saml:Issuer><samlp:Artifact>{artifact}</samlp:Artifact>"
        f"</samlp:ArtifactResolve>"
    )
    signed = OneLogin_Saml2_Utils.add_sign(xml, key, cert, sign_algorithm=C.RSA_SHA256,
                                           digest_algorithm=C.SHA256)
    if isinstance(signed, str):
        signed = signed.encode()
    body = signed.split(b"?>", 1)[-1] if signed.startswith(b"<?xml") else signed
    return (b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
            b"<soap:Body>" + body + b"</soap:Body></soap:Envelope>")


def assert_status(xml: bytes | str, second: str) -> None:
    data = xml.encode() if isinstance(xml, str) else xml
    root = etree.fromstring(data)
    codes = [e.get("Value") for e in root.iter(f"{{{views.SAMLP_NS}}}StatusCode")]
    assert second in codes, codes


@pytest.mark.skipif(bool(TEST_REDIS), reason="Redis expires keys by its own clock")
def test_late_artifact_is_request_denied(
    app: Flask, client: FlaskClient, idp_metadata: str, fake: FakeLogin
) -> None:
    settings = sp_settings(idp_metadata, binding=registry.BINDING_ARTIFACT)
    register(app, sp_metadata(settings))
    with clock.frozen():
        _, answer = start_sso(client, settings)
        artifact = parse_qs(urlsplit(answer.headers["Location"]).query)["SAMLart"][0]
        clock.advance(assertions.ARTIFACT_LIFETIME + timedelta(seconds=1))
        late = client.post("/saml/idp/artifact", data=artifact_resolve(artifact),
                           content_type="text/xml")
    assert_status(late.data, assertions.STATUS_REQUEST_DENIED)


def test_artifact_resolve_by_another_signer_is_refused(
    app: Flask, client: FlaskClient, idp_metadata: str, fake: FakeLogin
) -> None:
    settings = sp_settings(idp_metadata, binding=registry.BINDING_ARTIFACT)
    register(app, sp_metadata(settings))
    _, answer = start_sso(client, settings)
    artifact = parse_qs(urlsplit(answer.headers["Location"]).query)["SAMLart"][0]
    forged = client.post("/saml/idp/artifact", content_type="text/xml",
                         data=artifact_resolve(artifact, key=OTHER_KEY, cert=OTHER_CERT))
    assert forged.status_code == 400 and b"Fault" in forged.data
    for junk in (b"<x", b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>", b"\x00" * 70000):
        assert client.post("/saml/idp/artifact", data=junk,
                           content_type="text/xml").status_code in (400, 413)


# --- requested levels, passive, force ----------------------------------------------------


def test_requested_context_and_flags_reach_the_flow(
    app: Flask, client: FlaskClient, sp: OneLogin_Saml2_Settings, fake: FakeLogin
) -> None:
    fake.requests.clear()
    xml = authn_request(extra='ForceAuthn="true"', context=(MIDDEN, "minimum"))
    client.post("/saml/idp/sso", data={"SAMLRequest": b64(sign(xml))})
    assert fake.requests
    rp_request = fake.requests[-1]
    assert rp_request.levels[0] == Level.MIDDEN and Level.BASIS not in rp_request.levels
    assert rp_request.essential and rp_request.force_authn and not rp_request.passive


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ((BASIS, "exact"), [Level.BASIS]),
        ((BASIS, "better"), [Level.MIDDEN, Level.SUBSTANTIEEL, Level.HOOG]),
        ((MIDDEN, "maximum"), [Level.MIDDEN, Level.BASIS]),
        # shared/INTERFACE.md: the eIDAS LoA URIs are accepted in a request too.
        (("http://eidas.europa.eu/LoA/substantial", "minimum"),
         [Level.SUBSTANTIEEL, Level.HOOG]),
        (("http://eidas.europa.eu/LoA/low", "exact"), [Level.MIDDEN]),
    ],
)
def test_comparison_maps_to_levels(context: tuple[str, str], expected: list[Level]) -> None:
    root = etree.fromstring(authn_request(context=context).encode())
    found = views.requested_levels(root)
    assert found is not None and list(found[0]) == expected and found[1]


def test_unreachable_context_is_no_authn_context(
    client: FlaskClient, sp: OneLogin_Saml2_Settings, fake: FakeLogin
) -> None:
    xml = authn_request(context=(Level.HOOG.context_class, "exact"))
    page = client.post("/saml/idp/sso", data={"SAMLRequest": b64(sign(xml))})
    _, fields = form_fields(page.get_data(as_text=True))
    assert_status(base64.b64decode(fields["SAMLResponse"]), assertions.STATUS_NO_AUTHN_CONTEXT)
    assert not fake.requests


def test_passive_without_session_is_no_passive(
    client: FlaskClient, sp: OneLogin_Saml2_Settings, fake: FakeLogin
) -> None:
    fake.sso = False
    page = client.post("/saml/idp/sso",
                       data={"SAMLRequest": b64(sign(authn_request(extra='IsPassive="true"')))})
    action, fields = form_fields(page.get_data(as_text=True))
    assert action == ACS
    assert_status(base64.b64decode(fields["SAMLResponse"]), assertions.STATUS_NO_PASSIVE)


def test_flow_error_becomes_saml_status(
    client: FlaskClient, sp: OneLogin_Saml2_Settings, fake: FakeLogin
) -> None:
    fake.error = ErrorCode.CANCELLED
    client.post("/saml/idp/sso", data={"SAMLRequest": b64(sign(authn_request()))})
    page = client.get("/saml/idp/sso/resume?flow=fake-flow")
    _, fields = form_fields(page.get_data(as_text=True))
    assert_status(base64.b64decode(fields["SAMLResponse"]), assertions.STATUS_AUTHN_FAILED)


def test_bsn_sp_gets_legacy_name_id(
    app: Flask, client: FlaskClient, idp_metadata: str, fake: FakeLogin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = sp_settings(idp_metadata)
    register(app, sp_metadata(settings), bsn=True)

    class Person:
        bsn = BSN

    monkeypatch.setattr(views, "_account", lambda _id: Person())
    request_id, page = start_sso(client, settings)
    _, fields = form_fields(page.get_data(as_text=True))
    settings_unspecified = sp_settings(idp_metadata)
    auth = consume(settings_unspecified, fields, request_id)
    assert auth.is_authenticated(), auth.get_last_error_reason()
    assert auth.get_nameid() == f"s00000000:{BSN}"


# --- bad input: never a 500, never a POST to an unknown address ------------------------------


def authn_request(*, destination: str = SSO_URL, acs: str = ACS, extra: str = "",
                  context: tuple[str, str] | None = None, issuer: str = SP_ID,
                  message_id: str | None = None) -> str:
    message_id = message_id or f"_req{next(_REQ_SEQ)}{int(datetime.now(UTC).timestamp()*1e6)}"
    now = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    ctx = ""
    if context is not None:
        ctx = (f'<samlp:RequestedAuthnContext Comparison="{context[1]}">'
               f"<saml:AuthnContextClassRef>{context[0]}</saml:AuthnContextClassRef>"
               f"</samlp:RequestedAuthnContext>")
    return (
        f'<samlp:AuthnRequest xmlns:samlp="{views.SAMLP_NS}" xmlns:saml="{views.SAML_NS}" '
        f'ID="{message_id}" Version="2.0" IssueInstant="{now}" Destination="{destination}" '
        f'AssertionConsumerServiceURL="{acs}" '
        f'ProtocolBinding="{registry.BINDING_POST}" {extra}>'
        f"<saml:Issuer>{issuer}</saml:Issuer>{ctx}</samlp:AuthnRequest>"
    )


def sign(xml: str, key: str = SP_KEY, cert: str = SP_CERT) -> str:
    signed = OneLogin_Saml2_Utils.add_sign(xml, key, cert, sign_algorithm=C.RSA_SHA256,
                                           digest_algorithm=C.SHA256)
    return signed.decode() if isinstance(signed, bytes) else signed


def b64(xml: str | bytes) -> str:
    return base64.b64encode(xml.encode() if isinstance(xml, str) else xml).decode()


@pytest.fixture
def post(client: FlaskClient) -> Callable[..., Any]:
    def send(xml: str | bytes, relay_state: str | None = None) -> Any:
        data = {"SAMLRequest": b64(xml)}
        if relay_state is not None:
            data["RelayState"] = relay_state
        return client.post("/saml/idp/sso", data=data)

    return send


def test_bad_authn_requests_get_an_error_page(
    sp: OneLogin_Saml2_Settings, fake: FakeLogin, post: Callable[..., Any],
    client: FlaskClient,
) -> None:
    # python3-saml's metadata says AuthnRequestsSigned="true".
    replayed = sign(authn_request())
    assert post(replayed).status_code == 303
    cases = {
        "malformed": "<samlp:AuthnRequest",
        "unsigned": authn_request(),
        "wrongly signed": sign(authn_request(), OTHER_KEY, OTHER_CERT),
        "tampered": sign(authn_request()).replace(ACS, ACS + "x"),
        "oversized": sign(authn_request()).replace("<saml:Issuer>", "<!--" + "x" * 70000
                                                   + "--><saml:Issuer>"),
        "xxe": '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
               + sign(authn_request()).replace(SP_ID, "&x;"),
        "billion laughs": '<!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
                          + authn_request(issuer="&b;"),
        "replayed": replayed,
        "wrong destination": sign(authn_request(destination="https://evil.example/sso")),
        "unknown ACS": sign(authn_request(acs="https://evil.example/acs")),
        "unknown SP": sign(authn_request(issuer="https://nobody.example/sp")),
        "not an AuthnRequest": sign(authn_request()).replace("AuthnRequest", "LogoutRequest"),
        "stale": sign(authn_request().replace(
            clock.now().strftime("%Y-%m-%dT%H:%M:%SZ"), "2001-01-01T00:00:00Z")),
    }
    for name, xml in cases.items():
        answer = post(xml)
        assert answer.status_code in (400, 413), name
        assert b"SAMLResponse" not in answer.data and "Location" not in answer.headers, name
    assert post(sign(authn_request()), relay_state="r" * 81).status_code == 400
    assert client.post("/saml/idp/sso", data={"SAMLRequest": "%%%not base64"}).status_code == 400
    assert client.get("/saml/idp/sso").status_code == 400


def test_redirect_binding_signature_is_checked(
    client: FlaskClient, sp: OneLogin_Saml2_Settings, fake: FakeLogin
) -> None:
    auth = OneLogin_Saml2_Auth(request_data("/login"), sp)
    url = urlsplit(auth.login(return_to="rs"))
    params = parse_qs(url.query)
    tampered = dict(params, RelayState=["other"])
    query = urlencode({k: v[0] for k, v in tampered.items()})
    assert client.get("/saml/idp/sso?" + query).status_code == 400
    unsigned = {k: v[0] for k, v in params.items() if k not in ("Signature", "SigAlg")}
    assert client.get("/saml/idp/sso?" + urlencode(unsigned)).status_code == 400
    bomb = base64.b64encode(zlib.compress(b"<a>" + b" " * 10_000_000 + b"</a>")[2:-4]).decode()
    assert client.get("/saml/idp/sso?" + urlencode({"SAMLRequest": bomb})).status_code == 400
    assert client.get("/saml/idp/sso?" + url.query).status_code == 303


# --- single logout ------------------------------------------------------------------------


def test_slo_redirect_answers_signed_logout_response(
    client: FlaskClient, sp: OneLogin_Saml2_Settings, fake: FakeLogin
) -> None:
    auth = OneLogin_Saml2_Auth(request_data("/logout"), sp)
    url = urlsplit(auth.logout(name_id="someone", name_id_format=C.NAMEID_PERSISTENT,
                               return_to="rs-out"))
    assert url.path == "/saml/idp/slo"
    answer = client.get("/saml/idp/slo?" + url.query)
    assert answer.status_code == 303, answer.get_data(as_text=True)[:300]
    back = urlsplit(answer.headers["Location"])
    assert f"https://{back.netloc}{back.path}" == SLS
    get = {k: v[0] for k, v in parse_qs(back.query).items()}
    assert get["RelayState"] == "rs-out"
    sp_auth = OneLogin_Saml2_Auth(request_data("/sls", get=get), sp)
    sp_auth.process_slo(request_id=auth.get_last_request_id())
    assert sp_auth.get_errors() == [], sp_auth.get_last_error_reason()
    # The same request again is a replay.
    assert client.get("/saml/idp/slo?" + url.query).status_code == 400


def test_slo_soap_ends_the_session_and_refuses_unsigned(
    client: FlaskClient, sp: OneLogin_Saml2_Settings, fake: FakeLogin
) -> None:
    now = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    xml = (
        f'<samlp:LogoutRequest xmlns:samlp="{views.SAMLP_NS}" xmlns:saml="{views.SAML_NS}" '
        f'ID="_soaplogout{next(_REQ_SEQ)}" Version="2.0" IssueInstant="{now}">'
        f"<saml:Issuer>{SP_ID}</saml:Issuer><saml:NameID>someone</saml:NameID>"
        f"</samlp:LogoutRequest>"
    )

    def envelope(body: str) -> bytes:
        body = body.split("?>", 1)[-1] if body.startswith("<?xml") else body
        return (f'<s:Envelope xmlns:s="{views.SOAP_NS}"><s:Body>{body}</s:Body></s:Envelope>'
                ).encode()

    unsigned = client.post("/saml/idp/slo", data=envelope(xml), content_type="text/xml")
    assert unsigned.status_code == 400
    signed = client.post("/saml/idp/slo", data=envelope(sign(xml)), content_type="text/xml")
    assert signed.status_code == 200
    assert_status(signed.data, "urn:oasis:names:tc:SAML:2.0:status:Success")


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    yield

