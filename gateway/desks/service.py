"""The desk workflow service: find an application by desk code, record the document check,
approve or reject, deliver the activation code, and the auditor's export (issue 4, items 4
and 6). One layer under both the desk web UI and the JSON API (ARCHITECTURE.md, habit 4):
permissions are checked here too, not only in the views.

Refusals are `DeskError(code, message, field)`: a stable `code` for the API (problem+json)
and the audit trail, a lazy Dutch/English `message` for the officer, and the input `field` at
fault. Two kinds of outcome of a document check are told apart:
- input the officer must correct (an unreadable MRZ, a malformed document number, a missing
  field) raises `DeskError` and writes nothing;
- findings about the person or the document (expired, not eligible, MRZ or register
  mismatch) are the check's result: `CheckResult(passed=False, problems)`, stored as a failed
  DocumentCheck (the audit trail must show that a document was refused) and the application
  stays in, or returns to, `submitted`, so it cannot be approved.

Transactions: every mutating function COMMITS the session it is given on success, because an
activation code must be committed before any provider is called (gateway.sms.dispatch runs
its own transactions, and on SQLite would wait for ours). Pass the request-scoped
`gateway.db.session()` or a plain `Database.sessionmaker()` session, never one inside
`Database.begin()`. A `DeskError` means nothing of that call was written, with one exception:
`expired_code`, whose move of the application to `expired` is committed before it is raised.

Codes: the activation code (`A` + 8, gateway.desks.codes) exists in clear only in memory on
its way to the SMS/voice provider or into the PDF letter; the database holds its HMAC. Nothing
here logs a code, a BSN or a name; audit entries name objects by id ("application:<id>").
"""

from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway import audit, clock
from gateway.accounts import number_limit
from gateway.accounts.models import Account, AccountCode, AccountCodeKind, AccountStatus
from gateway.desks.applications import ApplicationState, transition
from gateway.desks.codes import (
    ACTIVATION_CODE_VALIDITY,
    CodeKind,
    code_hmac,
    is_well_formed,
    new_code,
    normalise_code,
)
from gateway.desks.documents import (
    EnteredDocument,
    ProblemCode,
    check_document,
    compare_mrz,
    normalise_document_number,
    normalise_state,
)
from gateway.desks.models import Application, DocumentCheck, StaffAccount, StaffRole
from gateway.desks.mrz import MrzError, parse_mrz
from gateway.desks.policy import DocumentType
from gateway.desks.register import (
    EnteredPerson,
    PopulationRegister,
    RegisterRecord,
    TableRegister,
    match_register,
    register_problems,
)
from gateway.i18n import lazy_gettext
from gateway.policy import Policies
from gateway.settings import Settings
from gateway.sms.phone import Channel, Phone, PhoneRejected, parse_phone

log = logging.getLogger(__name__)

Delivery = Literal["sms", "voice", "letter"]
DELIVERIES: tuple[str, ...] = ("sms", "voice", "letter")

#: Issue 4 item 3: officers and supervisors process applications; auditors only read and export.
PROCESSING_ROLES = frozenset({StaffRole.OFFICER.value, StaffRole.SUPERVISOR.value})
AUDIT_ROLES = frozenset({StaffRole.AUDITOR.value})

MAX_REASON_CHARS = 500
MAX_NAME_CHARS = 200
#: Ids are UUIDs (36 characters); anything longer is not looked up at all.
MAX_ID_CHARS = 36
#: An export covers at most this many entries; an auditor narrows it with `since`.
MAX_EXPORT_ROWS = 100_000

SYSTEM_ACTOR = "system"
SYSTEM_ROLE = "system"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ALPHA3 = re.compile(r"[A-Z]{3}")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_BSN = re.compile(r"[0-9]{9}")


class DeskError(Exception):
    """A refusal the officer is shown. `code` is stable (API, audit); `message` is lazy and
    translated (nl/en); `field` names the input at fault, when there is one. str() is the code
    only, so a logged DeskError carries no personal data."""

    def __init__(self, code: str, message: Any, field: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return f"DeskError({self.code!r}, field={self.field!r})"


#: The standard message of each code that has one fixed message; findings of the document
#: check carry the more specific message of the rule that found them.
MESSAGES: dict[str, Any] = {
    "unknown_code": lazy_gettext(
        "No application has this desk code. Check the code (a B and 8 letters or digits)."
    ),
    "expired_code": lazy_gettext(
        "This desk code has expired: it is valid for 30 days. The applicant must apply again."
    ),
    "used_code": lazy_gettext(
        "This application has already been decided; its desk code cannot be used again."
    ),
    "not_found": lazy_gettext("This application does not exist."),
    "illegal_state": lazy_gettext("This cannot be done in the application's current state."),
    "check_required": lazy_gettext(
        "Record a document check that passes before approving this application."
    ),
    "forbidden": lazy_gettext("Your role does not allow this action."),
    "bad_document_type": lazy_gettext("Choose the type of document: passport or identity card."),
    "bad_country": lazy_gettext(
        "Enter the issuing country as its three-letter code, for example NLD."
    ),
    "bad_expiry": lazy_gettext("Enter the expiry date as YYYY-MM-DD."),
    "bad_document_number": lazy_gettext("Enter the document number."),
    "names_required": lazy_gettext(
        "Without a machine-readable zone, type the surname exactly as the document shows it."
    ),
    "bad_delivery": lazy_gettext("Choose how to send the activation code: SMS, voice or letter."),
    "phone_unusable": lazy_gettext(
        "This phone number cannot receive an SMS (it is a landline). Choose a voice call or a"
        " letter."
    ),
    "bad_address": lazy_gettext(
        "Type the postal address on 2 to 6 lines of at most 60 characters each."
    ),
    "address_characters": lazy_gettext(
        "The address contains characters that cannot be printed on the letter. Type it in"
        " Latin letters, as for international post."
    ),
    "account_exists": lazy_gettext(
        "This person already has an account. Reissue its activation code through a four-eyes"
        " request instead."
    ),
    "username_taken": lazy_gettext(
        "The username chosen in this application has been taken since. Reject the application;"
        " the applicant can apply again with another username."
    ),
    "bad_reason": lazy_gettext("Give a reason of at most 500 characters."),
    "not_registered": lazy_gettext(
        "This BSN is not in the population register. Check the number, or contact the RNI desk"
        " to be registered."
    ),
    "not_non_resident": lazy_gettext(
        "This person is registered as living in the Netherlands. Apply for an account through"
        " the normal route instead."
    ),
    "sms_limited": lazy_gettext(
        "The limit of text messages and calls to this phone number or its country has been"
        " reached. Nothing was saved and no code was sent. Try again later, or send the"
        " activation code by letter."
    ),
    "sms_unavailable": lazy_gettext(
        "Text messages and calls cannot be sent right now. Nothing was saved and no code was"
        " sent. Try again in a few minutes, or send the activation code by letter."
    ),
    "other_desk": lazy_gettext("You can only see the audit trail of your own desk."),
    "bad_since": lazy_gettext("Enter the start of the period as a date and time."),
    "number_full": lazy_gettext(
        "This phone number is already in use for as many accounts as one number may have,"
        " so no account can be made with it. Reject the application; the applicant can apply"
        " again with another phone number."
    ),
}


def error(code: str, field: str | None = None) -> DeskError:
    """The DeskError of `code` with its standard message."""
    return DeskError(code, MESSAGES[code], field)


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentEntry:
    """What the officer records at the desk. Values as typed; the service validates them."""

    #: "passport" or "identity_card" (gateway.desks.policy.DocumentType).
    document_type: str
    #: ISO 3166-1 alpha-3 as in the MRZ ("NLD"; Germany's "D" is read as "DEU").
    issuing_country: str
    document_number: str
    #: A date, or the text "YYYY-MM-DD".
    expiry: date | str
    #: The MRZ lines from a scanner, separated by line breaks (optional).
    mrz: str | None = None
    #: Compared with the register when there is no MRZ (the surname is then required).
    surname: str | None = None
    given_names: str | None = None


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    #: The findings (each with code, message and field); empty when the check passed.
    problems: tuple[DeskError, ...]
    check_id: str


@dataclass(frozen=True)
class Approval:
    account_id: str
    #: When the activation code stops working.
    expires_at: datetime
    delivery: str
    #: The printable activation letter (delivery "letter"): hand it to the printer, never keep it.
    letter_pdf: bytes | None
    #: False when no SMS/voice provider accepted the message; the approval stands and the
    #: code can be reissued (four-eyes), for example on a letter.
    delivered: bool

    def __repr__(self) -> str:
        return (
            f"Approval(account_id={self.account_id!r}, delivery={self.delivery!r},"
            f" delivered={self.delivered!r})"
        )


@dataclass(frozen=True)
class FourEyesOutcome:
    request_id: str
    #: "approved" or "refused".
    status: str
    #: The activation letter, when an approved reissue goes by letter.
    letter_pdf: bytes | None = None
    #: Whether the SMS/voice message of the action was accepted (None when nothing was sent).
    delivered: bool | None = None

    def __repr__(self) -> str:
        return f"FourEyesOutcome(request_id={self.request_id!r}, status={self.status!r})"


# --- shared helpers (also used by gateway.desks.four_eyes) -----------------------------------


def require_role(staff: StaffAccount, roles: Iterable[str]) -> None:
    if not isinstance(staff, StaffAccount) or not staff.active or staff.role not in set(roles):
        raise error("forbidden")


def audit_record(
    session: Session,
    settings: Settings,
    *,
    staff: StaffAccount | None,
    action: str,
    object_ref: str | None,
    outcome: str,
    reason: str | None = None,
) -> None:
    """One audit entry in the caller's transaction, with the officer's desk and the request id;
    with `reason` (already checked), the reason beside it (`DeskActionReason`)."""
    from gateway.desks.models import DeskActionReason
    from gateway.desks.staff import audit_actor
    from gateway.web.logs import request_id

    entry = audit.record(
        session,
        actor=audit_actor(staff) if staff is not None else SYSTEM_ACTOR,
        role=staff.role if staff is not None else SYSTEM_ROLE,
        desk=staff.desk if staff is not None else None,
        action=action,
        object_ref=object_ref,
        outcome=outcome,
        request_id=request_id(),
        settings=settings,
    )
    if reason is not None:
        session.add(DeskActionReason(audit_seq=entry.seq, reason=reason))


def application_ref(application: Application) -> str:
    return f"application:{application.id}"


def valid_id(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS else None


def load_application(session: Session, application_id: object) -> Application:
    """The application, locked for this transaction (PostgreSQL; SQLite's IMMEDIATE
    transactions serialise anyway), or `not_found`."""
    app_id = valid_id(application_id)
    application = None
    if app_id is not None:
        application = session.scalars(
            sa.select(Application).where(Application.id == app_id).with_for_update()
        ).one_or_none()
    if application is None:
        raise error("not_found")
    return application


def _refuse_if_closed(session: Session, settings: Settings, application: Application) -> None:
    """`used_code` for a decided application, `expired_code` for an expired one (moving it to
    `expired`, committed, when its desk code ran out just now)."""
    status = ApplicationState(application.status)
    if status in (ApplicationState.APPROVED, ApplicationState.REJECTED):
        raise error("used_code")
    if status is ApplicationState.EXPIRED:
        raise error("expired_code")
    if application.desk_code_expires_at <= clock.now():
        transition(application, ApplicationState.EXPIRED)
        audit_record(
            session, settings, staff=None, action="application.expired",
            object_ref=application_ref(application), outcome="success",
        )
        session.commit()
        raise error("expired_code")


def _desk_today(policies: Policies, staff: StaffAccount) -> date:
    """Today at the officer's desk: a document is valid up to and including its expiry date
    where the person stands, not in UTC."""
    desk = policies.desks.get(staff.desk)
    zone = ZoneInfo(desk.timezone) if desk is not None else UTC
    return clock.now().astimezone(zone).date()


def _clean_text(value: object, *, limit: int) -> str | None:
    """Stripped text without control characters, at most `limit` long; None otherwise."""
    if not isinstance(value, str) or len(value) > limit * 2:
        return None
    text = unicodedata.normalize("NFC", value).strip()
    if not text or len(text) > limit or _CONTROL.search(text):
        return None
    return text


# --- finding an application -------------------------------------------------------------------


def find_application(session: Session, settings: Settings, desk_code: object) -> Application:
    """The open application with this desk code: `unknown_code`, `expired_code` (the
    application moves to expired) or `used_code` (already approved or rejected) otherwise.

    The code is looked up by its HMAC through the unique index, so no code is compared in
    Python and nothing about other codes can be learnt from timing.
    """
    code = normalise_code(desk_code) if isinstance(desk_code, str) else ""
    if not is_well_formed(code, CodeKind.DESK):
        raise error("unknown_code", "desk_code")
    application = session.scalars(
        sa.select(Application)
        .where(Application.desk_code_hmac == code_hmac(settings, CodeKind.DESK, code))
        .with_for_update()
    ).one_or_none()
    if application is None:
        raise error("unknown_code", "desk_code")
    _refuse_if_closed(session, settings, application)
    return application


def get_application(session: Session, application_id: object) -> Application:
    """An application by id, in any state (for showing it); `not_found` otherwise."""
    app_id = valid_id(application_id)
    application = session.get(Application, app_id) if app_id is not None else None
    if application is None:
        raise error("not_found")
    return application


def document_checks(session: Session, application_id: str) -> list[DocumentCheck]:
    """The checks recorded for an application, newest first."""
    return list(
        session.scalars(
            sa.select(DocumentCheck)
            .where(DocumentCheck.application_id == application_id)
            .order_by(DocumentCheck.created_at.desc(), DocumentCheck.id)
        )
    )


# --- the document check ---------------------------------------------------------------------

_FINDING_CODES = {
    ProblemCode.EXPIRED: ("document_expired", "expiry"),
    ProblemCode.DOCUMENT_NOT_ACCEPTED: ("document_type_not_accepted", "document_type"),
    ProblemCode.NATIONALITY_NOT_ELIGIBLE: ("nationality_not_eligible", "nationality"),
    ProblemCode.NOT_IN_REGISTER: ("not_registered", "bsn"),
    ProblemCode.NOT_NON_RESIDENT: ("not_non_resident", "bsn"),
}

_BSN_IN_MRZ_DIFFERS = lazy_gettext(
    "The personal number in the machine-readable zone differs from the BSN of the application."
)


def _document_type(raw: object) -> DocumentType:
    try:
        return DocumentType(str(raw)) if isinstance(raw, str) else DocumentType("")
    except ValueError:
        raise error("bad_document_type", "document_type") from None


def _country(raw: object) -> str:
    if not isinstance(raw, str) or len(raw) > 8:
        raise error("bad_country", "issuing_country")
    code = normalise_state(raw)
    if not _ALPHA3.fullmatch(code):
        raise error("bad_country", "issuing_country")
    return code


def _expiry(raw: object) -> date:
    if isinstance(raw, datetime):
        raise error("bad_expiry", "expiry")
    if isinstance(raw, date):
        return raw
    if isinstance(raw, str) and _ISO_DATE.fullmatch(raw.strip()):
        try:
            return date.fromisoformat(raw.strip())
        except ValueError:
            pass
    raise error("bad_expiry", "expiry")


def _document_number(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 40:
        raise error("bad_document_number", "document_number")
    return normalise_document_number(raw)


def record_document_check(
    session: Session,
    settings: Settings,
    policies: Policies,
    register: PopulationRegister,
    *,
    staff: StaffAccount,
    application_id: str,
    entry: DocumentEntry,
) -> CheckResult:
    """Verify the document on the desk against the application, the policy and the register
    (issue 4 item 4), store the check and move the application (see the module docstring).

    Input errors raise DeskError (`bad_document_type`, `bad_country`, `bad_expiry`,
    `bad_document_number`, `bad_mrz`, `names_required`) and write nothing; so do
    `forbidden`, `not_found`, `used_code` and `expired_code`.
    """
    require_role(staff, PROCESSING_ROLES)
    application = load_application(session, application_id)
    _refuse_if_closed(session, settings, application)
    if not isinstance(entry, DocumentEntry):
        raise error("bad_document_type", "document_type")

    today = _desk_today(policies, staff)
    entered = EnteredDocument(
        document_type=_document_type(entry.document_type),
        issuing_state=_country(entry.issuing_country),
        document_number=_document_number(entry.document_number),
        expiry=_expiry(entry.expiry),
        nationality=application.nationality,
        date_of_birth=application.birth_date,
    )
    document_problems = check_document(entered, today, policies.eligibility)
    for problem in document_problems:
        if problem.code is ProblemCode.BAD_DOCUMENT_NUMBER:
            # A number of the wrong form is mistyped (or forged): the officer looks again.
            raise DeskError("bad_document_number", problem.message, "document_number")

    mrz = None
    mrz_text = entry.mrz.strip() if isinstance(entry.mrz, str) else ""
    if mrz_text or (entry.mrz is not None and not isinstance(entry.mrz, str)):
        try:
            mrz = parse_mrz(mrz_text, today=today)
        except MrzError as exc:
            raise DeskError("bad_mrz", exc.message, "mrz") from None

    if mrz is not None:
        surname, given_names = mrz.surname, mrz.given_names
    else:
        typed = _clean_text(entry.surname, limit=MAX_NAME_CHARS)
        if typed is None:
            raise error("names_required", "surname")
        surname = typed
        given_names = _clean_text(entry.given_names, limit=MAX_NAME_CHARS) or ""
    # Date of birth and nationality of the application: the MRZ's are compared with these
    # below (without the century, gateway.desks.documents.compare_mrz), and these with the
    # register, so a centenarian's MRZ year cannot cause a false register mismatch.
    person = EnteredPerson(surname, given_names, application.birth_date, application.nationality)

    findings: list[DeskError] = []
    for problem in document_problems:
        code, field = _FINDING_CODES[problem.code]
        findings.append(DeskError(code, problem.message, field))
    if mrz is not None:
        findings.extend(
            DeskError("mrz_mismatch", m.message, m.field) for m in compare_mrz(mrz, entered)
        )
        # Dutch documents may carry the BSN in the MRZ's personal number: it must be this one.
        bsn_in_mrz = mrz.optional_data
        if (
            mrz.issuing_state == "NLD"
            and _BSN.fullmatch(bsn_in_mrz)
            and bsn_in_mrz != application.bsn
        ):
            findings.append(DeskError("mrz_mismatch", _BSN_IN_MRZ_DIFFERS, "bsn"))
    record = register.lookup(application.bsn)
    for problem in register_problems(record, policies.eligibility):
        code, field = _FINDING_CODES[problem.code]
        findings.append(DeskError(code, problem.message, field))
    if record is not None:
        findings.extend(
            DeskError("register_mismatch", m.message, m.field)
            for m in match_register(record, person)
        )

    passed = not findings
    now = clock.now()
    check = DocumentCheck(
        application_id=application.id,
        officer_id=staff.id,
        desk=staff.desk,
        document_type=entered.document_type.value,
        issuing_country=entered.issuing_state,
        document_number=entered.document_number[:20],
        expiry_date=entered.expiry,
        mrz="\n".join(line.strip() for line in mrz_text.splitlines() if line.strip())
        if mrz is not None
        else None,
        passed=passed,
        problems=[f"{f.code}:{f.field}" if f.field else f.code for f in findings],
        created_at=now,
    )
    session.add(check)
    transition(application, ApplicationState.CHECKED if passed else ApplicationState.SUBMITTED)
    session.flush()
    audit_record(
        session, settings, staff=staff, action="application.check_recorded",
        object_ref=application_ref(application), outcome="passed" if passed else "failed",
    )
    session.commit()
    return CheckResult(passed=passed, problems=tuple(findings), check_id=check.id)


# --- approving and rejecting ------------------------------------------------------------------


def delivery_choice(raw: object) -> str:
    if raw not in DELIVERIES:
        raise error("bad_delivery", "delivery")
    return str(raw)


def usable_phone(e164: str | None, policies: Policies, delivery: str) -> Phone:
    """The number, checked against today's phone policy, able to take `delivery`."""
    if not e164:
        raise error("phone_unusable", "delivery")
    try:
        phone = parse_phone(e164, policies.sms)
    except PhoneRejected as exc:
        raise DeskError("phone_unusable", exc.message, "delivery") from None
    if delivery == "sms" and phone.channel is not Channel.SMS:
        raise error("phone_unusable", "delivery")
    return phone


def issue_activation_code(
    session: Session, settings: Settings, account: Account, channel: str
) -> tuple[str, AccountCode]:
    """End every live activation code of the account and issue a new one (single use, valid
    ACTIVATION_CODE_VALIDITY). Returns the code in clear, to be delivered and forgotten, and
    its row, which holds only the HMAC."""
    now = clock.now()
    session.execute(
        sa.update(AccountCode)
        .where(
            AccountCode.account_id == account.id,
            AccountCode.kind == AccountCodeKind.ACTIVATION.value,
            AccountCode.used_at.is_(None),
            AccountCode.superseded_at.is_(None),
        )
        .values(superseded_at=now)
        .execution_options(synchronize_session=False)
    )
    code = new_code(CodeKind.ACTIVATION)
    row = AccountCode(
        account_id=account.id,
        kind=AccountCodeKind.ACTIVATION.value,
        code_hmac=code_hmac(settings, CodeKind.ACTIVATION, code),
        channel=channel,
        created_at=now,
        expires_at=now + ACTIVATION_CODE_VALIDITY,
        used_at=None,
        superseded_at=None,
        attempts=0,
    )
    session.add(row)
    session.flush()
    return code, row


def count_activation_send(
    settings: Settings,
    app: Flask,
    *,
    phone: Phone,
    delivery: str,
    language: str,
    account_id: str | None,
) -> None:
    """Count an activation code by SMS or voice against the SMS abuse limits (per number, per
    account when there is one, number range and country budget; gateway.sms.limits) BEFORE
    anything is written, so a refusal leaves nothing half-done. No per-IP limit: the officer
    is authenticated and every officer of a desk shares its address, so it would only
    throttle the desk. Raises DeskError `sms_limited` or `sms_unavailable` (field
    `delivery`: a letter is the way out)."""
    from gateway.desks.letters import activation_message
    from gateway.sms.limits import LimitExceeded, SendingUnavailable
    from gateway.sms.service import get_sms_service

    # Every activation code has the same length and alphabet: a fresh one, never stored,
    # gives the billed size of the message before the real code exists.
    text = activation_message(
        code=new_code(CodeKind.ACTIVATION), language=language,
        channel="voice" if delivery == "voice" else "sms",
        expires_at=clock.now() + ACTIVATION_CODE_VALIDITY, issuer=settings.issuer,
    )
    try:
        get_sms_service(app).count_message(phone=phone, text=text, account_id=account_id)
    except LimitExceeded as exc:
        log.warning("activation code refused by the SMS limits (%s)", exc)
        raise error("sms_limited", "delivery") from None
    except SendingUnavailable:
        raise error("sms_unavailable", "delivery") from None


def send_activation_code(
    session: Session,
    settings: Settings,
    app: Flask,
    *,
    account: Account,
    phone: Phone,
    delivery: str,
    code: str,
    code_row: AccountCode,
) -> bool:
    """Hand the code to the providers as an SMS or a voice call, in the account's language.
    The session must hold no uncommitted write (the dispatcher's rule). True when accepted."""
    from gateway.desks.letters import activation_message
    from gateway.sms.dispatch import DeliveryFailed, get_dispatcher

    channel = "voice" if delivery == "voice" else "sms"
    text = activation_message(
        code=code, language=account.language, channel=channel,
        expires_at=code_row.expires_at, issuer=settings.issuer,
    )
    try:
        get_dispatcher(app).send(
            session, to=phone.e164, channel=channel, text=text, purpose="activation",
            idempotency_key=f"activation:{code_row.id}",
        )
    except DeliveryFailed:
        log.warning("activation code not delivered: every provider failed")
        return False
    return True


def letter_lines(raw: object) -> list[str]:
    """The postal address as the officer typed it: 2 to 6 non-empty lines of at most 60
    characters, printable in the letter's font."""
    from gateway.desks.letters import MAX_ADDRESS_LINE, printable

    if not isinstance(raw, (list, tuple)) or len(raw) > 10:
        raise error("bad_address", "letter_address")
    lines: list[str] = []
    for item in raw:
        if not isinstance(item, str) or len(item) > 200:
            raise error("bad_address", "letter_address")
        line = unicodedata.normalize("NFC", item).strip()
        if not line:
            continue
        if len(line) > MAX_ADDRESS_LINE or _CONTROL.search(line):
            raise error("bad_address", "letter_address")
        lines.append(line)
    if not 2 <= len(lines) <= 6:
        raise error("bad_address", "letter_address")
    if not all(printable(line) for line in lines):
        raise error("address_characters", "letter_address")
    return lines


def _register_record(
    register: PopulationRegister, application: Application, policies: Policies
) -> RegisterRecord:
    record = register.lookup(application.bsn)
    problems = register_problems(record, policies.eligibility)
    if problems or record is None:
        code, field = _FINDING_CODES[problems[0].code] if problems else ("not_registered", "bsn")
        raise DeskError(code, problems[0].message if problems else MESSAGES[code], field)
    return record


def approve(
    session: Session,
    settings: Settings,
    policies: Policies,
    app: Flask,
    *,
    staff: StaffAccount,
    application_id: str,
    delivery: str,
    letter_address: list[str] | None = None,
    register: PopulationRegister | None = None,
) -> Approval:
    """Approve a checked application: create the account (pending activation; names from the
    register; phone not yet verified), issue the activation code and deliver it by SMS, voice
    call or PDF letter (issue 4 item 4).

    `register` defaults to the operators' table (TableRegister). Refusals, nothing written:
    `forbidden`, `bad_delivery`, `not_found`, `used_code`, `expired_code`, `check_required`,
    `phone_unusable`, `bad_address`, `address_characters`, `not_registered`,
    `not_non_resident`, `account_exists`, `username_taken`, `number_full` (the phone number
    already serves policies/sms.yaml's max_accounts_per_number accounts), `sms_limited`,
    `sms_unavailable` (the SMS abuse limits refused the code; checked before anything is
    written, so the officer can choose a letter instead).
    """
    require_role(staff, PROCESSING_ROLES)
    delivery = delivery_choice(delivery)
    application = load_application(session, application_id)
    _refuse_if_closed(session, settings, application)
    if application.status != ApplicationState.CHECKED:
        raise error("check_required")
    checks = document_checks(session, application.id)
    if not checks or not checks[0].passed:
        raise error("check_required")

    address = letter_lines(letter_address) if delivery == "letter" else None
    phone = usable_phone(application.phone_e164, policies, delivery) if address is None else None
    record = _register_record(register or TableRegister(session), application, policies)

    if session.scalar(sa.select(Account.id).where(Account.bsn == application.bsn)) is not None:
        raise error("account_exists")
    if session.scalar(
        sa.select(Account.id).where(Account.username_key == application.username_key)
    ) is not None:
        raise error("username_taken")
    if number_limit.accounts_on_number(session, application.phone_e164) >= (
        policies.sms.max_accounts_per_number
    ):
        raise error("number_full")
    if phone is not None:
        count_activation_send(settings, app, phone=phone, delivery=delivery,
                              language=application.language, account_id=None)

    now = clock.now()
    account = Account(
        username=application.username,
        username_key=application.username_key,
        password_hash=application.password_hash,
        bsn=application.bsn,
        surname=record.surname,
        given_names=record.given_names,
        birth_date=record.date_of_birth,
        nationality=record.nationality,
        phone_e164=application.phone_e164,
        phone_channel=application.phone_channel,
        phone_verified_at=None,
        email=application.email,
        email_verified_at=None,
        language=application.language,
        status=AccountStatus.PENDING_ACTIVATION.value,
        enrolled_desk=staff.desk,
        created_at=now,
        failed_logins=0,
    )
    try:
        with session.begin_nested():
            session.add(account)
    except IntegrityError:
        # Another desk approved the same person a moment ago.
        session.rollback()
        raise error("account_exists") from None

    code, code_row = issue_activation_code(session, settings, account, delivery)
    transition(application, ApplicationState.APPROVED)
    application.decided_at = now
    application.decided_by = staff.id
    application.decided_desk = staff.desk
    application.account_id = account.id
    ref = application_ref(application)
    audit_record(
        session, settings, staff=staff, action="application.approved", object_ref=ref,
        outcome="success",
    )

    letter_pdf = None
    if address is not None:
        from gateway.desks.letters import activation_letter

        letter_pdf = activation_letter(
            code=code, address=address, expires_at=code_row.expires_at,
            issuer=settings.issuer, desk=staff.desk,
        )
        audit_record(
            session, settings, staff=staff, action="activation_code.delivered",
            object_ref=ref, outcome="letter",
        )
    session.commit()

    delivered = True
    if phone is not None:
        delivered = send_activation_code(
            session, settings, app, account=account, phone=phone, delivery=delivery, code=code,
            code_row=code_row,
        )
        audit_record(
            session, settings, staff=staff, action="activation_code.delivered", object_ref=ref,
            outcome=f"{delivery}:{'sent' if delivered else 'failed'}",
        )
        session.commit()
    return Approval(
        account_id=account.id,
        expires_at=code_row.expires_at,
        delivery=delivery,
        letter_pdf=letter_pdf,
        delivered=delivered,
    )


def reject(
    session: Session, settings: Settings, *, staff: StaffAccount, application_id: str, reason: str
) -> Application:
    """Reject a submitted or checked application with a reason (kept with the application,
    not in the audit trail, since it may name the person). Refusals: `forbidden`,
    `bad_reason`, `not_found`, `used_code`, `expired_code`."""
    require_role(staff, PROCESSING_ROLES)
    text = _clean_text(reason, limit=MAX_REASON_CHARS)
    if text is None:
        raise error("bad_reason", "reason")
    application = load_application(session, application_id)
    _refuse_if_closed(session, settings, application)
    transition(application, ApplicationState.REJECTED)
    application.decided_at = clock.now()
    application.decided_by = staff.id
    application.decided_desk = staff.desk
    application.reject_reason = text
    audit_record(
        session, settings, staff=staff, action="application.rejected",
        object_ref=application_ref(application), outcome="success",
    )
    session.commit()
    return application


# --- the audit trail (auditors) ------------------------------------------------------------

EXPORT_COLUMNS = (
    "seq", "at", "actor", "role", "desk", "action", "object", "outcome", "request_id",
    "reason",
)
#: OWASP "CSV injection": a spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """A cell that no spreadsheet reads as a formula: a leading ' when it could be one."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _audit_scope(staff: StaffAccount, desk: object, since: object) -> datetime | None:
    require_role(staff, AUDIT_ROLES)
    if desk != staff.desk:
        # An auditor reviews their own desk; a national review role would be a new role.
        raise error("other_desk", "desk")
    if since is None:
        return None
    if not isinstance(since, datetime):
        raise error("bad_since", "since")
    return since.replace(tzinfo=UTC) if since.tzinfo is None else since


def list_audit(
    session: Session,
    *,
    staff: StaffAccount,
    desk: str,
    since: datetime | None = None,
    limit: int = 200,
) -> list[audit.AuditEntry]:
    """A desk's audit entries for an auditor, newest first (at most `limit`)."""
    start = _audit_scope(staff, desk, since)
    stmt = (
        sa.select(audit.AuditEntry)
        .where(audit.AuditEntry.desk == desk)
        .order_by(audit.AuditEntry.seq.desc())
        .limit(max(1, min(int(limit), 1000)))
    )
    if start is not None:
        stmt = stmt.where(audit.AuditEntry.at >= start)
    return list(session.scalars(stmt))


def action_reasons(session: Session, seqs: Iterable[int]) -> dict[int, str]:
    """The reasons kept beside these audit entries (`DeskActionReason`), by entry seq."""
    from gateway.desks.models import DeskActionReason

    wanted = list(seqs)
    if not wanted:
        return {}
    rows = session.execute(
        sa.select(DeskActionReason.audit_seq, DeskActionReason.reason)
        .where(DeskActionReason.audit_seq.in_(wanted))
    )
    return {int(seq): str(reason) for seq, reason in rows.tuples()}


def _desk_reasons(session: Session, desk: str, since: datetime | None) -> dict[int, str]:
    """Every reason kept beside the desk's audit entries (from `since`), by entry seq."""
    from gateway.desks.models import DeskActionReason

    stmt = (
        sa.select(DeskActionReason.audit_seq, DeskActionReason.reason)
        .join(audit.AuditEntry, audit.AuditEntry.seq == DeskActionReason.audit_seq)
        .where(audit.AuditEntry.desk == desk)
    )
    if since is not None:
        stmt = stmt.where(audit.AuditEntry.at >= since)
    return {int(seq): str(reason) for seq, reason in session.execute(stmt).tuples()}


def export_audit_csv(
    session: Session,
    *,
    staff: StaffAccount,
    desk: str,
    since: datetime | None = None,
    settings: Settings | None = None,
) -> str:
    """A desk's audit trail as CSV (RFC 4180, header first), for auditors only; the export
    itself is recorded in the trail (and committed). Cells are escaped against CSV injection."""
    start = _audit_scope(staff, desk, since)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    # Read before the entries are streamed: few entries have a reason.
    reasons = _desk_reasons(session, desk, start)
    for n, entry in enumerate(audit.iter_entries(session, desk=desk, since=start)):
        if n >= MAX_EXPORT_ROWS:
            break
        writer.writerow(
            csv_cell(v)
            for v in (
                entry.seq, entry.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                entry.actor, entry.role, entry.desk, entry.action, entry.object_ref,
                entry.outcome, entry.request_id, reasons.get(entry.seq),
            )
        )
    audit_record(
        session, settings or _current_settings(), staff=staff, action="audit.exported",
        object_ref=f"desk:{desk}", outcome="success",
    )
    session.commit()
    return out.getvalue()


def _current_settings() -> Settings:
    from gateway.app import get_settings

    return get_settings()
