"""`gateway rp add-saml --metadata FILE [--bsn] [--attribute NAME ...]` (shared/INTERFACE.md).

Registers (or re-registers) a SAML service provider from its metadata and prints its entity
ID. Added to the `rp` group of gateway/idp/oidc/cli.py by gateway/cli.py.
"""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli import Failure, load_app, one_line_errors
from gateway.idp.saml import registry


@click.command("add-saml")
@click.option("--metadata", "metadata_file", required=True, help="The SP's metadata XML file.")
@click.option("--bsn", is_flag=True, help="A government service that receives the BSN.")
@click.option(
    "--attribute", "attributes", multiple=True,
    type=click.Choice(list(registry.RELEASABLE_ATTRIBUTES)),
    help="An attribute the SP receives (repeatable).",
)
@one_line_errors
def add_saml(metadata_file: str, bsn: bool, attributes: tuple[str, ...]) -> None:
    """Register a SAML service provider from its metadata; prints its entity ID."""
    from gateway import audit
    from gateway.app import get_settings
    from gateway.db import get_db

    try:
        data = Path(metadata_file).read_bytes()
    except OSError as exc:
        raise Failure(f"--metadata: cannot read {metadata_file} ({type(exc).__name__})") from None
    app = load_app()
    try:
        with app.app_context(), get_db(app).begin() as db:
            row = registry.register(db, data, bsn=bsn, attributes=attributes)
            entity_id = row.entity_id
            audit.record(
                db, actor="cli", role="operator", desk=None, action="saml.sp.add",
                object_ref=entity_id[:100], outcome="ok", settings=get_settings(app),
            )
    except registry.MetadataError as exc:
        raise Failure(f"--metadata: {exc}") from None
    except audit.AuditDataError as exc:
        raise Failure(str(exc)) from None
    click.echo(entity_id)
