"""The desk's page for linking a European eID to an account (issue 8, item 4): /desk/eidas-link.

Two steps, so that nobody asks for a link without having seen what it links:

1. The officer types the account's username (as the holder tells it) and the link code the
   holder shows (gateway.desks.eidas_link_views made it).
2. The page shows the account's name and date of birth beside the eID's (unsealed from the
   link code), marks where they differ, and asks the officer to confirm that the passport or
   identity card in front of them belongs to both; with a reason the officer then requests the
   four-eyes action `link_eidas` (gateway.desks.four_eyes), which a supervisor of the desk
   approves on the four-eyes page, where the same comparison is shown
   (`eidas_link_details`, a template global of the desk pages).

A difference in the name (transliteration, a name taken at marriage) or in the date of birth
is the officer's judgement: shown, never decided by the software.
"""

from __future__ import annotations

from typing import Any

from flask import redirect, render_template, request, url_for

from gateway import db
from gateway.accounts.models import Account
from gateway.app import get_policies, get_settings
from gateway.desks import eidas_links, four_eyes
from gateway.desks.auth import current_staff, staff_required
from gateway.desks.blueprint import desk, form_field, nav_item
from gateway.desks.eidas_links import LinkError, PendingLink
from gateway.desks.models import FourEyesKind, FourEyesRequest, StaffRole
from gateway.desks.service import DeskError
from gateway.i18n import gettext, lazy_gettext

PROCESSORS = (StaffRole.OFFICER.value, StaffRole.SUPERVISOR.value)
FIELDS = ("username", "link_code", "document_checked", "reason")



def _render(status: int = 200, **context: Any) -> tuple[str, int]:
    context.setdefault("errors", {})
    context.setdefault("values", {})
    context.setdefault("pending", None)
    context.setdefault("account", None)
    return render_template("desk/eidas_link.html", **context), status


@desk.route("/eidas-link", methods=["GET", "POST"])
@staff_required(*PROCESSORS)
def eidas_link() -> Any:
    if request.method == "GET":
        return _render()
    from gateway.desks.views import _account_id

    values = {name: form_field(name) for name in FIELDS}
    step = form_field("step")
    s = db.session()
    account_id = _account_id(values["username"])
    account = s.get(Account, account_id) if account_id is not None else None
    if account is None:
        return _render(422, values=values, errors={"username": gettext(
            "No account has this username. Check the spelling with the account holder.")})
    try:
        pending = eidas_links.pending_link(s, get_settings(), account, values["link_code"])
    except LinkError as exc:
        field = "username" if exc.code in ("no_bsn", "account_not_active") else "link_code"
        return _render(422, values=values, errors={field: str(exc.message)})
    if step != "request":
        return _render(values=values, pending=pending, account=account)
    if values["document_checked"] != "yes":
        return _render(422, values=values, pending=pending, account=account, errors={
            "document_checked": gettext(
                "Confirm that you have checked the identity document against the account and"
                " the eID."
            )})
    try:
        four_eyes.request_four_eyes(
            s, staff=current_staff(), kind=FourEyesKind.LINK_EIDAS.value,
            object_ref=f"account:{account.id}", payload={"link_code": values["link_code"]},
            reason=values["reason"], settings=get_settings(), policies=get_policies(),
        )
    except DeskError as exc:
        s.rollback()
        field = exc.field if exc.field in FIELDS else "link_code"
        if exc.code == "already_pending":
            field = "username"
        if field in ("username", "link_code"):
            # Back to the first step, where these fields can be corrected.
            return _render(422, values=values, errors={field: str(exc.message)})
        return _render(422, values=values, pending=pending, account=account,
                       errors={field: str(exc.message)})
    return redirect(url_for("desk.four_eyes_list", notice="requested"))


def eidas_link_details(item: FourEyesRequest) -> dict[str, Any] | None:
    """For a pending `link_eidas` request: {"account": Account, "pending": PendingLink}, the
    comparison the supervisor decides on; None for other requests."""
    if item.kind != FourEyesKind.LINK_EIDAS.value:
        return None
    code_id = (item.payload or {}).get("link_code_id")
    kind, _, account_id = item.object_ref.partition(":")
    s = db.session()
    account = s.get(Account, account_id) if kind == "account" else None
    pending: PendingLink | None = None
    if isinstance(code_id, str):
        pending = eidas_links.pending_link_by_id(s, get_settings(), code_id, account)
    return {"account": account, "pending": pending}


@desk.context_processor
def _globals() -> dict[str, Any]:
    return {"eidas_link_details": eidas_link_details}


nav_item("desk.eidas_link", lazy_gettext("Link a European eID"), *PROCESSORS)
