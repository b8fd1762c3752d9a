"""Whole login exchanges through the test client (issue 5 items 1, 3 and 4): activation, login
at basis, step-up to midden with the SMS code from the outbox, single sign-on for a second
relying party, forced re-authentication, logout; midden with an authenticator app; a spoken
code for a landline.

The helpers here (accounts made directly with the models, a tiny relying party that uses the
protocol-facing API `start_login`/`finish`) are shared by the other tests/test_login_*.py and
tests/test_sessions.py files.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pyotp
from flask import Blueprint, Flask, jsonify, request, url_for
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway import clock
from gateway.accounts.history import list_events
from gateway.accounts.models import Account, AccountCode, AccountStatus
from gateway.accounts.passwords import Passwords
from gateway.app import get_policies, get_settings
from gateway.crypto import seal
from gateway.db import get_db
from gateway.desks.codes import ACTIVATION_CODE_VALIDITY, CodeKind, code_hmac, new_code
from gateway.flows.login import LoginError, finish, start_login
from gateway.flows.sessions import SsoSession
from gateway.flows.types import RpRequest
from gateway.levels import Level
from gateway.sms.providers.outbox import read_outbox

PASSWORD = "purple elephant dances"
MOBILE = "+31612345678"
LANDLINE = "+31201234567"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')

_passwords: dict[Any, Passwords] = {}


def make_account(
    app: Flask,
    username: str = "jan.jansen",
    *,
    phone: str | None = MOBILE,
    channel: str = "sms",
    status: AccountStatus = AccountStatus.ACTIVE,
    totp_secret: str | None = None,
    password: str = PASSWORD,
) -> str:
    """An account as a desk and activation would leave it; returns its id."""
    policy = get_policies(app).accounts.password
    if policy not in _passwords:
        _passwords[policy] = Passwords(policy)
    now = clock.now()
    account = Account(
        username=username,
        username_key=username.casefold(),
        password_hash=_passwords[policy].hash(password),
        bsn=None,
        surname="Jansen",
        given_names="Jan",
        birth_date=now.date().replace(year=1980),
        nationality="NLD",
        phone_e164=phone,
        phone_channel=channel if phone else None,
        phone_verified_at=now if phone and status is AccountStatus.ACTIVE else None,
        # A verified address: the e-mail question after login (gateway.accounts.views)
        # is tested where it lives.
        email=f"{username}@example.org",
        email_verified_at=now,
        language="nl",
        status=status.value,
        created_at=now,
        activated_at=now if status is AccountStatus.ACTIVE else None,
        failed_logins=0,
    )
    if totp_secret is not None:
        account.totp_secret_sealed = seal(get_settings(app), "account-totp", totp_secret)
        account.totp_confirmed_at = now
    with get_db(app).begin() as s:
        s.add(account)
        s.flush()
        return account.id


def make_activation_code(app: Flask, account_id: str, channel: str = "sms") -> str:
    code = new_code(CodeKind.ACTIVATION)
    now = clock.now()
    with get_db(app).begin() as s:
        s.add(AccountCode(
            account_id=account_id, kind=CodeKind.ACTIVATION.value,
            code_hmac=code_hmac(get_settings(app), CodeKind.ACTIVATION, code), channel=channel,
            created_at=now, expires_at=now + ACTIVATION_CODE_VALIDITY, attempts=0,
        ))
    return code


def token(response: TestResponse) -> str:
    match = TOKEN.search(response.get_data(as_text=True))
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def form_action(response: TestResponse, contains: str) -> str:
    for action in re.findall(r'<form action="([^"]*)"', response.get_data(as_text=True)):
        if contains in action:
            return action.replace("&amp;", "&")
    raise AssertionError(f"no form posting to ...{contains}")


def post_form(
    client: FlaskClient, page: TestResponse, contains: str, data: dict[str, str],
    follow: bool = True,
) -> TestResponse:
    """Submit the page's form whose action contains `contains`, as a browser would."""
    return client.post(
        form_action(page, contains), data={"csrf_token": token(page), **data},
        follow_redirects=follow,
    )


def login_password(
    client: FlaskClient, page: TestResponse, username: str = "jan.jansen",
    password: str = PASSWORD,
) -> TestResponse:
    assert "/password" in page.get_data(as_text=True), "not on the password page"
    return post_form(client, page, "/password", {"username": username, "password": password})


def outbox(app: Flask) -> list[dict[str, Any]]:
    return list(read_outbox(get_settings(app).sms_outbox))


def last_code(app: Flask, to: str = MOBILE) -> str:
    """The six digits of the last message to `to` (SMS text or spoken "1, 2, 3, ...")."""
    entries = [e for e in outbox(app) if e.get("to") == to]
    assert entries, f"nothing was sent to {to}"
    text = entries[-1]["text"]
    if entries[-1]["channel"] == "sms":
        match = re.search(r"#([0-9]{6})\Z", text)
        assert match
        return match.group(1)
    digits = re.findall(r"[0-9]", text)
    assert len(digits) >= 6
    return "".join(digits[:6])


def session_cookie(client: FlaskClient) -> str | None:
    cookie = client.get_cookie("gw_session")
    return cookie.value if cookie is not None else None


def add_test_rp(app: Flask) -> None:
    """A relying party built on the protocol-facing API, as OIDC/SAML modules will be."""
    bp = Blueprint("test_rp", __name__)

    @bp.get("/test-rp/start")
    def start() -> Any:
        args = request.args
        levels = tuple(Level.from_label(v) for v in args.get("levels", "basis").split(","))
        max_age = args.get("max_age")
        return start_login(RpRequest(
            rp_id=args.get("rp", "test-rp"), protocol="oidc", levels=levels,
            resume_url=args.get("resume") or url_for("test_rp.back"),
            essential=args.get("essential") == "1", force_authn=args.get("force") == "1",
            passive=args.get("passive") == "1",
            max_age=int(max_age) if max_age is not None else None,
            login_hint=args.get("hint"), state={"nonce": "n-1"},
            return_origin=args.get("return_origin"),
        ))

    @bp.get("/test-rp/back")
    def back() -> Any:
        try:
            result = finish(request.args.get("flow", ""))
        except LoginError as exc:
            return jsonify(ok=False, error=exc.error.code.value if exc.error else None,
                           state=dict(exc.error.rp_request.state) if exc.error else None)
        return jsonify(ok=True, **json.loads(result.to_json()))

    app.register_blueprint(bp)


def rp_app(make_app: Any) -> Flask:
    app: Flask = make_app()
    add_test_rp(app)
    return app


def sso_rows(app: Flask) -> list[SsoSession]:
    with get_db(app).begin() as s:
        return list(s.query(SsoSession).order_by(SsoSession.created_at))


# --- the flows --------------------------------------------------------------------------------


def test_activation_basis_step_up_sso_force_and_logout(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    account_id = make_account(app, status=AccountStatus.PENDING_ACTIVATION)
    code = make_activation_code(app, account_id)

    # Activation: username, password and the A code; the SMS code verified the phone.
    page = client.get("/activate?lang=en")
    assert page.status_code == 200
    page = post_form(client, page, "/activate", {
        "username": "jan.jansen", "password": PASSWORD, "activation_code": code.lower(),
    })
    assert "Your account is activated" in page.get_data(as_text=True)
    with get_db(app).begin() as s:
        account = s.get(Account, account_id)
        assert account is not None
        assert account.status == AccountStatus.ACTIVE.value
        assert account.phone_verified_at is not None

    # Login at basis through the "self" relying party: password only, a new session id.
    page = client.get("/account?lang=en", follow_redirects=True)
    assert page.request.path.startswith("/login/")
    before = session_cookie(client)
    page = login_password(client, page)
    assert page.request.path == "/account"
    body = page.get_data(as_text=True)
    assert "You are logged in as jan.jansen at level basis." in body
    assert session_cookie(client) != before
    assert outbox(app) == []  # basis sends no code

    # Step-up to midden: no password, the code page; the code goes out when asked for.
    page = client.get("/account/step-up", follow_redirects=True)
    assert 'name="password"' not in page.get_data(as_text=True)
    page = post_form(client, page, "/code", {"action": "send"})
    assert 'autocomplete="one-time-code"' in page.get_data(as_text=True)
    before = session_cookie(client)
    page = post_form(client, page, "/code", {"action": "verify", "code": last_code(app)})
    assert page.request.path == "/account"
    assert "at level midden." in page.get_data(as_text=True)
    assert session_cookie(client) != before
    (row,) = sso_rows(app)  # the same sign-on, raised
    assert row.level == Level.MIDDEN and row.amr_values == ("pwd", "sms")

    # A second relying party at basis: no password, no code; SSO answers at once.
    answer = client.get("/test-rp/start?rp=portal&levels=basis", follow_redirects=True)
    result = answer.get_json()
    assert result["ok"] is True
    assert result["level"] == "midden" and result["amr"] == ["pwd", "sms"]
    assert result["subject_key"] == f"account:{account_id}"
    assert result["sso_session_id"] == row.id
    # start -> flow (done at once) -> back: no page shown
    assert [r.status_code for r in answer.history] == [303, 303]
    (row,) = sso_rows(app)
    assert set(row.rp_ids) == {"self", "portal"}
    # The owner's usage history: every service, level and how.
    with get_db(app).begin() as s:
        history = [(e.service, e.level, e.route) for e in reversed(list_events(s, account_id))
                   if e.kind == "login"]
    assert history == [("self", "basis", "password"), ("self", "midden", "sms"),
                       ("portal", "midden", "sso")]

    # force_authn: the password again, even with a session at midden.
    page = client.get("/test-rp/start?rp=portal&force=1", follow_redirects=True)
    assert 'autocomplete="current-password"' in page.get_data(as_text=True)
    answer = login_password(client, page).get_json()
    # The relying party hears what was proven just now, not the older SMS step.
    assert answer["ok"] is True and answer["level"] == "basis" and answer["amr"] == ["pwd"]
    (row,) = sso_rows(app)
    assert row.level == Level.MIDDEN  # the sign-on itself stays at midden

    # Logout ends the SSO session: a passive request now gets login_required.
    page = client.get("/logout")
    page = post_form(client, page, "/logout", {})
    assert page.status_code == 200
    (row,) = sso_rows(app)
    assert row.ended_at is not None and row.end_reason == "logout"
    answer = client.get("/test-rp/start?passive=1", follow_redirects=True)
    assert answer.get_json() == {"ok": False, "error": "login_required",
                                 "state": {"nonce": "n-1"}}
    page = client.get("/account", follow_redirects=True)
    assert 'name="password"' in page.get_data(as_text=True)


def test_midden_with_authenticator_app(make_app: Any, frozen_clock: None) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    secret = pyotp.random_base32()
    make_account(app, phone=None, totp_secret=secret)

    client.get("/?lang=en")
    page = client.get("/test-rp/start?levels=midden&essential=1", follow_redirects=True)
    page = login_password(client, page)
    body = page.get_data(as_text=True)
    assert "authenticator app" in body and 'inputmode="numeric"' in body
    code = pyotp.TOTP(secret).at(clock.now())
    answer = post_form(client, page, "/code", {"code": code})
    result = answer.get_json()
    assert result["ok"] is True and result["level"] == "midden"
    assert result["amr"] == ["pwd", "otp"]
    assert outbox(app) == []

    # The same TOTP code in a new forced login is a replay: refused.
    page = client.get("/test-rp/start?levels=midden&force=1", follow_redirects=True)
    page = login_password(client, page)
    refused = post_form(client, page, "/code", {"code": code})
    assert refused.request.path.startswith("/login/")
    assert "This code is not correct" in refused.get_data(as_text=True)
    # Thirty seconds later the app shows a new code, which works.
    clock.advance(timedelta(seconds=30))
    answer = post_form(client, refused, "/code", {"code": pyotp.TOTP(secret).at(clock.now())})
    assert answer.get_json()["ok"] is True


def test_landline_gets_a_spoken_code(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app, phone=LANDLINE, channel="voice")

    client.get("/?lang=en")  # the language choice is remembered in a cookie
    page = client.get("/test-rp/start?levels=midden", follow_redirects=True)
    page = login_password(client, page)
    assert "calling your phone number ending in 67" in page.get_data(as_text=True)
    (entry,) = outbox(app)
    assert entry["channel"] == "voice" and entry["to"] == LANDLINE
    answer = post_form(client, page, "/code", {"code": last_code(app, LANDLINE)})
    result = answer.get_json()
    assert result["ok"] is True and result["amr"] == ["pwd", "tel"]


def test_choosing_between_sms_and_app(make_app: Any, frozen_clock: None) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    secret = pyotp.random_base32()
    make_account(app, totp_secret=secret)

    client.get("/?lang=en")
    page = client.get("/test-rp/start?levels=midden", follow_redirects=True)
    page = login_password(client, page)
    body = page.get_data(as_text=True)
    assert "Choose your second step" in body
    assert outbox(app) == []  # nothing sent before the person chose
    page = post_form(client, page, "/factor", {"factor": "sms"})
    assert len(outbox(app)) == 1
    # Changing one's mind: the app instead; the SMS code no longer matters.
    page = post_form(client, page, "/factor", {"factor": "totp"})
    assert "Enter the code from your authenticator app" in page.get_data(as_text=True)
    answer = post_form(client, page, "/code", {"code": pyotp.TOTP(secret).at(clock.now())})
    assert answer.get_json()["amr"] == ["pwd", "otp"]


def test_a_factor_the_account_lacks_is_refused(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)  # SMS only
    page = client.get("/test-rp/start?levels=midden", follow_redirects=True)
    page = login_password(client, page)
    assert "/factor" not in page.get_data(as_text=True)  # nothing to choose from
    action = form_action(page, "/code").replace("/code", "/factor")
    refused = client.post(action, data={"csrf_token": token(page), "factor": "totp"})
    assert refused.status_code == 400
    refused = client.post(action, data={"csrf_token": token(page), "factor": "x" * 5000})
    assert refused.status_code == 400


def test_resume_at_another_origin_is_allowed_as_form_action(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    page = client.get(
        "/test-rp/start?resume=https://rp.example.org/back", follow_redirects=True
    )
    csp = page.headers["Content-Security-Policy"]
    assert "form-action 'self' https://rp.example.org" in csp
    done = post_form(
        client, page, "/password", {"username": "jan.jansen", "password": PASSWORD},
        follow=False,
    )
    # A finished flow sends the browser straight on to the relying party.
    assert done.headers["Location"].startswith("https://rp.example.org/back?flow=")


def test_the_protocols_final_origin_is_allowed_as_form_action(make_app: Any) -> None:
    """OIDC resumes on the gateway and then redirects to the client: that origin counts."""
    app = rp_app(make_app)
    client = app.test_client()
    page = client.get(
        "/test-rp/start?return_origin=https://client.example.net:8443/cb?x=1",
        follow_redirects=True,
    )
    csp = page.headers["Content-Security-Policy"]
    assert "form-action 'self' https://client.example.net:8443;" in csp
