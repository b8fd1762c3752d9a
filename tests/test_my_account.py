"""My account (issue 5 items 7 and 8): each change end to end through the test client, logged
in through the real login flow, codes read from the SMS and mail outboxes; each refusal; the
notices; the six-month e-mail prompt on a frozen clock; CSRF; Dutch and English pages."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pyotp
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway import clock
from gateway.accounts import selfservice
from gateway.accounts.models import Account, AccountStatus
from gateway.app import get_settings
from gateway.db import get_db
from gateway.flows.sessions import SsoSession
from tests.test_login_flow import (
    MOBILE,
    PASSWORD,
    add_test_rp,
    last_code,
    login_password,
    make_account,
    outbox,
    post_form,
)

NEW_MOBILE = "+31687654321"
NEW_PASSWORD = "seven green lanterns glow"
OLD_MAIL = "jan@example.org"
NEW_MAIL = "jan.new@example.net"


def mails(app: Flask, to: str | None = None) -> list[dict[str, Any]]:
    path = get_settings(app).mail_outbox
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if to is None or e["to"] == to]


def account_row(app: Flask, account_id: str) -> Account:
    with get_db(app).begin() as s:
        account = s.get(Account, account_id)
        assert account is not None
        s.expunge(account)
        return account


def set_email(app: Flask, account_id: str, address: str | None = OLD_MAIL) -> None:
    with get_db(app).begin() as s:
        account = s.get(Account, account_id)
        assert account is not None
        account.email = address
        account.email_verified_at = clock.now() if address else None
        account.email_confirmed_at = clock.now() if address else None


def login_basis(client: FlaskClient, lang: str = "en") -> TestResponse:
    page = client.get(f"/account?lang={lang}", follow_redirects=True)
    page = login_password(client, page)
    assert page.request.path == "/account", page.request.path
    return page


def step_up_with_sms(client: FlaskClient, app: Flask, page: TestResponse) -> TestResponse:
    assert 'name="password"' not in page.get_data(as_text=True)  # step-up: the factor only
    page = post_form(client, page, "/code", {"action": "send"})
    return post_form(client, page, "/code", {"action": "verify", "code": last_code(app)})


def open_sessions(app: Flask, account_id: str) -> list[SsoSession]:
    with get_db(app).begin() as s:
        return list(s.query(SsoSession).filter_by(account_id=account_id, ended_at=None))


# --- pages, languages, history ----------------------------------------------------------------


def test_links_history_and_both_languages(app: Flask) -> None:
    account_id = make_account(app)
    set_email(app, account_id)
    client = app.test_client()
    page = login_basis(client)
    body = page.get_data(as_text=True)
    assert "/account/history" in body and "/account/password" in body

    page = client.get("/account/history?lang=en")
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and "<h1>Usage history</h1>" in body
    assert "<td>self</td>" in body and "<td>basis</td>" in body and "<td>password</td>" in body
    assert "no-store" in page.headers["Cache-Control"]

    page = client.get("/account/history?lang=nl")
    body = page.get_data(as_text=True)
    assert "<h1>Gebruiksgeschiedenis</h1>" in body and "Inloggen" in body
    page = client.get("/account/password?lang=nl")
    assert "Huidig wachtwoord" in page.get_data(as_text=True)


def test_pages_need_a_login(app: Flask) -> None:
    client = app.test_client()
    for path in ("/account/history", "/account/password", "/account/phone", "/account/app",
                 "/account/email", "/account/deactivate", "/account/settings"):
        page = client.get(path)
        assert page.status_code == 303 and page.headers["Location"].startswith("/login/"), path
    # The interstitial without a finished login of this browser: back to My account.
    page = client.get("/account/email-check")
    assert page.status_code == 303 and page.headers["Location"].endswith("/account")


def test_csrf_missing_is_refused(app: Flask) -> None:
    account_id = make_account(app)
    client = app.test_client()
    login_basis(client)
    answer = client.post("/account/password", data={
        "current_password": PASSWORD, "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD,
    })
    assert answer.status_code == 400
    assert account_row(app, account_id).password_changed_at is None
    answer = client.post("/account/notices", data={"notify_logins": "on", "csrf_token": "x" * 40})
    assert answer.status_code == 400
    assert account_row(app, account_id).notify_logins is False


# --- password -------------------------------------------------------------------------------


def test_change_password(app: Flask) -> None:
    account_id = make_account(app)
    set_email(app, account_id)
    other = app.test_client()
    login_basis(other)
    client = app.test_client()
    login_basis(client)
    page = client.get("/account/password?lang=en")
    body = page.get_data(as_text=True)
    assert 'autocomplete="current-password"' in body and 'autocomplete="new-password"' in body

    # Refusals: the wrong current password (counted), two different new ones, a common one.
    answer = post_form(client, page, "/account/password", {
        "current_password": "wrong password here", "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD,
    })
    assert "Your current password is not correct" in answer.get_data(as_text=True)
    assert account_row(app, account_id).failed_logins == 1
    answer = post_form(client, answer, "/account/password", {
        "current_password": PASSWORD, "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD + "x",
    })
    assert "The two new passwords are not the same." in answer.get_data(as_text=True)
    answer = post_form(client, answer, "/account/password", {
        "current_password": PASSWORD, "new_password": "password",
        "new_password_again": "password",
    })
    assert answer.request.path == "/account/password"
    assert account_row(app, account_id).password_changed_at is None

    answer = post_form(client, answer, "/account/password", {
        "current_password": PASSWORD, "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD,
    })
    assert answer.request.path == "/account/settings"
    assert "Your password has been changed" in answer.get_data(as_text=True)
    # This browser stays logged in; the other one is logged out.
    (kept,) = open_sessions(app, account_id)
    assert client.get("/account/history").status_code == 200
    assert other.get("/account/history").status_code == 303
    (notice,) = mails(app, OLD_MAIL)
    assert "wachtwoord" in notice["subject"].lower() and "jan.jansen" in notice["text"]
    # The new password works, the old one no longer does.
    fresh = app.test_client()
    page = fresh.get("/account?lang=en", follow_redirects=True)
    assert "Login failed" in login_password(fresh, page).get_data(as_text=True)
    page = fresh.get("/account", follow_redirects=True)
    assert login_password(fresh, page, password=NEW_PASSWORD).request.path == "/account"
    assert kept.id


def test_password_change_needs_a_recent_login(app: Flask, frozen_clock: None) -> None:
    make_account(app)
    client = app.test_client()
    login_basis(client)
    assert client.get("/account/password").status_code == 200
    clock.advance(selfservice.REAUTH_WINDOW + timedelta(seconds=1))
    page = client.get("/account/password", follow_redirects=True)
    assert page.request.path.startswith("/login/")
    assert 'autocomplete="current-password"' in page.get_data(as_text=True)
    page = login_password(client, page)
    assert page.request.path == "/account/password"
    assert 'name="new_password"' in page.get_data(as_text=True)


# --- phone ----------------------------------------------------------------------------------


def test_change_phone_with_step_up(app: Flask) -> None:
    account_id = make_account(app)
    set_email(app, account_id)
    client = app.test_client()
    login_basis(client)
    # Basis session: the phone page asks for the second factor first (a step-up).
    page = client.get("/account/phone?lang=en", follow_redirects=True)
    assert page.request.path.startswith("/login/")
    page = step_up_with_sms(client, app, page)
    assert page.request.path == "/account/phone"
    assert 'autocomplete="tel"' in page.get_data(as_text=True)

    # Hostile and refused numbers.
    answer = post_form(client, page, "/account/phone", {"phone": "<script>1</script>" * 50})
    assert answer.request.path == "/account/phone" and "<script>1" not in answer.get_data(
        as_text=True)
    answer = post_form(client, answer, "/account/phone", {"phone": MOBILE})
    assert "This is already your phone number" in answer.get_data(as_text=True)

    answer = post_form(client, answer, "/account/phone", {"phone": "+31 6 8765 4321"})
    assert answer.request.path == "/account/phone/code"
    code = last_code(app, NEW_MOBILE)
    wrong = "000000" if code != "000000" else "111111"
    refused = post_form(client, answer, "/account/phone/code", {"code": wrong})
    assert "This code is not correct" in refused.get_data(as_text=True)
    assert account_row(app, account_id).phone_e164 == MOBILE

    done = post_form(client, refused, "/account/phone/code", {"code": code})
    assert done.request.path == "/account/settings"
    account = account_row(app, account_id)
    assert account.phone_e164 == NEW_MOBILE and account.phone_verified_at is not None
    old_notice = [e for e in outbox(app) if e["to"] == MOBILE][-1]
    assert "21" in old_notice["text"] and "#" not in old_notice["text"]  # a notice, no code
    (notice,) = mails(app, OLD_MAIL)
    assert "telefoonnummer" in notice["subject"].lower() and "21" in notice["text"]
    # The code was used up: a replay changes nothing and is refused.
    replay = client.post("/account/phone/code", data={"code": code})
    assert replay.status_code in (303, 400)


# --- e-mail ---------------------------------------------------------------------------------


def e_code(app: Flask, to: str) -> str:
    text = mails(app, to)[-1]["text"]
    match = re.search(r"\bE[A-Z0-9]{8}\b", text)
    assert match, text
    return match.group(0)


def test_change_email_with_e_code(app: Flask) -> None:
    account_id = make_account(app)
    set_email(app, account_id)
    client = app.test_client()
    login_basis(client)
    page = client.get("/account/email?lang=en")
    assert 'autocomplete="email"' in page.get_data(as_text=True)
    bad = post_form(client, page, "/account/email", {"email": "jan@example.org\r\nBcc: x@y.z"})
    assert bad.request.path == "/account/email" and mails(app) == []
    page = post_form(client, bad, "/account/email", {"email": NEW_MAIL})
    assert page.request.path == "/account/email/code"
    code = e_code(app, NEW_MAIL)
    # Not yet changed; a wrong code is refused.
    assert account_row(app, account_id).email == OLD_MAIL
    refused = post_form(client, page, "/account/email/code", {"code": "E" + "2" * 8})
    assert "This code is not correct" in refused.get_data(as_text=True)
    done = post_form(client, refused, "/account/email/code", {"code": code.lower()})
    assert done.request.path == "/account/settings"
    account = account_row(app, account_id)
    assert account.email == NEW_MAIL and account.email_verified_at is not None
    assert account.pending_email is None
    (notice,) = mails(app, OLD_MAIL)
    assert "e-mailadres" in notice["subject"].lower()


def test_email_code_expired_and_limited(app: Flask, frozen_clock: None) -> None:
    account_id = make_account(app)
    with app.test_request_context("/"), get_db(app).sessionmaker() as s:
        settings = get_settings(app)
        account = s.get(Account, account_id)
        assert account is not None
        # Five codes a day, then refused (no mail bombing through us).
        for _ in range(selfservice.EMAIL_CODES_PER_DAY):
            selfservice.start_email_change(s, settings, app, account, NEW_MAIL)
        try:
            selfservice.start_email_change(s, settings, app, account, NEW_MAIL)
        except selfservice.ChangeRefused as exc:
            assert exc.code == "too_many"
        else:
            raise AssertionError("no limit on E codes")
        assert len(mails(app, NEW_MAIL)) == selfservice.EMAIL_CODES_PER_DAY
        # The latest code, a day later: expired.
        code = e_code(app, NEW_MAIL)
        clock.advance(selfservice.EMAIL_CODE_VALIDITY + timedelta(seconds=1))
        try:
            selfservice.finish_email_change(s, settings, app, account, code)
        except selfservice.EmailCodeRefused as exc:
            assert exc.code == "expired"
        else:
            raise AssertionError("an expired E code was accepted")
        assert account_row(app, account_id).email == "jan.jansen@example.org"


# --- authenticator app ----------------------------------------------------------------------


def test_add_and_remove_authenticator_app(app: Flask, frozen_clock: None) -> None:
    account_id = make_account(app)
    set_email(app, account_id)
    client = app.test_client()
    login_basis(client)
    page = client.get("/account/app?lang=en", follow_redirects=True)
    page = step_up_with_sms(client, app, page)
    assert page.request.path == "/account/app"
    page = post_form(client, page, "/account/app", {})
    body = page.get_data(as_text=True)
    assert "<svg" in body and "<script" not in body.split("<main", 1)[1]
    match = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', body)
    assert match
    secret = match.group(1).replace(" ", "")
    refused = post_form(client, page, "/app/confirm", {"code": "12345x"})
    assert "This code is not correct" in refused.get_data(as_text=True)
    code = pyotp.TOTP(secret).at(clock.now())
    done = post_form(client, page, "/app/confirm", {"code": code})
    assert done.request.path == "/account/settings"
    assert account_row(app, account_id).totp_confirmed_at is not None
    assert any("authenticator" in m["subject"] for m in mails(app, OLD_MAIL))

    page = client.get("/account/app")
    done = post_form(client, page, "/app/remove", {})
    assert done.request.path == "/account/settings"
    assert account_row(app, account_id).totp_secret_sealed is None
    assert len(mails(app, OLD_MAIL)) == 2


# --- deactivation ---------------------------------------------------------------------------


def test_deactivate(app: Flask) -> None:
    account_id = make_account(app)
    set_email(app, account_id)
    client = app.test_client()
    login_basis(client)
    page = client.get("/account/deactivate?lang=en")
    answer = post_form(client, page, "/account/deactivate", {"current_password": PASSWORD})
    assert "Tick the box" in answer.get_data(as_text=True)
    answer = post_form(client, answer, "/account/deactivate",
                       {"current_password": "not it at all", "confirm": "yes"})
    assert "Your current password is not correct" in answer.get_data(as_text=True)
    assert account_row(app, account_id).status == AccountStatus.ACTIVE.value
    answer = post_form(client, answer, "/account/deactivate",
                       {"current_password": PASSWORD, "confirm": "yes"})
    assert "Your account has been deactivated" in answer.get_data(as_text=True)
    assert account_row(app, account_id).status == AccountStatus.DEACTIVATED.value
    assert open_sessions(app, account_id) == []
    assert any("opgeheven" in m["subject"] for m in mails(app, OLD_MAIL))
    page = client.get("/account", follow_redirects=True)
    assert "Login failed" in login_password(client, page).get_data(as_text=True)


# --- e-mail prompts and login notices ---------------------------------------------------------


def test_six_month_email_prompt(app: Flask, frozen_clock: None) -> None:
    account_id = make_account(app)
    set_email(app, account_id)
    client = app.test_client()
    login_basis(client)  # confirmed today: no question

    clock.advance(timedelta(days=183))
    client = app.test_client()
    page = client.get("/account?lang=en", follow_redirects=True)
    page = login_password(client, page)
    assert page.request.path == "/account/email-check"
    body = page.get_data(as_text=True)
    assert "Is your e-mail address still right?" in body and OLD_MAIL in body
    done = post_form(client, page, "/account/email-check", {"action": "confirm"})
    assert done.request.path == "/account"
    assert account_row(app, account_id).email_confirmed_at == clock.now()
    # "Later" leaves it unconfirmed and goes on to the service.
    clock.advance(timedelta(days=183))
    client = app.test_client()
    page = login_password(client, client.get("/account", follow_redirects=True))
    assert page.request.path == "/account/email-check"
    done = post_form(client, page, "/account/email-check", {"action": "later"})
    assert done.request.path == "/account"
    assert account_row(app, account_id).email_confirmed_at == clock.now() - timedelta(days=183)


def test_no_email_is_asked_to_add_one(app: Flask) -> None:
    account_id = make_account(app)
    set_email(app, account_id, None)
    add_test_rp(app)
    client = app.test_client()
    page = client.get("/test-rp/start?lang=nl", follow_redirects=True)
    page = login_password(client, page)
    assert page.request.path == "/account/email-check"
    assert 'autocomplete="email"' in page.get_data(as_text=True)
    page = post_form(client, page, "/account/email-check", {"action": "send", "email": NEW_MAIL})
    assert 'name="code"' in page.get_data(as_text=True)
    answer = post_form(client, page, "/account/email-check",
                       {"action": "code", "code": e_code(app, NEW_MAIL)})
    assert answer.get_json()["ok"] is True  # back at the relying party, logged in
    account = account_row(app, account_id)
    assert account.email == NEW_MAIL and account.email_verified_at is not None


def test_login_notice_when_asked_for(app: Flask) -> None:
    account_id = make_account(app)
    set_email(app, account_id)
    add_test_rp(app)
    client = app.test_client()
    page = login_basis(client)
    assert mails(app) == []  # not asked for: no notice
    page = client.get("/account/settings")
    post_form(client, page, "/account/notices", {"notify_logins": "on"})
    assert account_row(app, account_id).notify_logins is True

    other = app.test_client()
    page = other.get("/test-rp/start?rp=portal", follow_redirects=True)
    assert login_password(other, page).get_json()["ok"] is True
    (notice,) = mails(app, OLD_MAIL)
    assert "portal" in notice["text"] and "basis" in notice["text"]
    # Single sign-on at another service is not a new login: no second notice.
    assert other.get("/test-rp/start?rp=other", follow_redirects=True).get_json()["ok"]
    assert len(mails(app, OLD_MAIL)) == 1


# --- linked European eIDs ---------------------------------------------------------------------


def test_remove_a_linked_european_eid(app: Flask) -> None:
    """The owner removes a link a desk made (midden, fresh login); that eID then logs in
    without the account. Another account's link, or a link removed already, is a 404."""
    import sqlalchemy as sa

    from gateway import audit
    from gateway.desks import eidas_links
    from gateway.desks.eidas_links import EidasLink
    from tests.test_desk_service import NOW
    from tests.test_four_eyes import Desk

    subject = "eidas:" + "ab" * 32
    with clock.frozen(NOW):
        desk = Desk(app)  # staff, and an account of its own (another person)
    account_id = make_account(app)
    set_email(app, account_id)
    with get_db(app).begin() as s:
        row = s.get(Account, account_id)
        assert row is not None
        row.bsn = "123456782"
    with clock.frozen(NOW):
        issued = eidas_links.issue_link_code(desk.s, desk.settings, subject_key=subject,
                                             attributes={"given_name": "Jan",
                                                         "family_name": "Jansen",
                                                         "birthdate": "1980-05-17",
                                                         "country": "DE"})
        desk.s.commit()
        request = desk.ask("link_eidas", {"link_code": issued.code}, ref=f"account:{account_id}")
        assert desk.decide(request).status == "approved"
        desk.s.close()
    with get_db(app).begin() as s:
        link_id = s.scalars(sa.select(EidasLink.id).where(EidasLink.account_id == account_id)).one()
        assert eidas_links.linked_account_id(s, subject) == account_id
        # A browser elsewhere logged in to the account with that eID.
        now = clock.now()
        s.add(SsoSession(id="e" * 64, account_id=account_id, subject_key=subject,
                         route="eidas", level=3, amr='["eidas"]', auth_time=now,
                         created_at=now, last_seen_at=now, rps="[]"))

    client = app.test_client()
    login_basis(client)
    settings_page = client.get("/account/settings?lang=en").get_data(as_text=True)
    assert "European eID (eIDAS)" in settings_page and "/account/eid" in settings_page
    page = client.get("/account/eid?lang=en", follow_redirects=True)
    page = step_up_with_sms(client, app, page)  # midden, and a fresh login
    assert page.request.path == "/account/eid"
    body = page.get_data(as_text=True)
    assert "Linked on 2025-03-01" in body and "Remove the link made on 2025-03-01" in body
    dutch = client.get("/account/eid?lang=nl").get_data(as_text=True)
    assert "Gekoppelde Europese eID&#39;s" in dutch or "Gekoppelde Europese eID's" in dutch
    assert "De koppeling van 2025-03-01 verwijderen" in dutch
    page = client.get("/account/eid?lang=en")

    wrong = post_form(client, page, "/account/eid/remove", {"link": "not-a-link-of-yours"})
    assert wrong.status_code == 404
    done = post_form(client, page, "/account/eid/remove", {"link": link_id})
    assert done.request.path == "/account/settings"
    assert "no longer linked to your account" in done.get_data(as_text=True)
    assert "/account/eid" not in done.get_data(as_text=True).split("<main", 1)[1]
    routes = {row.route for row in open_sessions(app, account_id)}
    assert routes == {"desk_account"}  # the eID's session ended; this browser's did not
    with get_db(app).begin() as s:
        assert s.scalars(sa.select(EidasLink)).all() == []
        assert eidas_links.linked_account_id(s, subject) is None
        actions = [(e.action, e.outcome) for e in audit.iter_entries(s)]
        assert ("account.eid_unlink", "success") in actions
    # In the account's language (Dutch).
    assert any("niet meer gekoppeld" in m["subject"] for m in mails(app, OLD_MAIL))
    history = client.get("/account/history?lang=en").get_data(as_text=True)
    assert "European eID link removed" in history
    again = post_form(client, page, "/account/eid/remove", {"link": link_id})
    assert again.status_code == 404  # removed already: nothing to do, nothing written
