"""Outgoing mail: notifications to citizens and staff (issue 5, item 8).

An interface with two implementations, chosen by GATEWAY_MAIL_URL (pypi/warehouse's pattern):
`smtp://` or `smtps://` gives `SmtpMailSender` (gateway/mail/smtp.py), `outbox` gives
`OutboxMailSender` (gateway/mail/outbox.py). `init_app` builds the sender at start-up, so a
malformed mail variable stops the gateway with a `SettingsError` naming it; `get_mail()` returns
it afterwards. `send_template` renders the bilingual templates in gateway/templates/mail/;
`validate_email` is the address check forms use.
"""

from __future__ import annotations

from flask import Flask

from gateway.mail.addresses import InvalidAddress, validate_email
from gateway.mail.interfaces import InvalidMessage, MailError, MailMessage, MailSender
from gateway.mail.outbox import OutboxMailSender
from gateway.mail.smtp import SMTP_TIMEOUT_SECONDS, SmtpConfig, SmtpMailSender
from gateway.mail.templates import TemplateNotFound, render_template, send_template
from gateway.settings import Settings

__all__ = [
    "SMTP_TIMEOUT_SECONDS",
    "InvalidAddress",
    "InvalidMessage",
    "MailError",
    "MailMessage",
    "MailSender",
    "OutboxMailSender",
    "SmtpConfig",
    "SmtpMailSender",
    "TemplateNotFound",
    "get_mail",
    "init_app",
    "make_sender",
    "render_template",
    "send_template",
    "validate_email",
]

_EXTENSION = "gateway.mail"


def make_sender(settings: Settings) -> MailSender:
    """The sender GATEWAY_MAIL_URL names; raises `SettingsError` on a malformed mail setting."""
    if settings.mail_url == "outbox":
        return OutboxMailSender(settings.mail_outbox)
    return SmtpMailSender(SmtpConfig.from_settings(settings))


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions[_EXTENSION] = make_sender(settings)


def get_mail(app: Flask | None = None) -> MailSender:
    """The app's mail sender (the current app's when `app` is None)."""
    from flask import current_app

    sender: MailSender = (app or current_app).extensions[_EXTENSION]
    return sender
