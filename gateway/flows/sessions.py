"""Single sign-on sessions: one login serves every relying party until it ends (issue 5, item 4).

An `SsoSession` row records who logged in, by which route, at which level and with which
methods (RFC 8176 `amr`), and when they last actually authenticated (`auth_time`). The browser
holds no SSO credential of its own: a random 256-bit token lives in the server-side Flask
session (gateway.web.sessions, which changes its id at every login), and the row's id is the
HMAC of that token, so a copy of the table yields no usable session.

A session ends:
- after `policies.accounts.session.idle_minutes` without use (DigiD's 15 minutes), checked
  against `last_seen_at` on every use, whatever the store's own TTLs do;
- `absolute_hours` after its first login, however busy (OWASP Session Management Cheat Sheet,
  "Absolute Timeout");
- at logout, when another person logs in in the same browser, when the account is no longer
  usable, and for every session of an account after a password change or recovery
  (`end_all_sessions`).

Step-up (basis -> midden) keeps the row and raises its level, merges the methods and moves
`auth_time`: the person authenticated again, but it is the same sign-on.

Functions take the caller's SQLAlchemy session and never commit; the flow commits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import datetime, timedelta
from enum import StrEnum
from typing import cast

import sqlalchemy as sa
from flask import session as flask_session
from sqlalchemy.orm import Mapped, Session, make_transient_to_detached, mapped_column

from gateway import clock
from gateway.accounts.models import Account, AccountStatus
from gateway.accounts.policy import SessionPolicy
from gateway.db import Base, Prepared, UTCDateTime, as_loaded
from gateway.levels import Level
from gateway.settings import Settings

#: Key of the SSO token in the server-side Flask session.
SESSION_KEY = "sso_token"
#: 32 random bytes (256 bits), OWASP's advice is at least 64 bits of entropy.
TOKEN_BYTES = 32
#: Relying parties remembered per session (for single logout later); more is a sign of abuse.
MAX_RPS = 100


class EndReason(StrEnum):
    LOGOUT = "logout"
    IDLE = "idle"
    ABSOLUTE = "absolute"
    #: Another person logged in in the same browser.
    REPLACED = "replaced"
    #: Password changed or recovered, account blocked, suspended, deactivated or expired.
    ACCOUNT = "account"


class SsoSession(Base):
    __tablename__ = "sso_sessions"
    __table_args__ = (
        # end_all_sessions looks up an account's open sessions.
        sa.Index("ix_sso_sessions_account_open", "account_id", "ended_at"),
    )

    #: HMAC-SHA256(derive_key("sso-session"), token), hex.
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(
        sa.ForeignKey("accounts.id", ondelete="CASCADE")
    )
    subject_key: Mapped[str] = mapped_column(sa.String(80))
    route: Mapped[str] = mapped_column(sa.String(40))
    level: Mapped[int] = mapped_column(sa.Integer)
    #: JSON list of RFC 8176 values.
    amr: Mapped[str] = mapped_column(sa.String(100))
    auth_time: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    end_reason: Mapped[str | None] = mapped_column(sa.String(16), default=None)
    #: JSON list of relying-party ids that received a login from this session.
    rps: Mapped[str] = mapped_column(sa.Text, default="[]")
    #: The person's attributes from an external route, sealed (gateway.flows.login,
    #: ATTRIBUTES_PURPOSE); None for desk-account logins.
    attributes: Mapped[str | None] = mapped_column(sa.Text, default=None)

    @property
    def level_value(self) -> Level:
        return Level(self.level)

    @property
    def amr_values(self) -> tuple[str, ...]:
        return tuple(json.loads(self.amr))

    @property
    def rp_ids(self) -> tuple[str, ...]:
        return tuple(json.loads(self.rps))


def token_id(settings: Settings, token: str) -> str:
    return hmac.new(settings.derive_key("sso-session"), token.encode(), hashlib.sha256).hexdigest()


def _idle(policy: SessionPolicy) -> timedelta:
    return timedelta(minutes=policy.idle_minutes)


def _absolute(policy: SessionPolicy) -> timedelta:
    return timedelta(hours=policy.absolute_hours)


def end_session(row: SsoSession, reason: EndReason, now: datetime | None = None) -> None:
    if row.ended_at is None:
        row.ended_at = now or clock.now()
        row.end_reason = reason.value


def expiry_reason(row: SsoSession, policy: SessionPolicy, now: datetime) -> EndReason | None:
    """Why `row` can no longer be used at `now`, or None while it can."""
    if now - row.last_seen_at >= _idle(policy):
        return EndReason.IDLE
    if now - row.created_at >= _absolute(policy):
        return EndReason.ABSOLUTE
    return None


def _account_usable(account: Account | None, now: datetime) -> bool:
    if account is None or account.status != AccountStatus.ACTIVE.value:
        return False
    if account.suspended_at is not None:  # suspended by a desk (gateway.desks.suspension)
        return False
    return account.blocked_until is None or account.blocked_until <= now


def current_sso(db: Session, settings: Settings, policy: SessionPolicy) -> SsoSession | None:
    """The usable SSO session of this browser, or None; ends (and forgets) one that expired.

    Does not touch `last_seen_at`: reading is not activity; `use()` is.
    """
    token = flask_session.get(SESSION_KEY)
    if not isinstance(token, str) or len(token) > 100:
        return None
    row = db.get(SsoSession, token_id(settings, token), populate_existing=True)
    if row is None or row.ended_at is not None:
        flask_session.pop(SESSION_KEY, None)
        return None
    now = clock.now()
    reason = expiry_reason(row, policy, now)
    if (
        reason is None
        and row.account_id is not None
        and not _account_usable(db.get(Account, row.account_id), now)
    ):
        reason = EndReason.ACCOUNT
    if reason is not None:
        end_session(row, reason, now)
        flask_session.pop(SESSION_KEY, None)
        return None
    return row


def use(row: SsoSession, rp_id: str | None = None) -> None:
    """Mark activity (renews the idle timeout) and remember the relying party served."""
    row.last_seen_at = clock.now()
    if rp_id is not None:
        rps = list(row.rp_ids)
        if rp_id not in rps and len(rps) < MAX_RPS:
            rps.append(rp_id)
            row.rps = json.dumps(rps)


def establish(
    db: Session,
    settings: Settings,
    *,
    existing: SsoSession | None,
    account_id: str | None,
    subject_key: str,
    route: str,
    level: Level,
    amr: tuple[str, ...],
    auth_time: datetime,
    attributes: str | None = None,
    rp_id: str | None = None,
) -> SsoSession:
    """Record a completed authentication in this browser's SSO session, and its use by the
    relying party `rp_id` (as `use`).

    The same person again: at the same or a higher level (step-up, forced
    re-authentication) the row is kept, takes the new level, merges the methods and moves
    `auth_time`; at a lower level (a relying party forced a password-only login) the row keeps
    its higher level and the time that level was proven, so a later max_age check for that
    level is not fooled. Anyone else: the old session ends and a new one starts. The caller
    regenerates the Flask session id.

    `attributes` (sealed, from an external route) replace the row's: the newest login's
    statement about the person is the one to pass on.
    """
    if existing is not None and existing.ended_at is None and existing.subject_key == subject_key:
        existing.last_seen_at = clock.now()
        if attributes is not None:
            existing.attributes = attributes
        if int(level) >= existing.level:
            existing.level = int(level)
            merged = list(existing.amr_values)
            merged.extend(a for a in amr if a not in merged)
            existing.amr = json.dumps(merged)
            existing.auth_time = auth_time
            existing.route = route
        use(existing, rp_id)
        return existing
    now = clock.now()
    if existing is not None:
        end_session(existing, EndReason.REPLACED, now)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    values = {
        "id": token_id(settings, token),
        "account_id": account_id,
        "subject_key": subject_key,
        "route": route,
        "level": int(level),
        "amr": json.dumps(list(amr)),
        "auth_time": auth_time,
        "created_at": now,
        "last_seen_at": now,
        "ended_at": None,
        "end_reason": None,
        "rps": json.dumps([rp_id] if rp_id is not None else []),
        "attributes": attributes,
    }
    # One prebuilt INSERT now (`gateway.db.Prepared`; the ORM's flush costs several times
    # the statement); the row then joins the session as loaded, so later changes (`use`,
    # `end_session`) flush as UPDATEs and a read in this session finds this very object.
    _INSERT_SESSION.execute(db.connection(), values)
    row = as_loaded(SsoSession, values)
    make_transient_to_detached(row)
    db.add(row)
    flask_session[SESSION_KEY] = token
    return row


_INSERT_SESSION = Prepared(sa.insert(cast(sa.Table, SsoSession.__table__)).values(
    {column.key: sa.bindparam(column.key) for column in SsoSession.__table__.columns}
))


def logout(db: Session, settings: Settings) -> SsoSession | None:
    """End this browser's SSO session (if any) and forget its token; returns the ended row."""
    token = flask_session.pop(SESSION_KEY, None)
    if not isinstance(token, str) or len(token) > 100:
        return None
    row = db.get(SsoSession, token_id(settings, token), populate_existing=True)
    if row is None:
        return None
    end_session(row, EndReason.LOGOUT)
    return row


def end_all_sessions(
    db: Session, account_id: str, reason: EndReason = EndReason.ACCOUNT,
    keep: str | None = None, subject_key: str | None = None,
) -> int:
    """End every open SSO session of an account (after a password change or recovery, a
    block or a deactivation), except the one with id `keep` (the browser that made a
    password change stays logged in); with `subject_key`, only the sessions of that login
    subject (an eID whose link to the account was removed). Returns how many ended. Runs in
    the caller's transaction.

    The rows are loaded and ended one by one rather than by a bulk UPDATE: whoever listens
    for ending sessions on the ORM (OIDC back-channel logout, which revokes the session's
    grants and tells relying parties) must see each of them, and an account has a handful
    of sessions at most. FOR UPDATE keeps a concurrent login from slipping between the read
    and the write on PostgreSQL (SQLite has one writer anyway).
    """
    query = sa.select(SsoSession).where(
        SsoSession.account_id == account_id, SsoSession.ended_at.is_(None)
    )
    if keep is not None:
        query = query.where(SsoSession.id != keep)
    if subject_key is not None:
        query = query.where(SsoSession.subject_key == subject_key)
    return _end_found(db, query, reason)


def end_subject_sessions(
    db: Session, subject_key: str, reason: EndReason = EndReason.ACCOUNT
) -> int:
    """End every open SSO session of a login subject that came without an account (an eID
    that a desk has just linked to one: those sessions carry neither the account nor its
    BSN, so a service that needs the BSN would be refused until they time out). Returns how
    many ended; runs in the caller's transaction, through the ORM as `end_all_sessions`."""
    query = sa.select(SsoSession).where(
        SsoSession.subject_key == subject_key, SsoSession.account_id.is_(None),
        SsoSession.ended_at.is_(None),
    )
    return _end_found(db, query, reason)


def _end_found(db: Session, query: sa.Select[SsoSession], reason: EndReason) -> int:
    rows = db.scalars(
        query.with_for_update().execution_options(populate_existing=True)
    ).all()
    now = clock.now()
    for row in rows:
        end_session(row, reason, now)
    # Flush now so the listeners run and later queries in this transaction see the ends.
    db.flush()
    return len(rows)
