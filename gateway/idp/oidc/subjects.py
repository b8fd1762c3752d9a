"""Pairwise subject identifiers (OpenID Connect Core 1.0 section 8.1).

`sub` = base64url(HMAC-SHA256(derive_key("oidc-pairwise-sub"), sector || 0x00 || subject_key)):
stable for one person and one sector, unlinkable across sectors without GATEWAY_SECRET_KEY,
and not reversible to the account id. The sector is fixed in the client's registration
(`clients.OidcClient.sector_identifier`: the client id unless several clients of one
organisation were registered to share a sector), so a changed redirect URI never changes
anyone's `sub`. There is no `public` subject type: a gateway-wide identifier would let relying
parties link their users; services that are entitled to identify a person get the BSN.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from gateway.settings import Settings

SUBJECT_PURPOSE = "oidc-pairwise-sub"
SUBJECT_TYPES_SUPPORTED = ("pairwise",)


def pairwise_sub(settings: Settings, sector: str, subject_key: str) -> str:
    mac = hmac.new(
        settings.derive_key(SUBJECT_PURPOSE),
        sector.encode() + b"\x00" + subject_key.encode(),
        hashlib.sha256,
    ).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
