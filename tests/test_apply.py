"""The online application at /apply (issue 4, item 1 and "Bad input").

Flow tests through the test client (form -> SMS outbox and mail outbox -> database), every
field's refusal in Dutch and English, no enumeration for a BSN that already has an account,
the per-IP limit, CSRF, and hostile input that must never become a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gateway import clock
from gateway.accounts.models import Account, AccountStatus
from gateway.accounts.passwords import Passwords
from gateway.app import get_policies, get_settings
from gateway.audit import AuditEntry, pseudonymise_bsn
from gateway.db import get_db
from gateway.desks import apply
from gateway.desks.apply import get_application_service
from gateway.desks.codes import ALPHABET, DESK_CODE_VALIDITY, CodeKind, code_hmac
from gateway.desks.models import Application
from gateway.i18n import gettext
from gateway.sms.limits import LimitExceeded, LimitReason
from gateway.sms.messages import segments
from gateway.sms.phone import Channel
from gateway.sms.providers.base import OutgoingMessage, ProviderError, ProviderReceipt
from gateway.sms.providers.outbox import read_outbox

NOW = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)


def bsn_from(prefix: str) -> str:
    """A BSN that passes the eleven-test, from 8 leading digits."""
    weights = (9, 8, 7, 6, 5, 4, 3, 2)
    total = sum(w * int(d) for w, d in zip(weights, prefix, strict=True))
    for last in range(10):
        if (total - last) % 11 == 0:
            return prefix + str(last)
    raise ValueError("no check digit for this prefix; choose another")


BSN = bsn_from("11122233")
OTHER_BSN = bsn_from("12345678")
THIRD_BSN = bsn_from("23456789")


def form(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "bsn": BSN,
        "dob-day": "27",
        "dob-month": "3",
        "dob-year": "1985",
        "nationality": "NLD",
        "phone": "+31 6 12345678",
        "email": "jan@example.nl",
        "language": "nl",
        "username": "jansen85",
        "password": "plakband kinderfiets wolk",
        "desk": "FR-PAR",
    }
    values.update(overrides)
    return values


def csrf(client: FlaskClient, lang: str = "en") -> str:
    body = client.get(f"/apply?lang={lang}").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', body)
    assert match is not None
    return match.group(1)


def post(client: FlaskClient, lang: str = "en", token: str | None = None, **overrides: Any) -> Any:
    data = form(**overrides)
    data["csrf_token"] = token if token is not None else csrf(client, lang)
    return client.post(f"/apply?lang={lang}", data=data)


def sms_outbox(app: Flask) -> list[dict[str, Any]]:
    path = get_settings(app).sms_outbox
    return list(read_outbox(path)) if path.exists() else []


def mail_outbox(app: Flask) -> list[dict[str, Any]]:
    path: Path = get_settings(app).mail_outbox
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def applications(app: Flask) -> list[Application]:
    with get_db(app).sessionmaker() as session:
        return list(session.scalars(sa.select(Application)))


def accounts(app: Flask) -> list[Account]:
    with get_db(app).sessionmaker() as session:
        return list(session.scalars(sa.select(Account)))


def add_account(app: Flask, *, bsn: str, username: str = "bestaand1",
                email: str | None = "houder@example.org", language: str = "en") -> None:
    with get_db(app).begin() as session:
        session.add(Account(
            username=username, username_key=username.lower(), password_hash="x", bsn=bsn,
            surname="Houder", given_names="Anna", birth_date=date(1970, 1, 1),
            nationality="NLD", email=email, language=language,
            status=AccountStatus.ACTIVE.value, created_at=clock.now(),
        ))


def translated(app: Flask, message: str, lang: str) -> str:
    with app.test_request_context(f"/?lang={lang}"):
        return gettext(message)


def page_text(response: Any) -> str:
    """The HTML with the per-render values (CSRF token) taken out."""
    return re.sub(r'name="csrf_token" value="[^"]+"', "", response.get_data(as_text=True))


@pytest.fixture
def at_now() -> Iterator[None]:
    with clock.frozen(NOW):
        yield


# --- the form -------------------------------------------------------------------------------

EXPECTED_AUTOCOMPLETE = {
    "bsn": "off",
    "dob-day": "bday-day",
    "dob-month": "bday-month",
    "dob-year": "bday-year",
    "phone": "tel",
    "email": "email",
    "username": "username",
    "password": "new-password",
}


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_every_input_carries_its_autocomplete_token(client: FlaskClient, lang: str) -> None:
    body = client.get(f"/apply?lang={lang}").get_data(as_text=True)
    inputs = re.findall(r"<input\b[^>]*>", body)
    seen = {}
    for tag in inputs:
        if 'type="hidden"' in tag:
            continue
        name = re.search(r'name="([^"]+)"', tag)
        token = re.search(r'autocomplete="([^"]+)"', tag)
        assert name is not None and token is not None, tag
        seen[name.group(1)] = token.group(1)
    assert seen == EXPECTED_AUTOCOMPLETE
    assert re.search(r'<select[^>]*name="language"[^>]*autocomplete="language"', body)
    assert 'type="tel"' in body and 'type="email"' in body and 'type="password"' in body
    # Every visible input and select has a label pointing at it.
    for field_id in [*EXPECTED_AUTOCOMPLETE, "nationality", "language", "desk"]:
        assert f'<label class="label" for="{field_id}">' in body


def test_choices_come_from_the_policies_in_the_page_language(app: Flask,
                                                             client: FlaskClient) -> None:
    policies = get_policies(app)
    nl = client.get("/apply?lang=nl").get_data(as_text=True)
    en = client.get("/apply?lang=en").get_data(as_text=True)
    nationalities = re.findall(r'<option value="([A-Z]{3})"', nl)
    assert sorted(nationalities) == sorted(policies.eligibility.nationalities)
    assert nationalities[0] == "NLD"
    assert ">Duitsland<" in nl and ">Germany<" in en
    groups = re.findall(r'<optgroup label="([^"]+)"', en)
    assert groups == ["Abroad: embassies and consulates", "Caribbean part of the Kingdom",
                      "In the Netherlands", "By video call"]
    assert re.findall(r'<optgroup label="([^"]+)"', nl)[0] == (
        "In het buitenland: ambassades en consulaten"
    )
    desks = re.findall(r'<option value="([A-Z][A-Z0-9-]+)">', en)
    assert set(desks) - set(nationalities) == {d.code for d in policies.desks.desks}
    # Desk names in the page's language (policies/desks.yaml name_nl).
    assert "Embassy Paris (France)" in en and "Ambassade Parijs (Frankrijk)" in nl
    assert "Embassy Paris" not in nl and "Ambassade Parijs" not in en
    assert ">Gemeente Maastricht<" in nl and ">Municipality of Maastricht<" in en


# --- the happy path ---------------------------------------------------------------------------


def test_application_sends_a_desk_code_by_sms_and_by_mail(app: Flask, client: FlaskClient,
                                                          at_now: None) -> None:
    response = post(client, lang="nl")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/apply/sent")

    (row,) = applications(app)
    assert row.status == "submitted"
    assert row.bsn == BSN and row.birth_date == date(1985, 3, 27) and row.nationality == "NLD"
    assert row.phone_e164 == "+31612345678" and row.phone_channel == "sms"
    assert row.email == "jan@example.nl" and row.language == "nl"
    assert row.username == "jansen85" and row.username_key == "jansen85"
    assert row.chosen_desk == "FR-PAR"
    assert row.desk_code_expires_at == NOW + DESK_CODE_VALIDITY == NOW + timedelta(days=30)
    policy = get_policies(app).accounts.password
    assert Passwords(policy).verify(row.password_hash, "plakband kinderfiets wolk")
    assert "plakband" not in row.password_hash

    (sms,) = sms_outbox(app)
    assert sms["to"] == "+31612345678" and sms["channel"] == "sms"
    match = re.search(r"\bB[A-Z0-9]{8}\b", sms["text"])
    assert match is not None
    code = match.group()
    assert len(code) == 9 and code[0] == "B" and all(c in ALPHABET for c in code[1:])
    assert code_hmac(get_settings(app), CodeKind.DESK, code) == row.desk_code_hmac
    assert code not in row.desk_code_hmac
    assert "baliecode" in sms["text"]  # in the applicant's language (Dutch)

    (mail,) = mail_outbox(app)
    assert mail["to"] == "jan@example.nl"
    # The applicant chose Dutch: the desk is named in Dutch.
    assert code in mail["text"] and "Ambassade Parijs (Frankrijk)" in mail["text"]
    assert "baliecode" in mail["subject"].lower()
    assert "plakband" not in mail["text"]

    with get_db(app).sessionmaker() as session:
        entries = list(session.scalars(sa.select(AuditEntry)))
    (entry,) = [e for e in entries if e.action == "application.submitted"]
    assert entry.actor == pseudonymise_bsn(get_settings(app), BSN)
    assert entry.object_ref == f"application:{row.id}" and entry.desk == "FR-PAR"
    assert entry.outcome == "submitted"
    assert all(BSN not in (e.actor + (e.object_ref or "")) for e in entries)

    sent = client.get("/apply/sent?lang=en")
    text = sent.get_data(as_text=True)
    assert sent.status_code == 200
    assert "Embassy Paris (France)" in text and "30 days" in text
    assert "passport or identity card" in text


def test_an_english_application_gets_english_messages(app: Flask, client: FlaskClient) -> None:
    assert post(client, lang="nl", language="en").status_code == 303
    (sms,) = sms_outbox(app)
    assert "your desk code is B" in sms["text"]
    (mail,) = mail_outbox(app)
    assert mail["subject"] == "Your desk code for your login from abroad"


def test_a_landline_gets_the_desk_code_by_voice_call(app: Flask, client: FlaskClient) -> None:
    assert post(client, phone="020 123 4567").status_code == 303
    (row,) = applications(app)
    assert row.phone_e164 == "+31201234567" and row.phone_channel == "voice"
    (call,) = sms_outbox(app)
    assert call["channel"] == "voice"
    spelled = re.search(r"B(, [A-Z0-9]){8}", call["text"])
    assert spelled is not None
    code = spelled.group().replace(", ", "")
    assert code_hmac(get_settings(app), CodeKind.DESK, code) == row.desk_code_hmac


def test_video_desk_confirmation_says_to_book_a_call(client: FlaskClient) -> None:
    assert post(client, desk="VIDEO").status_code == 303
    text = client.get("/apply/sent?lang=en").get_data(as_text=True)
    assert "Make an appointment for a video call" in text


@pytest.mark.parametrize("language", ["nl", "en"])
@pytest.mark.parametrize("channel", [Channel.SMS, Channel.VOICE])
def test_desk_code_texts_are_single_gsm7_segments(language: str, channel: Channel) -> None:
    text = apply.desk_code_message("BZZZZZZZZ", language, channel)
    if channel is Channel.SMS:
        assert segments(text) .encoding == "GSM-7" and segments(text).count == 1
        assert "BZZZZZZZZ" in text
    else:
        assert "B, Z, Z, Z, Z, Z, Z, Z, Z" in text
    assert "30" in text


# --- each field refused with its own message ----------------------------------------------

MINE = {
    "future": ("Your date of birth must be in the past.",
               "Uw geboortedatum moet in het verleden liggen."),
    "nationality": ("You can apply only with a nationality from the list: Dutch, or that of a "
                    "country of the European Economic Area or Switzerland.",
                    "U kunt alleen aanvragen met een nationaliteit uit de lijst: de Nederlandse, "
                    "of die van een land van de Europese Economische Ruimte of Zwitserland."),
    "desk": ("This desk does not exist. Choose a desk from the list.",
             "Deze balie bestaat niet. Kies een balie uit de lijst."),
    "username_chars": ("Your username may contain only letters (a to z), digits, dots, dashes "
                       "and underscores, and must start with a letter or a digit.",
                       "Uw gebruikersnaam mag alleen letters (a tot z), cijfers, punten, "
                       "streepjes en liggende streepjes bevatten, en moet beginnen met een "
                       "letter of een cijfer."),
    "dob_invalid": ("Enter a real date of birth, for example 27 3 1985.",
                    "Vul een bestaande geboortedatum in, bijvoorbeeld 27 3 1985."),
    "dob_incomplete": ("Your date of birth must include a day, a month and a year.",
                       "Uw geboortedatum moet een dag, een maand en een jaar bevatten."),
    "language": ("Choose Dutch or English for our messages to you.",
                 "Kies Nederlands of Engels voor onze berichten aan u."),
}

#: (overrides, field id, English message; Dutch: MINE's, or the catalog's for others' messages)
REFUSALS: list[tuple[str, dict[str, str], str, str]] = [
    ("bad eleven-test", {"bsn": "123456789"}, "bsn",
     "This is not a valid BSN. Check the digits on your letter or document."),
    ("empty BSN", {"bsn": ""}, "bsn", "Enter your BSN (citizen service number)."),
    ("future birth date", {"dob-year": "2031"}, "dob-day", MINE["future"][0]),
    ("30 February", {"dob-day": "30", "dob-month": "2"}, "dob-day", MINE["dob_invalid"][0]),
    ("year 1899", {"dob-year": "1899"}, "dob-day", MINE["dob_invalid"][0]),
    ("no month", {"dob-month": ""}, "dob-day", MINE["dob_incomplete"][0]),
    ("ineligible nationality", {"nationality": "USA"}, "nationality", MINE["nationality"][0]),
    ("premium-rate phone", {"phone": "0900 1234567"}, "phone",
     "This is a premium-rate number. We never send codes to paid service numbers. "
     "Please use a mobile phone number."),
    ("bad e-mail", {"email": "jan@@example"}, "email",
     "Enter a valid e-mail address, for example name@example.com."),
    ("language", {"language": "de"}, "language", MINE["language"][0]),
    ("username characters", {"username": "jan sen<85>"}, "username", MINE["username_chars"][0]),
    ("username without a letter", {"username": BSN}, "username",
     "Your username must contain at least one letter."),
    ("short password", {"password": "kort"}, "password",
     "Choose a password of at least 8 characters."),
    ("common password", {"password": "sunshine"}, "password",
     "This password is too common and easy to guess. Choose another one, for example a few "
     "unrelated words."),
    ("password = username", {"password": "Jansen85"}, "password",
     "Your password must not be your username."),
    ("unknown desk", {"desk": "XX-NOPE"}, "desk", MINE["desk"][0]),
]


def _dutch(english: str) -> str:
    return next((nl for en, nl in MINE.values() if en == english), "")


@pytest.mark.parametrize(("case", "overrides", "field", "english"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_each_field_is_refused_with_its_own_message(
    app: Flask, client: FlaskClient, case: str, overrides: dict[str, str], field: str,
    english: str,
) -> None:
    dutch = _dutch(english) or translated(app, english, "nl")
    assert dutch and dutch != english, f"no Dutch for {english!r}"
    for lang, message in (("en", english), ("nl", dutch)):
        response = post(client, lang=lang, **overrides)
        assert response.status_code == 422, case
        body = response.get_data(as_text=True)
        escaped = message.replace("'", "&#39;").replace('"', "&#34;")
        # In the summary, linked to the field, and beside the field.
        assert f'<li><a href="#{field}">{escaped}</a></li>' in body, (case, lang)
        assert f'id="{"dob" if field == "dob-day" else field}-error"' in body
        assert re.search(rf'id="{field}"[^>]*aria-invalid="true"', body)
    assert applications(app) == [] and sms_outbox(app) == [] and mail_outbox(app) == []


def test_the_form_comes_back_with_values_but_never_the_password(client: FlaskClient) -> None:
    response = post(client, nationality="USA", email="Jan.Jansen@Example.NL")
    body = response.get_data(as_text=True)
    assert 'value="Jan.Jansen@Example.NL"' in body
    assert f'value="{BSN}"' in body and 'value="jansen85"' in body
    assert 'value="1985"' in body
    assert 'option value="FR-PAR" selected' in body
    assert "plakband" not in body


def test_all_problems_are_listed_in_form_order(client: FlaskClient) -> None:
    token = csrf(client)
    response = client.post("/apply?lang=en", data={"csrf_token": token})
    assert response.status_code == 422
    links = re.findall(r'<li><a href="#([a-z-]+)">', response.get_data(as_text=True))
    assert links == ["bsn", "dob-day", "nationality", "phone", "email", "language",
                     "username", "password", "desk"]


def test_csrf_token_missing_or_wrong_is_refused(app: Flask, client: FlaskClient) -> None:
    csrf(client)
    response = client.post("/apply", data=form())
    assert response.status_code == 400
    response = client.post("/apply", data={**form(), "csrf_token": "A" * 86})
    assert response.status_code == 400
    assert applications(app) == [] and sms_outbox(app) == [] and mail_outbox(app) == []


# --- usernames ------------------------------------------------------------------------------


def test_a_taken_username_is_named(app: Flask, client: FlaskClient) -> None:
    add_account(app, bsn=OTHER_BSN, username="jansen85")
    response = post(client, username="JANSEN85")
    assert response.status_code == 422
    assert "This username is already in use. Choose another username." in response.get_data(
        as_text=True)
    dutch = post(client, lang="nl", username="jansen85").get_data(as_text=True)
    assert "Deze gebruikersnaam is al in gebruik. Kies een andere gebruikersnaam." in dutch
    assert applications(app) == []


def test_a_username_held_by_an_open_application_is_taken(app: Flask,
                                                         client: FlaskClient) -> None:
    assert post(client).status_code == 303
    response = post(client, bsn=OTHER_BSN, phone="+31 6 12345679", username="Jansen85")
    assert response.status_code == 422
    assert "Choose another username" in response.get_data(as_text=True)
    assert len(applications(app)) == 1


def test_a_username_of_an_expired_application_is_free_again(app: Flask,
                                                            client: FlaskClient) -> None:
    with clock.frozen(NOW):
        assert post(client).status_code == 303
    with clock.frozen(NOW + DESK_CODE_VALIDITY + timedelta(minutes=1)):
        assert post(client, bsn=OTHER_BSN, phone="+31 6 12345679").status_code == 303
    assert len(applications(app)) == 2


# --- no enumeration -------------------------------------------------------------------------


def _apply_and_confirm(app: Flask, **overrides: Any) -> tuple[int, str, int, str]:
    client = app.test_client()
    response = post(client, lang="en", **overrides)
    sent = client.get(response.headers.get("Location", "/apply/sent"))
    return response.status_code, response.headers.get("Location", ""), sent.status_code, page_text(
        sent)


def test_an_existing_account_gets_the_same_answer_and_an_email(app: Flask) -> None:
    add_account(app, bsn=OTHER_BSN, email="houder@example.org", language="en")

    fresh = _apply_and_confirm(app)
    existing = _apply_and_confirm(app, bsn=OTHER_BSN, username="andere1", email="ander@example.net",
                                  phone="+31 6 12345679")
    assert fresh == existing
    assert fresh[0] == 303 and fresh[2] == 200

    # Only the fresh application exists, and only its code was sent.
    (row,) = applications(app)
    assert row.bsn == BSN
    assert len(accounts(app)) == 1
    assert [m["to"] for m in sms_outbox(app)] == ["+31612345678"]
    mails = mail_outbox(app)
    assert sorted(m["to"] for m in mails) == ["houder@example.org", "jan@example.nl"]
    (warning,) = [m for m in mails if m["to"] == "houder@example.org"]
    assert warning["subject"] == "Someone applied for a login with your details"
    assert not re.search(r"\bB[A-Z0-9]{8}\b", warning["text"])
    assert "ander@example.net" not in json.dumps(mails)

    with get_db(app).sessionmaker() as session:
        outcomes = sorted(session.scalars(
            sa.select(AuditEntry.outcome).where(AuditEntry.action == "application.submitted")))
    assert outcomes == ["duplicate_account", "submitted"]


def test_an_open_application_gets_the_same_answer_and_its_holder_an_email(app: Flask) -> None:
    first = _apply_and_confirm(app)
    again = _apply_and_confirm(app, username="andere1", email="ander@example.net",
                               phone="+31 6 12345679", language="en")
    assert first == again
    assert len(applications(app)) == 1 and len(sms_outbox(app)) == 1
    mails = mail_outbox(app)
    assert [m["to"] for m in mails] == ["jan@example.nl", "jan@example.nl"]
    # The holder's language (Dutch), not the one typed the second time.
    assert mails[1]["subject"] == "Iemand heeft opnieuw aangevraagd met uw gegevens"


def test_sms_limits_answer_the_same_for_an_existing_account(app: Flask,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    add_account(app, bsn=OTHER_BSN)
    limiter = get_application_service(app).sms.limiter

    def refuse(**_kwargs: Any) -> None:
        raise LimitExceeded(LimitReason.PER_NUMBER, 600)

    monkeypatch.setattr(limiter, "check_and_count", refuse)
    answers = []
    for bsn in (BSN, OTHER_BSN):
        response = post(app.test_client(), bsn=bsn)
        # The typed BSN is shown back; everything else must be the same.
        answers.append((response.status_code, page_text(response).replace(bsn, "[bsn]")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 429 and "Too many codes have been asked for" in answers[0][1]
    assert applications(app) == [] and mail_outbox(app) == []


def test_the_password_is_hashed_on_both_paths(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    add_account(app, bsn=OTHER_BSN)
    hashed: list[str] = []
    original = Passwords.hash

    def spy(self: Passwords, password: str) -> str:
        hashed.append(password)
        return original(self, password)

    monkeypatch.setattr(Passwords, "hash", spy)
    assert post(app.test_client(), bsn=OTHER_BSN).status_code == 303
    assert post(app.test_client(), bsn=BSN, username="ander12").status_code == 303
    assert len(hashed) == 2


# --- abuse and failures ---------------------------------------------------------------------


def test_submissions_per_ip_are_limited(app: Flask, client: FlaskClient) -> None:
    token = csrf(client)
    for _ in range(apply.SUBMISSIONS_PER_IP_PER_HOUR):
        assert post(client, token=token, bsn="").status_code == 422
    refused = post(client, token=token)
    assert refused.status_code == 429
    assert "Too many applications have been sent from your internet connection" in (
        refused.get_data(as_text=True))
    assert applications(app) == [] and sms_outbox(app) == []

    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert post(other).status_code == 303


def test_the_per_ip_limit_fails_closed(app: Flask, client: FlaskClient,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.store import StoreUnavailable

    token = csrf(client)
    service = get_application_service(app)

    def down(*_args: Any, **_kwargs: Any) -> int:
        raise StoreUnavailable("down")

    monkeypatch.setattr(service.store, "incr", down)
    response = post(client, token=token)
    assert response.status_code == 503
    assert applications(app) == [] and sms_outbox(app) == []


class Broken:
    name = "broken"
    channels = frozenset({"sms", "voice"})

    def send(self, msg: OutgoingMessage) -> ProviderReceipt:
        raise ProviderError("refused")


def test_nothing_is_kept_when_the_sms_cannot_be_sent(app: Flask, client: FlaskClient,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    dispatcher = get_application_service(app).sms.dispatcher
    monkeypatch.setattr(dispatcher, "providers", (Broken(),))
    response = post(client)
    assert response.status_code == 503
    assert "your application has not been saved" in response.get_data(as_text=True)
    assert applications(app) == [] and mail_outbox(app) == []
    with get_db(app).sessionmaker() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AuditEntry)) == 0
    # Once the provider is back, the same person can apply (nothing left holds the username).
    monkeypatch.undo()
    assert post(client).status_code == 303


# --- hostile input --------------------------------------------------------------------------

HOSTILE = [
    "A" * 100_000,
    "\x00",
    "1234\x0056782",
    "\u202e" + BSN,
    "１２３４５６７８２",
    "😀" * 50,
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "%(min)d %s {0}",
    "\r\nBcc: x@example.org",
    " ",
]


@pytest.mark.parametrize("field", apply.FIELDS)
def test_hostile_values_never_cause_a_server_error(app: Flask, field: str) -> None:
    get_application_service(app).per_ip_per_hour = 10_000
    client = app.test_client()
    token = csrf(client)
    for value in HOSTILE:
        response = post(client, token=token, **{field: value})
        assert response.status_code in (303, 422), (field, value[:20])
        assert "<script>alert" not in response.get_data(as_text=True)
    # A field sent several times is refused, not a 500 (and never half-read).
    data = {**form(), "csrf_token": token}
    data[field] = [form()[field], "x"]
    assert client.post("/apply?lang=en", data=data).status_code == 422


def test_a_json_body_or_arrays_never_cause_a_server_error(app: Flask, client: FlaskClient) -> None:
    token = csrf(client)
    response = client.post("/apply?lang=en", json={"bsn": [BSN], "dob-day": {"a": 1}},
                           headers={"X-CSRF-Token": token})
    assert response.status_code == 422
    response = client.post("/apply?lang=en", data=b"\xff\xfe\x00garbage",
                           content_type="application/x-www-form-urlencoded",
                           headers={"X-CSRF-Token": token})
    assert response.status_code in (400, 422)
    assert applications(app) == []


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(
    st.sampled_from(apply.FIELDS),
    st.one_of(st.text(max_size=300), st.lists(st.text(max_size=5), max_size=3), st.none(),
              st.integers(), st.binary(max_size=20)),
))
def test_validate_never_raises(raw: dict[str, object]) -> None:
    from gateway.policy import load_policies
    from gateway.settings import DEFAULT_POLICIES_DIR

    policies = _policies(load_policies, DEFAULT_POLICIES_DIR)
    valid, errors = apply.validate(raw, policies, today=date(2026, 3, 10))
    assert (valid is None) == bool(errors)
    assert set(errors) <= set(apply.FIELDS)
    for message in errors.values():
        assert str(message)
    echoed = apply.echo_values(raw)
    assert "password" not in echoed
    assert all(len(v) <= apply.MAX_ECHO_CHARS and "\x00" not in v for v in echoed.values())


_POLICY_CACHE: dict[str, Any] = {}


def _policies(loader: Any, folder: Path) -> Any:
    if "p" not in _POLICY_CACHE:
        _POLICY_CACHE["p"] = loader(folder)
    return _POLICY_CACHE["p"]


def test_validate_accepts_a_good_form_and_normalises_it() -> None:
    from gateway.policy import load_policies
    from gateway.settings import DEFAULT_POLICIES_DIR

    policies = _policies(load_policies, DEFAULT_POLICIES_DIR)
    valid, errors = apply.validate(
        form(bsn=f" {BSN[:3]}.{BSN[3:6]}.{BSN[6:]} ", username=" Jansen85 ", nationality="nld",
             email=" jan@EXAMPLE.nl "),
        policies, today=date(2026, 3, 10),
    )
    assert errors == {}
    assert valid is not None
    assert valid.bsn == BSN and valid.username == "Jansen85" and valid.username_key == "jansen85"
    assert valid.nationality == "NLD" and valid.email == "jan@example.nl"
    assert valid.birth_date == date(1985, 3, 27)
    # Born today is allowed; tomorrow is not.
    _, errors = apply.validate(form(**{"dob-day": "10", "dob-month": "3", "dob-year": "2026"}),
                               policies, today=date(2026, 3, 10))
    assert errors == {}
    _, errors = apply.validate(form(**{"dob-day": "11", "dob-month": "3", "dob-year": "2026"}),
                               policies, today=date(2026, 3, 10))
    assert set(errors) == {"dob-day"}


@pytest.mark.parametrize("language", ["nl", "en"])
@pytest.mark.parametrize(
    ("name", "context"),
    [
        ("application_submitted", {"desk_code": "BCDFGHJKL", "desk_name": "Embassy Paris",
                                   "video": False, "valid_until": "9 april 2026", "days": 30,
                                   "username": "jansen85", "issuer": "https://example.org"}),
        ("existing_account", {"applied_on": "10 maart 2026", "issuer": "https://example.org"}),
        ("application_duplicate", {"applied_on": "10 maart 2026",
                                   "issuer": "https://example.org"}),
    ],
)
def test_mail_templates_render_in_both_languages(name: str, context: dict[str, Any],
                                                 language: str) -> None:
    from gateway.mail.templates import render_template

    message = render_template("someone@example.org", name, language, **context)
    assert message.subject and message.text.strip()
    assert "https://example.org" in message.text
    if name == "application_submitted":
        assert "BCDFGHJKL" in message.text and "9 april 2026" in message.text


def test_the_confirmation_page_works_without_an_application_in_the_session(
    client: FlaskClient,
) -> None:
    response = client.get("/apply/sent?lang=nl")
    assert response.status_code == 200
    assert "Uw aanvraag is ontvangen" in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
