"""The pysaml2 `Server` of this IdP, built from settings, the signing keys and the registered SPs,
and its signed metadata (SAML 2.0 Metadata, sections 2.3-2.4.3; SAML 2.0 Bindings 3.4-3.6).

The server is cached per app and rebuilt when its inputs change: the active key, the
published certificates (a rotation adds one, a retirement drops one) or any SP's metadata.
Those are checked on every use (one stat(2) of the key manifest and one indexed query of
the SP table), so a `gateway keys rotate` or `gateway rp add-saml` in another process is
picked up on the next request.

Signing goes through the in-process backend (`gateway.idp.saml.crypto`). pysaml2 reads its
signing and digest algorithms from the service section, so they are set there (and RSA-SHA1,
pysaml2's default, is refused by the backend if they ever go missing).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from flask import Flask, current_app
from saml2 import md
from saml2.config import IdPConfig
from saml2.metadata import entity_descriptor, sign_entity_descriptor
from saml2.server import Server
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256, KeyInfo, X509Certificate, X509Data
from sqlalchemy.orm import Session

from gateway import clock
from gateway.idp.saml import registry
from gateway.idp.saml.crypto import backend_from_settings, pysaml2_backend_name, use_crypto
from gateway.keys import KeyStore
from gateway.settings import Settings

#: Paths of the IdP's endpoints; their URLs are the issuer plus these.
METADATA_PATH: Final = "/saml/idp/metadata"
SSO_PATH: Final = "/saml/idp/sso"
SLO_PATH: Final = "/saml/idp/slo"
ARTIFACT_PATH: Final = "/saml/idp/artifact"
#: The index of the one ArtifactResolutionService in the metadata. SAML 2.0 Bindings 3.6.4:
#: an artifact's EndpointIndex names the *issuer's* resolution endpoint (not the SP's ACS),
#: and SPs such as django-digid-eherkenning look the endpoint up by it.
ARTIFACT_RESOLUTION_INDEX: Final = 1

#: How long relying parties may trust a copy of the metadata. A rotated key stays published
#: for keys.RETIRE_AFTER (7 days); metadata valid for as long means an SP that refreshes
#: when its copy expires always knows the key signing its assertions.
METADATA_VALIDITY: Final = timedelta(days=7)
#: How often SPs should fetch the metadata again (the root's cacheDuration, SAML metadata
#: 2.3.2). A new key is listed keys.PUBLISH_BEFORE_SIGN (2 days) before it signs: an SP that
#: refreshes as asked has it well before then, while validUntil lets one that cannot reach
#: us keep working on its copy.
METADATA_CACHE_DURATION: Final = timedelta(hours=12)
#: Assertion lifetime (NotOnOrAfter of conditions and subject confirmation): DigiD uses about
#: 4 minutes; long enough for a slow browser POST, short enough to limit replay.
ASSERTION_LIFETIME: Final = timedelta(minutes=4)
#: Clock skew tolerated between the gateway and an SP (IssueInstant of requests).
MAX_CLOCK_SKEW: Final = timedelta(minutes=3)

EXTENSION: Final = "gateway.saml.idp"

SIGNING: Final = {"signing_algorithm": SIG_RSA_SHA256, "digest_algorithm": DIGEST_SHA256}


def entity_id(settings: Settings) -> str:
    return settings.issuer + METADATA_PATH


def endpoint(settings: Settings, path: str) -> str:
    return settings.issuer + path


def _config(settings: Settings, keys: KeyStore, sps: list[registry.SamlServiceProvider]) -> Any:
    key = keys.active("RS256")
    assert key.cert_path is not None
    backend = backend_from_settings(settings)
    sso = endpoint(settings, SSO_PATH)
    slo = endpoint(settings, SLO_PATH)
    return IdPConfig().load(
        {
            "entityid": entity_id(settings),
            "key_file": str(key.key_path),
            "cert_file": str(key.cert_path),
            "crypto_backend": pysaml2_backend_name(backend),
            "accepted_time_diff": int(MAX_CLOCK_SKEW.total_seconds()),
            **SIGNING,
            "service": {
                "idp": {
                    "endpoints": {
                        "single_sign_on_service": [
                            (sso, registry.BINDING_REDIRECT),
                            (sso, registry.BINDING_POST),
                        ],
                        "single_logout_service": [
                            (slo, registry.BINDING_REDIRECT),
                            (slo, registry.BINDING_SOAP),
                        ],
                        "artifact_resolution_service": [
                            (endpoint(settings, ARTIFACT_PATH), registry.BINDING_SOAP,
                             ARTIFACT_RESOLUTION_INDEX),
                        ],
                    },
                    "name_id_format": [
                        "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
                        "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
                    ],
                    # Checked per SP by the views (registry.SpMetadata), not globally.
                    "want_authn_requests_signed": False,
                    "policy": {
                        "default": {
                            "lifetime": {"minutes": int(ASSERTION_LIFETIME.total_seconds() // 60)},
                            "name_form": "urn:oasis:names:tc:SAML:2.0:attrname-format:basic",
                        }
                    },
                    **SIGNING,
                }
            },
            "metadata": {"inline": [sp.metadata_xml for sp in sps]} if sps else {},
        }
    )


@dataclass(frozen=True)
class Idp:
    """A built server and the inputs it was built from."""

    stamp: tuple[str, ...]
    server: Server


class IdpCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Idp | None = None

    def get(self, settings: Settings, keys: KeyStore, db: Session) -> Server:
        stamp = _stamp(keys, db)
        current = self._current
        if current is not None and current.stamp == stamp:
            return current.server
        with self._lock:
            current = self._current
            if current is None or current.stamp != stamp:
                server = build_server(settings, keys, registry.list_sps(db))
                current = Idp(stamp, server)
                self._current = current
        return current.server


def _stamp(keys: KeyStore, db: Session) -> tuple[str, ...]:
    kids = tuple(hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()
                 for c in keys.certificates())
    return (keys.active("RS256").kid, *kids, registry.fingerprint(db))


def build_server(
    settings: Settings, keys: KeyStore, sps: list[registry.SamlServiceProvider]
) -> Server:
    config = _config(settings, keys, sps)
    server: Server = use_crypto(Server(config=config), backend_from_settings(settings))
    return server


def get_server(app: Flask | None = None, db: Session | None = None) -> Server:
    from gateway import db as database
    from gateway.app import get_settings
    from gateway.keys import get_keys

    app = app or current_app
    cache: IdpCache = app.extensions[EXTENSION]
    return cache.get(get_settings(app), get_keys(app), db or database.session())


def metadata_xml(settings: Settings, keys: KeyStore, server: Server) -> str:
    """The IdP's EntityDescriptor, signed with the active key.

    Every published certificate (the active one, and a retiring one until its retire_at) is
    listed for signing and for encryption, so SPs can roll over to a new key before it signs.
    """
    descriptor = entity_descriptor(server.config)
    descriptor.valid_until = (clock.now() + METADATA_VALIDITY).strftime("%Y-%m-%dT%H:%M:%SZ")
    descriptor.cache_duration = f"PT{int(METADATA_CACHE_DURATION.total_seconds())}S"
    key_descriptors = []
    for cert in keys.certificates():
        text = "".join(
            cert.public_bytes(serialization.Encoding.PEM).decode().splitlines()[1:-1]
        )
        for use in ("signing", "encryption"):
            key_descriptors.append(
                md.KeyDescriptor(
                    use=use,
                    key_info=KeyInfo(x509_data=X509Data(x509_certificate=X509Certificate(text=text))),
                )
            )
    idp_descriptor = descriptor.idpsso_descriptor
    if isinstance(idp_descriptor, list):
        idp_descriptor = idp_descriptor[0]
    idp_descriptor.key_descriptor = key_descriptors
    idp_descriptor.want_authn_requests_signed = None  # decided per SP
    _, signed = sign_entity_descriptor(descriptor, None, server.sec, **_sign_args())
    return str(signed)


def _sign_args() -> dict[str, str]:
    return {"sign_alg": SIG_RSA_SHA256, "digest_alg": DIGEST_SHA256}


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = IdpCache()
