"""`gateway rp add-saml --metadata FILE [--bsn] [--attribute NAME ...]` (shared/INTERFACE.md).

Registers (or re-registers) a SAML service provider from its metadata and prints its entity
ID. Added to the `rp` group of gateway/idp/oidc/cli.py by gateway/cli.py. `gateway rp list`
and `gateway rp remove` (in that module) cover SAML SPs through `list_rows` and `remove_sp`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from gateway.cli import Failure, load_app, one_line_errors
from gateway.idp.saml import registry


@click.command("add-saml")
@click.option("--metadata", "metadata_file", required=True, help="The SP's metadata XML file.")
@click.option("--bsn", is_flag=True, help="A government service that receives the BSN.")
@click.option(
    "--attribute", "attributes", multiple=True,
    type=click.Choice(list(registry.ACCEPTED_ATTRIBUTE_NAMES)),
    help="An attribute the SP receives (repeatable; docs/saml-idp.md lists their SAML names).",
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


def list_rows(db: Session) -> Iterator[dict[str, Any]]:
    """One JSON-ready object per registered SAML SP, for `gateway rp list`."""
    for row in registry.list_sps(db):
        try:
            parsed = row.parsed
        except registry.MetadataError:  # stored before a stricter rule: still listed
            acs: list[dict[str, str]] = []
            encrypted = False
        else:
            acs = [{"binding": e.binding, "location": e.location} for e in parsed.acs]
            encrypted = bool(parsed.encryption_certificates)
        yield {
            "protocol": "saml",
            "entity_id": row.entity_id,
            "bsn": row.bsn,
            "attributes": list(row.attribute_names),
            "acs": acs,
            "encrypted_assertions": encrypted,
            "added_at": row.added_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def remove_sp(db: Session, entity_id: str) -> bool:
    """Remove a SAML SP (audited); False when none has that entity ID. The IdP stops
    answering it at once: its pysaml2 server is rebuilt when the SP table changes."""
    from gateway import audit
    from gateway.app import get_settings

    if not registry.remove(db, entity_id):
        return False
    audit.record(
        db, actor="cli", role="operator", desk=None, action="saml.sp.remove",
        object_ref=entity_id[:100], outcome="ok", settings=get_settings(),
    )
    return True
