"""The citizen's application pages: the form at /apply and the confirmation at /apply/sent
(issue 4, item 1).

Views only translate HTTP to `gateway.desks.apply` and back. A valid submission is answered
with a 303 redirect to the confirmation page (post/redirect/get, so a reload never submits
twice); the confirmation shows only what the person typed themselves (the chosen desk), so it
reads the same whether or not the BSN already had an account. A form with problems comes back
with every problem at the top (linked to its field) and beside its field, the values kept
except the password. CSRF protection is the app-wide one (`gateway.web.csrf`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, redirect, render_template, request, session, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response as BaseResponse

from gateway.app import get_policies
from gateway.desks import apply
from gateway.desks.codes import DESK_CODE_VALIDITY
from gateway.desks.policy import DeskKind
from gateway.i18n import current_language
from gateway.web import no_store, request_id

bp = Blueprint("apply", __name__)

#: Session key of the desk chosen in the last accepted application (for the confirmation page).
SESSION_DESK = "apply_desk"


def _fields(form: MultiDict[str, str]) -> dict[str, object]:
    """One value per field; a field sent more than once is passed on as a list (refused)."""
    fields: dict[str, object] = {}
    for name in apply.FIELDS:
        values = form.getlist(name)
        if len(values) == 1:
            fields[name] = values[0]
        elif values:
            fields[name] = list(values)
    return fields


def _form_page(values: dict[str, str], errors: dict[str, Any], status: int) -> tuple[str, int]:
    policies = get_policies()
    language = current_language()
    values = {"language": language, **values}
    body = render_template(
        "apply/form.html",
        values=values,
        errors=errors,
        form_id=apply.FORM,
        nationalities=apply.nationality_choices(policies, language),
        desk_groups=apply.desk_choices(policies, language),
        password_min=policies.accounts.password.min_length,
        username_min=policies.accounts.username.min_length,
        username_max=policies.accounts.username.max_length,
    )
    return body, status


@bp.get("/apply")
@no_store
def form() -> tuple[str, int]:
    return _form_page({}, {}, 200)


@bp.post("/apply")
@no_store
def submit() -> BaseResponse | tuple[str, int]:
    fields = _fields(request.form)
    try:
        receipt = apply.submit_application(
            fields, ip=request.remote_addr, request_id=request_id()
        )
    except apply.ApplicationRefused as refused:
        return _form_page(apply.echo_values(fields), refused.errors, refused.status)
    session[SESSION_DESK] = receipt.desk.code
    return redirect(url_for("apply.sent"), code=303)


@bp.get("/apply/sent")
@no_store
def sent() -> str:
    policies = get_policies()
    code = session.get(SESSION_DESK)
    desk = policies.desks.get(code) if isinstance(code, str) else None
    return render_template(
        "apply/sent.html",
        desk_name=apply.desk_label(desk, current_language()) if desk else None,
        video=desk is not None and desk.kind is DeskKind.VIDEO,
        days=DESK_CODE_VALIDITY.days,
    )


def init_app(app: Flask) -> None:
    """Build the application service and register the pages."""
    apply.init_app(app)
    app.register_blueprint(bp)
