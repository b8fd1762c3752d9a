"""A desk suspends a citizen's account on suspected misuse (gateway.desks.suspension) and
lifts it through four eyes (`lift_suspension`): what a suspension ends (SSO sessions, OIDC
tokens, unblock and recovery codes), what a person then sees at login (only after the right
password), that unblock and recovery answer as for anyone and send nothing, the audit trail,
history and mails, the refusals, and the desk page /desk/suspend."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from gateway import clock
from gateway.accounts import service
from gateway.accounts.history import list_events
from gateway.accounts.models import Account, AccountCode, AccountStatus
from gateway.app import get_policies, get_settings
from gateway.audit import AuditEntry
from gateway.db import get_db
from gateway.desks import four_eyes, suspension
from gateway.desks.models import DeskActionReason, FourEyesRequest, StaffAccount
from gateway.desks.service import DeskError
from gateway.flows.sessions import SsoSession
from tests.oidc_helpers import add_client, basic
from tests.test_accounts_service import mail_tokens, outbox, sms_codes
from tests.test_desk_views import csrf_from, make_staff, post_form, web_login
from tests.test_login_flow import PASSWORD, add_test_rp, make_account, token
from tests.test_no_enumeration import (  # noqa: F401 - argon2_calls is a fixture
    UNKNOWN,
    Argon2Counter,
    _login,
    _recover,
    _unblock,
    argon2_calls,
    browser,
    same_for_all,
)
from tests.test_oidc_backchannel import login as oidc_login
from tests.test_recovery_pages import policies_for_pages

KNOWN = "jan.jansen"
SUSPENDED = "sue.suspen"  # as long as the other usernames (no enumeration by length)
assert len(SUSPENDED) == len(KNOWN) == len(UNKNOWN)
REASON = "Holder reports phone and password stolen (SIM swap)"


@pytest.fixture
def app(make_app: Any, tmp_path: Path) -> Flask:
    app: Flask = make_app(policies_dir=policies_for_pages(tmp_path))
    add_test_rp(app)
    return app


@pytest.fixture
def s(app: Flask) -> Iterator[Session]:
    """A session of the test's own. No app context stays pushed: the test client's requests
    would share it, and with it their database session (on SQLite its write lock); service
    calls push one of their own (`Desk`, `in_app`)."""
    with get_db(app).sessionmaker() as session:
        yield session


def in_app(flask_app: Flask, func: Any, /, *args: Any, **kwargs: Any) -> Any:
    with flask_app.app_context():
        return func(*args, **kwargs)


class Desk:
    """An officer and a supervisor of one desk, and an auditor, as service-level staff."""

    def __init__(self, app: Flask, s: Session) -> None:
        self.app, self.s, self.settings = app, s, get_settings(app)
        self.officer_web = make_staff(app, "o.officer")
        self.supervisor_web = make_staff(app, "s.supervisor", role="supervisor")
        self.auditor_web = make_staff(app, "a.auditor", role="auditor")

    def staff(self, web: Any) -> StaffAccount:
        row = self.s.get(StaffAccount, web.id)
        assert row is not None
        self.s.commit()  # on SQLite an open read holds the write lock
        return row

    @property
    def officer(self) -> StaffAccount:
        return self.staff(self.officer_web)

    @property
    def supervisor(self) -> StaffAccount:
        return self.staff(self.supervisor_web)

    def account(self, account_id: str) -> Account:
        self.s.expire_all()
        account = self.s.get(Account, account_id)
        assert account is not None
        self.s.commit()
        return account

    def suspend(self, account_id: str, staff: StaffAccount | None = None,
                reason: str = REASON) -> None:
        in_app(self.app, suspension.suspend_account, self.s, self.settings, self.app,
               staff or self.officer, self.account(account_id), reason)

    def ask_lift(self, account_id: str, staff: StaffAccount | None = None) -> FourEyesRequest:
        return in_app(  # type: ignore[no-any-return]
            self.app, four_eyes.request_four_eyes,
            self.s, staff=staff or self.officer, kind="lift_suspension",
            object_ref=f"account:{account_id}", payload={},
            reason="Passport checked at the desk", settings=self.settings,
            policies=get_policies(self.app))

    def decide(self, request: FourEyesRequest, supervisor: StaffAccount) -> Any:
        return in_app(self.app, four_eyes.decide_four_eyes, self.s, self.settings, self.app,
                      supervisor=supervisor, request_id=request.id, approve=True)


@pytest.fixture
def desk(app: Flask, s: Session) -> Desk:
    return Desk(app, s)


def _audit_actions(s: Session) -> list[tuple[str, str | None, str]]:
    s.expire_all()
    found = [(e.action, e.object_ref, e.actor)
             for e in s.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq))]
    s.commit()
    return found


def _events(s: Session, account_id: str) -> list[str]:
    kinds = [e.kind for e in list_events(s, account_id)]
    s.commit()
    return kinds


def _mails(app: Flask) -> list[dict[str, Any]]:
    return outbox(Path(get_settings(app).mail_outbox))


def _refresh(web: FlaskClient, secret: str, refresh_token: str) -> Any:
    return web.post("/oidc/token", headers=basic("rp1", secret), data={
        "grant_type": "refresh_token", "refresh_token": refresh_token})


# --- what a suspension ends -------------------------------------------------------------------


def test_suspension_ends_sessions_tokens_and_codes_and_is_recorded(
    app: Flask, s: Session, desk: Desk
) -> None:
    account_id = make_account(app, KNOWN)
    _c, secret = add_client(app, "rp1")
    web = app.test_client()
    done = oidc_login(app, web, "rp1", secret)
    bearer = {"Authorization": "Bearer " + done["access_token"]}
    assert web.get("/oidc/userinfo", headers=bearer).status_code == 200
    # A live recovery code and e-mail token, issued before the suspension.
    in_app(app, service.start_recovery, s, desk.settings, app, username=KNOWN, ip="127.0.0.1")
    service.wait_for_deliveries(app)
    [h_code] = sms_codes(app, "H")
    [email_token] = mail_tokens(app)

    desk.suspend(account_id)

    account = desk.account(account_id)
    assert account.suspended_at is not None
    [(action, staff_actor, reason)] = s.execute(
        sa.select(AuditEntry.action, AuditEntry.actor, DeskActionReason.reason)
        .join(DeskActionReason, DeskActionReason.audit_seq == AuditEntry.seq)
        .where(AuditEntry.object_ref == f"account:{account_id}")).all()
    assert action == "account.suspended" and reason == REASON and staff_actor
    open_sessions = s.scalars(sa.select(SsoSession).where(
        SsoSession.account_id == account_id, SsoSession.ended_at.is_(None))).all()
    s.commit()
    assert open_sessions == []
    assert web.get("/oidc/userinfo", headers=bearer).status_code == 401
    refreshed = _refresh(web, secret, done["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.get_json()["error"] == "invalid_grant"
    live = s.scalars(sa.select(AccountCode).where(
        AccountCode.account_id == account_id, AccountCode.used_at.is_(None),
        AccountCode.superseded_at.is_(None))).all()
    assert live == []
    s.commit()
    with pytest.raises(service.CodeRefused) as refused:
        in_app(app, service.finish_recovery, s, desk.settings, app, username=KNOWN,
               h_code=h_code, email_token=email_token, new_password="a brand new staple",
               ip="127.0.0.1")
    assert refused.value.code == "expired"
    # The SSO session of this browser no longer serves a login.
    assert web.get("/account").status_code in (302, 303)

    assert ("account.suspended", f"account:{account_id}", "staff:o.officer") in (
        _audit_actions(s))
    assert _events(s, account_id)[0] == "suspended"
    notice = _mails(app)[-1]
    assert notice["to"] == f"{KNOWN}@example.org"
    assert "opgeschort" in notice["subject"]  # the account's language is Dutch


def test_a_code_issued_before_the_suspension_cannot_unblock(
    app: Flask, s: Session, desk: Desk
) -> None:
    account_id = make_account(app, KNOWN)
    with get_db(app).begin() as tx:
        row = tx.get(Account, account_id)
        assert row is not None
        row.blocked_until = clock.now() + timedelta(minutes=30)
    in_app(app, service.start_unblock, s, desk.settings, app, username=KNOWN,
           password=PASSWORD, ip="127.0.0.1")
    service.wait_for_deliveries(app)
    [d_code] = sms_codes(app, "D")
    desk.suspend(account_id)
    with pytest.raises(service.CodeRefused) as refused:
        in_app(app, service.finish_unblock, s, desk.settings, app, username=KNOWN,
               code=d_code, ip="127.0.0.1")
    assert refused.value.code == "expired"
    assert desk.account(account_id).blocked_until is not None


def test_a_code_cannot_be_used_while_suspended_even_if_not_superseded(
    app: Flask, s: Session, desk: Desk
) -> None:
    """The check at use, not only the superseding at suspension (a code delivered in the
    background just after the suspension)."""
    account_id = make_account(app, KNOWN)
    with get_db(app).begin() as tx:
        row = tx.get(Account, account_id)
        assert row is not None
        row.blocked_until = clock.now() + timedelta(minutes=30)
    in_app(app, service.start_unblock, s, desk.settings, app, username=KNOWN,
           password=PASSWORD, ip="127.0.0.1")
    service.wait_for_deliveries(app)
    [d_code] = sms_codes(app, "D")
    with get_db(app).begin() as tx:
        row = tx.get(Account, account_id)
        assert row is not None
        row.suspended_at = clock.now()
    with pytest.raises(service.CodeRefused) as refused:
        in_app(app, service.finish_unblock, s, desk.settings, app, username=KNOWN,
               code=d_code, ip="127.0.0.1")
    assert refused.value.code == "expired"


# --- login, unblock and recovery of a suspended account ---------------------------------------


def _suspended_account(app: Flask, desk: Desk, *, blocked: bool = False) -> str:
    account_id = make_account(app, SUSPENDED, phone="+31612345679")
    if blocked:
        with get_db(app).begin() as tx:
            row = tx.get(Account, account_id)
            assert row is not None
            row.blocked_until = clock.now() + timedelta(minutes=30)
    desk.suspend(account_id)
    return account_id


@pytest.mark.parametrize(("lang", "text"), [
    ("en", "This account has been suspended"),
    ("nl", "Dit account is opgeschort"),
])
def test_the_right_password_shows_the_suspension(
    app: Flask, desk: Desk, lang: str, text: str
) -> None:
    _suspended_account(app, desk)
    client = app.test_client()
    client.get(f"/?lang={lang}")
    response = _login(client, SUSPENDED, PASSWORD)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert text in page
    assert "Login failed" not in page and "Inloggen mislukt" not in page


def test_a_wrong_password_answers_as_any_wrong_password_and_counts(
    app: Flask, desk: Desk, argon2_calls: Argon2Counter  # noqa: F811
) -> None:
    make_account(app, KNOWN)
    account_id = _suspended_account(app, desk)
    answer, cost = same_for_all(app, argon2_calls, _login, [
        (UNKNOWN, PASSWORD),
        (KNOWN, "a wrong password"),
        (SUSPENDED, "a wrong password"),
    ])
    assert answer.status == 200 and "Login failed" in answer.body
    assert cost == Counter(verify=1)
    assert desk.account(account_id).failed_logins == 1


def test_unblock_and_recovery_answer_as_for_anyone_and_send_nothing(
    app: Flask, desk: Desk, argon2_calls: Argon2Counter  # noqa: F811
) -> None:
    make_account(app, KNOWN)
    _suspended_account(app, desk, blocked=True)
    sent_before = len(outbox(Path(get_settings(app).sms_outbox)))
    answer, _cost = same_for_all(app, argon2_calls, _unblock, [
        (UNKNOWN, PASSWORD),
        (KNOWN, PASSWORD),  # not blocked: no code either
        (SUSPENDED, PASSWORD),  # blocked AND suspended: no code
    ])
    assert answer.status == 303
    answer, _cost = same_for_all(app, argon2_calls, _recover, [
        (UNKNOWN, ""),
        (SUSPENDED, ""),
    ])
    assert answer.status == 303
    service.wait_for_deliveries(app)
    assert len(outbox(Path(get_settings(app).sms_outbox))) == sent_before
    assert sms_codes(app, "D") == [] and sms_codes(app, "H") == []


def test_a_login_flow_under_way_stops_at_its_next_step(
    app: Flask, s: Session, desk: Desk
) -> None:
    account_id = make_account(app, KNOWN)
    client = browser(app)
    page = client.get("/account", follow_redirects=True)
    assert "password" in page.get_data(as_text=True)
    response = client.post(
        re.search(r'<form action="([^"]*/password)"', page.get_data(as_text=True))
        .group(1),  # type: ignore[union-attr]
        data={"csrf_token": token(page), "username": KNOWN, "password": PASSWORD},
        follow_redirects=True,
    )
    assert response.status_code == 200
    desk.suspend(account_id)
    # My account at basis: the session that login made was ended by the suspension.
    again = client.get("/account/history", follow_redirects=True)
    assert "Usage history" not in again.get_data(as_text=True)


# --- lifting through four eyes ----------------------------------------------------------------


def test_lifting_needs_a_supervisor_and_gives_the_account_back(
    app: Flask, s: Session, desk: Desk
) -> None:
    account_id = make_account(app, KNOWN)
    desk.suspend(account_id)
    request = desk.ask_lift(account_id)
    other_officer = desk.staff(make_staff(app, "o.other"))
    with pytest.raises(DeskError) as exc:
        desk.decide(request, other_officer)
    assert exc.value.code == "forbidden"
    s.rollback()
    with pytest.raises(DeskError) as exc:
        desk.decide(request, desk.officer)  # the requester, an officer
    assert exc.value.code == "forbidden"
    s.rollback()
    assert desk.account(account_id).suspended_at is not None

    outcome = desk.decide(request, desk.supervisor)
    assert outcome.status == "approved"
    assert desk.account(account_id).suspended_at is None
    actions = [a for a, o, _ in _audit_actions(s) if o == f"account:{account_id}"]
    assert actions[-1] == "account.suspension_lifted"
    assert _events(s, account_id)[0] == "suspension_lifted"
    assert "opgeheven" in _mails(app)[-1]["subject"]
    # The password works again.
    account = in_app(app, service.check_password, s, desk.settings, get_policies(app),
                     username=KNOWN, password=PASSWORD, ip="127.0.0.1", app=app)
    assert account.id == account_id


def test_a_lift_request_for_an_account_that_is_not_suspended_is_refused(
    app: Flask, s: Session, desk: Desk
) -> None:
    account_id = make_account(app, KNOWN)
    with pytest.raises(DeskError) as exc:
        desk.ask_lift(account_id)
    assert exc.value.code == "not_suspended"
    s.rollback()
    assert s.scalars(sa.select(FourEyesRequest)).all() == []
    s.commit()


def test_approving_a_lift_that_was_lifted_meanwhile_is_refused(
    app: Flask, s: Session, desk: Desk
) -> None:
    account_id = make_account(app, KNOWN)
    desk.suspend(account_id)
    request = desk.ask_lift(account_id)
    with get_db(app).begin() as tx:
        row = tx.get(Account, account_id)
        assert row is not None
        row.suspended_at = None
    with pytest.raises(DeskError) as exc:
        desk.decide(request, desk.supervisor)
    assert exc.value.code == "not_suspended"
    s.rollback()
    s.expire_all()
    row = s.get(FourEyesRequest, request.id)
    assert row is not None and row.status == "pending"


def test_a_phone_change_does_not_lift_the_suspension(
    app: Flask, s: Session, desk: Desk
) -> None:
    account_id = make_account(app, KNOWN)
    desk.suspend(account_id)
    request = in_app(
        app, four_eyes.request_four_eyes,
        s, staff=desk.officer, kind="change_phone", object_ref=f"account:{account_id}",
        payload={"phone": "+33612345678"}, reason="New phone after the theft",
        settings=desk.settings, policies=get_policies(app))
    desk.decide(request, desk.supervisor)
    account = desk.account(account_id)
    assert account.phone_e164 == "+33612345678" and account.suspended_at is not None


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501, "stolen\x00phone"])
def test_a_reason_is_required(app: Flask, s: Session, desk: Desk, reason: str) -> None:
    account_id = make_account(app, KNOWN)
    with pytest.raises(DeskError) as exc:
        desk.suspend(account_id, reason=reason)
    assert exc.value.code == "bad_reason"
    s.rollback()
    assert desk.account(account_id).suspended_at is None


def test_suspending_twice_or_an_inactive_account_is_refused(
    app: Flask, s: Session, desk: Desk
) -> None:
    account_id = make_account(app, KNOWN)
    desk.suspend(account_id, staff=desk.supervisor)
    with pytest.raises(DeskError) as exc:
        desk.suspend(account_id)
    assert exc.value.code == "already_suspended"
    pending = make_account(app, "ans.pender", phone="+31612345670",
                           status=AccountStatus.PENDING_ACTIVATION)
    with pytest.raises(DeskError) as exc:
        desk.suspend(pending)
    assert exc.value.code == "not_active"
    assert desk.account(pending).suspended_at is None


def test_an_auditor_cannot_suspend(app: Flask, s: Session, desk: Desk) -> None:
    account_id = make_account(app, KNOWN)
    with pytest.raises(DeskError) as exc:
        desk.suspend(account_id, staff=desk.staff(desk.auditor_web))
    assert exc.value.code == "forbidden"
    s.rollback()
    assert desk.account(account_id).suspended_at is None


# --- the desk page ----------------------------------------------------------------------------


def test_the_page_suspends_in_both_languages(app: Flask, s: Session, desk: Desk) -> None:
    account_id = make_account(app, KNOWN)
    client = app.test_client()
    web_login(client, desk.officer_web)
    for lang, title in (("en", "Suspend an account"), ("nl", "Een account opschorten")):
        page = client.get(f"/desk/suspend?lang={lang}")
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert title in text and 'href="/desk/suspend"' in text  # in the navigation
    client.get("/desk/suspend?lang=en")

    born = desk.account(account_id).birth_date
    birth = born.isoformat()
    missing = post_form(client, "/desk/suspend", {
        "username": "nobody.here", "birth_date": birth, "reason": REASON})
    assert missing.status_code == 422 and "No account has this username" in missing.get_data(
        as_text=True)
    empty = post_form(client, "/desk/suspend", {
        "username": KNOWN, "birth_date": birth, "reason": ""})
    assert empty.status_code == 422
    assert "Give a reason of at most 500 characters." in empty.get_data(as_text=True)
    # A misheard username must not suspend a stranger: the date of birth has to match.
    for typed, message in (
        ("", "Type the date of birth as year-month-day"),
        ("25-03-1980", "Type the date of birth as year-month-day"),
        ("1980-02-30", "Type the date of birth as year-month-day"),
        (born.replace(year=1981).isoformat(), "This date of birth does not match the account"),
    ):
        wrong = post_form(client, "/desk/suspend", {
            "username": KNOWN, "birth_date": typed, "reason": REASON})
        assert wrong.status_code == 422 and message in wrong.get_data(as_text=True), typed
    assert desk.account(account_id).suspended_at is None
    failed = s.scalars(sa.select(AuditEntry.outcome).where(
        AuditEntry.action == "account.lookup_failed").order_by(AuditEntry.seq)).all()
    s.commit()
    assert failed == ["failure:unknown_username", "failure:bad_birth_date",
                      "failure:bad_birth_date", "failure:bad_birth_date",
                      "failure:birth_date_mismatch"]

    done = post_form(client, "/desk/suspend", {
        "username": "Jan.Jansen", "birth_date": f" {birth} ", "reason": REASON})
    assert done.status_code == 302 and "notice=suspended" in done.headers["Location"]
    notice = client.get(done.headers["Location"]).get_data(as_text=True)
    assert "The account has been suspended" in notice
    assert desk.account(account_id).suspended_at is not None

    again = post_form(client, "/desk/suspend", {
        "username": KNOWN, "birth_date": birth, "reason": REASON})
    assert again.status_code == 422 and "already suspended" in again.get_data(as_text=True)


def test_the_page_needs_csrf_and_a_processing_role(app: Flask, s: Session, desk: Desk) -> None:
    account_id = make_account(app, KNOWN)
    officer = app.test_client()
    web_login(officer, desk.officer_web)
    page = officer.get("/desk/suspend").get_data(as_text=True)
    assert csrf_from(page)
    no_token = officer.post("/desk/suspend", data={"username": KNOWN, "reason": REASON})
    assert no_token.status_code == 400
    assert desk.account(account_id).suspended_at is None

    auditor = app.test_client()
    web_login(auditor, desk.auditor_web)
    assert auditor.get("/desk/suspend").status_code == 403
    assert auditor.post("/desk/suspend", data={
        "csrf_token": csrf_from(auditor.get("/desk/audit").get_data(as_text=True)),
        "username": KNOWN, "reason": REASON}).status_code == 403
    assert desk.account(account_id).suspended_at is None
    anonymous = app.test_client().get("/desk/suspend")
    assert anonymous.status_code == 302 and "/desk/login" in anonymous.headers["Location"]


def test_the_four_eyes_form_offers_the_lift(app: Flask, s: Session, desk: Desk) -> None:
    account_id = make_account(app, KNOWN)
    desk.suspend(account_id)
    officer = app.test_client()
    web_login(officer, desk.officer_web)
    form = officer.get("/desk/four-eyes/new?lang=en").get_data(as_text=True)
    assert 'value="lift_suspension"' in form and "Lift the suspension" in form
    response = post_form(officer, "/desk/four-eyes/new", {
        "kind": "lift_suspension", "username": KNOWN, "reason": "Passport checked"})
    assert response.status_code == 302
    listed = officer.get("/desk/four-eyes?lang=nl").get_data(as_text=True)
    assert "De opschorting van het account opheffen" in listed


# --- the JSON API -----------------------------------------------------------------------------


def _api_headers(client: FlaskClient, staff: Any) -> dict[str, str]:
    response = client.post("/desk/api/session", json={
        "username": staff.username, "password": staff.password, "totp": staff.code()})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": "Bearer " + response.get_json()["token"]}


def test_the_api_suspends_and_lifts_through_four_eyes(app: Flask, s: Session, desk: Desk) -> None:
    account_id = make_account(app, KNOWN)
    client = app.test_client()
    officer = _api_headers(client, desk.officer_web)
    path = f"/desk/api/accounts/{account_id}/suspension"

    assert client.post(path, json={"reason": ""}, headers=officer).status_code == 422
    assert client.post("/desk/api/accounts/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12
                       + "/suspension", json={"reason": REASON},
                       headers=officer).status_code == 404
    auditor = _api_headers(client, desk.auditor_web)
    assert client.post(path, json={"reason": REASON}, headers=auditor).status_code == 403
    assert desk.account(account_id).suspended_at is None

    done = client.post(path, json={"reason": REASON}, headers=officer)
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["account_ref"] == f"account:{account_id}"
    again = client.post(path, json={"reason": REASON}, headers=officer)
    assert again.status_code == 409 and again.get_json()["code"] == "already_suspended"

    asked = client.post("/desk/api/four-eyes", headers=officer, json={
        "kind": "lift_suspension", "object_ref": f"account:{account_id}", "payload": {},
        "reason": "Passport checked"})
    assert asked.status_code == 201, asked.get_json()
    supervisor = _api_headers(client, desk.supervisor_web)
    decided = client.post(f"/desk/api/four-eyes/{asked.get_json()['id']}/decision",
                          headers=supervisor, json={"approve": True})
    assert decided.status_code == 200 and decided.get_json()["status"] == "approved"
    assert desk.account(account_id).suspended_at is None
    refused = client.post("/desk/api/four-eyes", headers=officer, json={
        "kind": "lift_suspension", "object_ref": f"account:{account_id}", "payload": {},
        "reason": "Passport checked"})
    assert refused.status_code == 409 and refused.get_json()["code"] == "not_suspended"


def test_the_auditor_sees_the_reason_on_the_page_and_in_the_export(
    app: Flask, s: Session, desk: Desk
) -> None:
    account_id = make_account(app, KNOWN)
    desk.suspend(account_id)
    auditor = app.test_client()
    web_login(auditor, desk.auditor_web)
    page = auditor.get("/desk/audit?lang=en").get_data(as_text=True)
    assert "account.suspended" in page and REASON in page
    export = auditor.get("/desk/audit.csv").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(export)))
    assert rows[0][-1] == "reason"
    [row] = [r for r in rows[1:] if r[5] == "account.suspended"]
    assert row[-1] == REASON
    assert all(r[-1] == "" for r in rows[1:] if r[5] != "account.suspended")
