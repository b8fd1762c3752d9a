"""The eIDAS node's metadata: fetched with a short timeout, parsed, cached with an expiry.

SAML 2.0 Metadata (sections 2.3-2.4.3) as the eIDAS Interoperability Architecture (v1.2,
section 5) uses it: the node publishes an EntityDescriptor with an IDPSSODescriptor whose
SingleSignOnService (HTTP-POST) takes our AuthnRequests and whose signing KeyDescriptors are
the only keys a Response or Assertion may be signed with (a certificate inside a message is
never used). The metadata URL is the node's entity ID.

A node that cannot be reached at the start of a login is a normal event, not an error of
ours: `NodeUnavailable` tells the route to say "not available now, choose another way". A
copy fetched earlier is used until it expires (`metadata_cache_seconds`, bounded by the
document's validUntil); after a failed fetch the last good copy keeps serving for up to
`STALE_GRACE`, so a short outage of the metadata endpoint does not stop logins.
"""

from __future__ import annotations

import calendar
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import requests
from lxml import etree
from saml2.sigver import SignatureError
from saml2.time_util import str_to_time

from gateway import clock

log = logging.getLogger(__name__)

MD_NS: Final = "urn:oasis:names:tc:SAML:2.0:metadata"
DS_NS: Final = "http://www.w3.org/2000/09/xmldsig#"
BINDING_POST: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
#: Metadata of one node is a few kilobytes; a bigger answer is not metadata.
MAX_METADATA_BYTES: Final = 512 * 1024
#: How long the last good copy serves after fetches start failing.
STALE_GRACE: Final = timedelta(minutes=30)

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
    dtd_validation=False,
)

Fetcher = Callable[[str, float], bytes]


class NodeUnavailable(Exception):
    """The node's metadata cannot be had now (unreachable, slow, or not usable metadata)."""


@dataclass(frozen=True)
class NodeInfo:
    entity_id: str
    sso_url: str
    #: PEM files of the node's signing certificates (written under the SP's key folder,
    #: because the crypto backend reads certificates from files).
    signing_cert_files: tuple[str, ...]
    fetched_at: datetime
    valid_until: datetime | None


def http_fetch(url: str, timeout: float) -> bytes:
    """GET `url` with `timeout` for connecting and for each read, at most MAX_METADATA_BYTES."""
    try:
        with requests.get(url, timeout=(timeout, timeout), stream=True,
                          allow_redirects=False) as answer:
            if answer.status_code != 200:
                raise NodeUnavailable(f"metadata answered HTTP {answer.status_code}")
            body = b""
            for chunk in answer.iter_content(64 * 1024):
                body += chunk
                if len(body) > MAX_METADATA_BYTES:
                    raise NodeUnavailable("metadata too large")
            return body
    except requests.RequestException as exc:
        raise NodeUnavailable(f"metadata fetch failed ({type(exc).__name__})") from None


def parse_metadata(
    data: bytes, cert_dir: Path, now: datetime, *, trust: tuple[str, ...] = (),
    backend: SignatureVerifier | None = None,
) -> NodeInfo:
    """The node's metadata as `NodeInfo`, or NodeUnavailable saying why it cannot be used.

    `trust` (PEM files) given, the EntityDescriptor must carry an enveloped signature by one
    of them (`backend` verifies it), and it must be the document's only signature.
    """
    if len(data) > MAX_METADATA_BYTES:
        raise NodeUnavailable("metadata too large")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError:
        raise NodeUnavailable("metadata is not well-formed XML") from None
    docinfo = root.getroottree().docinfo
    if getattr(docinfo, "doctype", "") or docinfo.internalDTD is not None:
        raise NodeUnavailable("metadata carries a DTD")
    if root.tag != f"{{{MD_NS}}}EntityDescriptor":
        raise NodeUnavailable("metadata is not an EntityDescriptor")
    if trust:
        if backend is None:
            raise ValueError("checking the metadata's signature needs a backend")
        _check_signed(data, root, trust, backend)
    entity_id = root.get("entityID") or ""
    idp = root.find(f"{{{MD_NS}}}IDPSSODescriptor")
    if not entity_id or idp is None:
        raise NodeUnavailable("metadata names no identity provider")
    valid_until = _time(root.get("validUntil"))
    if valid_until is not None and valid_until <= now:
        raise NodeUnavailable("metadata has expired")
    sso_url = next(
        (e.get("Location") or "" for e in idp.findall(f"{{{MD_NS}}}SingleSignOnService")
         if e.get("Binding") == BINDING_POST),
        "",
    )
    if not sso_url.startswith(("https://", "http://")):
        raise NodeUnavailable("metadata has no HTTP-POST SingleSignOnService")
    certs: list[str] = []
    for descriptor in idp.findall(f"{{{MD_NS}}}KeyDescriptor"):
        if descriptor.get("use") not in (None, "signing"):
            continue
        for element in descriptor.iter(f"{{{DS_NS}}}X509Certificate"):
            text = "".join((element.text or "").split())
            if text:
                certs.append(_cert_file(cert_dir, text))
    if not certs:
        raise NodeUnavailable("metadata has no signing certificate")
    return NodeInfo(entity_id, sso_url, tuple(dict.fromkeys(certs)), now, valid_until)


class SignatureVerifier(Protocol):
    """What `parse_metadata` needs of the crypto backend
    (`gateway.idp.saml.crypto.CryptoBackendXmlSecInProcess`)."""

    def validate_signature(self, signedtext: Any, cert_file: str, cert_type: str,
                           node_name: str, node_id: str | None) -> bool: ...


def _check_signed(
    data: bytes, root: etree._Element, trust: tuple[str, ...], backend: SignatureVerifier
) -> None:
    """The document element is signed by a trust anchor, and nothing else is signed: one
    ds:Signature, a child of the EntityDescriptor, over the EntityDescriptor itself (by its ID,
    or the whole document without one). A signature elsewhere could be one a wrapped copy
    carries (SAML security considerations, XML signature wrapping)."""
    signatures = list(root.iter(f"{{{DS_NS}}}Signature"))
    if len(signatures) != 1 or signatures[0].getparent() is not root:
        raise NodeUnavailable("metadata is not signed by its EntityDescriptor alone")
    if next(root.iter(f"{{{DS_NS}}}Object"), None) is not None:
        raise NodeUnavailable("metadata signature carries a ds:Object")
    for cert_file in trust:
        try:
            # The bytes as fetched: the backend parses them as lxml did here, whatever
            # encoding the XML declaration names.
            if backend.validate_signature(
                data, cert_file, "pem", f"{MD_NS}:EntityDescriptor", root.get("ID"),
            ):
                return
        except SignatureError:
            continue
    raise NodeUnavailable("metadata signature does not verify with a trusted certificate")


def _cert_file(cert_dir: Path, b64: str) -> str:
    body = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    pem = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode("ascii")
    path = cert_dir / f"node-{hashlib.sha256(pem).hexdigest()[:32]}.pem"
    if not path.exists():
        cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pem)
        tmp.replace(path)
    return str(path)


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(str_to_time(value)), tz=clock.now().tzinfo)
    except (ValueError, TypeError, OverflowError):
        raise NodeUnavailable("metadata has a malformed validUntil") from None


class NodeMetadataCache:
    """One node's metadata for one app; thread-safe; `fetch` is replaceable for tests."""

    def __init__(self, url: str, cert_dir: Path, *, max_age: timedelta, timeout: float,
                 fetch: Fetcher = http_fetch, trust: tuple[str, ...] = (),
                 backend: SignatureVerifier | None = None) -> None:
        self.url = url
        self.cert_dir = cert_dir
        self.trust = trust
        self.backend = backend
        self.max_age = max_age
        self.timeout = timeout
        self.fetch = fetch
        self._lock = threading.Lock()
        self._current: NodeInfo | None = None

    def _fresh(self, info: NodeInfo | None, now: datetime, age: timedelta) -> bool:
        if info is None or now - info.fetched_at >= age:
            return False
        return info.valid_until is None or info.valid_until > now

    def get(self) -> NodeInfo:
        """The node's metadata, fetched when the cached copy is too old; NodeUnavailable."""
        now = clock.now()
        current = self._current
        if self._fresh(current, now, self.max_age):
            assert current is not None
            return current
        with self._lock:
            current = self._current
            if self._fresh(current, now, self.max_age):
                assert current is not None
                return current
            try:
                info = parse_metadata(self.fetch(self.url, self.timeout), self.cert_dir, now,
                                      trust=self.trust, backend=self.backend)
            except NodeUnavailable as exc:
                log.warning("eIDAS node metadata unavailable: %s", exc)
                if current is not None and self._fresh(current, now, self.max_age + STALE_GRACE):
                    return current
                raise
            self._current = info
            return info

    def cached(self) -> NodeInfo | None:
        """The last good copy while it may still be used (for checking a late answer)."""
        current = self._current
        if self._fresh(current, clock.now(), self.max_age + STALE_GRACE):
            return current
        return None
