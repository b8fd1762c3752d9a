"""The citizen's page for linking a European eID to a Dutch account: /eidas/link (issue 8,
item 4; the desk's side is gateway.desks.eidas_link_desk and gateway.desks.four_eyes).

1. `/eidas/link` explains what linking means and what to bring to a desk.
2. `POST /eidas/link/start` sends the person through the login flow like any relying party,
   asking for `eidas_links.LINK_LEVEL` or higher (essential), which only the eIDAS route
   reaches; an eIDAS single sign-on session that is high enough is reused.
3. `/eidas/link?flow=<id>` takes the result (`gateway.flows.login.finish`): an eIDAS login
   at that level, or a clear page saying why not. What the page needs later (the subject key
   and the name, date of birth and country the eID asserted) is kept in the server-side
   session, sealed, and tied to the SSO session: a logout or an idle timeout ends it too.
4. `POST /eidas/link/code` makes a link code (gateway.desks.eidas_links.issue_link_code) and
   shows it once, with what to bring to the desk. Asking again replaces the older code.

Bilingual, CSRF on every form, `no_store` on every page, no 500 on bad input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, redirect, render_template, request, url_for
from flask import session as flask_session
from werkzeug.wrappers import Response as BaseResponse

from gateway import db
from gateway.app import get_policies, get_settings
from gateway.crypto import SealError, seal, unseal
from gateway.desks import eidas_links
from gateway.desks.eidas_links import LinkError
from gateway.flows import login as flows
from gateway.flows import sessions as sso
from gateway.flows.types import AuthnResult, ErrorCode, RpProtocol, RpRequest
from gateway.i18n import current_language, lazy_gettext
from gateway.levels import Level
from gateway.web import no_store

log = logging.getLogger(__name__)

bp = Blueprint("eidas_link", __name__, url_prefix="/eidas/link")

#: The relying-party id of this page in the login flow (history, SSO's list of services).
LINK_RP = "eidas-link"
#: Session key of the eID login this page works with (a dict; the identity sealed).
SESSION_KEY = "eidas_link"
SEAL_PURPOSE = "eidas-link-session"

LOGIN_ERRORS: dict[str, Any] = {
    ErrorCode.CANCELLED.value: lazy_gettext(
        "You stopped logging in with your eID. Nothing has been changed."
    ),
    ErrorCode.LEVEL_UNAVAILABLE.value: lazy_gettext(
        "Linking needs a login with a European eID at level substantial or high, and that is"
        " not available now. Try again later."
    ),
    ErrorCode.EXPIRED.value: lazy_gettext(
        "Logging in took too long. Start again: nothing has been changed."
    ),
    ErrorCode.LOGIN_REQUIRED.value: lazy_gettext(
        "Log in with your European eID to ask for a link code."
    ),
    ErrorCode.FAILED.value: lazy_gettext(
        "Logging in with your eID did not succeed, so nothing has been changed. Try again."
    ),
}


def _request() -> RpRequest:
    return RpRequest(
        rp_id=LINK_RP, protocol=RpProtocol.SELF,
        levels=tuple(lv for lv in Level if lv >= eidas_links.LINK_LEVEL), essential=True,
        resume_url=url_for("eidas_link.page"), ui_locale=current_language(),
    )


def _render(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    context.setdefault("errors", {})
    return render_template(f"eidas_link/{template}", **context), status


def _remember(result: AuthnResult) -> None:
    identity = {
        name: str(result.attributes.get(name) or "")[:eidas_links.MAX_ATTRIBUTE_CHARS]
        for name in eidas_links.KEPT_ATTRIBUTES
    }
    flask_session[SESSION_KEY] = {
        "sso": result.sso_session_id,
        "subject": result.subject_key,
        "identity": seal(get_settings(), SEAL_PURPOSE, json.dumps(identity, sort_keys=True)),
    }


def _current() -> tuple[str, dict[str, str]] | None:
    """(subject key, identity) of the eID login this browser did for this page, while its
    SSO session lasts; None otherwise."""
    entry = flask_session.get(SESSION_KEY)
    if not isinstance(entry, dict):
        return None
    s = db.session()
    row = sso.current_sso(s, get_settings(), get_policies().accounts.session)
    s.commit()  # an expired session is ended for good
    subject = entry.get("subject")
    if (
        row is None
        or not isinstance(subject, str)
        or entry.get("sso") != row.id
        or row.subject_key != subject
        or row.route != eidas_links.EIDAS_ROUTE
    ):
        flask_session.pop(SESSION_KEY, None)
        return None
    try:
        identity = json.loads(unseal(get_settings(), SEAL_PURPOSE, str(entry.get("identity"))))
    except (SealError, ValueError):
        flask_session.pop(SESSION_KEY, None)
        return None
    if not isinstance(identity, dict):
        return None
    return subject, {name: str(identity.get(name) or "") for name in eidas_links.KEPT_ATTRIBUTES}


def _finish(flow_id: str) -> BaseResponse | tuple[str, int]:
    try:
        result = flows.finish(flow_id)
    except flows.LoginError as exc:
        if exc.error is None:
            return redirect(url_for("eidas_link.page"), code=303)
        return _render("error.html", 200, message=LOGIN_ERRORS.get(
            exc.error.code.value, LOGIN_ERRORS[ErrorCode.FAILED.value]))
    if (
        result.route != eidas_links.EIDAS_ROUTE
        or not result.subject_key.startswith(eidas_links.SUBJECT_PREFIX)
    ):
        return _render("error.html", 200, message=eidas_links.LINK_MESSAGES["not_eidas"])
    if result.level < eidas_links.LINK_LEVEL:
        return _render("error.html", 200, message=eidas_links.LINK_MESSAGES["level_too_low"])
    _remember(result)
    return redirect(url_for("eidas_link.page"), code=303)


@bp.get("")
@no_store
def page() -> Any:
    flow_id = request.args.get("flow")
    if isinstance(flow_id, str) and flow_id:
        return _finish(flow_id[:100])
    current = _current()
    if current is None:
        return _render("start.html")
    subject, identity = current
    linked = eidas_links.is_linked(db.session(), subject)
    return _render("request.html", identity=identity, linked=linked)


@bp.post("/start")
@no_store
def start() -> Any:
    return flows.start_login(_request())


@bp.post("/code")
@no_store
def code() -> Any:
    current = _current()
    if current is None:
        return redirect(url_for("eidas_link.page"), code=303)
    subject, identity = current
    s = db.session()
    try:
        issued = eidas_links.issue_link_code(
            s, get_settings(), subject_key=subject, attributes=identity
        )
    except LinkError as exc:
        s.rollback()
        return _render("request.html", 409, identity=identity,
                       linked=exc.code == "already_linked",
                       errors={"code": str(exc.message)})
    s.commit()
    return _render("code.html", code=_spaced(issued.code), expires_at=_day(issued.expires_at),
                   identity=identity)


def _spaced(code: str) -> str:
    """K1234 5678: easier to read aloud and to copy from a screen."""
    return f"{code[:5]} {code[5:]}"


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def identity_rows(identity: Mapping[str, str]) -> list[tuple[Any, str]]:
    """(label, value) of the eID's identity, for the pages here and at the desk."""
    return [
        (lazy_gettext("Given names"), identity.get("given_name", "")),
        (lazy_gettext("Family name"), identity.get("family_name", "")),
        (lazy_gettext("Date of birth"), identity.get("birthdate", "")),
        (lazy_gettext("Country of the eID"), identity.get("country", "")),
    ]


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.jinja_env.globals["eidas_identity_rows"] = identity_rows
