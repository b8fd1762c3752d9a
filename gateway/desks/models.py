"""Tables for applications, document checks, desk staff and four-eyes requests.

An application moves through the states in `gateway.desks.applications`; desk codes are
stored only as an HMAC (looked up through its unique index, so finding an application by code
needs no comparison in Python at all). Every desk action also lands in the audit log.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from gateway.accounts.models import new_id
from gateway.db import Base, UTCDateTime


class Application(Base):
    __tablename__ = "applications"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    desk_code_hmac: Mapped[str] = mapped_column(sa.String(64), unique=True)
    desk_code_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    bsn: Mapped[str] = mapped_column(sa.String(9), index=True)
    birth_date: Mapped[date] = mapped_column(sa.Date)
    nationality: Mapped[str] = mapped_column(sa.String(3))
    phone_e164: Mapped[str] = mapped_column(sa.String(20))
    phone_channel: Mapped[str] = mapped_column(sa.String(8))
    email: Mapped[str] = mapped_column(sa.String(254))
    language: Mapped[str] = mapped_column(sa.String(2))
    username: Mapped[str] = mapped_column(sa.String(64))
    username_key: Mapped[str] = mapped_column(sa.String(64), index=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    #: The desk the citizen chose (policy code); any desk may process it.
    chosen_desk: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(sa.ForeignKey("staff_accounts.id"))
    decided_desk: Mapped[str | None] = mapped_column(sa.String(16))
    reject_reason: Mapped[str | None] = mapped_column(sa.String(500))
    account_id: Mapped[str | None] = mapped_column(sa.ForeignKey("accounts.id"))


class DocumentCheck(Base):
    __tablename__ = "document_checks"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    application_id: Mapped[str] = mapped_column(
        sa.ForeignKey("applications.id", ondelete="CASCADE"), index=True
    )
    officer_id: Mapped[str] = mapped_column(sa.ForeignKey("staff_accounts.id"))
    desk: Mapped[str] = mapped_column(sa.String(16))
    document_type: Mapped[str] = mapped_column(sa.String(16))
    issuing_country: Mapped[str] = mapped_column(sa.String(3))
    document_number: Mapped[str] = mapped_column(sa.String(20))
    expiry_date: Mapped[date] = mapped_column(sa.Date)
    mrz: Mapped[str | None] = mapped_column(sa.String(100))
    passed: Mapped[bool] = mapped_column(sa.Boolean)
    #: Problem codes found (empty when passed), for the officer and the audit trail.
    problems: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StaffRole(StrEnum):
    OFFICER = "officer"
    SUPERVISOR = "supervisor"
    AUDITOR = "auditor"


class StaffAccount(Base):
    __tablename__ = "staff_accounts"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    desk: Mapped[str] = mapped_column(sa.String(16), index=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    #: The TOTP secret, sealed with a key derived from GATEWAY_SECRET_KEY (gateway.crypto).
    totp_secret_sealed: Mapped[str] = mapped_column(sa.String(255))
    #: Last accepted TOTP time step: a code is never accepted twice (RFC 6238 section 5.2).
    last_totp_step: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    role: Mapped[str] = mapped_column(sa.String(16))
    must_change_password: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(sa.Integer, default=0)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class FourEyesKind(StrEnum):
    REISSUE_ACTIVATION = "reissue_activation"
    CHANGE_PHONE = "change_phone"
    UNBLOCK_ACCOUNT = "unblock_account"
    LINK_EIDAS = "link_eidas"
    #: Lift a desk's suspension (gateway.desks.suspension) after an identity check.
    LIFT_SUSPENSION = "lift_suspension"


class FourEyesStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REFUSED = "refused"


class DeskActionReason(Base):
    """Why a desk member took an action that needs no second person (suspending an account,
    removing a European eID link; gateway.desks.suspension, gateway.desks.eidas_links).

    Free text, so it is kept beside the audit log rather than in it: an entry of the hash
    chain can never be changed or erased, and a reason may name a person. `audit_seq` is the
    entry that says who did what to which object, and when; the reason, at most 500
    characters, was checked like a four-eyes request's.
    """

    __tablename__ = "desk_action_reasons"

    audit_seq: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("audit_log.seq"), primary_key=True, autoincrement=False
    )
    reason: Mapped[str] = mapped_column(sa.String(500))


class FourEyesRequest(Base):
    __tablename__ = "four_eyes_requests"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(sa.String(32))
    desk: Mapped[str] = mapped_column(sa.String(16), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), default=FourEyesStatus.PENDING)
    requested_by: Mapped[str] = mapped_column(sa.ForeignKey("staff_accounts.id"))
    #: What it acts on: "account:<id>" or "application:<id>".
    object_ref: Mapped[str] = mapped_column(sa.String(80))
    #: What the action needs (a new phone number, ...); never a code.
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    reason: Mapped[str] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(sa.ForeignKey("staff_accounts.id"))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
