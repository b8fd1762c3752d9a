"""`gateway desk officer add`: making a desk staff account (shared/INTERFACE.md, "Command line").

Prints the one-time password, the TOTP provisioning URI and that URI as a QR code drawn in
text, once: only the argon2id hash of the password and the sealed TOTP seed are stored.
Every refusal is one line and a non-zero exit (the options are checked here rather than by
click, whose usage errors take several lines).
"""

from __future__ import annotations

import io

import click


def qr_text(data: str) -> str:
    """`data` as a QR code in block characters, dark on light, for a terminal."""
    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(data)
    qr.make(fit=True)
    out = io.StringIO()
    # invert: most terminals draw light text on a dark background; scanners want dark modules.
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


@click.group()
def desk() -> None:
    """Desks: staff accounts."""


@desk.group()
def officer() -> None:
    """Desk staff accounts (officers, supervisors, auditors)."""


@officer.command("add")
@click.option("--desk", "desk_code", default="", help="Desk code from policies/desks.yaml.")
@click.option("--username", default="", help="Login name: a-z, 0-9, '.', '_' or '-'.")
@click.option(
    "--role", default="officer", show_default=True, help="officer, supervisor or auditor."
)
def officer_add(desk_code: str, username: str, role: str) -> None:
    """Create a staff account; prints its one-time password and TOTP enrolment, once."""
    # Imported here: gateway.cli imports this module to add the group.
    from sqlalchemy.exc import DBAPIError

    from gateway.app import get_policies, get_settings
    from gateway.cli import Failure, load_app
    from gateway.db import get_db
    from gateway.desks.staff import StaffError, create_staff

    if not desk_code:
        raise Failure("--desk: give the code of a desk from the desks policy")
    if not username:
        raise Failure("--username: give a login name")
    app = load_app()
    database = get_db(app)
    with app.app_context():
        session = database.sessionmaker()
        try:
            new = create_staff(
                session, get_settings(app), get_policies(app),
                desk=desk_code, username=username, role=role,
            )
        except StaffError as exc:
            raise Failure(str(exc)) from None
        except DBAPIError as exc:
            raise Failure(
                "GATEWAY_DATABASE_URL: cannot store the account "
                f"({type(exc.orig).__name__}; has `gateway db upgrade` run?)"
            ) from None
        finally:
            session.close()
            database.dispose()

    staff = new.staff
    click.echo(f"Staff account {staff.username} ({staff.role}) at desk {staff.desk} created.")
    click.echo("Shown once, never stored in clear: hand it to its owner in person.")
    click.echo("")
    click.echo(f"One-time password (must be changed at first login): {new.one_time_password}")
    click.echo(f"TOTP provisioning URI: {new.provisioning_uri}")
    click.echo("")
    click.echo("Scan with an authenticator app:")
    click.echo(qr_text(new.provisioning_uri))
