"""Sealing small secrets at rest (TOTP seeds) with AES-256-GCM under a key derived from
GATEWAY_SECRET_KEY, so a copy of the database alone does not yield them (OWASP ASVS 6.2).

The purpose is bound as associated data: a value sealed for one purpose does not open for
another. Format: base64url(nonce || ciphertext+tag), prefixed with a version tag.
"""

from __future__ import annotations

import base64
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.settings import Settings

_VERSION = "v1."


class SealError(Exception):
    """The sealed value is malformed or was sealed under another key or purpose."""


def seal(settings: Settings, purpose: str, plaintext: str) -> str:
    key = settings.derive_key("seal:" + purpose)
    nonce = secrets.token_bytes(12)
    ct = AESGCM(key).encrypt(nonce, plaintext.encode(), purpose.encode())
    return _VERSION + base64.urlsafe_b64encode(nonce + ct).decode().rstrip("=")


def unseal(settings: Settings, purpose: str, sealed: str) -> str:
    if not sealed.startswith(_VERSION):
        raise SealError("unknown sealed format")
    body = sealed[len(_VERSION):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        key = settings.derive_key("seal:" + purpose)
        return AESGCM(key).decrypt(raw[:12], raw[12:], purpose.encode()).decode()
    except (ValueError, InvalidTag, UnicodeDecodeError):
        raise SealError("cannot open the sealed value") from None
