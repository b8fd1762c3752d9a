"""The desk's account overview /desk/account (gateway.desks.account_desk): each state of an
account shown as it is (active, blocked until, suspended, pending activation with and without a
valid code, deactivated), the phone and e-mail masked and no BSN, the waiting four-eyes
requests and the actions that fit, the usage history with the My account labels, the audit
entries of a lookup and of a failed one, the date-of-birth check before anything is shown,
roles, CSRF and both languages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from gateway import clock
from gateway.accounts.history import EventKind, record_event
from gateway.accounts.models import Account, AccountCode, AccountStatus
from gateway.app import get_policies, get_settings
from gateway.audit import AuditEntry
from gateway.db import get_db
from gateway.desks import four_eyes
from gateway.desks.account_desk import masked_email
from gateway.desks.models import StaffAccount
from gateway.sms.phone import last_digits
from tests.test_desk_views import csrf_from, make_staff, post_form, web_login
from tests.test_login_flow import MOBILE, make_account

PAGE = "/desk/account"
KNOWN = "jan.jansen"
EMAIL = f"{KNOWN}@example.org"
BSN = "123456782"
UTC_MINUTE = "%Y-%m-%d %H:%M"


@pytest.fixture
def s(app: Flask) -> Iterator[Session]:
    with get_db(app).sessionmaker() as session:
        yield session


@pytest.fixture
def staff(app: Flask) -> dict[str, Any]:
    return {"officer": make_staff(app, "o.officer"),
            "supervisor": make_staff(app, "s.supervisor", role="supervisor"),
            "auditor": make_staff(app, "a.auditor", role="auditor")}


def _client(app: Flask, web: Any) -> FlaskClient:
    client = app.test_client()
    web_login(client, web)
    return client


def _change(app: Flask, account_id: str, **values: Any) -> Account:
    with get_db(app).begin() as session:
        account = session.get(Account, account_id)
        assert account is not None
        for name, value in values.items():
            setattr(account, name, value)
        session.flush()
        session.expunge(account)
    return account


def _account(app: Flask, username: str = KNOWN, **kwargs: Any) -> tuple[str, str]:
    """A new account with a BSN; its id and its holder's date of birth as typed at a desk."""
    account_id = make_account(app, username, **kwargs)
    account = _change(app, account_id, bsn=BSN if username == KNOWN else None)
    return account_id, account.birth_date.isoformat()


def _look_up(client: FlaskClient, username: str, birth: str, lang: str = "en") -> tuple[int, str]:
    response = post_form(client, f"{PAGE}?lang={lang}",
                         {"username": username, "birth_date": birth})
    return response.status_code, response.get_data(as_text=True).replace("&#39;", "'")


def _main(text: str) -> str:
    """The page's main content with attribute values left out (a random CSRF token or nonce
    may hold any digits)."""
    return re.sub(r'="[^"]*"', '=""', text.split("<main", 1)[1])


def _actions(text: str) -> str:
    """The page's "What you can do" section (the navigation links to every page too)."""
    return text.split("What you can do</h2>", 1)[1].split("<h2>", 1)[0]


def _audit(s: Session) -> list[tuple[str, str | None, str, str | None, str]]:
    s.expire_all()
    found = [(e.action, e.object_ref, e.actor, e.desk, e.outcome)
             for e in s.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq))]
    s.commit()
    return found


def _staff_row(s: Session, web: Any) -> StaffAccount:
    row = s.get(StaffAccount, web.id)
    assert row is not None
    s.commit()
    return row


def _request(app: Flask, s: Session, web: Any, account_id: str, kind: str,
             payload: dict[str, Any] | None = None) -> None:
    with app.app_context():
        four_eyes.request_four_eyes(
            s, staff=_staff_row(s, web), kind=kind, object_ref=f"account:{account_id}",
            payload=payload or {}, reason="Holder called the desk", settings=get_settings(app),
            policies=get_policies(app))


# --- the states -------------------------------------------------------------------------------


def test_an_active_account_masked_and_audited(
    app: Flask, s: Session, staff: dict[str, Any]
) -> None:
    account_id, birth = _account(app)
    _change(app, account_id, email_confirmed_at=clock.now() - timedelta(days=3))
    client = _client(app, staff["officer"])
    status, text = _look_up(client, KNOWN, birth)
    assert status == 200
    main = _main(text)
    for shown in ("Account jan.jansen.", "Active", "Not blocked", "Number ending in 78",
                  "(SMS)", "j…@example.org", "E-mail verified", "Phone verified",
                  "No four-eyes request is waiting for this account.",
                  "Failed logins in a row</dt>\n  <dd>0</dd>",
                  "BSN registered</dt>\n  <dd>yes</dd>",
                  "Authenticator app</dt>\n  <dd>no</dd>",
                  "Linked European eIDs</dt>\n  <dd>0</dd>"):
        assert shown in text, shown
    # Never the number, the address, the BSN (not even in part), a hash or a secret.
    assert MOBILE not in text and MOBILE[3:] not in text and "12345678" not in text
    assert EMAIL not in text and "jan.jansen@" not in text
    assert BSN not in text and BSN[-4:] not in main and BSN[:4] not in main
    assert "argon2" not in text
    # The actions that fit an active account: suspend, change the phone; not the others.
    actions = _actions(text)
    assert 'href="/desk/suspend"' in actions and "Change the phone number</a>" in actions
    assert "Unblock" not in actions and "Reissue" not in actions and "Lift" not in actions
    assert "eidas-unlink" not in actions
    viewed = [e for e in _audit(s) if e[0] == "account.viewed"]
    assert len(viewed) == 1 and viewed[0][1] == f"account:{account_id}"
    assert viewed[0][4] == "success" and viewed[0][3] is not None  # with the officer's desk
    assert "o.officer" in viewed[0][2]


def test_a_blocked_account_shows_until_when_and_a_waiting_unblock(
    app: Flask, s: Session, staff: dict[str, Any]
) -> None:
    account_id, birth = _account(app)
    until = clock.now() + timedelta(minutes=40)
    _change(app, account_id, blocked_until=until, failed_logins=7, block_count=1)
    client = _client(app, staff["officer"])
    status, text = _look_up(client, KNOWN, birth)
    assert status == 200
    assert "Until <time" in text and until.strftime(UTC_MINUTE) in text
    assert "Failed logins in a row</dt>\n  <dd>7</dd>" in text
    assert 'href="/desk/four-eyes/new">Unblock the account</a>' in text
    _request(app, s, staff["officer"], account_id, "unblock_account")
    status, text = _look_up(client, KNOWN, birth)
    assert "Unblock the account: a request is already waiting for a decision." in text
    assert 'href="/desk/four-eyes/new">Unblock the account</a>' not in text
    table = text.split("Four-eyes requests waiting for a decision</caption>", 1)[1]
    assert "<td>Unblock the account</td>" in table.split("</table>")[0]
    # A block that has ended is not a block.
    _change(app, account_id, blocked_until=clock.now() - timedelta(minutes=1))
    status, text = _look_up(client, KNOWN, birth)
    assert "Not blocked" in text and "Unblock the account:" not in text


def test_a_suspended_account_shows_since_when_and_how_to_lift(
    app: Flask, s: Session, staff: dict[str, Any]
) -> None:
    account_id, birth = _account(app)
    since = clock.now() - timedelta(hours=2)
    _change(app, account_id, suspended_at=since)
    status, text = _look_up(_client(app, staff["supervisor"]), KNOWN, birth)
    assert status == 200
    assert f"Since <time datetime=\"{since.isoformat()}\">{since.strftime(UTC_MINUTE)}</time>." in (
        text)
    assert "Lift the suspension with a four-eyes request" in text
    assert 'href="/desk/four-eyes/new">Lift the suspension of the account</a>' in text
    assert "/desk/suspend" not in _actions(text)


def test_a_pending_account_says_whether_its_activation_code_is_valid(
    app: Flask, s: Session, staff: dict[str, Any]
) -> None:
    account_id, birth = _account(app, status=AccountStatus.PENDING_ACTIVATION)
    client = _client(app, staff["officer"])
    status, text = _look_up(client, KNOWN, birth)
    assert status == 200 and "Not yet activated" in text
    assert "No activation code can be used any more" in text
    assert 'href="/desk/four-eyes/new">Reissue the activation code</a>' in text
    assert "Activated</dt>\n  <dd>Never</dd>" in text
    assert "Last login</dt>\n  <dd>Never</dd>" in text
    assert "Change the phone number" not in _actions(text)
    now = clock.now()
    expires = now + timedelta(days=10)
    with get_db(app).begin() as session:
        session.add(AccountCode(account_id=account_id, kind="A", code_hmac="0" * 64,
                                channel="letter", created_at=now, expires_at=expires,
                                attempts=0))
        # Codes that can no longer be typed do not count.
        session.add(AccountCode(account_id=account_id, kind="A", code_hmac="1" * 64,
                                channel="sms", created_at=now, expires_at=now + timedelta(days=20),
                                attempts=10))
        session.add(AccountCode(account_id=account_id, kind="A", code_hmac="2" * 64,
                                channel="sms", created_at=now, expires_at=now + timedelta(days=30),
                                superseded_at=now))
    status, text = _look_up(client, KNOWN, birth)
    assert f"The activation code can be used until <time datetime=\"{expires.isoformat()}\">" in (
        text)
    assert "0" * 64 not in text


@pytest.mark.parametrize("state", [AccountStatus.DEACTIVATED, AccountStatus.EXPIRED])
def test_a_closed_account_offers_no_action(
    app: Flask, s: Session, staff: dict[str, Any], state: AccountStatus
) -> None:
    account_id, birth = _account(app)
    _change(app, account_id, status=state.value)
    status, text = _look_up(_client(app, staff["officer"]), KNOWN, birth)
    assert status == 200
    label = "Deactivated by its holder" if state is AccountStatus.DEACTIVATED else "Expired"
    assert f"<dd>{label}" in text
    assert "Nobody can log in with this account any more." in text
    assert "No desk action fits this account's state." in text
    assert "<a " not in _actions(text)


def test_without_phone_or_email_and_with_app_and_history(
    app: Flask, s: Session, staff: dict[str, Any]
) -> None:
    account_id, birth = _account(app, totp_secret="JBSWY3DPEHPK3PXP", phone=None)
    _change(app, account_id, email=None, email_verified_at=None)
    with get_db(app).begin() as session:
        base = clock.now() - timedelta(days=1)
        for minute in range(12):
            record_event(session, account_id, EventKind.LOGIN, service="Belastingdienst",
                         level="midden", route="sms", at=base + timedelta(minutes=minute))
        record_event(session, account_id, EventKind.SUSPENSION_LIFTED, route="desk",
                     at=base + timedelta(hours=1))
    status, text = _look_up(_client(app, staff["officer"]), KNOWN, birth)
    assert status == 200
    assert "No phone number" in text and "No e-mail address" in text
    assert "Authenticator app</dt>\n  <dd>yes</dd>" in text and "JBSWY3DPEHPK3PXP" not in text
    history = text.split("Recent usage</h2>", 1)[1]
    assert history.count("<tr>") == 1 + 10  # the head and the last 10 events
    assert "Suspension lifted by a desk" in history and history.count("<td>Login</td>") == 9
    assert "Belastingdienst" not in history  # the overview names no relying party


# --- refusals, audit of failed lookups --------------------------------------------------------


def test_nothing_of_the_account_without_a_matching_date_of_birth(
    app: Flask, s: Session, staff: dict[str, Any]
) -> None:
    account_id, birth = _account(app)
    born = s.get(Account, account_id).birth_date  # type: ignore[union-attr]
    s.commit()
    client = _client(app, staff["officer"])
    for username, typed, message, outcome in (
        ("nobody.here", birth, "No account has this username", "failure:unknown_username"),
        ("", birth, "No account has this username", "failure:unknown_username"),
        (KNOWN, "", "Type the date of birth as year-month-day", "failure:bad_birth_date"),
        (KNOWN, "1980-02-30", "Type the date of birth as year-month-day",
         "failure:bad_birth_date"),
        (KNOWN, born.replace(year=born.year + 1).isoformat(),
         "This date of birth does not match the account", "failure:birth_date_mismatch"),
    ):
        before = len(_audit(s))
        status, text = _look_up(client, username, typed)
        assert status == 422 and message in text, (username, typed)
        assert "Account jan.jansen." not in text and "j…@example.org" not in text
        assert "Number ending in" not in text and "State</h2>" not in text
        entries = _audit(s)[before:]
        assert [(e[0], e[1], e[4]) for e in entries] == [
            ("account.lookup_failed", None, outcome)], (username, typed)
        assert "o.officer" in entries[0][2]
    assert "account.viewed" not in [e[0] for e in _audit(s)]


def test_roles_and_csrf(app: Flask, s: Session, staff: dict[str, Any]) -> None:
    _account_id, birth = _account(app)
    data = {"username": KNOWN, "birth_date": birth}
    officer = _client(app, staff["officer"])
    assert csrf_from(officer.get(PAGE).get_data(as_text=True))
    assert officer.post(PAGE, data=data).status_code == 400  # no CSRF token
    assert officer.post(PAGE, data={**data, "csrf_token": "forged"}).status_code == 400
    auditor = _client(app, staff["auditor"])
    assert auditor.get(PAGE).status_code == 403
    token = csrf_from(auditor.get("/desk/audit").get_data(as_text=True))
    assert auditor.post(PAGE, data={**data, "csrf_token": token}).status_code == 403
    assert f'href="{PAGE}"' not in auditor.get("/desk/audit").get_data(as_text=True)
    anonymous = app.test_client().get(PAGE)
    assert anonymous.status_code == 302 and "/desk/login" in anonymous.headers["Location"]
    assert not [e for e in _audit(s) if e[0].startswith("account.")]


def test_both_languages(app: Flask, s: Session, staff: dict[str, Any]) -> None:
    account_id, birth = _account(app)
    until = clock.now() + timedelta(hours=1)
    _change(app, account_id, blocked_until=until)
    client = _client(app, staff["officer"])
    for lang, title in (("en", "Look up an account"), ("nl", "Een account opzoeken")):
        text = client.get(f"{PAGE}?lang={lang}").get_data(as_text=True)
        assert f"<h1>{title}</h1>" in text and f'href="{PAGE}"' in text  # in the navigation
    status, text = _look_up(client, KNOWN, birth, lang="nl")
    assert status == 200
    for shown in ("Account jan.jansen. Alle tijden zijn in UTC.", "Actief", "Tot <time",
                  "Nummer eindigend op 78", "Wat u kunt doen", "Het account deblokkeren",
                  "Recent gebruik"):
        assert shown in text, shown
    status, text = _look_up(client, KNOWN, "1900-01-01", lang="nl")
    assert status == 422 and "Deze geboortedatum hoort niet bij het account" in text


# --- the masks --------------------------------------------------------------------------------


def test_the_masks() -> None:
    assert last_digits("+31612345678") == "78"
    assert last_digits(None) == "" and last_digits("+316") == ""
    assert masked_email("jan.jansen@example.org") == "j…@example.org"
    assert masked_email("a@b.nl") == "a…@b.nl"
    assert masked_email(None) == "" and masked_email("no-at-sign") == ""
    assert masked_email("@example.org") == ""


def test_the_navigation_keeps_its_order_whichever_page_module_came_first(
    app: Flask, staff: dict[str, Any]
) -> None:
    # This module imports the account page's module before any app exists; the menu still
    # follows VIEW_MODULES.
    client = _client(app, staff["officer"])
    page = client.get("/desk/account?lang=en").get_data(as_text=True)
    order = [page.index(f'href="{path}"') for path in (
        "/desk/applications", "/desk/four-eyes", "/desk/eidas-link", "/desk/account",
        "/desk/suspend", "/desk/eidas-unlink")]
    assert order == sorted(order)
