"""Four-eyes requests (issue 4 item 5): who may decide (a supervisor of the same desk who did
not ask), and that each approved action executes: reissue of an activation code, phone change
with a code to the new number and a notice to the old one, unblock (link_eidas:
tests/test_eidas_link.py)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from gateway import audit, clock
from gateway.accounts.models import Account, AccountCode
from gateway.app import get_policies, get_settings
from gateway.desks import four_eyes, service
from gateway.desks.codes import CodeKind, code_hmac
from gateway.desks.models import FourEyesRequest, StaffAccount
from gateway.desks.service import DeskError
from tests.test_desk_flow import ACTIVATION, outbox
from tests.test_desk_service import (
    DESK,
    MOBILE,
    NOW,
    add_register_person,
    check,
    make_application,
    make_staff,
    session_of,
)

NEW_MOBILE = "+33612345678"


class Desk:
    def __init__(self, app: Flask) -> None:
        self.app = app
        self.settings = get_settings(app)
        self.s = session_of(app)
        self.officer = make_staff(self.s)
        self.supervisor = make_staff(self.s, role="supervisor")
        self.other_supervisor = make_staff(self.s, role="supervisor", desk="FR-PAR")
        add_register_person(self.s)
        application, _code = make_application(self.s, self.settings)
        assert check(app, self.s, self.officer, application).passed
        approval = service.approve(self.s, self.settings, get_policies(app), app,
                                   staff=self.officer, application_id=application.id,
                                   delivery="letter", letter_address=["Rue 1", "Paris"])
        self.application_id = application.id
        self.account_id = approval.account_id

    @property
    def account(self) -> Account:
        self.s.expire_all()
        account = self.s.get(Account, self.account_id)
        assert account is not None
        return account

    def ask(self, kind: str, payload: dict[str, Any] | None = None,
            staff: StaffAccount | None = None, ref: str | None = None) -> FourEyesRequest:
        return four_eyes.request_four_eyes(
            self.s, staff=staff or self.officer, kind=kind,
            object_ref=ref or f"account:{self.account_id}", payload=payload or {},
            reason="Citizen at the desk lost their letter", settings=self.settings,
            policies=get_policies(self.app))

    def decide(self, request: FourEyesRequest, supervisor: StaffAccount | None = None,
               approve: bool = True) -> service.FourEyesOutcome:
        return four_eyes.decide_four_eyes(self.s, self.settings, self.app,
                                          supervisor=supervisor or self.supervisor,
                                          request_id=request.id, approve=approve)


@pytest.fixture
def desk(app: Flask) -> Any:
    with clock.frozen(NOW):
        d = Desk(app)
        yield d
        d.s.close()


def _refused(desk: Desk, request: FourEyesRequest, code: str, **kwargs: Any) -> None:
    with pytest.raises(DeskError) as exc:
        desk.decide(request, **kwargs)
    assert exc.value.code == code
    desk.s.rollback()
    desk.s.expire_all()
    row = desk.s.get(FourEyesRequest, request.id)
    assert row is not None and row.status == "pending" and row.decided_by is None


def test_requester_cannot_decide_even_as_supervisor(desk: Desk) -> None:
    request = desk.ask("unblock_account", staff=desk.supervisor)
    _refused(desk, request, "same_person", supervisor=desk.supervisor)


def test_supervisor_of_another_desk_cannot_decide(desk: Desk) -> None:
    request = desk.ask("unblock_account")
    _refused(desk, request, "other_desk", supervisor=desk.other_supervisor)


def test_officer_and_auditor_cannot_decide(desk: Desk) -> None:
    request = desk.ask("unblock_account")
    other_officer = make_staff(desk.s)
    _refused(desk, request, "forbidden", supervisor=other_officer)
    _refused(desk, request, "forbidden", supervisor=make_staff(desk.s, role="auditor"))


def test_auditor_cannot_ask(desk: Desk) -> None:
    with pytest.raises(DeskError) as exc:
        desk.ask("unblock_account", staff=make_staff(desk.s, role="auditor"))
    assert exc.value.code == "forbidden"


@pytest.mark.parametrize(
    ("kind", "payload", "ref", "code"),
    [
        ("delete_everything", {}, None, "bad_kind"),
        ("unblock_account", {}, "account:nobody", "bad_object"),
        ("unblock_account", {}, "nonsense", "bad_object"),
        ("unblock_account", {}, "staff:" + "x" * 500, "bad_object"),
        ("unblock_account", {"extra": 1}, None, "bad_payload"),
        ("change_phone", {}, None, "bad_payload"),
        ("change_phone", {"phone": "+31 900 1234567"}, None, "phone_unusable"),
        ("change_phone", {"phone": "call me"}, None, "phone_unusable"),
        ("reissue_activation", {"delivery": "fax"}, None, "bad_delivery"),
        ("reissue_activation", {"delivery": "letter"}, None, "bad_address"),
        ("link_eidas", {"blob": "x" * 5000}, None, "bad_payload"),
    ],
)
def test_bad_requests_are_refused(
    desk: Desk, kind: str, payload: dict[str, Any], ref: str | None, code: str
) -> None:
    with pytest.raises(DeskError) as exc:
        desk.ask(kind, payload, ref=ref)
    assert exc.value.code == code
    desk.s.rollback()
    assert desk.s.scalar(sa.select(sa.func.count()).select_from(FourEyesRequest)) == 0


def test_one_pending_request_per_action_and_account(desk: Desk) -> None:
    desk.ask("unblock_account")
    with pytest.raises(DeskError) as exc:
        desk.ask("unblock_account", ref=f"application:{desk.application_id}")
    assert exc.value.code == "already_pending"


def test_reissue_ends_the_old_code_and_sends_a_new_one(desk: Desk) -> None:
    old = desk.s.scalars(sa.select(AccountCode)).one()
    request = desk.ask("reissue_activation", {"delivery": "sms"})
    assert request.object_ref == f"account:{desk.account_id}"
    assert [r.id for r in four_eyes.pending_four_eyes(desk.s, staff=desk.supervisor)] == [
        request.id]
    outcome = desk.decide(request)
    assert outcome.status == "approved" and outcome.delivered is True
    (message,) = outbox(desk.app)
    assert message["to"] == MOBILE
    code = message["text"].rsplit("#", 1)[1]
    assert ACTIVATION.fullmatch(code)
    desk.s.expire_all()
    rows = {r.id: r for r in desk.s.scalars(sa.select(AccountCode))}
    assert rows[old.id].superseded_at is not None
    (new,) = [r for r in rows.values() if r.id != old.id]
    assert new.superseded_at is None
    assert new.code_hmac == code_hmac(desk.settings, CodeKind.ACTIVATION, code)
    with pytest.raises(DeskError) as exc:
        desk.decide(request, supervisor=make_staff(desk.s, role="supervisor"))
    assert exc.value.code == "request_decided"
    assert len(outbox(desk.app)) == 1  # nothing sent twice


def test_reissue_by_letter_returns_the_pdf(desk: Desk) -> None:
    request = desk.ask("reissue_activation",
                       {"delivery": "letter", "letter_address": ["Rue 2", "Lyon", "FRANCE"]})
    outcome = desk.decide(request)
    assert outcome.letter_pdf is not None and outcome.letter_pdf.startswith(b"%PDF")
    assert outbox(desk.app) == []


def test_reissue_refused_for_an_active_account(desk: Desk) -> None:
    request = desk.ask("reissue_activation", {"delivery": "sms"})
    desk.account.status = "active"
    desk.s.commit()
    _refused(desk, request, "not_pending_activation")


def test_change_phone_sends_a_code_to_the_new_and_a_notice_to_the_old(desk: Desk) -> None:
    request = desk.ask("change_phone", {"phone": "+33 6 12 34 56 78"})
    assert request.payload == {"phone": NEW_MOBILE}
    _refused(desk, request, "not_active")
    account = desk.account
    account.status = "active"
    account.phone_verified_at = clock.now()
    desk.s.commit()
    outcome = desk.decide(request)
    assert outcome.status == "approved" and outcome.delivered is True
    account = desk.account
    assert account.phone_e164 == NEW_MOBILE and account.phone_channel == "sms"
    assert account.phone_verified_at is None
    to_new = [m for m in outbox(desk.app) if m["to"] == NEW_MOBILE]
    to_old = [m for m in outbox(desk.app) if m["to"] == MOBILE]
    assert len(to_new) == 1 and re.search(r"#[0-9]{6}$", to_new[0]["text"])
    assert "new phone number" in to_new[0]["text"]
    assert len(to_old) == 1 and "was changed at a desk" in to_old[0]["text"]
    assert not re.search(r"[0-9]{6}", to_old[0]["text"])  # the notice carries no code


def test_unblock_clears_the_block(desk: Desk) -> None:
    account = desk.account
    account.failed_logins = 7
    account.blocked_until = clock.now() + timedelta(hours=1)
    desk.s.commit()
    request = desk.ask("unblock_account")
    desk.decide(request)
    account = desk.account
    assert account.failed_logins == 0 and account.blocked_until is None


def test_refusal_changes_nothing_but_the_request(desk: Desk) -> None:
    account = desk.account
    account.failed_logins = 7
    desk.s.commit()
    request = desk.ask("unblock_account")
    outcome = desk.decide(request, approve=False)
    assert outcome.status == "refused"
    assert desk.account.failed_logins == 7


def test_stale_request_can_only_be_refused(desk: Desk) -> None:
    request = desk.ask("unblock_account")
    clock.advance(four_eyes.REQUEST_VALIDITY + timedelta(seconds=1))
    _refused(desk, request, "request_expired")
    assert desk.decide(request, approve=False).status == "refused"


@pytest.mark.parametrize("request_id", ["nope", "", None, "x" * 1000])
def test_unknown_request(desk: Desk, request_id: Any) -> None:
    with pytest.raises(DeskError) as exc:
        four_eyes.decide_four_eyes(desk.s, desk.settings, desk.app, supervisor=desk.supervisor,
                                   request_id=request_id, approve=True)
    assert exc.value.code == "request_not_found"


def test_everything_is_in_the_audit_trail(desk: Desk) -> None:
    request = desk.ask("unblock_account")
    desk.decide(request)
    entries = list(desk.s.scalars(sa.select(audit.AuditEntry).order_by(audit.AuditEntry.seq)))
    mine = [(e.action, e.object_ref, e.outcome, e.desk) for e in entries
            if e.action.startswith(("four_eyes", "account."))]
    assert mine == [
        ("four_eyes.requested:unblock_account", f"four_eyes:{request.id}", "pending", DESK),
        ("four_eyes.decided:unblock_account", f"four_eyes:{request.id}", "approved", DESK),
        ("account.unblocked", f"account:{desk.account_id}", "success", DESK),
    ]
    decided = next(e for e in entries if e.action.startswith("four_eyes.decided"))
    assert decided.actor == f"staff:{desk.supervisor.username}"
    assert audit.verify(desk.s, desk.settings).ok
