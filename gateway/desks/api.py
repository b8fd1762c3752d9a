"""The desk JSON API under /desk/api (issue 4, item 4): find an application by desk code,
record a document check, approve or reject, four-eyes requests and decisions, suspending a
citizen's account (gateway.desks.suspension), removing a European eID link made in error
(gateway.desks.eidas_links.unlink_at_desk), and the auditor's CSV export. Described by the
OpenAPI 3.1 document at /desk/api/openapi.json (gateway.desks.openapi), which is built from
the pydantic models below, so the document and the validation cannot drift apart.

HTTP only: every decision is made by gateway.desks.service (ARCHITECTURE.md, habit 4).

Input (OWASP Input Validation Cheat Sheet): request bodies must be `application/json`
(else 415), are parsed by pydantic in strict mode (no type coercion, unknown fields refused,
every string bounded and free of control characters, since PostgreSQL refuses NUL bytes and
logs must not carry line breaks) and are capped by the web base's MAX_CONTENT_LENGTH (413).
Malformed JSON is a 400, well-formed JSON of the wrong shape a 422.

Errors are RFC 9457 problem details (`application/problem+json`) with `type`, `title`,
`status`, `detail`, the request id, and for a refusal by the service its stable `code` and,
when one field is to blame, `field`. 401 and 403 come from gateway.desks.auth's decorators.
"""

from __future__ import annotations

import base64
import re
from datetime import date, datetime
from typing import Annotated, Any, Literal, TypeVar

from flask import Response, current_app, g, jsonify, request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from gateway import db
from gateway.accounts.models import Account
from gateway.app import get_policies, get_settings
from gateway.desks import eidas_links, four_eyes, service, suspension
from gateway.desks.auth import _absolute, api_staff_required, current_staff
from gateway.desks.blueprint import desk_api
from gateway.desks.models import (
    Application,
    DocumentCheck,
    FourEyesKind,
    FourEyesRequest,
    FourEyesStatus,
    StaffRole,
)
from gateway.desks.policy import DocumentType
from gateway.desks.register import TableRegister
from gateway.desks.service import DeskError, DocumentEntry
from gateway.i18n import gettext, lazy_gettext
from gateway.store import get_store

#: No C0 controls or DEL in any string the API accepts. Line breaks are allowed only where a
#: field says so (the MRZ lines are a list, not a multi-line string).
NO_CONTROL = r"^[^\u0000-\u001f\u007f]*$"
_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
ID_RE = re.compile(_ID_PATTERN)

#: Where the problem types are documented; a stable URI per DeskError code (RFC 9457 §3.1.1).
PROBLEM_TYPE_BASE = "https://abroad-gateway.example/problems/"

M = TypeVar("M", bound=BaseModel)


def _text(max_length: int, min_length: int = 0, pattern: str = NO_CONTROL) -> Any:
    return Field(min_length=min_length, max_length=max_length, pattern=pattern)


class _In(BaseModel):
    """Strict request bodies: exact JSON types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- request bodies -------------------------------------------------------------------------


class DocumentCheckIn(_In):
    """The document on the desk, as the officer reads it (and, optionally, as a scanner
    reads its machine-readable zone: 2 lines of 44 or 3 lines of 30 characters)."""

    document_type: DocumentType
    issuing_country: Annotated[
        str, _text(3, 1, r"^[A-Za-z<]{1,3}$")
    ] = Field(description="ISO 3166-1 alpha-3 as in the MRZ (NLD, DEU or D, ...).")
    document_number: Annotated[str, _text(24, 1, r"^[A-Za-z0-9 -]*$")]
    expiry: date
    mrz: list[Annotated[str, _text(64, 1, r"^[A-Za-z0-9< ]*$")]] | None = Field(
        default=None, min_length=2, max_length=3,
        description="The MRZ lines from a scanner: TD3 (2 x 44) or TD1 (3 x 30).",
    )
    surname: Annotated[str, _text(200, 1)] | None = Field(
        default=None, description="As on the document; needed when there is no MRZ."
    )
    given_names: Annotated[str, _text(200)] | None = Field(
        default=None, description="As on the document; needed when there is no MRZ."
    )


class ApproveIn(_In):
    delivery: Literal["sms", "voice", "letter"]
    letter_address: list[Annotated[str, _text(60, 1)]] | None = Field(
        default=None, min_length=2, max_length=6,
        description="The foreign postal address, one line per item; required for a letter.",
    )


class RejectIn(_In):
    reason: Annotated[str, _text(500, 1)]


class FourEyesPayload(_In):
    """What the action needs: reissue_activation {delivery, letter_address for a letter};
    change_phone {phone}; link_eidas {link_code}; unblock_account and lift_suspension
    nothing."""

    delivery: Literal["sms", "voice", "letter"] | None = None
    letter_address: list[Annotated[str, _text(60, 1)]] | None = Field(
        default=None, min_length=2, max_length=6,
    )
    phone: Annotated[str, _text(32, 1, r"^[0-9+() .-]*$")] | None = Field(
        default=None, description="The new phone number (change_phone only)."
    )
    link_code: Annotated[str, _text(64, 1, r"^[A-Za-z0-9 -]*$")] | None = Field(
        default=None,
        description="The link code the person got after logging in with a European eID"
        " (link_eidas only); the request keeps a reference to the code, never the code.",
    )


class FourEyesIn(_In):
    kind: FourEyesKind
    object_ref: Annotated[
        str, _text(80, 1, r"^(account|application):" + _ID_PATTERN[1:])
    ] = Field(description='What the action is about: "account:<id>" or "application:<id>".')
    payload: FourEyesPayload = Field(default_factory=FourEyesPayload)
    reason: Annotated[str, _text(500, 1)]


class DecisionIn(_In):
    approve: bool


class SuspendIn(_In):
    """Why the account is suspended (what was reported, and by whom)."""

    reason: Annotated[str, _text(500, 1)]


class UnlinkIn(_In):
    """Why a European eID link is removed (why it is wrong, and who reported it)."""

    reason: Annotated[str, _text(500, 1)]


# --- response bodies ------------------------------------------------------------------------


class RegisterOut(_Out):
    """What the population register says about the applicant's BSN."""

    surname: str
    given_names: str
    date_of_birth: date
    nationality: str
    non_resident: bool


class ApplicantOut(_Out):
    bsn: str
    birth_date: date
    nationality: str
    phone: str
    phone_channel: str
    email: str
    language: str
    username: str


class ProblemItemOut(_Out):
    code: str
    message: str
    field: str | None = None


class CheckOut(_Out):
    id: str
    passed: bool
    problems: list[ProblemItemOut]
    document_type: str
    issuing_country: str
    expiry: date
    desk: str
    created_at: datetime


class ApplicationOut(_Out):
    id: str
    state: Literal["submitted", "checked", "approved", "rejected", "expired"]
    chosen_desk: str
    desk_code_expires_at: datetime
    created_at: datetime
    applicant: ApplicantOut
    population_register: RegisterOut | None
    #: Newest first.
    checks: list[CheckOut]


class ApprovalOut(_Out):
    application_id: str
    account_id: str
    delivery: Literal["sms", "voice", "letter"]
    activation_code_expires_at: datetime
    #: False when no SMS/voice provider took the message; the approval stands.
    delivered: bool
    letter_pdf: str | None = Field(
        default=None, json_schema_extra={"contentEncoding": "base64",
                                         "contentMediaType": "application/pdf"},
        description="The activation letter to print (letter delivery only); not kept.",
    )


class DecisionOut(_Out):
    """An application after approval or rejection."""

    id: str
    state: Literal["submitted", "checked", "approved", "rejected", "expired"]


class EidasLinkOut(_Out):
    """What a link_eidas request's code says of the eID, to compare with the document."""

    given_name: str
    family_name: str
    birthdate: str
    country: str
    code_expires_at: datetime
    #: Where the eID differs from the account: "family_name", "birthdate".
    mismatches: list[Literal["family_name", "birthdate"]]


class FourEyesOut(_Out):
    id: str
    kind: FourEyesKind
    status: FourEyesStatus
    desk: str
    object_ref: str
    reason: str
    created_at: datetime
    decided_at: datetime | None
    eidas_link: EidasLinkOut | None = Field(
        default=None, description="For link_eidas: the eID's identity from the link code."
    )


class FourEyesListOut(_Out):
    items: list[FourEyesOut]


class SuspensionOut(_Out):
    """A suspended account; lifting it is the four-eyes kind `lift_suspension`."""

    account_ref: str = Field(description='"account:<id>", the object_ref of a lift request.')
    suspended_at: datetime


class UnlinkOut(_Out):
    """A European eID link removed by a desk (gateway.desks.eidas_links.unlink_at_desk)."""

    account_ref: str = Field(description='"account:<id>".')
    link_id: str


class FourEyesDecisionOut(_Out):
    id: str
    status: FourEyesStatus
    delivered: bool | None = None
    letter_pdf: str | None = Field(
        default=None, json_schema_extra={"contentEncoding": "base64",
                                         "contentMediaType": "application/pdf"},
        description="A reissued activation letter to print, when the code goes by letter.",
    )


class SinceParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime


#: Every model the OpenAPI document names, under its class name.
SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    DocumentCheckIn, ApproveIn, RejectIn, FourEyesIn, DecisionIn,
    ApplicationOut, CheckOut, ApprovalOut, DecisionOut, FourEyesOut, FourEyesListOut,
    FourEyesDecisionOut, EidasLinkOut, SuspendIn, SuspensionOut, UnlinkIn, UnlinkOut,
)


# --- problems -------------------------------------------------------------------------------


def problem(status: int, title: str, detail: str, *, code: str | None = None,
            field: str | None = None, errors: list[dict[str, str]] | None = None) -> Response:
    """An RFC 9457 problem details response; `code` gives it a type URI of its own."""
    from gateway.web import request_id

    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code if code else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id(),
    }
    if code:
        body["code"] = code
    if field:
        body["field"] = field
    if errors is not None:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    response.headers["Cache-Control"] = "no-store"
    return response


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


class BadBody(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def parse_body(model: type[M]) -> M:
    """The request's JSON body as `model`, or BadBody carrying the 400/415/422 problem.

    Pydantic's messages are English and name the field and the rule, never echo the input
    (it may be personal data, and it would end up in client logs)."""
    if request.mimetype != "application/json":
        raise BadBody(problem(415, "Unsupported Media Type",
                              gettext("Send the request body as application/json.")))
    raw = request.get_data(cache=False)  # bounded by MAX_CONTENT_LENGTH (413)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        details = exc.errors(include_input=False, include_url=False, include_context=False)
        if any(d["type"] == "json_invalid" for d in details):
            raise BadBody(problem(400, "Bad Request",
                                  gettext("The request body is not valid JSON."))) from None
        errors = [{"field": _location(d["loc"]), "message": d["msg"]} for d in details[:20]]
        raise BadBody(problem(
            422, "Unprocessable Content",
            gettext("The request body does not have the required fields and types."),
            errors=errors,
        )) from None


def pdf_base64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None


# --- glue -----------------------------------------------------------------------------------

#: HTTP status of each DeskError code; a code not named here is a refusal of the input (422).
STATUS_OF_CODE: dict[str, int] = {
    "unknown_code": 404,
    "not_found": 404,
    "expired_code": 410,
    "used_code": 409,
    "illegal_state": 409,
    "check_required": 409,
    "account_exists": 409,
    "username_taken": 409,
    "forbidden": 403,
    "same_person": 403,
    "other_desk": 403,
    "bad_code": 422,
    "code_unknown": 422,
    "code_expired": 410,
    "code_used": 409,
    "already_linked": 409,
    "no_bsn": 409,
    "account_not_active": 409,
    "already_suspended": 409,
    "not_suspended": 409,
    "no_such_link": 404,
}
TITLES = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
          410: "Gone", 415: "Unsupported Media Type", 422: "Unprocessable Content",
          501: "Not Implemented"}


def desk_error_problem(error: DeskError) -> Response:
    # Whatever the service may have flushed before refusing is thrown away here too.
    db.session().rollback()
    status = STATUS_OF_CODE.get(error.code, 422)
    return problem(status, TITLES.get(status, "Error"), str(error.message), code=error.code,
                   field=error.field)


def not_found() -> Response:
    return problem(404, "Not Found", gettext("There is no such application or request."),
                   code="not_found")


def _application_out(application: Application) -> ApplicationOut:
    s = db.session()
    record = TableRegister(s).lookup(application.bsn)
    checks = service.document_checks(s, application.id)  # newest first
    return ApplicationOut(
        id=application.id,
        state=application.status,  # type: ignore[arg-type]
        chosen_desk=application.chosen_desk,
        desk_code_expires_at=application.desk_code_expires_at,
        created_at=application.created_at,
        applicant=ApplicantOut(
            bsn=application.bsn, birth_date=application.birth_date,
            nationality=application.nationality, phone=application.phone_e164,
            phone_channel=application.phone_channel, email=application.email,
            language=application.language, username=application.username,
        ),
        population_register=None if record is None else RegisterOut(
            surname=record.surname, given_names=record.given_names,
            date_of_birth=record.date_of_birth, nationality=record.nationality,
            non_resident=record.non_resident,
        ),
        checks=[_check_out(check) for check in checks],
    )


def _check_out(check: DocumentCheck, problems: tuple[DeskError, ...] | None = None
               ) -> CheckOut:
    if problems is not None:
        items = [ProblemItemOut(code=p.code, message=str(p.message), field=p.field)
                 for p in problems]
    else:
        items = [ProblemItemOut(code=code, message=str(problem_label(code)), field=field)
                 for code, field in stored_problems(check)]
    return CheckOut(
        id=check.id, passed=check.passed, problems=items, document_type=check.document_type,
        issuing_country=check.issuing_country, expiry=check.expiry_date, desk=check.desk,
        created_at=check.created_at,
    )


def _four_eyes_out(item: FourEyesRequest) -> FourEyesOut:
    from gateway.desks.eidas_link_desk import eidas_link_details

    link = eidas_link_details(item)
    pending = link["pending"] if link is not None else None
    return FourEyesOut(
        id=item.id, kind=FourEyesKind(item.kind), status=FourEyesStatus(item.status),
        desk=item.desk, object_ref=item.object_ref, reason=item.reason,
        created_at=item.created_at, decided_at=item.decided_at,
        eidas_link=EidasLinkOut(
            given_name=pending.given_name, family_name=pending.family_name,
            birthdate=pending.birthdate, country=pending.country,
            code_expires_at=pending.expires_at, mismatches=list(pending.mismatches),
        ) if pending is not None else None,
    )


def json_out(model: BaseModel, status: int = 200) -> Response:
    response = Response(model.model_dump_json(), status=status, mimetype="application/json")
    # Personal data: never kept by a cache (RFC 9111 section 5.2.2.5).
    response.headers["Cache-Control"] = "no-store"
    return response


def entry_from(body: DocumentCheckIn) -> DocumentEntry:
    return DocumentEntry(
        document_type=body.document_type.value,
        issuing_country=body.issuing_country,
        document_number=body.document_number,
        expiry=body.expiry,
        mrz="\n".join(body.mrz) if body.mrz else None,
        surname=body.surname,
        given_names=body.given_names,
    )


# --- endpoints ------------------------------------------------------------------------------

PROCESSORS = (StaffRole.OFFICER, StaffRole.SUPERVISOR)


def _opened_key(application_id: str) -> str:
    return f"{g.staff_token_key}:opened:{application_id}"


def _remember_opened(application_id: str) -> None:
    """As on the pages: an application is acted on only after this token found it by its desk
    code, the proof that the applicant (who holds the code) stands at the desk."""
    get_store().set(_opened_key(application_id), b"1", _absolute())


def _not_opened(application_id: str) -> Response | None:
    if not ID_RE.fullmatch(application_id):
        return not_found()
    if get_store().get(_opened_key(application_id)) is None:
        return problem(
            403, gettext("Desk code needed"),
            gettext("Find the application with the applicant's desk code first."),
            code="not_opened",
        )
    return None


@desk_api.get("/applications/<desk_code>")
@api_staff_required(*PROCESSORS)
def get_application(desk_code: str) -> Response:
    try:
        application = service.find_application(db.session(), get_settings(), desk_code)
    except DeskError as exc:
        return desk_error_problem(exc)
    _remember_opened(application.id)
    return json_out(_application_out(application))


@desk_api.post("/applications/<application_id>/checks")
@api_staff_required(*PROCESSORS)
def post_check(application_id: str) -> Response:
    if (refused := _not_opened(application_id)) is not None:
        return refused
    try:
        body = parse_body(DocumentCheckIn)
        s = db.session()
        result = service.record_document_check(
            s, get_settings(), get_policies(), TableRegister(s), staff=current_staff(),
            application_id=application_id, entry=entry_from(body),
        )
    except BadBody as exc:
        return exc.response
    except DeskError as exc:
        return desk_error_problem(exc)
    check = db.session().get(DocumentCheck, result.check_id)
    if check is None:  # the service committed it; not there means something is badly wrong
        raise RuntimeError("document check not found after it was recorded")
    return json_out(_check_out(check, result.problems), 201)


@desk_api.post("/applications/<application_id>/approve")
@api_staff_required(*PROCESSORS)
def post_approve(application_id: str) -> Response:
    if (refused := _not_opened(application_id)) is not None:
        return refused
    try:
        body = parse_body(ApproveIn)
        s = db.session()
        approval = service.approve(
            s, get_settings(), get_policies(), current_app._get_current_object(),  # type: ignore[attr-defined]
            staff=current_staff(), application_id=application_id, delivery=body.delivery,
            letter_address=list(body.letter_address) if body.letter_address else None,
            register=TableRegister(s),
        )
    except BadBody as exc:
        return exc.response
    except DeskError as exc:
        return desk_error_problem(exc)
    return json_out(ApprovalOut(
        application_id=application_id, account_id=approval.account_id,
        delivery=approval.delivery,  # type: ignore[arg-type]
        activation_code_expires_at=approval.expires_at, delivered=approval.delivered,
        letter_pdf=pdf_base64(approval.letter_pdf),
    ))


@desk_api.post("/accounts/<account_id>/suspension")
@api_staff_required(*PROCESSORS)
def post_suspension(account_id: str) -> Response:
    """Suspend an account at once (gateway.desks.suspension)."""
    if not ID_RE.fullmatch(account_id):
        return not_found()
    try:
        body = parse_body(SuspendIn)
        s = db.session()
        account = s.get(Account, account_id)
        if account is None:
            return not_found()
        suspension.suspend_account(
            s, get_settings(), current_app._get_current_object(),  # type: ignore[attr-defined]
            current_staff(), account, body.reason,
        )
    except BadBody as exc:
        return exc.response
    except DeskError as exc:
        return desk_error_problem(exc)
    assert account.suspended_at is not None
    return json_out(SuspensionOut(account_ref=f"account:{account.id}",
                                  suspended_at=account.suspended_at))


@desk_api.delete("/accounts/<account_id>/eidas-links/<link_id>")
@api_staff_required(*PROCESSORS)
def delete_eidas_link(account_id: str, link_id: str) -> Response:
    """Remove a European eID link made in error, at once (gateway.desks.eidas_links)."""
    if not ID_RE.fullmatch(account_id):
        return not_found()
    try:
        body = parse_body(UnlinkIn)
        s = db.session()
        account = s.get(Account, account_id)
        if account is None:
            return not_found()
        eidas_links.unlink_at_desk(
            s, get_settings(), current_app._get_current_object(),  # type: ignore[attr-defined]
            current_staff(), account, link_id, body.reason,
        )
    except BadBody as exc:
        return exc.response
    except DeskError as exc:
        return desk_error_problem(exc)
    return json_out(UnlinkOut(account_ref=f"account:{account_id}", link_id=link_id))


@desk_api.post("/applications/<application_id>/reject")
@api_staff_required(*PROCESSORS)
def post_reject(application_id: str) -> Response:
    if (refused := _not_opened(application_id)) is not None:
        return refused
    try:
        body = parse_body(RejectIn)
        application = service.reject(db.session(), get_settings(), staff=current_staff(),
                                     application_id=application_id, reason=body.reason)
    except BadBody as exc:
        return exc.response
    except DeskError as exc:
        return desk_error_problem(exc)
    return json_out(DecisionOut(id=application.id,
                                state=application.status))  # type: ignore[arg-type]


@desk_api.get("/four-eyes")
@api_staff_required(*PROCESSORS)
def list_four_eyes() -> Response:
    try:
        items = four_eyes.pending_four_eyes(db.session(), staff=current_staff())
    except DeskError as exc:
        return desk_error_problem(exc)
    return json_out(FourEyesListOut(items=[_four_eyes_out(item) for item in items]))


@desk_api.post("/four-eyes")
@api_staff_required(*PROCESSORS)
def post_four_eyes() -> Response:
    try:
        body = parse_body(FourEyesIn)
        item = four_eyes.request_four_eyes(
            db.session(), staff=current_staff(), kind=body.kind.value,
            object_ref=body.object_ref, payload=body.payload.model_dump(exclude_none=True),
            reason=body.reason, settings=get_settings(), policies=get_policies(),
        )
    except BadBody as exc:
        return exc.response
    except DeskError as exc:
        return desk_error_problem(exc)
    return json_out(_four_eyes_out(item), 201)


@desk_api.post("/four-eyes/<request_id>/decision")
@api_staff_required(StaffRole.SUPERVISOR)
def post_four_eyes_decision(request_id: str) -> Response:
    if not ID_RE.fullmatch(request_id):
        return not_found()
    try:
        body = parse_body(DecisionIn)
        outcome = four_eyes.decide_four_eyes(
            db.session(), get_settings(), current_app._get_current_object(),  # type: ignore[attr-defined]
            supervisor=current_staff(), request_id=request_id, approve=body.approve,
        )
    except BadBody as exc:
        return exc.response
    except DeskError as exc:
        return desk_error_problem(exc)
    return json_out(FourEyesDecisionOut(
        id=outcome.request_id, status=FourEyesStatus(outcome.status),
        delivered=outcome.delivered, letter_pdf=pdf_base64(outcome.letter_pdf),
    ))


@desk_api.get("/audit.csv")
@api_staff_required(StaffRole.AUDITOR)
def get_audit_csv() -> Response:
    since_raw = request.args.get("since")
    since: datetime | None = None
    if since_raw is not None:
        try:
            since = SinceParam(since=since_raw).since  # type: ignore[arg-type]
        except ValidationError:
            return problem(422, "Unprocessable Content",
                           gettext("since must be a date and time in RFC 3339 form."),
                           field="since")
    staff = current_staff()
    try:
        text = service.export_audit_csv(db.session(), staff=staff, desk=staff.desk, since=since)
    except DeskError as exc:
        return desk_error_problem(exc)
    response = Response(text, mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="audit-{staff.desk}.csv"'
    response.headers["Cache-Control"] = "no-store"
    return response


#: Short labels for the findings a stored check names (it keeps "code" or "code:field" only;
#: the detailed message was shown when the check was made).
FINDING_LABELS: dict[str, Any] = {
    "document_expired": lazy_gettext("The document has expired."),
    "document_type_not_accepted": lazy_gettext("This type of document is not accepted."),
    "nationality_not_eligible": lazy_gettext("The nationality is not eligible."),
    "mrz_mismatch": lazy_gettext(
        "The machine-readable zone differs from what was entered or from the application."
    ),
    "register_mismatch": lazy_gettext("The population register has different data."),
}


def stored_problems(check: DocumentCheck) -> list[tuple[str, str | None]]:
    """(code, field) of each problem kept with a check."""
    out: list[tuple[str, str | None]] = []
    for item in check.problems or []:
        code, _, field = str(item).partition(":")
        out.append((code, field or None))
    return out


def problem_label(code: str) -> Any:
    """The officer's text for a problem code kept with an earlier check."""
    return FINDING_LABELS.get(code) or service.MESSAGES.get(code) or code
