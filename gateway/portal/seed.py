"""`gateway demo`: register the demo portal with the gateway, as its operator would.

The OIDC client `demo-portal` authenticates with private_key_jwt (its public key registered,
no shared secret) and receives the `bsn` claim; the SAML SP is registered from the portal's
own metadata, entitled to the BSN (NameID `s00000000:<BSN>`) and to the name attributes.
Idempotent: each run registers the current addresses again (the portal may move port).
"""

from __future__ import annotations

from flask import Flask

from gateway.app import get_settings
from gateway.db import get_db
from gateway.idp.oidc import clients
from gateway.idp.saml import registry
from gateway.portal.keys import (
    CLIENT_ID,
    DEFAULT_PORTAL_URL,
    PORTAL_URL_CONFIG,
    PortalAddresses,
    check_base_url,
    ensure_keys,
)
from gateway.portal.saml_sp import REQUESTED_ATTRIBUTES, sp_metadata


def portal_addresses(app: Flask) -> PortalAddresses:
    return PortalAddresses(
        portal_url=check_base_url(app.config.get(PORTAL_URL_CONFIG, DEFAULT_PORTAL_URL),
                                  "portal URL"),
        gateway_url=get_settings(app).issuer,
    )


def seed_portal(app: Flask) -> list[str]:
    settings = get_settings(app)
    addresses = portal_addresses(app)
    keys = ensure_keys(settings)
    with get_db(app).begin() as db:
        clients.remove_client(db, CLIENT_ID)
        clients.register(
            db, settings, client_id=CLIENT_ID, redirect_uris=(addresses.oidc_callback,),
            auth_method=clients.AuthMethod.PRIVATE_KEY_JWT.value,
            jwks=keys.oidc_public_jwks(), bsn=True,
            post_logout_redirect_uris=(addresses.oidc_logged_out,),
        )
        registry.register(db, sp_metadata(addresses, keys), bsn=True,
                          attributes=REQUESTED_ATTRIBUTES)
    return [
        "",
        f"Demo portal (relying party): {addresses.portal_url}/",
        f"  OIDC client {CLIENT_ID} (private_key_jwt, bsn); "
        f"SAML SP {addresses.entity_id} (bsn)",
        "  Log in there as the demo citizen, or with an account you applied for and activated.",
    ]
