"""A desk removes a European eID link made in error (gateway.desks.eidas_links.unlink_at_desk,
the page /desk/eidas-unlink): the same removal as the owner's (gateway.accounts.selfservice
.unlink_eid) with the staff member in the audit trail; the link, the eID's SSO sessions with
the account (and only those), the history event, the mail; the identity check by username and
date of birth; refusals; roles; CSRF; both languages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from gateway import clock
from gateway.accounts.history import list_events
from gateway.accounts.models import Account
from gateway.app import get_policies, get_settings
from gateway.audit import AuditEntry
from gateway.db import get_db
from gateway.desks import eidas_links, four_eyes
from gateway.desks.eidas_links import EidasLink, EidasLinkCode
from gateway.desks.models import DeskActionReason, StaffAccount
from gateway.desks.service import DeskError
from gateway.flows.sessions import SsoSession
from tests.test_desk_views import csrf_from, make_staff, post_form, web_login
from tests.test_login_flow import make_account
from tests.test_my_account import mails

PAGE = "/desk/eidas-unlink"
KNOWN = "jan.jansen"
OTHER = "eva.andere"
SUBJECT = "eidas:" + "ab" * 32
SECOND_SUBJECT = "eidas:" + "cd" * 32
STRANGER_SUBJECT = "eidas:" + "ef" * 32
IDENTITY = {"given_name": "Jan Peter", "family_name": "Müller", "birthdate": "1980-05-17",
            "country": "DE"}
SECOND_IDENTITY = {"given_name": "Juan", "family_name": "Jansen García",
                   "birthdate": "1980-05-17", "country": "ES"}
STRANGER_IDENTITY = {"given_name": "Zofia", "family_name": "Kowalska",
                     "birthdate": "1975-01-02", "country": "PL"}
REASON = "Linked to the wrong account: two applicants with the same name at the desk"


@pytest.fixture
def s(app: Flask) -> Iterator[Session]:
    with get_db(app).sessionmaker() as session:
        yield session


class Desk:
    """An officer, a supervisor and an auditor of one desk; links made the four-eyes way."""

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

    def account(self, account_id: str) -> Account:
        self.s.expire_all()
        account = self.s.get(Account, account_id)
        assert account is not None
        self.s.commit()
        return account

    def link(self, account_id: str, subject: str, identity: dict[str, str]) -> str:
        """Link `subject` to the account as a desk does: a code, a request, an approval."""
        with self.app.app_context():
            issued = eidas_links.issue_link_code(self.s, self.settings, subject_key=subject,
                                                 attributes=identity)
            self.s.commit()
            request = four_eyes.request_four_eyes(
                self.s, staff=self.staff(self.officer_web), kind="link_eidas",
                object_ref=f"account:{account_id}", payload={"link_code": issued.code},
                reason="Passport checked", settings=self.settings,
                policies=get_policies(self.app))
            outcome = four_eyes.decide_four_eyes(
                self.s, self.settings, self.app, supervisor=self.staff(self.supervisor_web),
                request_id=request.id, approve=True)
            assert outcome.status == "approved"
        link_id = self.s.scalars(
            sa.select(EidasLink.id).where(EidasLink.subject_key == subject)).one()
        self.s.commit()
        return link_id

    def links(self) -> dict[str, str]:
        """subject key -> account id of every link."""
        self.s.expire_all()
        found = {link.subject_key: link.account_id for link in self.s.scalars(sa.select(EidasLink))}
        self.s.commit()
        return found


@pytest.fixture
def desk(app: Flask, s: Session) -> Desk:
    return Desk(app, s)


def _account_with_bsn(app: Flask, username: str, bsn: str) -> str:
    account_id = make_account(app, username)
    with get_db(app).begin() as session:
        row = session.get(Account, account_id)
        assert row is not None
        row.bsn = bsn
    return account_id


@pytest.fixture
def linked(app: Flask, desk: Desk) -> dict[str, str]:
    """KNOWN with two eIDs linked, OTHER (another person) with one."""
    known = _account_with_bsn(app, KNOWN, "123456782")
    other = _account_with_bsn(app, OTHER, "111222333")
    return {
        "known": known, "other": other,
        "link": desk.link(known, SUBJECT, IDENTITY),
        "second": desk.link(known, SECOND_SUBJECT, SECOND_IDENTITY),
        "stranger": desk.link(other, STRANGER_SUBJECT, STRANGER_IDENTITY),
    }


def _officer(app: Flask, desk: Desk) -> FlaskClient:
    client = app.test_client()
    web_login(client, desk.officer_web)
    return client


def _birth(desk: Desk, account_id: str) -> str:
    return desk.account(account_id).birth_date.isoformat()


def _audit(s: Session) -> list[tuple[str, str | None, str, str | None]]:
    s.expire_all()
    found = [(e.action, e.object_ref, e.actor, e.desk)
             for e in s.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq))]
    s.commit()
    return found


def _add_session(app: Flask, sid: str, account_id: str | None, subject: str,
                 route: str = "eidas") -> None:
    now = clock.now()
    with get_db(app).begin() as session:
        session.add(SsoSession(id=sid * 64, account_id=account_id, subject_key=subject,
                               route=route, level=3, amr='["eidas"]', auth_time=now,
                               created_at=now, last_seen_at=now, rps="[]"))


def _ended(s: Session) -> dict[str, bool]:
    s.expire_all()
    found = {row.id[0]: row.ended_at is not None for row in s.scalars(sa.select(SsoSession))}
    s.commit()
    return found


# --- the removal ------------------------------------------------------------------------------


def test_the_desk_removes_a_link_at_once(
    app: Flask, s: Session, desk: Desk, linked: dict[str, str]
) -> None:
    known, other = linked["known"], linked["other"]
    _add_session(app, "a", known, SUBJECT)  # the wrongly linked eID, logged in to the account
    _add_session(app, "b", known, SECOND_SUBJECT)  # the account's other eID
    _add_session(app, "c", known, f"account:{known}", route="sms")  # the holder's own login
    _add_session(app, "d", other, STRANGER_SUBJECT)  # another person
    before = len(mails(app))
    client = _officer(app, desk)
    listed = post_form(client, PAGE + "?lang=en", {
        "username": KNOWN, "birth_date": _birth(desk, known)})
    page = listed.get_data(as_text=True)
    assert listed.status_code == 200, page[:2000]
    for shown in ("Müller", "Jan Peter", "DE", "García", "ES", "s.supervisor",
                  clock.now().strftime("%Y-%m-%d")):
        assert shown in page, shown
    assert 'value="' + linked["link"] + '"' in page
    assert "Kowalska" not in page and linked["stranger"] not in page  # nothing of others
    # Showing the eIDs' identities is recorded, like the account overview.
    assert ("account.eid_links_viewed", f"account:{known}", "staff:o.officer",
            desk.staff(desk.officer_web).desk) in _audit(s)

    done = post_form(client, PAGE + "?lang=en", {
        "step": "remove", "username": KNOWN, "birth_date": _birth(desk, known),
        "link": linked["link"], "reason": REASON}, page=page)
    assert done.status_code == 302 and "notice=removed" in done.headers["Location"]
    notice = client.get(done.headers["Location"] + "&lang=en").get_data(as_text=True)
    assert "no longer linked to the account" in notice

    assert desk.links() == {SECOND_SUBJECT: known, STRANGER_SUBJECT: other}
    assert _ended(s) == {"a": True, "b": False, "c": False, "d": False}
    with app.app_context():
        # The eIDAS route's question at the next login: no account, so no BSN.
        assert eidas_links.linked_account_id(s, SUBJECT) is None
        assert eidas_links.linked_account_id(s, SECOND_SUBJECT) == known
        s.commit()
    events = [(e.kind, e.route) for e in list_events(s, known)]
    s.commit()
    assert events.count(("eid_unlinked", "desk")) == 1
    assert all(e.kind != "eid_unlinked" for e in list_events(s, other))
    s.commit()
    entries = [e for e in _audit(s) if e[0] == "account.eid_unlinked"]
    assert entries == [("account.eid_unlinked", f"account:{known}", "staff:o.officer",
                        desk.staff(desk.officer_web).desk)]
    # The reason is kept beside that audit entry (the hash chain holds no free text).
    kept = s.execute(
        sa.select(DeskActionReason.reason)
        .join(AuditEntry, AuditEntry.seq == DeskActionReason.audit_seq)
        .where(AuditEntry.action == "account.eid_unlinked")).scalars().all()
    s.commit()
    assert kept == [REASON]
    sent = mails(app)[before:]
    assert [m["to"] for m in sent] == [f"{KNOWN}@example.org"]
    assert "niet meer gekoppeld" in sent[0]["subject"]  # the account's language (Dutch)
    assert REASON not in str(sent[0])  # the desk's reason is not mailed
    assert "door een balie" in str(sent[0]) and "Wijzig dan uw wachtwoord" not in str(sent[0])

    # Removed already: the same answer as for a link that never existed; nothing written.
    again = post_form(client, PAGE + "?lang=en", {
        "step": "remove", "username": KNOWN, "birth_date": _birth(desk, known),
        "link": linked["link"], "reason": REASON}, page=page)
    assert again.status_code == 422
    assert "no such European eID link" in again.get_data(as_text=True)
    assert len(mails(app)) == before + 1
    assert [e[0] for e in _audit(s)].count("account.eid_unlinked") == 1


def test_a_supervisor_may_remove_and_a_link_whose_code_is_gone_is_still_listed(
    app: Flask, s: Session, desk: Desk, linked: dict[str, str]
) -> None:
    known = linked["known"]
    s.execute(sa.delete(EidasLinkCode))  # purged codes: the identity can no longer be read
    s.commit()
    client = app.test_client()
    web_login(client, desk.supervisor_web)
    listed = post_form(client, PAGE + "?lang=en", {
        "username": KNOWN, "birth_date": _birth(desk, known)})
    page = listed.get_data(as_text=True)
    assert listed.status_code == 200
    assert "No longer known" in page and "Müller" not in page
    done = post_form(client, PAGE, {
        "step": "remove", "username": KNOWN, "birth_date": _birth(desk, known),
        "link": linked["second"], "reason": REASON}, page=page)
    assert done.status_code == 302
    assert set(desk.links()) == {SUBJECT, STRANGER_SUBJECT}
    assert ("account.eid_unlinked", f"account:{known}", "staff:s.supervisor",
            desk.staff(desk.supervisor_web).desk) in _audit(s)


def test_an_account_without_links_says_so(app: Flask, desk: Desk) -> None:
    account_id = make_account(app, KNOWN)
    client = _officer(app, desk)
    page = post_form(client, PAGE + "?lang=en", {
        "username": KNOWN, "birth_date": _birth(desk, account_id)})
    assert page.status_code == 200
    assert "No European eID is linked to this account." in page.get_data(as_text=True)


# --- refusals ---------------------------------------------------------------------------------


def test_the_date_of_birth_must_match_before_anything_is_shown(
    app: Flask, s: Session, desk: Desk, linked: dict[str, str]
) -> None:
    known = linked["known"]
    born = desk.account(known).birth_date
    client = _officer(app, desk)
    for username, typed, message in (
        ("nobody.here", born.isoformat(), "No account has this username"),
        (KNOWN, "", "Type the date of birth as year-month-day"),
        (KNOWN, "17-05-1980", "Type the date of birth as year-month-day"),
        (KNOWN, "1980-02-30", "Type the date of birth as year-month-day"),
        (KNOWN, born.replace(year=1981).isoformat(),
         "This date of birth does not match the account"),
    ):
        for step in ("find", "remove"):
            response = post_form(client, PAGE + "?lang=en", {
                "step": step, "username": username, "birth_date": typed,
                "link": linked["link"], "reason": REASON})
            text = response.get_data(as_text=True)
            assert response.status_code == 422 and message in text, (username, typed, step)
            assert "Müller" not in text and 'name="link"' not in text
    assert len(desk.links()) == 3
    actions = [e[0] for e in _audit(s)]
    assert "account.eid_links_viewed" not in actions
    # Every lookup that found nothing is recorded, on this page as on the others.
    assert actions.count("account.lookup_failed") == 10


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501, "line\x00break"])
def test_a_reason_is_required(
    app: Flask, s: Session, desk: Desk, linked: dict[str, str], reason: str
) -> None:
    client = _officer(app, desk)
    response = post_form(client, PAGE + "?lang=en", {
        "step": "remove", "username": KNOWN, "birth_date": _birth(desk, linked["known"]),
        "link": linked["link"], "reason": reason})
    text = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "Give a reason of at most 500 characters." in text
    assert 'href="#reason"' in text and "Müller" in text  # still on the list, with the error
    assert len(desk.links()) == 3


def test_unknown_missing_and_other_accounts_links_are_refused_alike(
    app: Flask, s: Session, desk: Desk, linked: dict[str, str]
) -> None:
    client = _officer(app, desk)
    birth = _birth(desk, linked["known"])
    missing = post_form(client, PAGE + "?lang=en", {
        "step": "remove", "username": KNOWN, "birth_date": birth, "reason": REASON})
    assert missing.status_code == 422
    assert "Choose the link to remove." in missing.get_data(as_text=True)
    answers = set()
    for link_id in (linked["stranger"], "00000000-0000-0000-0000-000000000000",
                    "x" * 37, "not a link"):
        response = post_form(client, PAGE + "?lang=en", {
            "step": "remove", "username": KNOWN, "birth_date": birth, "link": link_id,
            "reason": REASON})
        text = response.get_data(as_text=True)
        assert response.status_code == 422, link_id
        assert "This account has no such European eID link" in text
        # Nothing of the stranger's eID: not its name, nor its country anywhere in the page's
        # text (attribute values left out: a random CSRF token may hold the letters "PL").
        main = re.sub(r'="[^"]*"', '=""', text.split("<main", 1)[1])
        assert "Kowalska" not in text and "PL" not in main
        answers.add(text.split('id="error-summary-title"', 1)[1].split("</div>", 1)[0])
    assert len(desk.links()) == 3
    assert "account.eid_unlinked" not in [e[0] for e in _audit(s)]
    assert len(answers) == 1  # another account's link is answered as an unknown one


def test_the_service_refuses_an_auditor(
    app: Flask, s: Session, desk: Desk, linked: dict[str, str]
) -> None:
    with app.app_context(), pytest.raises(DeskError) as exc:
        eidas_links.unlink_at_desk(s, desk.settings, app, desk.staff(desk.auditor_web),
                                   desk.account(linked["known"]), linked["link"], REASON)
    assert exc.value.code == "forbidden"
    s.rollback()
    assert len(desk.links()) == 3


def test_the_page_needs_csrf_and_a_processing_role(
    app: Flask, s: Session, desk: Desk, linked: dict[str, str]
) -> None:
    data = {"step": "remove", "username": KNOWN, "birth_date": _birth(desk, linked["known"]),
            "link": linked["link"], "reason": REASON}
    officer = _officer(app, desk)
    assert csrf_from(officer.get(PAGE).get_data(as_text=True))
    assert officer.post(PAGE, data=data).status_code == 400  # no CSRF token
    assert officer.post(PAGE, data={**data, "csrf_token": "forged"}).status_code == 400
    auditor = app.test_client()
    web_login(auditor, desk.auditor_web)
    assert auditor.get(PAGE).status_code == 403
    token = csrf_from(auditor.get("/desk/audit").get_data(as_text=True))
    assert auditor.post(PAGE, data={**data, "csrf_token": token}).status_code == 403
    assert 'href="/desk/eidas-unlink"' not in auditor.get("/desk/audit").get_data(as_text=True)
    anonymous = app.test_client().get(PAGE)
    assert anonymous.status_code == 302 and "/desk/login" in anonymous.headers["Location"]
    assert len(desk.links()) == 3


def test_both_languages(app: Flask, s: Session, desk: Desk, linked: dict[str, str]) -> None:
    client = _officer(app, desk)
    for lang, title in (("en", "Remove a European eID link"),
                        ("nl", "Een Europese eID-koppeling verwijderen")):
        text = client.get(f"{PAGE}?lang={lang}").get_data(as_text=True)
        assert title in text and f'href="{PAGE}"' in text  # in the navigation
    birth = _birth(desk, linked["known"])
    client.get(f"{PAGE}?lang=nl")
    listed = post_form(client, PAGE, {"username": KNOWN, "birth_date": birth})
    listed_text = listed.get_data(as_text=True).replace("&#39;", "'")
    assert "Europese eID's gekoppeld aan het account" in listed_text
    for data, message in (
        ({"step": "remove", "link": "", "reason": REASON},
         "Kies de koppeling die u wilt verwijderen."),
        ({"step": "remove", "link": linked["stranger"], "reason": REASON},
         "Dit account heeft zo'n koppeling met een Europese eID niet"),
        ({"step": "remove", "link": linked["link"], "reason": ""},
         "Geef een reden van hoogstens 500 tekens."),
    ):
        response = post_form(client, PAGE, {"username": KNOWN, "birth_date": birth, **data})
        text = response.get_data(as_text=True).replace("&#39;", "'")
        assert response.status_code == 422 and message in text, message
    done = post_form(client, PAGE, {"step": "remove", "username": KNOWN, "birth_date": birth,
                                    "link": linked["link"], "reason": REASON})
    assert "niet meer gekoppeld aan het account" in client.get(
        done.headers["Location"]).get_data(as_text=True)


# --- the JSON API -----------------------------------------------------------------------------


def _api_headers(client: FlaskClient, staff: Any) -> dict[str, str]:
    response = client.post("/desk/api/session", json={
        "username": staff.username, "password": staff.password, "totp": staff.code()})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": "Bearer " + response.get_json()["token"]}


def test_the_api_removes_a_link(
    app: Flask, s: Session, desk: Desk, linked: dict[str, str]
) -> None:
    known = linked["known"]
    client = app.test_client()
    officer = _api_headers(client, desk.officer_web)
    path = f"/desk/api/accounts/{known}/eidas-links/"

    assert client.delete(path + linked["link"], json={"reason": ""},
                         headers=officer).status_code == 422
    other = client.delete(path + linked["stranger"], json={"reason": REASON}, headers=officer)
    unknown = client.delete(path + "0" * 8 + "-0000-0000-0000-" + "0" * 12,
                            json={"reason": REASON}, headers=officer)
    for refused in (other, unknown):
        assert refused.status_code == 404 and refused.get_json()["code"] == "no_such_link"
    assert other.get_json()["detail"] == unknown.get_json()["detail"]
    assert client.delete(f"/desk/api/accounts/{'0' * 8}-0000-0000-0000-{'0' * 12}"
                         f"/eidas-links/{linked['link']}", json={"reason": REASON},
                         headers=officer).status_code == 404
    auditor = _api_headers(client, desk.auditor_web)
    assert client.delete(path + linked["link"], json={"reason": REASON},
                         headers=auditor).status_code == 403
    assert len(desk.links()) == 3

    done = client.delete(path + linked["link"], json={"reason": REASON}, headers=officer)
    assert done.status_code == 200, done.get_json()
    assert done.get_json() == {"account_ref": f"account:{known}", "link_id": linked["link"]}
    assert SUBJECT not in desk.links()
    assert ("account.eid_unlinked", f"account:{known}", "staff:o.officer",
            desk.staff(desk.officer_web).desk) in _audit(s)
    again = client.delete(path + linked["link"], json={"reason": REASON}, headers=officer)
    assert again.status_code == 404
