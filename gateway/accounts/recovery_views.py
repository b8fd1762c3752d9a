"""The citizen's pages to unblock an account and to recover a forgotten password (`recovery`
blueprint; issue 5 items 5 and 6, and "Bad input and abuse").

Views translate HTTP to calls of `gateway.accounts.service` and back (ARCHITECTURE.md habit
4); the rules (who gets a code, lockout, throttling, single use) live there.

- `/account/unblock` (username + password) -> `/account/unblock/code` (the D code) ->
  `/account/unblocked`. The first POST answers with the same redirect for every username and
  password (no account enumeration, OWASP ASVS 2.2.1): the service decides, after the same
  argon2 work, whether a code goes to the verified phone. The username waits in the
  server-side session between the two steps, so it is never echoed into a page.
  Inside a login flow the blocked page keeps its own unblock step (`gateway.flows.views`),
  which returns to that flow; these pages serve everyone else.
- `/account/recover` (username) -> `/account/recover/sent`: the same answer for every username.
  The e-mail links to `/account/recover?token=...`, which shows the form for the H code from
  the phone and a new password, with the token in a hidden field; `/account/recover/new`
  takes the token typed by hand (the e-mail offers that when the link does not open). A
  thief with only the phone or only the mailbox gets nowhere (issue 5 item 6). Success ends
  every session and mails a notice (the service does both) -> `/account/recover/done`.

Every page: Dutch and English, one title, an error summary, CSRF (gateway.web.csrf),
`no_store`, autocomplete tokens username / current-password / new-password / one-time-code
(WCAG 2.1 SC 1.3.5). Refusals by the per-network throttle answer 429 with Retry-After; an
unreachable shared store answers 503 (fail closed).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, current_app, redirect, render_template, request, url_for
from flask import session as flask_session
from werkzeug.wrappers import Response as BaseResponse

from gateway import db
from gateway.accounts import service as accounts
from gateway.app import get_policies, get_settings
from gateway.i18n import lazy_gettext
from gateway.web import no_store

bp = Blueprint("recovery", __name__)

#: Longest form value looked at; longer is cut (no field of these forms is longer, and the
#: service refuses over-long usernames and passwords before any work).
MAX_FIELD = 1024
#: Session key: the username whose unblock code is awaited (never shown in a page).
UNBLOCK_KEY = "recovery_unblock_user"
#: What the e-mail token can look like (`secrets.token_urlsafe`); anything else is not put
#: into a page at all.
TOKEN_PATTERN = re.compile(r"\A[A-Za-z0-9_-]{16,128}\Z")
#: Characters no username contains; PostgreSQL text cannot even hold NUL. Input with them
#: is treated as an unknown username (same answer, same work).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

PASSWORDS_DIFFER = lazy_gettext("The two new passwords are not the same.")
TOKEN_MISSING = lazy_gettext(
    "The confirmation code from our e-mail is missing. Open the link in the e-mail, or type "
    "the confirmation code from the e-mail."
)
TOKEN_MALFORMED = lazy_gettext(
    "This link is incomplete. Open the link from the most recent e-mail again, or type the "
    "confirmation code from the e-mail."
)


# --- helpers ------------------------------------------------------------------------------


def _field(name: str) -> str:
    value = request.form.get(name, "")
    return value[:MAX_FIELD] if isinstance(value, str) else ""


def _username(raw: str) -> str:
    """The typed username; "" (an unknown one) when it holds characters no username has."""
    return "" if _CONTROL.search(raw) else raw


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def _ip() -> str | None:
    return request.remote_addr


def _page(template: str, status: int = 200, **context: Any) -> Any:
    context.setdefault("errors", {})
    return render_template(f"recovery/{template}", **context), status


def _refused(
    template: str, exc: accounts.AccountError, field: str, **context: Any
) -> Any:
    """A page for TooManyAttempts (429 + Retry-After) or TryLater (503)."""
    if isinstance(exc, accounts.TooManyAttempts):
        body, status = _page(template, 429, errors={field: exc.message}, **context)
        return body, status, {"Retry-After": str(exc.retry_after)}
    return _page(template, 503, errors={field: exc.message}, **context)


def _to(endpoint: str) -> BaseResponse:
    return redirect(url_for(endpoint), code=303)


# --- unblock ------------------------------------------------------------------------------


@bp.route("/account/unblock", methods=["GET", "POST"])
@no_store
def unblock() -> Any:
    if request.method == "GET":
        return _page("unblock.html")
    username = _username(_field("username"))
    try:
        accounts.start_unblock(
            db.session(), get_settings(), _app(), username=username,
            password=_field("password"), ip=_ip(),
        )
    except (accounts.TooManyAttempts, accounts.TryLater) as exc:
        return _refused("unblock.html", exc, "username")
    # Kept for every username, known or not: the next page must look the same.
    flask_session[UNBLOCK_KEY] = username[: accounts.MAX_USERNAME_INPUT]
    return _to("recovery.unblock_code")


@bp.route("/account/unblock/code", methods=["GET", "POST"])
@no_store
def unblock_code() -> Any:
    username = flask_session.get(UNBLOCK_KEY)
    if not isinstance(username, str):
        return _to("recovery.unblock")
    if request.method == "GET":
        return _page("unblock_code.html", notice=accounts.UNBLOCK_REQUESTED)
    try:
        accounts.finish_unblock(
            db.session(), get_settings(), _app(), username=username,
            code=_field("unblock_code"), ip=_ip(),
        )
    except (accounts.TooManyAttempts, accounts.TryLater) as exc:
        return _refused("unblock_code.html", exc, "unblock_code")
    except accounts.CodeRefused as exc:
        return _page("unblock_code.html", errors={"unblock_code": exc.message},
                     refusal=exc.code)
    flask_session.pop(UNBLOCK_KEY, None)
    return _to("recovery.unblocked")


@bp.get("/account/unblocked")
@no_store
def unblocked() -> Any:
    return _page("unblocked.html")


# --- recovery -----------------------------------------------------------------------------


def _new_password_page(status: int = 200, **context: Any) -> Any:
    context.setdefault("token", "")
    context.setdefault("username", "")
    return _page("new_password.html", status, policy=get_policies().accounts.password,
                 **context)


@bp.route("/account/recover", methods=["GET", "POST"])
@no_store
def recover() -> Any:
    if request.method == "POST":
        username = _username(_field("username"))
        try:
            accounts.start_recovery(
                db.session(), get_settings(), _app(), username=username, ip=_ip()
            )
        except (accounts.TooManyAttempts, accounts.TryLater) as exc:
            return _refused("forgot.html", exc, "username")
        return _to("recovery.sent")
    token = request.args.get("token")
    if token is None:
        return _page("forgot.html")
    # The link from the e-mail: the token rides along in a hidden field.
    if TOKEN_PATTERN.match(token):
        return _new_password_page(token=token, from_link=True)
    return _new_password_page(errors={"token": TOKEN_MALFORMED})


@bp.get("/account/recover/sent")
@no_store
def sent() -> Any:
    return _page("sent.html", notice=accounts.RECOVERY_REQUESTED)


@bp.route("/account/recover/new", methods=["GET", "POST"])
@no_store
def new_password() -> Any:
    if request.method == "GET":
        return _new_password_page()
    token = _field("token").strip()
    from_link = _field("from_link") == "1" and bool(TOKEN_PATTERN.match(token))
    username = _username(_field("username"))
    shown: dict[str, Any] = {"token": token if from_link else "", "from_link": from_link,
             "username": username[:64]}
    if not token:
        # Only the phone: nothing to check the code against. Refused before any work, which
        # tells nothing about the account (the username is not even looked up).
        return _new_password_page(errors={"token": TOKEN_MISSING}, **shown)
    new = _field("new_password")
    if new != _field("new_password_again"):
        return _new_password_page(errors={"new_password_again": PASSWORDS_DIFFER}, **shown)
    try:
        accounts.finish_recovery(
            db.session(), get_settings(), _app(), username=username,
            h_code=_field("recovery_code"), email_token=token, new_password=new, ip=_ip(),
        )
    except (accounts.TooManyAttempts, accounts.TryLater) as exc:
        return _refused("new_password.html", exc, "recovery_code",
                        policy=get_policies().accounts.password, **shown)
    except accounts.CodeRefused as exc:
        return _new_password_page(errors={"recovery_code": exc.message}, refusal=exc.code,
                                  **shown)
    except accounts.PasswordRejected as exc:
        return _new_password_page(errors={"new_password": " ".join(exc.messages)}, **shown)
    return _to("recovery.done")


@bp.get("/account/recover/done")
@no_store
def done() -> Any:
    return _page("done.html")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
