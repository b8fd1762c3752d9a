"""One-time codes sent by SMS or voice: issued, stored as an HMAC, verified once.

Implements the code rules of issue 3 ("Codes") and the out-of-band verifier rules of
NIST SP 800-63B section 5.1.3.2: a random secret of about 20 bits from a CSPRNG, valid for at
most 10 minutes, accepted only once, with a hard limit on guesses. Each code is bound to a
purpose and a flow (a login flow, an application or an account): the HMAC covers
`purpose|flow_id|code`, so even a copied database row is useless for another purpose or flow.

Concurrency: one conditional UPDATE raises the attempt counter and, for the right code, spends
it (`... SET attempts = attempts + 1, used_at = <now when right> WHERE attempts < MAX_ATTEMPTS
AND used_at IS NULL`). The database decides which of two parallel
requests wins, so parallel guesses can never get a fourth try and one code can never log in
twice. Both functions work in the caller's transaction and the caller MUST commit it whatever
the outcome (`SmsService.verify_code` does): a rolled-back wrong guess would be a free guess.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway import clock
from gateway.db import Base, Prepared, PreparedResult, UTCDateTime, transaction_connection
from gateway.settings import Settings
from gateway.sms.keyed import keyed_hmac

#: Six decimal digits, about 20 bits: the minimum entropy of an out-of-band secret
#: (NIST SP 800-63B 5.1.3.2) and what issue 3 asks for.
CODE_DIGITS = 6

#: A code is valid for at most 10 minutes (NIST SP 800-63B 5.1.3.2; issue 3). The policy's
#: `code_ttl_seconds` chooses the actual lifetime below this ceiling.
MAX_CODE_TTL = timedelta(minutes=10)

#: Guesses per code, right or wrong; the fourth is refused even when right (issue 3). With
#: three tries a guesser wins with p = 3 / 10**6 per code; the abuse limits bound how many
#: codes anyone can make us send (NIST SP 800-63B 5.2.2 rate limiting).
MAX_ATTEMPTS = 3

#: Longest input looked at; anything longer is malformed without further work.
MAX_INPUT_LENGTH = 32

#: Purposes are short machine names (`gateway.sms.purposes.Purpose` values).
_PURPOSE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")
_CODE_RE = re.compile(rf"[0-9]{{{CODE_DIGITS}}}")
#: Separators people type or paste inside a code ("123 456", "123-456").
_SEPARATORS = str.maketrans("", "", " \t-\u00a0\u2009\u202f\u2010\u2011\u2012\u2013")

FLOW_ID_MAX = 128


class VerifyOutcome(StrEnum):
    OK = "ok"
    #: Not the code; one attempt used.
    WRONG = "wrong"
    EXPIRED = "expired"
    #: Already used once (a replay).
    USED = "used"
    #: MAX_ATTEMPTS already used on this code; a new code is needed.
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    #: No code was issued for this purpose and flow.
    NO_CODE = "no_code"
    #: Not six digits. No attempt is used and the database is not read: such input can never
    #: be the code, so refusing it for free gives a guesser nothing, while a person who
    #: mistyped keeps their tries. It also says nothing about whether a code exists.
    MALFORMED = "malformed"


class OneTimeCode(Base):
    __tablename__ = "one_time_codes"
    __table_args__ = (
        # Every issue and verify looks up the codes of one purpose and flow.
        sa.Index("ix_one_time_codes_purpose_flow_id", "purpose", "flow_id"),
        # At most one live code per purpose and flow, enforced by the database as a backstop
        # to the lock in `issue_code` ("a new code ends the previous one").
        sa.Index(
            "uq_one_time_codes_live",
            "purpose",
            "flow_id",
            unique=True,
            sqlite_where=sa.text("used_at IS NULL AND superseded_at IS NULL"),
            postgresql_where=sa.text("used_at IS NULL AND superseded_at IS NULL"),
        ),
        sa.CheckConstraint(f"attempts >= 0 AND attempts <= {MAX_ATTEMPTS}", name="attempts_range"),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    purpose: Mapped[str] = mapped_column(sa.String(40))
    flow_id: Mapped[str] = mapped_column(sa.String(FLOW_ID_MAX))
    #: HMAC-SHA256(derive_key("otp"), purpose|flow_id|code), hex.
    code_hmac: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


_CODES: sa.Table = OneTimeCode.__table__  # type: ignore[assignment]

# The statements of every issue and verify, built and compiled once and sent to the driver
# in the caller's transaction (gateway.db.Prepared): building them, and SQLAlchemy's
# execution layer, would cost more CPU than the database does.
_SUPERSEDE = Prepared(
    sa.update(_CODES)
    .where(
        _CODES.c.purpose == sa.bindparam("b_purpose"),
        _CODES.c.flow_id == sa.bindparam("b_flow_id"),
        _CODES.c.used_at.is_(None),
        _CODES.c.superseded_at.is_(None),
    )
    .values(superseded_at=sa.bindparam("b_now", type_=UTCDateTime()))
)
_INSERT = Prepared(sa.insert(_CODES).values(
    {column.key: sa.bindparam(column.key) for column in _CODES.columns}
))
#: PostgreSQL only (see `_lock_flow`); sent to the driver as compiled like the rest.
_ADVISORY_LOCK = Prepared(
    sa.text("SELECT pg_advisory_xact_lock(:key)").bindparams(
        sa.bindparam("key", type_=sa.BigInteger)
    )
)
#: The newest code of a purpose and flow that no resend replaced.
_LIVE = Prepared(
    sa.select(_CODES)
    .where(
        _CODES.c.purpose == sa.bindparam("purpose"),
        _CODES.c.flow_id == sa.bindparam("flow_id"),
        _CODES.c.superseded_at.is_(None),
    )
    .order_by(_CODES.c.created_at.desc())
    .limit(1)
)
_BY_ID = sa.select(_CODES).where(_CODES.c.id == sa.bindparam("id"))
_TAKE_ATTEMPT = Prepared(
    sa.update(_CODES)
    .where(
        _CODES.c.id == sa.bindparam("b_id"),
        _CODES.c.attempts < sa.bindparam("b_limit"),
        _CODES.c.used_at.is_(None),
        _CODES.c.superseded_at.is_(None),
    )
    .values(
        attempts=_CODES.c.attempts + 1,
        used_at=sa.bindparam("b_used_at", type_=UTCDateTime()),
    )
)


@dataclass(frozen=True)
class IssuedCode:
    """A freshly issued code. `code` is the only copy in clear: send it, never store or log it."""

    id: str
    code: str
    expires_at: datetime

    def __repr__(self) -> str:  # keeps the code out of logs and tracebacks
        return f"IssuedCode(id={self.id!r}, expires_at={self.expires_at.isoformat()})"


def code_hmac(settings: Settings, *, purpose: str, flow_id: str, code: str) -> str:
    # The purpose can never contain "|" (checked) and the code is a fixed six digits at the
    # end, so the joined message is unambiguous.
    message = f"{purpose}|{flow_id}|{code}".encode()
    return keyed_hmac(settings.derive_key("otp")).hexdigest(message)


def normalise_code(raw: object) -> str | None:
    """The six ASCII digits in what a person typed, or None when it cannot be a code.

    Spaces and dashes between digits are dropped and full-width digits folded (NFKC), because
    people paste "123 456" and some phone keyboards type full-width; other scripts' digits
    (which `str.isdigit` would accept) are refused.
    """
    if not isinstance(raw, str) or len(raw) > MAX_INPUT_LENGTH:
        return None
    candidate = unicodedata.normalize("NFKC", raw).translate(_SEPARATORS)
    return candidate if _CODE_RE.fullmatch(candidate) else None


def check_binding(purpose: str, flow_id: str) -> tuple[str, str]:
    purpose = str(purpose)
    if not _PURPOSE_RE.fullmatch(purpose):
        raise ValueError("purpose must be a short lower-case name")
    if not isinstance(flow_id, str) or not flow_id or len(flow_id) > FLOW_ID_MAX:
        raise ValueError(f"flow_id must be a non-empty string of at most {FLOW_ID_MAX} characters")
    return purpose, flow_id


def _lock_flow(conn: sa.Connection, purpose: str, flow_id: str) -> None:
    """Serialise issuing for one purpose and flow, so two parallel resends cannot both leave
    a live code. SQLite needs nothing: every transaction there begins IMMEDIATE (gateway.db)."""
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"one_time_codes|{purpose}|{flow_id}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    _ADVISORY_LOCK.execute(conn, {"key": key})


def issue_code(
    session: Session | sa.Connection, settings: Settings, *, purpose: str, flow_id: str,
    ttl: timedelta,
) -> IssuedCode:
    """Issue a new code for `purpose` and `flow_id`, ending every earlier code of the pair.

    Runs in the caller's transaction; nothing is valid until the caller commits.
    """
    purpose, flow_id = check_binding(purpose, flow_id)
    if not timedelta(0) < ttl <= MAX_CODE_TTL:
        raise ValueError("a code's lifetime must be positive and at most 10 minutes")
    conn = transaction_connection(session)
    _lock_flow(conn, purpose, flow_id)
    now = clock.now()
    _SUPERSEDE.execute(conn, {"b_purpose": purpose, "b_flow_id": flow_id, "b_now": now})
    # Uniform over 000000..999999 from the OS CSPRNG (pyotp's generators are base32 secrets
    # for TOTP, not decimal codes).
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    issued = IssuedCode(id=secrets.token_hex(16), code=code, expires_at=now + ttl)
    _INSERT.execute(conn, {
        "id": issued.id,
        "purpose": purpose,
        "flow_id": flow_id,
        "code_hmac": code_hmac(settings, purpose=purpose, flow_id=flow_id, code=code),
        "created_at": now,
        "expires_at": issued.expires_at,
        "used_at": None,
        "attempts": 0,
        "superseded_at": None,
    })
    return issued


def issue(
    session: Session, settings: Settings, *, purpose: str, flow_id: str, ttl: timedelta
) -> str:
    """Issue a new code (see `issue_code`) and return its six digits."""
    return issue_code(session, settings, purpose=purpose, flow_id=flow_id, ttl=ttl).code


def verify(
    session: Session | sa.Connection,
    settings: Settings,
    *,
    purpose: str,
    flow_id: str,
    code: object,
    max_attempts: int = MAX_ATTEMPTS,
) -> VerifyOutcome:
    """Check `code` against the live code of `purpose` and `flow_id`.

    Only the newest code counts: an older code after a resend is simply wrong. The caller must
    commit the transaction whatever the outcome, or the attempt is not counted. A policy may
    lower `max_attempts` (`SmsPolicy.code_max_attempts`), never raise it above MAX_ATTEMPTS.
    """
    purpose, flow_id = check_binding(purpose, flow_id)
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    limit = min(max_attempts, MAX_ATTEMPTS)
    candidate = normalise_code(code)
    if candidate is None:
        return VerifyOutcome.MALFORMED

    conn = transaction_connection(session)
    row = _LIVE.execute(conn, {"purpose": purpose, "flow_id": flow_id}).first()
    if row is None:
        return VerifyOutcome.NO_CODE
    if row.used_at is not None:
        return VerifyOutcome.USED
    if row.attempts >= limit:
        return VerifyOutcome.TOO_MANY_ATTEMPTS
    now = clock.now()
    if now >= row.expires_at:
        return VerifyOutcome.EXPIRED

    expected = code_hmac(settings, purpose=purpose, flow_id=flow_id, code=candidate)
    right = hmac.compare_digest(expected.encode(), row.code_hmac.encode())

    # Take one attempt and, when the code is right, spend the code, in ONE conditional UPDATE:
    # the row lock (PostgreSQL) or the write lock (SQLite) makes a parallel request re-check
    # `attempts < limit` and `used_at IS NULL` after this one, so a code logs in once at most
    # and parallel guesses never get an extra try.
    taken = _TAKE_ATTEMPT.execute(conn, {
        "b_id": row.id, "b_limit": limit, "b_used_at": now if right else None,
    })
    if _rowcount(taken) != 1:
        # A parallel request used the last attempt, spent the code, or a resend replaced it.
        row = conn.execute(_BY_ID, {"id": row.id}).one()
        if row.used_at is not None:
            return VerifyOutcome.USED
        if row.superseded_at is not None:
            return VerifyOutcome.WRONG
        return VerifyOutcome.TOO_MANY_ATTEMPTS
    return VerifyOutcome.OK if right else VerifyOutcome.WRONG


def _rowcount(result: PreparedResult) -> int:
    return result.rowcount
