"""Desk staff login, logout and password change pages, the API's bearer tokens, and the
decorators every desk page and API call stands behind (issue 4, item 3).

Web (OWASP Session Management Cheat Sheet): a login regenerates the session id and stores the
staff id, desk, role, login time and last activity in the server-side session. Every desk
request reloads the staff member from the database (a deactivated or blocked account, or a
changed role, takes effect at once) and ends the desk session after
`policies.accounts.staff.idle_minutes` without activity, or `accounts.session.absolute_hours`
after login. A staff member whose password is still the one-time password sees only the
password change page.

API (RFC 6750, bearer tokens): `POST /desk/api/session` with {username, password, totp} gives
a random 256-bit token. The shared store keeps only its HMAC, mapped to the staff id, with the
idle timeout as TTL, renewed on every use; `DELETE /desk/api/session` ends it. A missing or
unknown token gets 401 problem details (RFC 9457) with `WWW-Authenticate: Bearer`; a role that
may not make the call gets 403.

Views reach the staff member as `current_staff()` (or `g.staff`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Response,
    abort,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from gateway import audit, clock, db
from gateway.app import get_policies, get_settings
from gateway.desks.blueprint import desk, desk_api, nav_item
from gateway.desks.models import StaffAccount
from gateway.desks.staff import (
    PasswordChangeRefused,
    StaffLoginFailed,
    audit_actor,
    authenticate,
    change_password,
)
from gateway.i18n import gettext, lazy_gettext
from gateway.store import get_store
from gateway.web import no_store, regenerate_session, request_id

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Session keys of a desk login (all removed together at logout or expiry).
SESSION_STAFF_ID = "desk_staff_id"
SESSION_DESK = "desk_desk"
SESSION_ROLE = "desk_role"
SESSION_LOGIN_AT = "desk_login_at"
SESSION_LAST_ACTIVITY = "desk_last_activity"
_SESSION_KEYS = (SESSION_STAFF_ID, SESSION_DESK, SESSION_ROLE, SESSION_LOGIN_AT,
                 SESSION_LAST_ACTIVITY)

#: RFC 6750 section 2.1: the bearer token, here 32 random bytes in base64url.
TOKEN_BYTES = 32
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_BEARER = re.compile(r"Bearer +([^\s]+)", re.IGNORECASE)
TOKEN_KEY_PREFIX = "desk-api-token:"  # noqa: S105 - a key prefix, not a secret
REALM = "abroad-gateway desk"

#: Login attempts from one address per hour, across all usernames (password spraying).
LOGIN_LIMIT_KEY_PREFIX = "desk-login-ip:"

NOTICES = {
    "expired": lazy_gettext(
        "You were logged out because you were inactive for too long. Log in again."
    ),
    "logged_out": lazy_gettext("You are logged out."),
    "password_changed": lazy_gettext("Your password has been changed."),
}


# --- the current staff member -------------------------------------------------------------


def current_staff() -> StaffAccount:
    """The staff member of this request; only inside views behind a staff decorator."""
    staff: StaffAccount | None = g.get("staff")
    if staff is None:
        raise RuntimeError("current_staff() outside a view behind staff_required")
    return staff


def _usable(staff: StaffAccount | None) -> StaffAccount | None:
    if staff is None or not staff.active:
        return None
    if staff.blocked_until is not None and staff.blocked_until > clock.now():
        return None
    return staff


def _clear_desk_session() -> None:
    for key in _SESSION_KEYS:
        session.pop(key, None)


def _idle() -> timedelta:
    return timedelta(minutes=get_policies().accounts.staff.idle_minutes)


def _absolute() -> timedelta:
    return timedelta(hours=get_policies().accounts.session.absolute_hours)


def load_web_staff() -> StaffAccount | None:
    """The staff member logged in to this browser session, or None; ends expired sessions.

    Cached per request; also run for every request to a desk page.
    """
    if "staff_loaded" in g:
        staff: StaffAccount | None = g.get("staff")
        return staff
    g.staff_loaded = True
    g.staff = None
    staff_id = session.get(SESSION_STAFF_ID)
    if not isinstance(staff_id, str):
        return None
    now = int(clock.now().timestamp())
    last = session.get(SESSION_LAST_ACTIVITY)
    login_at = session.get(SESSION_LOGIN_AT)
    if (
        not isinstance(last, int)
        or not isinstance(login_at, int)
        or now - last > _idle().total_seconds()
        or now - login_at > _absolute().total_seconds()
    ):
        _clear_desk_session()
        g.desk_session_expired = True
        return None
    staff = _usable(db.session().get(StaffAccount, staff_id))
    if staff is None:
        _clear_desk_session()
        return None
    session[SESSION_LAST_ACTIVITY] = now
    # The database is the truth for role and desk; the session copy is for the logs.
    session[SESSION_ROLE] = staff.role
    session[SESSION_DESK] = staff.desk
    g.staff = staff
    return staff


@desk.before_request
def _desk_request() -> None:
    # The idle timeout is checked on every desk request, whatever the view.
    load_web_staff()


def _login_redirect() -> BaseResponse:
    args: dict[str, Any] = {}
    if g.get("desk_session_expired"):
        args["notice"] = "expired"
    next_url = _safe_next(request.full_path) if request.method == "GET" else None
    if next_url:
        args["next"] = next_url
    return redirect(url_for("desk.login", **args))


def _safe_next(target: str | None) -> str | None:
    """`target` when it is a desk page on this site, else None (no open redirect)."""
    if not target or len(target) > 2000:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or any(ord(c) < 0x20 for c in target):
        return None
    path = parts.path
    if not path.startswith("/desk/") or path.startswith("/desk/api/") or "//" in path:
        return None
    if path in ("/desk/login", "/desk/logout"):
        return None
    return target.rstrip("?")


def _check_role(staff: StaffAccount, roles: tuple[str, ...]) -> bool:
    return not roles or staff.role in roles


def staff_required(*roles: str) -> Callable[[F], F]:
    """For desk pages: not logged in (or expired) -> the login page; a role not in `roles`
    (when given) -> 403 page; a one-time password not yet changed -> the password page."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            staff = load_web_staff()
            if staff is None:
                return _login_redirect()
            if staff.must_change_password and request.endpoint != "desk.change_password":
                return redirect(url_for("desk.change_password"))
            if not _check_role(staff, roles):
                abort(403)
            return view(*args, **kwargs)

        return no_store(wrapper)  # type: ignore[return-value]

    return decorate


# --- problem details for the API ----------------------------------------------------------


def problem(status: int, title: str, detail: str, *, headers: dict[str, str] | None = None
            ) -> Response:
    """An RFC 9457 problem details response, shaped like gateway.web.errors' own."""
    response = jsonify(
        {"type": "about:blank", "title": title, "status": status, "detail": detail,
         "request_id": request_id()}
    )
    response.status_code = status
    response.mimetype = "application/problem+json"
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _unauthorized(error: str | None = None) -> Response:
    # RFC 6750 section 3: no error code when no token was sent at all.
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}"'
    return problem(
        401, "Unauthorized",
        gettext("Log in first: send a valid bearer token from POST /desk/api/session."),
        headers={"WWW-Authenticate": challenge},
    )


def _forbidden() -> Response:
    return problem(403, "Forbidden", gettext("Your role may not do this."))


# --- API tokens ---------------------------------------------------------------------------


def _token_key(token: str) -> str:
    digest = hmac.new(get_settings().derive_key("desk-api-token"), token.encode(), hashlib.sha256)
    return TOKEN_KEY_PREFIX + digest.hexdigest()


def _token_value(staff_id: str, issued_at: int, now: int) -> bytes:
    return json.dumps({"staff_id": staff_id, "issued_at": issued_at, "last_used": now}).encode()


def issue_token(staff: StaffAccount) -> str:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = int(clock.now().timestamp())
    get_store().set(_token_key(token), _token_value(staff.id, now, now), _idle())
    return token


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    match = _BEARER.fullmatch(header.strip()) if len(header) < 200 else None
    return match.group(1) if match else None


def load_api_staff() -> tuple[StaffAccount | None, str | None]:
    """(staff, None) for a valid token, renewing it; (None, RFC 6750 error code) otherwise."""
    token = _bearer_token()
    if token is None:
        return None, None
    if not _TOKEN.fullmatch(token):
        return None, "invalid_token"
    store = get_store()
    key = _token_key(token)
    raw = store.get(key)
    if raw is None:
        return None, "invalid_token"
    try:
        value = json.loads(raw)
        staff_id = str(value["staff_id"])
        issued_at, last_used = int(value["issued_at"]), int(value["last_used"])
    except (ValueError, KeyError, TypeError):
        store.delete(key)
        return None, "invalid_token"
    now = int(clock.now().timestamp())
    # The store's TTL ends idle tokens; the timestamps make sure of it whatever the store's
    # clock, and cap a token's whole life like a web session's.
    if now - last_used > _idle().total_seconds() or now - issued_at > _absolute().total_seconds():
        store.delete(key)
        return None, "invalid_token"
    staff = _usable(db.session().get(StaffAccount, staff_id))
    if staff is None or staff.must_change_password:
        store.delete(key)
        return None, "invalid_token"
    store.set(key, _token_value(staff_id, issued_at, now), _idle())  # renewed on use
    g.staff = staff
    g.staff_token_key = key
    return staff, None


def api_staff_required(*roles: str) -> Callable[[F], F]:
    """For API calls: no or a bad bearer token -> 401; a role not in `roles` -> 403."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            staff, error = load_api_staff()
            if staff is None:
                return _unauthorized(error)
            if not _check_role(staff, roles):
                return _forbidden()
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


# --- shared by both logins ----------------------------------------------------------------


def _too_many_attempts() -> bool:
    """Count this login attempt for the client's address; True when over the hourly limit."""
    limit = get_policies().accounts.lockout.per_ip_per_hour
    address = request.remote_addr or "unknown"
    digest = hmac.new(
        get_settings().derive_key("desk-login-ip"), address.encode(), hashlib.sha256
    ).hexdigest()
    count = get_store().incr(LOGIN_LIMIT_KEY_PREFIX + digest, timedelta(hours=1))
    return count > limit


def _authenticate(username: str, password: str, totp: str) -> StaffAccount:
    return authenticate(
        db.session(), get_settings(), get_policies(), username=username, password=password,
        totp=totp, request_id=request_id(),
    )


def _audit_session_event(staff: StaffAccount, action: str) -> None:
    s = db.session()
    audit.record(
        s, actor=audit_actor(staff), role=staff.role, desk=staff.desk, action=action,
        object_ref=f"staff:{staff.id}", outcome="success", request_id=request_id(),
        settings=get_settings(),
    )
    s.commit()


def _field(source: Any, name: str) -> str:
    value = source.get(name, "")
    return value if isinstance(value, str) else ""


# --- pages --------------------------------------------------------------------------------


@desk.route("/login", methods=["GET", "POST"])
@no_store
def login() -> Any:
    if request.method == "GET" and load_web_staff() is not None:
        return redirect(url_for("desk.home"))
    notice_key = request.args.get("notice", "")
    notice = NOTICES.get(notice_key) if isinstance(notice_key, str) else None
    next_url = _safe_next(request.args.get("next"))
    errors: dict[str, str] = {}
    username = ""
    status = 200
    if request.method == "POST":
        username = _field(request.form, "username")
        if _too_many_attempts():
            abort(429)
        try:
            staff = _authenticate(
                username, _field(request.form, "password"), _field(request.form, "code")
            )
        except StaffLoginFailed as exc:
            errors["username"] = exc.message
        else:
            _clear_desk_session()
            regenerate_session()
            now = int(clock.now().timestamp())
            session[SESSION_STAFF_ID] = staff.id
            session[SESSION_DESK] = staff.desk
            session[SESSION_ROLE] = staff.role
            session[SESSION_LOGIN_AT] = now
            session[SESSION_LAST_ACTIVITY] = now
            if staff.must_change_password:
                return redirect(url_for("desk.change_password"))
            return redirect(next_url or url_for("desk.home"))
    return render_template(
        "desk/login.html", errors=errors, username=username[:64], notice=notice,
        next_url=next_url,
    ), status


@desk.post("/logout")
def logout() -> BaseResponse:
    staff = load_web_staff()
    _clear_desk_session()
    if staff is not None:
        _audit_session_event(staff, "staff.logout")
        # A new id, so the old cookie value is worth nothing even to someone who copied it.
        regenerate_session()
    return redirect(url_for("desk.login", notice="logged_out"))


@desk.route("/password", methods=["GET", "POST"], endpoint="change_password")
@staff_required()
def change_password_view() -> Any:
    staff = current_staff()
    errors: dict[str, str] = {}
    if request.method == "POST":
        new = _field(request.form, "new_password")
        if new != _field(request.form, "confirm_password"):
            errors["confirm_password"] = str(
                lazy_gettext("The two new passwords are not the same. Type them again.")
            )
        else:
            try:
                change_password(
                    db.session(), get_settings(), get_policies(), staff=staff,
                    current_password=_field(request.form, "current_password"), new_password=new,
                    request_id=request_id(),
                )
            except PasswordChangeRefused as exc:
                errors[exc.field] = " ".join(exc.messages)
            else:
                regenerate_session()
                return redirect(url_for("desk.home", notice="password_changed"))
    return render_template(
        "desk/change_password.html", errors=errors, forced=staff.must_change_password
    )


@desk.get("/")
@staff_required()
def home() -> str:
    notice_key = request.args.get("notice", "")
    return render_template("desk/home.html", staff=current_staff(),
                           notice=NOTICES.get(notice_key))


nav_item("desk.home", lazy_gettext("Overview"))
nav_item("desk.change_password", lazy_gettext("Change password"))


# --- API ----------------------------------------------------------------------------------


@desk_api.post("/session")
def api_login() -> Response:
    body = request.get_json(silent=True) if request.is_json else None
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k), str) for k in ("username", "password", "totp")
    ):
        return problem(
            400, "Bad Request",
            gettext("Send JSON with the strings username, password and totp."),
        )
    if _too_many_attempts():
        return problem(429, "Too Many Requests",
                       gettext("Too many login attempts. Wait a while and try again."))
    try:
        staff = _authenticate(body["username"], body["password"], body["totp"])
    except StaffLoginFailed as exc:
        return problem(401, "Unauthorized", exc.message,
                       headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    if staff.must_change_password:
        return problem(
            403, "Forbidden",
            gettext("Change your one-time password in the desk web pages first."),
        )
    token = issue_token(staff)
    response = jsonify(
        token=token,
        token_type="Bearer",  # noqa: S106 - RFC 6750's token type name
        expires_in=int(_idle().total_seconds()),
    )
    # RFC 6749 section 5.1: responses that carry a token are never cached.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@desk_api.get("/session")
@api_staff_required()
def api_session() -> Response:
    staff = current_staff()
    response = jsonify(username=staff.username, desk=staff.desk, role=staff.role,
                       expires_in=int(_idle().total_seconds()))
    response.headers["Cache-Control"] = "no-store"
    return response


@desk_api.delete("/session")
@api_staff_required()
def api_logout() -> Response:
    get_store().delete(g.staff_token_key)
    _audit_session_event(current_staff(), "staff.logout")
    return Response(status=204)



# --- OpenAPI ------------------------------------------------------------------------------


def openapi_fragment() -> dict[str, Any]:
    """The session endpoints and the bearer scheme as OpenAPI 3.1, for the document at
    /desk/api/openapi.json to merge (paths are relative to the server URL /desk/api).
    Problem responses refer to `#/components/schemas/Problem`, which that document defines."""
    problem_ref = {"$ref": "#/components/schemas/Problem"}

    def problem_response(description: str) -> dict[str, Any]:
        return {"description": description,
                "content": {"application/problem+json": {"schema": problem_ref}}}

    unauthorized = problem_response("No valid bearer token (WWW-Authenticate: Bearer).")
    credentials = {
        "type": "object",
        "required": ["username", "password", "totp"],
        "additionalProperties": False,
        "properties": {
            "username": {"type": "string", "maxLength": 256},
            "password": {"type": "string", "maxLength": 1024},
            "totp": {"type": "string", "maxLength": 16},
        },
    }
    token = {
        "type": "object",
        "required": ["token", "token_type", "expires_in"],
        "properties": {
            "token": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
            "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer", "minimum": 1},
        },
    }
    me = {
        "type": "object",
        "required": ["username", "desk", "role", "expires_in"],
        "properties": {
            "username": {"type": "string"},
            "desk": {"type": "string"},
            "role": {"enum": ["officer", "supervisor", "auditor"]},
            "expires_in": {"type": "integer"},
        },
    }
    return {
        "paths": {
            "/session": {
                "post": {
                    "operationId": "createSession",
                    "summary": "Log in with password and TOTP; returns a bearer token.",
                    "security": [],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": credentials}}},
                    "responses": {
                        "200": {"description": "Logged in.",
                                "content": {"application/json": {"schema": token}}},
                        "400": problem_response("Not JSON with the three strings."),
                        "401": problem_response("Login failed (one answer for every cause)."),
                        "403": problem_response("The one-time password must be changed first."),
                        "429": problem_response("Too many attempts from this address."),
                    },
                },
                "get": {
                    "operationId": "getSession",
                    "summary": "Who the token belongs to; renews it.",
                    "responses": {
                        "200": {"description": "The staff member.",
                                "content": {"application/json": {"schema": me}}},
                        "401": unauthorized,
                    },
                },
                "delete": {
                    "operationId": "deleteSession",
                    "summary": "End the token.",
                    "responses": {"204": {"description": "Logged out."}, "401": unauthorized},
                },
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
