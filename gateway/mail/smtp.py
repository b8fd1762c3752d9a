"""Real mail through an SMTP relay (RFC 5321), with TLS by STARTTLS (RFC 3207) or implicit TLS
(RFC 8314 section 3.3), authentication (RFC 4954) and a well-formed MIME message (RFC 5322,
RFC 2045-2047; `Auto-Submitted: auto-generated` from RFC 3834 so that auto-responders stay quiet).

Settings (read at start-up; a malformed value stops start-up with a `SettingsError` naming it):

- GATEWAY_MAIL_URL `smtp://[user:password@]host[:port]` (port 25 by default; STARTTLS as below)
  or `smtps://[user:password@]host[:port]` (port 465 by default; TLS from the first byte).
- GATEWAY_MAIL_STARTTLS `required` | `opportunistic` | `off` (smtp:// only). Default:
  `required` in production, `opportunistic` in dev. `opportunistic` and `off` can be stripped or
  read by anyone on the path, so in production they are only accepted for a relay on loopback.
- GATEWAY_MAIL_USERNAME / GATEWAY_MAIL_PASSWORD: credentials, as an alternative to the URL's
  user-info (not both: which one wins would be a guess). Credentials are never sent over a
  connection without TLS, except to a relay on loopback.
- GATEWAY_MAIL_FROM: the sender address; default `noreply@<host name of GATEWAY_ISSUER>`.
- GATEWAY_MAIL_CA_FILE: a PEM file of CAs to trust for the relay's certificate instead of the
  system's (for a relay with a private CA). The certificate and its host name are always checked.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, make_msgid
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlsplit

import email_validator

from gateway import clock
from gateway.mail.addresses import InvalidAddress, ascii_address
from gateway.mail.interfaces import MailError, MailMessage, count
from gateway.settings import Settings, SettingsError, is_loopback_host

log = logging.getLogger(__name__)

#: Seconds for connecting and for each read or write on the connection. A relay that is down
#: must fail a request quickly, not hold a worker thread: granian has no per-request timeout, so
#: what a request waits for bounds it (this, the SMS and HTTP clients' timeouts, Redis's socket
#: timeout, SQLite's busy timeout).
SMTP_TIMEOUT_SECONDS = 10.0

DEFAULT_PORTS = {"smtp": 25, "smtps": 465}

_HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


class StartTls(StrEnum):
    REQUIRED = "required"
    OPPORTUNISTIC = "opportunistic"
    OFF = "off"


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    implicit_tls: bool
    starttls: StartTls
    username: str | None
    password: str | None
    sender: str
    ca_file: Path | None = None
    timeout: float = SMTP_TIMEOUT_SECONDS

    def __repr__(self) -> str:  # never show the password
        return (
            f"SmtpConfig(host={self.host!r}, port={self.port}, implicit_tls={self.implicit_tls}, "
            f"starttls={self.starttls.value!r}, username={'set' if self.username else None}, "
            f"sender={self.sender!r})"
        )

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpConfig:
        env = settings.environ
        parts = urlsplit(settings.mail_url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise SettingsError(
                "GATEWAY_MAIL_URL: must be 'outbox', smtp://host:port or smtps://host:port"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise SettingsError("GATEWAY_MAIL_URL: must not have a path, query or fragment")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise SettingsError(
                "GATEWAY_MAIL_URL: the port is not a number from 1 to 65535"
            ) from None
        host = parts.hostname

        implicit_tls = parts.scheme == "smtps"
        raw_starttls = env.get("GATEWAY_MAIL_STARTTLS", "").strip().lower()
        if raw_starttls:
            try:
                starttls = StartTls(raw_starttls)
            except ValueError:
                raise SettingsError(
                    "GATEWAY_MAIL_STARTTLS: must be 'required', 'opportunistic' or 'off'"
                ) from None
        else:
            starttls = StartTls.OPPORTUNISTIC if settings.dev else StartTls.REQUIRED

        url_user = unquote(parts.username) if parts.username else None
        url_password = unquote(parts.password) if parts.password is not None else None
        env_user = env.get("GATEWAY_MAIL_USERNAME") or None
        env_password = env.get("GATEWAY_MAIL_PASSWORD") or None
        if (url_user or url_password) and (env_user or env_password):
            raise SettingsError(
                "GATEWAY_MAIL_USERNAME: credentials are also in GATEWAY_MAIL_URL; give them once"
            )
        username = url_user or env_user
        password = url_password if url_user else env_password
        if bool(username) != bool(password):
            raise SettingsError(
                "GATEWAY_MAIL_PASSWORD: a user name needs a password and vice versa"
            )
        for name, value in (
            ("GATEWAY_MAIL_USERNAME", username),
            ("GATEWAY_MAIL_PASSWORD", password),
        ):
            # smtplib sends AUTH strings as ASCII; anything else would fail at the first mail.
            if value is not None and not (value.isascii() and value.isprintable()):
                raise SettingsError(f"{name}: must be printable ASCII")

        ca_file: Path | None = None
        if env.get("GATEWAY_MAIL_CA_FILE"):
            ca_file = Path(env["GATEWAY_MAIL_CA_FILE"])
            try:
                ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise SettingsError(
                    f"GATEWAY_MAIL_CA_FILE: cannot load {ca_file} ({exc})"
                ) from None

        config = cls(
            host=host,
            port=port,
            implicit_tls=implicit_tls,
            starttls=starttls,
            username=username,
            password=password,
            sender=_sender(settings),
            ca_file=ca_file,
        )
        if (
            not settings.dev
            and not implicit_tls
            and starttls is not StartTls.REQUIRED
            and not config.loopback
        ):
            raise SettingsError(
                "GATEWAY_MAIL_STARTTLS: must be 'required' in production"
                " unless the relay is on loopback"
            )
        return config


def _sender(settings: Settings) -> str:
    raw = settings.environ.get("GATEWAY_MAIL_FROM", "").strip()
    if raw:
        try:
            return (
                email_validator.validate_email(
                    raw,
                    allow_smtputf8=False,
                    allow_display_name=False,
                    allow_quoted_local=False,
                    check_deliverability=False,
                    globally_deliverable=False,
                    allow_domain_literal=True,
                    strict=True,
                ).ascii_email
                or ""
            )
        except email_validator.EmailNotValidError as exc:
            raise SettingsError(f"GATEWAY_MAIL_FROM: not a valid address ({exc})") from None
    host = (urlsplit(settings.issuer).hostname or "").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # an IP-address issuer (the demo): an address no one can reply to anyway
        return "noreply@localhost"
    if not _HOST_NAME.match(host):
        raise SettingsError(
            "GATEWAY_MAIL_FROM: required, the issuer's host name is not a mail domain"
        )
    return f"noreply@{host}"


def build_mime(msg: MailMessage, sender: str) -> EmailMessage:
    """The MIME form: UTF-8 quoted-printable (7-bit clean, so no relay needs 8BITMIME or
    SMTPUTF8), RFC 2047 encoded subject, a Message-ID in the sender's domain, and the Date
    from the gateway's clock."""
    mime = EmailMessage(policy=SMTP_POLICY)
    mime["From"] = sender
    mime["To"] = ascii_address(msg.to)
    mime["Subject"] = msg.subject
    mime["Date"] = format_datetime(clock.now())
    # make_msgid() would otherwise ask DNS for this machine's name.
    mime["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].strip("[]") or "localhost")
    mime["Auto-Submitted"] = "auto-generated"
    mime.set_content(msg.text, charset="utf-8", cte="quoted-printable")
    if msg.html is not None:
        mime.add_alternative(msg.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return mime


class SmtpMailSender:
    """Sends each message over its own connection: simple, and nothing to go stale between the
    rare notifications a login produces. Safe for concurrent use (no shared connection)."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._tls = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file else None
        )
        self._tls.minimum_version = ssl.TLSVersion.TLSv1_2

    def __repr__(self) -> str:
        return f"SmtpMailSender({self.config!r})"

    def send(self, msg: MailMessage) -> None:
        try:
            self._send(msg)
        except MailError as exc:
            count(msg.kind, "smtp", exc)
            raise
        count(msg.kind, "smtp")

    def _send(self, msg: MailMessage) -> None:
        try:
            to = ascii_address(msg.to)
        except InvalidAddress:
            raise MailError(
                "the recipient is not a valid e-mail address", retryable=False
            ) from None
        data = build_mime(msg, self.config.sender).as_bytes()
        try:
            with self._connect() as smtp:
                self._secure(smtp)
                if self.config.username and self.config.password:
                    smtp.login(self.config.username, self.config.password)
                smtp.sendmail(self.config.sender, [to], data)
        except MailError:
            log.warning("mail not sent: kind=%s", msg.kind)
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            # The exception holds the address: keep it out of the message and the log.
            codes = [code for code, _ in exc.recipients.values()]
            code = codes[0] if codes else 550
            log.warning("mail refused: kind=%s code=%s", msg.kind, code)
            raise MailError(
                f"the relay refused the recipient ({code})", retryable=400 <= code < 500
            ) from None
        except smtplib.SMTPAuthenticationError as exc:
            log.warning(
                "mail not sent: kind=%s authentication failed (%s)", msg.kind, exc.smtp_code
            )
            raise MailError(
                f"the relay refused the credentials ({exc.smtp_code})",
                retryable=400 <= exc.smtp_code < 500,
            ) from None
        except smtplib.SMTPResponseException as exc:
            log.warning("mail not sent: kind=%s code=%s", msg.kind, exc.smtp_code)
            raise MailError(
                f"the relay answered {exc.smtp_code}", retryable=400 <= exc.smtp_code < 500
            ) from None
        except smtplib.SMTPNotSupportedError:
            log.warning("mail not sent: kind=%s the relay lacks a required extension", msg.kind)
            raise MailError(
                "the relay does not support a required extension", retryable=False
            ) from None
        except ssl.SSLCertVerificationError as exc:
            log.warning(
                "mail not sent: kind=%s certificate not trusted (%s)", msg.kind, exc.verify_message
            )
            # Not retryable: the same certificate will fail the same way until someone acts.
            raise MailError("the relay's TLS certificate is not trusted", retryable=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            # Refused or dropped connections, time-outs, TLS failures: the relay may be back later.
            # smtplib reports a time-out while reading as SMTPServerDisconnected.
            timed_out = isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)
            cause = "timeout" if timed_out else type(exc).__name__
            log.warning("mail not sent: kind=%s %s", msg.kind, cause)
            raise MailError(f"cannot reach the mail relay ({cause})", retryable=True) from None
        log.info("mail sent: kind=%s", msg.kind)

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        # Our EHLO name: the sender's domain. Left to smtplib it would be socket.getfqdn(), a
        # DNS look-up outside the time-out.
        helo = c.sender.rpartition("@")[2] or "localhost"
        if c.implicit_tls:
            return smtplib.SMTP_SSL(
                c.host, c.port, local_hostname=helo, timeout=c.timeout, context=self._tls
            )
        return smtplib.SMTP(c.host, c.port, local_hostname=helo, timeout=c.timeout)

    def _secure(self, smtp: smtplib.SMTP) -> None:
        c = self.config
        encrypted = c.implicit_tls
        if not c.implicit_tls and c.starttls is not StartTls.OFF:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls(context=self._tls)
                smtp.ehlo()  # RFC 3207 section 4.2: forget what was said before TLS
                encrypted = True
            elif c.starttls is StartTls.REQUIRED:
                # Possibly someone on the path stripping STARTTLS: a later try may get through.
                raise MailError(
                    "the relay does not offer STARTTLS, which is required", retryable=True
                )
        if c.username and not encrypted and not c.loopback:
            raise MailError("refusing to send credentials without TLS", retryable=False)
