"""The demo portal's own key material and addresses.

A relying party proves who it is with keys of its own, never with the gateway's: the portal
signs its SAML AuthnRequests and LogoutRequests with an RSA key whose certificate it publishes
in its SP metadata (SAML 2.0 Metadata 2.4.4), and it authenticates at the OIDC token endpoint
with `private_key_jwt` (OIDC Core 9, RFC 7523), the client authentication the Dutch NL GOV
Assurance profile for OpenID Connect requires. Both keys are generated once into
`<instance>/portal/` (folder 0700, private keys 0600) and kept across demo runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import RSAKey

from gateway import clock
from gateway.settings import Settings

#: The portal's OIDC client id and the last part of its SAML entity ID.
CLIENT_ID: Final = "demo-portal"
DEFAULT_PORTAL_URL: Final = "http://127.0.0.1:8001"
#: `app.config` key through which `gateway demo` tells the seeder where the portal listens.
PORTAL_URL_CONFIG: Final = "GATEWAY_DEMO_PORTAL_URL"
RSA_BITS: Final = 2048
#: A demo key; a real relying party rolls its certificate over well before this.
CERT_VALIDITY: Final = timedelta(days=3 * 365)
SAML_KEY_FILE: Final = "saml-sp-key.pem"
SAML_CERT_FILE: Final = "saml-sp-cert.pem"
OIDC_KEY_FILE: Final = "oidc-client-key.pem"


@dataclass(frozen=True)
class PortalKeys:
    saml_key_pem: str
    saml_cert_pem: str
    oidc_key: RSAKey

    def oidc_public_jwks(self) -> dict[str, object]:
        """What the gateway registers for the client: the public half only."""
        public = self.oidc_key.as_dict(private=False)
        return {"keys": [{**public, "use": "sig", "alg": "RS256"}]}


@dataclass(frozen=True)
class PortalAddresses:
    """Where the portal listens and where it finds the gateway."""

    portal_url: str
    gateway_url: str

    @property
    def entity_id(self) -> str:
        return self.portal_url + "/saml/metadata"

    @property
    def acs_url(self) -> str:
        return self.portal_url + "/saml/acs"

    @property
    def sls_url(self) -> str:
        return self.portal_url + "/saml/sls"

    @property
    def oidc_callback(self) -> str:
        return self.portal_url + "/oidc/callback"

    @property
    def oidc_logged_out(self) -> str:
        return self.portal_url + "/oidc/logged-out"


def check_base_url(url: str, what: str) -> str:
    """An http(s) origin without path, query or credentials; trailing slash removed."""
    url = url.rstrip("/")
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https") or not parts.hostname or parts.path
        or parts.query or parts.fragment or parts.username or parts.password
    ):
        raise ValueError(f"{what}: must be an http(s) origin such as {DEFAULT_PORTAL_URL}")
    return url


def key_dir(settings: Settings) -> Path:
    return settings.instance_dir / "portal"


def _write_private(path: Path, data: bytes) -> None:
    # O_EXCL: never overwrite a key another process wrote a moment ago.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_keys(settings: Settings) -> PortalKeys:
    """Load the portal's keys, creating any that are missing."""
    folder = key_dir(settings)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    saml_key, saml_cert, oidc_key = (
        folder / SAML_KEY_FILE, folder / SAML_CERT_FILE, folder / OIDC_KEY_FILE,
    )
    if not saml_key.exists() or not saml_cert.exists():
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "abroad-gateway demo portal")])
        now = clock.now()
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + CERT_VALIDITY)
            .sign(key, hashes.SHA256())
        )
        saml_key.unlink(missing_ok=True)
        saml_cert.unlink(missing_ok=True)
        _write_private(saml_key, _pem(key))
        _write_private(saml_cert, cert.public_bytes(serialization.Encoding.PEM))
    if not oidc_key.exists():
        _write_private(oidc_key, _pem(_new_key()))
    jwk = RSAKey.import_key(oidc_key.read_bytes(), {"use": "sig", "alg": "RS256"})
    jwk.ensure_kid()
    return PortalKeys(
        saml_key_pem=saml_key.read_text(encoding="ascii"),
        saml_cert_pem=saml_cert.read_text(encoding="ascii"),
        oidc_key=jwk,
    )
