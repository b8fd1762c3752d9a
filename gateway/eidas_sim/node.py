"""A simulated eIDAS proxy service: its keys, signed metadata, AuthnRequest checks and Responses.

Implements the eIDAS technical specifications v1.2 as a foreign member state's node applies them
toward a connector (here the gateway's eIDAS route):

- eIDAS SAML Message Format v1.2: metadata (signed, `validUntil`, algorithm support
  from the SAML Metadata Profile for Algorithm Support, `assurance-certification` entity
  attribute listing the LoAs, supported attributes, Organization and ContactPerson);
  AuthnRequest (signed, Destination, ForceAuthn, RequestedAuthnContext with the
  eIDAS LoA URIs and comparison `minimum`, SPType and RequestedAttributes extensions);
  Response (signed Response carrying one signed, encrypted Assertion with a bearer
  SubjectConfirmation, Conditions and Audience, AuthnContextClassRef = LoA reached, and
  Issuer format `entity`).
- eIDAS SAML Attribute Profile v1.2: natural-person attribute names, friendly names, types and
  URI NameFormat; CurrentAddress as base64 of the structured address's elements.
- eIDAS Cryptographic Requirements v1.2: SHA-256 digests, AES-GCM content encryption with
  RSA-OAEP key transport, RSA keys of 3072 bits. Signatures are RSA-SHA256 (PKCS#1 v1.5): the
  gateway's XML backend (gateway.idp.saml.crypto) verifies RSA-SHA256 and ECDSA-SHA256 only, not
  RSASSA-PSS, which the requirements prefer; see docs/eidas.md.

Signing, verification and encryption go through the gateway's in-process pysaml2 backend
(`CryptoBackendXmlSecInProcess`): the same profile checks (one Reference to the signed element's
ID, exclusive c14n, no KeyInfo keys, no DTD) apply to what the simulator accepts.

The simulator is a test and demo tool and never part of the gateway's production path: only the
`gateway eidas-sim` command and the tests import this package.

    node = SimulatedNode("http://127.0.0.1:8002", Path("instance/eidas-sim"), sp_metadata)
    saml_response, acs_url = node.response_for(saml_request, "de-substantial")
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from saml2.sigver import EncryptError, SignatureError, pre_encryption_part

from gateway import clock
from gateway.eidas_sim.persons import LOA_ORDER, PERSONS, TestPerson, loa_rank
from gateway.idp.saml.crypto import AES256_GCM, RSA_OAEP_MGF1P, CryptoBackendXmlSecInProcess

SAMLP_NS: Final = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML_NS: Final = "urn:oasis:names:tc:SAML:2.0:assertion"
MD_NS: Final = "urn:oasis:names:tc:SAML:2.0:metadata"
DS_NS: Final = "http://www.w3.org/2000/09/xmldsig#"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
XS_NS: Final = "http://www.w3.org/2001/XMLSchema"
MDATTR_NS: Final = "urn:oasis:names:tc:SAML:metadata:attribute"
ALG_NS: Final = "urn:oasis:names:tc:SAML:metadata:algsupport"
#: eIDAS SAML Message Format 1.2: the extensions' namespace (SPType,
#: RequestedAttributes) and the natural-person attribute types' namespace.
EIDAS_NS: Final = "http://eidas.europa.eu/saml-extensions"
NATURAL_NS: Final = "http://eidas.europa.eu/attributes/naturalperson"

BINDING_POST: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BINDING_REDIRECT: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
NAMEID_PERSISTENT: Final = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
NAMEID_TRANSIENT: Final = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
NAMEID_UNSPECIFIED: Final = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
NAMEID_ENTITY: Final = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"
ATTRNAME_URI: Final = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"
CM_BEARER: Final = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
ASSURANCE_CERTIFICATION: Final = "urn:oasis:names:tc:SAML:attribute:assurance-certification"
PROTOCOL_VERSION: Final = "http://eidas.europa.eu/entity-attributes/protocol-version"
APPLICATION_IDENTIFIER: Final = "http://eidas.europa.eu/entity-attributes/application-identifier"

STATUS_SUCCESS: Final = "urn:oasis:names:tc:SAML:2.0:status:Success"
STATUS_REQUESTER: Final = "urn:oasis:names:tc:SAML:2.0:status:Requester"
STATUS_RESPONDER: Final = "urn:oasis:names:tc:SAML:2.0:status:Responder"
STATUS_AUTHN_FAILED: Final = "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed"
STATUS_REQUEST_DENIED: Final = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
STATUS_NO_AUTHN_CONTEXT: Final = "urn:oasis:names:tc:SAML:2.0:status:NoAuthnContext"
STATUS_NO_PASSIVE: Final = "urn:oasis:names:tc:SAML:2.0:status:NoPassive"
#: Second-level codes `response_for(status=...)` accepts by short name; the top level is
#: Responder for all of them (the failure is the node's or the citizen's, not the connector's).
SECOND_LEVEL: Final = {
    "AuthnFailed": STATUS_AUTHN_FAILED,
    "RequestDenied": STATUS_REQUEST_DENIED,
    "NoAuthnContext": STATUS_NO_AUTHN_CONTEXT,
    "NoPassive": STATUS_NO_PASSIVE,
}
#: StatusMessages in the eIDAS-Node's style ("<code> - <text>").
STATUS_MESSAGES: Final = {
    STATUS_AUTHN_FAILED: "003002 - Authentication Failed.",
    STATUS_REQUEST_DENIED: "202012 - Citizen consent not given.",
    STATUS_NO_AUTHN_CONTEXT: "202019 - Incorrect Level of Assurance in IdP response",
    STATUS_NO_PASSIVE: "202004 - IsPassive is not supported.",
}

SIG_RSA_SHA256: Final = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
DIGEST_SHA256: Final = "http://www.w3.org/2001/04/xmlenc#sha256"

#: eIDAS SAML Attribute Profile 1.2: the natural-person attributes, as
#: (URI name, FriendlyName, xsi:type local name, required by the minimum data set).
ATTRIBUTES: Final = {
    "PersonIdentifier": ("PersonIdentifier", "PersonIdentifierType", True),
    "CurrentFamilyName": ("FamilyName", "CurrentFamilyNameType", True),
    "CurrentGivenName": ("FirstName", "CurrentGivenNameType", True),
    "DateOfBirth": ("DateOfBirth", "DateOfBirthType", True),
    "BirthName": ("BirthName", "BirthNameType", False),
    "PlaceOfBirth": ("PlaceOfBirth", "PlaceOfBirthType", False),
    "CurrentAddress": ("CurrentAddress", "CurrentAddressType", False),
    "Gender": ("Gender", "GenderType", False),
}
ATTRIBUTE_PREFIX: Final = NATURAL_NS + "/"
#: CurrentAddressStructuredType's elements in schema order (eIDAS Attribute Profile).
ADDRESS_PARTS: Final = (
    "PoBox", "LocatorDesignator", "LocatorName", "CvaddressArea", "Thoroughfare", "PostName",
    "AdminunitFirstline", "AdminunitSecondline", "PostCode",
)

#: Paths under the base URL; the entity ID is the metadata URL (eIDAS Message Format).
METADATA_PATH: Final = "/metadata"
SSO_PATH: Final = "/sso"

RSA_BITS: Final = 3072  # eIDAS Cryptographic Requirements 1.2
CERT_VALIDITY: Final = timedelta(days=3 * 365)
KEY_FILE: Final = "node-signing-key.pem"
CERT_FILE: Final = "node-signing-cert.pem"
SP_CERT_DIR: Final = "sp-certs"

METADATA_VALIDITY: Final = timedelta(days=7)
#: The assertion's window: long enough for a slow browser POST, short enough to limit replay.
ASSERTION_LIFETIME: Final = timedelta(minutes=5)
#: Clock skew accepted on a request's IssueInstant.
MAX_CLOCK_SKEW: Final = timedelta(minutes=3)
#: A SAMLRequest larger than this is refused before decoding (the eIDAS-Node's limit).
MAX_REQUEST_BYTES: Final = 131072

_PARSER: Final = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
    dtd_validation=False, remove_blank_text=False,
)
_NSMAP: Final = {"saml2p": SAMLP_NS, "saml2": SAML_NS, "ds": DS_NS}


class RequestError(Exception):
    """The AuthnRequest is refused; the message names the rule, safe to show."""


class MetadataError(Exception):
    """The SP metadata cannot be used; the message says why."""


class SignatureInvalid(RequestError):
    """The AuthnRequest's signature does not verify with any key in the SP metadata."""


class UnknownIssuer(RequestError):
    """The AuthnRequest comes from another entity than the SP metadata describes."""


# --- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeKeys:
    key_path: Path
    cert_path: Path

    @property
    def cert_b64(self) -> str:
        pem = self.cert_path.read_text(encoding="ascii")
        return "".join(pem.strip().splitlines()[1:-1])


def _write_private(path: Path, data: bytes) -> None:
    # O_EXCL: never overwrite a key another process wrote a moment ago.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def ensure_keys(key_dir: Path) -> NodeKeys:
    """The node's signing key and self-signed certificate, made on first use (folder 0700,
    files 0600)."""
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = NodeKeys(key_dir / KEY_FILE, key_dir / CERT_FILE)
    if keys.key_path.exists() and keys.cert_path.exists():
        return keys
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "eIDAS node simulator (abroad-gateway, test only)"),
    ])
    now = clock.now()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + CERT_VALIDITY)
        .sign(key, hashes.SHA256())
    )
    keys.key_path.unlink(missing_ok=True)
    keys.cert_path.unlink(missing_ok=True)
    _write_private(keys.key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    _write_private(keys.cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return keys


# --- XML helpers ----------------------------------------------------------------------------


def parse_xml(data: bytes) -> etree._Element:
    """Parse without DTDs, entities or network; a DOCTYPE is refused (XXE, billion laughs)."""
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError("not well-formed XML") from exc
    tree = root.getroottree()
    if getattr(tree.docinfo, "doctype", "") or tree.docinfo.internalDTD is not None:
        raise ValueError("a DTD is not allowed")
    if any(isinstance(node, etree._Entity) for node in root.iter()):
        raise ValueError("entity references are not allowed")
    return root


def _q(namespace: str, local: str) -> str:
    return f"{{{namespace}}}{local}"


def _instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _parse_instant(value: str) -> datetime:
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("IssueInstant without a time zone")
    return moment


def _new_id() -> str:
    # xs:ID must not start with a digit.
    return "_" + secrets.token_hex(20)


def _cert_b64(pem: bytes) -> str:
    return "".join(pem.decode("ascii").strip().splitlines()[1:-1])


def _pem_of(b64_text: str) -> bytes:
    body = "".join(b64_text.split())
    der = base64.b64decode(body, validate=True)
    x509.load_der_x509_certificate(der)  # refuse anything that is not a certificate
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return ("-----BEGIN CERTIFICATE-----\n" + "\n".join(lines)
            + "\n-----END CERTIFICATE-----\n").encode("ascii")


def _text(xml: str | bytes) -> str:
    return xml.decode("utf-8") if isinstance(xml, bytes) else xml


def _strip_declaration(xml: str) -> str:
    text = xml.lstrip()
    if text.startswith("<?xml"):
        text = text[text.index("?>") + 2:].lstrip()
    return text


def signature_template(element_id: str, cert_b64: str) -> etree._Element:
    """A `ds:Signature` template: RSA-SHA256, SHA-256, exclusive c14n, one Reference to the
    element's ID with the enveloped-signature and exclusive-c14n transforms (SAML Core 5.4)."""
    signature = etree.Element(_q(DS_NS, "Signature"), nsmap={"ds": DS_NS})
    signed_info = etree.SubElement(signature, _q(DS_NS, "SignedInfo"))
    etree.SubElement(signed_info, _q(DS_NS, "CanonicalizationMethod"),
                     Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#")
    etree.SubElement(signed_info, _q(DS_NS, "SignatureMethod"), Algorithm=SIG_RSA_SHA256)
    reference = etree.SubElement(signed_info, _q(DS_NS, "Reference"), URI="#" + element_id)
    transforms = etree.SubElement(reference, _q(DS_NS, "Transforms"))
    etree.SubElement(transforms, _q(DS_NS, "Transform"),
                     Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature")
    etree.SubElement(transforms, _q(DS_NS, "Transform"),
                     Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#")
    etree.SubElement(reference, _q(DS_NS, "DigestMethod"), Algorithm=DIGEST_SHA256)
    etree.SubElement(reference, _q(DS_NS, "DigestValue"))
    etree.SubElement(signature, _q(DS_NS, "SignatureValue"))
    key_info = etree.SubElement(signature, _q(DS_NS, "KeyInfo"))
    x509_data = etree.SubElement(key_info, _q(DS_NS, "X509Data"))
    etree.SubElement(x509_data, _q(DS_NS, "X509Certificate")).text = cert_b64
    return signature


# --- SP metadata ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpMetadata:
    """What the node needs from the connector's metadata (SAML Metadata 2.4.4)."""

    entity_id: str
    signing_certs: tuple[bytes, ...]
    encryption_certs: tuple[bytes, ...]
    acs_urls: tuple[str, ...]
    sp_type: str | None
    raw: bytes

    @classmethod
    def parse(cls, data: bytes) -> SpMetadata:
        try:
            root = parse_xml(data)
        except ValueError as exc:
            raise MetadataError(f"SP metadata: {exc}") from None
        if root.tag == _q(MD_NS, "EntitiesDescriptor"):
            found = root.find(_q(MD_NS, "EntityDescriptor"))
            if found is None:
                raise MetadataError("SP metadata: no EntityDescriptor")
            root = found
        if root.tag != _q(MD_NS, "EntityDescriptor"):
            raise MetadataError("SP metadata: the document is not an EntityDescriptor")
        valid_until = root.get("validUntil")
        if valid_until is not None:
            try:
                expired = _parse_instant(valid_until) <= clock.now()
            except ValueError:
                raise MetadataError("SP metadata: validUntil is not a time") from None
            if expired:
                raise MetadataError("SP metadata: expired (validUntil has passed)")
        entity_id = root.get("entityID") or ""
        descriptor = root.find(_q(MD_NS, "SPSSODescriptor"))
        if not entity_id or descriptor is None:
            raise MetadataError("SP metadata: no entityID or no SPSSODescriptor")
        signing: list[bytes] = []
        encryption: list[bytes] = []
        for key_descriptor in descriptor.findall(_q(MD_NS, "KeyDescriptor")):
            use = key_descriptor.get("use")
            for cert in key_descriptor.iter(_q(DS_NS, "X509Certificate")):
                try:
                    pem = _pem_of(cert.text or "")
                except ValueError:
                    raise MetadataError("SP metadata: a certificate cannot be read") from None
                if use in (None, "signing"):
                    signing.append(pem)
                if use in (None, "encryption"):
                    encryption.append(pem)
        acs = [
            (int(e.get("index") or 0), e.get("isDefault") == "true", e.get("Location") or "")
            for e in descriptor.findall(_q(MD_NS, "AssertionConsumerService"))
            if e.get("Binding") == BINDING_POST and e.get("Location")
        ]
        acs.sort(key=lambda item: (not item[1], item[0]))  # the default first
        if not acs:
            raise MetadataError("SP metadata: no AssertionConsumerService with HTTP-POST")
        if not signing:
            raise MetadataError("SP metadata: no signing certificate")
        sp_type = None
        for extensions in (root.find(_q(MD_NS, "Extensions")),
                           descriptor.find(_q(MD_NS, "Extensions"))):
            if extensions is not None:
                element = extensions.find(_q(EIDAS_NS, "SPType"))
                if element is not None and element.text:
                    sp_type = element.text.strip()
        return cls(entity_id, tuple(signing), tuple(encryption),
                   tuple(url for _, _, url in acs), sp_type, data)


# --- AuthnRequest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestedAttribute:
    name: str
    friendly_name: str | None
    required: bool


@dataclass(frozen=True)
class AuthnRequestInfo:
    """A checked AuthnRequest (eIDAS SAML Message Format)."""

    id: str
    issuer: str
    acs_url: str
    #: The lowest LoA the connector accepts (comparison minimum) or the one it wants (exact).
    loa: str
    comparison: str
    requested_attributes: tuple[RequestedAttribute, ...]
    sp_type: str | None
    name_id_format: str
    force_authn: bool
    is_passive: bool
    provider_name: str | None

    def acceptable(self, loa: str) -> bool:
        if self.comparison == "exact":
            return loa == self.loa
        return loa_rank(loa) >= loa_rank(self.loa)


def decode_request(saml_request_b64: str) -> bytes:
    if len(saml_request_b64) > MAX_REQUEST_BYTES:
        raise RequestError("the SAMLRequest is too large")
    try:
        return base64.b64decode("".join(saml_request_b64.split()), validate=True)
    except ValueError:
        raise RequestError("the SAMLRequest is not base64") from None


# --- the node -------------------------------------------------------------------------------


class SimulatedNode:
    """A foreign eIDAS proxy service answering one connector (the SP of `sp_metadata`).

    Thread-safe: the SP metadata can be replaced (`set_sp_metadata`) while requests run.
    """

    def __init__(self, base_url: str, key_dir: Path, sp_metadata: bytes | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.key_dir = Path(key_dir)
        self.keys = ensure_keys(self.key_dir)
        self.crypto = CryptoBackendXmlSecInProcess()
        self._lock = threading.Lock()
        self._sp: SpMetadata | None = None
        if sp_metadata is not None:
            self.set_sp_metadata(sp_metadata)

    # -- addresses and metadata -------------------------------------------------------------

    @property
    def entity_id(self) -> str:
        return self.base_url + METADATA_PATH

    @property
    def sso_url(self) -> str:
        return self.base_url + SSO_PATH

    @property
    def sp(self) -> SpMetadata:
        sp = self._sp
        if sp is None:
            raise MetadataError("no SP metadata loaded")
        return sp

    @property
    def has_sp_metadata(self) -> bool:
        return self._sp is not None

    def set_sp_metadata(self, data: bytes) -> SpMetadata:
        sp = SpMetadata.parse(data)
        with self._lock:
            self._sp = sp
        return sp

    def metadata(self) -> bytes:
        """The node's signed EntityDescriptor (eIDAS SAML Message Format)."""
        descriptor_id = _new_id()
        now = clock.now()
        root = etree.Element(_q(MD_NS, "EntityDescriptor"), nsmap={
            "md": MD_NS, "ds": DS_NS, "saml2": SAML_NS, "mdattr": MDATTR_NS, "alg": ALG_NS,
        })
        root.set("ID", descriptor_id)
        root.set("entityID", self.entity_id)
        root.set("validUntil", _instant(now + METADATA_VALIDITY))
        extensions = etree.SubElement(root, _q(MD_NS, "Extensions"))
        entity_attributes = etree.SubElement(extensions, _q(MDATTR_NS, "EntityAttributes"))
        for name, values in (
            (ASSURANCE_CERTIFICATION, LOA_ORDER),
            (PROTOCOL_VERSION, ("1.2",)),
            (APPLICATION_IDENTIFIER, ("abroad-gateway:eidas-sim:1",)),
        ):
            attribute = etree.SubElement(entity_attributes, _q(SAML_NS, "Attribute"),
                                         Name=name, NameFormat=ATTRNAME_URI)
            for value in values:
                etree.SubElement(attribute, _q(SAML_NS, "AttributeValue")).text = value
        etree.SubElement(extensions, _q(ALG_NS, "DigestMethod"), Algorithm=DIGEST_SHA256)
        etree.SubElement(extensions, _q(ALG_NS, "SigningMethod"), Algorithm=SIG_RSA_SHA256,
                         MinKeySize=str(RSA_BITS))
        idp = etree.SubElement(root, _q(MD_NS, "IDPSSODescriptor"),
                               WantAuthnRequestsSigned="true",
                               protocolSupportEnumeration=SAMLP_NS)
        key_descriptor = etree.SubElement(idp, _q(MD_NS, "KeyDescriptor"), use="signing")
        key_info = etree.SubElement(key_descriptor, _q(DS_NS, "KeyInfo"))
        x509_data = etree.SubElement(key_info, _q(DS_NS, "X509Data"))
        etree.SubElement(x509_data, _q(DS_NS, "X509Certificate")).text = self.keys.cert_b64
        for name_id_format in (NAMEID_PERSISTENT, NAMEID_TRANSIENT, NAMEID_UNSPECIFIED):
            etree.SubElement(idp, _q(MD_NS, "NameIDFormat")).text = name_id_format
        etree.SubElement(idp, _q(MD_NS, "SingleSignOnService"), Binding=BINDING_POST,
                         Location=self.sso_url)
        for name, (friendly, _type, _required) in ATTRIBUTES.items():
            etree.SubElement(idp, _q(SAML_NS, "Attribute"), FriendlyName=friendly,
                             Name=ATTRIBUTE_PREFIX + name, NameFormat=ATTRNAME_URI)
        organization = etree.SubElement(root, _q(MD_NS, "Organization"))
        for tag, text in (("OrganizationName", "eIDAS node simulator"),
                          ("OrganizationDisplayName", "eIDAS node simulator (test only)"),
                          ("OrganizationURL", self.base_url + "/")):
            element = etree.SubElement(organization, _q(MD_NS, tag))
            element.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
            element.text = text
        for contact_type in ("support", "technical"):
            contact = etree.SubElement(root, _q(MD_NS, "ContactPerson"), contactType=contact_type)
            etree.SubElement(contact, _q(MD_NS, "Company")).text = "abroad-gateway"
            etree.SubElement(contact, _q(MD_NS, "EmailAddress")).text = "mailto:eidas-sim@invalid"
        root.insert(0, signature_template(descriptor_id, self.keys.cert_b64))
        signed = self._sign(root, "urn:oasis:names:tc:SAML:2.0:metadata:EntityDescriptor",
                            descriptor_id)
        return signed.encode("utf-8")

    # -- requests ---------------------------------------------------------------------------

    def parse_request(self, saml_request_b64: str, *, verify: bool = True) -> AuthnRequestInfo:
        """Decode and check a POSTed AuthnRequest; `RequestError` names the broken rule.

        The signature must verify with a signing key of the SP metadata (never a key the
        request carries); `SignatureInvalid` lets the caller refetch the metadata and retry.
        """
        data = decode_request(saml_request_b64)
        try:
            root = parse_xml(data)
        except ValueError as exc:
            raise RequestError(f"the AuthnRequest is refused: {exc}") from None
        if root.tag != _q(SAMLP_NS, "AuthnRequest"):
            raise RequestError("the message is not an AuthnRequest")
        request_id = root.get("ID") or ""
        if root.get("Version") != "2.0" or not request_id:
            raise RequestError("the AuthnRequest has no ID or is not SAML 2.0")
        sp = self.sp
        issuer = root.findtext(_q(SAML_NS, "Issuer")) or ""
        if issuer.strip() != sp.entity_id:
            raise UnknownIssuer("the AuthnRequest's Issuer is not the connector in the metadata")
        if verify:
            self._verify_request(data, request_id, sp)
        if root.get("Destination") != self.sso_url:
            raise RequestError("the AuthnRequest's Destination is not this node")
        try:
            issued = _parse_instant(root.get("IssueInstant") or "")
        except ValueError:
            raise RequestError("the AuthnRequest has no valid IssueInstant") from None
        now = clock.now()
        if not now - ASSERTION_LIFETIME - MAX_CLOCK_SKEW <= issued <= now + MAX_CLOCK_SKEW:
            raise RequestError("the AuthnRequest is too old or from the future")
        binding = root.get("ProtocolBinding")
        if binding is not None and binding != BINDING_POST:
            raise RequestError("only the HTTP-POST binding is supported for the Response")
        acs_url = root.get("AssertionConsumerServiceURL")
        if acs_url is None:
            acs_url = sp.acs_urls[0]
        elif acs_url not in sp.acs_urls:
            raise RequestError("the AssertionConsumerServiceURL is not in the SP metadata")
        loa, comparison = _requested_loa(root)
        policy = root.find(_q(SAMLP_NS, "NameIDPolicy"))
        name_id_format = (policy.get("Format") if policy is not None else None) or (
            NAMEID_UNSPECIFIED
        )
        if name_id_format not in (NAMEID_PERSISTENT, NAMEID_TRANSIENT, NAMEID_UNSPECIFIED):
            raise RequestError("the NameIDPolicy format is not supported")
        extensions = root.find(_q(SAMLP_NS, "Extensions"))
        sp_type = sp.sp_type
        requested: list[RequestedAttribute] = []
        if extensions is not None:
            element = extensions.find(_q(EIDAS_NS, "SPType"))
            if element is not None and element.text:
                sp_type = element.text.strip()
            for item in extensions.iter(_q(EIDAS_NS, "RequestedAttribute")):
                requested.append(RequestedAttribute(
                    name=item.get("Name") or "",
                    friendly_name=item.get("FriendlyName"),
                    required=(item.get("isRequired") or "false") in ("true", "1"),
                ))
        if sp_type not in ("public", "private"):
            raise RequestError("no SPType (public or private) in the request or the metadata")
        for attribute in requested:
            if attribute.required and not attribute.name.startswith(ATTRIBUTE_PREFIX):
                raise RequestError(f"unknown required attribute {attribute.name[:100]}")
        return AuthnRequestInfo(
            id=request_id, issuer=sp.entity_id, acs_url=acs_url, loa=loa, comparison=comparison,
            requested_attributes=tuple(requested), sp_type=sp_type,
            name_id_format=name_id_format,
            force_authn=root.get("ForceAuthn") in ("true", "1"),
            is_passive=root.get("IsPassive") in ("true", "1"),
            provider_name=root.get("ProviderName"),
        )

    def _verify_request(self, data: bytes, request_id: str, sp: SpMetadata) -> None:
        for pem in sp.signing_certs:
            cert_file = self._sp_cert_file(pem)
            try:
                self.crypto.validate_signature(
                    data, str(cert_file), "pem",
                    "urn:oasis:names:tc:SAML:2.0:protocol:AuthnRequest", request_id,
                )
            except SignatureError:
                continue
            return
        raise SignatureInvalid("the AuthnRequest's signature does not verify with the SP's key")

    def _sp_cert_file(self, pem: bytes) -> Path:
        folder = self.key_dir / SP_CERT_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / (hashlib.sha256(pem).hexdigest() + ".pem")
        if not path.exists():
            tmp = folder / (path.name + "." + secrets.token_hex(4))
            tmp.write_bytes(pem)
            tmp.replace(path)
        return path

    # -- responses --------------------------------------------------------------------------

    def unsigned_response_xml(
        self,
        request: AuthnRequestInfo,
        person: TestPerson | None,
        *,
        loa: str | None = None,
        status: str | None = None,
        status_message: str | None = None,
        now: datetime | None = None,
        lifetime: timedelta = ASSERTION_LIFETIME,
        audience: str | None = None,
        destination: str | None = None,
        recipient: str | None = None,
        in_response_to: str | None = None,
        issuer: str | None = None,
    ) -> str:
        """The Response with a plain, unsigned Assertion (or none, for an error `status`).

        The keyword arguments override what a correct node would put in, so tests can make
        wrong answers: another audience, destination or LoA, an expired window.
        """
        now = now or clock.now()
        second_level = _second_level(status)
        response_id = _new_id()
        root = etree.Element(_q(SAMLP_NS, "Response"), nsmap=_NSMAP)
        root.set("Consent", "urn:oasis:names:tc:SAML:2.0:consent:obtained")
        root.set("Destination", destination if destination is not None else request.acs_url)
        root.set("ID", response_id)
        root.set("InResponseTo", in_response_to if in_response_to is not None else request.id)
        root.set("IssueInstant", _instant(now))
        root.set("Version", "2.0")
        issuer_text = issuer if issuer is not None else self.entity_id
        etree.SubElement(root, _q(SAML_NS, "Issuer"), Format=NAMEID_ENTITY).text = issuer_text
        status_element = etree.SubElement(root, _q(SAMLP_NS, "Status"))
        if second_level is None:
            etree.SubElement(status_element, _q(SAMLP_NS, "StatusCode"), Value=STATUS_SUCCESS)
            etree.SubElement(status_element, _q(SAMLP_NS, "StatusMessage")).text = STATUS_SUCCESS
        else:
            top = etree.SubElement(status_element, _q(SAMLP_NS, "StatusCode"),
                                   Value=STATUS_RESPONDER)
            etree.SubElement(top, _q(SAMLP_NS, "StatusCode"), Value=second_level)
            etree.SubElement(status_element, _q(SAMLP_NS, "StatusMessage")).text = (
                status_message or STATUS_MESSAGES.get(second_level, "")
            )
            return etree.tostring(root, encoding="unicode")
        if person is None:
            raise ValueError("a successful Response needs a person")
        self._append_assertion(
            root, request, person, loa=loa or person.loa, now=now, lifetime=lifetime,
            audience=audience if audience is not None else request.issuer,
            recipient=recipient if recipient is not None else request.acs_url,
            in_response_to=in_response_to if in_response_to is not None else request.id,
            issuer=issuer_text,
        )
        return etree.tostring(root, encoding="unicode")

    def _append_assertion(
        self, root: etree._Element, request: AuthnRequestInfo, person: TestPerson, *,
        loa: str, now: datetime, lifetime: timedelta, audience: str, recipient: str,
        in_response_to: str, issuer: str,
    ) -> None:
        assertion = etree.SubElement(root, _q(SAML_NS, "Assertion"))
        assertion.set("ID", _new_id())
        assertion.set("IssueInstant", _instant(now))
        assertion.set("Version", "2.0")
        etree.SubElement(assertion, _q(SAML_NS, "Issuer"), Format=NAMEID_ENTITY).text = issuer
        subject = etree.SubElement(assertion, _q(SAML_NS, "Subject"))
        if request.name_id_format == NAMEID_TRANSIENT:
            name_id_format, name_id_value = NAMEID_TRANSIENT, _new_id()
        else:
            name_id_format = request.name_id_format
            name_id_value = person.person_identifier
        name_id = etree.SubElement(subject, _q(SAML_NS, "NameID"), Format=name_id_format,
                                   NameQualifier=self.entity_id)
        name_id.text = name_id_value
        confirmation = etree.SubElement(subject, _q(SAML_NS, "SubjectConfirmation"),
                                        Method=CM_BEARER)
        etree.SubElement(
            confirmation, _q(SAML_NS, "SubjectConfirmationData"),
            InResponseTo=in_response_to, NotOnOrAfter=_instant(now + lifetime),
            Recipient=recipient,
        )
        conditions = etree.SubElement(assertion, _q(SAML_NS, "Conditions"),
                                      NotBefore=_instant(now),
                                      NotOnOrAfter=_instant(now + lifetime))
        restriction = etree.SubElement(conditions, _q(SAML_NS, "AudienceRestriction"))
        etree.SubElement(restriction, _q(SAML_NS, "Audience")).text = audience
        statement = etree.SubElement(assertion, _q(SAML_NS, "AuthnStatement"),
                                     AuthnInstant=_instant(now))
        context = etree.SubElement(statement, _q(SAML_NS, "AuthnContext"))
        etree.SubElement(context, _q(SAML_NS, "AuthnContextClassRef")).text = loa
        attributes = etree.SubElement(assertion, _q(SAML_NS, "AttributeStatement"))
        for name, value in release(person, request):
            friendly, type_name, _required = ATTRIBUTES[name]
            attribute = etree.SubElement(
                attributes, _q(SAML_NS, "Attribute"), FriendlyName=friendly,
                Name=ATTRIBUTE_PREFIX + name, NameFormat=ATTRNAME_URI,
            )
            # The value declares the type's prefix itself, as the eIDAS-Node does, so the
            # xsi:type QName still resolves after the assertion is decrypted and moved.
            value_element = etree.SubElement(
                attribute, _q(SAML_NS, "AttributeValue"),
                nsmap={"xsi": XSI_NS, "eidas-natural": NATURAL_NS},
            )
            value_element.set(_q(XSI_NS, "type"), f"eidas-natural:{type_name}")
            value_element.text = value

    def sign_assertion(self, response_xml: str) -> str:
        """Sign the Response's (only) Assertion in place."""
        root = parse_xml(_strip_declaration(response_xml).encode("utf-8"))
        assertion = root.find(_q(SAML_NS, "Assertion"))
        if assertion is None:
            raise ValueError("no Assertion to sign")
        assertion_id = assertion.get("ID") or ""
        issuer = assertion.find(_q(SAML_NS, "Issuer"))
        if issuer is None:
            raise ValueError("the Assertion has no Issuer")
        issuer.addnext(signature_template(assertion_id, self.keys.cert_b64))
        return self._sign(root, "urn:oasis:names:tc:SAML:2.0:assertion:Assertion", assertion_id)

    def sign_response(self, response_xml: str) -> str:
        """Sign the Response itself (its Signature right after its Issuer)."""
        root = parse_xml(_strip_declaration(response_xml).encode("utf-8"))
        issuer = root.find(_q(SAML_NS, "Issuer"))
        if issuer is None:
            raise ValueError("the Response has no Issuer")
        response_id = root.get("ID") or ""
        issuer.addnext(signature_template(response_id, self.keys.cert_b64))
        return self._sign(root, "urn:oasis:names:tc:SAML:2.0:protocol:Response", response_id)

    def encrypt_assertion(self, response_xml: str, cert_pem: bytes | None = None) -> str:
        """Replace the Response's Assertion by an EncryptedAssertion for the SP's first
        encryption certificate (or `cert_pem`): AES-256-GCM, RSA-OAEP."""
        if cert_pem is None:
            certs = self.sp.encryption_certs
            if not certs:
                raise MetadataError("the SP metadata has no encryption certificate")
            cert_pem = certs[0]
        root = parse_xml(_strip_declaration(response_xml).encode("utf-8"))
        assertion = root.find(_q(SAML_NS, "Assertion"))
        if assertion is None:
            raise ValueError("no Assertion to encrypt")
        template = pre_encryption_part(
            msg_enc=AES256_GCM, key_enc=RSA_OAEP_MGF1P, encrypt_cert=_cert_b64(cert_pem)
        )
        # lxml serialises the assertion with every namespace it uses declared on it.
        plain = etree.tostring(assertion, encoding="unicode")
        try:
            encrypted = _text(self.crypto.encrypt(
                plain, str(self._sp_cert_file(cert_pem)), str(template), "aes-256"
            ))
        except EncryptError as exc:
            raise ValueError(str(exc)) from None
        container = etree.Element(_q(SAML_NS, "EncryptedAssertion"))
        container.append(parse_xml(_strip_declaration(encrypted).encode("utf-8")))
        container.tail = assertion.tail
        root.replace(assertion, container)
        return etree.tostring(root, encoding="unicode")

    def _sign(self, root: etree._Element, node_name: str, node_id: str) -> str:
        try:
            signed = self.crypto.sign_statement(
                etree.tostring(root, encoding="unicode"), node_name, str(self.keys.key_path),
                node_id,
            )
        except (SignatureError, xmlsec.Error) as exc:
            raise ValueError(str(exc)) from None
        return _strip_declaration(_text(signed))

    def response_xml(
        self,
        request: AuthnRequestInfo,
        person: TestPerson | None,
        *,
        loa: str | None = None,
        status: str | None = None,
        encrypt: bool = True,
        sign_response: bool = True,
        sign_assertion: bool = True,
        **overrides: object,
    ) -> str:
        """The finished Response: assertion signed, then encrypted, then the Response signed
        (the order the eIDAS-Node uses, so the assertion's signature survives decryption)."""
        xml = self.unsigned_response_xml(
            request, person, loa=loa, status=status, **overrides,  # type: ignore[arg-type]
        )
        has_assertion = _second_level(status) is None
        if has_assertion and sign_assertion:
            xml = self.sign_assertion(xml)
        if has_assertion and encrypt:
            xml = self.encrypt_assertion(xml)
        if sign_response:
            xml = self.sign_response(xml)
        return xml

    def response_for(
        self,
        saml_request_b64: str,
        person_id: str,
        *,
        loa: str | None = None,
        status: str | None = None,
        encrypt: bool = True,
        sign_response: bool = True,
        sign_assertion: bool = True,
        verify_request: bool = True,
    ) -> tuple[str, str]:
        """(SAMLResponse in base64, ACS URL) answering `saml_request_b64` for the test person
        `person_id` (a key of `PERSONS`).

        `loa` overrides the LoA claimed (default: the person's); `status` makes an error
        Response instead (a second-level status code URI or its short name, e.g.
        "RequestDenied", "AuthnFailed"; top level Responder), without an assertion.
        """
        request = self.parse_request(saml_request_b64, verify=verify_request)
        person = PERSONS.get(person_id)
        if person is None:
            raise KeyError(f"unknown test person {person_id!r}")
        xml = self.response_xml(
            request, person, loa=loa, status=status, encrypt=encrypt,
            sign_response=sign_response, sign_assertion=sign_assertion,
        )
        return encode(xml), request.acs_url


def encode(xml: str) -> str:
    """A message for the HTTP-POST binding: base64 of its UTF-8 bytes (SAML Bindings 3.5.4)."""
    return base64.b64encode(xml.encode("utf-8")).decode("ascii")


def _second_level(status: str | None) -> str | None:
    if status is None or status in (STATUS_SUCCESS, "Success"):
        return None
    if status in SECOND_LEVEL:
        return SECOND_LEVEL[status]
    if status.startswith("urn:oasis:names:tc:SAML:2.0:status:"):
        return status
    raise ValueError(f"unknown status {status!r}")


def _requested_loa(root: etree._Element) -> tuple[str, str]:
    context = root.find(_q(SAMLP_NS, "RequestedAuthnContext"))
    if context is None:
        raise RequestError("the AuthnRequest has no RequestedAuthnContext")
    comparison = context.get("Comparison") or "exact"
    if comparison not in ("minimum", "exact"):
        raise RequestError("RequestedAuthnContext comparison must be minimum or exact")
    refs = [(e.text or "").strip() for e in context.findall(_q(SAML_NS, "AuthnContextClassRef"))]
    if not refs or any(ref not in LOA_ORDER for ref in refs):
        raise RequestError("the requested AuthnContextClassRef is not an eIDAS LoA")
    return min(refs, key=loa_rank), comparison


def address_value(person: TestPerson) -> str | None:
    """CurrentAddress as the eIDAS-Node sends it: base64 of the CurrentAddressStructuredType
    child elements (eIDAS Attribute Profile), in the eidas-natural namespace."""
    if not person.address:
        return None
    ordered = sorted(person.address, key=lambda part: ADDRESS_PARTS.index(part[0]))
    parts = "".join(
        f'<eidas-natural:{name} xmlns:eidas-natural="{NATURAL_NS}">{_escape(value)}'
        f"</eidas-natural:{name}>"
        for name, value in ordered
    )
    return base64.b64encode(parts.encode("utf-8")).decode("ascii")


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def release(person: TestPerson, request: AuthnRequestInfo) -> list[tuple[str, str]]:
    """The attributes to send: the minimum data set always (the connector needs it even when
    its request forgot one), the optional ones only when requested and known."""
    values = {
        "PersonIdentifier": person.person_identifier,
        "CurrentFamilyName": person.family_name,
        "CurrentGivenName": person.given_name,
        "DateOfBirth": person.birthdate,
        "BirthName": person.birth_name,
        "PlaceOfBirth": person.place_of_birth,
        "CurrentAddress": address_value(person),
        "Gender": person.gender,
    }
    requested = {a.name[len(ATTRIBUTE_PREFIX):] for a in request.requested_attributes
                 if a.name.startswith(ATTRIBUTE_PREFIX)}
    found: list[tuple[str, str]] = []
    for name, (_friendly, _type, mandatory) in ATTRIBUTES.items():
        value = values[name]
        if value is not None and (mandatory or name in requested):
            found.append((name, value))
    return found


__all__ = [
    "ATTRIBUTES",
    "AuthnRequestInfo",
    "MetadataError",
    "RequestError",
    "SignatureInvalid",
    "SimulatedNode",
    "SpMetadata",
    "UnknownIssuer",
    "encode",
    "ensure_keys",
]
