"""Flow tests of issue 4 items 4 and 6: an application is found by its desk code, checked
(a TD3 MRZ with correct check digits, the register row in TableRegister) and approved; the
activation code arrives by SMS, by voice call for a landline, or on a PDF letter; it is
stored only as an HMAC; and the audit trail records it all and verifies."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from gateway import audit, clock
from gateway.accounts.models import Account, AccountCode
from gateway.app import get_policies, get_settings
from gateway.db import Base
from gateway.desks import letters, service
from gateway.desks.codes import ACTIVATION_CODE_VALIDITY, CodeKind, code_hmac
from gateway.desks.models import Application
from gateway.sms.messages import host_of
from tests.test_desk_service import (
    DESK,
    LANDLINE,
    MOBILE,
    NOW,
    add_register_person,
    check,
    make_application,
    make_staff,
    session_of,
)

ACTIVATION = re.compile(r"A[BCDFGHJKLMNPQRSTVWXZ2-9]{8}")


def outbox(app: Flask) -> list[dict[str, Any]]:
    path = Path(get_settings(app).sms_outbox)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def every_stored_value(s: Session) -> str:
    """Every value of every row of every table, as one text to search."""
    parts: list[str] = []
    for table in Base.metadata.sorted_tables:
        for row in s.execute(sa.select(table)):
            parts.extend(str(v) for v in row)
    s.rollback()
    return "\n".join(parts)


def _through_check(app: Flask, phone: str = MOBILE, channel: str = "sms",
                   language: str = "en") -> tuple[Session, Any, Application]:
    s = session_of(app)
    officer = make_staff(s)
    add_register_person(s)
    application, desk_code = make_application(s, get_settings(app), phone=phone,
                                              channel=channel, language=language)
    found = service.find_application(s, get_settings(app), desk_code)
    assert found.id == application.id
    assert check(app, s, officer, found).passed
    return s, officer, found


def test_application_to_activation_code_by_sms(app: Flask) -> None:
    with clock.frozen(NOW):
        s, officer, application = _through_check(app)
        approval = service.approve(s, get_settings(app), get_policies(app), app, staff=officer,
                                   application_id=application.id, delivery="sms")
        assert approval.delivered and approval.letter_pdf is None
        assert approval.expires_at == NOW + ACTIVATION_CODE_VALIDITY

        messages = outbox(app)
        assert len(messages) == 1 and messages[0]["to"] == MOBILE
        assert messages[0]["channel"] == "sms"
        text = messages[0]["text"]
        code = text.rsplit("#", 1)[1]
        assert ACTIVATION.fullmatch(code)
        host = host_of(get_settings(app).issuer)
        assert text.endswith(f"\n\n@{host} #{code}")

        account = s.get(Account, approval.account_id)
        assert account is not None
        assert account.status == "pending_activation"
        assert (account.surname, account.given_names) == ("Müller", "Jan Peter")  # register
        assert account.phone_e164 == MOBILE and account.phone_verified_at is None
        assert account.enrolled_desk == DESK
        rows = list(s.scalars(sa.select(AccountCode).where(AccountCode.account_id == account.id)))
        assert len(rows) == 1 and rows[0].kind == "A" and rows[0].channel == "sms"
        assert rows[0].code_hmac == code_hmac(get_settings(app), CodeKind.ACTIVATION, code)
        assert rows[0].used_at is None

        s.expire_all()
        decided = s.get(Application, application.id)
        assert decided is not None and decided.status == "approved"
        assert decided.account_id == account.id and decided.decided_by == officer.id
        assert code not in every_stored_value(s)

        entries = list(s.scalars(sa.select(audit.AuditEntry).order_by(audit.AuditEntry.seq)))
        ref = f"application:{application.id}"
        actions = [(e.action, e.outcome) for e in entries if e.object_ref == ref]
        assert actions == [("application.check_recorded", "passed"),
                           ("application.approved", "success"),
                           ("activation_code.delivered", "sms:sent")]
        assert all(e.desk == DESK and e.actor.startswith("staff:") for e in entries
                   if e.object_ref == ref)
        assert audit.verify(s, get_settings(app)).ok
        # The desk code is used now.
        with pytest.raises(service.DeskError) as exc:
            service.approve(s, get_settings(app), get_policies(app), app, staff=officer,
                            application_id=application.id, delivery="sms")
        assert exc.value.code == "used_code"
        s.close()


def test_landline_gets_a_spoken_code_in_dutch(app: Flask) -> None:
    with clock.frozen(NOW):
        s, officer, application = _through_check(app, phone=LANDLINE, channel="voice",
                                                  language="nl")
        approval = service.approve(s, get_settings(app), get_policies(app), app, staff=officer,
                                   application_id=application.id, delivery="voice")
        assert approval.delivered
        (message,) = outbox(app)
        assert message["channel"] == "voice" and message["to"] == LANDLINE
        assert message["text"].startswith("Dit is Abroad Gateway")
        # Spelled, twice: "A Anton, B Bernard, ..." - rebuild the code from the spoken letters.
        spoken = message["text"].split("activeringscode is: ", 1)[1].split(". Nogmaals", 1)[0]
        code = "".join(part.strip()[0] for part in spoken.split(","))
        assert ACTIVATION.fullmatch(code)
        row = s.scalars(sa.select(AccountCode)).one()
        assert row.code_hmac == code_hmac(get_settings(app), CodeKind.ACTIVATION, code)
        assert row.channel == "voice"
        s.close()


def test_letter_for_people_without_a_usable_phone(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    printed: list[dict[str, Any]] = []
    real = letters.activation_letter

    def spy(**kwargs: Any) -> bytes:
        printed.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(letters, "activation_letter", spy)
    with clock.frozen(NOW):
        s, officer, application = _through_check(app)
        address = ["J. P. Müller", "Rue de Rivoli 1", "75001 Paris", "FRANCE"]
        approval = service.approve(s, get_settings(app), get_policies(app), app, staff=officer,
                                   application_id=application.id, delivery="letter",
                                   letter_address=address)
        assert approval.letter_pdf is not None and approval.letter_pdf.startswith(b"%PDF")
        assert approval.letter_pdf.rstrip().endswith(b"%%EOF")
        assert outbox(app) == []  # nothing went to a phone
        (kwargs,) = printed
        code = kwargs["code"]
        assert kwargs["address"] == address
        row = s.scalars(sa.select(AccountCode)).one()
        assert row.code_hmac == code_hmac(get_settings(app), CodeKind.ACTIVATION, code)
        assert row.channel == "letter"
        stored = every_stored_value(s)
        assert code not in stored and letters.grouped(code) not in stored
        assert b"Rivoli" not in approval.letter_pdf.split(b"stream", 1)[0]  # no metadata leak
        assert audit.verify(s, get_settings(app)).ok
        s.close()


def test_letter_and_message_texts() -> None:
    code = "ABCDFGHJK"
    expires = NOW + ACTIVATION_CODE_VALIDITY
    for language, word in (("nl", "Geldig tot"), ("en", "Valid until")):
        lines = letters.letter_text(code=code, language=language, expires_at=expires,
                                    issuer="https://login.example.org", desk=DESK)
        assert "A BCDF GHJK" in lines and any(word in line for line in lines)
        assert any("https://login.example.org" in line for line in lines)
        sms = letters.activation_message(code=code, language=language, channel="sms",
                                         expires_at=expires, issuer="https://login.example.org")
        assert sms.endswith("\n\n@login.example.org #ABCDFGHJK")
        from gateway.sms.messages import segments

        assert segments(sms).encoding == "GSM-7"
    assert "21 March 2025, 13:00 (Dutch time)" in letters.valid_until(expires, "en")
    assert letters.spelled("AB2", "en") == "A Alfa, B Bravo, 2"
    with pytest.raises(ValueError):
        letters.activation_message(code="B23456789", language="en", channel="sms",
                                   expires_at=expires, issuer="https://x.org")
    pdf = letters.activation_letter(code=code, address=["Line 1", "Country"],
                                    expires_at=expires, issuer="https://x.org", desk=DESK)
    assert pdf.startswith(b"%PDF")
