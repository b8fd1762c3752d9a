"""`gateway register ...`: filling the table-backed population register (issue 4, item 2).

Errors are one line (gateway.cli.Failure) and never quote values from the file: the output of
an import may be kept in a job log, and the file is full of BSNs.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def register() -> None:
    """The population register (table-backed stand-in for the BRP/RNI)."""


@register.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def register_import(file: Path) -> None:
    """Import FILE.csv (header: bsn,surname,given_names,date_of_birth,nationality,non_resident).

    Every line is checked first; one bad line and nothing is imported. People are inserted or
    updated by BSN; people not in the file are kept.
    """
    # Imported here: gateway.cli imports this module to add the group.
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.cli import Failure, load_app
    from gateway.db import get_db
    from gateway.desks.register import RegisterImportError, import_csv

    app = load_app()
    try:
        with file.open(encoding="utf-8", newline="") as fh, get_db(app).begin() as session:
            report = import_csv(session, fh)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise Failure(f"{file}: cannot be read ({reason})") from None
    except RegisterImportError as exc:
        raise Failure(f"{file}: {exc}") from None
    except SQLAlchemyError:
        # The driver's message may quote row values (BSNs): name the likely cause instead.
        raise Failure(
            "GATEWAY_DATABASE_URL: cannot write the register; is the database reachable and"
            " up to date (gateway db upgrade)?"
        ) from None
    click.echo(
        f"imported {report.rows} people: {report.inserted} new, {report.updated} updated,"
        f" {report.unchanged} unchanged"
    )
