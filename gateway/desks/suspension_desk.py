"""The desk's page for suspending a citizen's account on suspected misuse: /desk/suspend.

An officer or a supervisor types the account's username (as the holder, or the person who
reports the misuse, tells it), the holder's date of birth and a reason; the account is
suspended at once (gateway.desks.suspension has the rules and what a suspension ends).
Lifting it is a four-eyes request (`lift_suspension`) on the four-eyes page.

The date of birth must match the account's: a username mistyped or misheard on the phone
would otherwise suspend a stranger's account, whose holder abroad could then log in again
only after a desk visit.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from flask import current_app, redirect, render_template, request, url_for

from gateway import db
from gateway.accounts.models import Account
from gateway.app import get_settings
from gateway.desks import suspension
from gateway.desks.auth import current_staff, staff_required
from gateway.desks.blueprint import desk, form_field, nav_item
from gateway.desks.models import StaffRole
from gateway.desks.service import DeskError, audit_record
from gateway.i18n import gettext, lazy_gettext

PROCESSORS = (StaffRole.OFFICER.value, StaffRole.SUPERVISOR.value)
#: The audit action of a desk lookup by username that found nothing (`holder_account`).
LOOKUP_FAILED = "account.lookup_failed"
FIELDS = ("username", "birth_date", "reason")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
NOTICES = {
    "suspended": lazy_gettext(
        "The account has been suspended. Its sessions have ended and its holder has been"
        " told by e-mail. To lift the suspension, make a four-eyes request."
    ),
}



def parse_birth_date(value: str) -> date | None:
    """The date typed as YYYY-MM-DD, or None."""
    value = value.strip()
    if not _ISO_DATE.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def holder_account(username: str, birth_date: str) -> tuple[Account | None, dict[str, Any]]:
    """The account with this username whose holder was born on the date typed, or None and
    the field errors: the check every desk page that finds an account by its username makes
    (/desk/suspend, /desk/eidas-unlink, /desk/account), against a misheard username.

    A lookup that finds nothing is an audit entry `account.lookup_failed` (committed), with no
    object and never the username typed (a mistyped one may be someone else's), so auditors
    see fishing on any of these pages."""
    from gateway.desks.views import _account_id

    s = db.session()
    account_id = _account_id(username)
    account = s.get(Account, account_id) if account_id is not None else None
    born = parse_birth_date(birth_date)
    if account is None:
        failure, errors = "unknown_username", {"username": gettext(
            "No account has this username. Check the spelling with the account holder.")}
    elif born is None:
        failure, errors = "bad_birth_date", {"birth_date": gettext(
            "Type the date of birth as year-month-day, for example 1980-03-25.")}
    elif born != account.birth_date:
        failure, errors = "birth_date_mismatch", {"birth_date": gettext(
            "This date of birth does not match the account with this username. Check both"
            " with the account holder.")}
    else:
        return account, {}
    s.rollback()
    audit_record(s, get_settings(), staff=current_staff(), action=LOOKUP_FAILED,
                 object_ref=None, outcome=f"failure:{failure}")
    s.commit()
    return None, errors


def _render(status: int = 200, **context: Any) -> tuple[str, int]:
    context.setdefault("errors", {})
    context.setdefault("values", {})
    key = request.args.get("notice", "")
    context.setdefault("notice", NOTICES.get(key) if isinstance(key, str) else None)
    return render_template("desk/suspend.html", **context), status


@desk.route("/suspend", methods=["GET", "POST"])
@staff_required(*PROCESSORS)
def suspend() -> Any:
    if request.method == "GET":
        return _render()
    values = {name: form_field(name) for name in FIELDS}
    s = db.session()
    account, errors = holder_account(values["username"], values["birth_date"])
    if account is None:
        return _render(422, values=values, notice=None, errors=errors)
    try:
        suspension.suspend_account(
            s, get_settings(), current_app._get_current_object(),  # type: ignore[attr-defined]
            current_staff(), account, values["reason"],
        )
    except DeskError as exc:
        s.rollback()
        field = exc.field if exc.field in FIELDS else "username"
        return _render(422, values=values, notice=None, errors={field: str(exc.message)})
    return redirect(url_for("desk.suspend", notice="suspended"))


nav_item("desk.suspend", lazy_gettext("Suspend an account"), *PROCESSORS)
