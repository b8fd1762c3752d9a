"""Desk staff accounts and their strong login: password plus TOTP (issue 4, item 3).

- Accounts are made by an operator (`gateway desk officer add`), one per person, bound to one
  desk and one role. The first password is a one-time password shown once; the owner must
  replace it at first login (`must_change_password`).
- Login needs the password (argon2id, `gateway.accounts.passwords`) and a TOTP code (RFC 6238:
  30-second steps, 6 digits, HMAC-SHA1 as every authenticator app expects). One step of clock
  drift either way is accepted (RFC 6238 section 5.2, "valid_window=1"), and a code is never
  accepted twice: its time step must be later than the last accepted one (`last_totp_step`),
  so a code read over a shoulder cannot be replayed within its window.
- Every failure looks the same to the person at the keyboard (`StaffLoginFailed`, one message):
  unknown username, wrong password, wrong or replayed code, blocked or deactivated account.
  An unknown username spends the same argon2 work (`Passwords.verify_dummy`), so timing does not
  tell which usernames exist (OWASP ASVS 2.2.1 / NIST SP 800-63B 5.2.2).
- After `policies.accounts.staff.max_failures` consecutive failures the account is blocked for
  `block_minutes`. The counter lives in the account's row and changes in one UPDATE statement,
  so several workers (or several instances) can never lose a count between them.
- The TOTP secret is sealed at rest with `gateway.crypto` (AES-GCM under a key derived from
  GATEWAY_SECRET_KEY): a copy of the database alone gives no usable seed.

Every function here commits its session: a failed login must be counted even though the
function raises. Call them with a plain session (the request's `gateway.db.session()` or
`Database.sessionmaker()`), not inside `Database.begin()`.
"""

from __future__ import annotations

import functools
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway import audit, clock
from gateway.accounts.passwords import PasswordProblem, Passwords, check_new_password
from gateway.accounts.policy import PasswordPolicy
from gateway.crypto import SealError, seal, unseal
from gateway.desks.models import StaffAccount, StaffRole
from gateway.i18n import lazy_gettext
from gateway.policy import Policies
from gateway.settings import Settings

log = logging.getLogger(__name__)

#: Shown in the authenticator app next to the account.
TOTP_ISSUER = "abroad-gateway desk"
#: Purpose the TOTP seed is sealed under (gateway.crypto binds it as associated data).
TOTP_SEAL_PURPOSE = "staff-totp"
#: RFC 6238 defaults, which every authenticator app uses.
TOTP_DIGITS = 6
TOTP_STEP_SECONDS = 30
#: RFC 6238 section 5.2: allow one step of clock drift either way, no more.
TOTP_VALID_WINDOW = 1
#: 32 base32 characters = 160 bits, the HMAC-SHA1 key length RFC 4226 section 4 recommends.
TOTP_SECRET_CHARS = 32

#: Staff usernames: lower-case ASCII, so "case-insensitive unique" is simply "unique", and no
#: look-alike Unicode can make two accounts that read the same.
USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{2,63}")
#: Longer input is not even normalised (it cannot be a username).
MAX_USERNAME_INPUT = 256

#: One-time password: 5 groups of 4 from the lower-cased code alphabet without "l" (no vowels,
#: nothing that reads as 0/o or 1/l), easy to read aloud and type: 20 characters of
#: log2(27) = 4.75 bits each, 95 bits in all.
ONE_TIME_PASSWORD_ALPHABET = "bcdfghjkmnpqrstvwxz23456789"  # noqa: S105 - an alphabet
ONE_TIME_PASSWORD_GROUPS = 5
ONE_TIME_PASSWORD_GROUP_LENGTH = 4

AUDIT_LOGIN = "staff.login"
AUDIT_CREATE = "staff.create"
AUDIT_PASSWORD_CHANGE = "staff.password_change"  # noqa: S105 - an action name
#: Actor and role of a login attempt for a username that does not exist: what was typed is
#: not recorded (it may be a password typed into the wrong field).
ANONYMOUS_ACTOR = "anonymous"
ANONYMOUS_ROLE = "none"


class StaffError(Exception):
    """An operator asked for something that cannot be done; str() is one line."""


class UnknownDesk(StaffError):
    pass


class UsernameTaken(StaffError):
    pass


class InvalidUsername(StaffError):
    pass


class InvalidRole(StaffError):
    pass


LOGIN_FAILED_MESSAGE = lazy_gettext(
    "Login failed. Check your username, password and the code from your authenticator app, "
    "and try again. After several failed attempts the account is blocked for a while."
)


class StaffLoginFailed(Exception):
    """Every login failure, whatever its cause; the message never says which check failed."""

    def __init__(self) -> None:
        super().__init__("staff login failed")

    @property
    def message(self) -> str:
        return str(LOGIN_FAILED_MESSAGE)


WRONG_CURRENT_PASSWORD = lazy_gettext("Your current password is not correct.")
SAME_AS_CURRENT = lazy_gettext("Choose a new password that differs from your current one.")


class PasswordChangeRefused(Exception):
    """The password was not changed; `messages` says why, for the form."""

    def __init__(
        self,
        messages: list[str],
        problems: list[PasswordProblem] | None = None,
        field: str = "new_password",
    ) -> None:
        super().__init__("password change refused")
        self.messages = messages
        self.problems = problems or []
        #: The form field the messages belong to: "current_password" or "new_password".
        self.field = field


@dataclass(frozen=True)
class NewStaff:
    """What an operator is shown once when an account is made; none of it is stored in clear."""

    staff: StaffAccount
    one_time_password: str
    provisioning_uri: str


# --- helpers ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _passwords(policy: PasswordPolicy) -> Passwords:
    # Passwords() hashes its dummy once; building one per login would double the argon2 work.
    return Passwords(policy)


def normalise_username(raw: str) -> str | None:
    """The stored form of a staff username, or None when it cannot be one."""
    if len(raw) > MAX_USERNAME_INPUT:
        return None
    name = raw.strip().lower()
    return name if USERNAME_PATTERN.fullmatch(name) else None


def new_one_time_password() -> str:
    length = ONE_TIME_PASSWORD_GROUP_LENGTH
    groups = (
        "".join(secrets.choice(ONE_TIME_PASSWORD_ALPHABET) for _ in range(length))
        for _ in range(ONE_TIME_PASSWORD_GROUPS)
    )
    return "-".join(groups)


def provisioning_uri(secret: str, username: str) -> str:
    """The otpauth:// URI (Google Authenticator key URI format) an app scans as a QR code."""
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_SECONDS).provisioning_uri(
        name=username, issuer_name=TOTP_ISSUER
    )


def totp_step(at: datetime) -> int:
    """The RFC 6238 time step (T) for a moment."""
    return int(at.timestamp()) // TOTP_STEP_SECONDS


def _matching_step(secret: str, code: str, at: datetime) -> int | None:
    """The time step whose code equals `code` within the window, else None.

    Every step in the window is computed and compared in constant time, so how long this
    takes does not depend on which step (if any) matched.
    """
    code = re.sub(r"\s", "", code)
    if not re.fullmatch(f"[0-9]{{{TOTP_DIGITS}}}", code):
        return None
    otp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_SECONDS)
    now_step = totp_step(at)
    found: int | None = None
    for step in range(now_step - TOTP_VALID_WINDOW, now_step + TOTP_VALID_WINDOW + 1):
        if hmac.compare_digest(otp.generate_otp(step), code) and found is None:
            found = step
    return found


def _audit(
    session: Session,
    settings: Settings,
    *,
    staff: StaffAccount | None,
    action: str,
    outcome: str,
    request_id: str | None,
    actor: str | None = None,
    actor_role: str | None = None,
) -> None:
    """One audit entry, in the caller's transaction (the commit that follows carries both)."""
    audit.record(
        session,
        actor=actor or (audit_actor(staff) if staff is not None else ANONYMOUS_ACTOR),
        role=actor_role or (staff.role if staff is not None else ANONYMOUS_ROLE),
        desk=staff.desk if staff is not None else None,
        action=action,
        object_ref=f"staff:{staff.id}" if staff is not None else None,
        outcome=outcome,
        request_id=request_id,
        settings=settings,
    )


def audit_actor(staff: StaffAccount) -> str:
    """How a staff member is named as the actor of audit entries."""
    return f"staff:{staff.username}"


def _role(value: str) -> StaffRole:
    try:
        return StaffRole(value)
    except ValueError:
        roles = ", ".join(r.value for r in StaffRole)
        raise InvalidRole(f"--role: must be one of {roles}") from None


def find_staff(session: Session, username: str) -> StaffAccount | None:
    name = normalise_username(username)
    if name is None:
        return None
    # populate_existing: a long-lived session must see counters that UPDATEs changed meanwhile.
    query = (
        sa.select(StaffAccount)
        .where(StaffAccount.username == name)
        .execution_options(populate_existing=True)
    )
    return session.scalars(query).first()


# --- creating accounts --------------------------------------------------------------------


def create_staff(
    session: Session,
    settings: Settings,
    policies: Policies,
    *,
    desk: str,
    username: str,
    role: str,
    actor: str = "cli",
    actor_role: str = "operator",
    request_id: str | None = None,
) -> NewStaff:
    """Make a staff account; returns the one-time password and TOTP URI (shown once).

    `actor`/`actor_role` name who made it in the audit log (the operator's command line by
    default). Raises UnknownDesk, InvalidUsername, UsernameTaken or InvalidRole (one line).
    """
    staff_role = _role(role)
    if policies.desks.get(desk) is None:
        raise UnknownDesk(f"--desk: {desk!r} is not a desk in the desks policy")
    name = normalise_username(username)
    if name is None:
        raise InvalidUsername(
            "--username: use 3 to 64 characters: letters a-z, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if find_staff(session, name) is not None:
        raise UsernameTaken(f"--username: {name!r} is already taken")

    password = new_one_time_password()
    secret = pyotp.random_base32(length=TOTP_SECRET_CHARS)
    now = clock.now()
    staff = StaffAccount(
        desk=desk,
        username=name,
        password_hash=_passwords(policies.accounts.password).hash(password),
        totp_secret_sealed=seal(settings, TOTP_SEAL_PURPOSE, secret),
        # Codes from before the account existed can never be accepted.
        last_totp_step=totp_step(now) - TOTP_VALID_WINDOW - 1,
        role=staff_role.value,
        must_change_password=True,
        active=True,
        failed_logins=0,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(staff)
            session.flush()
    except IntegrityError:
        # Someone else took the name between the check and the insert.
        raise UsernameTaken(f"--username: {name!r} is already taken") from None
    _audit(
        session, settings, staff=staff, action=AUDIT_CREATE, outcome="success",
        request_id=request_id, actor=actor, actor_role=actor_role,
    )
    session.commit()
    uri = provisioning_uri(secret, name)
    return NewStaff(staff=staff, one_time_password=password, provisioning_uri=uri)


# --- login --------------------------------------------------------------------------------


def authenticate(
    session: Session,
    settings: Settings,
    policies: Policies,
    *,
    username: str,
    password: str,
    totp: str,
    request_id: str | None = None,
) -> StaffAccount:
    """Check password and TOTP; the staff member on success, else StaffLoginFailed.

    Commits: the failure count, the block, the accepted TOTP step and the audit entry.
    """
    rules = policies.accounts.staff
    passwords = _passwords(policies.accounts.password)
    staff = find_staff(session, username)
    if staff is None:
        passwords.verify_dummy(password)
        _audit(
            session, settings, staff=None, action=AUDIT_LOGIN, outcome="failure:unknown_user",
            request_id=request_id,
        )
        session.commit()
        raise StaffLoginFailed()

    # The password is always checked, blocked or not, so a blocked account answers as fast
    # as any other.
    password_ok = passwords.verify(staff.password_hash, password)
    now = clock.now()
    reason: str | None = None
    step: int | None = None
    if not staff.active:
        reason = "inactive"
    elif staff.blocked_until is not None and staff.blocked_until > now:
        reason = "blocked"
    elif not password_ok:
        reason = "wrong_password"
    else:
        try:
            secret = unseal(settings, TOTP_SEAL_PURPOSE, staff.totp_secret_sealed)
        except SealError:
            # Sealed under another GATEWAY_SECRET_KEY: nobody can log in until re-enrolled.
            log.error("staff TOTP secret cannot be unsealed (secret key changed?)")
            reason = "totp_unreadable"
        else:
            step = _matching_step(secret, totp, now)
            if step is None:
                reason = "wrong_totp"
            elif step <= staff.last_totp_step:
                reason = "totp_replay"

    if reason is None and step is not None:
        # One statement accepts the step and clears the count, and only if no other request
        # accepted this (or a later) step or blocked the account meanwhile.
        accepted = session.execute(
            sa.update(StaffAccount)
            .where(
                StaffAccount.id == staff.id,
                StaffAccount.last_totp_step < step,
                sa.or_(StaffAccount.blocked_until.is_(None), StaffAccount.blocked_until <= now),
            )
            .values(last_totp_step=step, failed_logins=0, blocked_until=None, last_login_at=now)
            .execution_options(synchronize_session=False)
        )
        if accepted.rowcount != 1:  # type: ignore[attr-defined]
            reason = "totp_replay"

    if reason is not None:
        if reason != "blocked":
            _count_failure(session, staff, now, rules.max_failures, rules.block_minutes)
        _audit(
            session, settings, staff=staff, action=AUDIT_LOGIN, outcome=f"failure:{reason}",
            request_id=request_id,
        )
        session.commit()
        raise StaffLoginFailed()

    if passwords.needs_rehash(staff.password_hash):
        staff.password_hash = passwords.hash(password)
    _audit(
        session, settings, staff=staff, action=AUDIT_LOGIN, outcome="success",
        request_id=request_id,
    )
    session.commit()
    session.refresh(staff)
    return staff


def _count_failure(
    session: Session, staff: StaffAccount, now: datetime, max_failures: int, block_minutes: int
) -> None:
    """Add one failure; the one that reaches `max_failures` blocks and restarts the count.

    A single UPDATE reads and writes the counter, so concurrent failures in several workers are
    all counted (every right-hand side sees the row as it was before this statement).
    """
    reaches = StaffAccount.failed_logins + 1 >= max_failures
    session.execute(
        sa.update(StaffAccount)
        .where(StaffAccount.id == staff.id)
        .values(
            failed_logins=sa.case((reaches, 0), else_=StaffAccount.failed_logins + 1),
            blocked_until=sa.case(
                (reaches, now + timedelta(minutes=block_minutes)), else_=StaffAccount.blocked_until
            ),
        )
        .execution_options(synchronize_session=False)
    )


# --- password change ----------------------------------------------------------------------


def change_password(
    session: Session,
    settings: Settings,
    policies: Policies,
    *,
    staff: StaffAccount,
    current_password: str,
    new_password: str,
    request_id: str | None = None,
) -> None:
    """Replace the password (NIST SP 800-63B 5.1.1.2 rules); raises PasswordChangeRefused.

    A wrong current password counts as a failed login, so a hijacked session cannot be used to
    guess it without limit.
    """
    rules = policies.accounts.staff
    passwords = _passwords(policies.accounts.password)
    if not passwords.verify(staff.password_hash, current_password):
        _count_failure(session, staff, clock.now(), rules.max_failures, rules.block_minutes)
        _audit(
            session, settings, staff=staff, action=AUDIT_PASSWORD_CHANGE,
            outcome="failure:wrong_password", request_id=request_id,
        )
        session.commit()
        raise PasswordChangeRefused([str(WRONG_CURRENT_PASSWORD)], field="current_password")
    problems = check_new_password(new_password, policies.accounts.password, staff.username)
    messages = [p.message for p in problems]
    if not problems and passwords.verify(staff.password_hash, new_password):
        messages.append(str(SAME_AS_CURRENT))
    if messages:
        raise PasswordChangeRefused(messages, problems)
    staff.password_hash = passwords.hash(new_password)
    staff.must_change_password = False
    _audit(
        session, settings, staff=staff, action=AUDIT_PASSWORD_CHANGE, outcome="success",
        request_id=request_id,
    )
    session.commit()
