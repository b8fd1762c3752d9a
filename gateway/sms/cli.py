"""`gateway sms ...`: operators check the SMS/voice set-up (issue 3, item 6).

- `gateway sms test --to NUMBER` sends a short test message (no code) through the configured
  providers, with failover, exactly as a code would travel, and says which provider took it.
  It is an operator's command: the per-person abuse limits do not apply, the phone policy does.
- `gateway sms outbox` prints the development outbox (GATEWAY_SMS_OUTBOX).
"""

from __future__ import annotations

import json
import uuid

import click

TEST_TEXT = (
    "Testbericht van {service} ({host}). U hoeft niets te doen.\n"
    "Test message from {service} ({host}). No action needed."
)


@click.group()
def sms() -> None:
    """SMS and voice providers."""


@sms.command("test")
@click.option("--to", "to", required=True, help="Phone number, as a person would type it.")
@click.option(
    "--channel", type=click.Choice(["sms", "voice"]), default=None,
    help="Override the channel the phone policy chooses.",
)
def sms_test(to: str, channel: str | None) -> None:
    """Send a test message through GATEWAY_SMS_PROVIDER and report the result."""
    # Imported here: gateway.cli imports this module to add the group.
    from gateway.app import get_policies
    from gateway.cli import Failure, load_app
    from gateway.db import get_db
    from gateway.sms.dispatch import DeliveryFailed, get_dispatcher
    from gateway.sms.messages import SERVICE_NAME
    from gateway.sms.phone import PhoneRejected, parse_phone

    app = load_app()
    with app.app_context():
        try:
            phone = parse_phone(to, get_policies(app).sms)
        except PhoneRejected as exc:
            raise Failure(f"--to: refused by the phone policy ({exc.reason})") from None
        dispatcher = get_dispatcher(app)
        settings = dispatcher.settings
        text = TEST_TEXT.format(service=SERVICE_NAME, host=settings.issuer_host)
        try:
            with get_db(app).begin() as session:
                message = dispatcher.send(
                    session,
                    to=phone.e164,
                    channel=channel or phone.channel.value,
                    text=text,
                    purpose="test",
                    idempotency_key=f"cli-test:{uuid.uuid4()}",
                )
        except DeliveryFailed as exc:
            detail = "; ".join(exc.reasons) or exc.reason
            raise Failure(f"test message not sent ({detail})") from None
        click.echo(
            f"test message {message.id} ({message.channel}) accepted by {message.provider}"
            f" after {message.attempts} attempt(s); status {message.status}"
        )


@sms.command("outbox")
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the last N messages.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON lines.")
def sms_outbox(last: int | None, as_json: bool) -> None:
    """Print the development SMS outbox, oldest first."""
    from gateway.cli import load_settings
    from gateway.sms.providers.outbox import read_outbox

    settings = load_settings()
    entries = list(read_outbox(settings.sms_outbox))
    if last is not None:
        entries = entries[-last:]
    if not entries:
        click.echo(f"the SMS outbox is empty ({settings.sms_outbox})")
        return
    for entry in entries:
        if as_json:
            click.echo(json.dumps(entry, ensure_ascii=False))
            continue
        sent_at, channel, to = (entry.get(k, "?") for k in ("sent_at", "channel", "to"))
        click.echo(f"{sent_at}  {channel:<5}  {to}")
        for line in str(entry.get("text", "")).splitlines() or [""]:
            click.echo(f"    {line}")
