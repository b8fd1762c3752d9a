"""Citizen account services: activation, the password check with lockout and throttling,
unblocking, and recovery of a forgotten password (issue 5, items 1, 2, 5 and 6). No web pages:
the login flow and the citizen pages call these functions.

Rules, and where they come from:

- No account enumeration (OWASP ASVS 2.2.1, NIST SP 800-63B 5.2.2; issue 5 "Bad input"):
  an unknown username, a wrong password and an account that is not active all give the same
  `LoginFailed`, after the same argon2 work (`Passwords.verify_dummy` for unknown usernames).
  `start_unblock` and `start_recovery` answer identically whatever the username, and do the
  work that differs (creating codes, SMS, e-mail) in the background, after the answer, so
  their timing does not tell either.
- Lockout (issue 5 item 5, NIST SP 800-63B 5.2.2): after `lockout.max_failures` failed
  passwords in a row the account is blocked for `lockout.block_minutes`, doubling with each
  further block (`block_count`) up to `MAX_BLOCK`. Failures keep counting during a block, so
  that `AccountBlocked` (raised only after the RIGHT password, so only the owner learns of the
  block) can never serve as a password oracle beyond the lockout's own rate. The counters live
  in the account's row and change in single conditional UPDATE statements, so several workers
  or instances can never lose a count between them.
- Per-IP throttling: at most `lockout.per_ip_per_hour` failures from one address (an IPv6
  address counts by its /64) per rolling hour, per action, in the shared store. The store
  being down refuses the action (`TryLater`): never fail open.
- Letter codes (`gateway.desks.codes`): kept as an HMAC, single use, with an expiry and an
  attempt count per code row; activation codes (A) come from the desk, unblock codes (D) and
  recovery codes (H) are made here and go to the VERIFIED phone only.
- Recovery needs two things a thief rarely holds together (issue 5 item 6): the H code on the
  verified phone and a token mailed to the verified e-mail address. Neither the password nor
  the phone alone is enough; without a verified e-mail address the owner goes to a desk.
- Suspension by a desk (gateway.desks.suspension, `Account.suspended_at`): told only after
  the right password (`AccountSuspended`); a wrong one is any wrong password. Unblock and
  recovery requests for a suspended account answer as for anyone and send nothing, and a
  D or H code cannot be used while the account is suspended.

Every function here commits its session (a failed attempt must be counted even though the
function raises). Call them with a plain session (the request's `gateway.db.session()`), not
inside `Database.begin()`.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import importlib
import ipaddress
import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, cast

import sqlalchemy as sa
from flask import Flask, current_app, g, has_request_context
from flask_babel.speaklater import LazyString
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from gateway import audit, clock
from gateway.accounts.history import EventKind, record_event
from gateway.accounts.models import Account, AccountCode, AccountStatus
from gateway.accounts.passwords import PasswordProblem, Passwords, check_new_password
from gateway.accounts.policy import AccountsPolicy, LockoutPolicy, PasswordPolicy
from gateway.app import get_policies, get_settings
from gateway.db import Prepared, UTCDateTime, as_loaded, get_db
from gateway.desks.codes import (
    CodeKind,
    code_hmac,
    codes_equal,
    is_well_formed,
    new_code,
    normalise_code,
)
from gateway.i18n import lazy_gettext
from gateway.mail import MailError, get_mail, render_template
from gateway.policy import Policies
from gateway.settings import Settings
from gateway.sms.dispatch import DeliveryFailed, get_dispatcher
from gateway.sms.limits import LimitExceeded, SendingUnavailable
from gateway.sms.messages import SERVICE_NAME, host_of, message_language, segments
from gateway.sms.phone import Channel, PhoneRejected, parse_phone
from gateway.sms.purposes import Purpose
from gateway.sms.service import get_sms_service
from gateway.store import Count, Incr, SharedStore, StoreUnavailable, get_store

log = logging.getLogger(__name__)

# --- errors -------------------------------------------------------------------------------


class AccountError(Exception):
    """Something a person is told: `code` is for the program, `message` (lazy, Dutch or
    English by the request's language) for the person. `str()` is the code only, so logging
    an AccountError never logs personal data."""

    def __init__(self, code: str, message: Any) -> None:
        super().__init__(code)
        self.code = code
        self.message = message


class LoginFailed(AccountError):
    """Unknown username, wrong password, or an account that is not active: one message."""

    def __init__(self) -> None:
        super().__init__("login_failed", LOGIN_FAILED_MESSAGE)


class AccountBlocked(AccountError):
    """Too many failed passwords; raised ONLY after the right password. `until` is when the
    block ends; the message tells how to lift it sooner with an unblock code."""

    def __init__(self, until: datetime) -> None:
        super().__init__("blocked", BLOCKED_MESSAGE)
        self.until = until


class AccountSuspended(AccountError):
    """A desk suspended the account (gateway.desks.suspension); raised ONLY after the RIGHT
    password, like AccountBlocked, so only the owner learns of it."""

    def __init__(self) -> None:
        super().__init__("suspended", SUSPENDED_MESSAGE)


class TooManyAttempts(AccountError):
    """Too many attempts from this network (per-IP throttling); `retry_after` in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too_many_attempts", TOO_MANY_ATTEMPTS_MESSAGE)
        self.retry_after = max(1, int(retry_after))


class TryLater(AccountError):
    """The shared store cannot be reached: the action is refused (fail closed)."""

    def __init__(self) -> None:
        super().__init__("unavailable", TRY_LATER_MESSAGE)


class CodeRefused(AccountError):
    """A letter code was refused. `code` is "invalid", "expired" or "used"; `kind` says which
    code (activation, unblock, recovery); the message says how to get a new one."""

    def __init__(self, code: str, kind: CodeKind) -> None:
        if code not in CODE_REFUSALS:
            raise ValueError(f"unknown code refusal {code!r}")
        super().__init__(code, _CODE_MESSAGES[(kind, code)])
        self.kind = kind


class PasswordRejected(AccountError):
    """The new password breaks the rules (`gateway.accounts.passwords`); `messages` says why,
    one line each, for the form."""

    def __init__(self, problems: list[PasswordProblem]) -> None:
        super().__init__("password_rejected", lazy_gettext("Choose another password."))
        self.problems = problems
        self.messages = [p.message for p in problems]


CODE_REFUSALS = ("invalid", "expired", "used")

LOGIN_FAILED_MESSAGE = lazy_gettext(
    "Login failed. Check your username and password and try again. Not activated your "
    "account yet? Use your activation code first. After several failed attempts your account "
    "is blocked for a while."
)
BLOCKED_MESSAGE = lazy_gettext(
    "Your account is blocked for a while because a wrong password was entered too often. You "
    "can lift the block now with an unblock code that we send to your phone: choose "
    "\"Unblock my account\". Otherwise wait until the block ends."
)
SUSPENDED_MESSAGE = lazy_gettext(
    "This account has been suspended because it may have been misused. You cannot log in "
    "with it now. Contact a desk: after checking your identity document the desk can lift "
    "the suspension."
)
TOO_MANY_ATTEMPTS_MESSAGE = lazy_gettext(
    "There have been too many attempts from your network. Please try again in an hour."
)
TRY_LATER_MESSAGE = lazy_gettext(
    "This cannot be done right now because of a technical problem. Nothing has changed. "
    "Please try again in a few minutes."
)
UNBLOCK_REQUESTED = lazy_gettext(
    "If your username and password are correct and your account is blocked, we are sending an "
    "unblock code (it starts with a D) to your phone now. Type it on the next page. No code "
    "within a few minutes? Try again later, or visit a desk."
)
RECOVERY_REQUESTED = lazy_gettext(
    "If this username belongs to an account with a verified phone number and a verified "
    "e-mail address, we are sending a recovery code (it starts with an H) to that phone and a "
    "confirmation link to that e-mail address now. You need both to choose a new password. No "
    "verified e-mail address, or no longer have that phone? Then visit a desk to recover your "
    "account."
)

_CODE_MESSAGES: dict[tuple[CodeKind, str], LazyString] = {
    (CodeKind.ACTIVATION, "invalid"): lazy_gettext(
        "This activation code is not correct. Check the code in your letter or text message "
        "and try again."
    ),
    (CodeKind.ACTIVATION, "expired"): lazy_gettext(
        "This activation code is no longer valid. Ask a desk to send you a new activation code."
    ),
    (CodeKind.ACTIVATION, "used"): lazy_gettext(
        "This activation code has already been used. If you activated your account, log in "
        "with your username and password; otherwise ask a desk for a new activation code."
    ),
    (CodeKind.UNBLOCK, "invalid"): lazy_gettext(
        "This unblock code is not correct. Check the code in your text message and try again."
    ),
    (CodeKind.UNBLOCK, "expired"): lazy_gettext(
        "This unblock code is no longer valid. Ask for a new one with \"Unblock my account\"."
    ),
    (CodeKind.UNBLOCK, "used"): lazy_gettext(
        "This unblock code has already been used. If your account is still blocked, ask for a "
        "new code with \"Unblock my account\"."
    ),
    (CodeKind.RECOVERY, "invalid"): lazy_gettext(
        "The recovery code or the e-mail confirmation is not correct. Check the code in your "
        "text message and use the link from the most recent e-mail."
    ),
    (CodeKind.RECOVERY, "expired"): lazy_gettext(
        "This recovery code is no longer valid. Ask for a new one with \"Forgot your "
        "password?\"."
    ),
    (CodeKind.RECOVERY, "used"): lazy_gettext(
        "This recovery code has already been used. If you still cannot log in, ask for a new "
        "one with \"Forgot your password?\"."
    ),
}


# --- constants ----------------------------------------------------------------------------

#: Wrong activation codes per code row before it is dead: a letter is typed by hand, so a few
#: typos are normal; 10 tries against 28**8 codes is a chance of 2.6e-11 (NIST SP 800-63B
#: 5.1.2.1 asks for at most 100 failures; gateway.desks.codes explains the strength).
ACTIVATION_MAX_ATTEMPTS = 10
#: Wrong unblock or recovery codes per code row (they arrive by SMS: fewer typos).
CODE_MAX_ATTEMPTS = 5
#: An unblock code is used at once, on the page that asked for it.
UNBLOCK_CODE_VALIDITY = timedelta(minutes=15)
#: A recovery needs an SMS and an e-mail; mail abroad may take a while to arrive.
RECOVERY_CODE_VALIDITY = timedelta(hours=1)
#: Backoff: every further block doubles the last one, up to this (NIST SP 800-63B 5.2.2 lets
#: the verifier slow attempts down; a day keeps the owner able to unblock or wait it out).
MAX_BLOCK = timedelta(hours=24)
#: Per-IP throttling: a rolling hour (sliding window counter over hour buckets).
THROTTLE_WINDOW = timedelta(hours=1)
#: Buckets outlive their window by this much, so instances with clocks a little apart agree.
_THROTTLE_GRACE = timedelta(minutes=5)
#: Prefix length of an IPv6 address one subscriber controls (RFC 6177).
IPV6_SUBSCRIBER_PREFIX = 64
#: Input longer than this cannot be a username and is not even normalised.
MAX_USERNAME_INPUT = 256
#: Input longer than this cannot be an e-mail token.
MAX_TOKEN_INPUT = 128
#: 32 random bytes (256 bits) in the link mailed for a recovery.
EMAIL_TOKEN_BYTES = 32
#: The page the recovery e-mail links to; the citizen pages serve it with `?token=`.
RECOVERY_LINK_PATH = "/account/recover"
#: How the recovery e-mail token row is marked (kind H, like the SMS code it goes with).
EMAIL_CHANNEL = "email"
#: Channels by which an activation code proves possession of the phone.
PHONE_CHANNELS = ("sms", "voice")

AUDIT_ROLE = "citizen"
ANONYMOUS_ACTOR = "anonymous"
ANONYMOUS_ROLE = "none"
SYSTEM_ACTOR = "system:expiry"
SYSTEM_ROLE = "system"
#: Accounts expired per transaction by `expire_unused`.
EXPIRY_BATCH = 500

_DELIVERIES = "gateway.accounts.deliveries"
_deliveries_lock = threading.Lock()


class Action(StrEnum):
    """What a per-IP throttle counts; each action has its own counter."""

    LOGIN = "login"
    ACTIVATION = "activation"
    UNBLOCK = "unblock"
    UNBLOCK_CODE = "unblock-code"
    RECOVERY = "recovery"
    RECOVERY_CODE = "recovery-code"


# --- helpers ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def passwords_for(policy: PasswordPolicy) -> Passwords:
    """One `Passwords` per policy: building one hashes its dummy, which must not happen on
    every login."""
    return Passwords(policy)


def username_key(raw: str) -> str | None:
    """The form usernames are unique in and looked up by (as gateway.desks.apply stores it);
    None for input that cannot be a username."""
    if not isinstance(raw, str) or len(raw) > MAX_USERNAME_INPUT:
        return None
    key = raw.strip().lower()
    # Usernames are printable (gateway.desks.apply); control characters (a NUL byte breaks
    # PostgreSQL's text type) can only be hostile input: treat it as an unknown username.
    if not key or any(not ch.isprintable() for ch in key):
        return None
    return key


def find_account(session: Session, username: str) -> Account | None:
    """The account with this username (case does not count), or None."""
    key = username_key(username)
    if key is None:
        return None
    # As stored now (a long-lived session must see counters that UPDATEs changed), read by
    # one prebuilt SELECT (see `read_account`), which does not autoflush as a query would:
    # an account added to this session and not yet flushed is flushed first.
    if session.new:
        session.flush()
    row = _FIND_ACCOUNT.execute(session.connection(), {"b_key": key}).first()
    return None if row is None else _loaded(session, row)


def _before_hash(session: Session) -> None:
    """End the caller's reading transaction before an argon2 verify (tens of milliseconds).

    On SQLite every transaction holds the write lock from its BEGIN IMMEDIATE, so a hash
    inside one would serialise all logins of the deployment; on PostgreSQL it would hold a
    connection in a transaction for the hash's duration. What follows the hash writes only
    with single statements that check the row as it is then (`_count_failure`, `_LOGGED_IN`),
    so nothing depends on the read staying in the same transaction. The caller must not have
    written anything yet: an ORM change pending here is a programming error.
    """
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("a password check must not follow uncommitted writes")
    session.commit()


def _audit(
    session: Session,
    settings: Settings,
    account: Account | str | None,
    action: str,
    outcome: str,
) -> None:
    """An audit entry by the account (an Account or its id), or by an anonymous visitor."""
    account_id = account.id if isinstance(account, Account) else account
    audit.record(
        session,
        actor=f"account:{account_id}" if account_id is not None else ANONYMOUS_ACTOR,
        role=AUDIT_ROLE if account_id is not None else ANONYMOUS_ROLE,
        desk=None,
        action=action,
        object_ref=f"account:{account_id}" if account_id is not None else None,
        outcome=outcome,
        settings=settings,
    )


def reload(session: Session, account: Account) -> Account:
    """Read the account's row again and end the transaction that read it: the caller's
    session then holds nothing (on SQLite every transaction holds the write lock)."""
    session.refresh(account)
    session.commit()
    return account


#: Every column of an account, for RETURNING the row an UPDATE leaves.
_ACCOUNT_COLUMNS = tuple(Account.__table__.columns)
_ACCOUNTS: sa.Table = Account.__table__  # type: ignore[assignment]
#: Statements of every login, sent to the driver as compiled (gateway.db.Prepared).
_READ_ACCOUNT = Prepared(sa.select(_ACCOUNTS).where(_ACCOUNTS.c.id == sa.bindparam("b_id")))
_FIND_ACCOUNT = Prepared(
    sa.select(_ACCOUNTS).where(_ACCOUNTS.c.username_key == sa.bindparam("b_key"))
)


_ACCOUNT_REF = Prepared(
    sa.select(_ACCOUNTS.c.id, _ACCOUNTS.c.status)
    .where(_ACCOUNTS.c.username_key == sa.bindparam("b_key"))
)


def _account_ref(session: Session, username: str) -> tuple[str, str] | None:
    """(id, status) of the account with this username, as a plain row: a code check reads
    only these until the code is right, so a known username's wrong code costs what an
    unknown one's does (no ORM object for one and not the other: no enumeration by timing)."""
    key = username_key(username)
    if key is None:
        return None
    row = _ACCOUNT_REF.execute(session.connection(), {"b_key": key}).first()
    return None if row is None else (row[0], row[1])


def read_account(session: Session, account_id: str) -> Account | None:
    """The account as stored now, read in the caller's transaction: what
    `session.get(Account, account_id, populate_existing=True)` gives.

    One prebuilt SELECT on the session's connection instead of the ORM's load (a login
    reads its account in several requests, and the ORM's load costs several times the
    SELECT); the object then joins the session as loaded, so later reads in this session
    find it and changes to it flush as usual. An account already in the session is
    refreshed through the ORM instead."""
    if identity_key(Account, account_id) in session.identity_map:
        return session.get(Account, account_id, populate_existing=True)
    row = _READ_ACCOUNT.execute(session.connection(), {"b_id": account_id}).first()
    return None if row is None else _loaded(session, row)


def _loaded(session: Session, row: Any) -> Account:
    """The Account of a whole row just read (a `Prepared` row), in the session as an ORM
    load leaves it (with populate_existing: an object the session already holds takes the
    row's values)."""
    values = row._asdict()
    held = session.identity_map.get(identity_key(Account, values["id"]))
    if held is not None:
        return session.get(Account, values["id"], populate_existing=True) or held
    account = as_loaded(Account, values)
    make_transient_to_detached(account)
    session.add(account)
    return account
#: A login with the right password: the failure count and any backoff cleared, the time of
#: the login set, the hash replaced when `b_hash` is not NULL (rehash); only while the account
#: is active, not suspended and not blocked. Built once: it runs at every login.
_LOGGED_IN = Prepared(
    sa.update(_ACCOUNTS)
    .where(
        _ACCOUNTS.c.id == sa.bindparam("b_id"),
        _ACCOUNTS.c.status == AccountStatus.ACTIVE.value,
        _ACCOUNTS.c.suspended_at.is_(None),
        sa.or_(
            _ACCOUNTS.c.blocked_until.is_(None),
            _ACCOUNTS.c.blocked_until <= sa.bindparam("b_now", type_=UTCDateTime()),
        ),
    )
    .values(
        failed_logins=0,
        block_count=0,
        blocked_until=sa.null(),
        last_login_at=sa.bindparam("b_now", type_=UTCDateTime()),
        password_hash=sa.func.coalesce(
            sa.bindparam("b_hash", type_=sa.String()), _ACCOUNTS.c.password_hash
        ),
    )
    .returning(*_ACCOUNT_COLUMNS)
)


def _rowcount(result: Any) -> int:
    return int(result.rowcount or 0)


def _blocked(account: Account, now: datetime) -> bool:
    return account.blocked_until is not None and account.blocked_until > now


def _not_blocked(now: datetime) -> Any:
    return sa.or_(Account.blocked_until.is_(None), Account.blocked_until <= now)


# --- per-IP throttling --------------------------------------------------------------------


def _ip_block(ip: str) -> str:
    """What one client is counted as: an IPv4 address, or the /64 of an IPv6 address."""
    text = ip.strip()[:100]
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return "raw:" + text
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        net = ipaddress.IPv6Network((addr, IPV6_SUBSCRIBER_PREFIX), strict=False)
        return str(net)
    return str(addr)


class _Throttle:
    """One attempt counted against `lockout.per_ip_per_hour` for one action and network.

    The attempt is counted BEFORE the work (atomic increment, then compare), so parallel
    requests can never all see the last free slot; `give_back` returns it when the attempt
    succeeded, so only failures use up the budget of people behind one address.
    """

    def __init__(self, store: SharedStore | None, key: str | None, limit: int) -> None:
        self.store = store
        self.key = key
        self.limit = limit
        self._ttl = THROTTLE_WINDOW

    @classmethod
    def take(
        cls, app: Flask, settings: Settings, policies: Policies, action: Action, ip: str | None
    ) -> _Throttle:
        """Count one attempt; raises TooManyAttempts or TryLater. `ip` None: not counted (a
        command line, never a request)."""
        limit = policies.accounts.lockout.per_ip_per_hour
        if ip is None:
            return cls(None, None, limit)
        digest = hmac.new(
            settings.derive_key("accounts-throttle"), _ip_block(ip).encode(), "sha256"
        ).hexdigest()[:32]
        window = int(THROTTLE_WINDOW.total_seconds())
        now = clock.now().timestamp()
        bucket, into = divmod(now, window)
        key = f"accounts:{action.value}:{digest}:{int(bucket)}"
        previous_key = f"accounts:{action.value}:{digest}:{int(bucket) - 1}"
        # Alive until the end of the NEXT bucket, which still weighs this one.
        ttl = timedelta(seconds=2 * window - into) + _THROTTLE_GRACE
        store = get_store(app)
        try:
            # One store step: count this attempt and read the previous window's.
            counted = store.run([Incr(key, ttl), Count(previous_key)])
            current, previous = int(counted[0] or 0), int(counted[1] or 0)
            weighted = current + previous * (1 - into / window)
            if weighted > limit:
                store.incr(key, ttl, -1)
                raise TooManyAttempts(int(window - into) + 1)
        except StoreUnavailable:
            log.warning("accounts throttle store unavailable: refusing %s", action.value)
            raise TryLater() from None
        throttle = cls(store, key, limit)
        throttle._ttl = ttl
        return throttle

    def give_back(self) -> None:
        if self.store is None or self.key is None:
            return
        # Housekeeping: a failure here only leaves the attempt counted (fail closed).
        with contextlib.suppress(StoreUnavailable):
            self.store.incr(self.key, self._ttl, -1)


# --- lockout ------------------------------------------------------------------------------


def block_durations(lockout: LockoutPolicy) -> list[timedelta]:
    """The length of the 1st, 2nd, ... block: block_minutes, doubling, capped at MAX_BLOCK
    (every later block is MAX_BLOCK)."""
    first = timedelta(minutes=lockout.block_minutes)
    durations = [min(first, MAX_BLOCK)]
    while durations[-1] < MAX_BLOCK:
        durations.append(min(durations[-1] * 2, MAX_BLOCK))
    return durations


#: An account id that no row has (ids are UUIDs): the target of an unknown username's UPDATE.
_NOBODY = "-"


def _count_failure(
    session: Session,
    settings: Settings,
    policies: Policies,
    account: Account | None,
    now: datetime,
    *,
    counter: str = "failed_logins",
) -> bool:
    """Add one failure to `counter` (failed_logins, or totp_failures for authenticator codes);
    the one that reaches `lockout.max_failures` blocks the account (with backoff) and restarts
    the count. True when this failure started a block.

    One UPDATE reads and writes the counter, so concurrent failures in several workers are all
    counted. Failures keep counting during a block: a further run of them extends it.

    `account` None (an unknown username) runs the same UPDATE for an id no row has, so an
    unknown username costs what a known one with a wrong password costs (no enumeration by
    timing, issue 5).
    """
    lockout = policies.accounts.lockout
    column = getattr(Account, counter)
    reaches = column + 1 >= lockout.max_failures
    durations = block_durations(lockout)
    until = sa.case(
        *[
            (Account.block_count == i, sa.literal(now + d, UTCDateTime()))
            for i, d in enumerate(durations)
        ],
        else_=sa.literal(now + MAX_BLOCK, UTCDateTime()),
    )
    row = session.execute(
        sa.update(Account)
        .where(Account.id == (account.id if account is not None else _NOBODY))
        .values(
            {
                counter: sa.case((reaches, 0), else_=column + 1),
                "block_count": sa.case(
                    (reaches, Account.block_count + 1), else_=Account.block_count
                ),
                "blocked_until": sa.case((reaches, until), else_=Account.blocked_until),
            }
        )
        .returning(column, Account.blocked_until)
        .execution_options(synchronize_session=False)
    ).first()
    started = row is not None and row[0] == 0
    if started and account is not None:
        record_event(session, account.id, EventKind.BLOCKED, at=now)
        _audit(session, settings, account, "account.blocked", "success")
    return started


def count_failed_login(
    session: Session, settings: Settings, policies: Policies, account: Account,
    *, counter: str = "failed_logins",
) -> bool:
    """Count a failed factor for `account` (for the login flow's other factors); see
    `_count_failure`. Does not commit."""
    return _count_failure(session, settings, policies, account, clock.now(), counter=counter)


# --- letter codes -------------------------------------------------------------------------


def _token_hmac(settings: Settings, token: str) -> str:
    key = settings.derive_key("code/recovery-email")
    return hmac.new(key, token.encode(), "sha256").hexdigest()


class _CodeRow(Protocol):
    """An account code as read for a check (`_codes`): a plain row, read-only."""

    id: str
    code_hmac: str
    channel: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    superseded_at: datetime | None
    attempts: int


_ACCOUNT_CODES: sa.Table = AccountCode.__table__  # type: ignore[assignment]
_CODES = Prepared(
    sa.select(_ACCOUNT_CODES).where(
        _ACCOUNT_CODES.c.account_id == sa.bindparam("b_account"),
        _ACCOUNT_CODES.c.kind == sa.bindparam("b_kind"),
    )
)


def _codes(session: Session, account_id: str, kind: CodeKind) -> list[_CodeRow]:
    """The account's codes of `kind`, as stored now, as plain rows: no ORM objects, which a
    known username's check would build and an unknown one's would not (timing)."""
    rows = _CODES.execute(session.connection(), {"b_account": account_id, "b_kind": kind.value})
    return cast(list[_CodeRow], rows.all())


def _match(rows: list[_CodeRow], digest: str | None) -> _CodeRow | None:
    """The row whose HMAC equals `digest`; every row is compared, in constant time."""
    found: _CodeRow | None = None
    for row in rows:
        if digest is not None and codes_equal(row.code_hmac, digest) and found is None:
            found = row
    return found


def _live(row: _CodeRow) -> bool:
    return row.used_at is None and row.superseded_at is None


def _refusal(row: _CodeRow, now: datetime, max_attempts: int) -> str | None:
    """Why a matching row cannot be used, or None when it can."""
    if row.used_at is not None:
        return "used"
    if row.superseded_at is not None or row.expires_at <= now or row.attempts >= max_attempts:
        return "expired"
    return None


def _count_attempt(session: Session, rows: list[_CodeRow]) -> None:
    """One more attempt on each live code of `rows`. The UPDATE runs also when there is none
    (it then matches no row), so a wrong code costs the same whether or not the account has
    live codes, and whether or not the username exists (no enumeration by timing)."""
    ids = [r.id for r in rows if _live(r)] or [_NOBODY]
    session.execute(
        sa.update(AccountCode)
        .where(AccountCode.id.in_(ids))
        .values(attempts=AccountCode.attempts + 1)
        .execution_options(synchronize_session=False)
    )


def _wrong_code_for_nobody(
    session: Session, settings: Settings, kind: CodeKind, code: str
) -> None:
    """What a known username with a wrong code costs (its code rows read and the digest
    compared; an account without live codes counts no attempt), for an unknown username:
    no enumeration by timing."""
    rows = _codes(session, _NOBODY, kind)
    _match(rows, _code_digest(settings, kind, code))
    _count_attempt(session, rows)


def _consume(session: Session, row: _CodeRow, now: datetime, max_attempts: int) -> bool:
    """Use the code up; False when another request used (or ended) it first."""
    result = session.execute(
        sa.update(AccountCode)
        .where(
            AccountCode.id == row.id,
            AccountCode.used_at.is_(None),
            AccountCode.superseded_at.is_(None),
            AccountCode.attempts < max_attempts,
            AccountCode.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def _supersede(session: Session, account_id: str, kind: CodeKind, now: datetime) -> None:
    session.execute(
        sa.update(AccountCode)
        .where(
            AccountCode.account_id == account_id,
            AccountCode.kind == kind.value,
            AccountCode.used_at.is_(None),
            AccountCode.superseded_at.is_(None),
        )
        .values(superseded_at=now)
        .execution_options(synchronize_session=False)
    )


def _code_digest(settings: Settings, kind: CodeKind, raw: object) -> str | None:
    code = normalise_code(raw) if isinstance(raw, str) else ""
    return code_hmac(settings, kind, code) if is_well_formed(code, kind) else None


# --- texts for the phone ------------------------------------------------------------------

# Letter codes by SMS or voice call. Kept here rather than in the Babel catalog for the reasons
# gateway.sms.messages gives (the account's language outside a request; GSM-7 only, so one
# segment-priced text; the WebOTP line last: shared/INTERFACE.md "Messages to a phone").
_CODE_SMS = {
    "en": {
        CodeKind.UNBLOCK: "{service}: your unblock code is {code}. Valid for {minutes} minutes. "
        "Never share it: we will never ask you for it.",
        CodeKind.RECOVERY: "{service}: your recovery code is {code}. Valid for {minutes} "
        "minutes. You also need the link we e-mailed you. Never share it.",
    },
    "nl": {
        CodeKind.UNBLOCK: "{service}: uw deblokkeercode is {code}. {minutes} minuten geldig. "
        "Deel deze code nooit: wij vragen er nooit om.",
        CodeKind.RECOVERY: "{service}: uw herstelcode is {code}. {minutes} minuten geldig. U "
        "hebt ook de link uit onze e-mail nodig. Deel deze code nooit.",
    },
}
_CODE_VOICE = {
    "en": {
        CodeKind.UNBLOCK: "This is {service}. Your unblock code is: {code}. Once more: {code}. "
        "Never share this code.",
        CodeKind.RECOVERY: "This is {service}. Your recovery code is: {code}. Once more: "
        "{code}. Never share this code.",
    },
    "nl": {
        CodeKind.UNBLOCK: "Dit is {service}. Uw deblokkeercode is: {code}. Nogmaals: {code}. "
        "Deel deze code nooit.",
        CodeKind.RECOVERY: "Dit is {service}. Uw herstelcode is: {code}. Nogmaals: {code}. "
        "Deel deze code nooit.",
    },
}


def code_text(
    *, kind: CodeKind, code: str, language: str, channel: str, issuer_host: str,
    validity: timedelta,
) -> str:
    """The SMS (ending with the WebOTP line) or the spoken text that carries a letter code."""
    lang = message_language(language)
    minutes = int(validity.total_seconds() // 60)
    if channel == Channel.VOICE.value:
        # Characters apart, so a speech engine reads them one by one.
        spoken = ", ".join(code)
        return _CODE_VOICE[lang][kind].format(service=SERVICE_NAME, code=spoken)
    body = _CODE_SMS[lang][kind].format(service=SERVICE_NAME, code=code, minutes=minutes)
    return f"{body}\n\n@{issuer_host} #{code}"


# --- background delivery ------------------------------------------------------------------


def _executor(app: Flask) -> ThreadPoolExecutor:
    with _deliveries_lock:
        executor = app.extensions.get(_DELIVERIES)
        if executor is None:
            executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="account-codes")
            app.extensions[_DELIVERIES] = executor
            app.extensions[_DELIVERIES + ".pending"] = set()
    assert isinstance(executor, ThreadPoolExecutor)
    return executor


def init_app(app: Flask) -> None:
    """Background deliveries asked for during a request start when it is over (`_in_background`)."""
    app.teardown_request(_start_after_answer)


def _start_after_answer(_exc: BaseException | None) -> None:
    jobs: list[Callable[[], None]] | None = g.pop("gateway_after_answer", None)
    for start in jobs or ():
        try:
            start()
        except Exception as exc:  # the answer is made: a delivery that cannot start is logged
            log.error("account code delivery not started (%s)", type(exc).__name__)


def _in_background(app: Flask, func: Callable[..., None], *args: Any) -> None:
    """Run `func(app, *args)` after the answer: what only a known account costs (codes, SMS,
    e-mail) must not show in the response time (no account enumeration by timing).

    In a request the job is handed to the worker thread only when the request is over (its
    teardown, `init_app`): started at once, it would compete with the rest of the request for
    the interpreter and make a known username's answer measurably slower (about 0.3 ms of
    1.5 in bench/enumeration_timing.py). Outside a request it starts at once."""
    if has_request_context():
        g.setdefault("gateway_after_answer", []).append(lambda: _submit(app, func, *args))
    else:
        _submit(app, func, *args)


def _submit(app: Flask, func: Callable[..., None], *args: Any) -> None:
    def run() -> None:
        with app.app_context():
            try:
                func(app, *args)
            except Exception as exc:  # a worker thread has nobody else to report to
                log.error("account code delivery failed (%s)", type(exc).__name__)

    executor = _executor(app)
    pending: set[Future[None]] = app.extensions[_DELIVERIES + ".pending"]
    future = executor.submit(run)
    with _deliveries_lock:
        pending.add(future)
    future.add_done_callback(lambda f: _forget(pending, f))


def _forget(pending: set[Future[None]], future: Future[None]) -> None:
    with _deliveries_lock:
        pending.discard(future)


def wait_for_deliveries(app: Flask, timeout: float = 30.0) -> None:
    """Wait until every background delivery started so far has finished (tests, shutdown)."""
    with _deliveries_lock:
        pending = list(app.extensions.get(_DELIVERIES + ".pending", ()))
    if pending:
        wait(pending, timeout=timeout)


def _send_letter_code(
    app: Flask,
    session: Session,
    account: Account,
    *,
    kind: CodeKind,
    purpose: Purpose,
    validity: timedelta,
    ip: str | None,
) -> AccountCode | None:
    """Make a new `kind` code (ending the account's earlier ones), count it against the SMS
    abuse limits and hand it to the dispatcher. Returns the committed row, or None when
    nothing was sent (phone refused by policy, limits, every provider failed)."""
    settings = get_settings(app)
    policies = get_policies(app)
    assert account.phone_e164 is not None
    try:
        phone = parse_phone(account.phone_e164, policies.sms)
    except PhoneRejected as exc:
        log.warning("%s code not sent: phone refused by policy (%s)", purpose.value, exc)
        return None
    code = new_code(kind)
    host = host_of(settings.issuer)

    def text_for(value: str) -> str:
        return code_text(
            kind=kind, code=value, language=account.language, channel=phone.channel.value,
            issuer_host=host, validity=validity,
        )

    units = 1 if phone.channel is Channel.VOICE else segments(text_for(code)).count
    try:
        get_sms_service(app).limiter.check_and_count(
            e164=phone.e164, region=phone.region, account_id=account.id, ip=ip,
            segments=units, flow_key=f"{purpose.value}|{account.id}",
        )
    except (LimitExceeded, SendingUnavailable) as exc:
        log.warning("%s code not sent: %s", purpose.value, exc)
        return None
    now = clock.now()
    _supersede(session, account.id, kind, now)
    row = AccountCode(
        account_id=account.id,
        kind=kind.value,
        code_hmac=code_hmac(settings, kind, code),
        channel=phone.channel.value,
        created_at=now,
        expires_at=now + validity,
        used_at=None,
        superseded_at=None,
        attempts=0,
    )
    session.add(row)
    session.flush()
    _audit(session, settings, account, f"account.{purpose.value}_code", "issued")
    # Committed before sending: the dispatcher wants no open write on SQLite, and the code a
    # provider delivers must be the one that verifies.
    session.commit()
    try:
        get_dispatcher(app).send(
            session, to=phone.e164, channel=phone.channel.value, text=text_for(code),
            purpose=purpose.value, idempotency_key=f"{purpose.value}:{row.id}",
        )
    except DeliveryFailed:
        log.warning("%s code not delivered: every provider failed", purpose.value)
        return None
    return row


def _mail(app: Flask, to: str | None, template: str, language: str, **context: Any) -> None:
    """Send a notice; a notice that cannot be sent never undoes what it tells about."""
    if not to:
        return
    try:
        get_mail(app).send(
            render_template(to, template, message_language(language), **context)
        )
    except MailError as exc:
        log.warning("mail %s not sent (%s)", template, exc.reason)


def _end_sessions(session: Session, account_id: str) -> bool:
    """Call the login flow's hook that ends every session of the account; False when the
    flow module does not exist (yet)."""
    try:
        module = importlib.import_module("gateway.flows.sessions")
    except ModuleNotFoundError as exc:
        if exc.name in ("gateway.flows", "gateway.flows.sessions"):
            log.warning("gateway.flows.sessions missing: sessions not ended")
            return False
        raise
    module.end_all_sessions(session, account_id)
    session.commit()
    return True


# --- activation ---------------------------------------------------------------------------


def activate(
    session: Session,
    settings: Settings,
    policies: Policies,
    *,
    username: str,
    password: str,
    activation_code: str,
    ip: str | None,
    app: Flask | None = None,
) -> Account:
    """Activate an account made at a desk: username, password and the A code (issue 5 item 1).

    The code must be the account's live activation code (within ACTIVATION_CODE_VALIDITY,
    not used, not superseded, fewer than `ACTIVATION_MAX_ATTEMPTS` wrong tries). A code that
    came by SMS or voice call verifies the phone; a letter does not. On success the account
    goes from `pending_activation` to `active`, an audit entry and an `activated` history
    event are written, and a notice is mailed. `app` (default: the current app) gives the
    store and the mail sender.

    Raises LoginFailed (unknown username, wrong password, account neither pending nor
    active), AccountBlocked (right password only), CodeRefused(invalid/expired/used,
    CodeKind.ACTIVATION), TooManyAttempts, TryLater.
    """
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    throttle = _Throttle.take(app, settings, policies, Action.ACTIVATION, ip)
    passwords = passwords_for(policies.accounts.password)
    account = find_account(session, username)
    if account is None:
        passwords.verify_dummy(password)
        _count_failure(session, settings, policies, None, clock.now())
        _audit(session, settings, None, "account.activate", "failure:unknown_user")
        session.commit()
        raise LoginFailed()
    now = clock.now()
    if not passwords.verify(account.password_hash, password):
        _count_failure(session, settings, policies, account, now)
        _audit(session, settings, account, "account.activate", "failure:wrong_password")
        session.commit()
        raise LoginFailed()
    if account.status == AccountStatus.ACTIVE:
        session.rollback()
        raise CodeRefused("used", CodeKind.ACTIVATION)
    if account.status != AccountStatus.PENDING_ACTIVATION:
        _audit(session, settings, account, "account.activate", "failure:not_pending")
        session.commit()
        raise LoginFailed()
    if _blocked(account, now):
        assert account.blocked_until is not None
        _audit(session, settings, account, "account.activate", "failure:blocked")
        session.commit()
        raise AccountBlocked(account.blocked_until)

    rows = _codes(session, account.id, CodeKind.ACTIVATION)
    row = _match(rows, _code_digest(settings, CodeKind.ACTIVATION, activation_code))
    if row is None:
        _count_attempt(session, rows)
        _audit(session, settings, account, "account.activate", "failure:wrong_code")
        session.commit()
        raise CodeRefused("invalid", CodeKind.ACTIVATION)
    refusal = _refusal(row, now, ACTIVATION_MAX_ATTEMPTS)
    if refusal is None and not _consume(session, row, now, ACTIVATION_MAX_ATTEMPTS):
        refusal = "used"
    if refusal is not None:
        session.rollback()
        _audit(session, settings, account, "account.activate", f"failure:code_{refusal}")
        session.commit()
        raise CodeRefused(refusal, CodeKind.ACTIVATION)

    values: dict[str, Any] = {
        "status": AccountStatus.ACTIVE.value,
        "activated_at": now,
        "failed_logins": 0,
        "block_count": 0,
        "blocked_until": None,
    }
    if row.channel in PHONE_CHANNELS:
        # The code reached this phone: that proves possession (issue 5 item 1).
        values["phone_verified_at"] = now
    if passwords.needs_rehash(account.password_hash):
        values["password_hash"] = passwords.hash(password)
    moved = session.execute(
        sa.update(Account)
        .where(Account.id == account.id, Account.status == AccountStatus.PENDING_ACTIVATION)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(moved) != 1:
        # Activated by a parallel request with the same code a moment ago.
        session.rollback()
        raise CodeRefused("used", CodeKind.ACTIVATION)
    record_event(session, account.id, EventKind.ACTIVATED, at=now, route=row.channel)
    _audit(session, settings, account, "account.activate", "success")
    session.commit()
    throttle.give_back()
    reload(session, account)
    _mail(app, account.email, "account_activated", account.language, username=account.username)
    return account


# --- password check -----------------------------------------------------------------------


def check_password(
    session: Session,
    settings: Settings,
    policies: Policies,
    *,
    username: str,
    password: str,
    ip: str | None,
    app: Flask | None = None,
    commit: bool = True,
) -> Account:
    """The first login step: the account when username and password are right and it is
    active and not blocked.

    Counts a failure in the row (blocking after `lockout.max_failures`, with backoff), clears
    the count and the backoff on success, rehashes the password when the argon2 parameters
    changed, and sets `last_login_at`. `app` (default: the current app) gives the store.
    Every refusal is committed here. `commit` False: a success (the account's UPDATE and its
    audit entry) is left in the session's open transaction, for the caller to commit
    together with what the login writes next (one transaction instead of two).

    Raises LoginFailed, AccountSuspended and AccountBlocked (right password only),
    TooManyAttempts, TryLater.
    """
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    throttle = _Throttle.take(app, settings, policies, Action.LOGIN, ip)
    passwords = passwords_for(policies.accounts.password)
    account = find_account(session, username)
    _before_hash(session)
    if account is None:
        passwords.verify_dummy(password)
        _count_failure(session, settings, policies, None, clock.now())
        _audit(session, settings, None, "account.login", "failure:unknown_user")
        session.commit()
        raise LoginFailed()
    # The password is checked whatever the account's state, so every path costs the same.
    ok = passwords.verify(account.password_hash, password)
    now = clock.now()
    if not ok:
        _count_failure(session, settings, policies, account, now)
        _audit(session, settings, account, "account.login", "failure:wrong_password")
        session.commit()
        raise LoginFailed()
    if account.status != AccountStatus.ACTIVE:
        _audit(session, settings, account, "account.login", f"failure:{account.status}")
        session.commit()
        raise LoginFailed()
    if account.suspended_at is not None:
        _audit(session, settings, account, "account.login", "failure:suspended")
        session.commit()
        raise AccountSuspended()
    if _blocked(account, now):
        assert account.blocked_until is not None
        _audit(session, settings, account, "account.login", "failure:blocked")
        session.commit()
        raise AccountBlocked(account.blocked_until)

    new_hash = passwords.hash(password) if passwords.needs_rehash(account.password_hash) else None
    # Only when no parallel request blocked the account meanwhile. RETURNING gives the row
    # as it now is, which the caller gets (no second read).
    cleared = _LOGGED_IN.execute(session.connection(), {
        "b_id": account.id, "b_now": now, "b_hash": new_hash,
    }).first()
    if cleared is None:
        session.rollback()
        account = find_account(session, username)
        session.commit()
        if account is not None and account.suspended_at is not None:
            raise AccountSuspended()
        if account is not None and account.blocked_until is not None:
            raise AccountBlocked(account.blocked_until)
        raise LoginFailed()
    _audit(session, settings, account, "account.login", "success:password")
    if commit:
        session.commit()
    # The password was right: this attempt does not use up the address's budget.
    throttle.give_back()
    held = account.__dict__
    for column, value in zip(_ACCOUNT_COLUMNS, cleared, strict=True):
        # The row as the UPDATE left it; most columns are as they were read.
        if column.key not in held or held[column.key] != value:
            set_committed_value(account, column.key, value)
    return account


# --- unblock ------------------------------------------------------------------------------


def start_unblock(
    session: Session,
    settings: Settings,
    app: Flask,
    *,
    username: str,
    password: str,
    ip: str | None,
) -> None:
    """Send an unblock code (D) to the verified phone, only when username and password are
    right and the account is active, blocked and not suspended. Returns None in every case:
    show `UNBLOCK_REQUESTED`. A wrong password counts as a failed login.

    Raises only TooManyAttempts or TryLater (per network, never per account).
    """
    policies = get_policies(app)
    throttle = _Throttle.take(app, settings, policies, Action.UNBLOCK, ip)
    passwords = passwords_for(policies.accounts.password)
    account = find_account(session, username)
    _before_hash(session)
    if account is None:
        passwords.verify_dummy(password)
        _count_failure(session, settings, policies, None, clock.now())
        _audit(session, settings, None, "account.unblock_request", "failure:unknown_user")
        session.commit()
        return
    ok = passwords.verify(account.password_hash, password)
    now = clock.now()
    if not ok:
        _count_failure(session, settings, policies, account, now)
        _audit(session, settings, account, "account.unblock_request", "failure:wrong_password")
        session.commit()
        return
    eligible = (
        account.status == AccountStatus.ACTIVE
        and account.suspended_at is None
        and _blocked(account, now)
        and account.phone_e164 is not None
        and account.phone_verified_at is not None
    )
    outcome = "accepted" if eligible else "failure:not_eligible"
    _audit(session, settings, account, "account.unblock_request", outcome)
    session.commit()
    throttle.give_back()
    if eligible:
        _in_background(app, _deliver_unblock_code, account.id, ip)


def _deliver_unblock_code(app: Flask, account_id: str, ip: str | None) -> None:
    with get_db(app).sessionmaker() as session:
        account = session.get(Account, account_id)
        if (
            account is None or account.status != AccountStatus.ACTIVE
            or account.suspended_at is not None
        ):
            return
        _send_letter_code(
            app, session, account, kind=CodeKind.UNBLOCK, purpose=Purpose.UNBLOCK,
            validity=UNBLOCK_CODE_VALIDITY, ip=ip,
        )


def finish_unblock(
    session: Session,
    settings: Settings,
    app: Flask,
    *,
    username: str,
    code: str,
    ip: str | None,
) -> Account:
    """Lift the block with the D code: clears the block, the failure counts and the backoff.

    Raises CodeRefused(invalid/expired/used, CodeKind.UNBLOCK) (also for an unknown
    username), TooManyAttempts, TryLater.
    """
    policies = get_policies(app)
    throttle = _Throttle.take(app, settings, policies, Action.UNBLOCK_CODE, ip)
    found = _account_ref(session, username)
    digest = _code_digest(settings, CodeKind.UNBLOCK, code)
    if found is None:
        _wrong_code_for_nobody(session, settings, CodeKind.UNBLOCK, code)
        _audit(session, settings, None, "account.unblock", "failure:unknown_user")
        session.commit()
        raise CodeRefused("invalid", CodeKind.UNBLOCK)
    account_id, status = found
    now = clock.now()
    rows = _codes(session, account_id, CodeKind.UNBLOCK)
    row = _match(rows, digest)
    if row is None:
        _count_attempt(session, rows)
        _audit(session, settings, account_id, "account.unblock", "failure:wrong_code")
        session.commit()
        raise CodeRefused("invalid", CodeKind.UNBLOCK)
    account = read_account(session, account_id)
    if account is None:  # removed meanwhile
        session.rollback()
        raise CodeRefused("invalid", CodeKind.UNBLOCK)
    refusal = _refusal(row, now, CODE_MAX_ATTEMPTS)
    if refusal is None and (status != AccountStatus.ACTIVE or account.suspended_at is not None):
        refusal = "expired"
    if refusal is None and not _consume(session, row, now, CODE_MAX_ATTEMPTS):
        refusal = "used"
    if refusal is not None:
        session.rollback()
        _audit(session, settings, account, "account.unblock", f"failure:code_{refusal}")
        session.commit()
        raise CodeRefused(refusal, CodeKind.UNBLOCK)
    session.execute(
        sa.update(Account)
        .where(Account.id == account.id)
        .values(failed_logins=0, totp_failures=0, block_count=0, blocked_until=None)
        .execution_options(synchronize_session=False)
    )
    record_event(session, account.id, EventKind.UNBLOCKED, at=now, route=row.channel)
    _audit(session, settings, account, "account.unblock", "success")
    session.commit()
    throttle.give_back()
    reload(session, account)
    return account


# --- recovery -----------------------------------------------------------------------------


def start_recovery(
    session: Session,
    settings: Settings,
    app: Flask,
    *,
    username: str,
    ip: str | None,
) -> None:
    """Forgotten password: send a recovery code (H) to the verified phone AND a confirmation
    token (a link) to the verified e-mail address, when the account is active (not suspended)
    and has both.
    Returns None in every case: show `RECOVERY_REQUESTED`.

    Every request counts against the per-IP throttle (it costs an SMS and an e-mail), on
    top of the SMS service's own limits per number, account and country.

    Raises only TooManyAttempts or TryLater (per network, never per account).
    """
    policies = get_policies(app)
    _Throttle.take(app, settings, policies, Action.RECOVERY, ip)
    # Only the columns the decision needs, as a plain row: building the ORM object for a
    # known username made its answer measurably slower than an unknown one's
    # (bench/enumeration_timing.py); the delivery reads the account itself.
    key = username_key(username)
    row = (
        _RECOVERY_FIELDS.execute(session.connection(), {"b_key": key}).first()
        if key is not None else None
    )
    if row is None:
        _audit(session, settings, None, "account.recovery_request", "failure:unknown_user")
        session.commit()
        return
    account_id, status, phone, phone_verified_at, email, email_verified_at, suspended_at = row
    eligible = (
        status == AccountStatus.ACTIVE
        and suspended_at is None
        and phone is not None
        and phone_verified_at is not None
        and email is not None
        and email_verified_at is not None
    )
    outcome = "accepted" if eligible else "failure:not_eligible"
    _audit(session, settings, account_id, "account.recovery_request", outcome)
    session.commit()
    if eligible:
        _in_background(app, _deliver_recovery, account_id, ip)


_RECOVERY_FIELDS = Prepared(
    sa.select(
        _ACCOUNTS.c.id, _ACCOUNTS.c.status, _ACCOUNTS.c.phone_e164,
        _ACCOUNTS.c.phone_verified_at, _ACCOUNTS.c.email, _ACCOUNTS.c.email_verified_at,
        _ACCOUNTS.c.suspended_at,
    ).where(_ACCOUNTS.c.username_key == sa.bindparam("b_key"))
)


def _deliver_recovery(app: Flask, account_id: str, ip: str | None) -> None:
    settings = get_settings(app)
    with get_db(app).sessionmaker() as session:
        account = session.get(Account, account_id)
        if (
            account is None or account.status != AccountStatus.ACTIVE or not account.email
            or account.suspended_at is not None
        ):
            return
        sms_row = _send_letter_code(
            app, session, account, kind=CodeKind.RECOVERY, purpose=Purpose.RECOVERY,
            validity=RECOVERY_CODE_VALIDITY, ip=ip,
        )
        if sms_row is None:
            # Without the SMS the e-mail alone is useless; the person asks again later.
            return
        token = secrets.token_urlsafe(EMAIL_TOKEN_BYTES)
        session.add(
            AccountCode(
                account_id=account.id,
                kind=CodeKind.RECOVERY.value,
                code_hmac=_token_hmac(settings, token),
                channel=EMAIL_CHANNEL,
                created_at=sms_row.created_at,
                expires_at=sms_row.expires_at,
                used_at=None,
                superseded_at=None,
                attempts=0,
            )
        )
        session.commit()
        link = f"{settings.issuer.rstrip('/')}{RECOVERY_LINK_PATH}?token={token}"
        minutes = int(RECOVERY_CODE_VALIDITY.total_seconds() // 60)
        _mail(app, account.email, "account_recovery", account.language, link=link,
              token=token, minutes=minutes)


def finish_recovery(
    session: Session,
    settings: Settings,
    app: Flask,
    *,
    username: str,
    h_code: str,
    email_token: str,
    new_password: str,
    ip: str | None,
) -> Account:
    """Set a new password with the H code and the e-mail token of the latest request.

    Also lifts any block, ends every session of the account
    (`gateway.flows.sessions.end_all_sessions`, when that module exists) and mails a notice.
    The codes are only used up when the new password is accepted.

    Raises CodeRefused(invalid/expired/used, CodeKind.RECOVERY) (also for an unknown
    username), PasswordRejected, TooManyAttempts, TryLater.
    """
    policies = get_policies(app)
    throttle = _Throttle.take(app, settings, policies, Action.RECOVERY_CODE, ip)
    found = _account_ref(session, username)
    if found is None:
        _wrong_code_for_nobody(session, settings, CodeKind.RECOVERY, h_code)
        _audit(session, settings, None, "account.recovery", "failure:unknown_user")
        session.commit()
        raise CodeRefused("invalid", CodeKind.RECOVERY)
    account_id, status = found
    now = clock.now()
    rows = _codes(session, account_id, CodeKind.RECOVERY)
    sms_rows = [r for r in rows if r.channel != EMAIL_CHANNEL]
    mail_rows = [r for r in rows if r.channel == EMAIL_CHANNEL]
    token = email_token.strip() if isinstance(email_token, str) else ""
    token_digest = _token_hmac(settings, token) if 0 < len(token) <= MAX_TOKEN_INPUT else None
    sms_row = _match(sms_rows, _code_digest(settings, CodeKind.RECOVERY, h_code))
    mail_row = _match(mail_rows, token_digest)
    if sms_row is None or mail_row is None:
        _count_attempt(session, rows)
        _audit(session, settings, account_id, "account.recovery", "failure:wrong_code")
        session.commit()
        raise CodeRefused("invalid", CodeKind.RECOVERY)
    account = read_account(session, account_id)
    if account is None:  # removed meanwhile
        session.rollback()
        raise CodeRefused("invalid", CodeKind.RECOVERY)
    refusal = _refusal(sms_row, now, CODE_MAX_ATTEMPTS) or _refusal(
        mail_row, now, CODE_MAX_ATTEMPTS
    )
    if refusal is None and (status != AccountStatus.ACTIVE or account.suspended_at is not None):
        refusal = "expired"
    if refusal is not None:
        _audit(session, settings, account, "account.recovery", f"failure:code_{refusal}")
        session.commit()
        raise CodeRefused(refusal, CodeKind.RECOVERY)

    problems = check_new_password(new_password, policies.accounts.password, account.username)
    if problems:
        # The codes stay usable: the person only has to choose a better password.
        session.rollback()
        raise PasswordRejected(problems)
    if not (
        _consume(session, sms_row, now, CODE_MAX_ATTEMPTS)
        and _consume(session, mail_row, now, CODE_MAX_ATTEMPTS)
    ):
        session.rollback()
        raise CodeRefused("used", CodeKind.RECOVERY)
    password_hash = passwords_for(policies.accounts.password).hash(new_password)
    session.execute(
        sa.update(Account)
        .where(Account.id == account.id)
        .values(
            password_hash=password_hash, password_changed_at=now, failed_logins=0,
            totp_failures=0, block_count=0, blocked_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    record_event(session, account.id, EventKind.PASSWORD_CHANGED, at=now, route="recovery")
    _audit(session, settings, account, "account.recovery", "success")
    session.commit()
    throttle.give_back()
    _end_sessions(session, account.id)
    reload(session, account)
    _mail(app, account.email, "password_reset", account.language, username=account.username)
    return account


# --- expiry -------------------------------------------------------------------------------


def expire_unused(
    session: Session, now: datetime, policy: AccountsPolicy, *, settings: Settings | None = None
) -> int:
    """Expire active accounts not used for `policy.expire_unused_days` (issue 5 item 9): last
    login, else activation, else creation. Idempotent (only active accounts change), in
    batches of EXPIRY_BATCH, each committed with its audit entries and history events.
    Returns how many accounts expired. `settings` defaults to the current app's."""
    cutoff = now - timedelta(days=policy.expire_unused_days)
    last_use = sa.func.coalesce(Account.last_login_at, Account.activated_at, Account.created_at)
    unused = sa.and_(Account.status == AccountStatus.ACTIVE.value, last_use < cutoff)
    total = 0
    while True:
        ids = list(
            session.scalars(
                sa.select(Account.id).where(unused).order_by(Account.id).limit(EXPIRY_BATCH)
            )
        )
        if not ids:
            break
        expired = list(
            session.scalars(
                sa.update(Account)
                .where(Account.id.in_(ids), unused)
                .values(status=AccountStatus.EXPIRED.value)
                .returning(Account.id)
                .execution_options(synchronize_session=False)
            )
        )
        for account_id in expired:
            record_event(session, account_id, EventKind.EXPIRED, at=now)
            audit.record(
                session, actor=SYSTEM_ACTOR, role=SYSTEM_ROLE, desk=None,
                action="account.expire", object_ref=f"account:{account_id}",
                outcome="success", settings=settings,
            )
        session.commit()
        total += len(expired)
        if len(ids) < EXPIRY_BATCH:
            break
    return total



__all__ = [
    "RECOVERY_REQUESTED",
    "UNBLOCK_REQUESTED",
    "AccountBlocked",
    "AccountError",
    "CodeRefused",
    "LoginFailed",
    "PasswordRejected",
    "TooManyAttempts",
    "TryLater",
    "activate",
    "block_durations",
    "check_password",
    "count_failed_login",
    "expire_unused",
    "find_account",
    "finish_recovery",
    "finish_unblock",
    "reload",
    "start_recovery",
    "start_unblock",
    "username_key",
    "wait_for_deliveries",
]
