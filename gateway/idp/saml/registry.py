"""Registered SAML service providers, taken from their metadata (SAML 2.0 Metadata, section 2.4.4).

An SP is registered with `gateway rp add-saml --metadata FILE [--bsn]` (shared/INTERFACE.md).
Everything the IdP trusts about an SP comes from that metadata and nothing else:

- assertion consumer service URLs (and their bindings and indexes): a response is only ever
  sent to one of them, so an AuthnRequest naming another URL gets an error page (SAML 2.0
  Profiles 4.1.4.1 lets the IdP refuse; DigiD refuses too);
- `WantAuthnRequestsSigned`: then every AuthnRequest must carry a valid signature made with
  a signing key of the metadata (SAML 2.0 Metadata 2.4.4);
- signing certificates (to check requests) and encryption certificates (an SP with one gets
  its assertions encrypted);
- single logout endpoints.

The registration adds what metadata cannot say: whether the SP is entitled to the BSN
(`--bsn`, a legal question decided outside the gateway) and which attributes it receives.

Metadata is parsed with lxml without DTDs, entities or network access; a DOCTYPE is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway import clock
from gateway.db import Base, UTCDateTime
from gateway.idp.saml import attributes

MD_NS: Final = "urn:oasis:names:tc:SAML:2.0:metadata"
DS_NS: Final = "http://www.w3.org/2000/09/xmldsig#"
PROTOCOL: Final = "urn:oasis:names:tc:SAML:2.0:protocol"
BINDING_POST: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BINDING_REDIRECT: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_ARTIFACT: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Artifact"
BINDING_SOAP: Final = "urn:oasis:names:tc:SAML:2.0:bindings:SOAP"
#: Response bindings this IdP can deliver an assertion with.
ACS_BINDINGS: Final = frozenset({BINDING_POST, BINDING_ARTIFACT})
SLO_BINDINGS: Final = frozenset({BINDING_REDIRECT, BINDING_SOAP})

#: An entity ID is also the login flow's rp_id (gateway.flows.types.MAX_RP_ID).
MAX_ENTITY_ID: Final = 200
#: SP metadata is a few kilobytes; a larger file is a mistake (or an aggregate).
MAX_METADATA_BYTES: Final = 256 * 1024
MAX_URL: Final = 1000

#: Attributes an SP may be given (registered per SP), by their neutral names
#: (gateway.idp.saml.attributes); the BSN is not among them: it travels as the NameID of
#: --bsn SPs, the DigiD form. The older names surname, given_names and birth_date are
#: accepted too and stored as family_name, given_name and birthdate.
RELEASABLE_ATTRIBUTES: Final = attributes.RELEASABLE
ACCEPTED_ATTRIBUTE_NAMES: Final = (*attributes.RELEASABLE, *attributes.ALIASES)

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
    dtd_validation=False,
)


class MetadataError(ValueError):
    """SP metadata that cannot be registered; the message says which rule, for an operator."""


@dataclass(frozen=True)
class Endpoint:
    binding: str
    location: str
    index: int | None = None
    is_default: bool = False


@dataclass(frozen=True)
class SpMetadata:
    """What the IdP uses of an SP's metadata."""

    entity_id: str
    acs: tuple[Endpoint, ...]
    slo: tuple[Endpoint, ...]
    want_authn_requests_signed: bool
    signing_certificates: tuple[x509.Certificate, ...]
    encryption_certificates: tuple[x509.Certificate, ...]

    def find_acs(
        self, url: str | None, binding: str | None, index: int | None
    ) -> Endpoint | None:
        """The endpoint an AuthnRequest asks for, or None when it names one not in metadata.

        SAML 2.0 Core 3.4.1: by URL (and ProtocolBinding), by index, or the default
        (Metadata 2.2.3: isDefault, else the first without isDefault="false", else the first).
        """
        if url is not None:
            for endpoint in self.acs:
                if endpoint.location == url and binding in (None, endpoint.binding):
                    return endpoint
            return None
        if index is not None:
            return next((e for e in self.acs if e.index == index), None)
        candidates = [e for e in self.acs if binding in (None, e.binding)]
        for endpoint in candidates:
            if endpoint.is_default:
                return endpoint
        return candidates[0] if candidates else None

    def slo_endpoint(self, binding: str) -> Endpoint | None:
        return next((e for e in self.slo if e.binding == binding), None)


class SamlServiceProvider(Base):
    __tablename__ = "saml_service_providers"

    # Every lookup (each AuthnRequest) is by primary key.
    entity_id: Mapped[str] = mapped_column(sa.String(MAX_ENTITY_ID), primary_key=True)
    metadata_xml: Mapped[str] = mapped_column(sa.Text)
    #: SHA-256 of the metadata: the IdP rebuilds its pysaml2 server when any of them change.
    metadata_sha256: Mapped[str] = mapped_column(sa.String(64))
    bsn: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    #: JSON list of names from RELEASABLE_ATTRIBUTES.
    attributes: Mapped[str] = mapped_column(sa.Text, default="[]")
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """Neutral names (a registration stored under an older name is read as the new one)."""
        names = (attributes.canonical(str(n)) for n in json.loads(self.attributes))
        return tuple(dict.fromkeys(n for n in names if n is not None))

    @property
    def parsed(self) -> SpMetadata:
        return parse_metadata(self.metadata_xml.encode("utf-8"))


# --- metadata -----------------------------------------------------------------------------


def _parse_xml(data: bytes) -> etree._Element:
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataError("metadata is too large")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError:
        raise MetadataError("metadata is not well-formed XML") from None
    tree = root.getroottree()
    if getattr(tree.docinfo, "doctype", "") or tree.docinfo.internalDTD is not None:
        raise MetadataError("metadata must not carry a DOCTYPE")
    if any(isinstance(node, etree._Entity) for node in root.iter()):
        raise MetadataError("metadata must not carry entity references")
    return root


def _check_url(url: str, what: str) -> str:
    url = url.strip()
    if not url or len(url) > MAX_URL or any(ord(c) < 33 for c in url):
        raise MetadataError(f"{what}: not a usable URL")
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.username or parts.password or not host or parts.fragment:
        raise MetadataError(f"{what}: not a usable URL")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and _loopback(host):
        return url  # a developer's SP on this machine
    raise MetadataError(f"{what}: must be an https URL")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _certificates(descriptor: etree._Element, use: str) -> tuple[x509.Certificate, ...]:
    found: list[x509.Certificate] = []
    for kd in descriptor.findall(f"{{{MD_NS}}}KeyDescriptor"):
        kd_use = kd.get("use")
        if kd_use not in (None, use):
            continue
        for element in kd.iter(f"{{{DS_NS}}}X509Certificate"):
            text = "".join((element.text or "").split())
            try:
                cert = x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise MetadataError("metadata holds a certificate that cannot be read") from None
            if not isinstance(cert.public_key(), rsa.RSAPublicKey):
                raise MetadataError("only RSA certificates are supported")
            found.append(cert)
    return tuple(found)


def parse_metadata(data: bytes) -> SpMetadata:
    """Read an SP's EntityDescriptor; raises MetadataError naming the rule it breaks."""
    root = _parse_xml(data)
    if root.tag != f"{{{MD_NS}}}EntityDescriptor":
        raise MetadataError("metadata must be one md:EntityDescriptor")
    entity_id = (root.get("entityID") or "").strip()
    if not entity_id or len(entity_id) > MAX_ENTITY_ID:
        raise MetadataError(f"entityID must be 1 to {MAX_ENTITY_ID} characters")
    if any(ord(c) < 32 for c in entity_id):
        raise MetadataError("entityID must not contain control characters")
    descriptors = [
        d for d in root.findall(f"{{{MD_NS}}}SPSSODescriptor")
        if PROTOCOL in (d.get("protocolSupportEnumeration") or "").split()
    ]
    if len(descriptors) != 1:
        raise MetadataError("metadata must have exactly one SAML 2.0 SPSSODescriptor")
    sp = descriptors[0]
    acs: list[Endpoint] = []
    for element in sp.findall(f"{{{MD_NS}}}AssertionConsumerService"):
        binding = element.get("Binding") or ""
        if binding not in ACS_BINDINGS:
            continue  # e.g. PAOS: this IdP never answers that way
        raw_index = element.get("index") or ""
        if not raw_index.isdigit() or len(raw_index) > 5:
            raise MetadataError("AssertionConsumerService: index must be a number")
        acs.append(
            Endpoint(
                binding=binding,
                location=_check_url(element.get("Location") or "", "AssertionConsumerService"),
                index=int(raw_index),
                is_default=(element.get("isDefault") or "").strip() in ("true", "1"),
            )
        )
    if not acs:
        raise MetadataError(
            "metadata must name an AssertionConsumerService with the HTTP-POST or "
            "HTTP-Artifact binding"
        )
    if len({e.index for e in acs}) != len(acs):
        raise MetadataError("AssertionConsumerService indexes must be unique")
    slo = tuple(
        Endpoint(
            binding=element.get("Binding") or "",
            location=_check_url(element.get("Location") or "", "SingleLogoutService"),
        )
        for element in sp.findall(f"{{{MD_NS}}}SingleLogoutService")
        if element.get("Binding") in SLO_BINDINGS
    )
    want_signed = (sp.get("AuthnRequestsSigned") or "").strip() in ("true", "1")
    signing = _certificates(sp, "signing")
    if want_signed and not signing:
        raise MetadataError("AuthnRequestsSigned is true but the metadata has no signing key")
    return SpMetadata(
        entity_id=entity_id,
        acs=tuple(acs),
        slo=slo,
        want_authn_requests_signed=want_signed,
        signing_certificates=signing,
        encryption_certificates=_certificates(sp, "encryption"),
    )


# --- the registry -------------------------------------------------------------------------


def _check_attributes(names: Iterable[str]) -> list[str]:
    result: list[str] = []
    for raw in names:
        name = attributes.canonical(raw)
        if name is None:
            raise MetadataError(
                f"--attribute: {raw[:40]!r} is not one of {', '.join(RELEASABLE_ATTRIBUTES)}"
            )
        if name not in result:
            result.append(name)
    return result


def register(
    db: Session, metadata: bytes, *, bsn: bool = False, attributes: Sequence[str] = ()
) -> SamlServiceProvider:
    """Register an SP, or replace the metadata and settings of one already registered (an SP
    that rolls its keys over registers its new metadata the same way)."""
    parsed = parse_metadata(metadata)
    released = _check_attributes(attributes)
    text = metadata.decode("utf-8")
    row = db.get(SamlServiceProvider, parsed.entity_id)
    if row is None:
        row = SamlServiceProvider(entity_id=parsed.entity_id, added_at=clock.now())
        db.add(row)
    row.metadata_xml = text
    row.metadata_sha256 = hashlib.sha256(metadata).hexdigest()
    row.bsn = bsn
    row.attributes = json.dumps(released)
    db.flush()
    return row


def get_sp(db: Session, entity_id: str) -> SamlServiceProvider | None:
    if not entity_id or len(entity_id) > MAX_ENTITY_ID:
        return None
    return db.get(SamlServiceProvider, entity_id)


def list_sps(db: Session) -> list[SamlServiceProvider]:
    return list(db.scalars(sa.select(SamlServiceProvider).order_by(SamlServiceProvider.entity_id)))


def fingerprint(db: Session) -> str:
    """Changes whenever an SP is added, removed or re-registered (the IdP's cache key)."""
    rows = db.execute(
        sa.select(SamlServiceProvider.entity_id, SamlServiceProvider.metadata_sha256)
        .order_by(SamlServiceProvider.entity_id)
    ).all()
    digest = hashlib.sha256()
    for entity_id, sha in rows:
        digest.update(entity_id.encode() + b"\x00" + sha.encode() + b"\x00")
    return digest.hexdigest()


def remove(db: Session, entity_id: str) -> bool:
    row = get_sp(db, entity_id)
    if row is None:
        return False
    db.delete(row)
    db.flush()
    return True
