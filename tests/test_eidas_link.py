"""Linking a European eID to a desk account (issue 8 item 4; gateway.desks.eidas_links, the
link_eidas four-eyes action, /eidas/link and /desk/eidas-link).

Service level: a link code is kept only as an HMAC with the eID's identity sealed; the
request keeps the code's row, never the code; approval writes the link, uses the code up and
audits under pseudonyms; every refusal (malformed, unknown, expired, used or replaced code,
an eID already linked, an account without a BSN or not active) leaves nothing behind.
Web level: the whole journey through the test client, with a stand-in eIDAS route that
completes the login flow at once (the real route and node are tested elsewhere).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, redirect, url_for
from flask.testing import FlaskClient
from werkzeug.wrappers import Response as BaseResponse

from gateway import audit, clock, db
from gateway.accounts.models import Account
from gateway.app import get_policies, get_settings
from gateway.db import get_db
from gateway.desks import eidas_links
from gateway.desks.eidas_links import EidasLink, EidasLinkCode, LinkError
from gateway.desks.models import FourEyesRequest
from gateway.desks.service import DeskError
from gateway.flows import login as flows
from gateway.flows.login import LoginFlow
from gateway.flows.routes import KIND_EXTERNAL, get_registry
from gateway.flows.types import RouteIdentity
from gateway.levels import Level
from tests.test_desk_views import csrf_from, make_staff, post_form, web_login
from tests.test_four_eyes import Desk

SUBJECT = "eidas:" + "ab" * 32
OTHER_SUBJECT = "eidas:" + "cd" * 32
IDENTITY = {
    "given_name": "Jan Peter", "family_name": "Müller", "birthdate": "1980-05-17",
    "country": "DE", "gender": "Male",
}


# --- service level -------------------------------------------------------------------------


@pytest.fixture
def desk(app: Flask) -> Iterator[Desk]:
    from tests.test_desk_service import NOW

    with clock.frozen(NOW):
        d = Desk(app)
        d.s.get(Account, d.account_id).status = "active"  # type: ignore[union-attr]
        d.s.commit()
        yield d
        d.s.close()


def _issue(desk: Desk, subject: str = SUBJECT,
           identity: Mapping[str, str] = IDENTITY) -> str:
    issued = eidas_links.issue_link_code(desk.s, desk.settings, subject_key=subject,
                                         attributes=identity)
    desk.s.commit()
    assert issued.expires_at == clock.now() + timedelta(days=14)
    return issued.code


def _ask_link(desk: Desk, code: str, account_id: str | None = None) -> FourEyesRequest:
    return desk.ask("link_eidas", {"link_code": code},
                    ref=f"account:{account_id or desk.account_id}")


def test_code_is_kept_as_hmac_and_the_identity_sealed(desk: Desk) -> None:
    code = _issue(desk)
    assert re.fullmatch(r"K[BCDFGHJKLMNPQRSTVWXZ2-9]{8}", code)
    row = desk.s.scalars(sa.select(EidasLinkCode)).one()
    assert row.code_hmac == eidas_links.link_code_hmac(desk.settings, code)
    assert code not in row.code_hmac
    for value in ("Müller", "Jan Peter", "1980-05-17"):
        assert value not in row.identity_sealed
    # A code is shown once: the audit log names the pseudonym and the code row, never the
    # subject key or the code.
    entries = list(audit.iter_entries(desk.s))
    issued = [e for e in entries if e.action == "eidas_link.code_issued"]
    assert len(issued) == 1
    assert issued[0].actor == eidas_links.audit_pseudonym(desk.settings, SUBJECT)
    assert issued[0].object_ref == f"eidas_link_code:{row.id}"
    assert all(SUBJECT[6:] not in str(vars(e)) and code not in str(vars(e)) for e in entries)


def test_link_is_requested_checked_and_approved(desk: Desk) -> None:
    code = _issue(desk)
    assert eidas_links.linked_account_id(desk.s, SUBJECT) is None
    request = _ask_link(desk, code.lower()[:5] + " " + code[5:])  # typed loosely
    code_row = desk.s.scalars(sa.select(EidasLinkCode)).one()
    assert request.payload == {"link_code_id": code_row.id}  # never the code itself
    outcome = desk.decide(request)
    assert outcome.status == "approved"
    desk.s.expire_all()
    link = desk.s.scalars(sa.select(EidasLink)).one()
    assert (link.subject_key, link.account_id) == (SUBJECT, desk.account_id)
    assert (link.linked_by, link.request_id) == (desk.supervisor.id, request.id)
    assert desk.s.get(EidasLinkCode, code_row.id).used_at is not None  # type: ignore[union-attr]
    assert eidas_links.linked_account_id(desk.s, SUBJECT) == desk.account_id
    actions = [e.action for e in audit.iter_entries(desk.s)]
    assert "eidas_link.code_used" in actions and "account.eidas_linked" in actions
    # Used up: a second request with the same code is refused.
    with pytest.raises(DeskError) as exc:
        _ask_link(desk, code)
    assert exc.value.code == "code_used"


def test_the_eids_sessions_from_before_the_link_end_with_it(desk: Desk) -> None:
    """Sessions of the eID that know no account would keep a --bsn service refusing it until
    they time out; the link ends them, so the next login carries the account. Sessions of
    other people, and sessions with an account, stay."""
    from gateway.flows.sessions import SsoSession

    now = clock.now()

    def sso(sid: str, subject: str, account_id: str | None) -> None:
        desk.s.add(SsoSession(id=sid * 64, account_id=account_id, subject_key=subject,
                              route="eidas", level=3, amr='["eidas"]', auth_time=now,
                              created_at=now, last_seen_at=now, rps="[]"))

    sso("a", SUBJECT, None)
    sso("b", OTHER_SUBJECT, None)
    sso("c", "account:" + desk.account_id, desk.account_id)
    desk.s.commit()
    code = _issue(desk)
    assert desk.decide(_ask_link(desk, code)).status == "approved"
    desk.s.expire_all()
    ended = {row.id[0]: row.end_reason for row in desk.s.scalars(sa.select(SsoSession))}
    assert ended == {"a": "account", "b": None, "c": None}


def test_pending_link_marks_differences_without_refusing(desk: Desk) -> None:
    code = _issue(desk, identity={**IDENTITY, "family_name": "Mueller",
                                  "birthdate": "1980-05-18"})
    pending = eidas_links.pending_link(desk.s, desk.settings, desk.account, code)
    assert pending.mismatches == ("family_name", "birthdate")
    same = eidas_links.pending_link(desk.s, desk.settings, desk.account, _issue(
        desk, OTHER_SUBJECT, {**IDENTITY, "family_name": "  MULLER "}))
    assert same.mismatches == ()  # case, accents and spacing are not differences
    # The officer's judgement: the request and the link go ahead.
    desk.decide(_ask_link(desk, code))
    assert eidas_links.linked_account_id(desk.s, SUBJECT) == desk.account_id


@pytest.mark.parametrize(
    ("typed", "error"),
    [("", "bad_code"), ("A2345BCDF", "bad_code"), ("K1234", "bad_code"),
     ("KBCDFGHJK", "code_unknown"), ("x" * 5000, "bad_payload")],
)
def test_malformed_and_unknown_codes_are_refused(desk: Desk, typed: str, error: str) -> None:
    _issue(desk)
    with pytest.raises(DeskError) as exc:
        _ask_link(desk, typed)
    assert exc.value.code == error
    desk.s.rollback()
    assert desk.s.scalar(sa.select(sa.func.count()).select_from(FourEyesRequest)) == 0


def test_codes_per_day_are_limited(desk: Desk) -> None:
    for _ in range(eidas_links.MAX_CODES_PER_DAY):
        _issue(desk)
    with pytest.raises(LinkError) as exc:
        _issue(desk)
    assert exc.value.code == "too_many_codes"
    desk.s.rollback()
    clock.advance(timedelta(days=1, seconds=1))
    _issue(desk)


def test_expired_and_replaced_codes_are_refused(desk: Desk) -> None:
    old = _issue(desk)
    new = _issue(desk)  # replaces the old one
    with pytest.raises(DeskError) as exc:
        _ask_link(desk, old)
    assert exc.value.code == "code_used"
    clock.advance(eidas_links.LINK_CODE_VALIDITY + timedelta(seconds=1))
    with pytest.raises(DeskError) as exc:
        _ask_link(desk, new)
    assert exc.value.code == "code_expired"


def test_code_expiring_before_the_decision_leaves_the_request_pending(desk: Desk) -> None:
    code = _issue(desk)
    clock.advance(eidas_links.LINK_CODE_VALIDITY - timedelta(days=1))
    request = _ask_link(desk, code)
    clock.advance(timedelta(days=1, seconds=1))  # the request is fresh, the code is not
    with pytest.raises(DeskError) as exc:
        desk.decide(request)
    assert exc.value.code == "code_expired"
    desk.s.rollback()
    desk.s.expire_all()
    assert desk.s.get(FourEyesRequest, request.id).status == "pending"  # type: ignore[union-attr]
    assert desk.s.scalar(sa.select(sa.func.count()).select_from(EidasLink)) == 0


def test_an_eid_links_to_one_account_only(desk: Desk, app: Flask) -> None:
    code = _issue(desk)
    first = _ask_link(desk, code)
    # Another account, with its own request for the same code: one approval wins.
    other = _other_account(desk)
    second = _ask_link(desk, code, other.id)
    desk.decide(first)
    with pytest.raises(DeskError) as exc:
        desk.decide(second)
    assert exc.value.code in ("code_used", "already_linked")
    desk.s.rollback()
    # And no new code can be issued for a linked eID.
    with pytest.raises(LinkError) as link_exc:
        _issue(desk)
    assert link_exc.value.code == "already_linked"


def _other_account(desk: Desk, **changes: Any) -> Account:
    account = Account(
        username="other", username_key="other", password_hash="$argon2id$unused",
        bsn=changes.pop("bsn", "123456782"), surname="Müller", given_names="Jan Peter",
        birth_date=desk.account.birth_date, nationality="NLD",
        status=changes.pop("status", "active"), created_at=clock.now(), **changes,
    )
    desk.s.add(account)
    desk.s.commit()
    return account


@pytest.mark.parametrize(
    ("changes", "error"),
    [({"bsn": None}, "no_bsn"), ({"status": "deactivated"}, "account_not_active"),
     ({"status": "pending_activation"}, "account_not_active")],
)
def test_accounts_without_bsn_or_not_active_are_refused(
    desk: Desk, changes: dict[str, Any], error: str
) -> None:
    other = _other_account(desk, **changes)
    with pytest.raises(DeskError) as exc:
        _ask_link(desk, _issue(desk), other.id)
    assert exc.value.code == error


def test_linked_account_id_only_for_active_unblocked_accounts(desk: Desk) -> None:
    desk.decide(_ask_link(desk, _issue(desk)))
    assert eidas_links.linked_account_id(desk.s, SUBJECT) == desk.account_id
    assert eidas_links.linked_account_id(desk.s, OTHER_SUBJECT) is None
    assert eidas_links.linked_account_id(desk.s, "") is None
    assert eidas_links.linked_account_id(desk.s, "x" * 500) is None
    account = desk.account
    account.blocked_until = clock.now() + timedelta(minutes=5)
    desk.s.commit()
    assert eidas_links.linked_account_id(desk.s, SUBJECT) is None
    account.blocked_until = None
    account.status = "deactivated"
    desk.s.commit()
    assert eidas_links.linked_account_id(desk.s, SUBJECT) is None


# --- web level -------------------------------------------------------------------------------


class StandInEidas:
    """An external route named "eidas" whose `start` completes the flow at once."""

    name = "eidas"
    label = "European eID"
    levels = frozenset({Level.MIDDEN, Level.SUBSTANTIEEL, Level.HOOG})
    kind = KIND_EXTERNAL
    choice_template = None

    def __init__(self) -> None:
        self.identity = RouteIdentity(subject_key=SUBJECT, level=Level.SUBSTANTIEEL,
                                      amr=("mfa",), attributes=IDENTITY)

    def configure(self, settings: Any, config: Mapping[str, Any]) -> None:
        pass

    def init_app(self, app: Flask) -> None:
        pass

    def start(self, flow: LoginFlow, form: Mapping[str, str]) -> BaseResponse:
        s = db.session()
        flows.complete_external(s, get_settings(), get_policies(), flow, self.identity)
        s.commit()
        return redirect(url_for("login.flow", flow_id=flow.id), code=303)


@pytest.fixture
def link_app(make_app: Callable[..., Flask], frozen_clock: None) -> Flask:
    app = make_app()
    get_registry(app).routes["eidas"] = StandInEidas()
    return app


def _stand_in(app: Flask) -> StandInEidas:
    route = get_registry(app).routes["eidas"]
    assert isinstance(route, StandInEidas)
    return route


def _eid_login(client: FlaskClient) -> str:
    """Start at /eidas/link, log in through the stand-in route; the page after the login."""
    start = client.get("/eidas/link?lang=en")
    assert start.status_code == 200
    assert "Link your European eID to your Dutch account" in start.get_data(as_text=True)
    into_flow = post_form(client, "/eidas/link/start", {}, page=start.get_data(as_text=True))
    assert into_flow.status_code == 303
    choose = client.get(into_flow.headers["Location"])
    page = choose.get_data(as_text=True)
    assert choose.status_code == 200 and 'value="eidas"' in page
    # The desk account cannot reach substantieel, so it is not offered.
    assert 'value="desk_account"' not in page
    flow_path = into_flow.headers["Location"]
    response = client.post(flow_path + "/route", data={
        "csrf_token": csrf_from(page), "route": "eidas"})
    for _ in range(5):
        assert response.status_code in (302, 303), response.get_data(as_text=True)[:2000]
        response = client.get(response.headers["Location"])
        if response.status_code == 200:
            break
    return str(response.get_data(as_text=True))


def _make_account(app: Flask, *, bsn: str | None = "111222333") -> str:
    from datetime import date

    with app.app_context():
        s = get_db(app).sessionmaker()
        account = Account(
            username="jan.muller", username_key="jan.muller", password_hash="$argon2id$x",
            bsn=bsn, surname="Müller", given_names="Jan Peter", birth_date=date(1980, 5, 17),
            nationality="NLD", status="active", created_at=clock.now(),
        )
        s.add(account)
        s.commit()
        account_id = account.id
        s.close()
    return account_id


def test_whole_journey_citizen_desk_supervisor(link_app: Flask) -> None:
    account_id = _make_account(link_app)
    citizen = link_app.test_client()
    page = _eid_login(citizen)
    assert "Ask for a link code" in page and "Müller" in page and "1980-05-17" in page
    shown = post_form(citizen, "/eidas/link/code?lang=en", {}, page=page)
    assert shown.status_code == 200
    assert shown.headers["Cache-Control"].startswith("no-store")
    text = shown.get_data(as_text=True)
    match = re.search(r"<strong class=\"code\">(K[A-Z0-9]{4} [A-Z0-9]{4})</strong>", text)
    assert match, text[:3000]
    code = match.group(1)
    assert "What to bring to the desk" in text and "passport or identity card" in text

    officer = make_staff(link_app, "o.officer")
    officer_client = link_app.test_client()
    web_login(officer_client, officer)
    form = officer_client.get("/desk/eidas-link?lang=en").get_data(as_text=True)
    assert "Link a European eID to an account" in form
    compared = post_form(officer_client, "/desk/eidas-link?lang=en", {
        "step": "check", "username": "jan.muller", "link_code": code}, page=form)
    compare_page = compared.get_data(as_text=True)
    assert compared.status_code == 200, compare_page[:2000]
    assert "Account and eID compared" in compare_page and "DE" in compare_page
    assert "differs" not in compare_page
    # Without the document check confirmed, nothing is requested.
    unconfirmed = post_form(officer_client, "/desk/eidas-link?lang=en", {
        "step": "request", "username": "jan.muller", "link_code": code,
        "reason": "German ID card checked"}, page=compare_page)
    assert unconfirmed.status_code == 422
    requested = post_form(officer_client, "/desk/eidas-link?lang=en", {
        "step": "request", "username": "jan.muller", "link_code": code,
        "document_checked": "yes", "reason": "German ID card checked"}, page=compare_page)
    assert requested.status_code == 302
    assert requested.headers["Location"].startswith("/desk/four-eyes")

    supervisor = make_staff(link_app, "s.supervisor", role="supervisor")
    supervisor_client = link_app.test_client()
    web_login(supervisor_client, supervisor)
    listing = supervisor_client.get("/desk/four-eyes?lang=en").get_data(as_text=True)
    assert "Link a European eID to the account" in listing
    assert "Account and eID compared" in listing and "Jan Peter" in listing
    with link_app.app_context():
        s = get_db(link_app).sessionmaker()
        request_id = s.scalars(sa.select(FourEyesRequest.id)).one()
        s.close()
    decided = post_form(supervisor_client, f"/desk/four-eyes/{request_id}/decision",
                        {"decision": "approve"}, page=listing)
    assert decided.status_code == 302 and "notice=approved" in decided.headers["Location"]

    with link_app.app_context():
        s = get_db(link_app).sessionmaker()
        assert eidas_links.linked_account_id(s, SUBJECT) == account_id
        s.close()
    # The link ended the eID's session from before it (that session knew no account): the
    # page asks for an eID login again; after it, the page says the eID is linked, and
    # offers no new code.
    assert "Ask for a link code" not in citizen.get("/eidas/link?lang=en").get_data(as_text=True)
    again = _eid_login(citizen)
    assert "already linked" in again
    assert 'action="/eidas/link/code"' not in again


def test_desk_page_refuses_bad_codes_and_accounts_without_bsn(link_app: Flask) -> None:
    _make_account(link_app, bsn=None)
    officer = make_staff(link_app, "o.officer")
    client = link_app.test_client()
    web_login(client, officer)
    for data, message in (
        ({"username": "nobody", "link_code": "KBCDFGHJK"}, "No account has this username"),
        ({"username": "jan.muller", "link_code": "garbage"}, "A link code is a K"),
        ({"username": "jan.muller", "link_code": "KBCDFGHJK"}, "This link code is not known"),
    ):
        response = post_form(client, "/desk/eidas-link?lang=en", {"step": "check", **data})
        assert response.status_code == 422
        assert message in response.get_data(as_text=True)
    with link_app.app_context():
        s = get_db(link_app).sessionmaker()
        code = eidas_links.issue_link_code(s, get_settings(link_app), subject_key=SUBJECT,
                                           attributes=IDENTITY).code
        s.commit()
        s.close()
    response = post_form(client, "/desk/eidas-link?lang=nl", {
        "step": "check", "username": "jan.muller", "link_code": code})
    assert response.status_code == 422
    assert "geen BSN" in response.get_data(as_text=True)


def test_citizen_page_needs_an_eid_login_at_substantial(link_app: Flask) -> None:
    client = link_app.test_client()
    # No login: POST /code does nothing but send the person to the start.
    start = client.get("/eidas/link").get_data(as_text=True)
    response = post_form(client, "/eidas/link/code", {}, page=start)
    assert response.status_code == 303
    with link_app.app_context():
        s = get_db(link_app).sessionmaker()
        assert s.scalar(sa.select(sa.func.count()).select_from(EidasLinkCode)) == 0
        s.close()
    # A flow id that is not this browser's, or garbage, is no login either.
    assert client.get("/eidas/link?flow=" + "x" * 43).status_code == 303
    assert client.get("/eidas/link?flow=" + "%00" * 300).status_code == 303


def test_citizen_page_in_dutch(link_app: Flask) -> None:
    page = link_app.test_client().get("/eidas/link?lang=nl").get_data(as_text=True)
    assert 'lang="nl"' in page
    assert "Koppel uw Europese eID aan uw Nederlandse account" in page


def test_api_requests_and_approves_a_link(link_app: Flask) -> None:
    from tests.test_desk_api import api_token

    account_id = _make_account(link_app)
    with link_app.app_context():
        s = get_db(link_app).sessionmaker()
        code = eidas_links.issue_link_code(s, get_settings(link_app), subject_key=SUBJECT,
                                           attributes=IDENTITY).code
        s.commit()
        s.close()
    client = link_app.test_client()
    officer = {"Authorization": "Bearer " + api_token(client, make_staff(link_app, "o.o"))}
    supervisor = {"Authorization": "Bearer " + api_token(
        client, make_staff(link_app, "s.s", role="supervisor"))}
    body = {"kind": "link_eidas", "object_ref": f"account:{account_id}",
            "reason": "Passport checked"}
    for typed, status, problem in (("KBCDFGHJK", 422, "code_unknown"),
                                   ("nonsense!", 422, None)):
        refused = client.post("/desk/api/four-eyes", headers=officer,
                              json={**body, "payload": {"link_code": typed}})
        assert refused.status_code == status
        if problem:
            assert refused.get_json()["code"] == problem
    created = client.post("/desk/api/four-eyes", headers=officer,
                          json={**body, "payload": {"link_code": code}})
    assert created.status_code == 201, created.get_json()
    link = created.get_json()["eidas_link"]
    assert link["family_name"] == "Müller" and link["country"] == "DE"
    assert link["mismatches"] == [] and code not in str(created.get_json())
    listed = client.get("/desk/api/four-eyes", headers=supervisor).get_json()["items"]
    assert listed[0]["eidas_link"]["birthdate"] == "1980-05-17"
    decided = client.post(f"/desk/api/four-eyes/{created.get_json()['id']}/decision",
                          headers=supervisor, json={"approve": True})
    assert decided.status_code == 200 and decided.get_json()["status"] == "approved"
    again = client.post("/desk/api/four-eyes", headers=officer,
                        json={**body, "payload": {"link_code": code}})
    assert again.status_code == 409 and again.get_json()["code"] == "code_used"
    document = client.get("/desk/api/openapi.json").get_json()
    payload = document["components"]["schemas"]["FourEyesPayload"]
    assert "link_code" in payload["properties"]
