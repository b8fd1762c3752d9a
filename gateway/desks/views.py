"""Desk staff pages (issue 4, items 4 to 6): find an application by desk code, look at it,
record the document check, approve (SMS, voice call or PDF letter) or reject; four-eyes
requests and their decisions; the auditor's trail and CSV export.

HTTP only: every decision is made by gateway.desks.service and gateway.desks.four_eyes
(ARCHITECTURE.md, habit 4); a refusal (`DeskError`) is shown with its own message, next to
the field it is about. Every form carries the CSRF token (gateway.web), every page is
`no_store` (through `staff_required`), and every page works in Dutch and English.

An application page opens only for an application that this staff member found by its desk
code in this browser session: the desk code is the applicant's proof of being at the desk,
and an id seen elsewhere (a log, a colleague's screen) must not be a way around it.

The activation letter (a PDF with the code in clear) is never stored: it is embedded in the
one page that answers the approval, as a download link, and is gone when that page is left.
"""

from __future__ import annotations

import base64
from typing import Any

import sqlalchemy as sa
from flask import current_app, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response as BaseResponse

from gateway import clock, db
from gateway.accounts.models import Account
from gateway.app import get_policies, get_settings
from gateway.desks import four_eyes, service
from gateway.desks.api import ID_RE, problem_label, stored_problems
from gateway.desks.apply import username_key
from gateway.desks.auth import current_staff, staff_required
from gateway.desks.blueprint import desk, form_field, nav_item
from gateway.desks.models import Application, FourEyesKind, StaffRole
from gateway.desks.policy import DocumentType
from gateway.desks.register import TableRegister
from gateway.desks.service import DeskError, DocumentEntry
from gateway.i18n import gettext, lazy_gettext

PROCESSORS = (StaffRole.OFFICER.value, StaffRole.SUPERVISOR.value)
SUPERVISOR = StaffRole.SUPERVISOR.value
AUDITOR = StaffRole.AUDITOR.value

#: Session key: the applications this staff member opened by desk code (bounded list).
SESSION_OPENED = "desk_opened_applications"
MAX_OPENED = 20


DOCUMENT_TYPES = {
    DocumentType.PASSPORT.value: lazy_gettext("Passport"),
    DocumentType.IDENTITY_CARD.value: lazy_gettext("Identity card"),
}
DELIVERIES = {
    "sms": lazy_gettext("SMS to the applicant's mobile phone"),
    "voice": lazy_gettext("Spoken message (voice call), for a landline"),
    "letter": lazy_gettext("Letter to the applicant's postal address"),
}
FOUR_EYES_KINDS = {
    FourEyesKind.REISSUE_ACTIVATION.value: lazy_gettext("Reissue the activation code"),
    FourEyesKind.CHANGE_PHONE.value: lazy_gettext("Change the phone number"),
    FourEyesKind.UNBLOCK_ACCOUNT.value: lazy_gettext("Unblock the account"),
    FourEyesKind.LIFT_SUSPENSION.value: lazy_gettext("Lift the suspension of the account"),
}
#: How the four-eyes list names every kind; link_eidas is requested on its own page
#: (gateway.desks.eidas_link_desk), where the eID is compared with the document first.
FOUR_EYES_LABELS = {
    **FOUR_EYES_KINDS,
    FourEyesKind.LINK_EIDAS.value: lazy_gettext("Link a European eID to the account"),
}
STATES = {
    "submitted": lazy_gettext("Submitted: waiting for a document check"),
    "checked": lazy_gettext("Checked: the document check passed"),
    "approved": lazy_gettext("Approved"),
    "rejected": lazy_gettext("Rejected"),
    "expired": lazy_gettext("Expired"),
}
NOTICES = {
    "rejected": lazy_gettext("The application has been rejected."),
    "requested": lazy_gettext(
        "Your request has been saved. A supervisor of your desk must approve it."
    ),
    "approved": lazy_gettext("The request has been approved and carried out."),
    "refused": lazy_gettext("The request has been refused."),
    "not_opened": lazy_gettext("Find the application with the applicant's desk code first."),
}
#: The form fields of the check form; a refusal about any other field goes to the summary.
CHECK_FIELDS = ("document_type", "issuing_country", "document_number", "expiry", "surname",
                "given_names", "mrz")



def _notice() -> Any:
    key = request.args.get("notice", "")
    return NOTICES.get(key) if isinstance(key, str) else None


def _error_map(error: DeskError, fields: tuple[str, ...], fallback: str) -> dict[str, str]:
    """{input id: message} for the error summary and the field."""
    target = error.field if error.field in fields else fallback
    return {target: str(error.message)}


def _remember_opened(application_id: str) -> None:
    staff = current_staff()
    entry = session.get(SESSION_OPENED)
    ids: list[str] = []
    if isinstance(entry, dict) and entry.get("staff") == staff.id:
        ids = [i for i in entry.get("ids", []) if isinstance(i, str) and i != application_id]
    ids.append(application_id)
    session[SESSION_OPENED] = {"staff": staff.id, "ids": ids[-MAX_OPENED:]}


def _was_opened(application_id: str) -> bool:
    entry = session.get(SESSION_OPENED)
    return (
        isinstance(entry, dict)
        and entry.get("staff") == current_staff().id
        and application_id in entry.get("ids", [])
    )


def _opened_application(application_id: str) -> Application | None:
    """The application, when this staff member opened it by desk code in this session."""
    if not ID_RE.fullmatch(application_id) or not _was_opened(application_id):
        return None
    try:
        return service.get_application(db.session(), application_id)
    except DeskError:
        return None


def _to_find() -> BaseResponse:
    return redirect(url_for("desk.find_application", notice="not_opened"))


def _render_application(application: Application, *, status: int = 200,
                        **context: Any) -> tuple[str, int]:
    s = db.session()
    checks = service.document_checks(s, application.id)
    context.setdefault("errors", {})
    context.setdefault("values", {})
    return render_template(
        "desk/application.html",
        application=application,
        record=TableRegister(s).lookup(application.bsn),
        checks=[(check, [(code, field, problem_label(code))
                         for code, field in stored_problems(check)]) for check in checks],
        states=STATES,
        document_types=DOCUMENT_TYPES,
        deliveries=DELIVERIES,
        can_process=current_staff().role in PROCESSORS,
        **context,
    ), status


# --- finding and showing an application ---------------------------------------------------


@desk.route("/applications", methods=["GET", "POST"], endpoint="find_application")
@staff_required(*PROCESSORS)
def find_application_view() -> Any:
    errors: dict[str, str] = {}
    if request.method == "POST":
        try:
            application = service.find_application(
                db.session(), get_settings(), form_field("desk_code")
            )
        except DeskError as exc:
            db.session().rollback()
            errors = {"desk_code": str(exc.message)}
        else:
            _remember_opened(application.id)
            return redirect(url_for("desk.application", application_id=application.id))
    return render_template("desk/find.html", errors=errors, notice=_notice()), (
        422 if errors else 200)


nav_item("desk.find_application", lazy_gettext("Find an application"), *PROCESSORS)


@desk.get("/applications/<application_id>")
@staff_required(*PROCESSORS)
def application(application_id: str) -> Any:
    found = _opened_application(application_id)
    if found is None:
        return _to_find()
    return _render_application(found, notice=_notice())


@desk.post("/applications/<application_id>/check")
@staff_required(*PROCESSORS)
def record_check(application_id: str) -> Any:
    found = _opened_application(application_id)
    if found is None:
        return _to_find()
    values = {name: form_field(name) for name in CHECK_FIELDS}
    entry = DocumentEntry(
        document_type=values["document_type"],
        issuing_country=values["issuing_country"],
        document_number=values["document_number"],
        expiry=values["expiry"],
        mrz=values["mrz"] or None,
        surname=values["surname"] or None,
        given_names=values["given_names"] or None,
    )
    s = db.session()
    try:
        result = service.record_document_check(
            s, get_settings(), get_policies(), TableRegister(s), staff=current_staff(),
            application_id=found.id, entry=entry,
        )
    except DeskError as exc:
        s.rollback()
        return _render_application(
            found, status=422, values=values,
            errors=_error_map(exc, CHECK_FIELDS, "check"),
        )
    s.refresh(found)
    return _render_application(
        found, status=200, result=result, values=values if not result.passed else {},
    )


@desk.post("/applications/<application_id>/approve")
@staff_required(*PROCESSORS)
def approve(application_id: str) -> Any:
    found = _opened_application(application_id)
    if found is None:
        return _to_find()
    delivery = form_field("delivery")
    address_text = form_field("letter_address")
    address = [line for line in address_text.splitlines() if line.strip()]
    s = db.session()
    try:
        approval = service.approve(
            s, get_settings(), get_policies(), current_app._get_current_object(),  # type: ignore[attr-defined]
            staff=current_staff(), application_id=found.id, delivery=delivery,
            letter_address=address if delivery == "letter" else None, register=TableRegister(s),
        )
    except DeskError as exc:
        s.rollback()
        return _render_application(
            found, status=422,
            values={"delivery": delivery, "letter_address": address_text},
            errors=_error_map(exc, ("delivery", "letter_address"), "approve"),
        )
    pdf = approval.letter_pdf
    return render_template(
        "desk/approved.html", approval=approval, deliveries=DELIVERIES,
        letter_href=("data:application/pdf;base64," + base64.b64encode(pdf).decode("ascii"))
        if pdf is not None else None,
    )


@desk.post("/applications/<application_id>/reject")
@staff_required(*PROCESSORS)
def reject(application_id: str) -> Any:
    found = _opened_application(application_id)
    if found is None:
        return _to_find()
    reason = form_field("reason")
    s = db.session()
    try:
        service.reject(s, get_settings(), staff=current_staff(), application_id=found.id,
                       reason=reason)
    except DeskError as exc:
        s.rollback()
        return _render_application(
            found, status=422, values={"reason": reason},
            errors=_error_map(exc, ("reason",), "reject"),
        )
    return redirect(url_for("desk.find_application", notice="rejected"))


# --- four-eyes ----------------------------------------------------------------------------


def _account_id(username: str) -> str | None:
    """The account the holder names by its username (how they know it at the desk)."""
    key = username_key(username)
    if not key or len(key) > 64 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return None
    return db.session().scalar(sa.select(Account.id).where(Account.username_key == key))


@desk.get("/four-eyes")
@staff_required(*PROCESSORS)
def four_eyes_list() -> Any:
    staff = current_staff()
    items = four_eyes.pending_four_eyes(db.session(), staff=staff)
    return render_template(
        "desk/four_eyes.html", items=items, kinds=FOUR_EYES_LABELS,
        can_decide=staff.role == SUPERVISOR, notice=_notice(),
    )


nav_item("desk.four_eyes_list", lazy_gettext("Four-eyes requests"), *PROCESSORS)


def _four_eyes_payload(values: dict[str, str]) -> dict[str, Any]:
    """The form's fields that the chosen kind of request takes (the service checks them)."""
    kind = values["kind"]
    if kind == FourEyesKind.REISSUE_ACTIVATION.value:
        payload: dict[str, Any] = {"delivery": values["delivery"]}
        if values["delivery"] == "letter":
            payload["letter_address"] = [
                line for line in values["letter_address"].splitlines() if line.strip()
            ]
        return payload
    if kind == FourEyesKind.CHANGE_PHONE.value:
        return {"phone": values["phone"]}
    return {}


@desk.route("/four-eyes/new", methods=["GET", "POST"])
@staff_required(*PROCESSORS)
def four_eyes_new() -> Any:
    fields = ("kind", "username", "delivery", "letter_address", "phone", "reason")
    values = {name: form_field(name) for name in fields} if request.method == "POST" else {}
    errors: dict[str, str] = {}
    if request.method == "POST":
        s = db.session()
        account_id = _account_id(values["username"])
        if account_id is None:
            errors["username"] = gettext(
                "No account has this username. Check the spelling with the account holder."
            )
        else:
            payload = _four_eyes_payload(values)
            try:
                four_eyes.request_four_eyes(
                    s, staff=current_staff(), kind=values["kind"],
                    object_ref=f"account:{account_id}", payload=payload,
                    reason=values["reason"], settings=get_settings(), policies=get_policies(),
                )
            except DeskError as exc:
                s.rollback()
                errors = _error_map(exc, fields, "kind")
            else:
                return redirect(url_for("desk.four_eyes_list", notice="requested"))
    return render_template(
        "desk/four_eyes_new.html", kinds=FOUR_EYES_KINDS, deliveries=DELIVERIES, values=values,
        errors=errors,
    ), (422 if errors else 200)


@desk.post("/four-eyes/<request_id>/decision")
@staff_required(SUPERVISOR)
def four_eyes_decision(request_id: str) -> Any:
    decision = form_field("decision")
    if not ID_RE.fullmatch(request_id) or decision not in ("approve", "refuse"):
        return redirect(url_for("desk.four_eyes_list"))
    s = db.session()
    try:
        outcome = four_eyes.decide_four_eyes(
            s, get_settings(), current_app._get_current_object(),  # type: ignore[attr-defined]
            supervisor=current_staff(), request_id=request_id, approve=decision == "approve",
        )
    except DeskError as exc:
        s.rollback()
        return render_template(
            "desk/four_eyes.html", items=four_eyes.pending_four_eyes(s, staff=current_staff()),
            kinds=FOUR_EYES_LABELS, can_decide=True, errors={"requests": str(exc.message)},
        ), 422
    if outcome.letter_pdf is not None:
        return render_template(
            "desk/reissued.html",
            letter_href="data:application/pdf;base64,"
            + base64.b64encode(outcome.letter_pdf).decode("ascii"),
        )
    return redirect(url_for("desk.four_eyes_list", notice=outcome.status))


# --- audit --------------------------------------------------------------------------------


@desk.get("/audit")
@staff_required(AUDITOR)
def audit_trail() -> Any:
    staff = current_staff()
    try:
        entries = service.list_audit(db.session(), staff=staff, desk=staff.desk)
    except DeskError as exc:
        return render_template("desk/audit.html", entries=[], error=str(exc.message)), 403
    reasons = service.action_reasons(db.session(), (entry.seq for entry in entries))
    return render_template("desk/audit.html", entries=entries, reasons=reasons, error=None)


nav_item("desk.audit_trail", lazy_gettext("Audit trail"), AUDITOR)


@desk.get("/audit.csv")
@staff_required(AUDITOR)
def audit_csv() -> Any:
    staff = current_staff()
    try:
        text = service.export_audit_csv(db.session(), staff=staff, desk=staff.desk,
                                        settings=get_settings())
    except DeskError as exc:
        return render_template("desk/audit.html", entries=[], error=str(exc.message)), 403
    stamp = clock.now().strftime("%Y%m%d")
    response = current_app.response_class(text, mimetype="text/csv")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="audit-{staff.desk}-{stamp}.csv"'
    )
    return response

