"""The eIDAS service provider's own key pairs: one to sign AuthnRequests and metadata, one
that nodes encrypt assertions to.

Kept apart from the gateway's rotating OIDC/SAML keys (`gateway.keys`) on purpose: an eIDAS
node caches the SP's metadata and encrypts to the certificate it last saw, so the decryption
key must outlive any rotation schedule of the IdP keys; and the eIDAS cryptographic
requirements (v1.2, section 2.2) ask for RSA keys of at least 3072 bits, stronger than the
IdP's 2048. The pairs live in `$GATEWAY_INSTANCE_DIR/eidas-sp/` (folder 0700, keys 0600),
created on first start; replacing them is an operator's job (publish the new metadata first).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway import clock

FOLDER: Final = "eidas-sp"
#: eIDAS Cryptographic Requirements v1.2, section 2.2: RSA moduli of 3072 bits or more.
RSA_BITS: Final = 3072
CERT_VALIDITY: Final = timedelta(days=3 * 365)
USES: Final = ("signing", "encryption")


@dataclass(frozen=True)
class KeyPair:
    use: str
    key_path: Path
    cert_path: Path

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def certificate_b64(self) -> str:
        """The DER certificate in base64, as ds:X509Certificate carries it."""
        pem = self.cert_path.read_text("ascii")
        return "".join(line for line in pem.splitlines() if "-----" not in line)


@dataclass(frozen=True)
class SpKeys:
    signing: KeyPair
    encryption: KeyPair


def load_or_create(instance_dir: Path, entity_id: str) -> SpKeys:
    """The SP's key pairs, created (race-free across workers) when missing."""
    folder = instance_dir / FOLDER
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    pairs = {use: KeyPair(use, folder / f"{use}-key.pem", folder / f"{use}-cert.pem")
             for use in USES}
    with _locked(folder / ".lock"):
        for pair in pairs.values():
            if not (pair.key_path.exists() and pair.cert_path.exists()):
                _create(pair, entity_id, clock.now())
    return SpKeys(signing=pairs["signing"], encryption=pairs["encryption"])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _create(pair: KeyPair, entity_id: str, now: datetime) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    host = entity_id.split("://", 1)[-1].split("/", 1)[0] or "abroad-gateway"
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "abroad-gateway eIDAS SP"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{pair.use} {host}"[:64]),
    ])
    signing = pair.use == "signing"
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=signing, content_commitment=False,
                key_encipherment=not signing, data_encipherment=False, key_agreement=False,
                key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(pair.key_path, key_pem, 0o600)
    _write(pair.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
