"""One row per message handed to the SMS/voice providers: its status, provider and attempts.

Issue 3, item 4: "each message's status (queued, sent, delivered, failed) and provider
recorded". The text is NEVER stored: it holds a one-time code.

The number is not stored in clear either: `to_hmac` is an HMAC-SHA256 of the E.164 number under
`derive_key("sms-phone")` plus its last two digits. This table lists every number that received
a code; in clear, a copy of it would be a directory of citizens abroad and their phones. With the
HMAC, support can still find a person's messages (compute the HMAC of the number the caller
gives, `phone_hmac`) and the last two digits let them confirm the number with the caller.

Status transitions (`ALLOWED`; a report never moves a message backwards):

    queued --> sent --> delivered
       |        |-----> undeliverable
       |        '-----> failed        (the SMSC rejected it)
       '-----> failed --> sent / delivered / undeliverable   (a late report from a provider
                                                               that timed out but did deliver)
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db import Base, UTCDateTime
from gateway.settings import Settings
from gateway.sms.keyed import keyed_hmac

PHONE_KEY_PURPOSE = "sms-phone"


class Status(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    UNDELIVERABLE = "undeliverable"


#: new status -> the statuses it may replace.
ALLOWED: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.FAILED}),  # a retry with the same idempotency key
    Status.SENT: frozenset({Status.QUEUED, Status.FAILED}),
    Status.DELIVERED: frozenset({Status.QUEUED, Status.SENT, Status.FAILED}),
    Status.UNDELIVERABLE: frozenset({Status.QUEUED, Status.SENT, Status.FAILED}),
    Status.FAILED: frozenset({Status.QUEUED, Status.SENT}),
}


def can_move(old: Status | str, new: Status | str) -> bool:
    return Status(old) in ALLOWED[Status(new)]


def phone_hmac(settings: Settings, e164: str) -> str:
    key = settings.derive_key(PHONE_KEY_PURPOSE)
    return keyed_hmac(key).hexdigest(e164.encode())


def key_hash(idempotency_key: str) -> str:
    # Hashed, so a caller's key never needs to be treated as a secret once stored.
    return hashlib.sha256(b"sms-idempotency:" + idempotency_key.encode()).hexdigest()


class SmsMessage(Base):
    __tablename__ = "sms_messages"
    __table_args__ = (
        # Every send looks its idempotency key up first (also what makes a retry safe).
        sa.UniqueConstraint("idempotency_hash", name="uq_sms_messages_idempotency_hash"),
        # Support: "which messages went to this number?".
        sa.Index("ix_sms_messages_to_hmac_created_at", "to_hmac", "created_at"),
        # `gateway purge` (delivery records past their period): without it every run scans
        # the whole table once (gateway.purge).
        sa.Index("ix_sms_messages_created_at", "created_at"),
        sa.CheckConstraint(
            "status IN ('queued', 'sent', 'delivered', 'failed', 'undeliverable')",
            name="status",
        ),
        sa.CheckConstraint("channel IN ('sms', 'voice')", name="channel"),
    )

    #: Our id (uuid4 hex with dashes); also in the delivery-report URL.
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    to_hmac: Mapped[str] = mapped_column(sa.String(64))
    to_last2: Mapped[str] = mapped_column(sa.String(2))
    #: ISO 3166-1 alpha-2 region of the number ("ZZ" when unknown): aggregates and budgets.
    country: Mapped[str] = mapped_column(sa.String(2))
    channel: Mapped[str] = mapped_column(sa.String(8))
    purpose: Mapped[str] = mapped_column(sa.String(40))
    #: SMS parts billed (1 for a voice call).
    segments: Mapped[int] = mapped_column(sa.Integer)
    idempotency_hash: Mapped[str] = mapped_column(sa.String(64))
    #: HMAC of key and text: a retry under the same key must carry the same text (the same
    #: code); the text itself is never stored.
    text_hmac: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16), default=Status.QUEUED.value)
    #: The provider that accepted it (or the last one tried).
    provider: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    provider_message_id: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    #: Provider calls made, over every provider and retry.
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: The last provider error, a fixed phrase such as "kannel: timeout" (never the text).
    error: Mapped[str | None] = mapped_column(sa.String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"SmsMessage(id={self.id!r}, status={self.status!r}, provider={self.provider!r})"
