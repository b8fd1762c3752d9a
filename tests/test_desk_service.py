"""Unit tests of the desk workflow service (gateway.desks.service): finding an application by
desk code, each document-check rule, approval/rejection refusals, permissions and the
auditor's CSV export. The helpers at the top are shared with test_four_eyes and test_desk_flow.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from gateway import audit, clock
from gateway.accounts.models import Account, AccountCode
from gateway.app import get_policies, get_settings
from gateway.db import get_db
from gateway.desks import service
from gateway.desks.codes import CodeKind, code_hmac, new_code
from gateway.desks.models import Application, DocumentCheck, StaffAccount
from gateway.desks.mrz import check_digit
from gateway.desks.policy import DocumentType, EligibilityPolicy
from gateway.desks.register import RegisterPerson, TableRegister
from gateway.desks.service import DeskError, DocumentEntry

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BSN = "111222333"  # passes the eleven-test
DOB = date(1980, 5, 17)
PASSPORT_NO = "XR1234567"
EXPIRY = date(2030, 1, 1)
MOBILE = "+31612345678"
LANDLINE = "+442079460000"
DESK = "NL-DHG"


# --- shared helpers ---------------------------------------------------------------------------


def make_staff(
    s: Session, *, role: str = "officer", desk: str = DESK, username: str | None = None
) -> StaffAccount:
    staff = StaffAccount(
        desk=desk,
        username=username or f"{role}-{desk}-{new_code(CodeKind.DESK)[1:]}".lower(),
        password_hash="unused",
        totp_secret_sealed="unused",
        role=role,
        must_change_password=False,
        active=True,
        failed_logins=0,
        created_at=clock.now(),
    )
    s.add(staff)
    s.commit()
    return staff


def add_register_person(
    s: Session,
    *,
    bsn: str = BSN,
    surname: str = "Müller",
    given_names: str = "Jan Peter",
    born: date = DOB,
    nationality: str = "NLD",
    non_resident: bool = True,
) -> None:
    s.add(RegisterPerson(bsn=bsn, surname=surname, given_names=given_names, date_of_birth=born,
                         nationality=nationality, non_resident=non_resident,
                         updated_at=clock.now()))
    s.commit()


def make_application(
    s: Session,
    settings: object,
    *,
    bsn: str = BSN,
    phone: str = MOBILE,
    channel: str = "sms",
    nationality: str = "NLD",
    language: str = "en",
    username: str = "jan.muller",
) -> tuple[Application, str]:
    code = new_code(CodeKind.DESK)
    now = clock.now()
    application = Application(
        desk_code_hmac=code_hmac(settings, CodeKind.DESK, code),  # type: ignore[arg-type]
        desk_code_expires_at=now + timedelta(days=30),
        status="submitted",
        bsn=bsn,
        birth_date=DOB,
        nationality=nationality,
        phone_e164=phone,
        phone_channel=channel,
        email="jan@example.org",
        language=language,
        username=username,
        username_key=username.casefold(),
        password_hash="$argon2id$unused",
        chosen_desk=DESK,
        created_at=now,
        updated_at=now,
    )
    s.add(application)
    s.commit()
    return application, code


def td3(
    *,
    surname: str = "MUELLER",
    given: str = "JAN PETER",
    number: str = PASSPORT_NO,
    state: str = "NLD",
    nationality: str = "NLD",
    born: date = DOB,
    expiry: date = EXPIRY,
    personal: str = "",
) -> str:
    """A passport MRZ (ICAO 9303 Part 4) with correct check digits."""
    names = (surname.replace(" ", "<") + "<<" + given.replace(" ", "<")).ljust(39, "<")
    line1 = "P<" + state + names
    num = number.ljust(9, "<")
    dob = born.strftime("%y%m%d")
    exp = expiry.strftime("%y%m%d")
    opt = personal.ljust(14, "<")
    line2 = (num + check_digit(num) + nationality + dob + check_digit(dob) + "M" + exp
             + check_digit(exp) + opt + check_digit(opt))
    line2 += check_digit(line2[0:10] + line2[13:20] + line2[21:43])
    assert len(line1) == 44 and len(line2) == 44
    return line1 + "\n" + line2


def passport_entry(**changes: object) -> DocumentEntry:
    entry = DocumentEntry(document_type="passport", issuing_country="NLD",
                          document_number=PASSPORT_NO, expiry=EXPIRY.isoformat(), mrz=td3())
    return dataclasses.replace(entry, **changes)  # type: ignore[arg-type]


def session_of(app: Flask) -> Session:
    return get_db(app).sessionmaker()


def snapshot(s: Session) -> dict[str, int]:
    """Row counts of the tables a desk action writes, and application states."""
    counts = {
        name: s.scalar(sa.select(sa.func.count()).select_from(model)) or 0
        for name, model in (("checks", DocumentCheck), ("accounts", Account),
                            ("codes", AccountCode), ("audit", audit.AuditEntry))
    }
    for app_row in s.scalars(sa.select(Application)):
        counts[f"app:{app_row.id}"] = hash(app_row.status)
    s.rollback()
    return counts


def check(app: Flask, s: Session, staff: StaffAccount, application: Application,
          entry: DocumentEntry | None = None) -> service.CheckResult:
    return service.record_document_check(
        s, get_settings(app), get_policies(app), TableRegister(s), staff=staff,
        application_id=application.id, entry=entry or passport_entry(),
    )


@dataclasses.dataclass
class World:
    app: Flask
    s: Session
    officer: StaffAccount
    application: Application
    desk_code: str


@pytest.fixture
def world(app: Flask) -> Iterator[World]:
    with clock.frozen(NOW):
        s = session_of(app)
        officer = make_staff(s)
        add_register_person(s)
        application, code = make_application(s, get_settings(app))
        yield World(app, s, officer, application, code)
        s.close()


# --- finding an application ------------------------------------------------------------------


def test_find_by_desk_code_normalises_and_finds(world: World) -> None:
    typed = " " + world.desk_code[:4].lower() + "-" + world.desk_code[4:] + " "
    found = service.find_application(world.s, get_settings(world.app), typed)
    assert found.id == world.application.id


@pytest.mark.parametrize("typed", ["", "hello", "B" + "A" * 8, "B2345678", "x" * 100_000, None,
                                   12345, "B" * 9 + "\x00"])
def test_find_unknown_or_malformed_code(world: World, typed: object) -> None:
    with pytest.raises(DeskError) as exc:
        service.find_application(world.s, get_settings(world.app), typed)  # type: ignore[arg-type]
    assert exc.value.code == "unknown_code"


def test_find_well_formed_code_of_nobody(world: World) -> None:
    other = new_code(CodeKind.DESK)
    assert other != world.desk_code
    with pytest.raises(DeskError) as exc:
        service.find_application(world.s, get_settings(world.app), other)
    assert exc.value.code == "unknown_code"


def test_expired_desk_code_expires_the_application(world: World) -> None:
    clock.advance(timedelta(days=30, seconds=1))
    with pytest.raises(DeskError) as exc:
        service.find_application(world.s, get_settings(world.app), world.desk_code)
    assert exc.value.code == "expired_code"
    world.s.expire_all()
    assert world.s.get(Application, world.application.id).status == "expired"  # type: ignore[union-attr]
    with pytest.raises(DeskError) as exc:
        service.find_application(world.s, get_settings(world.app), world.desk_code)
    assert exc.value.code == "expired_code"


def test_decided_application_gives_used_code(world: World) -> None:
    service.reject(world.s, get_settings(world.app), staff=world.officer,
                   application_id=world.application.id, reason="Did not appear")
    with pytest.raises(DeskError) as exc:
        service.find_application(world.s, get_settings(world.app), world.desk_code)
    assert exc.value.code == "used_code"


# --- the document check: passing, input errors, findings ------------------------------------


def test_passing_check_moves_to_checked(world: World) -> None:
    result = check(world.app, world.s, world.officer, world.application)
    assert result.passed and result.problems == ()
    world.s.expire_all()
    assert world.s.get(Application, world.application.id).status == "checked"  # type: ignore[union-attr]
    row = world.s.get(DocumentCheck, result.check_id)
    assert row is not None and row.passed and row.desk == DESK
    assert row.officer_id == world.officer.id


def test_check_without_mrz_compares_typed_names(world: World) -> None:
    ok = check(world.app, world.s, world.officer, world.application,
               passport_entry(mrz=None, surname="Muller", given_names="Jan Peter"))
    assert ok.passed
    bad = check(world.app, world.s, world.officer, world.application,
                passport_entry(mrz=None, surname="Mulder", given_names="Jan Peter"))
    assert not bad.passed
    assert [(p.code, p.field) for p in bad.problems] == [("register_mismatch", "surname")]


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"document_type": "driving_licence"}, "bad_document_type", "document_type"),
        ({"document_type": None}, "bad_document_type", "document_type"),
        ({"issuing_country": "Netherlands"}, "bad_country", "issuing_country"),
        ({"issuing_country": "N1D"}, "bad_country", "issuing_country"),
        ({"expiry": "01-01-2030"}, "bad_expiry", "expiry"),
        ({"expiry": "2030-02-30"}, "bad_expiry", "expiry"),
        ({"expiry": None}, "bad_expiry", "expiry"),
        ({"document_number": "XO1234567"}, "bad_document_number", "document_number"),
        ({"document_number": "X1234567"}, "bad_document_number", "document_number"),
        ({"document_number": ""}, "bad_document_number", "document_number"),
        ({"document_number": "A" * 10_000}, "bad_document_number", "document_number"),
        ({"mrz": td3()[:-1] + "0" if not td3().endswith("0") else td3()[:-1] + "1"},
         "bad_mrz", "mrz"),
        ({"mrz": "P<NLD" + "<" * 39}, "bad_mrz", "mrz"),
        ({"mrz": "\u202e" * 50}, "bad_mrz", "mrz"),
        ({"mrz": None, "surname": None}, "names_required", "surname"),
        ({"mrz": None, "surname": "Jan\nsen"}, "names_required", "surname"),
    ],
)
def test_input_errors_write_nothing(
    world: World, changes: dict[str, object], code: str, field: str
) -> None:
    before = snapshot(world.s)
    with pytest.raises(DeskError) as exc:
        check(world.app, world.s, world.officer, world.application, passport_entry(**changes))
    assert (exc.value.code, exc.value.field) == (code, field)
    assert str(exc.value.message)  # a message for the officer
    world.s.rollback()
    assert snapshot(world.s) == before


def _finding(world: World, entry: DocumentEntry, code: str, field: str | None = None) -> None:
    before = snapshot(world.s)
    result = check(world.app, world.s, world.officer, world.application, entry)
    assert not result.passed
    assert code in [p.code for p in result.problems], [p.code for p in result.problems]
    if field is not None:
        assert (code, field) in [(p.code, p.field) for p in result.problems]
    world.s.expire_all()
    assert world.s.get(Application, world.application.id).status == "submitted"  # type: ignore[union-attr]
    after = snapshot(world.s)
    # Only the failed check and its audit entry were written: no account, no code.
    assert after["checks"] == before["checks"] + 1
    assert after["accounts"] == before["accounts"] and after["codes"] == before["codes"]
    row = world.s.get(DocumentCheck, result.check_id)
    assert row is not None and not row.passed and row.problems


def test_expired_document(world: World) -> None:
    old = date(2025, 2, 28)
    _finding(world, passport_entry(expiry=old.isoformat(), mrz=td3(expiry=old)),
             "document_expired", "expiry")


def test_document_valid_through_its_expiry_day(world: World) -> None:
    today = date(2025, 3, 1)
    assert check(world.app, world.s, world.officer, world.application,
                 passport_entry(expiry=today, mrz=td3(expiry=today))).passed


def test_document_type_not_accepted(world: World) -> None:
    policies = get_policies(world.app)
    only_cards = EligibilityPolicy(nationalities=["NLD"],
                                   accepted_documents=[DocumentType.IDENTITY_CARD])
    world.app.config["GATEWAY_POLICIES"] = dataclasses.replace(policies, eligibility=only_cards)
    _finding(world, passport_entry(), "document_type_not_accepted", "document_type")


def test_nationality_not_eligible(app: Flask) -> None:
    with clock.frozen(NOW):
        s = session_of(app)
        officer = make_staff(s)
        add_register_person(s, nationality="USA")
        application, code = make_application(s, get_settings(app), nationality="USA")
        w = World(app, s, officer, application, code)
        _finding(w, passport_entry(mrz=td3(nationality="USA")), "nationality_not_eligible")
        s.close()


def test_not_registered(app: Flask) -> None:
    with clock.frozen(NOW):
        s = session_of(app)
        officer = make_staff(s)
        application, code = make_application(s, get_settings(app))
        _finding(World(app, s, officer, application, code), passport_entry(), "not_registered")
        s.close()


def test_not_non_resident(app: Flask) -> None:
    with clock.frozen(NOW):
        s = session_of(app)
        officer = make_staff(s)
        add_register_person(s, non_resident=False)
        application, code = make_application(s, get_settings(app))
        _finding(World(app, s, officer, application, code), passport_entry(), "not_non_resident")
        s.close()


@pytest.mark.parametrize(
    ("mrz_changes", "field"),
    [({"surname": "MULDER"}, "surname"), ({"given": "KLAAS"}, "given_names")],
)
def test_register_name_mismatch(world: World, mrz_changes: dict[str, str], field: str) -> None:
    _finding(world, passport_entry(mrz=td3(**mrz_changes)), "register_mismatch", field)  # type: ignore[arg-type]


def test_register_date_of_birth_mismatch(app: Flask) -> None:
    with clock.frozen(NOW):
        s = session_of(app)
        officer = make_staff(s)
        add_register_person(s, born=date(1980, 5, 18))
        application, code = make_application(s, get_settings(app))
        _finding(World(app, s, officer, application, code), passport_entry(),
                 "register_mismatch", "date_of_birth")
        s.close()


@pytest.mark.parametrize(
    ("mrz_changes", "field"),
    [
        ({"expiry": date(2031, 1, 1)}, "expiry"),
        ({"number": "XR7654321"}, "document_number"),
        ({"born": date(1981, 5, 17)}, "date_of_birth"),
        ({"state": "BEL"}, "issuing_state"),
        ({"personal": "123456782"}, "bsn"),
    ],
)
def test_mrz_disagrees_with_the_entry(
    world: World, mrz_changes: dict[str, object], field: str
) -> None:
    _finding(world, passport_entry(mrz=td3(**mrz_changes)), "mrz_mismatch", field)  # type: ignore[arg-type]


def test_mrz_with_the_right_bsn_passes(world: World) -> None:
    assert check(world.app, world.s, world.officer, world.application,
                 passport_entry(mrz=td3(personal=BSN))).passed


def test_a_later_failing_check_returns_to_submitted(world: World) -> None:
    assert check(world.app, world.s, world.officer, world.application).passed
    failed = check(world.app, world.s, world.officer, world.application,
                   passport_entry(mrz=td3(surname="MULDER")))
    assert not failed.passed
    world.s.expire_all()
    assert world.s.get(Application, world.application.id).status == "submitted"  # type: ignore[union-attr]
    with pytest.raises(DeskError) as exc:
        service.approve(world.s, get_settings(world.app), get_policies(world.app), world.app,
                        staff=world.officer, application_id=world.application.id,
                        delivery="sms")
    assert exc.value.code == "check_required"


@pytest.mark.parametrize("application_id", ["nope", "", "x" * 5000, None, 42])
def test_unknown_application_id(world: World, application_id: object) -> None:
    with pytest.raises(DeskError) as exc:
        service.record_document_check(
            world.s, get_settings(world.app), get_policies(world.app), TableRegister(world.s),
            staff=world.officer, application_id=application_id,  # type: ignore[arg-type]
            entry=passport_entry())
    assert exc.value.code == "not_found"


# --- approval and rejection refusals --------------------------------------------------------


def _approve(world: World, staff: StaffAccount | None = None, **kwargs: object) -> service.Approval:
    params: dict[str, object] = {"delivery": "sms", **kwargs}
    return service.approve(world.s, get_settings(world.app), get_policies(world.app), world.app,
                           staff=staff or world.officer, application_id=world.application.id,
                           **params)  # type: ignore[arg-type]


def _refused(world: World, code: str, staff: StaffAccount | None = None, **kwargs: object) -> None:
    before = snapshot(world.s)
    with pytest.raises(DeskError) as exc:
        _approve(world, staff, **kwargs)
    assert exc.value.code == code
    world.s.rollback()
    assert snapshot(world.s) == before


def test_approve_needs_a_passing_check(world: World) -> None:
    _refused(world, "check_required")


def test_auditor_cannot_approve_or_check_or_reject(world: World) -> None:
    auditor = make_staff(world.s, role="auditor")
    with pytest.raises(DeskError) as exc:
        check(world.app, world.s, auditor, world.application)
    assert exc.value.code == "forbidden"
    assert check(world.app, world.s, world.officer, world.application).passed
    _refused(world, "forbidden", staff=auditor)
    with pytest.raises(DeskError) as exc:
        service.reject(world.s, get_settings(world.app), staff=auditor,
                       application_id=world.application.id, reason="no")
    assert exc.value.code == "forbidden"


def test_inactive_officer_is_forbidden(world: World) -> None:
    world.officer.active = False
    world.s.commit()
    with pytest.raises(DeskError) as exc:
        check(world.app, world.s, world.officer, world.application)
    assert exc.value.code == "forbidden"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"delivery": "pigeon"}, "bad_delivery"),
        ({"delivery": None}, "bad_delivery"),
        ({"delivery": "letter"}, "bad_address"),
        ({"delivery": "letter", "letter_address": ["only one line"]}, "bad_address"),
        ({"delivery": "letter", "letter_address": ["x" * 61, "Paris"]}, "bad_address"),
        ({"delivery": "letter", "letter_address": ["Rue\x00 1", "Paris"]}, "bad_address"),
        ({"delivery": "letter", "letter_address": "Rue 1\nParis"}, "bad_address"),
        ({"delivery": "letter", "letter_address": ["ถนนสุขุมวิท 1", "Bangkok"]},
         "address_characters"),
    ],
)
def test_approve_refusals_write_nothing(world: World, kwargs: dict[str, object], code: str) -> None:
    assert check(world.app, world.s, world.officer, world.application).passed
    _refused(world, code, **kwargs)


def test_sms_to_a_landline_is_refused(app: Flask) -> None:
    with clock.frozen(NOW):
        s = session_of(app)
        officer = make_staff(s)
        add_register_person(s)
        application, code = make_application(s, get_settings(app), phone=LANDLINE,
                                             channel="voice")
        w = World(app, s, officer, application, code)
        assert check(app, s, officer, application).passed
        _refused(w, "phone_unusable", delivery="sms")
        s.close()


def test_second_account_for_the_same_bsn_is_refused(world: World) -> None:
    assert check(world.app, world.s, world.officer, world.application).passed
    assert _approve(world, delivery="letter", letter_address=["Rue 1", "Paris", "FRANCE"])
    other, _code = make_application(world.s, get_settings(world.app), username="jan2")
    assert check(world.app, world.s, world.officer, other).passed
    w2 = World(world.app, world.s, world.officer, other, _code)
    _refused(w2, "account_exists", delivery="letter", letter_address=["Rue 1", "Paris"])


def test_register_change_after_the_check_is_caught(world: World) -> None:
    assert check(world.app, world.s, world.officer, world.application).passed
    person = world.s.get(RegisterPerson, BSN)
    assert person is not None
    person.non_resident = False
    world.s.commit()
    _refused(world, "not_non_resident", delivery="letter", letter_address=["Rue 1", "Paris"])


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501, "a\x1bb", None])
def test_reject_needs_a_reason(world: World, reason: object) -> None:
    before = snapshot(world.s)
    with pytest.raises(DeskError) as exc:
        service.reject(world.s, get_settings(world.app), staff=world.officer,
                       application_id=world.application.id, reason=reason)  # type: ignore[arg-type]
    assert exc.value.code == "bad_reason"
    assert snapshot(world.s) == before


def test_reject_then_every_action_is_used_code(world: World) -> None:
    application = service.reject(world.s, get_settings(world.app), staff=world.officer,
                                 application_id=world.application.id, reason="Wrong person")
    assert application.status == "rejected" and application.decided_desk == DESK
    with pytest.raises(DeskError) as exc:
        check(world.app, world.s, world.officer, world.application)
    assert exc.value.code == "used_code"
    _refused(world, "used_code")


# --- the auditor's export ---------------------------------------------------------------------


def test_export_is_for_auditors_of_their_own_desk(world: World) -> None:
    settings = get_settings(world.app)
    with pytest.raises(DeskError) as exc:
        service.export_audit_csv(world.s, staff=world.officer, desk=DESK, settings=settings)
    assert exc.value.code == "forbidden"
    auditor = make_staff(world.s, role="auditor")
    with pytest.raises(DeskError) as exc:
        service.export_audit_csv(world.s, staff=auditor, desk="FR-PAR", settings=settings)
    assert exc.value.code == "other_desk"


def test_export_escapes_formulas_and_lists_the_desk(world: World) -> None:
    settings = get_settings(world.app)
    assert check(world.app, world.s, world.officer, world.application).passed
    for actor in ("=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)"):
        audit.record(world.s, actor=actor, role="officer", desk=DESK, action="test",
                     object_ref=None, outcome="success", settings=settings)
    audit.record(world.s, actor="elsewhere", role="officer", desk="FR-PAR", action="test",
                 object_ref=None, outcome="success", settings=settings)
    world.s.commit()
    auditor = make_staff(world.s, role="auditor")
    text = service.export_audit_csv(world.s, staff=auditor, desk=DESK, settings=settings)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(service.EXPORT_COLUMNS)
    actors = [r[2] for r in rows[1:]]
    assert "'=HYPERLINK(\"http://x\")" in actors and "'+1" in actors
    assert "'-2" in actors and "'@SUM(A1)" in actors
    assert "elsewhere" not in actors
    assert all(not a.startswith(("=", "+", "-", "@")) for r in rows[1:] for a in r)
    ref = f"application:{world.application.id}"
    assert any(r[5] == "application.check_recorded" and r[6] == ref for r in rows[1:])
    # The export itself is in the trail, and the chain holds.
    newest = sa.select(audit.AuditEntry).order_by(audit.AuditEntry.seq.desc())
    last = world.s.scalars(newest).first()
    assert last is not None and last.action == "audit.exported"
    assert audit.verify(world.s, settings).ok
    since = service.export_audit_csv(world.s, staff=auditor, desk=DESK,
                                     since=NOW + timedelta(days=1), settings=settings)
    assert since.splitlines() == [",".join(service.EXPORT_COLUMNS)]


def test_csv_cell() -> None:
    assert service.csv_cell("=1+1") == "'=1+1"
    assert service.csv_cell("\t=x") == "'\t=x"
    assert service.csv_cell("plain") == "plain"
    assert service.csv_cell(None) == ""
    assert service.csv_cell(12) == "12"


def test_refusals_are_in_dutch_and_english(app: Flask) -> None:
    from gateway.desks import four_eyes

    for lang in ("nl", "en"):
        with app.test_request_context(f"/?lang={lang}"):
            texts = [str(m) for m in service.MESSAGES.values()]
            texts += [str(m) for m in four_eyes.FOUR_EYES_MESSAGES.values()]
            if lang == "nl":
                assert "Uw rol staat deze handeling niet toe." in texts
                assert not any(t == str(service.MESSAGES["forbidden"]._args[0]) for t in texts)
            else:
                assert "Your role does not allow this action." in texts
