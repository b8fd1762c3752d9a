"""The OIDC endpoints (OpenID Connect Discovery 1.0, Core 1.0, RP-Initiated Logout 1.0).

- `/.well-known/openid-configuration`, `/oidc/jwks`: what relying parties configure from;
- `/oidc/authorize` (GET and POST): checks the request (`provider`), hands an `RpRequest` to
  the login flow, and on `/oidc/authorize/resume` turns the flow's `AuthnResult` into an
  authorization code, answered by redirect (`query`) or by an auto-submitting form
  (`form_post`, OAuth 2.0 Form Post Response Mode), always with `iss` (RFC 9207). A browser
  whose SSO session vouches for the request without asking anything is answered at once,
  without a flow or a redirect hop (`gateway.flows.login.reuse_at_once`; issue 6,
  "Performance"), with the same checks and the same code as after the flow;
- `/oidc/token`, `/oidc/userinfo` (GET and POST, RFC 6750 bearer tokens);
- `/oidc/logout`: RP-initiated logout with registered post-logout redirect URIs.

The endpoints relying parties' servers call (token, userinfo) and the ones their pages post
to (authorize, logout) are exempt from the gateway's CSRF tokens: they are authenticated by
the protocol (client authentication, bearer tokens, PKCE and state). Logout without a valid
id_token_hint for the current session asks the person to confirm, on a CSRF-protected form.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from authlib.oauth2.rfc6749 import OAuth2Error
from flask import Blueprint, Flask, Response, jsonify, redirect, render_template, request, url_for
from flask import session as flask_session
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.wrappers import Response as BaseResponse

from gateway.app import get_settings
from gateway.db import session as db_session
from gateway.flows.types import AuthnError, AuthnResult, ErrorCode, RpProtocol, RpRequest
from gateway.i18n import lazy_gettext
from gateway.idp.oidc import clients as registry
from gateway.idp.oidc import provider, release, subjects, tokens
from gateway.idp.oidc.clients import ENCRYPTION_ALG, ENCRYPTION_ENC, SIGNING_ALGS, Client
from gateway.keys import get_keys
from gateway.levels import Level
from gateway.settings import Settings
from gateway.store import StoreUnavailable
from gateway.web import allow_form_action, csrf_exempt, no_store
from gateway.web.logs import request_id

log = logging.getLogger(__name__)

bp = Blueprint(
    "oidc", __name__, template_folder="templates", static_folder="static",
    static_url_path="/oidc/static",
)

SERVER_KEY = "gateway.oidc.server"
LOGOUT_KEY = "oidc_logout"
#: OIDC Core 3.1.2.6 names for the login flow's neutral error codes (gateway.flows.types).
FLOW_ERRORS = {
    ErrorCode.LOGIN_REQUIRED: "login_required",
    ErrorCode.LEVEL_UNAVAILABLE: "unmet_authentication_requirements",
    ErrorCode.CANCELLED: "access_denied",
    ErrorCode.FAILED: "access_denied",
    ErrorCode.EXPIRED: "access_denied",
}
#: Seconds relying parties may cache discovery and the JWK Set. Short for the JWK Set: a new
#: key is published two days before it signs (gateway.keys), but `keys rotate --now` makes
#: one sign at once, and clients refetch on an unknown kid anyway.
DISCOVERY_MAX_AGE = 3600
JWKS_MAX_AGE = 300

_BAD_REQUEST = (
    lazy_gettext("This login request is not valid"),
    lazy_gettext(
        "The website that sent you here made an error in its request, so you cannot log in "
        "this way. Go back to that website and try again; if it keeps happening, tell them."
    ),
)


# --- the login flow's entry points (the adapter tests may replace) -------------------------


def start_login(rp_request: RpRequest) -> BaseResponse:
    from gateway.flows import login

    return login.start_login(rp_request)


def reuse_sso(rp_request: RpRequest) -> AuthnResult | None:
    """The login's result at once when this browser's SSO session vouches for the request
    without interaction (`gateway.flows.login.reuse_at_once`); None: start a flow."""
    from gateway.app import get_policies
    from gateway.flows import login

    return login.reuse_at_once(db_session(), get_settings(), get_policies(), rp_request)


def finish_login(flow_id: str) -> tuple[RpRequest, AuthnResult | AuthnError] | None:
    """The flow's request and its result or error; None when there is nobody to answer
    (unknown flow, another browser's, or its result already taken)."""
    from gateway.flows import login

    flow = login.get_flow(db_session(), flow_id)
    if flow is None:
        return None
    rp_request = flow.request
    try:
        return rp_request, login.finish(flow_id)
    except login.LoginError as exc:
        return (rp_request, exc.error) if exc.error is not None else None


def end_sso_session() -> str | None:
    """End this browser's SSO session; returns its id (to revoke what it handed out)."""
    from gateway.flows import sessions

    row = sessions.logout(db_session(), get_settings())
    return row.id if row is not None else None


def current_sso_id() -> str | None:
    from gateway.app import get_policies
    from gateway.flows import sessions

    row = sessions.current_sso(db_session(), get_settings(), get_policies().accounts.session)
    return row.id if row is not None else None


# --- helpers ------------------------------------------------------------------------------


def error_page(status: int = 400) -> Response:
    title, message = _BAD_REQUEST
    body = render_template(
        "error.html", code=status, title=title, message=message, reference=request_id()
    )
    return Response(body, status=status, mimetype="text/html")


def _endpoint(path: str) -> str:
    return get_settings().issuer + path


def _add_query(uri: str, params: list[tuple[str, str]]) -> str:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + params
    return urlunsplit(parts._replace(query=urlencode(query)))


def authorization_response(
    redirect_uri: str, mode: str, params: dict[str, str | None]
) -> BaseResponse:
    """The answer to the client, in its response mode, always with `iss` (RFC 9207)."""
    items = [(k, v) for k, v in params.items() if v is not None]
    items.append(("iss", get_settings().issuer))
    if mode == "form_post":
        allow_form_action(redirect_uri)
        body = render_template("oidc/form_post.html", action=redirect_uri, fields=items)
        response: BaseResponse = Response(body, mimetype="text/html")
    else:
        response = redirect(_add_query(redirect_uri, items), code=303)
    response.headers["Cache-Control"] = "no-store"
    return response


def authorization_error(
    redirect_uri: str, mode: str, state: str | None, error: str, description: str | None
) -> BaseResponse:
    return authorization_response(
        redirect_uri, mode, {"error": error, "error_description": description, "state": state}
    )


def _server() -> provider.GatewayAuthorizationServer:
    from flask import current_app

    server: provider.GatewayAuthorizationServer = current_app.extensions[SERVER_KEY]
    return server


def _safe_state(data: Any) -> str | None:
    values = data.getlist("state")
    if len(values) == 1 and isinstance(values[0], str) and len(values[0]) <= provider.MAX_STATE:
        return str(values[0])
    return None


# --- discovery and keys -------------------------------------------------------------------


@bp.get("/.well-known/openid-configuration")
def discovery() -> Response:
    settings = get_settings()
    document = {
        "issuer": settings.issuer,
        "authorization_endpoint": _endpoint("/oidc/authorize"),
        "token_endpoint": _endpoint("/oidc/token"),
        "userinfo_endpoint": _endpoint("/oidc/userinfo"),
        "jwks_uri": _endpoint("/oidc/jwks"),
        "end_session_endpoint": _endpoint("/oidc/logout"),
        "scopes_supported": list(provider.SCOPES_SUPPORTED),
        "response_types_supported": ["code"],
        "response_modes_supported": list(provider.RESPONSE_MODES),
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": list(subjects.SUBJECT_TYPES_SUPPORTED),
        "id_token_signing_alg_values_supported": list(SIGNING_ALGS),
        "id_token_encryption_alg_values_supported": [ENCRYPTION_ALG],
        "id_token_encryption_enc_values_supported": [ENCRYPTION_ENC],
        "token_endpoint_auth_methods_supported": provider.TOKEN_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": list(registry.ASSERTION_ALGS),
        "code_challenge_methods_supported": ["S256"],
        "acr_values_supported": [lv.context_class for lv in Level],
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid",
            "at_hash", "bsn", *release.RELEASABLE,
        ],
        "claim_types_supported": ["normal"],
        "claims_parameter_supported": True,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "prompt_values_supported": ["none", "login"],
        "ui_locales_supported": ["nl", "en"],
        "authorization_response_iss_parameter_supported": True,
        # OIDC Back-Channel Logout 1.0 section 2.1 (gateway.idp.oidc.backchannel).
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": False,
    }
    response = jsonify(document)
    response.headers["Cache-Control"] = f"public, max-age={DISCOVERY_MAX_AGE}"
    return response


@bp.get("/oidc/jwks")
def jwks() -> Response:
    response = jsonify(get_keys().jwks())
    response.mimetype = "application/jwk-set+json"
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return response


# --- authorization ------------------------------------------------------------------------


@bp.route("/oidc/authorize", methods=["GET", "POST"])
@csrf_exempt
@no_store
def authorize() -> BaseResponse:
    server = _server()
    data = request.values
    # The everyday request without authlib's generic machinery; anything else through it.
    plain = provider.plain_authorization_request(server)
    if plain is not None:
        client, redirect_uri = plain
    else:
        try:
            grant = server.get_consent_grant(end_user=None)
        except OAuth2Error as error:
            if error.redirect_uri:
                return authorization_error(
                    error.redirect_uri, provider.response_mode(data), _safe_state(data),
                    error.error, error.description,
                )
            return error_page()
        client = grant.request.client
        redirect_uri = grant.redirect_uri
    mode = provider.response_mode(data)
    state = _safe_state(data)
    try:
        provider.check_response_mode(data)
        authz = provider.check_oidc(client, data, redirect_uri)
        rp_request = RpRequest(
            rp_id=client.client_id,
            protocol=RpProtocol.OIDC,
            levels=authz.levels,
            resume_url=url_for("oidc.resume"),
            # Browsers apply CSP form-action to the redirects after the login form's POST:
            # the login pages must allow the client's origin (gateway/web/headers.py).
            return_origin=(
                redirect_uri if redirect_uri.startswith(("https://", "http://")) else None
            ),
            essential=authz.essential,
            force_authn=authz.force_authn,
            passive=authz.passive,
            max_age=authz.max_age,
            login_hint=authz.login_hint,
            ui_locale=authz.ui_locale,
            state=authz.to_state(),
        )
    except provider.AuthorizationError as exc:
        return authorization_error(redirect_uri, mode, state, exc.error, exc.description)
    # Single sign-on that needs nothing of the person answers at once (no flow, no hop).
    reused = reuse_sso(rp_request)
    if reused is not None:
        return answer(authz, client, reused)
    return start_login(rp_request)


@bp.get("/oidc/authorize/resume")
@no_store
def resume() -> BaseResponse:
    flow_id = request.args.get("flow", "")
    finished = finish_login(flow_id) if isinstance(flow_id, str) and len(flow_id) < 100 else None
    if finished is None:
        return error_page()
    rp_request, outcome = finished
    if rp_request.protocol is not RpProtocol.OIDC:
        return error_page()
    try:
        authz = provider.AuthzRequest.from_state(rp_request.state)
    except (KeyError, TypeError, ValueError):
        return error_page()
    client = registry.get_client(db_session(), get_settings(), authz.client_id)
    if client is None or not client.check_redirect_uri(authz.redirect_uri):
        return error_page()  # removed or changed while the person was logging in
    return answer(authz, client, outcome)


def answer(
    authz: provider.AuthzRequest, client: Client, outcome: AuthnResult | AuthnError
) -> BaseResponse:
    """The authorization response for a login's outcome: a code, or the protocol's error.
    Commits (also what the caller added to the transaction, on either answer)."""
    settings = get_settings()
    db = db_session()

    def fail(error: str, description: str | None = None) -> BaseResponse:
        db.commit()
        return authorization_error(
            authz.redirect_uri, authz.response_mode, authz.state, error, description
        )

    if isinstance(outcome, AuthnError):
        return fail(FLOW_ERRORS.get(outcome.code, "access_denied"))
    result = outcome
    if result.level < client.min_level:
        return fail("unmet_authentication_requirements", "The client's minimum level.")
    if authz.essential and result.level not in authz.levels:
        return fail("unmet_authentication_requirements")
    sub = subjects.pairwise_sub(settings, client.sector_identifier, result.subject_key)
    if authz.passive and authz.hint_sub is not None and authz.hint_sub != sub:
        return fail("login_required")
    code = tokens.create_grant(
        db, settings, client, redirect_uri=authz.redirect_uri,
        code_challenge=authz.code_challenge, nonce=authz.nonce, scope=authz.scope, sub=sub,
        result=result, claims_sealed=release.seal_claims(
            settings, release.released(client.claims, authz.scope, result.attributes)),
    )
    db.commit()
    return authorization_response(
        authz.redirect_uri, authz.response_mode, {"code": code, "state": authz.state}
    )


# --- token and userinfo -------------------------------------------------------------------


def _basic_auth_ok() -> bool:
    """authlib decodes HTTP Basic without guarding against bytes that are not UTF-8."""
    header = request.headers.get("Authorization")
    if not header or header[:6].lower() != "basic ":
        return True
    try:
        base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return True


def _token_error(error: str, status: int = 400) -> Response:
    response = jsonify(error=error)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="token"'
    return response


@bp.post("/oidc/token")
@csrf_exempt
def token() -> Response | BaseResponse:
    if not _basic_auth_ok():
        return _token_error("invalid_client", 401)
    try:
        # The everyday code exchange without authlib's generic machinery; anything else,
        # and every refusal before the code is spent, goes through authlib.
        response: BaseResponse | None = provider.plain_code_exchange(_server())
        if response is None:
            response = _server().create_token_response()
    except (StoreUnavailable, SQLAlchemyError):
        raise
    except Exception:
        # Hostile input that reaches a corner of a library is a bad request, never a 500.
        log.exception("token request failed")
        db_session().rollback()
        return _token_error("invalid_request")
    return response


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    if request.method == "POST" and request.mimetype == "application/x-www-form-urlencoded":
        return request.form.get("access_token")  # RFC 6750 2.2; never from the query
    return None


@bp.route("/oidc/userinfo", methods=["GET", "POST"])
@csrf_exempt
def userinfo() -> Response:
    settings = get_settings()
    db = db_session()
    token_value = _bearer()
    grant = tokens.grant_for_access_token(db, settings, token_value) if token_value else None
    client = registry.get_client(db, settings, grant.client_id) if grant is not None else None
    if grant is None or client is None:
        response = jsonify(error="invalid_token")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = (
            'Bearer error="invalid_token"' if token_value else "Bearer"
        )
        response.headers["Cache-Control"] = "no-store"
        return response
    claims: dict[str, Any] = {"sub": grant.sub, "acr": grant.level_value.context_class}
    claims.update(release.unseal_claims(settings, grant.claims_sealed))
    bsn = provider._account_bsn(grant, client)
    if bsn is not None:
        claims["bsn"] = bsn
    response = jsonify(claims)
    response.headers["Cache-Control"] = "no-store"
    return response


# --- logout -------------------------------------------------------------------------------


@bp.route("/oidc/logout", methods=["GET", "POST"])
@csrf_exempt
@no_store
def logout() -> BaseResponse:
    settings = get_settings()
    data = request.values
    try:
        hint = provider._single(data, "id_token_hint", tokens.MAX_HINT_LENGTH)
        client_id = provider._single(data, "client_id", 100)
        target = provider._single(data, "post_logout_redirect_uri", registry.MAX_URI_LENGTH)
        state = provider._single(data, "state", provider.MAX_STATE)
    except provider.AuthorizationError:
        return error_page()
    claims = None
    if hint is not None:
        claims = tokens.verify_own_token(settings, get_keys(), hint, check_expiry=False)
        if claims is None:
            return error_page()
        aud = tokens.audience(claims)
        if aud is None or (client_id is not None and client_id != aud):
            return error_page()
        client_id = aud
    client = registry.get_client(db_session(), settings, client_id) if client_id else None
    if client_id is not None and client is None:
        return error_page()
    if target is not None and (client is None or target not in client.post_logout_redirect_uris):
        return error_page()
    flask_session[LOGOUT_KEY] = {"target": target, "state": state}
    current = current_sso_id()
    if current is None:
        return _after_logout()
    if claims is not None and claims.get("sid") == tokens.session_id(settings, current):
        return _do_logout()
    return Response(render_template("oidc/logout_confirm.html"), mimetype="text/html")


@bp.post("/oidc/logout/confirm")
@no_store
def logout_confirm() -> BaseResponse:
    return _do_logout()


def _do_logout() -> BaseResponse:
    db = db_session()
    ended = end_sso_session()
    if ended is not None:
        tokens.revoke_sso_session(db, ended)
    db.commit()
    return _after_logout()


def _after_logout() -> BaseResponse:
    pending = flask_session.pop(LOGOUT_KEY, None) or {}
    target = pending.get("target") if isinstance(pending, dict) else None
    if isinstance(target, str):
        state = pending.get("state")
        params = [("state", state)] if isinstance(state, str) else []
        return redirect(_add_query(target, params), code=303)
    return Response(render_template("oidc/logged_out.html"), mimetype="text/html")


def init_app(app: Flask, settings: Settings) -> None:
    from gateway.idp.oidc import backchannel

    app.extensions[SERVER_KEY] = provider.create_server()
    registry.init_app(app)  # this worker's client cache
    app.register_blueprint(bp)
    backchannel.init_app(app)
