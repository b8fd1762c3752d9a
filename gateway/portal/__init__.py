"""A demo relying party modelled on the MijnOverheid portal (issue 9, item 1).

A separate small Flask app, `create_portal(settings, portal_url=...)`, that logs a citizen in
through the gateway over OpenID Connect (gateway.portal.oidc_client) or SAML 2.0
(gateway.portal.saml_sp), at basis or midden, shows what it received, and logs out again with
the protocol's single logout. Every page explains the protocol step that just happened: it is
a teaching aid for relying-party developers, so the code is written to be copied.

It reuses the gateway's web habits: CSRF tokens on every form (gateway.web.csrf), the same
security headers and CSP without inline script or style (gateway.web.headers), Dutch and
English (gateway.i18n). What it learns about a person stays in this process's memory (keyed by
a random id in its cookie) and is forgotten at logout or after `RESULT_TTL`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from gateway.i18n import current_language
from gateway.levels import Level
from gateway.portal.keys import DEFAULT_PORTAL_URL, PortalAddresses, check_base_url, ensure_keys
from gateway.portal.oidc_client import OidcClient, OidcError, PendingLogin
from gateway.portal.saml_sp import SamlError, SamlServiceProvider, sp_metadata
from gateway.settings import Settings
from gateway.web.csrf import csrf_exempt
from gateway.web.errors import init_companion_app

__all__ = ["create_portal"]

SESSION_COOKIE: Final = "portal_session"
#: What the portal knows about a logged-in person is forgotten after this long.
RESULT_TTL: Final = timedelta(minutes=15)
MAX_RESULTS: Final = 1000
#: The levels the demo offers (the INTERFACE.md labels).
LEVELS: Final = {
    "basis": Level.BASIS, "midden": Level.MIDDEN, "substantieel": Level.SUBSTANTIEEL,
}
PORTAL_KEY: Final = "gateway_portal"

bp = Blueprint("portal", __name__)


class ResultStore:
    """Login results by random id, in memory, bounded in number and age."""

    def __init__(self, ttl: timedelta = RESULT_TTL, limit: int = MAX_RESULTS) -> None:
        self._ttl = ttl.total_seconds()
        self._limit = limit
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def put(self, result: dict[str, Any]) -> str:
        key = secrets.token_urlsafe(32)
        with self._lock:
            self._prune()
            self._items[key] = (time.monotonic(), result)
            while len(self._items) > self._limit:
                self._items.popitem(last=False)
        return key

    def get(self, key: object) -> dict[str, Any] | None:
        if not isinstance(key, str):
            return None
        with self._lock:
            self._prune()
            item = self._items.get(key)
            return item[1] if item else None

    def pop(self, key: object) -> dict[str, Any] | None:
        if not isinstance(key, str):
            return None
        with self._lock:
            item = self._items.pop(key, None)
            return item[1] if item else None

    def _prune(self) -> None:
        cutoff = time.monotonic() - self._ttl
        while self._items:
            key, (stamp, _) = next(iter(self._items.items()))
            if stamp >= cutoff:
                break
            del self._items[key]


class Portal:
    def __init__(self, addresses: PortalAddresses, oidc: OidcClient,
                 saml: SamlServiceProvider, metadata: bytes) -> None:
        self.addresses = addresses
        self.oidc = oidc
        self.saml = saml
        self.metadata = metadata
        self.results = ResultStore()


def get_portal() -> Portal:
    portal: Portal = current_app.extensions[PORTAL_KEY]
    return portal


def create_portal(settings: Settings, portal_url: str = DEFAULT_PORTAL_URL,
                  gateway_url: str | None = None) -> Flask:
    """The portal app. `gateway_url` defaults to the gateway's issuer."""
    from gateway import i18n
    from gateway.web import allow_form_action, csrf, headers, language_url

    addresses = PortalAddresses(
        portal_url=check_base_url(portal_url, "portal URL"),
        gateway_url=check_base_url(gateway_url or settings.issuer, "gateway URL"),
    )
    keys = ensure_keys(settings)
    app = Flask(
        "gateway.portal", root_path=str(Path(__file__).resolve().parent),
        instance_path=str(settings.instance_dir / "portal"),
    )
    app.config.update(
        SECRET_KEY=settings.derive_key("demo-portal-session"),
        # Not the gateway's cookie name: both may live on the same host (cookies ignore ports).
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        # Lax: the SAML Response arrives as a POST from the gateway, same-site in the demo.
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=addresses.portal_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=RESULT_TTL,
    )
    app.extensions[PORTAL_KEY] = Portal(
        addresses, OidcClient(addresses, keys.oidc_key), SamlServiceProvider(addresses, keys),
        sp_metadata(addresses, keys),
    )
    i18n.init_app(app, settings)
    csrf.init_app(app)
    headers.init_app(app, settings.with_overrides(issuer=addresses.portal_url))
    app.jinja_env.globals["language_url"] = language_url
    app.jinja_env.globals["gateway_url"] = addresses.gateway_url
    app.jinja_env.globals["allow_form_action"] = allow_form_action
    app.register_blueprint(bp)
    init_companion_app(app, "portal/error.html", "portal")
    return app


# --- pages ----------------------------------------------------------------------------------


def _level(name: str) -> Level:
    level = LEVELS.get(name)
    if level is None:
        abort(404)
    return level


def _current() -> dict[str, Any] | None:
    return get_portal().results.get(session.get("result"))


def _login_done(result: dict[str, Any]) -> BaseResponse:
    portal = get_portal()
    portal.results.pop(session.get("result"))
    # A new session at every login (session fixation): the old cookie's content goes.
    session.clear()
    session["result"] = portal.results.put(result)
    return redirect(url_for("portal.result"), code=303)


def _failed(protocol: str, reason: str, status: int = 400) -> Response:
    body = render_template("portal/failed.html", protocol=protocol, reason=reason)
    return Response(body, status=status, mimetype="text/html")


@bp.get("/")
def home() -> str:
    from gateway.web import allow_form_action

    # The login forms post here and are redirected to the gateway: CSP form-action must
    # allow that origin too (browsers apply it to redirects after a form submission).
    allow_form_action(get_portal().addresses.gateway_url)
    return render_template("portal/home.html", result=_current())


@bp.post("/login/oidc/<name>")
def login_oidc(name: str) -> BaseResponse:
    level = _level(name)
    try:
        url, pending = get_portal().oidc.start(level, current_language())
    except OidcError as exc:
        return _failed("oidc", str(exc), 502)
    session["pending_oidc"] = pending.to_dict()
    return redirect(url, code=303)


@bp.get("/oidc/callback")
def oidc_callback() -> BaseResponse:
    pending = PendingLogin.from_dict(session.pop("pending_oidc", None))
    if pending is None:
        return _failed("oidc", "no login was started in this browser")
    args = {k: v for k, v in request.args.items() if len(v) <= 4096}
    try:
        login = get_portal().oidc.finish(args, pending)
    except OidcError as exc:
        return _failed("oidc", str(exc))
    claims = login.claims
    return _login_done({
        "protocol": "oidc",
        "level": Level.from_context_class(str(claims.get("acr"))),
        "subject": claims.get("sub"),
        "bsn": claims.get("bsn"),
        "amr": claims.get("amr"),
        "claims": claims,
        "header": login.header,
        "userinfo": login.userinfo,
        "token_response": login.token_response,
        "id_token": login.id_token,
    })


@bp.post("/login/saml/<name>")
def login_saml(name: str) -> BaseResponse:
    level = _level(name)
    try:
        url, request_id = get_portal().saml.start(level, relay_state="/result")
    except SamlError as exc:
        return _failed("saml", str(exc), 502)
    session["pending_saml"] = {"id": request_id, "level": int(level)}
    return redirect(url, code=303)


@bp.post("/saml/acs")
@csrf_exempt  # authenticated by the signed Response and InResponseTo bound to this session
def saml_acs() -> BaseResponse:
    pending = session.pop("pending_saml", None)
    if not isinstance(pending, dict) or not isinstance(pending.get("id"), str):
        # Unsolicited responses are refused: the InResponseTo check needs our request.
        return _failed("saml", "no login was started in this browser")
    post = {k: request.form[k] for k in ("SAMLResponse", "RelayState") if k in request.form}
    try:
        found = get_portal().saml.finish(post, pending["id"], int(pending.get("level", 0)))
    except SamlError as exc:
        return _failed("saml", str(exc))
    # The Level last: `found` carries the level as a plain int, which the page cannot label.
    return _login_done({**found, "protocol": "saml", "subject": found["name_id"],
                        "level": Level(found["level"])})


@bp.get("/result")
def result() -> BaseResponse | str:
    current = _current()
    if current is None:
        return redirect(url_for("portal.home"), code=303)
    from gateway.web import allow_form_action

    allow_form_action(get_portal().addresses.gateway_url)  # the logout form
    return render_template("portal/result.html", result=current)


@bp.post("/logout")
def logout() -> BaseResponse:
    portal = get_portal()
    current = portal.results.pop(session.get("result"))
    # The portal's own session ends first, whatever the gateway answers (fail closed).
    session.clear()
    if current is None:
        return redirect(url_for("portal.home"), code=303)
    try:
        if current["protocol"] == "oidc":
            state = secrets.token_urlsafe(32)
            session["pending_logout"] = {"protocol": "oidc", "state": state}
            return redirect(portal.oidc.logout_url(current["id_token"], state), code=303)
        url, request_id = portal.saml.logout(current, relay_state="/")
        session["pending_logout"] = {"protocol": "saml", "id": request_id}
        return redirect(url, code=303)
    except (OidcError, SamlError) as exc:
        return _failed(current["protocol"], str(exc), 502)


@bp.get("/oidc/logged-out")
def oidc_logged_out() -> BaseResponse | str:
    import hmac

    pending = session.pop("pending_logout", None)
    state = pending.get("state") if isinstance(pending, dict) else None
    if not isinstance(state, str) or not hmac.compare_digest(
        request.args.get("state", ""), state
    ):
        return _failed("oidc", "this logout was not started in this browser")
    return render_template("portal/logged_out.html", protocol="oidc")


@bp.get("/saml/sls")
def saml_sls() -> BaseResponse | str:
    pending = session.pop("pending_logout", None)
    request_id = pending.get("id") if isinstance(pending, dict) else None
    if not isinstance(request_id, str):
        return _failed("saml", "this logout was not started in this browser")
    get = {k: request.args[k] for k in ("SAMLResponse", "RelayState", "SigAlg", "Signature")
           if k in request.args}
    try:
        get_portal().saml.finish_logout(
            get, request.query_string.decode("ascii", "replace"), request_id
        )
    except SamlError as exc:
        return _failed("saml", str(exc))
    return render_template("portal/logged_out.html", protocol="saml")


@bp.get("/saml/metadata")
def saml_metadata() -> Response:
    return Response(get_portal().metadata, mimetype="application/samlmetadata+xml")

