"""Usage history of a citizen account: what "My account" shows (issue 5, item 7).

One row per event: a login (with the service, the level reached and the route), a change of
password, phone, e-mail or authenticator app, a block and its lifting, a suspension by a desk
and its lifting, activation, expiry.
The owner reads it to spot use they do not recognise, so it names the relying party by the
name the owner knows, never an internal id. Personal data other than the account id is not
stored here (no IP addresses, no phone numbers).

`record_event` adds the row to the caller's transaction (the change it describes and its
history entry commit together); `list_events` reads the newest first, through the index on
(account_id, at).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import cast

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway import clock
from gateway.db import Base, Prepared, UTCDateTime

#: `list_events` never returns more than this many rows at once.
MAX_LIST = 500
#: Column widths, checked in `record_event` so SQLite (which ignores them) and PostgreSQL agree.
MAX_SERVICE = 200
MAX_LEVEL = 16
MAX_ROUTE = 32


class EventKind(StrEnum):
    LOGIN = "login"
    ACTIVATED = "activated"
    PASSWORD_CHANGED = "password_changed"  # noqa: S105 - an event name
    PHONE_CHANGED = "phone_changed"
    EMAIL_CHANGED = "email_changed"
    EMAIL_CONFIRMED = "email_confirmed"
    TOTP_ADDED = "totp_added"
    TOTP_REMOVED = "totp_removed"
    EID_UNLINKED = "eid_unlinked"
    BLOCKED = "blocked"
    UNBLOCKED = "unblocked"
    DEACTIVATED = "deactivated"
    EXPIRED = "expired"
    #: A desk suspended the account on suspected misuse, and lifted that (four-eyes).
    SUSPENDED = "suspended"
    SUSPENSION_LIFTED = "suspension_lifted"


class AccountEvent(Base):
    __tablename__ = "account_events"
    # "My account" lists one account's events newest first.
    __table_args__ = (sa.Index(None, "account_id", "at"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(sa.String(32))
    #: The relying party's display name, for logins.
    service: Mapped[str | None] = mapped_column(sa.String(MAX_SERVICE))
    #: The level reached (`gateway.levels.Level` name: basis, midden, ...).
    level: Mapped[str | None] = mapped_column(sa.String(MAX_LEVEL))
    #: How the person authenticated: "sms", "voice", "totp", "password", "desk", ...
    route: Mapped[str | None] = mapped_column(sa.String(MAX_ROUTE))


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    # Control characters would garble the page that shows the history.
    clean = "".join(ch for ch in value if ch.isprintable())
    return clean[:limit] or None


def record_event(
    session: Session,
    account_id: str,
    kind: EventKind | str,
    *,
    service: str | None = None,
    level: str | None = None,
    route: str | None = None,
    at: datetime | None = None,
) -> None:
    """Add one event to the caller's transaction (written, not committed).

    Example::

        record_event(session, account.id, EventKind.LOGIN, service="Belastingdienst",
                     level="midden", route="sms")
    """
    # What the session holds goes first (the account row this event refers to may be new).
    session.flush()
    insert_event(session.connection(), account_id, kind, service=service, level=level,
                 route=route, at=at)


def insert_event(
    conn: sa.Connection,
    account_id: str,
    kind: EventKind | str,
    *,
    service: str | None = None,
    level: str | None = None,
    route: str | None = None,
    at: datetime | None = None,
) -> None:
    """`record_event` on a connection: one prebuilt INSERT sent to the driver as compiled
    (every login writes one, and the ORM's unit of work would cost more than the row)."""
    _INSERT_EVENT.execute(conn, {
        "id": str(uuid.uuid4()),
        "account_id": account_id,
        "at": at or clock.now(),
        "kind": EventKind(kind).value,
        "service": _clip(service, MAX_SERVICE),
        "level": _clip(level, MAX_LEVEL),
        "route": _clip(route, MAX_ROUTE),
    })


_EVENTS = cast(sa.Table, AccountEvent.__table__)
_INSERT_EVENT = Prepared(sa.insert(_EVENTS).values(
    {column.key: sa.bindparam(column.key) for column in _EVENTS.columns}
))


def list_events(session: Session, account_id: str, limit: int = 50) -> list[AccountEvent]:
    """The account's events, newest first; at most `limit` (1 to MAX_LIST)."""
    limit = max(1, min(int(limit), MAX_LIST))
    query = (
        sa.select(AccountEvent)
        .where(AccountEvent.account_id == account_id)
        .order_by(AccountEvent.at.desc(), AccountEvent.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))
