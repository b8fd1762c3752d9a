"""Linking a foreign eID to a desk account (issue 8, item 4): link codes, the link table and
the look-up the eIDAS route makes at every login.

How a link comes about:

1. A person logged in through eIDAS (at least `LINK_LEVEL`) asks for a link code at
   `/eidas/link` (gateway.desks.eidas_link_views). The code (`K` + 8 characters of
   gateway.desks.codes.ALPHABET) is shown once; only its HMAC is kept, with the eID's
   pseudonymous subject key and the name, date of birth and country the eID asserted, sealed
   at rest (gateway.crypto), so that the desk can compare them with the identity document.
2. At a desk the officer opens the account by username, checks the passport or ID card
   against both the account and the eID's name and date of birth (`pending_link` shows them
   side by side, with the mismatches marked: the judgement is the officer's), and requests
   the four-eyes action `link_eidas` with the code (gateway.desks.four_eyes).
3. A second person, a supervisor of the same desk, approves: `execute_link` re-checks
   everything under row locks, uses the code up and writes the `eidas_links` row.

From then on `linked_account_id` answers the eIDAS route's question "is this subject linked
to an account?", and relying parties entitled to the BSN get it (issue 8, item 4).

Rules: one account per eID (`subject_key` is unique); an account may hold several eIDs (a
person with two nationalities); only accounts with a BSN can be linked; a code is single use,
valid `LINK_CODE_VALIDITY`, and a new code supersedes the subject's older ones. The audit log
never sees the subject key itself, only `audit_pseudonym` of it (as it sees
`pseudonymise_bsn`, never a BSN).

Why `LINK_LEVEL` is substantieel: the eIDAS Regulation (EU) 910/2014, Article 6, obliges the
Member States to recognise each other's eIDs at "substantial" and "high" only, and a link makes
later eID logins carry a BSN; a "low" eID is not enough to ask for one.

Functions take the caller's SQLAlchemy session, flush but never commit (the caller commits:
the view for a code, gateway.desks.four_eyes for a link), except `unlink_at_desk`.

Removing a link: the owner, from "My account" (gateway.accounts.selfservice.unlink_eid), or
a desk, at once and without four eyes, when a link was made to the wrong account
(`unlink_at_desk`, the page gateway.desks.eidas_unlink_desk): until then the eID's holder
gets that account's BSN at every relying party. Both make the same removal; only the audit
entry differs (the owner, or the staff member and their desk).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway import clock
from gateway.accounts.models import Account, AccountStatus, new_id
from gateway.crypto import SealError, seal, unseal
from gateway.db import Base, UTCDateTime, delete_due
from gateway.desks.codes import ALPHABET, BODY_LENGTH, CODE_LENGTH, normalise_code
from gateway.i18n import lazy_gettext
from gateway.levels import Level
from gateway.settings import Settings

if TYPE_CHECKING:
    from flask import Flask

    from gateway.desks.models import StaffAccount

#: First letter of a link code ("koppelcode"); no other code kind uses it.
LINK_CODE_PREFIX = "K"
#: As long as a four-eyes request stays approvable (gateway.desks.four_eyes.REQUEST_VALIDITY):
#: time to book a desk appointment, short enough that an old code on paper is worthless.
LINK_CODE_VALIDITY = timedelta(days=14)
#: Codes one eID may ask for in 24 hours: enough for a person who lost one or two, few enough
#: that a script cannot fill the table.
MAX_CODES_PER_DAY = 5
#: The lowest eIDAS login that may ask for a link code (see the module docstring).
LINK_LEVEL = Level.SUBSTANTIEEL
#: The route whose logins can be linked, and the prefix of its subject keys.
EIDAS_ROUTE = "eidas"
SUBJECT_PREFIX = "eidas:"
MAX_SUBJECT_KEY = 80
SEAL_PURPOSE = "eidas-link-identity"
AUDIT_PSEUDONYM_PURPOSE = "audit-eidas-pseudonym"
#: What of the eID's attributes is kept with a code, for the desk to compare with a document.
KEPT_ATTRIBUTES = ("given_name", "family_name", "birthdate", "country")
MAX_ATTRIBUTE_CHARS = 200

LINK_MESSAGES: dict[str, Any] = {
    "bad_code": lazy_gettext(
        "A link code is a K followed by 8 letters and digits. Check what the person shows you."
    ),
    "code_unknown": lazy_gettext(
        "This link code is not known. Check it with the person; they can ask for a new one"
        " after logging in with their European eID."
    ),
    "code_expired": lazy_gettext(
        "This link code has expired. The person can ask for a new one after logging in with"
        " their European eID."
    ),
    "code_used": lazy_gettext(
        "This link code has already been used or replaced by a newer one. The person can ask"
        " for a new one after logging in with their European eID."
    ),
    "already_linked": lazy_gettext("This European eID is already linked to an account."),
    "no_bsn": lazy_gettext(
        "This account has no BSN: a European eID can only be linked to an account with a BSN."
    ),
    "account_not_active": lazy_gettext(
        "A European eID can only be linked to an active account."
    ),
    "not_eidas": lazy_gettext(
        "Only a login with a European eID can be linked to an account."
    ),
    "too_many_codes": lazy_gettext(
        "You have asked for several link codes today. Use the newest one, or try again"
        " tomorrow."
    ),
    "level_too_low": lazy_gettext(
        "Your eID login was below the level needed to link it (substantial or high). Log in"
        " with an eID at level substantial or high."
    ),
    "choose_link": lazy_gettext("Choose the link to remove."),
    "no_such_link": lazy_gettext(
        "This account has no such European eID link (it may have been removed already)."
        " Choose one of the links listed."
    ),
}


class LinkError(Exception):
    """A link code or link refused; `code` is a key of LINK_MESSAGES."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code
        self.message = LINK_MESSAGES[code]


class EidasLink(Base):
    """A foreign eID linked to a desk account, after a desk check and four-eyes approval."""

    __tablename__ = "eidas_links"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    #: "eidas:<hex>" as the eIDAS route derives it (already a keyed pseudonym); one link each.
    subject_key: Mapped[str] = mapped_column(sa.String(MAX_SUBJECT_KEY), unique=True)
    account_id: Mapped[str] = mapped_column(
        sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The supervisor who approved the link.
    linked_by: Mapped[str] = mapped_column(sa.ForeignKey("staff_accounts.id"))
    #: The four-eyes request it came from (who asked, why, when).
    request_id: Mapped[str] = mapped_column(sa.ForeignKey("four_eyes_requests.id"))


class EidasLinkCode(Base):
    """A link code: only its HMAC, the subject it links and the eID's identity (sealed)."""

    __tablename__ = "eidas_link_codes"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    code_hmac: Mapped[str] = mapped_column(sa.String(64), unique=True)
    subject_key: Mapped[str] = mapped_column(sa.String(MAX_SUBJECT_KEY), index=True)
    #: JSON of KEPT_ATTRIBUTES, sealed with SEAL_PURPOSE (AES-GCM, gateway.crypto).
    identity_sealed: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


# --- the look-up for the eIDAS route ---------------------------------------------------------


def linked_account_id(db: Session, subject_key: str) -> str | None:
    """The id of the account `subject_key` is linked to, when that account is active, not
    suspended and not blocked; None otherwise (not linked, or the account is closed, suspended
    or blocked: then the login goes on as an eID login without an account, and so without a
    BSN).

    One indexed look-up (the unique index on `subject_key`), made at every eIDAS login.
    """
    if not isinstance(subject_key, str) or not 0 < len(subject_key) <= MAX_SUBJECT_KEY:
        return None
    row = db.execute(
        sa.select(Account.id, Account.blocked_until)
        .join(EidasLink, EidasLink.account_id == Account.id)
        .where(
            EidasLink.subject_key == subject_key,
            Account.status == AccountStatus.ACTIVE.value,
            Account.suspended_at.is_(None),
        )
    ).one_or_none()
    if row is None:
        return None
    account_id, blocked_until = row
    if blocked_until is not None and blocked_until > clock.now():
        return None
    return str(account_id)


def links_of(db: Session, account_id: str) -> list[EidasLink]:
    """The eIDs linked to an account, oldest first."""
    return list(
        db.scalars(
            sa.select(EidasLink)
            .where(EidasLink.account_id == account_id)
            .order_by(EidasLink.linked_at, EidasLink.id)
        )
    )


def remove_link(db: Session, account_id: str, link_id: str) -> EidasLink | None:
    """Remove one of the account's links (the owner's choice, from "My account"); the link
    that went, or None when the account has no link with this id. Flushes; the caller
    audits and commits. The eID's next login is one without an account (no BSN)."""
    link = db.scalars(
        sa.select(EidasLink)
        .where(EidasLink.id == link_id, EidasLink.account_id == account_id)
        .with_for_update()
    ).one_or_none()
    if link is None:
        return None
    db.delete(link)
    db.flush()
    return link


def is_linked(db: Session, subject_key: str) -> bool:
    return db.scalar(
        sa.select(EidasLink.id).where(EidasLink.subject_key == subject_key)
    ) is not None


def audit_pseudonym(settings: Settings, subject_key: str) -> str:
    """"eidas:" + 16 hex digits of a keyed hash of the subject key, for the audit log: the
    same eID always gets the same value, and it cannot be matched against the subject keys in
    other tables without GATEWAY_SECRET_KEY."""
    digest = hmac.new(
        settings.derive_key(AUDIT_PSEUDONYM_PURPOSE), subject_key.encode(), hashlib.sha256
    )
    return SUBJECT_PREFIX + digest.hexdigest()[:16]


# --- link codes ------------------------------------------------------------------------------


def new_link_code() -> str:
    return LINK_CODE_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))


def is_link_code(code: str) -> bool:
    """True when a normalised code has the shape of a link code."""
    return (
        len(code) == CODE_LENGTH
        and code[0] == LINK_CODE_PREFIX
        and all(c in ALPHABET for c in code[1:])
    )


def link_code_hmac(settings: Settings, code: str) -> str:
    """The stored form of a link code, under a key no other code kind uses."""
    key = settings.derive_key("code/eidas_link")
    return hmac.new(key, normalise_code(code).encode(), "sha256").hexdigest()


@dataclass(frozen=True)
class IssuedCode:
    code: str
    expires_at: datetime


def _clean_attribute(value: object) -> str:
    if not isinstance(value, str):
        return ""
    text = unicodedata.normalize("NFC", value).strip()
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C")
    return text[:MAX_ATTRIBUTE_CHARS]


def issue_link_code(
    db: Session,
    settings: Settings,
    *,
    subject_key: str,
    attributes: Mapping[str, Any],
) -> IssuedCode:
    """A new link code for an eIDAS subject; its older live codes are superseded.

    Raises LinkError `not_eidas` for a subject key that is not an eIDAS one,
    `already_linked` when the subject is linked already and `too_many_codes` past
    MAX_CODES_PER_DAY. Audited under the subject's pseudonym. Flushes; the caller commits.
    """
    if (
        not isinstance(subject_key, str)
        or not subject_key.startswith(SUBJECT_PREFIX)
        or len(subject_key) > MAX_SUBJECT_KEY
    ):
        raise LinkError("not_eidas")
    if is_linked(db, subject_key):
        raise LinkError("already_linked")
    now = clock.now()
    recent = db.scalar(
        sa.select(sa.func.count()).select_from(EidasLinkCode).where(
            EidasLinkCode.subject_key == subject_key,
            EidasLinkCode.created_at > now - timedelta(days=1),
        )
    )
    if (recent or 0) >= MAX_CODES_PER_DAY:
        raise LinkError("too_many_codes")
    db.execute(
        sa.update(EidasLinkCode)
        .where(
            EidasLinkCode.subject_key == subject_key,
            EidasLinkCode.used_at.is_(None),
            EidasLinkCode.superseded_at.is_(None),
        )
        .values(superseded_at=now)
        .execution_options(synchronize_session=False)
    )
    identity = {name: _clean_attribute(attributes.get(name)) for name in KEPT_ATTRIBUTES}
    code = new_link_code()
    row = EidasLinkCode(
        code_hmac=link_code_hmac(settings, code),
        subject_key=subject_key,
        identity_sealed=seal(settings, SEAL_PURPOSE, json.dumps(identity, sort_keys=True)),
        created_at=now,
        expires_at=now + LINK_CODE_VALIDITY,
    )
    db.add(row)
    db.flush()
    _audit(db, settings, actor=audit_pseudonym(settings, subject_key), role="citizen",
           desk=None, action="eidas_link.code_issued", object_ref=f"eidas_link_code:{row.id}",
           outcome="success")
    return IssuedCode(code=code, expires_at=row.expires_at)


# --- the desk's side -------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingLink:
    """What the desk sees of a link code before asking for (or approving) the link."""

    code_id: str
    expires_at: datetime
    given_name: str
    family_name: str
    birthdate: str
    country: str
    #: Compared with the account (None when there was nothing to compare): shown, not enforced.
    birthdate_matches: bool | None
    family_name_matches: bool | None

    @property
    def mismatches(self) -> tuple[str, ...]:
        out = []
        if self.family_name_matches is False:
            out.append("family_name")
        if self.birthdate_matches is False:
            out.append("birthdate")
        return tuple(out)


def _fold(text: str) -> str:
    """Case-, accent- and spacing-insensitive form of a name for a hint to the officer."""
    decomposed = unicodedata.normalize("NFKD", text)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(letters.casefold().replace("-", " ").split())


def _identity(settings: Settings, row: EidasLinkCode) -> dict[str, str]:
    try:
        data = json.loads(unseal(settings, SEAL_PURPOSE, row.identity_sealed))
    except (SealError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    return {name: str(data.get(name) or "") for name in KEPT_ATTRIBUTES}


def _pending(settings: Settings, row: EidasLinkCode, account: Account | None) -> PendingLink:
    identity = _identity(settings, row)
    birth_ok: bool | None = None
    name_ok: bool | None = None
    if account is not None:
        if identity["birthdate"]:
            try:
                birth_ok = date.fromisoformat(identity["birthdate"]) == account.birth_date
            except ValueError:
                birth_ok = False
        if identity["family_name"]:
            name_ok = _fold(identity["family_name"]) == _fold(account.surname)
    return PendingLink(
        code_id=row.id, expires_at=row.expires_at, given_name=identity["given_name"],
        family_name=identity["family_name"], birthdate=identity["birthdate"],
        country=identity["country"], birthdate_matches=birth_ok, family_name_matches=name_ok,
    )


def _check_code_row(db: Session, row: EidasLinkCode | None, now: datetime) -> EidasLinkCode:
    if row is None:
        raise LinkError("code_unknown")
    if row.used_at is not None or row.superseded_at is not None:
        raise LinkError("code_used")
    if row.expires_at <= now:
        raise LinkError("code_expired")
    if is_linked(db, row.subject_key):
        raise LinkError("already_linked")
    return row


def _check_account(account: Account) -> None:
    if not account.bsn:
        raise LinkError("no_bsn")
    if account.status != AccountStatus.ACTIVE.value:
        raise LinkError("account_not_active")


def pending_link(
    db: Session, settings: Settings, account: Account, raw_code: object
) -> PendingLink:
    """Check a link code typed at the desk for linking to `account`; what the desk sees.

    Raises LinkError: `bad_code`, `code_unknown`, `code_used`, `code_expired`,
    `already_linked`, `no_bsn`, `account_not_active`. Writes nothing.
    """
    code = normalise_code(raw_code) if isinstance(raw_code, str) else ""
    if not is_link_code(code):
        raise LinkError("bad_code")
    row = db.scalar(
        sa.select(EidasLinkCode).where(EidasLinkCode.code_hmac == link_code_hmac(settings, code))
    )
    row = _check_code_row(db, row, clock.now())
    _check_account(account)
    return _pending(settings, row, account)


def pending_link_by_id(
    db: Session, settings: Settings, code_id: str, account: Account | None
) -> PendingLink | None:
    """What a stored four-eyes request's link code says (for the supervisor), or None when
    the code row is gone. No validity checks: the decision makes those."""
    row = db.get(EidasLinkCode, code_id)
    return None if row is None else _pending(settings, row, account)


def execute_link(
    db: Session,
    settings: Settings,
    *,
    account: Account,
    code_id: str,
    supervisor_id: str,
    request_id: str,
) -> EidasLink:
    """Carry out an approved `link_eidas` request: every check again, under row locks (two
    supervisors approving two requests with one code: one wins), the code used up, the link
    written, and the eID's open SSO sessions without an account ended. Raises LinkError like
    `pending_link`; flushes, the caller audits and commits."""
    now = clock.now()
    row = db.scalars(
        sa.select(EidasLinkCode)
        .where(EidasLinkCode.id == code_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    row = _check_code_row(db, row, now)
    _check_account(account)
    row.used_at = now
    link = EidasLink(
        subject_key=row.subject_key, account_id=account.id, linked_at=now,
        linked_by=supervisor_id, request_id=request_id,
    )
    db.add(link)
    db.flush()
    # The eID's sessions from before the link know no account: the next login gets it.
    from gateway.flows.sessions import end_subject_sessions

    end_subject_sessions(db, row.subject_key)
    return link


@dataclass(frozen=True)
class LinkShown:
    """A link as the desk sees it before removing it: when it was made, by which
    supervisor's approval, and the eID's identity as the desk saw it then (from the link
    code of the four-eyes request; None once that code row has been purged)."""

    id: str
    linked_at: datetime
    approved_by: str | None
    identity: PendingLink | None


def links_shown(db: Session, settings: Settings, account: Account) -> list[LinkShown]:
    """The account's links, oldest first, with what the desk may see of each. Writes
    nothing."""
    from gateway.desks.models import FourEyesRequest, StaffAccount

    shown = []
    for link in links_of(db, account.id):
        supervisor = db.get(StaffAccount, link.linked_by)
        request = db.get(FourEyesRequest, link.request_id)
        code_id = (request.payload or {}).get("link_code_id") if request is not None else None
        identity = (pending_link_by_id(db, settings, code_id, account)
                    if isinstance(code_id, str) else None)
        shown.append(LinkShown(
            id=link.id, linked_at=link.linked_at,
            approved_by=supervisor.username if supervisor is not None else None,
            identity=identity,
        ))
    return shown


def unlink_at_desk(
    db: Session,
    settings: Settings,
    app: Flask,
    staff: StaffAccount,
    account: Account,
    link_id: str,
    reason: str,
) -> EidasLink:
    """A desk removes a link made in error (officers and supervisors, no four eyes: removing
    a link only takes access away, like a suspension). The removal itself is the owner's
    (gateway.accounts.selfservice.unlink_eid), with the staff member in the audit entry.
    The reason is checked like a four-eyes or suspension reason and kept beside the audit
    entry (`DeskActionReason`). Commits.

    Refusals (DeskError, nothing written): `forbidden`, `bad_reason`, `choose_link`,
    `no_such_link` (also for another account's link: nothing of it is shown).
    """
    from gateway.accounts.selfservice import unlink_eid
    from gateway.desks.service import (
        MAX_ID_CHARS,
        MAX_REASON_CHARS,
        PROCESSING_ROLES,
        DeskError,
        _clean_text,
        error,
        require_role,
    )

    require_role(staff, PROCESSING_ROLES)
    text = _clean_text(reason, limit=MAX_REASON_CHARS)
    if text is None:
        raise error("bad_reason", "reason")
    if not isinstance(link_id, str) or not link_id.strip():
        raise DeskError("choose_link", LINK_MESSAGES["choose_link"], "link")
    link = None
    if len(link_id) <= MAX_ID_CHARS:
        link = unlink_eid(db, settings, app, account, link_id, staff=staff, reason=text)
    if link is None:
        db.rollback()
        raise DeskError("no_such_link", LINK_MESSAGES["no_such_link"], "link")
    return link


def purge_link_codes(
    db: Session, older_than: timedelta = timedelta(days=30), *, limit: int | None = None
) -> int:
    """Delete link codes that expired more than `older_than` ago and that no four-eyes
    request names (the desk shows a request with the code's identity), at most `limit`
    (`gateway purge`, gateway.purge, runs it from cron in batches)."""
    from gateway import purge  # gateway.purge imports this module

    return delete_due(db, EidasLinkCode.id, purge.link_codes_due(clock.now(), older_than),
                            limit)


def _audit(db: Session, settings: Settings, **fields: Any) -> None:
    from gateway import audit
    from gateway.web.logs import request_id

    audit.record(db, request_id=request_id(), settings=settings, **fields)
