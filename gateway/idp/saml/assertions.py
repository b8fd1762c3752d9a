"""Building the IdP's answers: authentication responses, artifacts and artifact responses.

- NameID (SAML 2.0 Core 8.3): SPs registered with --bsn get the legacy DigiD form
  `s00000000:<BSN>` (format unspecified), so existing DigiD relying-party software works
  unchanged; every other SP a persistent pairwise identifier (Core 8.3.7), the HMAC of the
  person's subject key and the SP's entity ID, unlinkable between SPs.
- The response and its assertion are both signed (RSA-SHA256); the assertion carries
  Audience, InResponseTo, Destination and a bearer SubjectConfirmation with Recipient and
  NotOnOrAfter (SAML 2.0 Profiles 4.1.4.2), and AuthnContextClassRef of the level reached.
  It is encrypted when the SP's metadata has an encryption key.
- Artifacts (SAML 2.0 Bindings 3.6.4): type 0x0004, endpoint index, SourceID =
  SHA-1(IdP entity ID), 20 random bytes. The response waits in the shared store (any
  instance can resolve it), is taken once, and expires after ARTIFACT_LIFETIME.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import timedelta
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from lxml import etree
from saml2 import class_name, samlp
from saml2.saml import (
    NAMEID_FORMAT_PERSISTENT,
    NAMEID_FORMAT_UNSPECIFIED,
    EncryptedAssertion,
    Issuer,
    NameID,
)
from saml2.sigver import make_temp, pre_encryption_part, pre_signature_part
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

from gateway import clock
from gateway.flows.types import AuthnResult, ErrorCode
from gateway.idp.saml.attributes import AttributeName, attribute_statement
from gateway.idp.saml.crypto import AES256_GCM, RSA_OAEP_MGF1P
from gateway.idp.saml.registry import SamlServiceProvider
from gateway.settings import Settings
from gateway.store import SharedStore

PAIRWISE_PURPOSE: Final = "saml-pairwise-nameid"
#: SAML 2.0 Bindings 3.6.5: an artifact must be short-lived; the SP resolves it at once.
ARTIFACT_LIFETIME: Final = timedelta(minutes=2)
ARTIFACT_TYPE: Final = b"\x00\x04"
_ARTIFACT_KEY: Final = "saml:artifact:"

STATUS_REQUESTER: Final = "urn:oasis:names:tc:SAML:2.0:status:Requester"
STATUS_RESPONDER: Final = "urn:oasis:names:tc:SAML:2.0:status:Responder"
STATUS_NO_PASSIVE: Final = "urn:oasis:names:tc:SAML:2.0:status:NoPassive"
STATUS_NO_AUTHN_CONTEXT: Final = "urn:oasis:names:tc:SAML:2.0:status:NoAuthnContext"
STATUS_AUTHN_FAILED: Final = "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed"
STATUS_REQUEST_DENIED: Final = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"

#: gateway.flows.types' table: the neutral error codes as SAML second-level status codes.
FLOW_STATUS: Final = {
    ErrorCode.LOGIN_REQUIRED: (STATUS_RESPONDER, STATUS_NO_PASSIVE),
    ErrorCode.LEVEL_UNAVAILABLE: (STATUS_RESPONDER, STATUS_NO_AUTHN_CONTEXT),
    ErrorCode.CANCELLED: (STATUS_RESPONDER, STATUS_AUTHN_FAILED),
    ErrorCode.FAILED: (STATUS_RESPONDER, STATUS_AUTHN_FAILED),
    ErrorCode.EXPIRED: (STATUS_RESPONDER, STATUS_AUTHN_FAILED),
}

SAMLP_NS: Final = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML_NS: Final = "urn:oasis:names:tc:SAML:2.0:assertion"
#: The prefixes of a Response and of the assertion signed apart from it (see _xml).
PREFIXES: Final = {
    "samlp": SAMLP_NS,
    "saml": SAML_NS,
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "xs": "http://www.w3.org/2001/XMLSchema",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}
SOAP_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"


def pairwise_name_id(settings: Settings, sp_entity_id: str, subject_key: str) -> str:
    mac = hmac.new(
        settings.derive_key(PAIRWISE_PURPOSE),
        sp_entity_id.encode() + b"\x00" + subject_key.encode(),
        hashlib.sha256,
    ).digest()
    return "_" + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def name_id_for(
    settings: Settings, idp_entity_id: str, sp: SamlServiceProvider, result: AuthnResult,
    bsn: str | None,
) -> NameID | None:
    """The subject's NameID for `sp`; None for a --bsn SP when the person has no BSN."""
    if sp.bsn:
        if bsn is None:
            return None
        return NameID(format=NAMEID_FORMAT_UNSPECIFIED, text=f"s00000000:{bsn}")
    return NameID(
        format=NAMEID_FORMAT_PERSISTENT,
        name_qualifier=idp_entity_id,
        sp_name_qualifier=sp.entity_id,
        text=pairwise_name_id(settings, sp.entity_id, result.subject_key),
    )


def authn_response(
    server: Any,
    *,
    sp: SamlServiceProvider,
    in_response_to: str,
    destination: str,
    name_id: NameID,
    result: AuthnResult,
    attributes: list[tuple[AttributeName, str]],
    encrypt: bool,
) -> str:
    """A signed Response with a signed (and, when `encrypt`, encrypted) Assertion carrying
    `attributes` (gateway.idp.saml.attributes.released) in the one naming of that module."""
    response = server.create_authn_response(
        identity={},  # the AttributeStatement is ours (attributes.py), not pysaml2's maps
        in_response_to=in_response_to,
        destination=destination,
        sp_entity_id=sp.entity_id,
        name_id=name_id,
        authn={
            "class_ref": result.level.context_class,
            "authn_instant": int(result.auth_time.timestamp()),
            "authn_auth": server.config.entityid,
        },
        sign_response=False,
        sign_assertion=False,
        encrypt_assertion=False,
    )
    assertion = _only_assertion(response)
    statement = attribute_statement(attributes)
    assertion.attribute_statement = [statement] if statement is not None else []
    return _sign_wrap_sign(server, sp, response, assertion, encrypt=encrypt)


def _only_assertion(response: samlp.Response) -> Any:
    assertion = response.assertion
    if isinstance(assertion, list):
        if len(assertion) != 1:
            raise ValueError("exactly one assertion expected")
        assertion = assertion[0]
    if assertion is None:
        raise ValueError("no assertion")
    return assertion


def _sign_wrap_sign(
    server: Any, sp: SamlServiceProvider, response: samlp.Response, assertion: Any, *,
    encrypt: bool,
) -> str:
    """Sign the assertion on its own, put exactly what was signed (encrypted, when `encrypt`)
    into the Response, then sign the Response.

    Why not pysaml2's `encrypt_assertion=True`: its "self-contained" step rewrites the
    assertion's prefixes to `encas0:`/`encas1:` before signing, while the enclosing Response
    declares the same namespaces as `ds:`/`saml:`. The signature is valid over that form, but
    an SP that decrypts and puts the assertion back into the Response (python3-saml, and any
    lxml-based SP: lxml drops namespace declarations an ancestor already makes *by URI*,
    renaming the prefix) verifies a different exclusive-c14n form, so the digest no longer
    matches. Here the assertion is serialised stand-alone with the same prefixes the Response
    uses (`saml:`, `ds:`, see `_xml`), so moving it back changes nothing the signature covers.
    The unencrypted answer is built the same way, so both carry the same signed bytes.
    """
    # Signature Ids are document-wide xs:IDs: the Response's is Signature1.
    assertion.signature = pre_signature_part(
        assertion.id, server.sec.my_cert, 2, sign_alg=SIG_RSA_SHA256, digest_alg=DIGEST_SHA256
    )
    signed_assertion = _text(server.sec.sign_statement(
        _xml(assertion), class_name(assertion), node_id=assertion.id
    ))
    response.assertion = None
    response.signature = pre_signature_part(
        response.id, server.sec.my_cert, 1, sign_alg=SIG_RSA_SHA256, digest_alg=DIGEST_SHA256
    )
    if encrypt:
        encrypted_data = _encrypt_for(server, sp, signed_assertion)
        response.encrypted_assertion = EncryptedAssertion()
        root = etree.fromstring(_xml(response).encode())
        container = root.find(f"{{{SAML_NS}}}EncryptedAssertion")
        if container is None:
            raise ValueError("no EncryptedAssertion placeholder")
        container.append(etree.fromstring(_strip_declaration(encrypted_data).encode()))
    else:
        root = etree.fromstring(_xml(response).encode())
        # After Status, where the schema puts the Assertion.
        root.append(etree.fromstring(_strip_declaration(signed_assertion).encode()))
    return _text(server.sec.sign_statement(
        etree.tostring(root, encoding="unicode"), class_name(response), node_id=response.id
    ))


def _xml(element: Any) -> str:
    """pysaml2 serialises with ElementTree, whose prefixes depend on what this process happened
    to register before (`ns0:` in a fresh process): name them, so the assertion and the
    Response around it always use the same prefix for the same namespace."""
    text = element.to_string(nspair=PREFIXES)
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def _encrypt_for(server: Any, sp: SamlServiceProvider, signed_assertion: str) -> str:
    """The signed assertion as an `xenc:EncryptedData` for the SP's first encryption key
    (AES-256-GCM content, RSA-OAEP key transport; never 3DES, pysaml2's default)."""
    certificates = sp.parsed.encryption_certificates
    if not certificates:
        raise ValueError("the SP has no encryption certificate")
    cert_pem = certificates[0].public_bytes(serialization.Encoding.PEM)
    cert_b64 = "".join(cert_pem.decode("ascii").splitlines()[1:-1])
    template = pre_encryption_part(
        msg_enc=AES256_GCM, key_enc=RSA_OAEP_MGF1P, encrypt_cert=cert_b64
    )
    delete = server.config.delete_tmpfiles
    cert_file = make_temp(cert_pem, decode=False, delete_tmpfiles=delete)
    template_file = make_temp(str(template).encode(), decode=False, delete_tmpfiles=delete)
    # The whole document is the signed assertion: no XPath, so nothing else is encrypted.
    encrypted = server.sec.crypto.encrypt(
        _strip_declaration(signed_assertion), cert_file.name, template_file.name, "aes-256"
    )
    return _text(encrypted)


def _text(xml: str | bytes) -> str:
    # The xmlsec1 backend answers with bytes, the in-process one with str.
    return xml.decode("utf-8") if isinstance(xml, bytes) else xml


def error_response(
    server: Any, *, in_response_to: str | None, destination: str, status: tuple[str, str]
) -> str:
    """A signed Response carrying a non-success status (SAML 2.0 Core 3.2.2.2)."""
    # pysaml2's create_error_response always puts Responder on top; build the status here.
    response = server._response(
        in_response_to, destination, status_of(status), sign=True,
        sign_alg=SIG_RSA_SHA256, digest_alg=DIGEST_SHA256,
    )
    return str(response)


def status_of(codes: tuple[str, str]) -> samlp.Status:
    top, second = codes
    return samlp.Status(
        status_code=samlp.StatusCode(value=top, status_code=samlp.StatusCode(value=second))
    )


# --- artifacts ----------------------------------------------------------------------------


def new_artifact(idp_entity_id: str, endpoint_index: int) -> str:
    source_id = hashlib.sha1(idp_entity_id.encode()).digest()  # noqa: S324 - Bindings 3.6.4
    raw = (
        ARTIFACT_TYPE + endpoint_index.to_bytes(2, "big") + source_id + secrets.token_bytes(20)
    )
    return base64.b64encode(raw).decode()


def _artifact_key(artifact: str) -> str:
    return _ARTIFACT_KEY + hashlib.sha256(artifact.encode()).hexdigest()


def store_artifact(
    store: SharedStore, idp_entity_id: str, endpoint_index: int, sp_entity_id: str,
    response_xml: str,
) -> str:
    artifact = new_artifact(idp_entity_id, endpoint_index)
    value = json.dumps({"sp": sp_entity_id, "response": response_xml}).encode()
    store.set(_artifact_key(artifact), value, ARTIFACT_LIFETIME)
    return artifact


def take_artifact(store: SharedStore, artifact: str, sp_entity_id: str) -> str | None:
    """The response the artifact stands for, once; None when unknown, late, taken, or issued
    to another SP (which also burns it: an artifact in the wrong hands is spent)."""
    if not artifact or len(artifact) > 100:
        return None
    value = store.take(_artifact_key(artifact))
    if value is None:
        return None
    data = json.loads(value)
    if not hmac.compare_digest(str(data.get("sp", "")), sp_entity_id):
        return None
    response: str = data["response"]
    return response


def artifact_response(
    server: Any, *, in_response_to: str, response_xml: str | None
) -> str:
    """A signed ArtifactResponse (Core 3.5.2) in a SOAP envelope; carrying `response_xml`, or
    status Requester/RequestDenied when there is nothing (unknown, late or spent artifact)."""
    idp_id = server.config.entityid
    message_id = "_" + secrets.token_hex(20)
    if response_xml is None:
        status = status_of((STATUS_REQUESTER, STATUS_REQUEST_DENIED))
    else:
        status = samlp.Status(status_code=samlp.StatusCode(value=samlp.STATUS_SUCCESS))
    message = samlp.ArtifactResponse(
        id=message_id,
        version="2.0",
        issue_instant=clock.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        in_response_to=in_response_to,
        issuer=Issuer(text=idp_id, format="urn:oasis:names:tc:SAML:2.0:nameid-format:entity"),
        status=status,
        # No signature Id: the Response inside already has "Signature1", and an xs:ID may occur
        # once per document (schema-validating SPs such as django-digid-eherkenning refuse).
        signature=pre_signature_part(
            message_id, server.sec.my_cert, None, sign_alg=SIG_RSA_SHA256,
            digest_alg=DIGEST_SHA256,
        ),
    )
    root = etree.fromstring(str(message).encode())
    if response_xml is not None:
        inner = etree.fromstring(_strip_declaration(response_xml).encode())
        root.append(inner)  # after Status, as the schema orders it
    text = etree.tostring(root, encoding="unicode")
    signed = server.sec.sign_statement(
        text, class_name(samlp.ArtifactResponse()), node_id=message_id
    )
    return soap_envelope(_strip_declaration(signed))


def soap_envelope(body_xml: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>'
        f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_NS}"><SOAP-ENV:Body>'
        f"{body_xml}</SOAP-ENV:Body></SOAP-ENV:Envelope>"
    )


def soap_fault(reason: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>'
        f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_NS}"><SOAP-ENV:Body><SOAP-ENV:Fault>'
        f"<faultcode>SOAP-ENV:Client</faultcode><faultstring>{reason}</faultstring>"
        f"</SOAP-ENV:Fault></SOAP-ENV:Body></SOAP-ENV:Envelope>"
    )


def _strip_declaration(xml: str) -> str:
    text = xml.lstrip()
    if text.startswith("<?xml"):
        text = text[text.index("?>") + 2:].lstrip()
    return text
