"""`gateway mail ...`: checking the mail set-up from the command line."""

from __future__ import annotations

import click

from gateway.i18n import LANGUAGES


@click.group()
def mail() -> None:
    """Outgoing mail."""


@mail.command("test")
@click.option("--to", "to", required=True, help="Address to send the test mail to.")
@click.option("--lang", "language", type=click.Choice(LANGUAGES), default="nl", show_default=True)
def mail_test(to: str, language: str) -> None:
    """Send the `test` mail through GATEWAY_MAIL_URL and report the result."""
    # Imported here: gateway.cli imports this module to add the group.
    from gateway.cli import Failure, load_app
    from gateway.mail import InvalidAddress, MailError, get_mail, send_template, validate_email

    try:
        address = validate_email(to)
    except InvalidAddress as exc:
        raise Failure(f"--to: {exc}") from None
    app = load_app()
    with app.app_context():
        try:
            send_template(address, "test", language)
        except MailError as exc:
            hint = "try again later" if exc.retryable else "check the mail settings"
            raise Failure(f"mail not sent: {exc.reason} ({hint})") from None
        click.echo(f"test mail handed to {get_mail()!r}")
