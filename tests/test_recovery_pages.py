"""The citizen's unblock and recovery pages (gateway.accounts.recovery_views; issue 5 items 5
and 6): every page in Dutch and English with its autocomplete tokens and no-store; the whole
unblock (blocked by failed logins, D code from the SMS outbox, log in again) and recovery (H
code from the SMS outbox, link from the mail outbox, sessions ended, notice mailed) through
the test client; wrong, expired and replayed codes and tokens; only the phone or only the
mailbox; CSRF; hostile input.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway import clock
from gateway.accounts import service
from gateway.accounts.models import Account, AccountStatus
from gateway.accounts.service import wait_for_deliveries
from gateway.app import get_policies, get_settings
from gateway.db import get_db
from gateway.sms.service import get_sms_service
from tests.test_accounts_service import fast_policies_dir, mail_tokens, outbox, sms_codes
from tests.test_login_flow import (
    MOBILE,
    PASSWORD,
    add_test_rp,
    login_password,
    make_account,
    post_form,
    sso_rows,
    token,
)

NEW_PASSWORD = "seven quiet harbour lights"
TITLE = re.compile(r"<title>([^<]*)</title>")
H1 = re.compile(r"<h1>([^<]*)</h1>")


def policies_for_pages(tmp_path: Path) -> Path:
    """The cheapest argon2 the policy allows (speed), with the repo's per-IP budget (every
    request here comes from 127.0.0.1)."""
    folder = fast_policies_dir(tmp_path)
    path = folder / "accounts.yaml"
    data = yaml.safe_load(path.read_text())
    data["lockout"]["per_ip_per_hour"] = 100
    path.write_text(yaml.safe_dump(data))
    return folder


@pytest.fixture
def app(make_app: Any, tmp_path: Path) -> Flask:
    app: Flask = make_app(policies_dir=policies_for_pages(tmp_path))
    add_test_rp(app)
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    c = app.test_client()
    c.get("/?lang=en")
    return c


def body(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def submit(client: FlaskClient, page: TestResponse, path: str, data: dict[str, str],
           follow: bool = True) -> TestResponse:
    return post_form(client, page, path, data, follow=follow)


def block_by_failed_logins(app: Flask, client: FlaskClient, username: str = "jan.jansen") -> None:
    """Fail the password on the login page until the account is blocked."""
    page = client.get("/test-rp/start", follow_redirects=True)
    for _ in range(get_policies(app).accounts.lockout.max_failures):
        page = login_password(client, page, username, "not my password at all")
        assert "Login failed" in body(page)
    with get_db(app).begin() as s:
        account = s.query(Account).filter_by(username_key=username).one()
        assert account.blocked_until is not None and account.blocked_until > clock.now()


def advance_keeping_session(client: FlaskClient, total: timedelta) -> None:
    """Move the frozen clock on by `total`, using the browser session every few minutes so
    that its idle timeout (15 minutes) does not end it meanwhile."""
    step = timedelta(minutes=10)
    while total > timedelta(0):
        clock.advance(min(step, total))
        total -= step
        assert client.get("/account/recover").status_code == 200


def request_unblock(client: FlaskClient, username: str = "jan.jansen",
                    password: str = PASSWORD) -> TestResponse:
    form = client.get("/account/unblock")
    return submit(client, form, "/account/unblock",
                  {"username": username, "password": password})


def request_recovery(app: Flask, client: FlaskClient,
                     username: str = "jan.jansen") -> tuple[str, str]:
    """Ask for a recovery; the H code from the SMS outbox and the link's path from the mail."""
    form = client.get("/account/recover")
    sent = submit(client, form, "/account/recover", {"username": username})
    assert sent.request.path == "/account/recover/sent"
    wait_for_deliveries(app)
    code = sms_codes(app, "H")[-1]
    tokens = mail_tokens(app)
    assert tokens, "no recovery e-mail was sent"
    return code, f"/account/recover?token={tokens[-1]}"


def new_password_form(client: FlaskClient, link: str) -> TestResponse:
    page = client.get(link)
    assert page.status_code == 200 and "Choose a new password" in body(page)
    return page


def finish(client: FlaskClient, page: TestResponse, **fields: str) -> TestResponse:
    data = {"username": "jan.jansen", "new_password": NEW_PASSWORD,
            "new_password_again": NEW_PASSWORD}
    data.update(fields)
    hidden = dict(re.findall(r'<input type="hidden" name="(token|from_link)" value="([^"]*)"',
                             body(page)))
    return submit(client, page, "/account/recover/new", {**hidden, **data})


# --- each page, in both languages ------------------------------------------------------------


PAGES = {
    # path: (English title, Dutch title, autocomplete tokens the page must carry)
    "/account/unblock": ("Unblock my account", "Deblokkeer mijn account",
                         ("username", "current-password")),
    "/account/unblocked": ("Your account is unblocked", "Uw account is gedeblokkeerd", ()),
    "/account/recover": ("Forgot your password?", "Wachtwoord vergeten?", ("username",)),
    "/account/recover/sent": ("Check your phone and your e-mail",
                              "Kijk op uw telefoon en in uw e-mail", ()),
    "/account/recover/new": ("Choose a new password", "Kies een nieuw wachtwoord",
                             ("username", "one-time-code", "new-password")),
    "/account/recover?token=" + "t" * 43: ("Choose a new password", "Kies een nieuw wachtwoord",
                                           ("username", "one-time-code", "new-password")),
    "/account/recover/done": ("Your password has been changed", "Uw wachtwoord is gewijzigd",
                              ()),
}


@pytest.mark.parametrize("path", sorted(PAGES))
def test_every_page_in_both_languages(app: Flask, path: str) -> None:
    english, dutch, tokens = PAGES[path]
    for language, title in (("en", english), ("nl", dutch)):
        client = app.test_client()
        client.get(f"/?lang={language}")
        page = client.get(path)
        text = body(page)
        assert page.status_code == 200
        assert f'<html lang="{language}">' in text
        assert TITLE.search(text).group(1).startswith(title + " – ")  # type: ignore[union-attr]
        assert H1.search(text).group(1) == title  # type: ignore[union-attr]
        assert "no-store" in page.headers["Cache-Control"]
        for autocomplete in tokens:
            assert f'autocomplete="{autocomplete}"' in text
        if tokens:
            assert 'name="csrf_token"' in text


@pytest.mark.parametrize(("language", "title", "notice"), [
    ("en", "Enter your unblock code", "we are sending an unblock code"),
    ("nl", "Voer uw deblokkeercode in", "deblokkeercode"),
])
def test_the_unblock_code_page_in_both_languages(
    app: Flask, language: str, title: str, notice: str
) -> None:
    client = app.test_client()
    client.get(f"/?lang={language}")
    # Without a request first, the code page sends the person to the start.
    assert client.get("/account/unblock/code").headers["Location"].endswith("/account/unblock")
    page = request_unblock(client, "nobody.here", "whatever it is")
    text = body(page)
    assert page.request.path == "/account/unblock/code"
    assert H1.search(text).group(1) == title  # type: ignore[union-attr]
    assert notice in text and 'role="status"' in text
    assert 'autocomplete="one-time-code"' in text
    assert "nobody.here" not in text  # the username is never echoed


def test_the_login_page_links_to_recovery_and_unblock(app: Flask, client: FlaskClient) -> None:
    page = client.get("/test-rp/start", follow_redirects=True)
    text = body(page)
    assert 'href="/account/recover"' in text and 'href="/account/unblock"' in text
    client.get("/?lang=nl")
    assert "Wachtwoord vergeten?" in body(client.get("/test-rp/start", follow_redirects=True))


# --- unblock end to end ----------------------------------------------------------------------


def test_unblock_end_to_end(app: Flask, client: FlaskClient) -> None:
    make_account(app)
    block_by_failed_logins(app, client)
    # The right password now shows the blocked page, not a login.
    page = client.get("/test-rp/start", follow_redirects=True)
    assert "Your account is blocked" in body(login_password(client, page))

    sent = request_unblock(client)
    assert sent.request.path == "/account/unblock/code"
    wait_for_deliveries(app)
    [code] = sms_codes(app, "D")
    assert [m["to"] for m in outbox(get_settings(app).sms_outbox)][-1] == MOBILE

    wrong = submit(client, sent, "/account/unblock/code", {"unblock_code": "DBBBBBBBB"})
    assert wrong.status_code == 200
    assert "This unblock code is not correct" in body(wrong)
    unblocked = submit(client, wrong, "/account/unblock/code",
                       {"unblock_code": code.lower()})  # case does not matter
    assert unblocked.request.path == "/account/unblocked"
    assert "Your account is unblocked" in body(unblocked)

    page = client.get("/test-rp/start", follow_redirects=True)
    assert login_password(client, page).get_json()["ok"] is True

    # Replayed: the code is used up (the account is not blocked, so no new code is sent).
    again = request_unblock(client)
    replay = submit(client, again, "/account/unblock/code", {"unblock_code": code})
    assert "This unblock code has already been used" in body(replay)


def test_an_expired_unblock_code_says_how_to_get_a_new_one(
    app: Flask, client: FlaskClient, frozen_clock: None
) -> None:
    make_account(app)
    block_by_failed_logins(app, client)
    sent = request_unblock(client)
    wait_for_deliveries(app)
    [code] = sms_codes(app, "D")
    advance_keeping_session(client, service.UNBLOCK_CODE_VALIDITY + timedelta(seconds=1))
    late = submit(client, sent, "/account/unblock/code", {"unblock_code": code})
    assert "This unblock code is no longer valid" in body(late)
    assert 'href="/account/unblock"' in body(late)
    client.get("/?lang=nl")
    late = submit(client, late, "/account/unblock/code", {"unblock_code": code})
    assert "Deze deblokkeercode is niet meer geldig" in body(late)


def test_a_wrong_password_sends_no_unblock_code(app: Flask, client: FlaskClient) -> None:
    make_account(app)
    block_by_failed_logins(app, client)
    sent = request_unblock(client, password="a wrong password")
    assert sent.request.path == "/account/unblock/code"
    wait_for_deliveries(app)
    assert sms_codes(app, "D") == []


# --- recovery end to end ---------------------------------------------------------------------


def test_recovery_end_to_end(app: Flask, client: FlaskClient) -> None:
    account_id = make_account(app)
    # Logged in elsewhere: recovery must end that session.
    elsewhere = app.test_client()
    page = elsewhere.get("/test-rp/start", follow_redirects=True)
    assert login_password(elsewhere, page).get_json()["ok"] is True
    assert [r.ended_at for r in sso_rows(app)] == [None]

    code, link = request_recovery(app, client)
    assert code.startswith("H")
    form = new_password_form(client, link)
    assert 'type="hidden" name="token"' in body(form)
    # A weak password is refused with the rule, and the codes stay usable.
    weak = finish(client, form, recovery_code=code, new_password="short",
                  new_password_again="short")
    assert "at least 8 characters" in body(weak)
    differ = finish(client, weak, recovery_code=code, new_password_again="something else")
    assert "The two new passwords are not the same" in body(differ)
    done = finish(client, differ, recovery_code=code)
    assert done.request.path == "/account/recover/done"
    assert "Your password has been changed" in body(done)

    assert all(r.ended_at is not None for r in sso_rows(app))
    # The notice, in the account's language (Dutch here), to its verified address.
    notices = [m for m in outbox(get_settings(app).mail_outbox)
               if "wachtwoord voor Abroad Gateway is gewijzigd" in m["subject"]]
    assert [m["to"] for m in notices] == ["jan.jansen@example.org"]
    with get_db(app).begin() as s:
        account = s.get(Account, account_id)
        assert account is not None and account.password_changed_at is not None

    fresh = app.test_client()
    fresh.get("/?lang=en")
    page = fresh.get("/test-rp/start", follow_redirects=True)
    assert "Login failed" in body(login_password(fresh, page))  # the old password
    page = fresh.get("/test-rp/start", follow_redirects=True)
    assert login_password(fresh, page, password=NEW_PASSWORD).get_json()["ok"] is True

    # Replayed link and code.
    replay = finish(client, new_password_form(client, link), recovery_code=code,
                    new_password="yet another long phrase",
                    new_password_again="yet another long phrase")
    assert "This recovery code has already been used" in body(replay)
    assert 'href="/account/recover"' in body(replay)


def test_recovery_unblocks_a_blocked_account(app: Flask, client: FlaskClient) -> None:
    make_account(app)
    block_by_failed_logins(app, client)
    code, link = request_recovery(app, client)
    done = finish(client, new_password_form(client, link), recovery_code=code)
    assert done.request.path == "/account/recover/done"
    page = client.get("/test-rp/start", follow_redirects=True)
    assert login_password(client, page, password=NEW_PASSWORD).get_json()["ok"] is True


def test_the_token_can_be_typed_by_hand(app: Flask, client: FlaskClient) -> None:
    make_account(app)
    code, link = request_recovery(app, client)
    typed = link.split("token=", 1)[1]
    form = client.get("/account/recover/new")
    assert 'name="token"' in body(form) and 'type="hidden" name="token"' not in body(form)
    done = finish(client, form, recovery_code=code, token=" " + typed + " ")
    assert done.request.path == "/account/recover/done"


def test_wrong_codes_and_tokens_are_refused_with_what_to_do(
    app: Flask, client: FlaskClient
) -> None:
    make_account(app)
    code, link = request_recovery(app, client)
    form = new_password_form(client, link)
    wrong_code = finish(client, form, recovery_code="HBBBBBBBB")
    assert "The recovery code or the e-mail confirmation is not correct" in body(wrong_code)
    assert 'href="#recovery_code"' in body(wrong_code)
    other_user = finish(client, form, recovery_code=code, username="kim.peters")
    assert "The recovery code or the e-mail confirmation is not correct" in body(other_user)
    wrong_token = finish(client, client.get("/account/recover?token=" + "A" * 43),
                         recovery_code=code)
    assert "The recovery code or the e-mail confirmation is not correct" in body(wrong_token)
    # Still usable after these few mistakes.
    assert finish(client, form, recovery_code=code).request.path == "/account/recover/done"


def test_only_the_phone_or_only_the_mail_is_refused(app: Flask, client: FlaskClient) -> None:
    make_account(app)
    code, link = request_recovery(app, client)
    # Only the phone: the H code without the e-mail token.
    no_token = finish(client, client.get("/account/recover/new"), recovery_code=code)
    assert "The confirmation code from our e-mail is missing" in body(no_token)
    # Only the mailbox: the link without the H code.
    no_code = finish(client, new_password_form(client, link), recovery_code="")
    assert "The recovery code or the e-mail confirmation is not correct" in body(no_code)
    # Neither did anything.
    page = client.get("/test-rp/start", follow_redirects=True)
    assert login_password(client, page).get_json()["ok"] is True


def test_an_expired_recovery_says_how_to_get_a_new_one(
    app: Flask, client: FlaskClient, frozen_clock: None
) -> None:
    make_account(app)
    code, link = request_recovery(app, client)
    form = new_password_form(client, link)
    advance_keeping_session(client, service.RECOVERY_CODE_VALIDITY + timedelta(seconds=1))
    late = finish(client, form, recovery_code=code)
    assert "This recovery code is no longer valid" in body(late)
    assert 'href="/account/recover"' in body(late)


def test_a_newer_request_ends_the_older_link(
    app: Flask, client: FlaskClient, frozen_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_account(app)
    # The SMS resend interval lives in Redis' real-time TTLs, which a frozen clock cannot move.
    monkeypatch.setattr(get_sms_service(app).limiter, "_resend", lambda *_a: lambda _r: None)
    old_code, old_link = request_recovery(app, client)
    clock.advance(timedelta(minutes=1))
    new_code, new_link = request_recovery(app, client)
    assert (old_code, old_link) != (new_code, new_link)
    stale = finish(client, new_password_form(client, old_link), recovery_code=old_code)
    assert "This recovery code is no longer valid" in body(stale)
    done = finish(client, new_password_form(client, new_link), recovery_code=new_code)
    assert done.request.path == "/account/recover/done"


def test_a_malformed_link_says_what_to_do(app: Flask, client: FlaskClient) -> None:
    page = client.get("/account/recover?token=%3Cscript%3E")
    assert page.status_code == 200
    assert "This link is incomplete" in body(page)
    assert "<script>" not in body(page)


def test_recovery_for_an_account_without_email_sends_nothing(
    app: Flask, client: FlaskClient
) -> None:
    account_id = make_account(app)
    with get_db(app).begin() as s:
        account = s.get(Account, account_id)
        assert account is not None
        account.email_verified_at = None
    form = client.get("/account/recover")
    sent = submit(client, form, "/account/recover", {"username": "jan.jansen"})
    assert sent.request.path == "/account/recover/sent"
    assert "visit a desk" in body(sent)
    wait_for_deliveries(app)
    assert sms_codes(app, "H") == [] and mail_tokens(app) == []


# --- abuse -----------------------------------------------------------------------------------


POSTS = ["/account/unblock", "/account/unblock/code", "/account/recover", "/account/recover/new"]


@pytest.mark.parametrize("path", POSTS)
def test_forms_without_csrf_are_refused(app: Flask, client: FlaskClient, path: str) -> None:
    make_account(app)
    client.get("/account/recover")  # a session with a CSRF secret
    for data in ({}, {"csrf_token": "forged"}):
        refused = client.post(path, data={**data, "username": "jan.jansen",
                                          "password": PASSWORD})
        assert refused.status_code == 400
    wait_for_deliveries(app)
    assert outbox(get_settings(app).sms_outbox) == []


def test_a_token_from_another_session_is_refused(app: Flask, client: FlaskClient) -> None:
    form = client.get("/account/recover")
    other = app.test_client()
    other.get("/account/recover")
    refused = other.post("/account/recover", data={"csrf_token": token(form),
                                                   "username": "jan.jansen"})
    assert refused.status_code == 400


HOSTILE = [
    "\x00" * 5,
    "\x00" * 5000,
    "a" * 100_000,
    "\u202e\u0000\ud7ff" * 30,
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "%00%0d%0aSet-Cookie: x=y",
    "jan.jansen\x00",
]


def test_hostile_input_never_gives_a_server_error(app: Flask, client: FlaskClient) -> None:
    make_account(app)
    for value in HOSTILE:
        _send_hostile(client, value)
    wait_for_deliveries(app)
    assert sms_codes(app, "D") == [] and sms_codes(app, "H") == []


def _send_hostile(client: FlaskClient, value: str) -> None:
    pages = {
        "/account/unblock": {"username": value, "password": value},
        "/account/unblock/code": {"unblock_code": value},
        "/account/recover": {"username": value},
        "/account/recover/new": {"username": value, "token": value, "recovery_code": value,
                                 "new_password": value, "new_password_again": value,
                                 "from_link": value},
    }
    for path, data in pages.items():
        form = client.get(path, follow_redirects=True)
        answer = client.post(path, data={"csrf_token": token(form), **data})
        assert answer.status_code in (200, 303, 413), (path, answer.status_code)
        assert "<script>alert" not in body(answer)
    for query in ({"token": value}, {"token": [value, value]}, {"lang": value}):
        assert client.get("/account/recover", query_string=query).status_code == 200


def test_per_network_throttling_answers_429(
    make_app: Any, tmp_path: Path
) -> None:
    app = make_app(policies_dir=fast_policies_dir(tmp_path))  # 10 attempts an hour
    client = app.test_client()
    client.get("/?lang=en")
    form = client.get("/account/recover")
    statuses = [
        submit(client, form, "/account/recover", {"username": "nobody.here"},
               follow=False).status_code
        for _ in range(get_policies(app).accounts.lockout.per_ip_per_hour + 1)
    ]
    assert statuses[:-1] == [303] * (len(statuses) - 1)
    assert statuses[-1] == 429
    refused = submit(client, form, "/account/recover", {"username": "nobody.here"},
                     follow=False)
    assert int(refused.headers["Retry-After"]) > 0
    assert "too many attempts" in body(refused)


def test_a_deactivated_account_cannot_be_recovered(app: Flask, client: FlaskClient) -> None:
    make_account(app, status=AccountStatus.DEACTIVATED)
    form = client.get("/account/recover")
    sent = submit(client, form, "/account/recover", {"username": "jan.jansen"})
    assert sent.request.path == "/account/recover/sent"
    wait_for_deliveries(app)
    assert sms_codes(app, "H") == []


def test_the_mail_link_points_at_the_recovery_page(app: Flask, client: FlaskClient) -> None:
    make_account(app)
    _code, link = request_recovery(app, client)
    [mail] = [m for m in outbox(get_settings(app).mail_outbox) if "token=" in m["text"]]
    url = re.search(r"(https?://\S+token=\S+)", mail["text"])
    assert url is not None
    assert urlsplit(url.group(1)).path == "/account/recover"
    assert link.split("?", 1)[1] in url.group(1)
