"""The citizen's login pages: Dutch and English, titles and error summaries, autocomplete
tokens (WCAG 1.3.5), CSRF, no-store, the same answer for unknown and known usernames, the
blocked page with its unblock option, activation errors, and hostile input.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from gateway import clock
from gateway.accounts.models import Account, AccountStatus
from gateway.accounts.service import wait_for_deliveries
from gateway.db import get_db
from tests.test_login_flow import (
    MOBILE,
    PASSWORD,
    login_password,
    make_account,
    make_activation_code,
    outbox,
    post_form,
    rp_app,
    token,
)

TITLE = re.compile(r"<title>([^<]*)</title>")
H1 = re.compile(r"<h1>([^<]*)</h1>")


def _title(page: Any) -> str:
    match = TITLE.search(page.get_data(as_text=True))
    assert match
    return match.group(1)


@pytest.mark.parametrize(
    ("language", "title", "labels"),
    [
        ("nl", "Inloggen", ("Gebruikersnaam", "Wachtwoord")),
        ("en", "Log in", ("Username", "Password")),
    ],
)
def test_the_password_page_in_both_languages(
    make_app: Any, language: str, title: str, labels: tuple[str, str]
) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    client.get(f"/?lang={language}")
    page = client.get("/test-rp/start", follow_redirects=True)
    body = page.get_data(as_text=True)
    assert page.status_code == 200
    assert f'<html lang="{language}">' in body
    assert _title(page).startswith(title + " – ")
    assert H1.search(body).group(1) == title  # type: ignore[union-attr]
    for label in labels:
        assert f">{label}</label>" in body
    assert 'autocomplete="username"' in body and 'autocomplete="current-password"' in body
    assert page.headers["Cache-Control"] == "no-store"


def test_the_relying_partys_ui_locale_picks_the_language(make_app: Any) -> None:
    from flask import Blueprint

    from gateway.flows.login import start_login
    from gateway.flows.types import RpRequest
    from gateway.levels import Level

    app = make_app()
    bp = Blueprint("locale_rp", __name__)

    @bp.get("/locale-rp")
    def start() -> Any:
        return start_login(RpRequest(
            rp_id="rp", protocol="oidc", levels=(Level.BASIS,), resume_url="/x",
            ui_locale="en",
        ))

    app.register_blueprint(bp)
    client = app.test_client()
    page = client.get("/locale-rp", follow_redirects=True)
    assert _title(page).startswith("Log in")
    # An explicit choice of the person wins.
    page = client.get(page.request.path + "?lang=nl")
    assert _title(page).startswith("Inloggen")


def test_a_wrong_password_shows_an_error_summary_in_the_users_language(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    client.get("/?lang=en")
    page = client.get("/test-rp/start", follow_redirects=True)
    refused = login_password(client, page, password="wrong password here")
    body = refused.get_data(as_text=True)
    assert refused.status_code == 200
    assert "There is a problem" in body and 'href="#username"' in body
    assert "Login failed" in body
    assert "wrong password here" not in body  # a password is never written back

    client.get("/?lang=nl")
    refused = login_password(client, refused, password="wrong password here")
    assert "Er is een probleem" in refused.get_data(as_text=True)


def test_unknown_and_known_usernames_get_the_same_answer(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    page = client.get("/test-rp/start", follow_redirects=True)

    def answer(username: str) -> tuple[int, str]:
        refused = login_password(client, page, username, "not the password")
        body = refused.get_data(as_text=True)
        body = re.sub(r'value="[^"]*"', "", body)  # CSRF tokens and the typed username
        return refused.status_code, body.replace(username, "")

    assert answer("jan.jansen") == answer("nobody.here")


def test_code_pages_use_one_time_code_and_numeric_input(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    page = client.get("/test-rp/start?levels=midden", follow_redirects=True)
    page = login_password(client, page)
    body = page.get_data(as_text=True)
    assert re.search(r'<input[^>]*autocomplete="one-time-code"[^>]*inputmode="numeric"', body)
    assert _title(page).startswith("Voer de code in")
    assert page.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/activate", "/logout"])
def test_forms_without_csrf_are_refused(app: Flask, path: str) -> None:
    client = app.test_client()
    assert client.get(path).status_code == 200
    refused = client.post(path, data={"username": "jan.jansen"})
    assert refused.status_code == 400
    assert "expired" in refused.get_data(as_text=True) or "verlopen" in refused.get_data(
        as_text=True
    )


def test_flow_steps_without_csrf_are_refused(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    page = client.get("/test-rp/start", follow_redirects=True)
    path = page.request.path
    for step in ("password", "cancel", "code", "factor", "route", "unblock"):
        refused = client.post(f"{path}/{step}", data={"username": "jan.jansen",
                                                      "password": PASSWORD})
        assert refused.status_code == 400, step
    refused = client.post(f"{path}/password", data={
        "csrf_token": "x" * 86, "username": "jan.jansen", "password": PASSWORD,
    })
    assert refused.status_code == 400


@pytest.mark.parametrize("flow_id", ["nope", "A" * 43, "%00", "a" * 500])
def test_unknown_flows_get_a_page_not_an_error(app: Flask, flow_id: str) -> None:
    client = app.test_client()
    page = client.get(f"/login/{flow_id}?lang=en")
    assert page.status_code == 404
    assert "This login cannot be continued" in page.get_data(as_text=True)


def test_an_expired_flow_says_so(make_app: Any, frozen_clock: None) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    page = client.get("/test-rp/start?lang=en", follow_redirects=True)
    path = page.request.path
    # Halfway a visit keeps the browser session alive; the flow's 15 minutes run from its start.
    clock.advance(timedelta(minutes=10))
    assert client.get(path).status_code == 200
    clock.advance(timedelta(minutes=6))
    page = client.get(path + "?lang=en")
    assert "Your login has expired" in page.get_data(as_text=True)
    link = page.get_data(as_text=True).split('class="button" href="', 1)[1].split('"', 1)[0]
    assert client.get(link.replace("&amp;", "&")).get_json()["error"] == "expired"


def test_activation_errors_say_what_to_do(make_app: Any, frozen_clock: None) -> None:
    app = make_app()
    client = app.test_client()
    account_id = make_account(app, status=AccountStatus.PENDING_ACTIVATION)
    code = make_activation_code(app, account_id)
    page = client.get("/activate?lang=en")
    assert _title(page).startswith("Activate your account")
    assert 'autocomplete="one-time-code"' in page.get_data(as_text=True)

    wrong = post_form(client, page, "/activate", {
        "username": "jan.jansen", "password": PASSWORD, "activation_code": "ABCDFGHJK",
    })
    assert "This activation code is not correct" in wrong.get_data(as_text=True)
    assert 'href="#activation_code"' in wrong.get_data(as_text=True)

    clock.advance(timedelta(days=21))
    page = client.get("/activate?lang=en")  # the old browser session has long gone
    expired = post_form(client, page, "/activate", {
        "username": "jan.jansen", "password": PASSWORD, "activation_code": code,
    })
    assert "Ask a desk to send you a new activation code" in expired.get_data(as_text=True)

    hostile = post_form(client, expired, "/activate", {
        "username": "\x00" * 5000, "password": "x" * 100_000, "activation_code": "\u202e" * 50,
    })
    assert hostile.status_code == 200
    assert "Login failed" in hostile.get_data(as_text=True)


def test_blocked_page_offers_to_unblock(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    account_id = make_account(app)
    with get_db(app).begin() as s:
        account = s.get(Account, account_id)
        assert account is not None
        account.blocked_until = clock.now() + timedelta(minutes=30)
    client.get("/?lang=en")
    page = client.get("/test-rp/start", follow_redirects=True)
    blocked = login_password(client, page)
    body = blocked.get_data(as_text=True)
    assert _title(blocked).startswith("Your account is blocked")
    assert "Unblock my account" in body

    sent = post_form(client, blocked, "/unblock", {"username": "jan.jansen",
                                                  "password": PASSWORD})
    assert "Enter your unblock code" in sent.get_data(as_text=True)
    wait_for_deliveries(app)
    text = [e for e in outbox(app) if e["to"] == MOBILE][-1]["text"]
    code = re.search(r"#([A-Z0-9]{9})\Z", text)
    assert code and code.group(1).startswith("D")

    wrong = post_form(client, sent, "/unblock/code", {"username": "jan.jansen",
                                                     "unblock_code": "DBBBBBBBB"})
    assert "This unblock code is not correct" in wrong.get_data(as_text=True)
    unblocked = post_form(client, wrong, "/unblock/code", {"username": "jan.jansen",
                                                          "unblock_code": code.group(1)})
    assert "Your account is unblocked" in unblocked.get_data(as_text=True)
    answer = login_password(client, unblocked)
    assert answer.get_json()["ok"] is True


def test_account_page_in_both_languages(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    page = client.get("/account?lang=en", follow_redirects=True)
    page = login_password(client, page)
    assert _title(page).startswith("My account")
    assert "Log in at level midden" in page.get_data(as_text=True)
    page = client.get("/account?lang=nl")
    assert _title(page).startswith("Mijn account")
    assert "U bent ingelogd als jan.jansen op niveau basis." in page.get_data(as_text=True)
    assert token(page)  # the logout button is a form with CSRF
