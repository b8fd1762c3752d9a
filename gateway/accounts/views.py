"""The citizen's "My account" pages under /account/... (`myaccount` blueprint; issue 5,
items 7 and 8), and the e-mail interstitial after login.

/account itself (gateway.flows.views) is the landing page: the gateway's own relying party
"self", logged in through the same login flow every relying party uses; it links here. Views
translate HTTP to calls of `gateway.accounts.selfservice` and back (ARCHITECTURE.md habit 4).

Re-authentication goes through the login flow, never around it (`_guard`): a page that needs
midden while the SSO session is at basis starts a step-up (the second factor only); a change
that needs a recent login (`selfservice.REAUTH_WINDOW`) starts a login with force_authn. The
flow comes back to the page with `?flow=<id>`, which `finish()` turns into the new session.

Every page: bilingual, one clear title, an error summary, CSRF on every form, `no_store`,
WCAG 1.3.5 autocomplete tokens (current-password, new-password, tel, email, one-time-code).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from flask import session as flask_session
from werkzeug.wrappers import Response as BaseResponse

from gateway import clock, db
from gateway.accounts import selfservice as me_service
from gateway.accounts import totp
from gateway.accounts.history import list_events
from gateway.accounts.models import Account, AccountStatus
from gateway.accounts.selfservice import Reauth
from gateway.accounts.service import AccountError, PasswordRejected
from gateway.app import get_policies, get_settings
from gateway.flows import login as flows
from gateway.flows import sessions as sso
from gateway.flows.login import FlowState, LoginFlow
from gateway.flows.types import RpProtocol, RpRequest
from gateway.flows.views import SELF_RP, SELF_SSO_KEY
from gateway.i18n import current_language, lazy_gettext
from gateway.levels import Level
from gateway.mail.addresses import InvalidAddress
from gateway.sms.service import LimitExceeded, PhoneRejected, SendingUnavailable
from gateway.web import allow_form_action, no_store, regenerate_session

log = logging.getLogger(__name__)

bp = Blueprint("myaccount", __name__)

#: Longest form value looked at (no field here is longer).
MAX_FIELD = 1024
#: Session keys: the phone change waiting for its code; the login flow whose e-mail
#: interstitial is showing; the account already asked in this browser session.
PHONE_KEY = "myaccount_phone"
EMAIL_CHECK_KEY = "email_check_flow"
EMAIL_ASKED_KEY = "email_check_asked"

NOTICES = {
    "password": lazy_gettext("Your password has been changed. You have been logged out "
                             "everywhere else."),
    "phone": lazy_gettext("Your phone number has been changed."),
    "email_sent": lazy_gettext("We have sent a code to your new e-mail address."),
    "email": lazy_gettext("Your e-mail address has been changed and confirmed."),
    "email_cancelled": lazy_gettext("The change of your e-mail address has been cancelled."),
    "app_added": lazy_gettext("Your authenticator app has been added."),
    "app_removed": lazy_gettext("Your authenticator app has been removed."),
    "eid_removed": lazy_gettext("The European eID is no longer linked to your account."),
    "notices_on": lazy_gettext("We will e-mail you when someone logs in with your account."),
    "notices_off": lazy_gettext("We will no longer e-mail you at every login."),
}
LOGIN_FAILED = lazy_gettext(
    "Logging in again did not succeed, so nothing has been changed. Try again from My account."
)


# --- helpers --------------------------------------------------------------------------------


@dataclass
class Me:
    row: sso.SsoSession
    account: Account


def _field(name: str) -> str:
    value = request.form.get(name, "")
    return value[:MAX_FIELD] if isinstance(value, str) else ""


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def _render(template: str, status: int = 200, **context: Any) -> Any:
    context.setdefault("errors", {})
    key = request.args.get("notice", "")
    context.setdefault("notice", NOTICES.get(key) if isinstance(key, str) else None)
    return render_template(f"account/{template}", **context), status


def _to(endpoint: str, **args: Any) -> BaseResponse:
    return redirect(url_for(endpoint, **args), code=303)


def _self_request(level: Level, page: str, *, force: bool = False) -> RpRequest:
    return RpRequest(
        rp_id=SELF_RP, protocol=RpProtocol.SELF, levels=(level,),
        essential=level > Level.BASIS or force, force_authn=force,
        resume_url=url_for(page), ui_locale=current_language(),
    )


def _me() -> Me | None:
    """The account logged in to My account in this browser (the "self" relying party)."""
    s = db.session()
    row = sso.current_sso(s, get_settings(), get_policies().accounts.session)
    if row is None or row.account_id is None or flask_session.get(SELF_SSO_KEY) != row.id:
        s.commit()  # an expired session is ended for good
        return None
    account = s.get(Account, row.account_id, populate_existing=True)
    if account is None or account.status != AccountStatus.ACTIVE.value:
        s.commit()
        return None
    sso.use(row, SELF_RP)
    s.commit()
    return Me(row, account)


def _guard(page: str, level: Level = Level.BASIS, fresh: bool = False) -> Me | BaseResponse:
    """The person, or the response that sends them through the login flow first.

    `page` is the endpoint (a GET page) the flow returns to; `level` is what the page needs;
    `fresh` asks for a login within REAUTH_WINDOW.
    """
    flow_id = request.args.get("flow") if request.method == "GET" else None
    if flow_id is not None:
        try:
            result = flows.finish(flow_id)
        except flows.LoginError as exc:
            if exc.error is None:
                return _to(page)
            return _refused_login()
        flask_session[SELF_SSO_KEY] = result.sso_session_id
        return _to(page)
    me = _me()
    if me is None:
        return flows.start_login(_self_request(Level.BASIS, page))
    if fresh:
        need = me_service.reauth_needed(me.row, level=level)
    else:
        need = Reauth.STEP_UP if me.row.level < int(level) else Reauth.OK
    if need is Reauth.STEP_UP:
        return flows.start_login(_self_request(level, page))
    if need is Reauth.FRESH:
        return flows.start_login(_self_request(Level(me.row.level), page, force=True))
    return me


def _refused_login() -> BaseResponse:
    response = current_app.make_response(_render("error.html", message=LOGIN_FAILED))
    return response


def _error_of(exc: AccountError) -> str:
    return str(exc.message)


# --- overview pages -----------------------------------------------------------------------------


@bp.get("/account/history")
@no_store
def history() -> Any:
    me = _guard("myaccount.history")
    if not isinstance(me, Me):
        return me
    events = list_events(db.session(), me.account.id, limit=100)
    db.session().commit()
    return _render("history.html", events=events)


@bp.get("/account/settings")
@no_store
def settings_page() -> Any:
    me = _guard("myaccount.settings_page")
    if not isinstance(me, Me):
        return me
    return _render("settings.html", account=me.account, has_app=totp.has_totp(me.account),
                   level=Level(me.row.level), eid_links=_eid_links(me.account))


def _eid_links(account: Account) -> list[Any]:
    from gateway.desks.eidas_links import links_of

    return links_of(db.session(), account.id)


@bp.post("/account/notices")
@no_store
def notices() -> Any:
    me = _guard("myaccount.settings_page")
    if not isinstance(me, Me):
        return me
    on = request.form.get("notify_logins") == "on"
    me_service.set_login_notices(db.session(), get_settings(), me.account, on)
    return _to("myaccount.settings_page", notice="notices_on" if on else "notices_off")


# --- password -------------------------------------------------------------------------------


@bp.route("/account/password", methods=["GET", "POST"])
@no_store
def password() -> Any:
    me = _guard("myaccount.password", fresh=True)
    if not isinstance(me, Me):
        return me
    errors: dict[str, Any] = {}
    if request.method == "POST":
        new = _field("new_password")
        if new != _field("new_password_again"):
            errors["new_password_again"] = lazy_gettext("The two new passwords are not the same.")
        else:
            try:
                me_service.change_password(
                    db.session(), get_settings(), _app(), me.account,
                    current_password=_field("current_password"), new_password=new,
                    keep_session=me.row.id,
                )
            except me_service.WrongPassword as exc:
                errors["current_password"] = _error_of(exc)
            except PasswordRejected as exc:
                errors["new_password"] = " ".join(exc.messages)
            else:
                regenerate_session()
                return _to("myaccount.settings_page", notice="password")
    return _render("password.html", status=200, errors=errors, account=me.account,
                   policy=get_policies().accounts.password)


# --- phone ----------------------------------------------------------------------------------


def _pending_phone(account: Account) -> me_service.PendingPhone | None:
    pending = me_service.PendingPhone.from_dict(flask_session.get(PHONE_KEY))
    return pending if pending is not None and pending.live(account) else None


@bp.route("/account/phone", methods=["GET", "POST"])
@no_store
def phone() -> Any:
    me = _guard("myaccount.phone", level=Level.MIDDEN, fresh=True)
    if not isinstance(me, Me):
        return me
    errors: dict[str, Any] = {}
    status = 200
    typed = ""
    if request.method == "POST":
        typed = _field("phone")[:64]
        try:
            pending = me_service.start_phone_change(
                db.session(), _app(), me.account, typed, ip=request.remote_addr,
                language=current_language(),
            )
        except (me_service.ChangeRefused, PhoneRejected, SendingUnavailable) as exc:
            errors["phone"] = str(exc.message)
        except LimitExceeded as exc:
            errors["phone"], status = str(exc.message), 429
        else:
            flask_session[PHONE_KEY] = pending.to_dict()
            return _to("myaccount.phone_code")
    return _render("phone.html", status=status, errors=errors, phone=typed, account=me.account)


@bp.route("/account/phone/code", methods=["GET", "POST"])
@no_store
def phone_code() -> Any:
    # Midden, but no fresh login here: the login was fresh when the change began, and the
    # pending change has a lifetime of its own.
    me = _guard("myaccount.phone", level=Level.MIDDEN)
    if not isinstance(me, Me):
        return me
    pending = _pending_phone(me.account)
    if pending is None:
        flask_session.pop(PHONE_KEY, None)
        return _to("myaccount.phone")
    errors: dict[str, Any] = {}
    if request.method == "POST":
        try:
            me_service.finish_phone_change(
                db.session(), get_settings(), _app(), me.account, pending, _field("code")
            )
        except me_service.ChangeRefused as exc:
            errors["code"] = _error_of(exc)
        else:
            flask_session.pop(PHONE_KEY, None)
            return _to("myaccount.settings_page", notice="phone")
    return _render("phone_code.html", errors=errors, digits=pending.e164[-2:])


# --- e-mail ---------------------------------------------------------------------------------


@bp.route("/account/email", methods=["GET", "POST"])
@no_store
def email() -> Any:
    me = _guard("myaccount.email", fresh=True)
    if not isinstance(me, Me):
        return me
    errors: dict[str, Any] = {}
    typed = ""
    status = 200
    if request.method == "POST":
        typed = _field("email")[:320]
        try:
            me_service.start_email_change(db.session(), get_settings(), _app(), me.account,
                                          typed)
        except InvalidAddress as exc:
            errors["email"] = str(exc.message)
        except AccountError as exc:
            errors["email"] = _error_of(exc)
            status = 429 if exc.code == "too_many" else 503 if exc.code == "unavailable" else 200
        else:
            return _to("myaccount.email_code", notice="email_sent")
    return _render("email.html", status=status, errors=errors, email=typed, account=me.account)


@bp.route("/account/email/code", methods=["GET", "POST"])
@no_store
def email_code() -> Any:
    # The code proves the address; the session only has to be this account's.
    me = _guard("myaccount.email_code")
    if not isinstance(me, Me):
        return me
    if me.account.pending_email is None:
        return _to("myaccount.email")
    errors: dict[str, Any] = {}
    if request.method == "POST":
        if request.form.get("action") == "cancel":
            me_service.cancel_email_change(db.session(), me.account)
            return _to("myaccount.settings_page", notice="email_cancelled")
        try:
            me_service.finish_email_change(db.session(), get_settings(), _app(), me.account,
                                           _field("code"))
        except AccountError as exc:
            errors["code"] = _error_of(exc)
        else:
            return _to("myaccount.settings_page", notice="email")
    return _render("email_code.html", errors=errors, pending=me.account.pending_email)


# --- authenticator app ----------------------------------------------------------------------


@bp.route("/account/app", methods=["GET", "POST"])
@no_store
def authenticator() -> Any:
    me = _guard("myaccount.authenticator", level=Level.MIDDEN, fresh=True)
    if not isinstance(me, Me):
        return me
    if request.method == "POST":
        secret, svg = me_service.begin_app(db.session(), get_settings(), me.account)
        return _render("app_add.html", secret=secret, qr=svg)
    return _render("app.html", has_app=totp.has_totp(me.account))


@bp.post("/account/app/confirm")
@no_store
def authenticator_confirm() -> Any:
    me = _guard("myaccount.authenticator", level=Level.MIDDEN)
    if not isinstance(me, Me):
        return me
    try:
        me_service.confirm_app(db.session(), get_settings(), _app(), me.account, _field("code"))
    except me_service.ChangeRefused as exc:
        return _render("app.html", has_app=totp.has_totp(me.account),
                       errors={"code": _error_of(exc)})
    return _to("myaccount.settings_page", notice="app_added")


@bp.post("/account/app/remove")
@no_store
def authenticator_remove() -> Any:
    me = _guard("myaccount.authenticator", level=Level.MIDDEN, fresh=True)
    if not isinstance(me, Me):
        return me
    me_service.remove_app(db.session(), get_settings(), _app(), me.account)
    return _to("myaccount.settings_page", notice="app_removed")


# --- linked European eIDs -------------------------------------------------------------------


@bp.get("/account/eid")
@no_store
def eid_links() -> Any:
    me = _guard("myaccount.eid_links", level=Level.MIDDEN, fresh=True)
    if not isinstance(me, Me):
        return me
    return _render("eid.html", links=_eid_links(me.account))


@bp.post("/account/eid/remove")
@no_store
def eid_remove() -> Any:
    me = _guard("myaccount.eid_links", level=Level.MIDDEN, fresh=True)
    if not isinstance(me, Me):
        return me
    if not me_service.remove_eid_link(db.session(), get_settings(), _app(), me.account,
                                      _field("link")):
        abort(404)  # not a link of this account (another's, or removed already)
    return _to("myaccount.settings_page", notice="eid_removed")


# --- deactivation ---------------------------------------------------------------------------


@bp.route("/account/deactivate", methods=["GET", "POST"])
@no_store
def deactivate() -> Any:
    me = _guard("myaccount.deactivate", fresh=True)
    if not isinstance(me, Me):
        return me
    errors: dict[str, Any] = {}
    if request.method == "POST":
        try:
            me_service.deactivate(
                db.session(), get_settings(), _app(), me.account,
                password=_field("current_password"),
                confirmed=request.form.get("confirm") == "yes",
            )
        except AccountError as exc:
            errors["confirm" if exc.code == "not_confirmed" else "current_password"] = (
                _error_of(exc)
            )
        else:
            flask_session.pop(SELF_SSO_KEY, None)
            flask_session.pop(sso.SESSION_KEY, None)
            regenerate_session()
            return _render("deactivated.html")
    return _render("deactivate.html", errors=errors)


# --- after login: login notice and the e-mail interstitial ------------------------------------


def after_login(flow: LoginFlow, account: Account | None = None) -> str:
    """Where the browser goes when a login flow is done (the flow's hook, see
    gateway.flows.views): the relying party, or first the e-mail question. Sends the login
    notice the owner asked for. Only a login that authenticated in this flow counts; an SSO
    reuse is not a new login. `account`: the flow's account as the caller read it in this
    request (else it is read here)."""
    resume = flows.resume_location(flow)
    if (
        flow.account_id is None or flow.auth_time is None
        or flow.auth_time < flow.created_at or flow.finished_at is not None
    ):
        return resume
    if account is None or account.id != flow.account_id:
        s = db.session()
        account = s.get(Account, flow.account_id)
        s.commit()
    if account is None:
        return resume
    me_service.send_login_notice(
        _app(), account, flow_id=flow.id, service=flow.rp_id,
        level=Level(flow.level_reached or flow.requested_level).label, at=flow.auth_time,
    )
    # Not in the middle of a re-authentication (a step-up or a forced login for a change).
    if flow.step_up or flow.request.force_authn:
        return resume
    if flask_session.get(EMAIL_ASKED_KEY) == account.id:
        return resume
    if me_service.email_prompt(account) is None:
        return resume
    flask_session[EMAIL_CHECK_KEY] = flow.id
    return url_for("myaccount.email_check")


def _check_context() -> tuple[LoginFlow, Account] | None:
    """The finished login flow and account the interstitial is about, or None."""
    s = db.session()
    flow = flows.get_flow(s, flask_session.get(EMAIL_CHECK_KEY))
    if (
        flow is None or not flows.bound_to_browser(flow.id)
        or flow.flow_state is not FlowState.DONE or flow.finished_at is not None
        or flow.account_id is None
    ):
        s.commit()
        return None
    row = sso.current_sso(s, get_settings(), get_policies().accounts.session)
    account = s.get(Account, flow.account_id, populate_existing=True)
    s.commit()
    if row is None or row.account_id != flow.account_id or account is None:
        return None
    return flow, account


def _continue(flow: LoginFlow, account: Account) -> BaseResponse:
    flask_session.pop(EMAIL_CHECK_KEY, None)
    flask_session[EMAIL_ASKED_KEY] = account.id
    return redirect(flows.resume_location(flow), code=303)


def _allow_resume(flow: LoginFlow) -> None:
    """The form here ends in a redirect to the relying party: allow it as form-action. The
    resume URL of an OIDC or SAML flow is the gateway's own, which then redirects to the RP
    (`return_origin`); browsers apply form-action to that redirect too, so allow both."""
    issuer = urlsplit(get_settings().issuer)
    for target in (flow.request.resume_url, flow.request.return_origin):
        if not target:
            continue
        parts = urlsplit(target)
        if parts.netloc and (parts.scheme, parts.netloc) != (issuer.scheme, issuer.netloc):
            try:
                allow_form_action(target)
            except ValueError:
                log.warning("resume URL of a flow is not an http(s) origin")


@bp.route("/account/email-check", methods=["GET", "POST"])
@no_store
def email_check() -> Any:
    context = _check_context()
    if context is None:
        return _to("login.account")
    flow, account = context
    _allow_resume(flow)
    s = db.session()
    errors: dict[str, Any] = {}
    step = "ask"
    typed = ""
    if request.method == "POST":
        action = request.form.get("action", "")
        if action == "later":
            return _continue(flow, account)
        if action == "confirm":
            me_service.confirm_email(s, get_settings(), account)
            return _continue(flow, account)
        if action == "change":
            step = "change"
        elif action == "send":
            typed = _field("email")[:320]
            try:
                me_service.start_email_change(s, get_settings(), _app(), account, typed)
            except InvalidAddress as exc:
                errors["email"], step = str(exc.message), "change"
            except AccountError as exc:
                errors["email"], step = _error_of(exc), "change"
            else:
                step = "code"
        elif action == "code":
            try:
                me_service.finish_email_change(s, get_settings(), _app(), account,
                                               _field("code"))
            except AccountError as exc:
                errors["code"], step = _error_of(exc), "code"
            else:
                return _continue(flow, account)
    prompt = me_service.email_prompt(account, clock.now())
    if step == "ask" and prompt is me_service.EmailPrompt.ADD:
        step = "change"
    return _render("email_check.html", step=step, errors=errors, email=typed,
                   account=account, pending=account.pending_email)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
