"""`gateway rp ...`: register, list and remove relying parties (shared/INTERFACE.md).

`gateway rp add-oidc --client-id ID --redirect-uri URI [...] [--public] [--bsn]
[--claims given_name,family_name,... | profile,address]` prints one
JSON object with `client_id` and, for confidential clients using a secret, `client_secret`
(shown once: only its HMAC is kept). Every refusal is one line naming the option.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from gateway.cli import Failure, load_app, one_line_errors
from gateway.idp.oidc import clients as registry
from gateway.levels import Level


@click.group()
def rp() -> None:
    """Relying parties: OIDC clients and SAML service providers."""


def _read(path: str | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Failure(f"{option}: cannot read {path} ({type(exc).__name__})") from None


@rp.command("add-oidc")
@click.option("--client-id", required=True)
@click.option("--redirect-uri", "redirect_uris", multiple=True, required=True)
@click.option("--public", is_flag=True, help="A public client (no secret; PKCE only).")
@click.option("--bsn", is_flag=True, help="A government service that receives the BSN.")
@click.option(
    "--auth-method",
    type=click.Choice([m.value for m in registry.AuthMethod]),
    help="Token endpoint authentication (default: client_secret_basic, or none with --public).",
)
@click.option("--post-logout-redirect-uri", "logout_uris", multiple=True)
@click.option("--jwks", "jwks_file", type=str, help="File with the client's public JWK Set.")
@click.option(
    "--min-level", type=click.Choice([lv.label for lv in Level]), default="basis",
    show_default=True,
)
@click.option("--sector-identifier", help="Share pairwise subjects with other clients.")
@click.option("--id-token-alg", type=click.Choice(list(registry.SIGNING_ALGS)), default="RS256",
              show_default=True)
@click.option("--encryption-jwk", "encryption_file", type=str,
              help="File with the client's public RSA key for encrypted ID tokens.")
@click.option("--backchannel-logout-uri")
@click.option(
    "--claims", "claims", multiple=True,
    help="Personal attributes it may receive (from an eID), comma-separated claim names or"
    " the scopes profile and address; none by default.",
)
@one_line_errors
def add_oidc(
    client_id: str,
    redirect_uris: tuple[str, ...],
    public: bool,
    bsn: bool,
    auth_method: str | None,
    logout_uris: tuple[str, ...],
    jwks_file: str | None,
    min_level: str,
    sector_identifier: str | None,
    id_token_alg: str,
    encryption_file: str | None,
    backchannel_logout_uri: str | None,
    claims: tuple[str, ...],
) -> None:
    """Register an OpenID Connect client; prints its client_id (and client_secret)."""
    from gateway import audit
    from gateway.app import get_settings
    from gateway.db import get_db

    app = load_app()
    try:
        jwks_text = _read(jwks_file, "--jwks")
        encryption_text = _read(encryption_file, "--encryption-jwk")
        jwks = registry.parse_jwks(jwks_text) if jwks_text is not None else None
        encryption = (
            registry.parse_encryption_jwk(encryption_text) if encryption_text is not None
            else None
        )
        with app.app_context(), get_db(app).begin() as db:
            registration = registry.register(
                db, get_settings(app), client_id=client_id, redirect_uris=redirect_uris,
                public=public, bsn=bsn, auth_method=auth_method,
                post_logout_redirect_uris=logout_uris, jwks=jwks,
                min_level=Level.from_label(min_level), sector_identifier=sector_identifier,
                id_token_alg=id_token_alg, encryption_jwk=encryption,
                backchannel_logout_uri=backchannel_logout_uri, claims=claims,
            )
            audit.record(
                db, actor="cli", role="operator", desk=None, action="oidc.client.add",
                object_ref=client_id[:100], outcome="ok", settings=get_settings(app),
            )
    except (registry.ClientError, audit.AuditDataError) as exc:
        raise Failure(str(exc)) from None
    out: dict[str, str] = {"client_id": registration.client.client_id}
    if registration.client_secret is not None:
        out["client_secret"] = registration.client_secret
    click.echo(json.dumps(out))


@rp.command("list")
@one_line_errors
def list_command() -> None:
    """List registered OIDC clients and SAML SPs, one JSON object a line (no secrets)."""
    from gateway.db import get_db
    from gateway.idp.saml.cli import list_rows as saml_rows

    app = load_app()
    with app.app_context(), get_db(app).begin() as db:
        for row in registry.list_clients(db):
            click.echo(
                json.dumps(
                    {
                        "protocol": "oidc",
                        "client_id": row.client_id,
                        "public": row.public,
                        "token_endpoint_auth_method": row.token_endpoint_auth_method,
                        "redirect_uris": json.loads(row.redirect_uris),
                        "bsn": row.bsn,
                        "claims": json.loads(row.claims or "[]"),
                        "min_level": Level(row.min_level).label,
                    }
                )
            )
        for saml_row in saml_rows(db):
            click.echo(json.dumps(saml_row))


@rp.command("remove")
@click.argument("client_id")
@click.option("--protocol", type=click.Choice(["oidc", "saml"]),
              help="Which kind of relying party (needed only when both have this ID).")
@one_line_errors
def remove_command(client_id: str, protocol: str | None) -> None:
    """Remove an OIDC client (by client_id) or a SAML SP (by entity ID); it stops working at
    once (an OIDC client's grants and tokens too)."""
    from gateway import audit
    from gateway.app import get_settings
    from gateway.db import get_db
    from gateway.idp.saml import registry as saml_registry
    from gateway.idp.saml.cli import remove_sp

    app = load_app()
    with app.app_context(), get_db(app).begin() as db:
        is_oidc = protocol != "saml" and db.get(registry.OidcClient, client_id) is not None
        is_saml = protocol != "oidc" and saml_registry.get_sp(db, client_id) is not None
        if is_oidc and is_saml:
            raise Failure("CLIENT_ID: both an OIDC client and a SAML SP have this ID; "
                          "add --protocol oidc or --protocol saml")
        if is_saml:
            remove_sp(db, client_id)
        elif not is_oidc or not registry.remove_client(db, client_id):
            raise Failure(f"CLIENT_ID: no relying party {client_id[:100]!r} is registered")
        else:
            audit.record(
                db, actor="cli", role="operator", desk=None, action="oidc.client.remove",
                object_ref=client_id[:100], outcome="ok", settings=get_settings(app),
            )
    click.echo(f"removed {client_id}")
