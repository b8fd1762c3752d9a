"""The SP side of the eIDAS SAML exchange: the signed AuthnRequest and the SP's metadata.

Follows the eIDAS SAML Message Format v1.2 (section 3.3: AuthnRequest) and the eIDAS SAML
Attribute Profile v1.2 (section 2.2: natural-person attributes):

- AuthnRequest with ForceAuthn="true", IsPassive="false", a ProviderName, Destination = the
  node's SingleSignOnService, NameIDPolicy persistent, RequestedAuthnContext with
  Comparison="minimum" and the eIDAS LoA URI, and in saml2p:Extensions the eidas:SPType
  ("public") and eidas:RequestedAttributes (URI names, NameFormat uri, isRequired).
- Signed enveloped with exclusive c14n and RSA-SHA256 (the algorithm set of
  `gateway.idp.saml.crypto`), one reference to the request's ID; the signing certificate in
  KeyInfo only as a hint (the node uses our metadata).
- Metadata: an EntityDescriptor whose entityID is its own URL (eIDAS convention), signed,
  SPType public in md:Extensions, AuthnRequestsSigned and WantAssertionsSigned true, one
  signing and one encryption certificate, and the HTTP-POST AssertionConsumerService.

The XML is built with lxml and signed through the in-process backend, rather than through
pysaml2's `Saml2Client`: pysaml2 has no eIDAS extension classes, and hand-built elements let
the signature profile checks of the backend apply to exactly what is sent.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import xmlsec
from lxml import etree

from gateway.idp.saml.crypto import CryptoBackendXmlSecInProcess
from gateway.levels import Level
from gateway.routes.eidas.spkeys import SpKeys

SAMLP_NS: Final = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML_NS: Final = "urn:oasis:names:tc:SAML:2.0:assertion"
MD_NS: Final = "urn:oasis:names:tc:SAML:2.0:metadata"
DS_NS: Final = "http://www.w3.org/2000/09/xmldsig#"
EIDAS_NS: Final = "http://eidas.europa.eu/saml-extensions"
NATURAL_PERSON: Final = "http://eidas.europa.eu/attributes/naturalperson/"
NAME_FORMAT_URI: Final = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"
NAMEID_PERSISTENT: Final = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
NAMEID_ENTITY: Final = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"
BINDING_POST: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
SP_TYPE: Final = "public"

METADATA_PATH: Final = "/eidas/metadata"
ACS_PATH: Final = "/eidas/acs"
#: How long the node may trust a copy of our metadata.
METADATA_VALIDITY: Final = timedelta(days=7)

#: eIDAS SAML Attribute Profile v1.2, 2.2.2: the minimum data set is mandatory.
REQUIRED_ATTRIBUTES: Final = ("PersonIdentifier", "CurrentFamilyName", "CurrentGivenName",
                              "DateOfBirth")
OPTIONAL_ATTRIBUTES: Final = ("BirthName", "PlaceOfBirth", "CurrentAddress", "Gender")

_NSMAP_REQUEST: Final = {"saml2p": SAMLP_NS, "saml2": SAML_NS, "ds": DS_NS, "eidas": EIDAS_NS}
_NSMAP_MD: Final = {"md": MD_NS, "ds": DS_NS, "eidas": EIDAS_NS}


def entity_id(issuer: str) -> str:
    return issuer + METADATA_PATH


def acs_url(issuer: str) -> str:
    return issuer + ACS_PATH


def new_message_id() -> str:
    # An NCName (must not start with a digit), 256 bits of randomness.
    return "_" + secrets.token_hex(32)


def saml_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class AuthnRequestSpec:
    issuer: str
    destination: str
    level: Level
    provider_name: str
    now: datetime
    request_id: str


def build_authn_request(spec: AuthnRequestSpec, keys: SpKeys,
                        backend: CryptoBackendXmlSecInProcess) -> bytes:
    """The signed AuthnRequest, as bytes ready for base64 (HTTP-POST binding)."""
    loa = spec.level.eidas_loa
    if loa is None:
        raise ValueError(f"level {spec.level.label} has no eIDAS LoA")
    root = etree.Element(f"{{{SAMLP_NS}}}AuthnRequest", nsmap=_NSMAP_REQUEST)
    root.set("ID", spec.request_id)
    root.set("Version", "2.0")
    root.set("IssueInstant", saml_time(spec.now))
    root.set("Destination", spec.destination)
    root.set("ForceAuthn", "true")
    root.set("IsPassive", "false")
    root.set("ProviderName", spec.provider_name)
    root.set("Consent", "urn:oasis:names:tc:SAML:2.0:consent:unspecified")
    root.set("ProtocolBinding", BINDING_POST)
    root.set("AssertionConsumerServiceURL", acs_url(spec.issuer))
    issuer = etree.SubElement(root, f"{{{SAML_NS}}}Issuer", Format=NAMEID_ENTITY)
    issuer.text = entity_id(spec.issuer)
    extensions = etree.SubElement(root, f"{{{SAMLP_NS}}}Extensions")
    etree.SubElement(extensions, f"{{{EIDAS_NS}}}SPType").text = SP_TYPE
    requested = etree.SubElement(extensions, f"{{{EIDAS_NS}}}RequestedAttributes")
    for names, required in ((REQUIRED_ATTRIBUTES, "true"), (OPTIONAL_ATTRIBUTES, "false")):
        for name in names:
            etree.SubElement(
                requested, f"{{{EIDAS_NS}}}RequestedAttribute", FriendlyName=name,
                Name=NATURAL_PERSON + name, NameFormat=NAME_FORMAT_URI, isRequired=required,
            )
    etree.SubElement(root, f"{{{SAMLP_NS}}}NameIDPolicy", AllowCreate="true",
                     Format=NAMEID_PERSISTENT)
    context = etree.SubElement(root, f"{{{SAMLP_NS}}}RequestedAuthnContext",
                               Comparison="minimum")
    etree.SubElement(context, f"{{{SAML_NS}}}AuthnContextClassRef").text = loa
    return sign(root, f"{SAMLP_NS}:AuthnRequest", keys, backend, after=issuer)


def sp_metadata(issuer: str, keys: SpKeys, backend: CryptoBackendXmlSecInProcess,
                now: datetime) -> bytes:
    """The SP's signed EntityDescriptor."""
    root = etree.Element(f"{{{MD_NS}}}EntityDescriptor", nsmap=_NSMAP_MD)
    root.set("ID", new_message_id())
    root.set("entityID", entity_id(issuer))
    root.set("validUntil", saml_time(now + METADATA_VALIDITY))
    extensions = etree.SubElement(root, f"{{{MD_NS}}}Extensions")
    etree.SubElement(extensions, f"{{{EIDAS_NS}}}SPType").text = SP_TYPE
    sp = etree.SubElement(
        root, f"{{{MD_NS}}}SPSSODescriptor", AuthnRequestsSigned="true",
        WantAssertionsSigned="true", protocolSupportEnumeration=SAMLP_NS,
    )
    for pair in (keys.signing, keys.encryption):
        descriptor = etree.SubElement(sp, f"{{{MD_NS}}}KeyDescriptor", use=pair.use)
        info = etree.SubElement(descriptor, f"{{{DS_NS}}}KeyInfo")
        data = etree.SubElement(info, f"{{{DS_NS}}}X509Data")
        etree.SubElement(data, f"{{{DS_NS}}}X509Certificate").text = pair.certificate_b64()
    etree.SubElement(sp, f"{{{MD_NS}}}NameIDFormat").text = NAMEID_PERSISTENT
    etree.SubElement(
        sp, f"{{{MD_NS}}}AssertionConsumerService", Binding=BINDING_POST,
        Location=acs_url(issuer), index="0", isDefault="true",
    )
    return sign(root, f"{MD_NS}:EntityDescriptor", keys, backend, after=extensions,
                before=True)


def sign(root: etree._Element, node_name: str, keys: SpKeys,
         backend: CryptoBackendXmlSecInProcess, *, after: etree._Element,
         before: bool = False) -> bytes:
    """Sign `root` enveloped; the Signature goes right after `after` (or before it)."""
    signature = xmlsec.template.create(
        root, xmlsec.constants.TransformExclC14N, xmlsec.constants.TransformRsaSha256, ns="ds",
    )
    reference = xmlsec.template.add_reference(
        signature, xmlsec.constants.TransformSha256, uri="#" + (root.get("ID") or ""),
    )
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformExclC14N)
    if before:
        after.addprevious(signature)
    else:
        after.addnext(signature)
    signed = backend.sign_statement(
        etree.tostring(root).decode("utf-8"), node_name, str(keys.signing.key_path),
        root.get("ID"),
    )
    # KeyInfo is outside SignedInfo: a hint for the node, never what it should trust.
    signed_root = etree.fromstring(signed.encode("utf-8"))
    placed = signed_root.find(f"{{{DS_NS}}}Signature")
    assert placed is not None
    info = etree.SubElement(placed, f"{{{DS_NS}}}KeyInfo")
    data = etree.SubElement(info, f"{{{DS_NS}}}X509Data")
    etree.SubElement(data, f"{{{DS_NS}}}X509Certificate").text = keys.signing.certificate_b64()
    return etree.tostring(signed_root, xml_declaration=True, encoding="UTF-8")
