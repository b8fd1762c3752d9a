"""The OpenID Connect provider (issue 6): authorization-code flow only, PKCE S256 required.

- `clients`: the client registry (model, registration rules, authlib's ClientMixin view);
- `subjects`: pairwise subject identifiers (OIDC Core 1.0 section 8.1);
- `tokens`: grants, authorization codes, access and refresh tokens, ID tokens and their
  encryption (OIDC Core 1.0 sections 2, 3.1.3, 10.2, 12; RFC 9700);
- `provider`: authlib's AuthorizationServer glue (grants, client authentication, PKCE) and
  the authorization request's checks (RFC 6749 section 4.1, OIDC Core 1.0 section 3.1.2);
- `views`: the endpoints as a Flask blueprint; `cli`: `gateway rp ...`.
"""

from __future__ import annotations

from flask import Flask

from gateway.settings import Settings


def init_app(app: Flask, settings: Settings) -> None:
    from gateway.idp.oidc.views import init_app as init_views

    init_views(app, settings)
