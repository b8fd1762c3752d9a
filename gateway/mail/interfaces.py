"""The mail interface: what a sender accepts (`MailMessage`), what it promises (`MailSender`) and
how it fails (`MailError`).

Modelled on pypi/warehouse's `email/interfaces.py`: one interface, several implementations chosen
by a setting (GATEWAY_MAIL_URL), the domain errors beside the interface, and a contract test that
runs every implementation (tests/test_mail.py).

A `MailMessage` is checked when it is made, so no implementation ever sees a message that could
inject a header (CR, LF or any other line break in the subject or the recipient; RFC 5322
section 2.2 forbids them in a header body) or a recipient that is not a plain address.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gateway import metrics
from gateway.mail.addresses import InvalidAddress, ascii_address

#: A subject longer than this is a bug, not a message: RFC 5322 section 2.1.1 asks for lines of
#: at most 78 characters; a longer subject gets folded, but nothing we send needs more than this.
MAX_SUBJECT_CHARS = 200

#: Metrics label values must be a small, fixed vocabulary (no personal data in labels).
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


#: Messages by kind, sender ("smtp", "outbox") and outcome ("sent", "retryable", "failed").
MAIL_MESSAGES = metrics.counter(
    "mail_messages_total",
    "Mail messages handed to the next hop (the SMTP relay or the outbox).",
    ("kind", "sender", "outcome"),
)


def count(kind: str, sender: str, error: MailError | None = None) -> None:
    outcome = "sent" if error is None else ("retryable" if error.retryable else "failed")
    MAIL_MESSAGES.labels(kind=kind, sender=sender, outcome=outcome).inc()


class MailError(Exception):
    """A message could not be handed on.

    `retryable` tells the caller whether the same message may go through later without anyone
    changing the configuration (the relay is down, a 4xx answer, a dropped connection), or
    whether retrying is pointless (a 5xx refusal, bad credentials, a malformed message).
    The text never contains the recipient or the body: it may end up in a log.
    """

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class InvalidMessage(MailError, ValueError):
    """The message itself is unacceptable (header injection, bad recipient); never retryable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=False)


def _has_line_break_or_control(value: str) -> bool:
    # str.splitlines() also splits on \v, \f, \x1c-\x1e, \x85, U+2028 and U+2029; any of those in
    # a header could be turned into a line break by some mail agent on the way.
    if len(value.splitlines()) > 1 or value.endswith(("\r", "\n")):
        return True
    return any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value)


@dataclass(frozen=True)
class MailMessage:
    """One plain-text mail (with an optional HTML alternative) to one recipient.

    `kind` names the message for metrics ("test", "phone_changed", ...): lower-case letters,
    digits and underscores only.
    """

    # Kept out of repr(): the recipient and the body are personal data and must not reach a log.
    to: str = field(repr=False)
    subject: str
    text: str = field(repr=False)
    html: str | None = field(default=None, repr=False)
    kind: str = "other"

    def __post_init__(self) -> None:
        if not isinstance(self.to, str) or _has_line_break_or_control(self.to):
            raise InvalidMessage("the recipient contains a line break or control character")
        try:
            ascii_address(self.to)
        except InvalidAddress:
            raise InvalidMessage("the recipient is not a valid e-mail address") from None
        if not isinstance(self.subject, str) or _has_line_break_or_control(self.subject):
            raise InvalidMessage("the subject contains a line break or control character")
        if not self.subject.strip():
            raise InvalidMessage("the subject is empty")
        if len(self.subject) > MAX_SUBJECT_CHARS:
            raise InvalidMessage(f"the subject is longer than {MAX_SUBJECT_CHARS} characters")
        if not isinstance(self.text, str) or not self.text.strip():
            raise InvalidMessage("the text is empty")
        if "\x00" in self.text or (self.html is not None and "\x00" in self.html):
            raise InvalidMessage("the body contains a NUL character")
        if not _KIND.match(self.kind):
            raise InvalidMessage("the kind must be a short lower-case identifier")


@runtime_checkable
class MailSender(Protocol):
    """Hands a message on for delivery, or raises `MailError`.

    Returning means the message was accepted by the next hop (the SMTP relay, or the outbox
    file); it does not mean it was delivered. Implementations are safe to call from several
    threads and processes at once.

    Example::

        get_mail().send(MailMessage(to="a@example.org", subject="Hallo", text="...", kind="test"))
    """

    def send(self, msg: MailMessage) -> None: ...
