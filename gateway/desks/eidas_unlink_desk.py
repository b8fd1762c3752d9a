"""The desk's page for removing a European eID link made in error: /desk/eidas-unlink.

Why: a link made to the wrong account (a mix-up at the desk, or a holder who reports "an eID
I don't know is linked to my account") gives the eID's holder that account's BSN at every
relying party. The owner can remove a link in My account, but only after logging in at
midden; a desk removes it at once.

Two steps:

1. The officer or supervisor types the account's username and the holder's date of birth;
   they must match, as on /desk/suspend (`suspension_desk.holder_account`), so that a
   misheard username never shows a stranger's links.
2. The page lists the account's links (when, the approving supervisor, the eID's identity as
   the desk saw it at link time); the officer chooses one, gives a reason and removes it
   (gateway.desks.eidas_links.unlink_at_desk). A single person suffices: removing a link only
   takes access away, like a suspension. Auditors may not use the page.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, redirect, render_template, request, url_for

from gateway import db
from gateway.accounts.models import Account
from gateway.app import get_settings
from gateway.desks import eidas_links
from gateway.desks.auth import current_staff, staff_required
from gateway.desks.blueprint import desk, form_field, nav_item
from gateway.desks.models import StaffRole
from gateway.desks.service import DeskError, audit_record
from gateway.desks.suspension_desk import holder_account
from gateway.i18n import lazy_gettext

PROCESSORS = (StaffRole.OFFICER.value, StaffRole.SUPERVISOR.value)
FIELDS = ("username", "birth_date", "link", "reason")
NOTICES = {
    "removed": lazy_gettext(
        "The European eID is no longer linked to the account. Its sessions with the account"
        " have ended and the account holder has been told by e-mail."
    ),
}



def _render(status: int = 200, **context: Any) -> tuple[str, int]:
    context.setdefault("errors", {})
    context.setdefault("values", {})
    context.setdefault("account", None)
    context.setdefault("links", [])
    key = request.args.get("notice", "")
    context.setdefault("notice", NOTICES.get(key) if isinstance(key, str) else None)
    return render_template("desk/eidas_unlink.html", **context), status


def _links_page(account: Account, values: dict[str, str], status: int = 200,
                errors: dict[str, Any] | None = None) -> tuple[str, int]:
    """Step 2. It shows the eIDs' identities, so each showing is an audit entry, like the
    account overview's `account.viewed` (gateway.desks.account_desk)."""
    s = db.session()
    links = eidas_links.links_shown(s, get_settings(), account)
    audit_record(s, get_settings(), staff=current_staff(), action="account.eid_links_viewed",
                 object_ref=f"account:{account.id}", outcome="success")
    s.commit()
    return _render(status, values=values, account=account, links=links, errors=errors or {},
                   notice=None)


@desk.route("/eidas-unlink", methods=["GET", "POST"])
@staff_required(*PROCESSORS)
def eidas_unlink() -> Any:
    if request.method == "GET":
        return _render()
    values = {name: form_field(name) for name in FIELDS}
    account, errors = holder_account(values["username"], values["birth_date"])
    if account is None:
        # Back to the first step: no account's links are shown.
        return _render(422, values=values, notice=None, errors=errors)
    if form_field("step") != "remove":
        return _links_page(account, values)
    s = db.session()
    try:
        eidas_links.unlink_at_desk(
            s, get_settings(), current_app._get_current_object(),  # type: ignore[attr-defined]
            current_staff(), account, values["link"], values["reason"],
        )
    except DeskError as exc:
        s.rollback()
        field = exc.field if exc.field in ("link", "reason") else "link"
        return _links_page(account, values, 422, {field: str(exc.message)})
    return redirect(url_for("desk.eidas_unlink", notice="removed"))


nav_item("desk.eidas_unlink", lazy_gettext("Remove a European eID link"), *PROCESSORS)
