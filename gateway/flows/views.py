"""The citizen's login pages (`login` blueprint): the login flow, activation, logout, and the
gateway's own relying party "/account" (issue 5, items 1, 3 and 4).

Views translate HTTP to calls of `gateway.flows.login` and `gateway.accounts.service` and
back (ARCHITECTURE.md habit 4). Every page: bilingual, a clear title and an error summary,
CSRF on every form (gateway.web.csrf), `no_store`, the WCAG 1.3.5 autocomplete tokens
(username, current-password, one-time-code with inputmode numeric).

- `/login/<flow>`: shows the page of the flow's current state; POSTs go to
  `/login/<flow>/<step>` and answer with a redirect back to it (Post/Redirect/Get), so a
  reload never repeats a step. A flow belongs to the browser session that started it.
- `/login/<flow>/route`: the route chosen on the choose-route page (issue 8); an external
  route's `start` answers it (it sends the browser to its identity provider), and
  `/login/<flow>/again` goes back to the choice while that provider has not answered.
- `/activate`: username, password and the activation code from the letter or SMS.
- `/logout`: ends the SSO session (a POST; GET shows the button).
- `/account`: the "self" relying party: logs in at basis through the same flow every other
  relying party uses and shows the result; `/account/step-up` asks for midden.

The session id changes at every successful authentication step (`regenerate_session`), so a
session id from before the login is worth nothing afterwards (OWASP Session Management).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from typing import Any, cast
from urllib.parse import urlsplit

from flask import Blueprint, abort, g, redirect, render_template, request, url_for
from flask import session as flask_session
from werkzeug.wrappers import Response as BaseResponse

from gateway import clock, db
from gateway.accounts import service as accounts
from gateway.accounts.models import Account, AccountStatus
from gateway.app import get_policies, get_settings
from gateway.flows import login as flows
from gateway.flows import sessions as sso
from gateway.flows.login import FlowState, LoginFlow
from gateway.flows.routes import (
    KIND_EXTERNAL,
    ExternalRoute,
    IdentityRoute,
    RouteInputError,
    SecondFactor,
    get_registry,
    verify_totp,
)
from gateway.flows.types import ErrorCode, RpProtocol, RpRequest
from gateway.i18n import (
    LANGUAGE_COOKIE,
    LANGUAGE_PARAM,
    LANGUAGES,
    current_language,
    lazy_gettext,
)
from gateway.levels import Level
from gateway.sms.codes import VerifyOutcome
from gateway.sms.phone import last_digits
from gateway.sms.purposes import Purpose
from gateway.sms.service import LimitExceeded, PhoneRejected, SendingUnavailable, get_sms_service
from gateway.web import allow_form_action, no_store, regenerate_session

log = logging.getLogger(__name__)

bp = Blueprint("login", __name__)

#: The gateway's own relying party id and where its login resumes.
SELF_RP = "self"
#: Session key: the SSO session the /account page was last logged in through.
SELF_SSO_KEY = "self_sso"
#: Longest form value looked at; longer is cut (no field of these forms is longer).
MAX_FIELD = 1024

CODE_MESSAGES = {
    VerifyOutcome.WRONG: lazy_gettext("This code is not correct. Check the code and try again."),
    VerifyOutcome.MALFORMED: lazy_gettext("Enter the 6 digits of the code."),
}
CODE_GONE = lazy_gettext(
    "This code can no longer be used. Ask for a new code with \"Send a new code\"."
)
TOTP_WRONG = lazy_gettext(
    "This code is not correct. Type the 6 digits your authenticator app shows now. After "
    "several wrong codes your account is blocked for a while."
)
ACCOUNT_UNUSABLE = lazy_gettext(
    "You cannot log in with this account at the moment. Start again from the service."
)
FACTOR_LABELS = {
    SecondFactor.SMS.value: lazy_gettext("Code by text message (SMS)"),
    SecondFactor.VOICE.value: lazy_gettext("Code by voice call"),
    SecondFactor.TOTP.value: lazy_gettext("Code from my authenticator app"),
}
NOTICES = {
    "unblocked": lazy_gettext("Your account is unblocked. You can log in again."),
    "sent": lazy_gettext("We have sent you a code."),
}
ROUTE_UNAVAILABLE = lazy_gettext(
    "This way of logging in is not available at the moment. Try again in a few minutes or "
    "choose another way."
)


# --- helpers ------------------------------------------------------------------------------


@bp.context_processor
def _template_helpers() -> dict[str, Any]:
    return {"factor_labels": FACTOR_LABELS, "resume_url": flows.resume_location}


def _field(name: str) -> str:
    value = request.form.get(name, "")
    return value[:MAX_FIELD] if isinstance(value, str) else ""


def _ip() -> str | None:
    return request.remote_addr


def _flow_url(flow: LoginFlow, **args: Any) -> str:
    return url_for("login.flow", flow_id=flow.id, **args)


def _to_flow(flow: LoginFlow, **args: Any) -> BaseResponse:
    return redirect(_flow_url(flow, **args), code=303)


def _onward(flow: LoginFlow, account: Account | None = None) -> BaseResponse:
    """After a step that may have finished the flow: a finished flow goes straight on to
    where its GET would send it (the relying party, or first the e-mail question), saving
    the browser one round trip, which costs most abroad; any other state to its page.
    `account`: the flow's account as read in this request, if it was."""
    if flow.flow_state is FlowState.DONE:
        from gateway.accounts.views import after_login

        return redirect(after_login(flow, account), code=303)
    return _to_flow(flow)


def _allow_resume(flow: LoginFlow) -> None:
    """A form on this page may end in a redirect to the relying party (the resume URL, or
    where the protocol sends the browser after it): when that is another origin, the page's
    form-action must allow it, because browsers apply form-action to the redirects after a
    form submission (gateway.web.headers)."""
    issuer = urlsplit(get_settings().issuer)
    request_ = flow.request
    for target in (request_.resume_url, request_.return_origin):
        if not target:
            continue
        parts = urlsplit(target)
        if parts.netloc and (parts.scheme, parts.netloc) != (issuer.scheme, issuer.netloc):
            try:
                allow_form_action(target)
            except ValueError:
                log.warning("a relying party's return address is not an http(s) origin")


def _page(template: str, flow: LoginFlow | None, status: int = 200, **context: Any) -> Any:
    if flow is not None:
        _allow_resume(flow)
    context.setdefault("errors", {})
    return render_template(f"login/{template}", flow=flow, **context), status


def _unknown_flow() -> Any:
    return _page("unknown.html", None, 404)


def _load(flow_id: str) -> LoginFlow | None:
    """The flow, if it exists and belongs to this browser; an expired one moves to expired."""
    s = db.session()
    flow = flows.get_flow(s, flow_id)
    if flow is None or not flows.bound_to_browser(flow.id):
        return None
    _use_rp_language(flow)
    if flow.flow_state not in flows.FINAL_STATES and flows.is_expired(flow):
        # IllegalTransition: another request moved it meanwhile.
        with contextlib.suppress(flows.IllegalTransition):
            flows.transition(s, flow, FlowState.EXPIRED, error=ErrorCode.EXPIRED.value)
        s.commit()
        flow = flows.get_flow(s, flow_id)
    return flow


def _use_rp_language(flow: LoginFlow) -> None:
    """The relying party's ui_locale (OIDC ui_locales, for example) picks the language,
    unless the person chose one here (?lang= or the remembered choice)."""
    wanted = flow.request.ui_locale
    if wanted not in LANGUAGES or request.args.get(LANGUAGE_PARAM) in LANGUAGES:
        return
    if request.cookies.get(LANGUAGE_COOKIE) in LANGUAGES or "gateway_language" in g:
        return
    g.gateway_language = wanted


def _account(flow: LoginFlow) -> Account | None:
    """The flow's account while it may still log in (not blocked, suspended, deactivated or
    expired)."""
    if flow.account_id is None:
        return None
    account = accounts.read_account(db.session(), flow.account_id)
    if account is None or account.status != AccountStatus.ACTIVE.value:
        return None
    if account.suspended_at is not None:
        return None
    if account.blocked_until is not None and account.blocked_until > clock.now():
        return None
    return account


def _stale(flow: LoginFlow, *states: FlowState) -> bool:
    """A POST for a step the flow is no longer at (back button, second tab)."""
    return flow.flow_state not in states


def _send_code(
    flow: LoginFlow, account: Account, *, previous: datetime | None, marked: bool = False
) -> str | None:
    """Send the login code by SMS or voice; None when sent, else the message to show.

    Runs in the caller's open transaction: the flow's `code_sent_at` (set here, or already
    by the caller's move when `marked`), the code and its message row, and whatever the
    caller changed before, are committed together by the SMS service before any provider is
    called (no second transaction of ours holds the database meanwhile: on SQLite every
    transaction takes the write lock when it begins). When nothing goes out, `code_sent_at`
    goes back to `previous` and the caller's changes are committed all the same."""
    s = db.session()
    if not marked:
        flows.update_flow(s, flow, code_sent_at=clock.now())
    try:
        get_sms_service().send_code(
            purpose=Purpose.LOGIN, flow_id=flow.id, phone=account.phone_e164 or "",
            language=current_language(), account_id=account.id, ip=_ip(), session=s,
        )
    except (PhoneRejected, LimitExceeded, SendingUnavailable) as exc:
        flows.update_flow(s, flow, code_sent_at=previous)
        s.commit()
        return str(exc.message)
    return None


def _notice() -> Any:
    key = request.args.get("notice", "")
    return NOTICES.get(key) if isinstance(key, str) else None


def _after_login() -> None:
    """A new session id whenever someone has just proven something (fixation)."""
    regenerate_session()


# --- the flow -----------------------------------------------------------------------------


@bp.get("/login/<flow_id>")
@no_store
def flow(flow_id: str) -> Any:
    current = _load(flow_id)
    if current is None:
        return _unknown_flow()
    s = db.session()
    state = current.flow_state
    if state is FlowState.STARTED:
        with contextlib.suppress(flows.FlowExpired):
            flows.begin(s, get_settings(), get_policies(), current)
        s.commit()
        state = current.flow_state  # and show that state's page at once
    if state is FlowState.DONE:
        # Login notice and the e-mail interstitial (issue 5 items 7-8) before the RP.
        return _onward(current)
    if state is FlowState.FAILED:
        if current.error == ErrorCode.LEVEL_UNAVAILABLE.value and not current.request.passive:
            route = get_registry().get(current.route)
            external = route if route is not None and route.kind == KIND_EXTERNAL else None
            return _page("unavailable.html", current, level=current.level, external=external)
        return redirect(flows.resume_location(current), code=303)
    if state is FlowState.EXPIRED:
        return _page("expired.html", current)
    if state is FlowState.CHOOSE_ROUTE:
        return _choose_page(current)
    if state is FlowState.EXTERNAL:
        route = get_registry().get(current.route)
        return _page("external.html", current, route=route)
    if state is FlowState.PASSWORD:
        return _page(
            "password.html", current, username=(current.request.login_hint or "")[:64],
            notice=_notice(),
        )
    account = _account(current)
    if account is None:
        flows.fail(s, current, ErrorCode.FAILED)
        s.commit()
        return _page("unusable.html", current, 200)
    if state is FlowState.CHOOSE_FACTOR:
        factors = get_registry().account_route(current.route).factors(s, get_settings(), account)
        return _page("choose_factor.html", current, factors=factors)
    return _factor_page(current, account)


def _choose_page(
    current: LoginFlow, route_errors: dict[str, Any] | None = None, status: int = 200
) -> Any:
    """The routes this flow offers, one form each; a route's `choice_template` (its own
    fields, such as a country) goes inside its form, and its error next to them."""
    routes = get_registry().routes_for(current.request, current.level)
    route_errors = route_errors or {}
    errors = {f"route-{name}": message for name, message in route_errors.items()}
    return _page("choose_route.html", current, status, routes=routes, errors=errors,
                 route_errors=route_errors)


def _factor_page(
    current: LoginFlow, account: Account, errors: dict[str, str] | None = None, status: int = 200
) -> Any:
    factors = get_registry().account_route(current.route).factors(
        db.session(), get_settings(), account
    )
    factor = SecondFactor(current.factor or SecondFactor.SMS)
    template = "totp.html" if factor is SecondFactor.TOTP else "code.html"
    return _page(
        template, current, status, errors=errors or {}, factor=factor, notice=_notice(),
        phone=last_digits(account.phone_e164), sent=current.code_sent_at is not None,
        other_factors=[f for f in factors if f is not factor],
    )


@bp.post("/login/<flow_id>/route")
@no_store
def choose_route(flow_id: str) -> Any:
    current = _load(flow_id)
    if current is None:
        return _unknown_flow()
    if _stale(current, FlowState.CHOOSE_ROUTE):
        return _to_flow(current)
    s = db.session()
    try:
        route = flows.choose_route(s, current, _field("route"))
    except flows.IllegalTransition:
        abort(400)
    except flows.FlowExpired:
        s.commit()
        return _to_flow(current)
    s.commit()
    if route.kind == KIND_EXTERNAL:
        return _start_external(current, route)
    return _to_flow(current)


def _start_external(current: LoginFlow, route: IdentityRoute) -> Any:
    """The flow is `external` (committed): the route sends the browser on. When it refuses
    the person's choice (RouteInputError) or fails, whatever it wrote is rolled back and the
    flow returns to the choose-route page with a message; it stays usable."""
    s = db.session()
    form = {
        k: v[:MAX_FIELD] for k, v in request.form.items()
        if isinstance(v, str) and k != "csrf_token"
    }
    try:
        response = cast(ExternalRoute, route).start(current, form)
    except RouteInputError as exc:
        message: Any = exc.message
        status = 400
    except Exception:  # a route's failure must not end the flow; the person may choose again
        log.exception("identity route %s could not start", route.name)
        message, status = ROUTE_UNAVAILABLE, 503
    else:
        s.commit()
        return response
    s.rollback()
    again = flows.get_flow(s, current.id)
    if again is None:
        return _unknown_flow()
    try:
        flows.choose_again(s, again)
    except (flows.IllegalTransition, flows.FlowExpired):
        s.commit()
        return _to_flow(again)
    s.commit()
    return _choose_page(again, {route.name: message}, status)


@bp.post("/login/<flow_id>/again")
@no_store
def choose_again(flow_id: str) -> Any:
    """"Choose another way" from the page shown while an external route is busy."""
    current = _load(flow_id)
    if current is None:
        return _unknown_flow()
    if not _stale(current, FlowState.EXTERNAL):
        s = db.session()
        with contextlib.suppress(flows.IllegalTransition, flows.FlowExpired):
            flows.choose_again(s, current)
        s.commit()
    return _to_flow(current)


@bp.post("/login/<flow_id>/password")
@no_store
def password(flow_id: str) -> Any:
    current = _load(flow_id)
    if current is None:
        return _unknown_flow()
    if _stale(current, FlowState.PASSWORD):
        return _to_flow(current)
    username = _field("username")
    s = db.session()
    settings, policies = get_settings(), get_policies()
    try:
        # A success stays open: it is committed with the flow's move (and the code).
        account = accounts.check_password(
            s, settings, policies, username=username, password=_field("password"), ip=_ip(),
            commit=False,
        )
    except accounts.AccountBlocked as exc:
        return _page("blocked.html", current, username=username[:64], until=exc.until,
                     message=exc.message)
    except accounts.AccountSuspended as exc:
        return _page("suspended.html", current, message=exc.message)
    except accounts.TooManyAttempts as exc:
        page = _page("password.html", current, 429, username=username[:64],
                     errors={"username": exc.message})
        return (*page, {"Retry-After": str(exc.retry_after)})
    except accounts.TryLater as exc:
        return _page("password.html", current, 503, username=username[:64],
                     errors={"username": exc.message})
    except accounts.LoginFailed as exc:
        return _page("password.html", current, username=username[:64],
                     errors={"username": exc.message})
    previous = current.code_sent_at
    try:
        # A code to send: the move marks it sent, in the transaction that issues it.
        send = flows.after_first_factor(
            s, settings, policies, current, account, sending_at=clock.now()
        )
    except flows.FlowExpired:
        s.commit()
        return _to_flow(current)
    except flows.IllegalTransition:
        # Another request for this flow (a second click on "log in") moved it on while this
        # one checked the password: that one carries the login; this one writes nothing.
        s.rollback()
        return _to_flow(current)
    _after_login()
    if send is not None:
        problem = _send_code(current, account, previous=previous, marked=True)
        if problem is not None:
            return _factor_page(current, account, {"code": problem})
    else:
        s.commit()
    return _onward(current, account)


@bp.post("/login/<flow_id>/factor")
@no_store
def choose_factor(flow_id: str) -> Any:
    current = _load(flow_id)
    if current is None:
        return _unknown_flow()
    if _stale(current, FlowState.CHOOSE_FACTOR, FlowState.SECOND_FACTOR):
        return _to_flow(current)
    account = _account(current)
    if account is None:
        return _to_flow(current)
    s = db.session()
    try:
        chosen = flows.choose_factor(s, get_settings(), current, account, _field("factor"))
    except flows.IllegalTransition:
        abort(400)
    except flows.FlowExpired:
        s.commit()
        return _to_flow(current)
    if chosen is not SecondFactor.TOTP:
        problem = _send_code(current, account, previous=None)
        if problem is not None:
            return _factor_page(current, account, {"code": problem})
    else:
        s.commit()
    return _to_flow(current)


@bp.post("/login/<flow_id>/code")
@no_store
def code(flow_id: str) -> Any:
    current = _load(flow_id)
    if current is None:
        return _unknown_flow()
    if _stale(current, FlowState.SECOND_FACTOR):
        return _to_flow(current)
    account = _account(current)
    if account is None:
        return _to_flow(current)
    factor = SecondFactor(current.factor or SecondFactor.SMS)
    s = db.session()
    settings, policies = get_settings(), get_policies()
    if request.form.get("action") == "send" and factor is not SecondFactor.TOTP:
        problem = _send_code(current, account, previous=current.code_sent_at)
        if problem is not None:
            return _factor_page(current, account, {"code": problem})
        return _to_flow(current, notice="sent")

    typed = _field("code")
    if factor is SecondFactor.TOTP:
        if not verify_totp(s, settings, policies, account, typed):
            return _factor_page(current, account, {"code": str(TOTP_WRONG)})
    else:
        # In this transaction: the attempt is committed whatever the outcome, and a right
        # code is spent in the same commit as the login it unlocks.
        outcome = get_sms_service().verify_code(
            purpose=Purpose.LOGIN, flow_id=current.id, code=typed, session=s
        )
        if outcome is not VerifyOutcome.OK:
            s.commit()
            message = CODE_MESSAGES.get(outcome, CODE_GONE)
            return _factor_page(current, account, {"code": str(message)})
    try:
        flows.second_factor_done(s, settings, policies, current, account)
    except flows.FlowExpired:
        s.commit()
        return _to_flow(current)
    s.commit()
    _after_login()
    return _onward(current, account)


@bp.post("/login/<flow_id>/cancel")
@no_store
def cancel(flow_id: str) -> Any:
    current = _load(flow_id)
    if current is None:
        return _unknown_flow()
    if current.flow_state not in flows.FINAL_STATES:
        s = db.session()
        with contextlib.suppress(flows.IllegalTransition, flows.FlowExpired):
            flows.fail(s, current, ErrorCode.CANCELLED)
        s.commit()
    return _to_flow(current)


@bp.post("/login/<flow_id>/unblock")
@no_store
def unblock(flow_id: str) -> Any:
    """Blocked page -> send an unblock code (only when username and password are right)."""
    current = _load(flow_id)
    if current is None:
        return _unknown_flow()
    username = _field("username")
    try:
        accounts.start_unblock(
            db.session(), get_settings(), _app(), username=username,
            password=_field("password"), ip=_ip(),
        )
    except (accounts.TooManyAttempts, accounts.TryLater) as exc:
        return _page("blocked.html", current, 429, username=username[:64],
                     errors={"password": exc.message}, message=None, until=None)
    return _page("unblock.html", current, username=username[:64],
                 notice=accounts.UNBLOCK_REQUESTED)


@bp.post("/login/<flow_id>/unblock/code")
@no_store
def unblock_code(flow_id: str) -> Any:
    current = _load(flow_id)
    if current is None:
        return _unknown_flow()
    username = _field("username")
    try:
        accounts.finish_unblock(
            db.session(), get_settings(), _app(), username=username,
            code=_field("unblock_code"), ip=_ip(),
        )
    except accounts.AccountError as exc:
        status = 429 if isinstance(exc, accounts.TooManyAttempts) else 200
        return _page("unblock.html", current, status, username=username[:64],
                     errors={"unblock_code": exc.message}, notice=None)
    return _to_flow(current, notice="unblocked")


def _app() -> Any:
    from flask import current_app

    return current_app._get_current_object()  # type: ignore[attr-defined]


# --- activation ---------------------------------------------------------------------------


@bp.route("/activate", methods=["GET", "POST"])
@no_store
def activate() -> Any:
    errors: dict[str, Any] = {}
    username = ""
    status = 200
    if request.method == "POST":
        username = _field("username")
        try:
            accounts.activate(
                db.session(), get_settings(), get_policies(), username=username,
                password=_field("password"), activation_code=_field("activation_code"),
                ip=_ip(),
            )
        except accounts.CodeRefused as exc:
            errors["activation_code"] = exc.message
        except (accounts.LoginFailed, accounts.AccountBlocked) as exc:
            errors["username"] = exc.message
        except accounts.TooManyAttempts as exc:
            errors["username"], status = exc.message, 429
        except accounts.TryLater as exc:
            errors["username"], status = exc.message, 503
        else:
            return _page("activated.html", None)
    return _page("activate.html", None, status, username=username[:64], errors=errors)


# --- logout -------------------------------------------------------------------------------


@bp.route("/logout", methods=["GET", "POST"])
@no_store
def logout() -> Any:
    if request.method == "GET":
        return _page("logout.html", None)
    s = db.session()
    ended = sso.logout(s, get_settings())
    s.commit()
    flask_session.pop(SELF_SSO_KEY, None)
    if ended is not None:
        regenerate_session()
    return _page("logged_out.html", None)


# --- the "self" relying party ----------------------------------------------------------------


def _self_request(level: Level, essential: bool = False) -> RpRequest:
    return RpRequest(
        rp_id=SELF_RP, protocol=RpProtocol.SELF, levels=(level,), essential=essential,
        resume_url=url_for("login.account"), ui_locale=current_language(),
    )


@bp.get("/account")
@no_store
def account() -> Any:
    flow_id = request.args.get("flow")
    if flow_id is not None:
        try:
            result = flows.finish(flow_id)
        except flows.LoginError as exc:
            if exc.error is None:
                return redirect(url_for("login.account"), code=303)
            return _page("account_error.html", None, code=exc.error.code.value)
        flask_session[SELF_SSO_KEY] = result.sso_session_id
        return redirect(url_for("login.account"), code=303)

    s = db.session()
    row = sso.current_sso(s, get_settings(), get_policies().accounts.session)
    if row is None or flask_session.get(SELF_SSO_KEY) != row.id:
        s.commit()  # an expired session is ended for good
        return flows.start_login(_self_request(Level.BASIS))
    sso.use(row, SELF_RP)
    s.commit()
    person = s.get(Account, row.account_id) if row.account_id else None
    return _page(
        "account.html", None, username=person.username if person else "",
        level=Level(row.level), amr=row.amr_values, can_step_up=row.level < Level.MIDDEN,
    )


@bp.get("/account/step-up")
@no_store
def step_up() -> Any:
    return flows.start_login(_self_request(Level.MIDDEN, essential=True))


def init_app(app: Any) -> None:
    app.register_blueprint(bp)
