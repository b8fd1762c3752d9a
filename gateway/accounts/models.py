"""Tables for citizen accounts and their letter codes.

Letter codes: activation A, unblock D, recovery H, e-mail E.

An account is made when a desk approves an application (status `pending_activation`) and
becomes `active` when its owner types the activation code. Letter codes are stored only as an
HMAC (`gateway.desks.codes.code_hmac`), single use, with an expiry and an attempt count.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db import Base, UTCDateTime


def new_id() -> str:
    return str(uuid.uuid4())


class AccountStatus(StrEnum):
    PENDING_ACTIVATION = "pending_activation"
    ACTIVE = "active"
    DEACTIVATED = "deactivated"
    EXPIRED = "expired"


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    #: As the owner typed it; `username_key` (case-folded) is what is unique and looked up.
    username: Mapped[str] = mapped_column(sa.String(64))
    username_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    #: One account per BSN (a partial unique index would allow eIDAS-only accounts later).
    bsn: Mapped[str | None] = mapped_column(sa.String(9), unique=True)
    surname: Mapped[str] = mapped_column(sa.String(200))
    given_names: Mapped[str] = mapped_column(sa.String(200))
    birth_date: Mapped[date] = mapped_column(sa.Date)
    nationality: Mapped[str] = mapped_column(sa.String(3))
    phone_e164: Mapped[str | None] = mapped_column(sa.String(20), index=True)
    phone_channel: Mapped[str | None] = mapped_column(sa.String(8))
    phone_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email: Mapped[str | None] = mapped_column(sa.String(254))
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    language: Mapped[str] = mapped_column(sa.String(2), default="nl")
    status: Mapped[str] = mapped_column(sa.String(24), default=AccountStatus.PENDING_ACTIVATION)
    enrolled_desk: Mapped[str | None] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_logins: Mapped[int] = mapped_column(sa.Integer, default=0)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Blocks since the last successful login or unblock: each doubles the next block
    #: (gateway.accounts.service, backoff).
    block_count: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the owner last said the e-mail address is still right (asked every six months).
    email_confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Authenticator app (gateway.accounts.totp): the confirmed seed and a pending one, both
    #: sealed with gateway.crypto; the last accepted RFC 6238 time step (replay protection).
    totp_secret_sealed: Mapped[str | None] = mapped_column(sa.Text)
    totp_confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    totp_last_step: Mapped[int | None] = mapped_column(sa.BigInteger)
    totp_pending_sealed: Mapped[str | None] = mapped_column(sa.Text)
    totp_pending_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Wrong authenticator codes in a row; apart from failed_logins, which a right password
    #: clears, so that knowing the password never resets the count of guessed codes.
    totp_failures: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    #: "Tell me when someone logs in" (gateway.accounts.selfservice): a mail at every login.
    notify_logins: Mapped[bool] = mapped_column(
        sa.Boolean, default=False, server_default=sa.false()
    )
    #: A new e-mail address waiting for its E code (gateway.accounts.selfservice); the
    #: address in `email` stays in use until the code is typed.
    pending_email: Mapped[str | None] = mapped_column(sa.String(254))
    #: Suspended by a desk on suspected misuse (gateway.desks.suspension): no login, no
    #: unblock or recovery code until a four-eyes `lift_suspension` clears it.
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AccountCodeKind(StrEnum):
    ACTIVATION = "A"
    UNBLOCK = "D"
    RECOVERY = "H"
    EMAIL = "E"


class AccountCode(Base):
    __tablename__ = "account_codes"
    __table_args__ = (sa.Index(None, "account_id", "kind"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(sa.String(1))
    code_hmac: Mapped[str] = mapped_column(sa.String(64))
    #: How it reached the owner: sms, voice, letter or email.
    channel: Mapped[str] = mapped_column(sa.String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
