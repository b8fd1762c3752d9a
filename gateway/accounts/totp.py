"""Authenticator apps for citizens: TOTP as a second factor at midden (issue 5, item 3).

RFC 6238 with the parameters every authenticator app expects: 30-second steps, 6 digits,
HMAC-SHA1, a 160-bit secret (RFC 4226 section 4). NIST SP 800-63B 5.1.4 counts this as a
single-factor OTP device, the alternative to SMS for people whose SMS abroad is unreliable.

- Enrolment is two steps: `begin_enrolment` makes a secret and keeps it sealed as PENDING
  (an app already registered keeps working meanwhile); `confirm_enrolment` accepts it only
  with a code from the app, within `ENROLMENT_VALIDITY`, so a secret nobody scanned never
  becomes a factor.
- `verify_totp` accepts one step of clock drift either way (RFC 6238 section 5.2) and never
  the same or an earlier step twice: the last accepted step is stored and moved forward by a
  conditional UPDATE, so a code read over a shoulder cannot be replayed, not even by two
  requests at once.
- Wrong codes count as failed logins (the account's lockout, `gateway.accounts.service`), so
  guessing six digits is limited like guessing a password (NIST SP 800-63B 5.2.2).
- Secrets are sealed at rest (`gateway.crypto`, AES-GCM under a key derived from
  GATEWAY_SECRET_KEY): a copy of the database alone gives no usable seed.

Every function here commits its session.
"""

from __future__ import annotations

import hmac
import logging
import re
from datetime import datetime, timedelta

import pyotp
import sqlalchemy as sa
from sqlalchemy.orm import Session

from gateway import audit, clock
from gateway.accounts.history import EventKind, record_event
from gateway.accounts.models import Account, AccountStatus
from gateway.accounts.service import count_failed_login, reload
from gateway.app import get_policies
from gateway.crypto import SealError, seal, unseal
from gateway.policy import Policies
from gateway.settings import Settings

log = logging.getLogger(__name__)

#: Shown in the authenticator app next to the account.
TOTP_ISSUER = "Abroad Gateway"
#: Purpose the seed is sealed under (gateway.crypto binds it as associated data).
TOTP_SEAL_PURPOSE = "account-totp"
TOTP_DIGITS = 6
TOTP_STEP_SECONDS = 30
#: RFC 6238 section 5.2: one step of drift either way, no more.
TOTP_VALID_WINDOW = 1
#: 32 base32 characters = 160 bits (RFC 4226 section 4).
TOTP_SECRET_CHARS = 32
#: A pending secret must be confirmed within this time (scan the QR code, type one code).
ENROLMENT_VALIDITY = timedelta(minutes=15)
#: Longer input is not looked at.
MAX_CODE_INPUT = 32


def totp_step(at: datetime) -> int:
    """The RFC 6238 time step (T) of a moment."""
    return int(at.timestamp()) // TOTP_STEP_SECONDS


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_SECONDS)


def matching_step(secret: str, code: object, at: datetime) -> int | None:
    """The time step within the window whose code equals `code`, else None. Every step in
    the window is computed and compared in constant time, whichever matches."""
    if not isinstance(code, str) or len(code) > MAX_CODE_INPUT:
        return None
    code = re.sub(r"\s", "", code)
    if not re.fullmatch(f"[0-9]{{{TOTP_DIGITS}}}", code):
        return None
    otp = _totp(secret)
    now_step = totp_step(at)
    found: int | None = None
    for step in range(now_step - TOTP_VALID_WINDOW, now_step + TOTP_VALID_WINDOW + 1):
        if hmac.compare_digest(otp.generate_otp(step), code) and found is None:
            found = step
    return found


def has_totp(account: Account) -> bool:
    """Whether the account has a confirmed authenticator app."""
    return account.totp_secret_sealed is not None and account.totp_confirmed_at is not None


def _policies(policies: Policies | None) -> Policies:
    return policies if policies is not None else get_policies()


def _audit(
    session: Session, settings: Settings, account: Account, action: str, outcome: str
) -> None:
    audit.record(
        session, actor=f"account:{account.id}", role="citizen", desk=None, action=action,
        object_ref=f"account:{account.id}", outcome=outcome, settings=settings,
    )


def _unseal(settings: Settings, sealed: str) -> str | None:
    try:
        return unseal(settings, TOTP_SEAL_PURPOSE, sealed)
    except SealError:
        # Sealed under another GATEWAY_SECRET_KEY: the app must be registered again.
        log.error("account TOTP secret cannot be unsealed (secret key changed?)")
        return None


def _fail(session: Session, settings: Settings, policies: Policies, account: Account,
          outcome: str) -> bool:
    count_failed_login(session, settings, policies, account, counter="totp_failures")
    _audit(session, settings, account, "account.totp", outcome)
    session.commit()
    return False


def begin_enrolment(session: Session, settings: Settings, account: Account) -> tuple[str, str]:
    """A new secret and its otpauth:// provisioning URI (for the QR code), kept sealed as
    pending until `confirm_enrolment`. Replaces any earlier pending secret; a confirmed app
    keeps working until the new one is confirmed. Commits."""
    secret = pyotp.random_base32(length=TOTP_SECRET_CHARS)
    session.execute(
        sa.update(Account)
        .where(Account.id == account.id)
        .values(
            totp_pending_sealed=seal(settings, TOTP_SEAL_PURPOSE, secret),
            totp_pending_at=clock.now(),
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    reload(session, account)
    uri = _totp(secret).provisioning_uri(name=account.username, issuer_name=TOTP_ISSUER)
    return secret, uri


def confirm_enrolment(
    session: Session, settings: Settings, account: Account, code: str,
    policies: Policies | None = None,
) -> bool:
    """Make the pending secret the account's factor when `code` is right for it (and within
    ENROLMENT_VALIDITY). False otherwise (a wrong code counts as a failed login; policies:
    default the current app's). Records `totp_added` in the history. Commits."""
    reload(session, account)
    now = clock.now()
    pending = account.totp_pending_sealed
    if (
        pending is None
        or account.totp_pending_at is None
        or account.totp_pending_at + ENROLMENT_VALIDITY <= now
    ):
        return False
    secret = _unseal(settings, pending)
    if secret is None:
        return False
    step = matching_step(secret, code, now)
    if step is None:
        return _fail(session, settings, _policies(policies), account, "failure:enrol_wrong_code")
    # Only the pending secret this code was checked against: a parallel begin_enrolment
    # replaced it otherwise.
    confirmed = session.execute(
        sa.update(Account)
        .where(Account.id == account.id, Account.totp_pending_sealed == pending)
        .values(
            totp_secret_sealed=pending, totp_confirmed_at=now, totp_last_step=step,
            totp_pending_sealed=None, totp_pending_at=None, totp_failures=0,
        )
        .execution_options(synchronize_session=False)
    )
    if int(getattr(confirmed, "rowcount", 0) or 0) != 1:
        session.rollback()
        return False
    record_event(session, account.id, EventKind.TOTP_ADDED, at=now)
    _audit(session, settings, account, "account.totp_enrol", "success")
    session.commit()
    reload(session, account)
    return True


def verify_totp(
    session: Session, settings: Settings, account: Account, code: str,
    policies: Policies | None = None,
) -> bool:
    """True when `code` is right for the account's confirmed app, for a step later than any
    accepted before, and the account is active and not blocked. A wrong or replayed code
    counts as a failed login (policies: default the current app's). Commits."""
    reload(session, account)
    now = clock.now()
    if not has_totp(account) or account.status != AccountStatus.ACTIVE:
        return False
    if account.suspended_at is not None:
        return False
    if account.blocked_until is not None and account.blocked_until > now:
        return False
    assert account.totp_secret_sealed is not None
    secret = _unseal(settings, account.totp_secret_sealed)
    if secret is None:
        return False
    step = matching_step(secret, code, now)
    if step is None:
        return _fail(session, settings, _policies(policies), account, "failure:wrong_code")
    # One statement accepts the step, and only when no other request accepted this (or a
    # later) step or blocked the account meanwhile: a replay loses here.
    accepted = session.execute(
        sa.update(Account)
        .where(
            Account.id == account.id,
            sa.or_(Account.totp_last_step.is_(None), Account.totp_last_step < step),
            sa.or_(Account.blocked_until.is_(None), Account.blocked_until <= now),
        )
        .values(totp_last_step=step, totp_failures=0)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(accepted, "rowcount", 0) or 0) != 1:
        return _fail(session, settings, _policies(policies), account, "failure:replay")
    session.commit()
    reload(session, account)
    return True


def remove_totp(session: Session, settings: Settings, account: Account) -> None:
    """Remove the app (confirmed and pending). The caller re-authenticates the owner first.
    Records `totp_removed` and an audit entry. Commits."""
    had = has_totp(account)
    session.execute(
        sa.update(Account)
        .where(Account.id == account.id)
        .values(
            totp_secret_sealed=None, totp_confirmed_at=None, totp_last_step=None,
            totp_pending_sealed=None, totp_pending_at=None, totp_failures=0,
        )
        .execution_options(synchronize_session=False)
    )
    if had:
        record_event(session, account.id, EventKind.TOTP_REMOVED)
        _audit(session, settings, account, "account.totp_remove", "success")
    session.commit()
    reload(session, account)
