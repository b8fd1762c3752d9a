"""Desk staff pages (gateway.desks.views): find by desk code, the application page, the
document check, approve and reject, four-eyes, the auditor's trail; rendered in Dutch and
English, with CSRF on every form, and the whole desk flow through the test client.

The helpers at the top (staff, applications, register rows, MRZ) are shared with
tests/test_desk_api.py and tests/test_desk_schemathesis.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway import clock
from gateway.app import get_policies, get_settings
from gateway.db import get_db
from gateway.desks.codes import DESK_CODE_VALIDITY, CodeKind, code_hmac, new_code
from gateway.desks.models import Application
from gateway.desks.mrz import check_digit
from gateway.desks.register import RegisterPerson
from gateway.desks.staff import change_password, create_staff

DESK = "GB-LON"
OTHER_DESK = "FR-PAR"
PASSWORD = "lantern quietly orbit 42 pebbles"
BSN = "123456782"
BIRTH = date(1980, 4, 12)
SURNAME = "DE BRUIJN"
GIVEN = "WILLEKE LISELOTTE"
DOC_NUMBER = "XR1234567"
PHONE = "+447400123456"


# --- shared helpers -------------------------------------------------------------------------


@dataclasses.dataclass
class Staff:
    username: str
    password: str
    secret: str
    id: str

    def code(self) -> str:
        return str(pyotp.TOTP(self.secret).at(clock.now()))


def make_staff(app: Flask, username: str, role: str = "officer", desk: str = DESK) -> Staff:
    with app.app_context():
        session = get_db(app).sessionmaker()
        try:
            new = create_staff(session, get_settings(app), get_policies(app), desk=desk,
                               username=username, role=role)
            secret = parse_qs(urlsplit(new.provisioning_uri).query)["secret"][0]
            change_password(session, get_settings(app), get_policies(app), staff=new.staff,
                            current_password=new.one_time_password, new_password=PASSWORD)
            staff_id = new.staff.id
        finally:
            session.close()
    return Staff(username, PASSWORD, secret, staff_id)


def make_application(app: Flask, *, bsn: str = BSN, phone: str = PHONE,
                     phone_channel: str = "sms", username: str = "willeke80",
                     register: bool = True) -> tuple[str, str]:
    """A submitted application with a fresh desk code (and its register row); (id, code)."""
    code = new_code(CodeKind.DESK)
    now = clock.now()
    with app.app_context():
        session = get_db(app).sessionmaker()
        try:
            application = Application(
                desk_code_hmac=code_hmac(get_settings(app), CodeKind.DESK, code),
                desk_code_expires_at=now + DESK_CODE_VALIDITY,
                status="submitted", bsn=bsn, birth_date=BIRTH, nationality="NLD",
                phone_e164=phone, phone_channel=phone_channel, email="willeke@example.org",
                language="en", username=username, username_key=username.lower(),
                password_hash="$argon2id$not-a-real-hash", chosen_desk=DESK,
                created_at=now, updated_at=now,
            )
            session.add(application)
            if register and session.get(RegisterPerson, bsn) is None:
                session.add(RegisterPerson(
                    bsn=bsn, surname="de Bruijn", given_names="Willeke Liselotte",
                    date_of_birth=BIRTH, nationality="NLD", non_resident=True, updated_at=now,
                ))
            session.commit()
            application_id = application.id
        finally:
            session.close()
    return application_id, code


def _field(value: str, length: int) -> str:
    return (value + "<" * length)[:length]


def td3_mrz(*, number: str = DOC_NUMBER, expiry: date | None = None, birth: date = BIRTH,
            surname: str = SURNAME, given: str = GIVEN, personal: str = BSN) -> list[str]:
    """A Dutch passport's MRZ (ICAO 9303 Part 4) with correct check digits."""
    expiry = expiry or clock.now().date() + timedelta(days=3 * 365)
    names = surname.replace(" ", "<") + "<<" + given.replace(" ", "<")
    line1 = _field("P<NLD" + names, 44)
    num = _field(number, 9)
    birth_s, expiry_s = birth.strftime("%y%m%d"), expiry.strftime("%y%m%d")
    optional = _field(personal, 14)
    part_number = num + check_digit(num)
    part_birth = birth_s + check_digit(birth_s)
    part_expiry = expiry_s + check_digit(expiry_s)
    part_optional = optional + check_digit(optional)
    composite = check_digit(part_number + part_birth + part_expiry + part_optional)
    line2 = (part_number + "NLD" + part_birth + "F" + part_expiry + part_optional + composite)
    assert len(line2) == 44
    return [line1, line2]


def csrf_from(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page[:2000]
    return match.group(1)


def web_login(client: FlaskClient, staff: Staff) -> None:
    token = csrf_from(client.get("/desk/login").get_data(as_text=True))
    response = client.post("/desk/login", data={
        "csrf_token": token, "username": staff.username, "password": staff.password,
        "code": staff.code(),
    })
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    assert response.headers["Location"] == "/desk/"


def post_form(client: FlaskClient, path: str, data: dict[str, str], *,
              page: str | None = None) -> TestResponse:
    """POST a form with the CSRF token taken from `page` (default: GET of the same path)."""
    source = page if page is not None else client.get(path).get_data(as_text=True)
    return client.post(path, data={"csrf_token": csrf_from(source), **data})


def sms_outbox(app: Flask) -> list[dict[str, str]]:
    path = Path(get_settings(app).sms_outbox)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def desk_app(make_app: Callable[..., Flask], frozen_clock: None) -> Flask:
    return make_app()


@pytest.fixture
def officer(desk_app: Flask) -> Staff:
    return make_staff(desk_app, "o.officer")


@pytest.fixture
def officer_client(desk_app: Flask, officer: Staff) -> FlaskClient:
    client = desk_app.test_client()
    web_login(client, officer)
    return client


def _open(client: FlaskClient, code: str) -> TestResponse:
    return post_form(client, "/desk/applications", {"desk_code": code})


def _check_data(**overrides: str) -> dict[str, str]:
    data = {
        "document_type": "passport", "issuing_country": "NLD", "document_number": DOC_NUMBER,
        "expiry": (clock.now().date() + timedelta(days=3 * 365)).isoformat(),
        "mrz": "\n".join(td3_mrz()), "surname": "", "given_names": "",
    }
    data.update(overrides)
    return data


# --- rendering -----------------------------------------------------------------------------


def test_find_page_in_both_languages(officer_client: FlaskClient) -> None:
    en = officer_client.get("/desk/applications?lang=en")
    assert en.status_code == 200
    page = en.get_data(as_text=True)
    assert "Find an application" in page and "Desk code" in page
    assert re.search(r'<input[^>]*name="desk_code"[^>]*autocomplete="off"[^>]*spellcheck="false"',
                     page)
    assert '<label class="label" for="desk_code">' in page
    assert en.headers["Cache-Control"] == "no-store"
    nl = officer_client.get("/desk/applications?lang=nl").get_data(as_text=True)
    assert "Aanvraag zoeken" in nl and "Baliecode" in nl
    assert 'lang="nl"' in nl


def test_application_page_shows_data_forms_and_mrz_textarea(
    desk_app: Flask, officer_client: FlaskClient
) -> None:
    application_id, code = make_application(desk_app)
    response = _open(officer_client, code)
    assert response.status_code == 302
    assert response.headers["Location"] == f"/desk/applications/{application_id}"
    for language, words in (("en", ("From the population register", "Record the document check",
                                     "Reject the application")),
                            ("nl", ("Uit de basisregistratie personen",
                                    "Documentcontrole vastleggen", "Aanvraag afwijzen"))):
        page = officer_client.get(f"/desk/applications/{application_id}?lang={language}")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        for word in words:
            assert word in html, (language, word)
        assert BSN in html and "de Bruijn" in html
        textarea = re.search(r"<textarea[^>]*name=\"mrz\"[^>]*>", html)
        assert textarea, html
        assert 'autocomplete="off"' in textarea.group(0)
        assert 'spellcheck="false"' in textarea.group(0)
        assert html.count('name="csrf_token"') >= 3  # check, reject, logout
        assert page.headers["Cache-Control"] == "no-store"
    # Not yet checked: no approval form.
    assert 'name="delivery"' not in html


def test_application_page_needs_the_desk_code_in_this_session(
    desk_app: Flask, officer_client: FlaskClient
) -> None:
    application_id, _ = make_application(desk_app)
    response = officer_client.get(f"/desk/applications/{application_id}")
    assert response.status_code == 302
    assert "/desk/applications?notice=not_opened" in response.headers["Location"]
    # Another officer who opened it does not open it for this one.
    other = make_staff(desk_app, "x.officer")
    other_client = desk_app.test_client()
    web_login(other_client, other)
    assert other_client.get(f"/desk/applications/{application_id}").status_code == 302


@pytest.mark.parametrize("code", ["", "B", "BCDFGHJKL", "A" * 5000, "B\x00CDFGHJK", "😀" * 9,
                                  "<script>alert(1)</script>"])
def test_unknown_or_garbage_desk_codes_are_refused_with_a_message(
    officer_client: FlaskClient, code: str
) -> None:
    response = post_form(officer_client, "/desk/applications?lang=en", {"desk_code": code})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "No application has this desk code" in page
    assert "<script>alert" not in page


def test_forms_without_csrf_token_are_refused(desk_app: Flask,
                                              officer_client: FlaskClient) -> None:
    application_id, code = make_application(desk_app)
    assert officer_client.post("/desk/applications", data={"desk_code": code}).status_code == 400
    _open(officer_client, code)
    response = officer_client.post(f"/desk/applications/{application_id}/reject",
                                   data={"reason": "no"})
    assert response.status_code == 400
    with desk_app.app_context():
        s = get_db(desk_app).sessionmaker()
        assert s.get(Application, application_id).status == "submitted"
        s.close()


def test_pages_need_login_and_the_right_role(desk_app: Flask) -> None:
    client = desk_app.test_client()
    response = client.get("/desk/applications")
    assert response.status_code == 302 and "/desk/login" in response.headers["Location"]
    auditor = make_staff(desk_app, "a.auditor", role="auditor")
    web_login(client, auditor)
    assert client.get("/desk/applications").status_code == 403
    assert client.get("/desk/four-eyes").status_code == 403
    assert client.get("/desk/audit").status_code == 200


# --- the document check ---------------------------------------------------------------------


def test_check_problems_are_shown_each_with_its_message(
    desk_app: Flask, officer_client: FlaskClient
) -> None:
    application_id, code = make_application(desk_app)
    _open(officer_client, code)
    path = f"/desk/applications/{application_id}"
    expired = clock.now().date() - timedelta(days=1)
    response = post_form(
        officer_client, f"{path}/check?lang=en",
        _check_data(expiry=expired.isoformat(), mrz="\n".join(td3_mrz(expiry=expired))),
        page=officer_client.get(path).get_data(as_text=True),
    )
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "The document check found problems" in page
    assert 'data-code="document_expired"' in page
    assert "This document has expired" in page
    assert 'name="delivery"' not in page  # still not approvable


@pytest.mark.parametrize(("overrides", "field", "message"), [
    ({"document_number": "XO1234567", "mrz": ""}, "document_number", "letter O"),
    ({"mrz": "P<NLD\nGARBAGE"}, "mrz", None),
    ({"expiry": "31-12-2030"}, "expiry", "YYYY-MM-DD"),
    ({"issuing_country": "N1"}, "issuing_country", "three-letter"),
    ({"document_type": "driving_licence"}, "document_type", "passport or identity card"),
    ({"mrz": "", "surname": ""}, "surname", "surname"),
    ({"mrz": "\x00" * 50}, "mrz", None),
    ({"document_number": "X" * 5000}, "document_number", None),
])
def test_bad_check_input_is_refused_next_to_its_field(
    desk_app: Flask, officer_client: FlaskClient, overrides: dict[str, str], field: str,
    message: str | None,
) -> None:
    application_id, code = make_application(desk_app)
    _open(officer_client, code)
    path = f"/desk/applications/{application_id}"
    response = post_form(officer_client, f"{path}/check?lang=en", _check_data(**overrides),
                         page=officer_client.get(path).get_data(as_text=True))
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert f'<a href="#{field}">' in page
    assert re.search(rf'id="{field}-error"', page), page
    if message:
        assert message in page
    with desk_app.app_context():
        s = get_db(desk_app).sessionmaker()
        assert s.get(Application, application_id).status == "submitted"
        s.close()


# --- the whole flow -------------------------------------------------------------------------


def test_desk_flow_find_check_approve_puts_the_code_in_the_sms_outbox(
    desk_app: Flask, officer_client: FlaskClient
) -> None:
    application_id, code = make_application(desk_app)
    # The code as an applicant reads it out: lower case, with spaces.
    spaced = " ".join([code[:3], code[3:6], code[6:]]).lower()
    assert _open(officer_client, spaced).status_code == 302
    path = f"/desk/applications/{application_id}"
    response = post_form(officer_client, f"{path}/check?lang=en", _check_data(),
                         page=officer_client.get(path).get_data(as_text=True))
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "The document check passed" in page, page
    assert 'name="delivery"' in page
    response = post_form(officer_client, f"{path}/approve?lang=en", {"delivery": "sms"},
                         page=page)
    assert response.status_code == 200, response.get_data(as_text=True)
    done = response.get_data(as_text=True)
    assert "Application approved" in done
    messages = sms_outbox(desk_app)
    assert len(messages) == 1
    assert messages[0]["to"] == PHONE and messages[0]["channel"] == "sms"
    found = re.findall(r"\bA[BCDFGHJKLMNPQRSTVWXZ2-9]{8}\b", messages[0]["text"])
    assert found, messages[0]["text"]
    assert found[0] not in done  # the code is never shown to the officer
    with desk_app.app_context():
        s = get_db(desk_app).sessionmaker()
        application = s.get(Application, application_id)
        assert application.status == "approved" and application.account_id
        s.close()
    # The desk code is used up: finding it again says so.
    again = post_form(officer_client, "/desk/applications?lang=en", {"desk_code": code})
    assert again.status_code == 422
    assert "already been decided" in again.get_data(as_text=True)


def test_letter_approval_offers_the_pdf_once(desk_app: Flask,
                                             officer_client: FlaskClient) -> None:
    application_id, code = make_application(desk_app)
    _open(officer_client, code)
    path = f"/desk/applications/{application_id}"
    page = post_form(officer_client, f"{path}/check", _check_data(),
                     page=officer_client.get(path).get_data(as_text=True)).get_data(as_text=True)
    response = post_form(officer_client, f"{path}/approve?lang=en", {
        "delivery": "letter",
        "letter_address": "W. de Bruijn\n12 Example Street\nLondon SW1A 1AA\nUnited Kingdom",
    }, page=page)
    assert response.status_code == 200, response.get_data(as_text=True)
    html = response.get_data(as_text=True)
    match = re.search(r'href="data:application/pdf;base64,([A-Za-z0-9+/=]+)" download=', html)
    assert match, html
    assert base64.b64decode(match.group(1)).startswith(b"%PDF")
    assert response.headers["Cache-Control"] == "no-store"
    assert sms_outbox(desk_app) == []
    # Nowhere else: the application page (now decided) does not offer it again.
    later = officer_client.get(path).get_data(as_text=True)
    assert "data:application/pdf" not in later


def test_reject_with_reason(desk_app: Flask, officer_client: FlaskClient) -> None:
    application_id, code = make_application(desk_app)
    _open(officer_client, code)
    path = f"/desk/applications/{application_id}"
    page = officer_client.get(path).get_data(as_text=True)
    empty = post_form(officer_client, f"{path}/reject?lang=en", {"reason": "  "}, page=page)
    assert empty.status_code == 422
    assert '<a href="#reason">' in empty.get_data(as_text=True)
    response = post_form(officer_client, f"{path}/reject", {"reason": "Document is forged."},
                         page=page)
    assert response.status_code == 302
    assert "notice=rejected" in response.headers["Location"]
    with desk_app.app_context():
        s = get_db(desk_app).sessionmaker()
        application = s.get(Application, application_id)
        assert application.status == "rejected"
        assert application.reject_reason == "Document is forged."
        s.close()


# --- four-eyes and audit -----------------------------------------------------------------------


def test_four_eyes_pages_render_for_officer_and_supervisor(desk_app: Flask,
                                                           officer_client: FlaskClient) -> None:
    for language, title in (("en", "New four-eyes request"), ("nl", "Nieuw vier-ogenverzoek")):
        page = officer_client.get(f"/desk/four-eyes/new?lang={language}").get_data(as_text=True)
        assert title in page
        assert re.search(r'name="phone" type="tel"[^>]*autocomplete="off"', page)
    unknown = post_form(officer_client, "/desk/four-eyes/new?lang=en", {
        "kind": "unblock_account", "username": "nobody-here", "reason": "Locked out.",
    })
    assert unknown.status_code == 422
    assert "No account has this username" in unknown.get_data(as_text=True)
    listing = officer_client.get("/desk/four-eyes?lang=en")
    assert listing.status_code == 200
    assert "Waiting for a decision" in listing.get_data(as_text=True)
    # Only supervisors decide.
    decision = "/desk/four-eyes/00000000-0000-4000-8000-000000000000/decision"
    assert post_form(officer_client, decision, {"decision": "approve"},
                     page=listing.get_data(as_text=True)).status_code == 403


def test_auditor_sees_the_trail_and_downloads_csv(desk_app: Flask,
                                                  officer_client: FlaskClient) -> None:
    application_id, code = make_application(desk_app)
    _open(officer_client, code)
    path = f"/desk/applications/{application_id}"
    post_form(officer_client, f"{path}/reject", {"reason": "Wrong person."},
              page=officer_client.get(path).get_data(as_text=True))
    auditor = make_staff(desk_app, "a.auditor", role="auditor")
    client = desk_app.test_client()
    web_login(client, auditor)
    for language, word in (("en", "Audit trail"), ("nl", "Audittrail")):
        page = client.get(f"/desk/audit?lang={language}")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        assert word in html
        assert "application.rejected" in html
        assert BSN not in html
    csv_response = client.get("/desk/audit.csv")
    assert csv_response.status_code == 200
    assert csv_response.mimetype == "text/csv"
    assert "attachment" in csv_response.headers["Content-Disposition"]
    text = csv_response.get_data(as_text=True)
    assert text.splitlines()[0].startswith("seq,")
    assert f"application:{application_id}" in text


def test_four_eyes_reissue_through_the_pages(desk_app: Flask,
                                             officer_client: FlaskClient) -> None:
    application_id, code = make_application(desk_app)
    _open(officer_client, code)
    path = f"/desk/applications/{application_id}"
    page = post_form(officer_client, f"{path}/check", _check_data(),
                     page=officer_client.get(path).get_data(as_text=True)).get_data(as_text=True)
    assert post_form(officer_client, f"{path}/approve", {"delivery": "sms"},
                     page=page).status_code == 200
    assert len(sms_outbox(desk_app)) == 1

    no_delivery = post_form(officer_client, "/desk/four-eyes/new?lang=en", {
        "kind": "reissue_activation", "username": "Willeke80", "reason": "Lost the SMS.",
    })
    assert no_delivery.status_code == 422
    assert '<a href="#delivery">' in no_delivery.get_data(as_text=True)
    response = post_form(officer_client, "/desk/four-eyes/new", {
        "kind": "reissue_activation", "username": "Willeke80", "delivery": "sms",
        "reason": "Lost the SMS.",
    })
    assert response.status_code == 302, response.get_data(as_text=True)
    assert "notice=requested" in response.headers["Location"]

    supervisor = make_staff(desk_app, "s.supervisor", role="supervisor")
    client = desk_app.test_client()
    web_login(client, supervisor)
    listing = client.get("/desk/four-eyes?lang=en").get_data(as_text=True)
    assert "Reissue the activation code" in listing
    match = re.search(r'action="/desk/four-eyes/([0-9a-f-]{36})/decision"', listing)
    assert match, listing
    decided = post_form(client, f"/desk/four-eyes/{match.group(1)}/decision",
                        {"decision": "approve"}, page=listing)
    assert decided.status_code == 302, decided.get_data(as_text=True)
    assert "notice=approved" in decided.headers["Location"]
    assert len(sms_outbox(desk_app)) == 2
    assert "No requests are waiting" in client.get("/desk/four-eyes?lang=en").get_data(
        as_text=True)
